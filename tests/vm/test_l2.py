"""L2 through the switch on `net` (vm1..vm3 on segment 10, vm4 on segment 20): boot, ping inside a
segment, iperf3, segment isolation, and the port counters of `bulwarkctl --json ports`.

Runs first (conftest AREAS): f reads the counters of the first bulwarkd process, with the traffic
of b and c in them, before test_restart restarts it and before test_firewall sets policies."""

import json
import os
import re

import pytest

from lab import GuestError, PING_WAIT_TRIES, indent, nonzero, parallel, tail


def seg10(net):
    return [g.name for g in net.guests if g.segment == 10]


def test_a_boot(net, report):
    """a. boot: all guests reach BW-NET-UP"""
    guests = net.guests
    res = [r for _, r in net.boot()]
    bad = [f"{g.name}: {r}" for g, r in zip(guests, res) if r is not True]
    times = ", ".join(f"{g.name} {g.boot_secs:.1f}s" for g in guests if g.boot_secs)
    if bad:
        for g in guests:
            if not g.up:
                bad.append(f"{g.name} console tail:\n" + tail(g.serial_log, 15))
                silent = not os.path.exists(g.serial_log) or os.path.getsize(g.serial_log) == 0
                if silent:
                    # QEMU 7.2 does not start the guest before a vhost-user backend connected.
                    bad.append(f"{g.name}: no console output at all: QEMU waits for the vhost-user backend "
                               f"to connect to {g.sock} before it starts the guest; did the switch connect?\n"
                               + tail(g.qemu_log, 5))
        report.verdict(False, "\n  ".join([times] + bad))
    report.verdict(True, f"all guests reached BW-NET-UP ({times})")


def test_b_ping(net, report):
    """b. ping both ways between every pair on segment 10"""
    names = seg10(net)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    net.need(*names)
    details, ok = [], True
    for a, b in pairs:
        for s, d in ((a, b), (b, a)):
            # Once the peers had their full wait, later pairs need not wait as long to fail.
            o, msg = net.ping_ok(s, d, PING_WAIT_TRIES if ok else 5)
            ok &= o
            details.append(msg)
    report.verdict(ok, details)


def test_c_iperf(net, workdir, report):
    """c. iperf3 TCP vm1 -> vm2 for 5 s"""
    net.need("vm1", "vm2")
    by = net.by
    rc, out = by["vm2"].run("rm -f /tmp/iperf3.pid; iperf3 -s -1 -D -I /tmp/iperf3.pid --logfile /tmp/iperf3-s.log; sleep 1; cat /tmp/iperf3.pid", timeout=30)
    if rc != 0:
        report.verdict(False, f"iperf3 server on vm2 did not start (rc={rc}):" + indent(out))
    try:
        rc, out = by["vm1"].run(f"iperf3 -c {by['vm2'].ip} -t 5 -f m --connect-timeout 5000", timeout=90)
        with open(os.path.join(workdir, "iperf3-client.txt"), "w") as f:
            f.write(out)
    finally:
        by["vm2"].run("[ -f /tmp/iperf3.pid ] && kill $(cat /tmp/iperf3.pid) 2>/dev/null; true", timeout=15)
    snd = re.search(r"([\d.]+) Mbits/sec\s+(\d+)?\s*sender", out)
    rcv = re.search(r"([\d.]+) Mbits/sec\s+receiver", out)
    if rc == 0 and rcv and float(rcv.group(1)) > 0:
        retr = f", {snd.group(2)} retransmits" if snd and snd.group(2) else ""
        report.verdict(True, (f"vm1 -> vm2 TCP 5 s: receiver {rcv.group(1)} Mbit/s, "
                              f"sender {snd.group(1) if snd else '?'} Mbit/s{retr}"))
        return
    report.verdict(False, f"iperf3 failed (rc={rc}):" + indent(out, 15))


