"""What a VM run needs from the host: packages, the guest image (scripts/vm/build-image.sh), the accelerator."""

import os
import re
import shutil
import subprocess

VM_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # scripts/vm
REPO = os.path.dirname(os.path.dirname(VM_DIR))
DEFAULT_IMAGE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "bulwark", "vm-image")


def check_prereqs(switch="bulwarkd", bulwarkd=None, bulwarkctl=None):
    """What is missing, one sentence each naming the Debian package (empty when all is there)."""
    missing = []
    for cmd, pkg in [("qemu-system-x86_64", "qemu-system-x86"), ("iperf3", "iperf3"),
                     ("cpio", "cpio"), ("gzip", "gzip")]:
        if not shutil.which(cmd):
            missing.append(f"'{cmd}' not found: install the Debian package '{pkg}'")
    if not any(os.access(b, os.X_OK) for b in ("/bin/busybox", "/usr/bin/busybox")):
        missing.append("'busybox' not found: install the Debian package 'busybox-static'")
    kernels = [f for f in os.listdir("/boot") if f.startswith("vmlinuz-")] if os.path.isdir("/boot") else []
    if not kernels:
        missing.append("no /boot/vmlinuz-*: install the Debian package 'linux-image-amd64'")
    if switch == "bulwarkd":
        for opt, path in (("--bulwarkd", bulwarkd), ("--bulwarkctl", bulwarkctl)):
            if not (os.path.isfile(path) and os.access(path, os.X_OK)):
                missing.append(f"{opt} {path}: not an executable file (build it: cargo build --release)")
    else:
        if not shutil.which("dpdk-testpmd"):
            missing.append("'dpdk-testpmd' not found: install the Debian packages 'dpdk-dev' and 'librte-net-vhost23'")
    return missing


def build_image(image_dir, log_path=None):
    """Run build-image.sh (cached: fast when nothing changed). Returns (ok, its output, image) where
    image is {"kernel": vmlinux, "initrd": initramfs.cpio.gz}; the output also goes to log_path."""
    r = subprocess.run([os.path.join(VM_DIR, "build-image.sh"), image_dir],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if log_path:
        with open(log_path, "w") as f:
            f.write(r.stdout + r.stderr)
    image = {"kernel": os.path.join(image_dir, "vmlinux"),
             "initrd": os.path.join(image_dir, "initramfs.cpio.gz")}
    return r.returncode == 0, r.stdout + r.stderr if r.returncode else r.stdout, image


def pick_accel(want):
    if want != "auto":
        return want
    try:
        with open("/proc/cpuinfo") as f:
            flags = re.search(r"^flags\s*:(.*)$", f.read(), re.M)
        if flags and re.search(r"\b(vmx|svm)\b", flags.group(1)):
            fd = os.open("/dev/kvm", os.O_RDWR)
            os.close(fd)
            return "kvm"
    except OSError:
        pass
    return "tcg"
