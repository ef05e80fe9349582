"""Multiqueue, on a topology of its own: a second bulwarkd (`bulwarkd-mq.toml`: workers = [0, 1],
both ports queues = 2) and two more guests:

    vm5 10.10.2.5/24  -smp 2, queues=2 ─┬─ segment 30 ── bulwarkd-mq (workers on CPUs 0 and 1)
    vm6 10.10.2.6/24  -smp 1, queues=2 ─┘                 (vm6 uses 1 of its 2 pairs)

Runs last (conftest LAST): starting it stops `net` (vm1..vm4 and their bulwarkd, by PID), so that
the two TCG guests and the two polling workers have the machine's cores to themselves.
m2 needs the guests m1 booted (it boots them itself when m1 was not selected)."""

import json
import os
import re
import time

import pytest

from lab import Bulwarkd, Guest, Topology, indent, log, nonzero, ping_wait_cmd, tail

pytestmark = [pytest.mark.bulwarkd, pytest.mark.multiqueue]

MQ_WORKERS = [0, 1]
MQ_GUESTS = [
    # name, segment, ip, mac, vCPUs, queue pairs (the port's `queues` and QEMU's `queues=`)
    ("vm5", 30, "10.10.2.5", "52:54:00:00:00:05", 2, 2),  # Linux enables min(pairs, CPUs) = 2 pairs
    ("vm6", 30, "10.10.2.6", "52:54:00:00:00:06", 1, 2),  # the peer: offered 2 pairs, uses 1 (one CPU)
]
MQ_IPERF_SECS = 5
# UDP, paced: every datagram leaves from the sending process's CPU, so XPS puts stream c on tx
# queue c. (TCP also sends from the softirq that takes the peer's ACKs, on the CPU the
# interrupt lands on, which skews the split between the queues.)
MQ_IPERF_RATE = "5M"    # per stream: ~450 frames/s, which a starved one-vCPU TCG receiver still takes
MQ_IPERF_LEN = 1400     # datagram payload: one frame each
MQ_MAX_LOSS = 10.0      # % of datagrams lost end to end (the switch itself must drop none)
MQ_MIN_FRAMES = 1000    # per worker: about half of the ~2200 frames of its stream; a worker polling none of vm5's pairs sees 0
MQ_RUNNING_WAIT = 10.0  # s for queues_running to settle after boot


@pytest.fixture(scope="module")
def mqnet(opts, workdir, start_topology):
    """bulwarkd-mq (workers MQ_WORKERS) with vm5 (the multiqueue guest) and vm6 (its peer) on
    segment 30; vm5/vm6's NICs get --mq-vectors MSI-X vectors (default 0: INTx). Snapshots
    bulwarkctl into ctl-mq-end-* at the end; then stops them (by PID)."""
    guests = [Guest(n, seg, ip, mac, workdir, cpus=c, queues=q, vectors=opts.mq_vectors)
              for n, seg, ip, mac, c, q in MQ_GUESTS]
    sw = Bulwarkd(opts.bulwarkd, opts.bulwarkctl, workdir, guests, workers=MQ_WORKERS, tag="-mq")
    log(f"multiqueue: starting a second bulwarkd (workers = {MQ_WORKERS}); booting "
        + ", ".join(f"{g.name} (-smp {g.cpus}, {g.queues} queue pairs)" for g in guests))
    with start_topology(Topology("mq", sw, guests, end_check="booted")) as topo:
        try:
            yield topo
        finally:
            sw.snapshot("mq-end")


def pairs_used(g):
    return min(g.cpus, g.queues)


def save(workdir, name, obj):
    with open(os.path.join(workdir, name), "w") as f:
        json.dump(obj, f, indent=2)


def guest_diag(g):
    _, out = g.run("dmesg | grep -i -E 'virtio|eth0' | tail -n 8", timeout=15)
    return f"{g.name} dmesg:" + indent(out, 8)


