"""bulwarkd (or testpmd) restarted under running guests on `net`: traffic resumes, the guests are
not restarted (e1, e2); an established TCP stream through filtered ports goes on across the
restart, its connections kept by the connection table's state file (e3 after SIGKILL, e4 after
SIGTERM; bulwarkd only).

Runs after test_firewall (conftest AREAS), which leaves allow-all policies behind, so e1/e2 test the
restart, not the firewall. Each test restarts the switch with the same config and run dir; the
next test finds the restarted one.

e3/e4 give vm1 and vm2 policies (through the API, and in bulwarkd.toml for the new process: a
policy set through the API on a config-file port is not persisted) under which vm2 reaches vm1 only
as part of a connection vm1 opened, with tcp_pickup false, so the stream depends on its tracked
connections. The `stream_policies` fixture puts vm1's and vm2's policies back afterwards (allow-all,
what test_firewall leaves) and takes them out of bulwarkd.toml again."""

import json
import os
import re
import signal
import subprocess
import time
from datetime import datetime, timezone

import pytest

from lab import (PROCS, RESTART_DEADLINE, Bulwarkd, GuestError, delta, fmt_delta, indent, iperf_intervals, log,
                 nonzero, ping_wait_cmd, tail)
from lab.traffic import iperf_run, iperf_server, stop_iperf_server

STREAM_PORT = 5201
IV = 0.2            # iperf3 report interval, client and server (s)
STREAM_SECS = 12    # iperf3 -t
KILL_AFTER = 20     # interval lines (of IV s) before the signal: 4 s into the stream
PING_IV = 0.05      # the background ping vm1 -> vm2 during the stream
POLL_IV = 0.010     # API counter polling after the new process is spawned
POLL_MAX = 10.0
BULK = 64 * 1024    # bytes delivered to vm2 between two polls: the stream flows again
GAP_BOUND = 2.0     # s from the new process's spawn to its first forwarded frame; loose for TCG
                    # (the target is 0.2 s: the figure is printed to be quoted)
ALLOW_ALL = {"tcp_pickup": True}   # what test_firewall's g8 leaves on vm1..vm3


@pytest.fixture(scope="module", autouse=True)
def snapshots(net):
    """bulwarkctl ports/macs/stats into the workdir before the restarts (ctl-before-restart-*)
    and after them (ctl-end-*), for debugging; bulwarkd only."""
    if isinstance(net.sw, Bulwarkd) and net.sw.proc is not None:
        net.sw.snapshot("before-restart")
    yield
    if isinstance(net.sw, Bulwarkd) and not net.stopped:
        net.sw.snapshot("end")


class StreamPolicies:
    """vm1 (A) may open tcp/5201 and ping to vm2 (B) only; B accepts only those from A and opens
    nothing itself: every frame B sends (ACKs, echo replies, the control connection's data) passes
    only as part of a connection A opened. Both default drop, tcp_pickup false. non_ip (ARP) and
    nd are allowed."""

    def __init__(self, net, sw, policy):
        self.net, self.sw, self.policy = net, sw, policy
        A, B = net.by["vm1"], net.by["vm2"]
        base = {"egress_default": "drop", "ingress_default": "drop", "non_ip": "allow", "nd": "allow",
                "tcp_pickup": False}
        self.pols = {
            "vm1": dict(base, egress=[
                {"id": 1, "action": "allow", "proto": "tcp", "dst": f"{B.ip}/32", "dst_ports": [STREAM_PORT]},
                {"id": 2, "action": "allow", "proto": "icmp", "icmp_type": 8, "dst": f"{B.ip}/32"}], ingress=[]),
            "vm2": dict(base, egress=[], ingress=[
                {"id": 1, "action": "allow", "proto": "tcp", "src": f"{A.ip}/32", "dst_ports": [STREAM_PORT]},
                {"id": 2, "action": "allow", "proto": "icmp", "icmp_type": 8, "src": f"{A.ip}/32"}]),
        }
        self.before = {}   # port -> its policy before the first apply (None: it had none)

    def apply(self):
        """Sets the policies on the running bulwarkd and writes them into bulwarkd.toml, so that
        a restarted one starts with them."""
        for name, pol in self.pols.items():
            if name not in self.before:
                self.before[name] = self.policy.ctl_json("policy", name).get("policy")
            self.sw.configure_port(name, policy=pol)
            self.policy.set_policy(name, pol, "restart-stream")

    def in_force(self, name):
        """'' when the running bulwarkd has port name's policy, else what differs."""
        p = self.policy.ctl_json("policy", name).get("policy") or {}
        want = self.pols[name]
        bad = [f"{k}={p.get(k)!r}" for k in ("egress_default", "ingress_default", "tcp_pickup") if p.get(k) != want[k]]
        for side in ("egress", "ingress"):
            if len(p.get(side) or []) != len(want[side]):
                bad.append(f"{len(p.get(side) or [])} {side} rules (want {len(want[side])})")
        return ", ".join(bad)

    def restore(self):
        for name, prev in self.before.items():
            self.sw.configure_port(name, policy=None)
            self.policy.set_policy(name, prev if prev is not None else ALLOW_ALL, "restart-reset")
        if self.before:
            log("restart: " + ", ".join(f"{n} {'back to its policy' if p is not None else 'allow-all (it had none)'}"
                                        for n, p in self.before.items())
                + "; their policies taken out of bulwarkd.toml again")


