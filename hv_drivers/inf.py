"""Windows driver INF files: sections, [Strings], [Version], [Manufacturer] decorations, models,
CopyFiles and service installation.

Pure: ``parse`` takes the file's bytes (or text) and does no I/O. The syntax follows Microsoft's
"General Syntax Rules for INF Files": case-insensitive section names and keys, ``;`` comments outside
quotes, ``""`` for a quote inside quotes, a trailing ``\\`` continues a line, ``%strkey%`` from [Strings]
(``%%`` is a literal ``%``, ``%12%``-style DIRIDs are kept for the caller).
"""
import datetime
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

# AddService flag: this service is the device's function driver.
SPSVCINST_ASSOCSERVICE = 0x00000002

# TargetOSVersion ProductType values (VER_NT_* in winnt.h).
VER_NT_WORKSTATION = 1
VER_NT_DOMAIN_CONTROLLER = 2
VER_NT_SERVER = 3

SERVICE_KERNEL_DRIVER = 1
SERVICE_BOOT_START = 0
SERVICE_SYSTEM_START = 1
SERVICE_DEMAND_START = 3
SERVICE_ERROR_NORMAL = 1

ARCHITECTURES = ("x86", "amd64", "ia64", "arm", "arm64")
SIGNATURES = ("$windows nt$", "$chicago$", "$windows 95$")

_DECORATION = re.compile(r"^nt(amd64|x86|ia64|arm64|arm)?(\..*)?$", re.IGNORECASE)
_GUID = re.compile(r"^\{[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\}$", re.IGNORECASE)
_DIRID = re.compile(r"^%(\d+)%")

# Kinds of characters in a tokenized line.
_PLAIN, _QUOTED, _SEP = 0, 1, 2
_Char = Tuple[str, int]


class InfError(ValueError):
    """An INF file that cannot be parsed; str() is one line naming the file and the line."""

    def __init__(self, name: str, line: Optional[int], reason: str) -> None:
        self.name = name
        self.line = line
        self.reason = reason
        where = "{}:{}".format(name, line) if line else name
        super().__init__("{}: {}".format(where, " ".join(reason.split())))


@dataclass(frozen=True, order=True)
class DriverVer:
    """[Version] DriverVer: ordered like Windows ranks drivers, by date and then by version."""

    date: datetime.date
    version: Tuple[int, int, int, int]

    def __str__(self) -> str:
        return "{:02d}/{:02d}/{:04d},{}".format(self.date.month, self.date.day, self.date.year,
                                                ".".join(str(v) for v in self.version))


@dataclass(frozen=True)
class TargetOS:
    """A TargetOSVersion decoration: NT[arch][.major[.minor[.producttype[.suitemask[.build]]]]].

    Every field is a minimum or a filter; None means not specified. ``text`` is the decoration as
    written ("" for an undecorated models section). ``arch`` None applies to x86 only: since Windows
    Server 2003 SP1 other platforms need an explicit decoration.
    """

    text: str
    arch: Optional[str] = None
    os_major: Optional[int] = None
    os_minor: Optional[int] = None
    product_type: Optional[int] = None
    suite_mask: Optional[int] = None
    build: Optional[int] = None

    def applies_to(self, arch: str, os_major: int, os_minor: int, product_type: Optional[int] = None,
                   build: Optional[int] = None) -> bool:
        """True when Windows of this version, product type (VER_NT_*) and build on ``arch`` may use it.

        An unknown product type or build is not held against the decoration; the suite mask is ignored.
        """
        if (self.arch or "x86") != arch:
            return False
        if self.product_type is not None and product_type is not None \
                and _is_server(self.product_type) != _is_server(product_type):
            return False
        if self.os_major is None:
            return True
        need = (self.os_major, self.os_minor or 0)
        have = (os_major, os_minor)
        if have != need:
            return have > need
        return self.build is None or build is None or build >= self.build

    def specificity(self) -> Tuple[int, int, int, bool, bool, bool]:
        """Sort key: of several decorations that apply, Windows uses the closest (the highest)."""
        return (self.os_major or 0, self.os_minor or 0, self.build or 0, self.product_type is not None,
                self.suite_mask is not None, self.arch is not None)


