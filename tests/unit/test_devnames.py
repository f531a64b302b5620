from guest_fixups.linux.devnames import appliance_device, is_bus_name, rewrite_table, rewrite_words

UUIDS = {"/dev/sda1": "UUID=1111", "/dev/sda2": "UUID=2222", "/dev/hda1": "UUID=1111",
         "/dev/xvdb1": "UUID=3333", "/dev/cciss/c0d0p1": "UUID=1111"}


def test_bus_names_are_recognised_and_stable_names_are_not():
    for dev in ("/dev/sda1", "/dev/hdb2", "/dev/xvda", "/dev/vdc3", "/dev/cciss/c0d1p2", "/dev/sdaa1"):
        assert is_bus_name(dev), dev
    for dev in ("/dev/mapper/vg0-root", "/dev/vg0/root", "UUID=abcd", "LABEL=root", "/dev/disk/by-uuid/x",
                "/dev/md0", "tmpfs", "proc"):
        assert not is_bus_name(dev), dev


def test_guest_names_map_to_appliance_names_by_disk_order():
    assert appliance_device("/dev/hda1") == "/dev/sda1"
    assert appliance_device("/dev/xvdb2") == "/dev/sdb2"
    assert appliance_device("/dev/vdc") == "/dev/sdc"
    assert appliance_device("/dev/sdaa3") == "/dev/sdaa3"
    assert appliance_device("/dev/cciss/c0d1p2") == "/dev/sdb2"
    assert appliance_device("/dev/mapper/x") is None


def test_fstab_sda_names_become_uuids_and_everything_else_is_kept():
    fstab = ("# /etc/fstab: static file system information.\n"
             "/dev/sda1\t/\text4\terrors=remount-ro 0 1\n"
             "  /dev/sda2   none   swap   sw   0  0\n"
             "/dev/mapper/vg0-home /home ext4 defaults 0 2\n"
             "proc /proc proc defaults 0 0\n"
             "\n"
             "/dev/sdc1 /data xfs defaults 0 0\n")
    new, changes, unresolved = rewrite_table(fstab, 0, UUIDS.get)
    assert new.splitlines() == [
        "# /etc/fstab: static file system information.",
        "UUID=1111\t/\text4\terrors=remount-ro 0 1",
        "  UUID=2222   none   swap   sw   0  0",
        "/dev/mapper/vg0-home /home ext4 defaults 0 2",
        "proc /proc proc defaults 0 0",
        "",
        "/dev/sdc1 /data xfs defaults 0 0",
    ]
    assert changes == ["/dev/sda1 -> UUID=1111", "/dev/sda2 -> UUID=2222"]
    assert unresolved == ["/dev/sdc1"]
    assert new.endswith("\n")


def test_crypttab_device_is_the_second_column():
    text = "cryptroot /dev/sda2 none luks,discard\n"
    new, changes, _ = rewrite_table(text, 1, UUIDS.get)
    assert new == "cryptroot UUID=2222 none luks,discard\n"
    assert changes == ["/dev/sda2 -> UUID=2222"]


def test_kernel_command_line_root_and_resume_devices_become_uuids():
    text = 'GRUB_CMDLINE_LINUX="root=/dev/hda1 resume=/dev/sda2 console=ttyS0"\nRESUME=/dev/sda2\n'
    new, changes = rewrite_words(text, UUIDS.get)
    assert new == 'GRUB_CMDLINE_LINUX="root=UUID=1111 resume=UUID=2222 console=ttyS0"\nRESUME=UUID=2222\n'
    assert len(changes) == 3


def test_command_line_with_stable_names_is_untouched():
    text = 'GRUB_CMDLINE_LINUX="root=/dev/mapper/vg0-root quiet"\n'
    assert rewrite_words(text, UUIDS.get) == (text, [])
