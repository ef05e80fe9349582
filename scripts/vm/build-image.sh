#!/usr/bin/env bash
# Build the guest image for the bulwark VM test (scripts/vmtest).
#
#   scripts/vm/build-image.sh OUTDIR
#
# Produces, with no network access:
#   OUTDIR/vmlinux             uncompressed kernel ELF extracted from /boot/vmlinuz-<ver>
#                              (booted directly through PVH: saves ~2.5 s per TCG boot)
#   OUTDIR/initramfs.cpio.gz   busybox-static + applet links, virtio-net modules,
#                              iperf3 + its libraries, /init (scripts/vm/init)
#   OUTDIR/kernel-version      the <ver> that was used
#   OUTDIR/.stamp              fingerprint of the inputs; the build is skipped when
#                              it matches (run with BW_IMAGE_FORCE=1 to rebuild)
#
# Environment: BW_KERNEL_VERSION=<ver> picks a kernel when several are installed
# (default: the newest /boot/vmlinuz-* that has matching /lib/modules/<ver>).
#
# Needs: busybox-static, linux-image-amd64 (or any linux-image-*), iperf3, cpio,
# gzip, python3. Takes about 1-2 s; a no-op run takes well under a second.
set -euo pipefail

die() { echo "build-image: error: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 OUTDIR"
OUTDIR=$1
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
INIT_SRC=$HERE/init
MODULES="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net"

# ---- prerequisites -------------------------------------------------------
need_cmd() { command -v "$1" >/dev/null 2>&1 || die "'$1' not found: install the Debian package '$2'"; }
need_cmd cpio cpio
need_cmd gzip gzip
need_cmd python3 python3
need_cmd iperf3 iperf3
need_cmd ldd libc-bin
BUSYBOX=
for b in /bin/busybox /usr/bin/busybox; do
	[ -x "$b" ] || continue
	out=$(LC_ALL=C ldd "$b" 2>&1 || true)
	case "$out" in *"not a dynamic executable"*|*"statically linked"*) BUSYBOX=$b; break ;; esac
done
[ -n "$BUSYBOX" ] || die "no statically linked busybox found: install the Debian package 'busybox-static'"
[ -f "$INIT_SRC" ] || die "missing $INIT_SRC"

# ---- pick the kernel -----------------------------------------------------
KVER=${BW_KERNEL_VERSION:-}
if [ -z "$KVER" ]; then
	for k in $(ls /boot/vmlinuz-* 2>/dev/null | sed 's|^/boot/vmlinuz-||' | sort -rV); do
		if [ -d "/lib/modules/$k" ]; then KVER=$k; break; fi
	done
fi
[ -n "$KVER" ] || die "no /boot/vmlinuz-<ver> with /lib/modules/<ver>: install the Debian package 'linux-image-amd64'"
VMLINUZ=/boot/vmlinuz-$KVER
MODDIR=/lib/modules/$KVER
[ -r "$VMLINUZ" ] || die "cannot read $VMLINUZ"
[ -d "$MODDIR" ] || die "missing $MODDIR"
KCONFIG=/boot/config-$KVER

# Locate the modules (plain or compressed); skip the built-in ones.
MODFILES=()
MODNAMES=()
for m in $MODULES; do
	f=$(find "$MODDIR/kernel" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.gz" -o -name "$m.ko.zst" \) -print -quit 2>/dev/null || true)
	if [ -z "$f" ]; then
		if [ -f "$MODDIR/modules.builtin" ] && grep -qE "/$m\.ko$" "$MODDIR/modules.builtin"; then
			continue
		fi
		die "module $m not found in $MODDIR (and not built in)"
	fi
	case "$f" in *.zst) die "module $f is zstd-compressed; busybox cannot load it" ;; esac
	MODFILES+=("$f")
	MODNAMES+=("$m")
done

# iperf3 and its shared libraries, as ldd lists them.
LIBS=()
while read -r lib; do
	[ -n "$lib" ] && LIBS+=("$lib")