@dataclass(frozen=True)
class ServiceInstall:
    """An AddService directive and the service-install section it names."""

    name: str
    flags: int
    section: str
    display_name: Optional[str]
    service_type: int
    start_type: int
    error_control: int
    service_binary: str  # after string substitution; a leading DIRID such as %12% is kept
    load_order_group: Optional[str]
    dependencies: Tuple[str, ...]
    line: int

    @property
    def is_function_driver(self) -> bool:
        return bool(self.flags & SPSVCINST_ASSOCSERVICE)

    @property
    def binary_file(self) -> str:
        """The driver file name, e.g. 'viostor.sys'."""
        return self.service_binary.replace("/", "\\").rsplit("\\", 1)[-1]

    @property
    def binary_dirid(self) -> Optional[int]:
        """The DIRID the binary lives under (12: drivers, 13: driver store), None when not given."""
        m = _DIRID.match(self.service_binary)
        return int(m.group(1)) if m else None


@dataclass(frozen=True)
class Manufacturer:
    """A [Manufacturer] entry: its models section and the decorations it is offered for."""

    name: str
    models_section: str
    decorations: Tuple[TargetOS, ...]
    line: int


@dataclass(frozen=True)
class Model:
    """One device line of a models section, with what installing it does."""

    manufacturer: str
    description: str
    decoration: TargetOS
    models_section: str  # e.g. 'VioStor.NTamd64.10.0...16299'
    install_section: str  # the DDInstall section used on decoration.arch, e.g. 'BALLOON_Device.NT'
    hardware_ids: Tuple[str, ...]  # the hardware id first, then compatible ids
    copy_files: Tuple[str, ...]  # file names on the distribution media
    services: Tuple[ServiceInstall, ...]
    line: int

    @property
    def function_service(self) -> Optional[ServiceInstall]:
        """The service flagged SPSVCINST_ASSOCSERVICE, else the first one."""
        for s in self.services:
            if s.is_function_driver:
                return s
        return self.services[0] if self.services else None


@dataclass(frozen=True)
class InfLine:
    """One logical line: key (None when there is no '='), fields with quotes removed, strings substituted
    (an undefined %strkey% is left as written)."""

    key: Optional[str]
    fields: Tuple[str, ...]
    line: int


@dataclass(frozen=True)
class Section:
    name: str  # as first written
    line: int
    lines: Tuple[InfLine, ...]

    def get(self, key: str) -> Optional[InfLine]:
        """The first line with this key (case-insensitive)."""
        k = key.lower()
        for ln in self.lines:
            if ln.key is not None and ln.key.lower() == k:
                return ln
        return None


@dataclass(frozen=True)
class InfFile:
    name: str
    signature: str
    class_name: Optional[str]
    class_guid: Optional[str]
    provider: Optional[str]
    driver_ver: Optional[DriverVer]
    catalog_file: Optional[str]  # undecorated CatalogFile; see catalog_for()
    manufacturers: Tuple[Manufacturer, ...]
    models: Tuple[Model, ...]
    strings: Mapping[str, str] = field(compare=False, repr=False)  # lower-case key -> value
    sections: Mapping[str, Section] = field(compare=False, repr=False)  # lower-case name -> section

    def section(self, name: str) -> Optional[Section]:
        return self.sections.get(name.lower())

    def catalog_for(self, arch: str) -> Optional[str]:
        """CatalogFile.NT<arch>, else CatalogFile.NT, else CatalogFile."""
        version = self.section("Version")
        for key in ("CatalogFile.NT" + arch, "CatalogFile.NT", "CatalogFile"):
            ln = version.get(key) if version else None
            if ln is not None and ln.fields and ln.fields[0]:
                return ln.fields[0]
        return None

    def source_disks_files(self, arch: str) -> Tuple[str, ...]:
        """File names listed in [SourceDisksFiles] and [SourceDisksFiles.<arch>]."""
        out: List[str] = []
        for name in ("SourceDisksFiles", "SourceDisksFiles." + arch):
            sec = self.section(name)
            for ln in sec.lines if sec else ():
                f = ln.key if ln.key is not None else ln.fields[0]
                if f and f not in out:
                    out.append(f)
        return tuple(out)

    def models_for(self, arch: str, os_major: int, os_minor: int, product_type: Optional[int] = None,
                   build: Optional[int] = None) -> Tuple[Model, ...]:
        """The models Windows would consider on this OS: per manufacturer, the closest applicable
        decoration's models section (an undecorated section counts as the least specific)."""
        out: List[Model] = []
        for mfr in self.manufacturers:
            usable = [m for m in self.models if m.manufacturer == mfr.name
                      and _same_name(_base_of(m), mfr.models_section)
                      and m.decoration.applies_to(arch, os_major, os_minor, product_type, build)]
            if not usable:
                continue
            best = max(m.decoration.specificity() for m in usable)
            out.extend(m for m in usable if m.decoration.specificity() == best and m not in out)
        return tuple(out)