@pytest.fixture(scope="module")
def stream_policies(net, bulwarkd, policy):
    """e3/e4's policies (StreamPolicies); afterwards vm1 and vm2 get their policy back (allow-all
    when they had none: a config-file port's policy cannot be removed through the API) and
    bulwarkd.toml its original [[ports]] entries, also when a test failed."""
    sp = StreamPolicies(net, bulwarkd, policy)
    yield sp
    if sp.before and not net.stopped:
        try:
            if bulwarkd.proc is None or bulwarkd.proc.poll() is not None:
                for name in sp.before:
                    bulwarkd.configure_port(name, policy=None)
                log("WARNING: restart: bulwarkd is not running; policies not reset (config file restored)")
            else:
                sp.restore()
        except GuestError as e:
            log(f"WARNING: restart: could not put vm1/vm2's policies back: {e}")


def restart(net, sig, report):
    """Traffic vm1 -> vm2, then sig to the switch, a restart, and a ping that must work within
    RESTART_DEADLINE s of it, with the same QEMU processes."""
    sw, guests, by = net.sw, net.guests, net.by
    net.need("vm1", "vm2")
    pids = {g.name: g.proc.pid for g in guests}
    note = ""
    if sw.proc.poll() is not None:
        # An earlier step left the switch dead: start it so that this test still says something.
        note = f"(note: {sw.kind} had exited with status {sw.proc.returncode} before this test; started it again) "
        sw.start()
        sw.wait_ready()
    # Traffic flows before the restart.
    o, msg = net.ping_ok("vm1", "vm2")
    if not o:
        report.verdict(False, note + "no traffic before the restart: " + msg)
    old = sw.proc
    t_sig = time.monotonic()
    os.kill(old.pid, sig)
    try:
        status = old.wait(timeout=10)
    except subprocess.TimeoutExpired:
        PROCS.stop(old, signal.SIGKILL)
        report.verdict(False, f"{sw.kind} did not exit within 10 s of {signal.Signals(sig).name}\n" + tail(sw.log))
    exit_secs = time.monotonic() - t_sig
    old_log = sw.log
    time.sleep(1.0)
    sw.start()
    t_restart = time.monotonic()
    rc, out = by["vm1"].run(ping_wait_cmd(by["vm2"].ip, tries=int(RESTART_DEADLINE) + 5), timeout=90)
    elapsed = time.monotonic() - t_restart
    m = re.search(r"tries=(\d+)", out)
    alive = sw.proc.poll() is None
    same = all(g.alive() and g.proc.pid == pids[g.name] for g in guests)
    info = note + (f"old {sw.kind} exited (status {status}) {exit_secs:.1f}s after {signal.Signals(sig).name}; "
                   f"restarted; vm1->vm2 ping {'ok' if rc == 0 else 'FAILED'} {elapsed:.1f}s after restart "
                   f"(try {m.group(1) if m else '?'}); guests not restarted: {same}")
    if rc == 0 and elapsed <= RESTART_DEADLINE and same and alive:
        if isinstance(sw, Bulwarkd):
            r = sw.wait_ready(timeout=5)
            info += f"; API ready: {r[0]}"
        report.verdict(True, info)
        return
    extra = []
    if not alive:
        extra.append(f"new {sw.kind} exited with status {sw.proc.returncode}")
    extra.append(f"new {sw.kind} log tail ({os.path.basename(sw.log)}):\n" + tail(sw.log, 30))
    extra.append(f"old {sw.kind} log tail ({os.path.basename(old_log)}):\n" + tail(old_log, 10))
    extra.append("vm1 output:" + indent(out, 8))
    for g in guests[:2]:
        extra.append(f"{g.name} qemu log tail:\n" + tail(g.qemu_log, 8))
    report.verdict(False, info + "\n  " + "\n  ".join(extra))


