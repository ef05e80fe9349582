"""The options of scripts/vmtest. The wrapper parses them with argparse (for --help) and hands them to
pytest, where tests/vm/conftest.py registers the same list, so `pytest tests/vm --bulwarkd PATH` works too."""

import argparse
import os

from .image import DEFAULT_IMAGE_DIR, REPO

# (flags, argparse keyword arguments); help=SUPPRESS: developer options, hidden from --help.
OPTIONS = [
    (("--bulwarkd",), dict(default=os.path.join(REPO, "target", "release", "bulwarkd"),
                           help="the bulwarkd binary (default: target/release/bulwarkd)")),
    (("--bulwarkctl",), dict(default=os.path.join(REPO, "target", "release", "bulwarkctl"),
                             help="the bulwarkctl binary (default: target/release/bulwarkctl)")),
    (("--pktgen",), dict(default=os.path.join(REPO, "target", "release", "pktgen"),
                         help="the pktgen binary, whose `pktgen wire` joins two switches in the migration "
                              "test (default: target/release/pktgen)")),
    (("--workdir",), dict(default=None, help="directory for logs and sockets (default: a fresh temporary directory)")),
    (("--keep",), dict(action="store_true", default=False,
                       help="keep the workdir (it is also kept when a test fails)")),
    (("--image-dir",), dict(default=os.environ.get("BW_VMTEST_IMAGE_DIR", DEFAULT_IMAGE_DIR),
                            help="where build-image.sh puts vmlinux + initramfs (cached between runs)")),
    (("--accel",), dict(choices=["auto", "tcg", "kvm"], default="auto", help=argparse.SUPPRESS)),
    (("--switch",), dict(choices=["bulwarkd", "testpmd"], default="bulwarkd", help=argparse.SUPPRESS)),
    # Developer options: run only m1/m2; MSI-X vectors of vm5/vm6's NIC (QEMU 7.2 + TCG crashes with > 0).
    (("--mq-only",), dict(action="store_true", default=False, help=argparse.SUPPRESS)),
    (("--mq-vectors",), dict(type=int, default=0, help=argparse.SUPPRESS)),
]


def dest(flags):
    return flags[0].lstrip("-").replace("-", "_")


def to_argv(ns):
    """The options of an argparse namespace as command-line arguments (for pytest)."""
    argv = []
    for flags, kw in OPTIONS:
        v = getattr(ns, dest(flags))
        if kw.get("action") == "store_true":
            if v:
                argv.append(flags[0])
        elif v is not None:
            argv.append(f"{flags[0]}={v}")
    return argv
