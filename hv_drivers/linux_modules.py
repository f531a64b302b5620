"""Which kernel modules a converted Linux guest needs, and which belong to the old hypervisor."""

# Needed in the initramfs to find the root disk and the NIC on KVM.
VIRTIO_MODULES = ("virtio_pci", "virtio_blk", "virtio_scsi", "virtio_net")

# Drivers for virtual hardware that no longer exists after conversion: excluded from the initramfs
# where the distro's tool allows it. Physical-HBA drivers (mpt*, megaraid) are kept: bare-metal sources.
OLD_HYPERVISOR_MODULES = (
    # VMware
    "vmw_pvscsi", "vmxnet3", "vmw_balloon", "vmw_vmci", "vmw_vsock_vmci_transport", "vmwgfx",
    # Hyper-V
    "hv_vmbus", "hv_storvsc", "hv_netvsc", "hv_utils", "hv_balloon", "hyperv_keyboard", "hid_hyperv",
    "hyperv_fb", "hv_sock",
    # Xen PV
    "xen_blkfront", "xen_netfront", "xen_scsifront", "xen_fbfront", "xen_kbdfront",
    # VirtualBox
    "vboxguest", "vboxsf", "vboxvideo",
)


def module_file_names(modules):
    """Kernel module file stems as they appear on disk (dashes and underscores are equivalent)."""
    out = set()
    for m in modules:
        out.add(m)
        out.add(m.replace("_", "-"))
    return sorted(out)
