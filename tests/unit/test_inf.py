"""INF parsing: syntax (strings, quotes, comments, continuation), [Version], [Manufacturer] decorations,
models, CopyFiles, services, and one-line errors with line numbers."""
import datetime
from pathlib import Path

import pytest

from hv_drivers.inf import DriverVer, InfError, TargetOS, decode, parse, parse_decoration

DATA = Path(__file__).resolve().parent.parent / "data" / "virtio-win"

STORAGE = r"""
[Version]
Signature="$Windows NT$"
Class=SCSIAdapter
ClassGUID={4D36E97B-E325-11CE-BFC1-08002BE10318}
Provider=%VENDOR%
DriverVer=08/10/2023,100.94.104.24000 ; replaced by stampinf
CatalogFile=viostor.cat

[Manufacturer]
%VENDOR% = VioStor, NTamd64.10.0...16299, NTamd64.6.1, NTx86.6.1

[VioStor.NTamd64.10.0...16299]
%Desc% = scsi_inst, PCI\VEN_1AF4&DEV_1001&SUBSYS_00021AF4&REV_00, PCI\VEN_1AF4&DEV_1001
%Desc% = scsi_inst, PCI\VEN_1AF4&DEV_1042&SUBSYS_11001AF4&REV_01, PCI\VEN_1AF4&DEV_1042

[VioStor.NTamd64.6.1]
%Desc% = scsi_inst, PCI\VEN_1AF4&DEV_1001&SUBSYS_00021AF4&REV_00

[VioStor.NTx86.6.1]
%Desc% = scsi_inst, PCI\VEN_1AF4&DEV_1001&SUBSYS_00021AF4&REV_00

[viostor_Files_Driver]
viostor.sys,,,2

[scsi_inst]
CopyFiles=viostor_Files_Driver

[scsi_inst.Services]
AddService = viostor, %SPSVCINST_ASSOCSERVICE%, scsi_Service_Inst, scsi_EventLog_Inst

[scsi_Service_Inst]
ServiceType    = %SERVICE_KERNEL_DRIVER%
StartType      = %SERVICE_BOOT_START%
ErrorControl   = %SERVICE_ERROR_NORMAL%
ServiceBinary  = %12%\viostor.sys
LoadOrderGroup = SCSI miniport

[scsi_EventLog_Inst]
AddReg = scsi_EventLog_AddReg

[scsi_EventLog_AddReg]
HKR,,EventMessageFile,%REG_EXPAND_SZ%,"%%SystemRoot%%\System32\IoLogMsg.dll"

[Strings]
VENDOR = "Red Hat, Inc."
Desc = "Red Hat VirtIO SCSI controller"
REG_EXPAND_SZ = 0x00020000
SERVICE_KERNEL_DRIVER = 1
SERVICE_BOOT_START = 0
SERVICE_ERROR_NORMAL = 1
SPSVCINST_ASSOCSERVICE = 0x00000002
"""


def minimal(body: str, version: str = 'Signature="$Windows NT$"\n') -> str:
    return "[Version]\n" + version + body


def test_version_fields_are_read_with_strings_substituted():
    inf = parse(STORAGE, "viostor.inf")
    assert inf.signature == "$Windows NT$"
    assert inf.class_name == "SCSIAdapter"
    assert inf.class_guid == "{4D36E97B-E325-11CE-BFC1-08002BE10318}"
    assert inf.provider == "Red Hat, Inc."
    assert inf.catalog_file == "viostor.cat"


def test_driverver_is_a_date_and_a_four_part_version():
    inf = parse(STORAGE)
    assert inf.driver_ver == DriverVer(datetime.date(2023, 8, 10), (100, 94, 104, 24000))
    assert str(inf.driver_ver) == "08/10/2023,100.94.104.24000"


def test_driverver_version_is_padded_and_optional():
    short = parse(minimal("DriverVer = 1/5/2020,1.2\n")).driver_ver
    assert short == DriverVer(datetime.date(2020, 1, 5), (1, 2, 0, 0))
    date_only = parse(minimal("DriverVer=12/31/2019\n")).driver_ver
    assert date_only == DriverVer(datetime.date(2019, 12, 31), (0, 0, 0, 0))
    assert parse(minimal("")).driver_ver is None


def test_driverver_orders_by_date_then_version():
    older = DriverVer(datetime.date(2023, 1, 1), (200, 0, 0, 0))
    newer = DriverVer(datetime.date(2023, 8, 10), (100, 0, 0, 0))
    same_day_higher = DriverVer(datetime.date(2023, 8, 10), (100, 0, 0, 1))
    assert older < newer < same_day_higher
    assert max([newer, same_day_higher, older]) == same_day_higher