def _neg_ping(net, src, dst):
    """Segment isolation: a bounded ping (-c 2 -W 1, no retry loop) that must get no reply."""
    rc, out = net.by[src].run(f"ping -c 2 -W 1 {net.by[dst].ip}", timeout=30)
    m = re.search(r"(\d+) packets received", out)
    got = int(m.group(1)) if m else None
    if rc is None:
        return False, f"{src}->{dst}: ping did not finish"
    if rc != 0 and not got:
        return True, f"{src}->{dst} no reply (as expected)"
    return False, f"{src}->{dst} GOT REPLIES across segments (rc={rc}):" + indent(out, 6)


@pytest.mark.bulwarkd
def test_d_isolation(net, bulwarkd, report):
    """d. segment isolation: vm4 (segment 20) and vm1..vm3 (segment 10) cannot ping"""
    names = seg10(net)
    sw = bulwarkd
    net.need("vm4", *names)
    before = None
    try:
        before = {p.get("name"): p for p in sw.ports_json()}
    except GuestError:
        pass
    # vm4 pings vm1..3 one after another while vm1..3 ping vm4 at the same time.
    jobs = [lambda: [_neg_ping(net, "vm4", d) for d in names]] + \
           [lambda s=s: [_neg_ping(net, s, "vm4")] for s in names]
    res = parallel(jobs)
    details, ok = [], True
    for r in res:
        if isinstance(r, Exception):
            ok = False
            details.append(f"error: {r}")
            continue
        for o, msg in r:
            ok &= o
            details.append(msg)
    # The result means something only if vm4's port is running and its
    # packets reached the switch.
    try:
        after = {p.get("name"): p for p in sw.ports_json()}
        p4 = after.get("vm4", {})
        rx0 = (before or {}).get("vm4", {}).get("rx_packets", 0) or 0
        state, rx = p4.get("state"), p4.get("rx_packets")
        if state != "running" or not isinstance(rx, int) or rx <= rx0:
            ok = False
            details.append(f"vm4 port not verifiably active: state={state!r}, rx_packets {rx0} -> {rx!r}; "
                           "the isolation result would be meaningless")
        else:
            details.append(f"vm4 port running, rx_packets {rx0} -> {rx} (its ARP/ICMP reached the switch)")
    except GuestError as e:
        details.append(f"WARNING: cannot confirm vm4's port is active: {e}")
    report.verdict(ok, details)


@pytest.mark.bulwarkd
def test_f_counters(net, bulwarkd, workdir, report):
    """f. bulwarkctl --json ports shows rx/tx counters > 0 for vm1 and vm2"""
    ports = bulwarkd.ports_json()
    if not isinstance(ports, list):
        report.verdict(False, f"expected a JSON array, got {type(ports).__name__}")
    byname = {p.get("name"): p for p in ports if isinstance(p, dict)}
    with open(os.path.join(workdir, "ports.json"), "w") as f:
        json.dump(ports, f, indent=2)
    details, ok = [], True
    for n in [g.name for g in net.guests]:
        p = byname.get(n)
        if p is None:
            ok = False
            details.append(f"{n}: missing from the output (names: {sorted(map(str, byname))})")
            continue
        for field in ("name", "socket", "mode", "segment", "state", "rx_packets", "rx_bytes",
                      "tx_packets", "tx_bytes", "drops"):
            if field not in p:
                ok = False
                details.append(f"{n}: field '{field}' missing (fields: {sorted(p)})")
        if n in ("vm1", "vm2"):
            for field in ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes"):
                v = p.get(field)
                if not isinstance(v, int) or v <= 0:
                    ok = False
                    details.append(f"{n}: {field} = {v!r}, expected > 0")
        details.append(f"{n}: state={p.get('state')} seg={p.get('segment')} rx={p.get('rx_packets')}/"
                       f"{p.get('rx_bytes')}B tx={p.get('tx_packets')}/{p.get('tx_bytes')}B "
                       f"drops={nonzero(p.get('drops'))}")
    report.verdict(ok, details)
