"""A standby's state in SQLite (WAL) next to its images: settings, generations, each generation's
manifest of per-chunk digests, and every run (create, refresh, rollback) with its bytes and outcome."""
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, List, Optional, Tuple

from ..errors import OutputError

STATE = "standby.sqlite"

Chunk = Tuple[int, int, int, bytes]          # disk, offset, length, sha256


@dataclass(frozen=True)
class Generation:
    number: int
    created: float
    replica: Tuple[str, ...]      # replica.gN images, one per disk (file names in the standby directory)
    fixed: Tuple[str, ...]        # fixed.gN images, what the domain boots
    changed_bytes: int            # bytes of chunks written into this generation's replica
    wire_bytes: int               # bytes read from ssh by the capture that made it
    seconds: float


@dataclass(frozen=True)
class Run:
    kind: str                     # create | refresh | rollback
    started: float
    finished: float
    status: str                   # ok | no-change | failed
    generation: int
    changed_bytes: int
    wire_bytes: int
    message: str


class State:
    def __init__(self, directory: str, create: bool = False) -> None:
        path = os.path.join(directory, STATE)
        if not create and not os.path.exists(path):
            raise OutputError("{} is not a standby (no {}); create it with `v2v standby create`".format(
                directory, STATE))
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript("""
            CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT);
            CREATE TABLE IF NOT EXISTS generations (number INTEGER PRIMARY KEY, created REAL, replica TEXT,
                fixed TEXT, changed_bytes INTEGER, wire_bytes INTEGER, seconds REAL);
            CREATE TABLE IF NOT EXISTS chunks (generation INTEGER, disk INTEGER, offset INTEGER, length INTEGER,
                sha256 BLOB, PRIMARY KEY (generation, disk, offset, length));
            CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, kind TEXT, started REAL, finished REAL,
                status TEXT, generation INTEGER, changed_bytes INTEGER, wire_bytes INTEGER, message TEXT);
        """)

    def close(self) -> None:
        self.db.close()

    def get(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM settings WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def put(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (key, json.dumps(value)))

    def generations(self) -> List[Generation]:
        return [Generation(n, c, tuple(json.loads(r)), tuple(json.loads(f)), cb, wb, s) for n, c, r, f, cb, wb, s in
                self.db.execute("SELECT * FROM generations ORDER BY number")]

    def generation(self, number: int) -> Optional[Generation]:
        return next((g for g in self.generations() if g.number == number), None)

    def latest(self) -> Optional[Generation]:
        gens = self.generations()
        return gens[-1] if gens else None

    def current(self) -> int:
        """The generation the domain boots."""
        return int(self.get("current", 0))

    def manifest(self, number: int) -> FrozenSet[Chunk]:
        return frozenset((d, o, n, bytes(s)) for d, o, n, s in self.db.execute(
            "SELECT disk, offset, length, sha256 FROM chunks WHERE generation=?", (number,)))

    def add_generation(self, g: Generation, manifest: FrozenSet[Chunk]) -> None:
        """Record a finished generation and its manifest, and make it current, in one transaction."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("INSERT OR REPLACE INTO generations VALUES (?,?,?,?,?,?,?)",
                            (g.number, g.created, json.dumps(list(g.replica)), json.dumps(list(g.fixed)),
                             g.changed_bytes, g.wire_bytes, g.seconds))
            self.db.execute("DELETE FROM chunks WHERE generation=?", (g.number,))
            self.db.executemany("INSERT INTO chunks VALUES (?,?,?,?,?)",
                                [(g.number, d, o, n, s) for d, o, n, s in manifest])
            self.db.execute("INSERT OR REPLACE INTO settings VALUES ('current', ?)", (json.dumps(g.number),))

    def drop_generation(self, number: int) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM generations WHERE number=?", (number,))
            self.db.execute("DELETE FROM chunks WHERE generation=?", (number,))

    def record_run(self, r: Run) -> None:
        self.db.execute("INSERT INTO runs (kind, started, finished, status, generation, changed_bytes, wire_bytes, "
                        "message) VALUES (?,?,?,?,?,?,?,?)", (r.kind, r.started, r.finished, r.status,
                                                             r.generation, r.changed_bytes, r.wire_bytes, r.message))

    def start_run(self, kind: str, generation: int) -> int:
        """A run row marked running: one left so by a killed process is found by the next run."""
        cur = self.db.execute("INSERT INTO runs (kind, started, finished, status, generation, changed_bytes, "
                              "wire_bytes, message) VALUES (?,?,0,'running',?,0,0,'')",
                              (kind, time.time(), generation))
        return int(cur.lastrowid or 0)

    def finish_run(self, run_id: int, status: str, generation: int, changed: int, wire: int, message: str) -> None:
        self.db.execute("UPDATE runs SET finished=?, status=?, generation=?, changed_bytes=?, wire_bytes=?, "
                        "message=? WHERE id=?", (time.time(), status, generation, changed, wire, message, run_id))

    def mark_killed(self) -> List[Run]:
        """Runs still marked running (the caller holds the lock, so their process is gone): marked killed."""
        killed = [Run(*row) for row in self.db.execute(
            "SELECT kind, started, finished, status, generation, changed_bytes, wire_bytes, message FROM runs "
            "WHERE status='running'")]
        self.db.execute("UPDATE runs SET status='killed', message='the process ended without finishing' "
                        "WHERE status='running'")
        return killed

    def runs(self, limit: int = 20) -> List[Run]:
        return [Run(*row) for row in self.db.execute(
            "SELECT kind, started, finished, status, generation, changed_bytes, wire_bytes, message FROM runs "
            "ORDER BY id DESC LIMIT ?", (limit,))][::-1]

    def last_ok(self) -> Optional[Run]:
        row = self.db.execute("SELECT kind, started, finished, status, generation, changed_bytes, wire_bytes, "
                              "message FROM runs WHERE status IN ('ok', 'no-change') AND kind != 'rollback' "
                              "ORDER BY id DESC LIMIT 1").fetchone()
        return Run(*row) if row else None

    def summary(self) -> Dict[str, Any]:
        last = self.last_ok()
        return {"current": self.current(), "last_success": last.started if last else None,
                "rpo_seconds": round(time.time() - last.started, 1) if last else None}