def _base_of(m: Model) -> str:
    if not m.decoration.text:
        return m.models_section
    return m.models_section[:len(m.models_section) - len(m.decoration.text) - 1]


def _same_name(a: str, b: str) -> bool:
    return a.lower() == b.lower()


def _is_server(product_type: int) -> bool:
    return product_type in (VER_NT_DOMAIN_CONTROLLER, VER_NT_SERVER)


def decode(data: bytes, name: str = "<inf>") -> str:
    """INF bytes to text: UTF-16 or UTF-8 by BOM; without one, BOM-less UTF-16LE, UTF-8, else cp1252."""
    try:
        if data.startswith(b"\xff\xfe"):
            return data[2:].decode("utf-16-le")
        if data.startswith(b"\xfe\xff"):
            return data[2:].decode("utf-16-be")
        if data.startswith(b"\xef\xbb\xbf"):
            return data[3:].decode("utf-8")
    except UnicodeDecodeError as e:
        raise InfError(name, None, "not valid text in the encoding its BOM names ({})".format(e.reason)) \
            from None
    if len(data) >= 4 and data[0] != 0 and data[1] == 0 and data[3] == 0:
        try:
            return data.decode("utf-16-le")
        except UnicodeDecodeError:
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def parse_decoration(text: str, name: str = "<inf>", line: Optional[int] = None) -> TargetOS:
    """Parse a TargetOSVersion decoration such as 'NTamd64.10.0...16299'."""
    m = _DECORATION.match(text.strip())
    if not m:
        raise InfError(name, line, "bad TargetOSVersion decoration {!r}".format(text))
    parts = m.group(2)[1:].split(".") if m.group(2) else []
    if len(parts) > 5:
        raise InfError(name, line, "bad TargetOSVersion decoration {!r}: too many fields".format(text))
    values: List[Optional[int]] = []
    for p in parts + [""] * (5 - len(parts)):
        p = p.strip()
        if not p:
            values.append(None)
            continue
        try:
            values.append(_number(p))
        except ValueError:
            raise InfError(name, line, "bad TargetOSVersion decoration {!r}: {!r} is not a number"
                           .format(text, p)) from None
    arch = m.group(1).lower() if m.group(1) else None
    return TargetOS(text.strip(), arch, values[0], values[1], values[2], values[3], values[4])


def parse(data: Union[bytes, str], name: str = "<inf>", language: str = "0409") -> InfFile:
    """Parse an INF file. ``name`` is used in error messages; ``language`` picks [Strings.<LANGID>]
    over [Strings]. Raises InfError for syntax errors and for broken references between sections."""
    text = decode(data, name) if isinstance(data, (bytes, bytearray)) else data
    return _Parser(text, name, language).build()


def _number(text: str) -> int:
    """An INF number: decimal, or hexadecimal with 0x."""
    t = text.strip()
    if t.lower().startswith("0x"):
        return int(t, 16)
    if t.startswith("-"):
        return -int(t[1:], 10)
    return int(t, 10)


@dataclass
class _RawLine:
    key: Optional[str]
    fields: List[str]
    line: int


@dataclass
class _RawSection:
    name: str
    line: int
    lines: List[_RawLine]