@pytest.mark.parametrize("value", ["13/01/2023,1.0.0.0", "08/10/23,1.0", "08/10/2023,1.0.x",
                                   "08/10/2023,1.2.3.4.5", "08/10/2023,70000.0"])
def test_malformed_driverver_is_an_error_with_its_line(value):
    with pytest.raises(InfError, match=r"^x\.inf:4: DriverVer"):
        parse(minimal("Class=Net\nDriverVer=" + value + "\n"), "x.inf")


def test_strings_are_substituted_in_keys_and_values_case_insensitively():
    inf = parse(minimal("[Sec]\n%KEY% = %value%, plain %Other%\n[Strings]\nkey = \"Alpha\"\nVALUE = beta\n"
                        "other = \"Gamma Delta\"\n"))
    line = inf.section("sec").lines[0]
    assert line.key == "Alpha"
    assert line.fields == ("beta", "plain Gamma Delta")


def test_double_percent_is_a_literal_percent():
    inf = parse(STORAGE)
    line = inf.section("scsi_EventLog_AddReg").lines[0]
    assert line.fields[4] == r"%SystemRoot%\System32\IoLogMsg.dll"


def test_dirids_and_undefined_strings_in_free_text_are_kept():
    inf = parse(minimal("[Sec]\nPath = %12%\\x.sys, %NotDefined%, 100%\n"))
    assert inf.section("Sec").lines[0].fields == ("%12%\\x.sys", "%NotDefined%", "100%")


def test_a_substituted_comma_does_not_split_fields():
    inf = parse(STORAGE)
    assert inf.manufacturers[0].name == "Red Hat, Inc."
    assert inf.models[0].manufacturer == "Red Hat, Inc."


def test_localized_strings_override_the_default_strings():
    text = minimal("Provider=%Vendor%\nClass=%Cls%\n[Strings]\nVendor=\"Default\"\nCls=System\n"
                   "[Strings.0407]\nVendor=\"Hersteller\"\n")
    assert parse(text).provider == "Default"
    german = parse(text, language="0407")
    assert german.provider == "Hersteller"
    assert german.class_name == "System"  # not localized: falls back to [Strings]


def test_semicolon_inside_quotes_is_not_a_comment():
    inf = parse(minimal('[Sec]\nHKR,,Value,0,"a;b" ; a real comment\nTx = "Tx Enabled";\n'))
    lines = inf.section("Sec").lines
    assert lines[0].fields == ("HKR", "", "Value", "0", "a;b")
    assert lines[1].key == "Tx" and lines[1].fields == ("Tx Enabled",)


def test_quotes_keep_spaces_and_doubled_quotes_are_one_quote():
    inf = parse(minimal('[Sec]\nA = "  padded  ", "say ""hi""", "x"y, ""\n'))
    assert inf.section("Sec").lines[0].fields == ("  padded  ", 'say "hi"', "xy", "")


def test_equals_after_a_comma_is_part_of_a_field():
    inf = parse(minimal("[Sec]\nHKR,,Name,0,a=b\n"))
    line = inf.section("Sec").lines[0]
    assert line.key is None
    assert line.fields == ("HKR", "", "Name", "0", "a=b")


def test_trailing_backslash_continues_the_line():
    text = minimal("[Sec]\nA = one, \\\n    two, \\   ; comment after the backslash\n    three\nB = four\n")
    lines = parse(text).section("Sec").lines
    assert lines[0].key == "A" and lines[0].fields == ("one", "two", "three")
    assert (lines[0].line, lines[1].line) == (4, 7)


def test_backslash_inside_a_value_is_literal():
    model = parse(STORAGE).models[0]
    assert model.hardware_ids[0] == r"PCI\VEN_1AF4&DEV_1001&SUBSYS_00021AF4&REV_00"
    assert model.services[0].service_binary == r"%12%\viostor.sys"


def test_section_names_and_keys_are_case_insensitive_and_repeated_sections_merge():
    inf = parse('[version]\nsignature="$WINDOWS NT$"\nCLASS=Net\n[sec]\na=1\n[SEC]\nb=2\n')
    assert inf.class_name == "Net"
    assert [ln.key for ln in inf.section("Sec").lines] == ["a", "b"]
    assert inf.section("SEC").get("B").fields == ("2",)