def test_e1_restart_after_sigkill(net, report):
    """e1. traffic resumes after SIGKILL + restart of the switch"""
    restart(net, signal.SIGKILL, report)


def test_e2_restart_after_sigterm(net, report):
    """e2. traffic resumes after SIGTERM + restart of the switch"""
    restart(net, signal.SIGTERM, report)


# -- e3, e4: an established stream through filtered ports across the restart ------------------

def _log_times(path, t0_wall):
    """From a bulwarkd log: ms after t0_wall (the spawn) of its first line, of each port's last
    queue starting, of the API listening; the connection table's open time and description."""
    res = {"queues": {}, "open_ms": None, "opened": None, "first": None, "api": None}
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return res
    for line in text.splitlines():
        m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z\s+\w+\s+(\S+): (.*)$", line)
        if not m:
            continue
        ts = m.group(1)[:26]  # microseconds at most for strptime
        try:
            t = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            continue
        ms = (t - t0_wall) * 1e3
        msg = m.group(3)
        if res["first"] is None:
            res["first"] = ms
        q = re.match(r"(\S+): queue (\d+) running", msg)
        if q:
            res["queues"][q.group(1)] = ms   # the last queue of the port to start
        c = re.match(r"connection table \S+: (.*) \(([\d.]+) ms\)$", msg)
        if c:
            res["opened"], res["open_ms"] = c.group(1), float(c.group(2))
        if msg.startswith("API listening on") and res["api"] is None:
            res["api"] = ms
    return res


def _zero_runs(iv):
    """Runs of consecutive zero-byte intervals: [(start, end, count)]."""
    runs, cur = [], None
    for a, b, r in iv:
        if r <= 0:
            cur = (cur[0], b, cur[2] + 1) if cur else (a, b, 1)
        elif cur:
            runs.append(cur)
            cur = None
    if cur:
        runs.append(cur)
    return runs


def _fmt_stall(iv, what):
    runs = _zero_runs(iv)
    if not runs:
        return None, f"{what}: no zero interval (stall < {IV:g} s)"
    a, b, n = max(runs, key=lambda r: r[1] - r[0])
    more = f"; {len(runs) - 1} other zero run(s)" if len(runs) > 1 else ""
    return (a, b, n), f"{what}: {n} zero interval(s) of {IV:g} s, {a:.2f}-{b:.2f} s = {b - a:.2f} s{more}"


def _ping_start(A, B):
    rc, out = A.run(f"rm -f /tmp/bgping.out /tmp/bgping.pid; (ping -i {PING_IV:g} -w {STREAM_SECS + 90} {B.ip} "
                    f">/tmp/bgping.out 2>&1 & echo $! >/tmp/bgping.pid); sleep 1; echo LINES=$(grep -c seq= "
                    f"/tmp/bgping.out)", timeout=30)
    m = re.search(r"LINES=(\d+)", out)
    if rc != 0 or not m or int(m.group(1)) < 3:
        _, o2 = A.run("cat /tmp/bgping.out | head -5", timeout=15)
        raise GuestError(f"background ping -i {PING_IV:g} vm1 -> vm2 did not start (rc={rc}):" + indent(out + o2))


