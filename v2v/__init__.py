"""Convert hosts, disk images and VMs into KVM guests that boot."""

__version__ = "0.1.0"
