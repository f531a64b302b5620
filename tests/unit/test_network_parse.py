from guest_fixups.linux.network import parse_ifupdown


def test_ifupdown_names_in_order_without_loopback_or_aliases():
    text = """# The loopback network interface
auto lo
iface lo inet loopback

allow-hotplug ens192
iface ens192 inet static
    address 192.0.2.10/24   # documentation range
iface ens192:1 inet static
auto eth1 eth2
iface eth1 inet dhcp
"""
    assert parse_ifupdown(text) == ["ens192", "eth1", "eth2"]


def test_ifupdown_with_only_loopback_names_nothing():
    assert parse_ifupdown("auto lo\niface lo inet loopback\n") == []
