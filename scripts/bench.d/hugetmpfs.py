"""A tmpfs with huge pages for a benchmark's bulwarkd run directories (scripts/bench,
scripts/flood-bench).

bulwarkd keeps its connection table in a state file in its run directory. On a tmpfs mounted
without `huge=` (/dev/shm and /run on Debian, whatever
/sys/kernel/mm/transparent_hugepage/shmem_enabled says) that file is in 4 KiB pages, and with a
million connections most lookups also miss the TLB: 12-15 % fewer frames and connections a second
than the same table in huge pages (docs/PERFORMANCE.md). A benchmark measures the switch as it
should be deployed, so it mounts a tmpfs with `huge=within_size` over its scratch directory
(root only; without it the run goes on, with a warning)."""

import subprocess


def mount(path, log):
    """Mounts a tmpfs with huge pages on the (empty) directory `path`; True when it did."""
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "huge=within_size,mode=0700", "bulwark-bench", path],
                       capture_output=True, text=True)
    if r.returncode != 0:
        log(f"warning: cannot mount a tmpfs with huge pages on {path} "
            f"({(r.stderr or r.stdout).strip() or 'exit status ' + str(r.returncode)}): bulwarkd's "
            "connection table is in 4 KiB pages there, which is slower with many connections")
        return False
    return True


def umount(path, log):
    """Unmounts what `mount` mounted on `path` (its files go with it)."""
    r = subprocess.run(["umount", path], capture_output=True, text=True)
    if r.returncode != 0:
        log(f"warning: cannot unmount {path}: {(r.stderr or r.stdout).strip()}")
