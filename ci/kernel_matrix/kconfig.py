"""The kernel's config: parse it and decide whether the kernel can be tested
at all (BTF, bpf(), 9p, overlayfs, virtio-pci, initramfs)."""
from __future__ import annotations


# Kernel options the guest cannot do without: (option, accepted values, status, detail).
REQUIRED_KCONFIG = (
    ("CONFIG_BPF_SYSCALL", ("y",), "unsupported", "no bpf() syscall (CONFIG_BPF_SYSCALL is not set)"),
    ("CONFIG_DEBUG_INFO_BTF", ("y",), "unsupported", "no BTF (CONFIG_DEBUG_INFO_BTF is not set)"),
    ("CONFIG_NET_9P_VIRTIO", ("y", "m"), "error",
     "kernel has no 9p over virtio (CONFIG_NET_9P_VIRTIO): use the amd64 flavour, cloud-amd64 lacks 9p"),
    ("CONFIG_9P_FS", ("y", "m"), "error", "kernel has no 9p filesystem (CONFIG_9P_FS)"),
    ("CONFIG_OVERLAY_FS", ("y", "m"), "error", "kernel has no overlayfs (CONFIG_OVERLAY_FS)"),
    ("CONFIG_VIRTIO_PCI", ("y", "m"), "error", "kernel has no virtio-pci (CONFIG_VIRTIO_PCI)"),
    ("CONFIG_BLK_DEV_INITRD", ("y",), "error", "kernel cannot boot an initramfs (CONFIG_BLK_DEV_INITRD)"),
)


def parse_kconfig(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("CONFIG_") and "=" in line:
            key, _, value = line.partition("=")
            out[key] = value.strip('"')
    return out


def check_kconfig(cfg: dict[str, str]) -> tuple[str, str] | None:
    """(status, detail) when the kernel cannot be tested, else None."""
    for option, accepted, status, detail in REQUIRED_KCONFIG:
        if cfg.get(option) not in accepted:
            return status, detail
    return None
