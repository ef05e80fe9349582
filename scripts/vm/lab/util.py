"""Small helpers of the VM lab: output, log tails, threads, guest command lines, iperf3 parsing."""

import json
import os
import re
import threading

BOOT_TIMEOUT = 60.0          # QEMU start -> BW-NET-UP
PING_WAIT_TRIES = 20         # positive pings: up to ~20 s for the peer to answer
RESTART_DEADLINE = 20.0      # restart test: ping must work within this after restart
API_READY_TIMEOUT = 20.0


def log(msg):
    print(msg, flush=True)


def indent(text, n=10):
    """Last n lines of command output, indented for the report."""
    lines = [l for l in text.strip().splitlines() if l.strip()][-n:]
    return "\n" + "\n".join("    | " + l for l in lines) if lines else " <no output>"


def tail(path, n=25, grep=None):
    """Last n lines of a file (optionally only lines matching a regex), indented."""
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError as e:
        return f"    <cannot read {path}: {e}>"
    if grep:
        lines = [l for l in lines if re.search(grep, l)]
    lines = [l.rstrip("\r") for l in lines[-n:]]
    return "\n".join("    | " + l for l in lines) if lines else f"    <{os.path.basename(path)}: empty>"


def ping_wait_cmd(ip, tries=PING_WAIT_TRIES):
    # Retry single pings until the peer answers (it may still be booting or
    # the switch may still be learning), then report how many tries it took.
    return (f"i=0; ok=1; while [ $i -lt {tries} ]; do i=$((i+1)); "
            f"if ping -c 1 -W 1 {ip} >/tmp/ping.out 2>&1; then ok=0; break; fi; done; "
            f"echo tries=$i; cat /tmp/ping.out; [ $ok = 0 ]")


def nonzero(drops):
    """The drop counters that are not zero, compactly (the object has one key per reason)."""
    if isinstance(drops, dict):
        return json.dumps({k: v for k, v in drops.items() if v}) if any(drops.values()) else "{} (all zero)"
    return json.dumps(drops)


def parallel(fns):
    """Run callables in threads; return their results in order (exceptions are returned)."""
    res = [None] * len(fns)

    def wrap(i, fn):
        try:
            res[i] = fn()
        except Exception as e:  # returned to the caller, who reports it
            res[i] = e

    ts = [threading.Thread(target=wrap, args=(i, fn), daemon=True) for i, fn in enumerate(fns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return res


# iperf3 interval line: "[  5]   2.00-3.00   sec  11.2 MBytes  94.4 Mbits/sec    0    359 KBytes"
_IPERF_LINE = re.compile(r"^\[\s*\d+\]\s+([\d.]+)-([\d.]+)\s+sec\s+[\d.]+\s+\w*Bytes\s+([\d.]+)\s+(\w?)bits/sec(.*)$", re.M)


def iperf_intervals(out, interval=1.0):
    """The interval lines of iperf3 output (`-i interval`, default 1 s) as (start, end, Mbit/s);
    summaries and short tail intervals left out."""
    scale = {"": 1e-6, "K": 1e-3, "M": 1.0, "G": 1e3}
    res = []
    for m in _IPERF_LINE.finditer(out):
        a, b = float(m.group(1)), float(m.group(2))
        if "sender" in m.group(5) or "receiver" in m.group(5) or not 0.5 * interval <= b - a <= 1.5 * interval:
            continue  # a summary, or a short tail interval
        res.append((a, b, float(m.group(3)) * scale.get(m.group(4), 1.0)))
    return res


def fmt_intervals(iv):
    return " ".join(f"{r:.0f}" if r >= 1 else f"{r:.2g}" for _, _, r in iv)