# The answered pings sorted by seq: their count, the longest run of missing seqs (and the seq
# before it), the highest rtt (and its seq).
_PING_STATS = ("sed -n 's/.*seq=\\([0-9]*\\) .*time=\\([0-9.]*\\) ms.*/\\1 \\2/p' /tmp/bgping.out | sort -n | "
               "awk 'BEGIN{p=-1;g=0;at=-1;m=0;ms=-1;n=0} {n++; if(p>=0 && $1-p-1>g){g=$1-p-1;at=p} "
               "if($2+0>m){m=$2+0;ms=$1} p=$1} END{print \"PINGSTAT n=\" n \" last=\" p \" gap=\" g \" after=\" at "
               "\" maxrtt=\" m \" maxseq=\" ms}'")


def _ping_stop(A):
    """Stops the background ping (SIGINT: it prints its summary); its figures, or {} and the output."""
    if not A.alive():
        return {}, "<vm1 is gone>"
    rc, out = A.run("[ -f /tmp/bgping.pid ] && kill -INT $(cat /tmp/bgping.pid) 2>/dev/null; sleep 0.5; "
                    "rm -f /tmp/bgping.pid; " + _PING_STATS + "; tail -2 /tmp/bgping.out", timeout=30)
    st = {}
    m = re.search(r"PINGSTAT n=(\d+) last=(-?\d+) gap=(\d+) after=(-?\d+) maxrtt=([\d.]+) maxseq=(-?\d+)", out)
    if m:
        st = dict(zip(("answered", "last", "gap", "after", "maxrtt", "maxseq"),
                      (int(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4)), float(m.group(5)),
                       int(m.group(6)))))
    t = re.search(r"(\d+) packets transmitted, (\d+) packets received", out)
    if t:
        st["sent"], st["received"] = int(t.group(1)), int(t.group(2))
    return st, out


def _poll_forwarding(sw, t0, names=("vm1", "vm2"), bulk_to="vm2"):
    """Right after the spawn (t0, monotonic): GET /v1/ports every POLL_IV s for up to POLL_MAX s,
    until the stream's data flows through the switch again. Times in ms after t0: api (first
    answer), lo/hi (the first frame was delivered to one of names after lo: an answer before it
    showed none, or the spawn; and by hi: the answer that showed it), running (both ports
    running), bulk (bulk_to's tx_bytes grew by BULK bytes between two answers: the stream)."""
    res = {"api": None, "lo": 0.0, "hi": None, "running": None, "bulk": None, "first": None, "polls": 0,
           "errors": 0, "last_error": None, "samples": []}
    deadline = t0 + POLL_MAX
    prev = None
    while time.monotonic() < deadline:
        t = time.monotonic()
        res["polls"] += 1
        try:
            ports = sw.api_get("/v1/ports", timeout=0.5)
            byn = {p.get("name"): p for p in ports if isinstance(p, dict)}
            got = {n: (byn[n].get("state"), byn[n].get("rx_packets"), byn[n].get("tx_packets")) for n in names}
            bb = byn[bulk_to].get("tx_bytes") or 0
        except (OSError, GuestError, KeyError, TypeError, AttributeError) as e:
            res["errors"] += 1
            res["last_error"] = repr(e)[:200]
        else:
            t1 = time.monotonic()
            ms, ms1 = (t - t0) * 1e3, (t1 - t0) * 1e3
            if res["api"] is None:
                res["api"] = ms1
                res["first"] = got
            if len(res["samples"]) < 300:
                res["samples"].append((round(ms, 1), got, bb))
            if res["running"] is None and all(s == "running" for s, _, _ in got.values()):
                res["running"] = ms1
            if any((tx or 0) > 0 for _, _, tx in got.values()):
                if res["hi"] is None:
                    res["hi"] = ms1
            else:
                res["lo"] = ms
            if prev is not None and bb - prev >= BULK and res["bulk"] is None:
                res["bulk"] = ms1
            prev = bb
            if res["hi"] is not None and res["running"] is not None and res["bulk"] is not None:
                break
        if sw.proc.poll() is not None:
            break
        time.sleep(max(0.0, t + POLL_IV - time.monotonic()))
    return res