class _Parser:
    def __init__(self, text: str, name: str, language: str) -> None:
        self.name = name
        self.sections: Dict[str, _RawSection] = {}
        text = text.removeprefix("\ufeff").split("\x1a", 1)[0]  # Ctrl-Z ends the file, as in setupapi
        if "\x00" in text:
            raise InfError(name, None, "contains NUL characters: not an INF text file")
        self._read(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
        self.strings: Dict[str, str] = {}
        # [Strings.<LANGID>] overrides [Strings]; within one section the first definition counts
        for sec_name in ("strings." + language.lower(), "strings"):
            sec = self.sections.get(sec_name)
            for ln in sec.lines if sec else ():
                if ln.key is not None and ln.key.lower() not in self.strings:
                    self.strings[ln.key.lower()] = ln.fields[0]

    # --- lexing -------------------------------------------------------------------------------------

    def _read(self, lines: List[str]) -> None:
        current: Optional[_RawSection] = None
        i = 0
        while i < len(lines):
            lineno = i + 1
            physical = lines[i]
            i += 1
            stripped = physical.strip()
            if stripped.startswith("["):
                end = stripped.find("]")
                if end < 0:
                    raise InfError(self.name, lineno, "unterminated section header {!r}".format(stripped))
                sec_name = stripped[1:end].strip()
                if not sec_name:
                    raise InfError(self.name, lineno, "empty section name")
                current = self.sections.get(sec_name.lower())
                if current is None:  # sections of the same name are merged
                    current = self.sections[sec_name.lower()] = _RawSection(sec_name, lineno, [])
                continue
            chars: List[_Char] = []
            start = lineno
            while self._lex(physical, lineno, chars) and i < len(lines):
                physical = lines[i]
                lineno = i + 1
                i += 1
            if all(k == _PLAIN and c.isspace() for c, k in chars):
                continue
            if current is None:
                raise InfError(self.name, start, "text before the first section header")
            is_strings = current.name.lower() == "strings" or current.name.lower().startswith("strings.")
            key, fields = _split(chars, split_commas=not is_strings)
            current.lines.append(_RawLine(key, fields, start))

    def _lex(self, text: str, lineno: int, out: List[_Char]) -> bool:
        """Append the characters of one physical line to ``out``; True when a trailing backslash
        continues the logical line on the next physical line."""
        j, n = 0, len(text)
        while j < n:
            c = text[j]
            if c == '"':
                k = j + 1
                while True:
                    if k >= n:
                        raise InfError(self.name, lineno, "unbalanced quotes")
                    if text[k] == '"':
                        if k + 1 < n and text[k + 1] == '"':  # "" inside quotes is one quote
                            out.append(('"', _QUOTED))
                            k += 2
                            continue
                        break
                    out.append((text[k], _QUOTED))
                    k += 1
                j = k + 1
                continue
            if c == ";":
                return False
            if c in ",=":
                out.append((c, _SEP))
            elif c == "\\" and (not text[j + 1:].strip() or text[j + 1:].lstrip().startswith(";")):
                return True
            else:
                out.append((c, _PLAIN))
            j += 1
        return False

    # --- substitution and typed values ----------------------------------------------------------------

    def subst(self, text: str, line: int, strict: bool = False) -> str:
        """Replace %strkey% tokens; %% is a literal %, %<digits>% (a DIRID) is kept. Strict: an
        undefined %strkey% is an error."""
        if "%" not in text:
            return text
        out: List[str] = []
        i = 0
        while i < len(text):
            start = text.find("%", i)
            end = text.find("%", start + 1) if start >= 0 else -1
            if end < 0:  # no more tokens; a lone % is literal
                out.append(text[i:])
                break
            out.append(text[i:start])
            token = text[start + 1:end]
            if token == "":
                out.append("%")
            elif token.lower() in self.strings:
                out.append(self.strings[token.lower()])
            elif token.isdigit() or not strict:
                out.append(text[start:end + 1])
            else:
                raise InfError(self.name, line, "undefined string %{}%".format(token))
            i = end + 1
        return "".join(out)

    def field(self, ln: _RawLine, index: int, strict: bool = True) -> str:
        return self.subst(ln.fields[index], ln.line, strict) if index < len(ln.fields) else ""

    def number(self, ln: _RawLine, index: int, what: str) -> int:
        value = self.field(ln, index)
        try:
            return _number(value)
        except ValueError:
            raise InfError(self.name, ln.line, "{} {!r} is not a number".format(what, value)) from None

    def section(self, name: str) -> Optional[_RawSection]:
        return self.sections.get(name.lower())

    def lines_with(self, sec: _RawSection, key: str) -> List[_RawLine]:
        k = key.lower()
        return [ln for ln in sec.lines if ln.key is not None and ln.key.lower() == k]

    def first(self, sec: _RawSection, key: str) -> Optional[_RawLine]:
        found = self.lines_with(sec, key)
        return found[0] if found else None

    # --- the INF's structure --------------------------------------------------------------------------

    def build(self) -> InfFile:
        version = self.section("Version")
        if version is None:
            raise InfError(self.name, None, "no [Version] section")
        sig = self.first(version, "Signature")
        if sig is None:
            raise InfError(self.name, version.line, "[Version] has no Signature")
        signature = self.field(sig, 0, strict=False)
        if signature.lower() not in SIGNATURES:
            raise InfError(self.name, sig.line, "unknown Signature {!r}".format(signature))
        guid_line = self.first(version, "ClassGuid")
        class_guid = self.optional(version, "ClassGuid")
        if guid_line and class_guid is not None and not _GUID.match(class_guid):
            raise InfError(self.name, guid_line.line, "ClassGuid {!r} is not a GUID".format(class_guid))
        dv = self.first(version, "DriverVer")
        provider = self.first(version, "Provider")
        manufacturers = self.manufacturers()
        return InfFile(
            name=self.name, signature=signature, class_name=self.optional(version, "Class"),
            class_guid=class_guid,
            provider=", ".join(self.subst(f, provider.line) for f in provider.fields) if provider else None,
            driver_ver=self.driver_ver(dv) if dv else None,
            catalog_file=self.optional(version, "CatalogFile"),
            manufacturers=manufacturers,
            models=tuple(m for mfr in manufacturers for m in self.models(mfr)),
            strings=dict(self.strings),
            sections={k: self.public_section(s) for k, s in self.sections.items()})

    def public_section(self, sec: _RawSection) -> Section:
        return Section(sec.name, sec.line, tuple(
            InfLine(self.subst(ln.key, ln.line) if ln.key is not None else None,
                    tuple(self.subst(f, ln.line) for f in ln.fields), ln.line) for ln in sec.lines))

    def optional(self, sec: _RawSection, key: str) -> Optional[str]:
        ln = self.first(sec, key)
        value = self.field(ln, 0) if ln else ""
        return value or None

    def driver_ver(self, ln: _RawLine) -> DriverVer:
        date_text, version_text = self.field(ln, 0), self.field(ln, 1)
        m = re.match(r"^(\d{1,2})/(\d{1,2})/(\d{4})$", date_text)
        try:
            if not m:
                raise ValueError
            date = datetime.date(int(m.group(3)), int(m.group(1)), int(m.group(2)))
        except ValueError:
            raise InfError(self.name, ln.line, "DriverVer date {!r} is not mm/dd/yyyy".format(date_text)) \
                from None
        parts = version_text.split(".") if version_text else []
        if len(parts) > 4 or not all(p.isdigit() and int(p) <= 0xFFFF for p in parts):
            raise InfError(self.name, ln.line, "DriverVer version {!r} is not w.x.y.z".format(version_text))
        numbers = [int(p) for p in parts] + [0] * (4 - len(parts))
        return DriverVer(date, (numbers[0], numbers[1], numbers[2], numbers[3]))

    def manufacturers(self) -> Tuple[Manufacturer, ...]:
        sec = self.section("Manufacturer")
        out: List[Manufacturer] = []
        for ln in sec.lines if sec else ():
            if ln.key is None:  # "manufacturer-name": the models section has the same name
                models = self.field(ln, 0)
                out.append(Manufacturer(models, models, (), ln.line))
                continue
            models = self.field(ln, 0)
            if not models:
                raise InfError(self.name, ln.line, "manufacturer entry without a models section")
            decorations = tuple(parse_decoration(self.field(ln, i), self.name, ln.line)
                                for i in range(1, len(ln.fields)) if self.field(ln, i))
            out.append(Manufacturer(self.subst(ln.key, ln.line), models, decorations, ln.line))
        return tuple(out)

    def models(self, mfr: Manufacturer) -> List[Model]:
        plain = self.section(mfr.models_section)
        sections: List[Tuple[TargetOS, _RawSection]] = []
        if plain is not None:
            sections.append((TargetOS(""), plain))
        elif not mfr.decorations:
            raise InfError(self.name, mfr.line, "models section [{}] not found".format(mfr.models_section))
        for deco in mfr.decorations:
            sec = self.section(mfr.models_section + "." + deco.text)
            if sec is None:
                raise InfError(self.name, mfr.line, "models section [{}.{}] not found"
                               .format(mfr.models_section, deco.text))
            sections.append((deco, sec))
        out: List[Model] = []
        for deco, sec in sections:
            for ln in sec.lines:
                if ln.key is None:
                    raise InfError(self.name, ln.line, "model line without a device description")
                install = self.field(ln, 0)
                if not install:
                    raise InfError(self.name, ln.line, "model line without an install section")
                ids = tuple(i for i in (self.field(ln, k) for k in range(1, len(ln.fields))) if i)
                if not ids:
                    raise InfError(self.name, ln.line, "model line without a hardware id")
                ddinstall = self.ddinstall(install, deco.arch)
                if ddinstall is None:
                    raise InfError(self.name, ln.line, "install section [{}] not found".format(install))
                out.append(Model(mfr.name, self.subst(ln.key, ln.line), deco, sec.name, ddinstall.name, ids,
                                 self.copy_files(ddinstall), self.services(ddinstall.name), ln.line))
        return out

    def ddinstall(self, install: str, arch: Optional[str]) -> Optional[_RawSection]:
        for candidate in (install + ".NT" + (arch or "x86"), install + ".NT", install):
            sec = self.section(candidate)
            if sec is not None:
                return sec
        return None

    def copy_files(self, ddinstall: _RawSection) -> Tuple[str, ...]:
        out: List[str] = []
        for ln in self.lines_with(ddinstall, "CopyFiles"):
            for i in range(len(ln.fields)):
                item = self.field(ln, i)
                if not item:
                    continue
                if item.startswith("@"):
                    names = [item[1:].strip()]
                else:
                    sec = self.section(item)
                    if sec is None:
                        raise InfError(self.name, ln.line, "CopyFiles section [{}] not found".format(item))
                    # lines are "destination[,source[,unused[,flags]]]": the media holds the source name
                    names = [self.field(fl, 1) or self.field(fl, 0) for fl in sec.lines if fl.key is None]
                out.extend(n for n in names if n and n not in out)
        return tuple(out)

    def services(self, ddinstall_name: str) -> Tuple[ServiceInstall, ...]:
        sec = self.section(ddinstall_name + ".Services")
        out: List[ServiceInstall] = []
        for ln in self.lines_with(sec, "AddService") if sec else []:
            name, install = self.field(ln, 0), self.field(ln, 2)
            flags = self.number(ln, 1, "AddService flags") if self.field(ln, 1) else 0
            if not name or not install:  # a null service (no driver) or a service without settings
                continue
            out.append(self.service(name, flags, install, ln))
        return tuple(out)

    def service(self, name: str, flags: int, install: str, add: _RawLine) -> ServiceInstall:
        sec = self.section(install)
        if sec is None:
            raise InfError(self.name, add.line, "service install section [{}] not found".format(install))
        deps = self.first(sec, "Dependencies")
        return ServiceInstall(
            name=name, flags=flags, section=sec.name,
            display_name=self.optional_text(sec, "DisplayName"),
            service_type=self.number(self.required(sec, "ServiceType"), 0, "ServiceType"),
            start_type=self.number(self.required(sec, "StartType"), 0, "StartType"),
            error_control=self.number(self.required(sec, "ErrorControl"), 0, "ErrorControl"),
            service_binary=self.field(self.required(sec, "ServiceBinary"), 0),
            load_order_group=self.optional(sec, "LoadOrderGroup"),
            dependencies=tuple(d for d in (self.field(deps, i) for i in range(len(deps.fields))) if d)
            if deps else (),
            line=add.line)

    def required(self, sec: _RawSection, key: str) -> _RawLine:
        ln = self.first(sec, key)
        if ln is None:
            raise InfError(self.name, sec.line, "[{}] has no {}".format(sec.name, key))
        return ln

    def optional_text(self, sec: _RawSection, key: str) -> Optional[str]:
        ln = self.first(sec, key)
        return self.subst(ln.fields[0], ln.line) if ln and ln.fields[0] else None


def _split(chars: Sequence[_Char], split_commas: bool) -> Tuple[Optional[str], List[str]]:
    """Key (text before an '=' that precedes every ',') and comma-separated fields, trimmed."""
    key: Optional[str] = None
    first_sep = next((i for i, (_, k) in enumerate(chars) if k == _SEP), None)
    if first_sep is not None and chars[first_sep][0] == "=":
        key = _text(chars[:first_sep])
        chars = chars[first_sep + 1:]
    fields: List[str] = []
    current: List[_Char] = []
    for c, k in chars:
        if k == _SEP and c == "," and split_commas:
            fields.append(_text(current))
            current = []
        else:
            current.append((c, _PLAIN if k == _SEP else k))
    fields.append(_text(current))
    return key, fields


def _text(chars: Sequence[_Char]) -> str:
    """The characters, without unquoted whitespace at either end."""
    a, b = 0, len(chars)
    while a < b and chars[a][1] == _PLAIN and chars[a][0].isspace():
        a += 1
    while b > a and chars[b - 1][1] == _PLAIN and chars[b - 1][0].isspace():
        b -= 1
    return "".join(c for c, _ in chars[a:b])