done < <(LC_ALL=C ldd "$(command -v iperf3)" | awk '
	/=>/ { if ($3 ~ /^\//) print $3; next }
	$1 ~ /^\// { print $1 }')
[ ${#LIBS[@]} -gt 0 ] || die "ldd found no libraries for iperf3"
IPERF3=$(readlink -f "$(command -v iperf3)")

# ---- skip when nothing changed -------------------------------------------
stamp_inputs() {
	echo "kver=$KVER modules=$MODULES"
	for f in "$VMLINUZ" "$BUSYBOX" "$IPERF3" "${MODFILES[@]}" "${LIBS[@]}"; do
		stat -L -c '%n %s %Y' "$f"
	done
	sha256sum "$INIT_SRC" "${BASH_SOURCE[0]}"
}
STAMP=$(stamp_inputs | sha256sum | cut -d' ' -f1)
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
if [ "${BW_IMAGE_FORCE:-0}" != 1 ] && [ -f "$OUTDIR/.stamp" ] && [ "$(cat "$OUTDIR/.stamp")" = "$STAMP" ] \
	&& [ -s "$OUTDIR/vmlinux" ] && [ -s "$OUTDIR/initramfs.cpio.gz" ]; then
	echo "build-image: $OUTDIR is up to date (kernel $KVER)"
	exit 0
fi
rm -f "$OUTDIR/.stamp"

STAGE=$(mktemp -d "$OUTDIR/.stage.XXXXXX")
trap 'rm -rf "$STAGE" "$OUTDIR/vmlinux.tmp" "$OUTDIR/initramfs.cpio.gz.tmp"' EXIT

# ---- vmlinux -------------------------------------------------------------
if [ -f "$KCONFIG" ] && ! grep -q '^CONFIG_PVH=y' "$KCONFIG"; then
	echo "build-image: warning: $KCONFIG lacks CONFIG_PVH=y; QEMU may not boot the extracted vmlinux" >&2
fi
python3 - "$VMLINUZ" "$OUTDIR/vmlinux.tmp" <<'EOF'
import lzma, shutil, subprocess, sys, zlib
src, dst = sys.argv[1], sys.argv[2]
data = open(src, "rb").read()
if data[:4] == b"\x7fELF":
    open(dst, "wb").write(data); sys.exit(0)

def try_xz(off):
    d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    return d.decompress(data[off:])

def try_gzip(off):
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    return d.decompress(data[off:])

def try_zstd(off):
    if not shutil.which("zstd"):
        raise RuntimeError("zstd compressed kernel: install the Debian package 'zstd'")
    return subprocess.run(["zstd", "-dcq"], input=data[off:], stdout=subprocess.PIPE).stdout

methods = [(b"\xfd7zXZ\x00", try_xz), (b"\x1f\x8b\x08", try_gzip), (b"\x28\xb5\x2f\xfd", try_zstd)]
errors = []
for magic, fn in methods:
    start = 0
    while True:
        off = data.find(magic, start)
        if off < 0:
            break
        start = off + 1
        try:
            out = fn(off)
        except Exception as e:  # wrong hit of the magic, keep looking
            errors.append(f"{fn.__name__}@{off}: {e}")
            continue
        if out[:4] == b"\x7fELF":
            open(dst, "wb").write(out)
            sys.exit(0)
sys.exit(f"could not extract an ELF vmlinux from {src}: " + "; ".join(errors[-3:]))
EOF

# ---- initramfs -----------------------------------------------------------
R=$STAGE/root
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root,lib/modules,var/run}
cp "$BUSYBOX" "$R/bin/busybox"
# Applet links (busybox --list-full prints e.g. 'sbin/ip', 'usr/bin/seq').
"$BUSYBOX" --list-full | while read -r a; do
	[ "$a" = bin/busybox ] && continue
	mkdir -p "$R/$(dirname "$a")"
	[ -e "$R/$a" ] || ln -s /bin/busybox "$R/$a"
done
for i in "${!MODFILES[@]}"; do
	f=${MODFILES[$i]}
	case "$f" in
	*.ko) ext=.ko ;; *.ko.xz) ext=.ko.xz ;; *.ko.gz) ext=.ko.gz ;; *.ko.zst) ext=.ko.zst ;;
	esac
	cp "$f" "$R/lib/modules/${MODNAMES[$i]}$ext"
	echo "${MODNAMES[$i]}" >> "$R/etc/bw-modules"
done
touch "$R/etc/bw-modules"
rm -f "$R/usr/bin/iperf3"
cp "$IPERF3" "$R/usr/bin/iperf3"
for lib in "${LIBS[@]}"; do
	mkdir -p "$R$(dirname "$lib")"
	cp -L "$lib" "$R$lib"
done
install -m 0755 "$INIT_SRC" "$R/init"
echo "root:x:0:0:root:/root:/bin/sh" > "$R/etc/passwd"
echo "root:x:0:" > "$R/etc/group"
printf '127.0.0.1 localhost\n::1 localhost\n' > "$R/etc/hosts"
echo "$KVER" > "$R/etc/bw-kernel-version"

(cd "$R" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -6 > "$OUTDIR/initramfs.cpio.gz.tmp"

mv -f "$OUTDIR/vmlinux.tmp" "$OUTDIR/vmlinux"
mv -f "$OUTDIR/initramfs.cpio.gz.tmp" "$OUTDIR/initramfs.cpio.gz"
echo "$KVER" > "$OUTDIR/kernel-version"
echo "$STAMP" > "$OUTDIR/.stamp"
echo "build-image: built $OUTDIR/vmlinux ($(du -h "$OUTDIR/vmlinux" | cut -f1)) and initramfs.cpio.gz ($(du -h "$OUTDIR/initramfs.cpio.gz" | cut -f1)) from kernel $KVER"