def test_crlf_and_ctrl_z_end_of_file():
    inf = parse(minimal("Class=Net\r\n").replace("\n", "\r\n") + "\x1agarbage [")
    assert inf.class_name == "Net"


@pytest.mark.parametrize("text,expected", [
    ("NTamd64.10.0...16299", TargetOS("NTamd64.10.0...16299", "amd64", 10, 0, None, None, 16299)),
    ("NTx86.6.1", TargetOS("NTx86.6.1", "x86", 6, 1)),
    ("ntamd64.6.1.3", TargetOS("ntamd64.6.1.3", "amd64", 6, 1, 3)),
    ("NTamd64.6.0.0x3.0x10", TargetOS("NTamd64.6.0.0x3.0x10", "amd64", 6, 0, 3, 0x10)),
    ("NTarm64.10.0...22000", TargetOS("NTarm64.10.0...22000", "arm64", 10, 0, None, None, 22000)),
    ("NTamd64", TargetOS("NTamd64", "amd64")),
    ("NT", TargetOS("NT", None)),
    ("NT.6.1", TargetOS("NT.6.1", None, 6, 1)),
])
def test_target_os_decorations_are_parsed(text, expected):
    assert parse_decoration(text) == expected


@pytest.mark.parametrize("text", ["NTsparc", "Win10", "NTamd64.ten", "NTamd64.10.0.1.2.3.4"])
def test_malformed_decoration_is_an_error(text):
    with pytest.raises(InfError, match="decoration"):
        parse_decoration(text, "x.inf", 9)


def test_manufacturer_lists_models_section_and_decorations():
    (mfr,) = parse(STORAGE).manufacturers
    assert mfr.models_section == "VioStor"
    assert [d.text for d in mfr.decorations] == ["NTamd64.10.0...16299", "NTamd64.6.1", "NTx86.6.1"]


def test_models_carry_decoration_hardware_ids_install_section_and_copy_files():
    models = parse(STORAGE).models
    assert len(models) == 4
    first = models[0]
    assert first.decoration.build == 16299 and first.decoration.arch == "amd64"
    assert first.models_section == "VioStor.NTamd64.10.0...16299"
    assert first.description == "Red Hat VirtIO SCSI controller"
    assert first.hardware_ids == (r"PCI\VEN_1AF4&DEV_1001&SUBSYS_00021AF4&REV_00", r"PCI\VEN_1AF4&DEV_1001")
    assert first.install_section == "scsi_inst"
    assert first.copy_files == ("viostor.sys",)
    assert models[1].hardware_ids[1] == r"PCI\VEN_1AF4&DEV_1042"


def test_addservice_and_its_service_install_section():
    service = parse(STORAGE).models[0].function_service
    assert service is not None
    assert service.name == "viostor"
    assert service.flags == 2 and service.is_function_driver
    assert (service.service_type, service.start_type, service.error_control) == (1, 0, 1)
    assert service.load_order_group == "SCSI miniport"
    assert service.binary_file == "viostor.sys"
    assert service.binary_dirid == 12
    assert service.section == "scsi_Service_Inst"


def test_service_numbers_accept_hex_and_trailing_comments():
    text = minimal("[Manufacturer]\nM = Models, NTamd64\n[Models.NTamd64]\n"
                   "Dev = inst, PCI\\VEN_1AF4&DEV_1000\n"
                   "[inst]\n[inst.Services]\nAddService = netkvm, 0x2, svc\nAddService = , 0x00000002\n"
                   "[svc]\nDisplayName = \"Net\"\nServiceType = 0x1 ; kernel\n"
                   "StartType = 3 ;%SERVICE_DEMAND_START%\nErrorControl = 0x00000001\n"
                   "ServiceBinary = %13%\\netkvm.sys\nDependencies = NDIS, +Base\n")
    (model,) = parse(text).models
    (service,) = model.services  # the null service line installs nothing
    assert (service.service_type, service.start_type, service.error_control) == (1, 3, 1)
    assert service.binary_dirid == 13 and service.display_name == "Net"
    assert service.dependencies == ("NDIS", "+Base")
    assert service.load_order_group is None


