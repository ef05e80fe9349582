"""Traffic from inside the guests: busybox nc listeners and connections, iperf3 servers and clients."""

import re
import threading
import time

from .guest import GuestError
from .util import indent, iperf_intervals


def nc_listen(g, ports, secs=60):
    """Start busybox `nc -l` on each port (answering PONG-<vm>-<port>), wait until they listen."""
    parts = []
    for p in ports:
        parts.append(f"echo PONG-{g.name}-{p} >/tmp/pong{p}; rm -f /tmp/l{p}.out; "
                     f"(timeout {secs} nc -l -p {p} </tmp/pong{p} >/tmp/l{p}.out 2>&1 & echo $! >/tmp/l{p}.pid)")
    plist = " ".join(str(p) for p in ports)
    parts.append(f'for p in {plist}; do i=0; while ! netstat -ltn | grep -q ":$p "; do i=$((i+1)); '
                 f'[ $i -gt 100 ] && break; usleep 100000; done; done; netstat -ltn')
    rc, out = g.run("; ".join(parts), timeout=30)
    missing = [p for p in ports if not re.search(rf":{p}\s+\S+\s+LISTEN", out)]
    if missing:
        raise GuestError(f"{g.name}: nc listener on port(s) {missing} did not start (rc={rc}):" + indent(out))


def nc_stop_listeners(*gs):
    for g in gs:
        if g.alive():
            g.run('for f in /tmp/l*.pid; do [ -f "$f" ] && kill $(cat "$f") 2>/dev/null; rm -f "$f"; done; true',
                  timeout=15)


def nc_listener_state(g, p):
    """(still listening, connections seen on p other than LISTEN, bytes the listener received)."""
    rc, out = g.run(f"netstat -tan | grep ':{p} '; echo SIZE=$(wc -c </tmp/l{p}.out)", timeout=15)
    # "tcp 0 0 LOCAL FOREIGN STATE": only sockets whose local port is p.
    lines = [l.split() for l in out.splitlines()]
    lines = [f for f in lines if len(f) >= 6 and f[0].startswith("tcp") and f[3].endswith(f":{p}")]
    listening = any(f[5] == "LISTEN" for f in lines)
    other = [f"{f[4]} {f[5]}" for f in lines if f[5] != "LISTEN"]
    m = re.search(r"SIZE=\s*(\d+)", out)
    return listening, other, int(m.group(1)) if m else None


def nc_connect(src, dst, port, wait):
    """busybox nc from src to dst:port sending PING-<src>-<port>; returns (nc status, seconds, output)."""
    cmd = (f"echo PING-{src.name}-{port} >/tmp/ping; t0=$(cut -d' ' -f1 /proc/uptime); "
           f"timeout 20 nc -w {wait} {dst.ip} {port} </tmp/ping 2>&1; r=$?; "
           f"t1=$(cut -d' ' -f1 /proc/uptime); echo NCRC=$r T0=$t0 T1=$t1")
    rc, out = src.run(cmd, timeout=45)
    m = re.search(r"NCRC=(\d+) T0=([\d.]+) T1=([\d.]+)", out)
    if rc is None or not m:
        raise GuestError(f"{src.name}: nc to {dst.name}:{port} did not finish (rc={rc}):" + indent(out))
    return int(m.group(1)), float(m.group(3)) - float(m.group(2)), out[:m.start()].strip()


def short(text):
    t = " | ".join(l.strip() for l in text.splitlines() if l.strip())
    return repr(t[-120:]) if t else "<no output>"


def iperf_server(g, interval=1.0):
    """A one-off iperf3 server on g, reporting every `interval` s into /tmp/iperf3-s.log."""
    iv = "" if interval == 1.0 else f"-i {interval:g} "
    rc, out = g.run("rm -f /tmp/iperf3.pid /tmp/iperf3-s.log; iperf3 -s -1 -D -I /tmp/iperf3.pid "
                    f"{iv}--logfile /tmp/iperf3-s.log --forceflush; sleep 1; cat /tmp/iperf3.pid", timeout=30)
    if rc != 0:
        raise GuestError(f"iperf3 server on {g.name} did not start (rc={rc}):" + indent(out))


def stop_iperf_server(g):
    if g.alive():
        g.run("[ -f /tmp/iperf3.pid ] && kill $(cat /tmp/iperf3.pid) 2>/dev/null; rm -f /tmp/iperf3.pid; true",
              timeout=15)


def iperf_run(A, B, port, secs, limit, during, interval=1.0):
    """iperf3 A -> B:port for secs s (killed after limit s) while during(wait_interval) runs here.
    wait_interval(n) waits until the client printed its nth interval line (the one that ends at
    n s with the default `-i 1`). A shorter `interval` also flushes every line (--forceflush)."""
    with A.cond:
        start = len(A.buf)
    box = {}
    iv = "-i 1" if interval == 1.0 else f"-i {interval:g} --forceflush"

    def client():
        box["r"] = A.run(f"timeout {limit} iperf3 -c {B.ip} -p {port} -t {secs} {iv} -f m "
                         f"--connect-timeout 5000", timeout=limit + 30)

    def wait_interval(n, timeout=40.0):
        # The client prints its nth interval line (times drift: "2.00-3.03").
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with A.cond:
                text = A.buf[start:]
            if len(iperf_intervals(text, interval)) >= n:
                return True
            if not th.is_alive():
                return False
            time.sleep(0.1)
        return False

    th = threading.Thread(target=client, daemon=True)
    th.start()
    try:
        info = during(wait_interval)
    finally:
        th.join(limit + 45)
    rc, out = box.get("r", (None, "<iperf3 client did not return>"))
    return rc, out, info