def test_m1_queues(mqnet, workdir, report):
    """m1. multiqueue: vm5 (-smp 2) runs 2 queue pairs in the guest and the API; vm6 (-smp 1) runs 1 of 2"""
    sw, guests = mqnet.sw, mqnet.guests
    res = [r for _, r in mqnet.boot()]
    bad = [f"{g.name}: {r}" for g, r in zip(guests, res) if r is not True]
    times = ", ".join(f"{g.name} {g.boot_secs:.1f}s" for g in guests if g.boot_secs)
    if bad:
        bad += [f"{g.name} console tail:\n" + tail(g.serial_log, 15) for g in guests if not g.up]
        bad += [f"{g.name} qemu log tail:\n" + tail(g.qemu_log, 8) for g in guests if not g.up]
        bad.append("bulwarkd-mq log tail:\n" + tail(sw.log, 20))
        report.verdict(False, "\n  ".join([times] + bad))
    details, ok = [f"booted: {times}"], True
    # Guest view: Linux sets real_num_{rx,tx}_queues to the pairs it uses; XPS maps CPU n
    # to tx queue n (virtnet_set_affinity).
    for g in guests:
        rc, out = g.run("echo CPUS=$(nproc); echo QUEUES $(ls /sys/class/net/eth0/queues); "
                        "for q in /sys/class/net/eth0/queues/tx-*; do echo XPS ${q##*/}=$(cat $q/xps_cpus); done",
                        timeout=15)
        m = re.search(r"QUEUES ([^\n]*)", out)
        got = sorted(m.group(1).split()) if m else None
        n = pairs_used(g)
        want = sorted([f"rx-{i}" for i in range(n)] + [f"tx-{i}" for i in range(n)])
        xps = " ".join(re.findall(r"XPS (\S+)", out))
        cpus = re.search(r"CPUS=(\d+)", out)
        good = rc == 0 and got == want and cpus and int(cpus.group(1)) == g.cpus
        ok &= bool(good)
        details.append(f"{g.name} (guest): {cpus.group(1) if cpus else '?'} CPUs, "
                       f"/sys/class/net/eth0/queues: {' '.join(got) if got else '?'}; xps_cpus {xps or '?'}"
                       + ("" if good else f" -- want {g.cpus} CPUs and {' '.join(want)}:" + indent(out, 6)))
    # API view: queue pairs offered and running. The peer's unused pair is stopped by QEMU's
    # SET_VRING_ENABLE(0) when the guest sets its pair count, so give it a moment.
    deadline = time.monotonic() + MQ_RUNNING_WAIT
    while True:
        ports = {g.name: sw.port_json(g.name) for g in guests}
        settled = all(ports[g.name].get("queues_running") == pairs_used(g) for g in guests)
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    save(workdir, "mq-ports-boot.json", ports)
    for g in guests:
        p = ports[g.name]
        feats = p.get("features")
        try:
            mq_feat = bool(int(str(feats), 16) & (1 << 22))
        except ValueError:
            mq_feat = None
        per_worker = p.get("rx_packets_per_worker")
        good = (p.get("state") == "running" and p.get("queues") == g.queues
                and p.get("queues_running") == pairs_used(g) and mq_feat is True
                and isinstance(per_worker, list) and len(per_worker) == len(MQ_WORKERS))
        ok &= good
        details.append(f"{g.name} (API): state={p.get('state')} queues={p.get('queues')} "
                       f"queues_running={p.get('queues_running')} features={feats} "
                       f"(VIRTIO_NET_F_MQ {'negotiated' if mq_feat else 'NOT negotiated'}) "
                       f"rx_packets_per_worker={per_worker}"
                       + ("" if good else f" -- want running, queues={g.queues}, "
                          f"queues_running={pairs_used(g)}, MQ negotiated, one count per worker "
                          f"({len(MQ_WORKERS)})"))
    # The table's QUEUES column (running/offered).
    rc, out, err = sw.ctl_cmd("ports")
    with open(os.path.join(workdir, "ctl-mq-ports.txt"), "w") as f:
        f.write(f"# exit {rc}\n{out}{err}")
    for g in guests:
        col = f"{pairs_used(g)}/{g.queues}"
        good = rc == 0 and re.search(rf"^{g.name}\s.*\s{col}\s", out, re.M) is not None
        ok &= good
        if not good:
            details.append(f"`bulwarkctl ports`: no QUEUES {col} on the {g.name} row:" + indent(out + err, 6))
    if not ok:
        details += [guest_diag(g) for g in guests]
        details.append("bulwarkd-mq log (queue lines):\n" + tail(sw.log, 30, grep=r"queue|vring|warn|error"))
    report.verdict(ok, details)