def test_platform_decorated_install_section_is_preferred():
    text = minimal("[Manufacturer]\nM = Models, NTamd64, NTx86, NTarm64\n[Models.NTamd64]\nD = inst, ID\\1\n"
                   "[Models.NTx86]\nD = inst, ID\\1\n[Models.NTarm64]\nD = inst, ID\\1\n"
                   "[inst.NTamd64]\nCopyFiles = @amd64.sys\n[inst.NT]\nCopyFiles = @any.sys\n[inst]\n"
                   "CopyFiles = @plain.sys\n[inst.NTamd64.Services]\nAddService = a, 2, svc\n"
                   "[svc]\nServiceType=1\nStartType=3\nErrorControl=1\nServiceBinary=%12%\\a.sys\n")
    amd64, x86, arm64 = parse(text).models
    assert (amd64.install_section, amd64.copy_files) == ("inst.NTamd64", ("amd64.sys",))
    assert amd64.services[0].name == "a"
    assert (x86.install_section, x86.copy_files, x86.services) == ("inst.NT", ("any.sys",), ())
    assert arm64.install_section == "inst.NT"


def test_copyfiles_takes_sections_single_files_and_source_names():
    text = minimal("[Manufacturer]\nM = Models\n[Models]\nD = inst, ID\\1\n[inst]\n"
                   "CopyFiles = files, @tool.exe\nCopyFiles = more\n"
                   "[files]\na.sys,,,2\nb.dll\n[more]\nrenamed.sys, original.sys\na.sys\n")
    (model,) = parse(text).models
    assert model.copy_files == ("a.sys", "b.dll", "tool.exe", "original.sys")


def test_models_for_picks_the_closest_decoration_that_applies():
    inf = parse(STORAGE)

    def sections(*args, **kwargs):
        return {m.models_section for m in inf.models_for(*args, **kwargs)}
    assert sections("amd64", 10, 0, 1, 19045) == {"VioStor.NTamd64.10.0...16299"}
    assert sections("amd64", 10, 0, 1, 15063) == {"VioStor.NTamd64.6.1"}  # build older than 16299
    # an unknown build is not held against a decoration
    assert sections("amd64", 10, 0, 1, None) == {"VioStor.NTamd64.10.0...16299"}
    assert sections("amd64", 6, 3, 3) == {"VioStor.NTamd64.6.1"}
    assert sections("x86", 6, 1, 1) == {"VioStor.NTx86.6.1"}
    assert sections("amd64", 6, 0, 3) == set()  # older than every decoration
    assert sections("arm64", 10, 0, 1, 22621) == set()


def test_product_type_decoration_limits_models_to_its_edition():
    server_only = TargetOS("NTamd64.6.1.3", "amd64", 6, 1, 3)
    assert server_only.applies_to("amd64", 6, 1, 3)
    assert server_only.applies_to("amd64", 6, 1, 2)  # a domain controller is a server
    assert not server_only.applies_to("amd64", 6, 1, 1)
    assert server_only.applies_to("amd64", 6, 1, None)


def test_undecorated_models_apply_only_to_x86():
    text = minimal("[Manufacturer]\nM = Models\n[Models]\nD = inst, ID\\1\n[inst]\n")
    inf = parse(text)
    assert inf.models[0].decoration == TargetOS("")
    assert inf.models_for("x86", 6, 1) == inf.models
    assert inf.models_for("amd64", 6, 1) == ()


def test_catalog_and_source_files_by_architecture():
    text = minimal("[SourceDisksFiles]\ncommon.sys = 1\n[SourceDisksFiles.amd64]\nx64.sys = 1,,\n",
                   version='Signature="$Windows NT$"\nCatalogFile = all.cat\nCatalogFile.NTamd64 = x64.cat\n')
    inf = parse(text)
    assert inf.catalog_for("amd64") == "x64.cat"
    assert inf.catalog_for("x86") == "all.cat"
    assert inf.source_disks_files("amd64") == ("common.sys", "x64.sys")


def test_utf16le_with_bom_is_decoded():
    data = b"\xff\xfe" + STORAGE.replace("\n", "\r\n").encode("utf-16-le")
    assert parse(data).provider == "Red Hat, Inc."


def test_utf8_bom_bomless_utf16_and_cp1252_are_decoded():
    text = minimal('Provider="Caf\u00e9 \u00a9"\n')
    assert parse(b"\xef\xbb\xbf" + text.encode("utf-8")).provider == "Caf\u00e9 \u00a9"
    assert parse(text.encode("utf-16-le")).provider == "Caf\u00e9 \u00a9"
    assert parse(text.encode("cp1252")).provider == "Caf\u00e9 \u00a9"
    assert decode(b"plain ascii") == "plain ascii"


def test_fixture_utf16_inf_from_the_tree_parses():
    inf = parse((DATA / "iso/viostor/2k8r2/amd64/viostor.inf").read_bytes(), "viostor.inf")
    assert inf.models[0].decoration.product_type == 3
    assert inf.models[0].function_service.start_type == 0