def _carrier_changes(gs):
    """{guest name: /sys/class/net/eth0/carrier_changes} (None when unreadable)."""
    res = {}
    for g in gs:
        rc, out = g.run("cat /sys/class/net/eth0/carrier_changes", timeout=15)
        m = re.search(r"^(\d+)\s*$", out, re.M)
        res[g.name] = int(m.group(1)) if rc == 0 and m else None
    return res


def restart_under_stream(net, sw, sp, policy, workdir, report, sig, tag):
    """iperf3 vm1 -> vm2:5201 (-i 0.2) and a ping -i 0.05 vm1 -> vm2 through the filtered ports;
    after 4 s sig to bulwarkd, and as soon as it exited a new one with the same config and run dir.
    The stream must finish (exit 0, data after the restart) with no tcp_no_connection drop."""
    A, B = net.by["vm1"], net.by["vm2"]
    net.need("vm1", "vm2")
    signame = signal.Signals(sig).name
    want_opened = "crash" if sig == signal.SIGKILL else "clean stop"
    pids = {g.name: g.proc.pid for g in net.guests}
    details, ok = [], True
    if sw.proc is None or sw.proc.poll() is not None:
        details.append(f"(note: bulwarkd had exited with status {sw.proc.returncode if sw.proc else '-'} before this "
                       "test; started it again)")
        sw.start()
        sw.wait_ready()
    sp.apply()
    bad = {n: sp.in_force(n) for n in ("vm1", "vm2")}
    if any(bad.values()):
        report.verdict(False, details + [f"the policies did not take: {bad}"])
    o, msg = net.ping_ok("vm1", "vm2", 10)
    if not o:
        report.verdict(False, details + ["no ping vm1 -> vm2 under the policies before the restart: " + msg])
    details.append(f"vm1/vm2 filtered (both defaults drop, tcp_pickup false; vm1 may open tcp/{STREAM_PORT} and ping "
                   f"to vm2, vm2 opens nothing), in bulwarkd.toml too; before: {msg}")
    old = sw.proc
    old_log = sw.log
    cc0 = _carrier_changes((A, B))
    iperf_server(B, IV)
    figures = {"signal": signame}
    info = {}
    ping_st, ping_out, out, slog, rc = {}, "", "", "", None
    try:
        _ping_start(A, B)
        d0 = policy.drops()
        with A.cond:
            pos0 = len(A.buf)

        def during(wait_interval):
            if not wait_interval(KILL_AFTER):
                return {"err": f"the client printed no interval line number {KILL_AFTER} within 40 s"}
            res = {"d_kill": policy.drops(), "ct_kill": sw.ctl_json("conntrack"),
                   "conns_kill": policy.ctl_json("conns", "vm1")}
            with A.cond:
                before = iperf_intervals(A.buf[pos0:], IV)
            res["kill_point"] = before[-1][1] if before else None
            t_sig = time.monotonic()
            os.kill(old.pid, sig)
            try:
                res["status"] = old.wait(timeout=10)
            except subprocess.TimeoutExpired:
                PROCS.stop(old, signal.SIGKILL)
                res["err"] = f"bulwarkd did not exit within 10 s of {signame}"
            t_exit = time.monotonic()
            t0, t0_wall = time.monotonic(), time.time()
            sw.start()
            res["poll"] = _poll_forwarding(sw, t0)
            res.update(t_sig=t_sig, exit_ms=(t_exit - t_sig) * 1e3, spawn_ms=(t0 - t_sig) * 1e3, t0_wall=t0_wall)
            try:
                res["ready"] = sw.wait_ready(timeout=10)
                res["conns_new"] = policy.ctl_json("conns", "vm1")
            except GuestError as e:
                res["err"] = f"the new bulwarkd: {e}"
            return res

        rc, out, info = iperf_run(A, B, STREAM_PORT, STREAM_SECS, STREAM_SECS + 40, during, IV)
        _, slog = B.run("cat /tmp/iperf3-s.log", timeout=30)
    finally:
        stop_iperf_server(B)
        ping_st, ping_out = _ping_stop(A)
    new_alive = sw.proc is not old and sw.proc.poll() is None
    d_end = policy.drops() if new_alive else {}
    cc1 = _carrier_changes((A, B))
    with open(os.path.join(workdir, f"iperf3-restart-{tag}.txt"), "w") as f:
        f.write(out + "\n# server log (vm2)\n" + slog + "\n# background ping (vm1)\n" + ping_out)

    fail = []
    if info.get("err"):
        fail.append(info["err"])
    if "status" not in info:
        report.verdict(False, details + fail + ["no restart was made", "iperf3 client:" + indent(out, 12),
                                                "bulwarkd log tail:\n" + tail(old_log, 15)])

    # -- the switch: old process, new process, forwarding gap ------------------------------
    p = info["poll"]
    lt = _log_times(sw.log, info["t0_wall"])
    q = [lt["queues"].get(n) for n in ("vm1", "vm2")]
    queues_ms = max(q) if all(x is not None for x in q) else None
    hi = p["hi"]
    # The first answer already showing a forwarded frame: the ports' queues starting (the log) is the
    # lower end.
    lo = min(max(p["lo"], queues_ms or 0.0), hi) if hi is not None and p["lo"] == 0.0 else p["lo"]
    figures.update(exit_ms=info["exit_ms"], spawn_ms=info["spawn_ms"], log=lt, poll={k: v for k, v in p.items()},
                   first_frame_ms=[lo, hi], kill_to_first_frame_ms=None if hi is None else info["spawn_ms"] + hi)
    details.append(f"{signame} to bulwarkd (pid {old.pid}) {info.get('kill_point') or 0:.1f} s into the stream: it "
                   f"exited (status {info['status']}) {info['exit_ms']:.1f} ms later; the new one (pid {sw.proc.pid}) "
                   f"spawned {info['spawn_ms']:.1f} ms after the signal")
    fmt = lambda v: "?" if v is None else f"{v:.0f}"
    open_ms = lt["open_ms"] if lt["open_ms"] is not None else "?"
    details.append(f"new process, ms after its spawn: first log line {fmt(lt['first'])}, connection table open "
                   f"{open_ms} ms (its own figure), vm1/vm2 queues running {fmt(q[0])}/{fmt(q[1])}, API listening "
                   f"{fmt(lt['api'])} (first answer to the poll {fmt(p['api'])})")
    if hi is None:
        ok = False
        details.append(f"no frame forwarded to vm1/vm2 within {POLL_MAX:.0f} s of the new process's spawn "
                       f"({p['polls']} polls, {p['errors']} errors, last {p['last_error']}; first answer "
                       f"{p['first']}) -- FAIL")
    else:
        already = " (already forwarding at the API's first answer: the lower end is the ports' queues starting)" \
            if p["lo"] == 0.0 else ""
        good = hi <= GAP_BOUND * 1e3
        ok &= good
        details.append(f"FORWARDING GAP after the new process's spawn: first frame delivered to vm1/vm2 between "
                       f"{lo:.0f} and {hi:.0f} ms{already}; {signame} -> first forwarded frame <= "
                       f"{info['spawn_ms'] + hi:.0f} ms (API counters polled every {POLL_IV * 1e3:.0f} ms; bound "
                       f"{GAP_BOUND * 1e3:.0f} ms under TCG, the issue's target 200 ms)"
                       + ("" if good else " -- FAIL"))
        first = "; ".join(f"{n} rx {r} tx {t}" for n, (_, r, t) in (p["first"] or {}).items())
        details.append(f"the stream's data through the switch again (vm2 tx_bytes +{BULK // 1024} KiB between two "
                       f"polls) {fmt(p['bulk'])} ms after the spawn (frames at the API's first answer: {first})")
    # -- the connection table ---------------------------------------------------------------
    ct = {}
    try:
        ct = sw.ctl_json("conntrack") if new_alive else {}
    except GuestError as e:
        details.append(f"conntrack: {e}")
    opened = ct.get("opened") or ""
    m = re.search(r"(\d+) connections kept", opened)
    kept = int(m.group(1)) if m else None
    good = (f"restored from the {want_opened} of pid {old.pid}" in opened and kept is not None and kept >= 1
            and bool(ct.get("state_file")))
    ok &= good
    ck = info.get("ct_kill") or {}
    mine = lambda cs: [c for c in (cs if isinstance(cs, list) else []) if isinstance(c, dict)
                       and c.get("dport") == STREAM_PORT and c.get("dst") == B.ip]
    est = [c for c in mine(info.get("conns_kill")) if c.get("state") == "established"]
    listed = len(mine(info.get("conns_new")))
    details.append(f"conntrack: {ck.get('live')} live at the signal ({len(est)} established tcp/{STREAM_PORT} of "
                   f"vm1); new process: live {ct.get('live')}, state_file {ct.get('state_file')}, {listed} "
                   f"tcp/{STREAM_PORT} of vm1 listed right after the restart; opened: {opened!r}"
                   + ("" if good else f" -- want 'restored from the {want_opened} of pid {old.pid}', >= 1 kept"))
    figures["opened"] = opened
    # -- the policies of the new process ------------------------------------------------------
    if new_alive:
        bad = {n: sp.in_force(n) for n in ("vm1", "vm2")}
        good = not any(bad.values())
        ok &= good
        details.append("new process: vm1/vm2 policies in force (from bulwarkd.toml)" if good
                       else f"new process: policies not in force: {bad} -- FAIL")
    else:
        ok = False
        details.append(f"new bulwarkd exited with status {sw.proc.returncode}:\n" + tail(sw.log, 20))
    # -- the stream ---------------------------------------------------------------------------------
    civ = iperf_intervals(out, IV)
    siv = iperf_intervals(slog, IV)
    kp = info.get("kill_point") or 0.0
    post = [x for x in civ if x[0] >= kp - 1e-6]
    cstall, ctext = _fmt_stall(post, "sender (vm1)")
    sstall, stext = _fmt_stall(siv, "receiver (vm2)")
    after_c = [x for x in post if x[0] >= (cstall[1] if cstall else kp) and x[2] > 0]
    after_s = [x for x in siv if x[0] >= (sstall[1] if sstall else kp) and x[2] > 0]
    rcv = re.search(r"([\d.]+) Mbits/sec\s+receiver", out)
    errs = [l.strip() for l in out.splitlines() if re.search(r"error|reset|refused|broken pipe", l, re.I)]
    secs_c = sum(b - a for a, b, _ in after_c)
    secs_s = sum(b - a for a, b, _ in after_s)
    good = (rc == 0 and not errs and rcv is not None and float(rcv.group(1)) > 0 and secs_c >= 1.0
            and secs_s >= 1.0 and bool(civ) and civ[-1][2] > 0)
    ok &= good
    figures.update(stall_sender=cstall, stall_receiver=sstall, iperf_rc=rc,
                   receiver_mbits=float(rcv.group(1)) if rcv else None)
    details.append(f"STREAM: iperf3 -t {STREAM_SECS} -i {IV:g} vm1 -> vm2 exit {rc}, receiver "
                   f"{rcv.group(1) if rcv else '?'} Mbit/s, {len(civ)} sender / {len(siv)} receiver intervals; "
                   f"after the signal {secs_c:.1f} s (sender) / {secs_s:.1f} s (receiver) of intervals after the "
                   f"stall carried data" + ("" if good else f"; errors {errs or 'none'} -- FAIL (want exit 0, no "
                                                         "error, >= 1 s of data after the stall):" + indent(out, 14)))
    details.append(f"STREAM STALL: {stext}; {ctext} (the sender's intervals count what it wrote into its socket)")
    details.append("guests' eth0 carrier_changes during it: " + ", ".join(
        f"{n} {cc0.get(n)} -> {cc1.get(n)}" for n in ("vm1", "vm2")) + " (QEMU sets the link down when the backend "
                   "goes away and up when one connects)")
    if ping_st.get("answered") is not None:
        run = (f"{ping_st['gap']} (about {ping_st['gap'] * PING_IV * 1e3:.0f} ms, after seq {ping_st['after']})"
               if ping_st["gap"] else "none")
        details.append(f"ping -i {PING_IV:g} vm1 -> vm2 during it: {ping_st.get('sent', '?')} sent, "
                       f"{ping_st.get('received', ping_st['answered'])} answered; longest run unanswered "
                       f"{run}; highest rtt {ping_st['maxrtt']:.0f} ms (seq {ping_st['maxseq']}; a "
                       f"request the guest held during the outage is answered late)")
        figures["ping"] = ping_st
    else:
        details.append("background ping: no figures:" + indent(ping_out, 6))
    # -- drops ----------------------------------------------------------------------------------
    dk = info.get("d_kill") or {}
    nco = delta(d0, dk, "tcp_no_connection", ("vm1", "vm2"))
    zero = {n: {} for n in ("vm1", "vm2")}
    ncn = delta(zero, d_end, "tcp_no_connection", ("vm1", "vm2"))
    rvn = delta(zero, d_end, "policy_revoked", ("vm1", "vm2"))
    good = nco[1] == 0 and ncn[1] == 0 and not ncn[2] and bool(d_end)
    ok &= good
    details.append(f"old process until the signal: {fmt_delta('tcp_no_connection', nco)}; new process (its counters "
                   f"start at 0) at the end: {fmt_delta('tcp_no_connection', ncn)}, {fmt_delta('policy_revoked', rvn)}"
                   + ("" if good else " -- FAIL (want tcp_no_connection +0 in both)"))
    details.append("new process's other drops: "
                   + "; ".join(f"{n} {nonzero(d_end.get(n, {}))}" for n in ("vm1", "vm2")))
    # -- filtered after the restart: vm2 cannot open anything towards vm1 --------------------
    if new_alive:
        rc2, o2 = B.run(f"ping -c 2 -W 1 {A.ip}", timeout=30)
        got = re.search(r"(\d+) packets received", o2)
        d_neg = policy.drops()
        pd = delta(d_end, d_neg, "policy_drop", ("vm1", "vm2"))
        good = rc2 is not None and rc2 != 0 and got is not None and got.group(1) == "0" and pd[1] >= 2
        ok &= good
        details.append(f"control: vm2 -> vm1 ping (no connection of vm1's) after the restart: "
                       f"{'no reply' if good else f'rc={rc2}'}, {fmt_delta('policy_drop', pd)}"
                       + ("" if good else " -- FAIL (want no reply, policy_drop >= 2):" + indent(o2, 4)))
    same = all(g.alive() and g.proc.pid == pids[g.name] for g in net.guests)
    ok &= same
    details.append(f"guests not restarted (same QEMU pids): {same}")
    with open(os.path.join(workdir, f"restart-{tag}.json"), "w") as f:
        json.dump(figures, f, indent=2, default=str)
    log(f"restart {tag}: figures in restart-{tag}.json, iperf3/ping output in iperf3-restart-{tag}.txt")
    if not ok:
        details.append(f"new bulwarkd log tail ({os.path.basename(sw.log)}):\n" + tail(sw.log, 25))
        details.append(f"old bulwarkd log tail ({os.path.basename(old_log)}):\n" + tail(old_log, 10))
        details.append("server log (vm2):" + indent(slog, 12))
    report.verdict(ok, details)


@pytest.mark.bulwarkd
def test_e3_stream_survives_sigkill(net, bulwarkd, stream_policies, policy, workdir, report):
    """e3. an iperf3 stream through filtered ports survives SIGKILL + immediate restart of bulwarkd"""
    restart_under_stream(net, bulwarkd, stream_policies, policy, workdir, report, signal.SIGKILL, "e3")


@pytest.mark.bulwarkd
def test_e4_stream_survives_sigterm(net, bulwarkd, stream_policies, policy, workdir, report):
    """e4. an iperf3 stream through filtered ports survives SIGTERM + immediate restart of bulwarkd"""
    restart_under_stream(net, bulwarkd, stream_policies, policy, workdir, report, signal.SIGTERM, "e4")