def test_m2_traffic_on_both_workers(mqnet, workdir, report):
    """m2. multiqueue: iperf3 from both vm5 CPUs (taskset) is served by both workers, no drops"""
    sw, guests = mqnet.sw, mqnet.guests
    mq, peer = guests
    ports = [5201 + c for c in range(mq.cpus)]
    mqnet.need()
    # Both ends must hear each other first (ARP, MAC learning).
    rc, out = mq.run(ping_wait_cmd(peer.ip, 10), timeout=60)
    if rc != 0:
        report.verdict(False, f"{mq.name}->{peer.name} ping failed before the streams (rc={rc}):" + indent(out, 6))
    srv = "; ".join(f"rm -f /tmp/ips{p}.pid; iperf3 -s -1 -D -p {p} -I /tmp/ips{p}.pid "
                    f"--logfile /tmp/ips{p}.log --forceflush" for p in ports)
    rc, out = peer.run(srv + "; sleep 1; cat " + " ".join(f"/tmp/ips{p}.pid" for p in ports), timeout=30)
    if rc != 0:
        report.verdict(False, f"iperf3 servers on {peer.name} did not start (rc={rc}):" + indent(out))
    try:
        before = {g.name: sw.port_json(g.name) for g in guests}
        # One stream per guest CPU, each pinned with taskset: XPS sends CPU c's packets on
        # tx queue c, and pair c is polled by worker (port id + c) % workers.
        streams = []
        for c, p in enumerate(ports):
            inner = (f"taskset -p $$; exec iperf3 -c {peer.ip} -p {p} -t {MQ_IPERF_SECS} -u -b {MQ_IPERF_RATE} "
                     f"-l {MQ_IPERF_LEN} -f m --connect-timeout 5000")
            streams.append(f"(taskset -c {c} sh -c '{inner}' >/tmp/c{c}.out 2>&1; "
                           f"echo IPERF-RC=$? >>/tmp/c{c}.out) &")
        cmd = (" ".join(streams) + " wait; "
               + "; ".join(f"echo '== stream {c}'; cat /tmp/c{c}.out" for c in range(len(ports))))
        t0 = time.monotonic()
        rc, out = mq.run(cmd, timeout=MQ_IPERF_SECS + 60)
        secs = time.monotonic() - t0
        after = {g.name: sw.port_json(g.name) for g in guests}
        _, slog = peer.run("; ".join(f"echo '== server {p}'; cat /tmp/ips{p}.log" for p in ports), timeout=15)
    finally:
        peer.run("for f in /tmp/ips*.pid; do [ -f \"$f\" ] && kill $(cat \"$f\") 2>/dev/null; rm -f \"$f\"; done; true",
                 timeout=15)
    with open(os.path.join(workdir, "mq-iperf3.txt"), "w") as f:
        f.write(out + f"\n# {peer.name}: server logs\n" + slog)
    save(workdir, "mq-ports-before.json", before)
    save(workdir, "mq-ports-after.json", after)
    details, ok = [], True
    if rc is None:
        report.verdict(False, f"the iperf3 streams did not finish within {MQ_IPERF_SECS + 60} s:" + indent(out, 20))
    # The streams: pinned as asked, exit 0, data received.
    parts = re.split(r"^== stream (\d+)\n", out, flags=re.M)
    per = {int(parts[i]): parts[i + 1] for i in range(1, len(parts) - 1, 2)}
    for c, p in enumerate(ports):
        o = per.get(c, "")
        src = re.search(r"IPERF-RC=(\d+)", o)
        mask = re.search(r"affinity mask:\s*(\w+)", o)
        # "[  5]   0.00-5.00   sec  11.9 MBytes  20.0 Mbits/sec  0.016 ms  0/8929 (0%)  receiver"
        rcv = re.search(r"([\d.]+) (\w?)Bytes\s+([\d.]+) Mbits/sec\s+[\d.]+ ms\s+(\d+)/(\d+)\s+\(([^)%]*)%\)"
                        r"\s+receiver", o)
        mbytes = lost = total = None
        if rcv:
            mbytes = float(rcv.group(1)) * {"": 1e-6, "K": 1e-3, "M": 1.0, "G": 1e3}.get(rcv.group(2), 1.0)
            lost, total = int(rcv.group(4)), int(rcv.group(5))
        good = (src is not None and src.group(1) == "0" and mask is not None
                and int(mask.group(1), 16) == 1 << c and mbytes is not None and mbytes >= 1.0
                and total and 100.0 * lost / total <= MQ_MAX_LOSS)
        ok &= bool(good)
        got = (f"receiver {rcv.group(1)} {rcv.group(2)}Bytes, {rcv.group(3)} Mbit/s, "
               f"{total - lost}/{total} datagrams ({rcv.group(6)}% lost)") if rcv else "no receiver summary"
        details.append(f"stream {c} ({mq.name} CPU {c} -> {peer.name}:{p}, UDP -b {MQ_IPERF_RATE}, "
                       f"{MQ_IPERF_SECS} s): affinity mask {mask.group(1) if mask else '?'}, "
                       f"exit {src.group(1) if src else '?'}, {got}"
                       + ("" if good else f" -- want mask {1 << c:x}, exit 0, >= 1 MByte received, "
                          f"<= {MQ_MAX_LOSS:.0f}% lost:" + indent(o, 12)))
    # The switch: both workers took frames from the multiqueue guest.
    def per_worker(name):
        b = before[name].get("rx_packets_per_worker") or []
        a = after[name].get("rx_packets_per_worker") or []
        if len(a) != len(MQ_WORKERS) or len(b) != len(a):
            return None
        return [y - x for x, y in zip(b, a)]

    d = per_worker(mq.name)
    good = d is not None and all(v >= MQ_MIN_FRAMES for v in d)
    ok &= good
    total = sum(d) if d else 0
    share = " / ".join(f"{100 * v / total:.0f}%" for v in d) if d and total else "?"
    details.append(f"{mq.name} rx_packets_per_worker {before[mq.name].get('rx_packets_per_worker')} -> "
                   f"{after[mq.name].get('rx_packets_per_worker')}: +{d} during the streams ({share}; "
                   f"workers on CPUs {MQ_WORKERS})"
                   + ("" if good else f" -- want every worker >= {MQ_MIN_FRAMES}"))
    details.append(f"{peer.name} (1 pair running) rx_packets_per_worker +{per_worker(peer.name)} (iperf3 "
                   "control traffic; one worker polls its one running pair)")
    for g in guests:
        p = after[g.name]
        good = p.get("queues") == g.queues and p.get("queues_running") == pairs_used(g)
        ok &= good
        if not good:
            details.append(f"{g.name}: queues={p.get('queues')} queues_running={p.get('queues_running')} after "
                           f"the streams -- want {g.queues} and {pairs_used(g)}")
    # No frame of these ports was dropped while the streams ran.
    for g in guests:
        db, da = before[g.name].get("drops") or {}, after[g.name].get("drops") or {}
        grew = {k: v - (db.get(k) or 0) for k, v in da.items() if v - (db.get(k) or 0)}
        good = isinstance(da, dict) and bool(da) and not grew
        ok &= good
        details.append(f"{g.name} drops during the streams: {json.dumps(grew) if grew else 'none'} "
                       f"(since start: {nonzero(da)}); rx {before[g.name].get('rx_packets')} -> "
                       f"{after[g.name].get('rx_packets')}, tx {before[g.name].get('tx_packets')} -> "
                       f"{after[g.name].get('tx_packets')}" + ("" if good else " -- want no drop"))
    details.append(f"streams took {secs:.1f}s")
    if not ok:
        details.append("bulwarkd-mq log tail:\n" + tail(sw.log, 20))
    report.verdict(ok, details)