def test_every_fixture_inf_parses():
    infs = sorted(DATA.rglob("*.inf"))
    assert len(infs) >= 25
    for path in infs:
        inf = parse(path.read_bytes(), str(path))
        assert inf.models and inf.driver_ver is not None, path


# --- errors: one line, file and line number ---------------------------------------------------------

@pytest.mark.parametrize("text,message", [
    ("[Version\nSignature=\"$Windows NT$\"\n", r"^bad\.inf:1: unterminated section header"),
    (minimal("[Sec]\nA = \"open\n"), r"^bad\.inf:4: unbalanced quotes"),
    (minimal("[Sec]\nA = \"a\"\"\n"), r"^bad\.inf:4: unbalanced quotes"),
    ("; header\nSignature=\"$Windows NT$\"\n[Version]\n", r"^bad\.inf:2: text before the first section"),
    ("[Strings]\nA=1\n", r"^bad\.inf: no \[Version\] section"),
    ("[Version]\nClass=Net\n", r"^bad\.inf:1: \[Version\] has no Signature"),
    ("[Version]\nSignature=\"$Linux$\"\n", r"^bad\.inf:2: unknown Signature"),
    (minimal("ClassGuid={not-a-guid}\n"), r"^bad\.inf:3: ClassGuid"),
    (minimal("[ ]\n"), r"^bad\.inf:3: empty section name"),
    (minimal("[Manufacturer]\nM = Models, NTamd64\n"),
     r"^bad\.inf:4: models section \[Models\.NTamd64\] not found"),
    (minimal("[Manufacturer]\nM = Models, NTamd64\n[Models.NTamd64]\nD = inst, ID\\1\n"),
     r"^bad\.inf:6: install section \[inst\] not found"),
    (minimal("[Manufacturer]\nM = Models\n[Models]\nD = inst\n[inst]\n"),
     r"^bad\.inf:6: model line without a hardware id"),
    (minimal("[Manufacturer]\nM = Models\n[Models]\nD = inst, ID\\1\n[inst]\nCopyFiles = nowhere\n"),
     r"^bad\.inf:8: CopyFiles section \[nowhere\] not found"),
    (minimal("[Manufacturer]\nM = Models, NTamd64.x\n"), r"^bad\.inf:4: bad TargetOSVersion decoration"),
])
def test_broken_syntax_is_a_one_line_error_naming_file_and_line(text, message):
    with pytest.raises(InfError, match=message) as err:
        parse(text, "bad.inf")
    assert "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)


def service_inf(service_section: str) -> str:
    return minimal("[Manufacturer]\nM = Models, NTamd64\n[Models.NTamd64]\nD = inst, PCI\\VEN_1AF4&DEV_1001\n"
                   "[inst]\n[inst.Services]\nAddService = viostor, 2, svc\n[svc]\n" + service_section +
                   "[Strings]\nSERVICE_KERNEL_DRIVER = 1\n")


def test_undefined_string_in_a_service_setting_is_an_error_with_its_line():
    text = service_inf("ServiceType = %SERVICE_KERNEL_DRIVER%\nStartType = %SERVICE_BOOT_START%\n"
                       "ErrorControl = 1\nServiceBinary = %12%\\viostor.sys\n")
    with pytest.raises(InfError, match=r"^viostor\.inf:12: undefined string %SERVICE_BOOT_START%$"):
        parse(text, "viostor.inf")


def test_missing_or_non_numeric_service_setting_is_an_error():
    with pytest.raises(InfError, match=r":10: \[svc\] has no StartType"):
        parse(service_inf("ServiceType = 1\nErrorControl = 1\nServiceBinary = %12%\\viostor.sys\n"), "x.inf")
    with pytest.raises(InfError, match=r":12: StartType 'boot' is not a number"):
        parse(service_inf("ServiceType = 1\nStartType = boot\nErrorControl = 1\nServiceBinary = x.sys\n"),
              "x.inf")


def test_undefined_string_in_a_hardware_id_is_an_error():
    text = minimal("[Manufacturer]\nM = Models\n[Models]\nD = inst, %HWID%\n[inst]\n")
    with pytest.raises(InfError, match=r"^x\.inf:6: undefined string %HWID%"):
        parse(text, "x.inf")


def test_binary_data_is_not_an_inf():
    with pytest.raises(InfError, match="not an INF text file"):
        parse(b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00", "viostor.sys")
