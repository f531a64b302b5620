"""python3 -m testvms build <variant> [--cache DIR] [--force] | list | prune | boot IMG [--bus ide]"""
import argparse
import sys

from . import ALL_VARIANTS, build, debian, image_path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m testvms", description="build cached test guests")
    ap.add_argument("--cache", help="cache dir (default $V2V_TESTVM_CACHE or /var/tmp/v2v-testvms)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build (or reuse) a variant; prints the image path")
    b.add_argument("variant", choices=ALL_VARIANTS)
    b.add_argument("--cache", dest="cache2")
    b.add_argument("--force", action="store_true", help="rebuild the image even if cached")
    sub.add_parser("list", help="variants and where their current images are (or would be)")
    pr = sub.add_parser("prune", help="delete cached artifacts the current recipes do not name, unused for N days")
    pr.add_argument("--older-than-days", type=float, default=14.0)
    bt = sub.add_parser("boot", help="boot an image on a throwaway overlay and watch ttyS0")
    bt.add_argument("image")
    bt.add_argument("--bus", default="ide", choices=["ide", "sata", "virtio"])
    bt.add_argument("--timeout", type=float, default=300)
    a = ap.parse_args(argv)
    cache = getattr(a, "cache2", None) or a.cache
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731 - stdout carries only the result
    if a.cmd == "build":
        print(build(a.variant, cache, force=a.force, log=log))
    elif a.cmd == "list":
        for v in ALL_VARIANTS:
            p = image_path(v, cache)
            print("{}\t{}\t{}".format(v, p, "built" if p.exists() else "not built"))
    elif a.cmd == "prune":
        debian.prune(cache, a.older_than_days, log=log)
    elif a.cmd == "boot":
        from .boot import boot
        r = boot(a.image, a.bus, timeout=a.timeout, accel=debian.accel())
        print("\n".join(r.tail))
        print("ok={} seconds={} matched={}".format(r.ok, r.seconds, r.matched))
        return 0 if r.ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
