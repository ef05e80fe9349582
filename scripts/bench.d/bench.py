#!/usr/bin/python3
"""scripts/bench: bulwark vs DPDK testpmd io-fwd vs OVS-DPDK, side by side, interleaved.

Run through scripts/bench (which installs the Debian packages and checks for root). Standard
library only; run with Debian's /usr/bin/python3.

How it measures (method from shared/reference/bench-lab.md):
  * The switch under test (DUT) polls on CPU 0; the generator polls on CPU 1; everything else
    of ours (bulwarkd's control threads, testpmd's main lcore, OVS's non-PMD threads, ovsdb,
    this script) is pinned to CPU 1 too.
  * Generator: `pktgen bench` (two vhost-user ports, bidirectional UDP, N two-way flows). The
    figure of a run is what the DUT delivered: the generator's received frames per second on
    both ports together (`rx_mpps`), over the measured seconds after a warm-up. Besides it, each
    run's one-way latency (pktgen stamps every 128th frame; p50 and p99 in microseconds, over
    the measured seconds) and loss (frames sent that never came back, in % of those sent, over
    the whole run) are reported as the median over rounds.
  * The connection-setup case conn4k runs `pktgen bench --mode conn` (port 0 opens TCP
    connections to port 1: SYN, SYN-ACK, ACK, RST); its figure is connections completed per
    second (`conns_per_sec`), compared the same way.
  * Per case and round the DUTs run one after the other (bulwark, testpmd, OVS), each freshly
    started; the case's result is the median over rounds of the per-round ratios
    bulwark/testpmd and bulwark/OVS. Absolute Mpps drift by up to 30 % within minutes here.
  * Noise filter: for every second the foreign CPU time (busy jiffies of /proc/stat minus the
    utime+stime of our processes, this script included) is measured at the moment the
    generator reports that second. A second is clean when foreign load was at most 15 % of one
    CPU in it and in the second before. A run is clean with at least 3 clean seconds (fewer if
    the run is shorter); its value is the median of its clean seconds. An unclean run is
    repeated (--retries); if it stays unclean its value is the median of all its measured
    seconds, flagged "noisy" in the CSVs and the table.
"""

import argparse
import datetime
import json
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import hugetmpfs  # scripts/bench.d/hugetmpfs.py

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
BUILD_HINT = "run: cargo build --release -p bulwark-control -p bulwark-pktgen --bins"
HZ = os.sysconf("SC_CLK_TCK")

PIPELINES = ["l2", "ct", "rules1k", "rules10k"]
FLOWS = {"1k": 1000, "100k": 100_000, "1m": 1_000_000}
SIZES = [64, 1500]  # on the wire, with FCS; the frame is 4 bytes shorter
QUICK_CASES = ["l2-1k-64", "rules1k-100k-64", "rules1k-100k-1500"]
# Connection-setup cases (pktgen --mode conn), outside the matrix: name -> filler rules.
CONN_CASES = {"conn4k": 4000}
# TCP flows (pktgen --mode tcp: a handshake per flow, then window-correct segments both ways),
# outside the matrix: a grid case's name with "-tcp".
TCP_CASES = ["ct-100k-64-tcp", "rules1k-100k-64-tcp", "rules1k-100k-1500-tcp"]
DUTS = ["bulwark", "testpmd", "ovs"]
BRIDGE = "bwbench0"  # OVS bridge; its LOCAL port is a tap of this name, deleted at exit
OVS_VSWITCHD = "/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk"
OVS_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
TESTPMD = "/usr/bin/dpdk-testpmd"
CT_CAPACITY = 2_097_152  # bulwark conntrack slots: the opener's fair share (half) holds 1M flows

OVS_FLOWS = {
    "portfwd": "in_port=1,actions=output:2\nin_port=2,actions=output:1\n",
    "ct": (
        "table=0,priority=100,ip,ct_state=-trk,actions=ct(table=1)\n"
        "table=0,priority=0,actions=drop\n"
        "table=1,priority=100,ip,in_port=1,ct_state=+trk+new,actions=ct(commit),output:2\n"
        "table=1,priority=100,ip,in_port=1,ct_state=+trk+est,actions=output:2\n"
        "table=1,priority=100,ip,in_port=2,ct_state=+trk+new,actions=ct(commit),output:1\n"
        "table=1,priority=100,ip,in_port=2,ct_state=+trk+est,actions=output:1\n"
        "table=1,priority=0,actions=drop\n"
    ),
}


class BenchError(Exception):
    pass


class Interrupted(BaseException):
    pass


def log(msg):
    print(f"bench: {msg}", flush=True)


def fmt_mpps(v):
    return "nan" if v is None else f"{v:.3f}"


def fmt_ratio(v):
    return "-" if v is None else f"{v:.2f}"


def fmt_us(v):
    return "nan" if v is None else f"{v:.1f}"


def fmt_pct(v):
    return "nan" if v is None else f"{v:.3f}"


def median(v):
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None


def tail(path, n=15):
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
        return "\n".join("    " + s for s in lines[-n:])
    except OSError:
        return "    (no log)"


# ---------------------------------------------------------------------------------------------
# Cases


class Case:
    mode = "udp"  # pktgen --mode
    unit = "Mpps"

    def __init__(self, pipe, flows_name, size, proto="udp"):
        self.pipe = pipe
        self.flows_name = flows_name
        self.flows = FLOWS[flows_name]
        self.size = size
        self.frame = size - 4
        self.mode = proto
        self.name = f"{pipe}-{flows_name}-{size}" + ("-tcp" if proto == "tcp" else "")

    @property
    def ovs_pipeline(self):
        return "portfwd" if self.pipe == "l2" else "ct"

    def fmt(self, v):
        return fmt_mpps(v)


class ConnCase(Case):
    """TCP connection setup (pktgen --mode conn): the figure is connections per second. Every
    connection has its own 5-tuple (10.254.0.1:1024+c%64000 -> 10.253.0.0+c/64000:80), so
    --flows does not apply; the frames are 60 B (64 on the wire)."""

    mode = "conn"
    unit = "conns/s"

    def __init__(self, name):
        self.pipe = name
        self.flows_name = ""
        self.flows = 0
        self.size = 64
        self.frame = 60
        self.name = name

    @property
    def ovs_pipeline(self):
        return "ct"

    def fmt(self, v):
        return "nan" if v is None else f"{v:.0f}"


def grid_cases():
    return [Case(p, f, s) for p in PIPELINES for f in FLOWS for s in SIZES]


def all_cases():
    return grid_cases() + [parse_case(n) for n in TCP_CASES] + [ConnCase(n) for n in CONN_CASES]


def parse_case(name):
    if name in CONN_CASES:
        return ConnCase(name)
    m = re.fullmatch(r"(l2|ct|rules1k|rules10k)-(1k|100k|1m)-(64|1500)(-tcp)?", name)
    if not m:
        raise BenchError(f"unknown case {name!r} (see --list)")
    return Case(m.group(1), m.group(2), int(m.group(3)), "tcp" if m.group(4) else "udp")


# ---------------------------------------------------------------------------------------------
# bulwark policies


def filler_rules(n, swap=False):
    """n rules that match neither direction of the generator's traffic (UDP 10.254.0.1:1000 <->
    10.253.x.y:1001) but look like it: near addresses, the same ports on another protocol, the
    same prefix on other ports, port ranges. Nor do they match conn4k's TCP (10.254.0.1:1024-65023
    <-> 10.253.x.y:80): the only TCP rules (k % 4 == 1) are to destination ports 1000-1149.
    With swap (the -tcp cases, whose flows are TCP 10.254.0.1:1000 <-> 10.253.x.y:1001), tcp and
    udp trade places in every rule, so the rules look like that traffic in the same way."""
    rules = []
    for k in range(n):
        kind = k % 4
        if kind == 0:
            r = {"action": "allow", "proto": "udp",
                 "dst": f"10.{k // 4 % 200 + 1}.{k // 800 % 256}.0/24", "dst_ports": 1001}
        elif kind == 1:
            r = {"action": "drop", "proto": "tcp", "dst": "10.253.0.0/16",
                 "dst_ports": [1000 + k % 7, f"{1001 + k % 50}-{1100 + k % 50}"]}
        elif kind == 2:
            r = {"action": "allow", "proto": "udp",
                 "src": [f"192.168.{k // 4 % 256}.0/24", f"172.{16 + k // 1024 % 16}.{k % 256}.0/24"]}
        else:
            p = 2000 + k
            r = {"action": "reject", "proto": "udp", "dst": "10.253.0.0/16", "src_ports": [p, f"{p + 20000}-{p + 20010}"]}
        if swap:
            r["proto"] = {"udp": "tcp", "tcp": "udp"}[r["proto"]]
        rules.append(r)
    return rules


def policies(pipe, proto="udp"):
    """The (p0, p1) policies of a case, or None for no policy (no firewall: the segment is switched
    at L2 only). p0 opens the connections, p1 answers."""
    if pipe == "l2":
        return None
    if pipe == "ct":
        # A small stateful policy: p0 (10.254.0.1) may open UDP (TCP for -tcp cases) to port
        # 1001 anywhere (with 1M flows the destinations run from 10.253.0.0 to 11.12.66.63), p1
        # accepts it; the replies pass only because the connections are tracked (both
        # defaults drop).
        p0 = {"egress_default": "drop", "ingress_default": "drop",
              "egress": [{"action": "allow", "proto": proto, "src": "10.254.0.1/32", "dst_ports": 1001}]}
        p1 = {"egress_default": "drop", "ingress_default": "drop",
              "ingress": [{"action": "allow", "proto": proto, "dst_ports": 1001}]}
        return p0, p1
    # rulesN, and the connection-setup cases (conn4k: 4000 filler rules).
    n = {"rules1k": 1000, "rules10k": 10000, **CONN_CASES}[pipe]
    rules = filler_rules(n, swap=proto == "tcp") + [{"action": "allow"}]
    p = {"egress_default": "drop", "ingress_default": "drop", "egress": rules, "ingress": rules}
    return p, p


def group_document(pipe, proto="udp"):
    """The policy of a case as a policy document with group rules (--groups): p0 is in group
    opener, p1 in answerer (by their tag `side`), and the rules name groups where the CIDR
    policies name addresses. None for l2. One policy, applied to both groups: each vNIC carries
    the rules it is a source of (egress) or a destination of (ingress), about three quarters of
    the CIDR policies' N rules each side, then allow. The filler rules name the peer's group with
    another protocol or other ports, memberless groups with the traffic's port, and addresses
    the traffic does not have: the group trees are walked, none matches."""
    if pipe == "l2":
        return None
    other = {"udp": "tcp", "tcp": "udp"}[proto]
    services = {}

    def svc(p, ports=None, src_ports=None):
        name = f"s{len(services)}"
        key = (p, json.dumps(ports), json.dumps(src_ports))
        if key not in services:
            d = {"name": name, "proto": p}
            if ports is not None:
                d["ports"] = ports
            if src_ports is not None:
                d["src_ports"] = src_ports
            services[key] = d
        return services[key]["name"]

    groups = [{"name": "opener", "select": {"tag": "side", "eq": "opener"}},
              {"name": "answerer", "select": {"tag": "side", "eq": "answerer"}}]
    if pipe == "ct":
        rules = [{"name": "open", "src": "opener", "dst": "answerer",
                  "services": svc(proto, [1001]), "action": "allow"}]
        return {"services": list(services.values()), "groups": groups,
                "policies": [{"name": "ct", "tier": "application", "rules": rules}],
                "defaults": {"egress": "drop", "ingress": "drop"}}
    n = {"rules1k": 1000, "rules10k": 10000, **CONN_CASES}[pipe]
    groups += [{"name": f"empty{k}", "select": {"tag": "side", "eq": f"nobody{k}"}} for k in range(64)]
    rules = []
    for k in range(n):
        kind = k % 4
        if kind == 0:
            r = {"src": "opener", "dst": f"empty{k % 64}", "services": svc(proto, [1001]), "action": "allow"}
        elif kind == 1:
            r = {"src": "opener", "dst": "answerer", "action": "drop",
                 "services": svc(other, [1000 + k % 7, f"{1001 + k % 50}-{1100 + k % 50}"])}
        elif kind == 2:
            r = {"src": [f"192.168.{k // 4 % 256}.0/24", f"172.{16 + k // 1024 % 16}.{k % 256}.0/24"],
                 "dst": "answerer", "services": svc(proto), "action": "allow"}
        else:
            p = 2000 + k
            r = {"src": "opener", "dst": "answerer", "action": "reject",
                 "services": svc(proto, None, [p, f"{p + 20000}-{p + 20010}"])}
        r["name"] = f"f{k}"
        rules.append(r)
    rules.append({"name": "rest", "src": "any", "dst": "any", "action": "allow"})
    return {"services": list(services.values()), "groups": groups,
            "policies": [{"name": pipe, "tier": "application", "applied_to": ["opener", "answerer"],
                          "rules": rules}],
            "defaults": {"egress": "drop", "ingress": "drop"}}


# ---------------------------------------------------------------------------------------------
# Processes we start (and only those are ever stopped)


class Procs:
    def __init__(self):
        self.live = {}  # pid -> (name, Popen)

    def start(self, name, argv, cpus, log_path=None, stdout=None, stderr=None, env=None):
        out = open(log_path, "ab") if log_path else None
        try:
            p = subprocess.Popen(
                [str(a) for a in argv],
                stdin=subprocess.DEVNULL,
                stdout=stdout if stdout is not None else (out or subprocess.DEVNULL),
                stderr=stderr if stderr is not None else (out or subprocess.DEVNULL),
                env=env,
                start_new_session=True,  # the terminal's Ctrl-C reaches us only; we stop them
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)),
            )
        except OSError as e:
            raise BenchError(f"cannot start {name} ({argv[0]}): {e}")
        finally:
            if out:
                out.close()
        self.live[p.pid] = (name, p)
        return p

    def pids(self):
        return [pid for pid, (_, p) in self.live.items() if p.poll() is None]

    def stop(self, p, sig=signal.SIGTERM, timeout=10.0):
        if p is None or p.pid not in self.live:
            return None
        name = self.live[p.pid][0]
        if p.poll() is None:
            try:
                p.send_signal(sig)
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{name} (pid {p.pid}) did not stop within {timeout:.0f} s: killing it")
                p.kill()
                p.wait(5)
            except ProcessLookupError:
                pass
        del self.live[p.pid]
        return p.returncode

    def stop_all(self):
        # Newest first: generators before switches, ovs-vswitchd before ovsdb-server.
        for pid in list(reversed(list(self.live))):
            name, p = self.live[pid]
            sig = signal.SIGINT if name.startswith("testpmd") else signal.SIGTERM
            self.stop(p, sig, 5.0)


# ---------------------------------------------------------------------------------------------
# CPU accounting for the noise filter


def proc_times(pid, children=False):
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    t = int(rest[11]) + int(rest[12])
    if children:
        t += int(rest[13]) + int(rest[14])
    return t


class CpuSampler:
    """Samples busy and steal jiffies of the machine and the CPU time of our processes."""

    def __init__(self, procs):
        self.procs = procs
        self.known = {}

    def sample(self):
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = v[:8]
        busy = user + nice + system + irq + softirq  # guest time is inside user
        for pid in self.procs.pids():
            t = proc_times(pid)
            if t is not None:
                self.known[pid] = t
        # An exited process keeps its last known time, so its end does not look foreign.
        ours = sum(self.known.values()) + (proc_times(os.getpid(), children=True) or 0)
        return (time.monotonic(), busy, steal, ours)


def foreign_fraction(a, b):
    """Foreign CPU load between samples a and b, in CPUs (1.0 = one CPU busy all the time)."""
    dt = b[0] - a[0]
    if dt <= 0:
        return 0.0, 0.0
    foreign = (b[1] - a[1]) - (b[3] - a[3])
    return max(foreign, 0) / HZ / dt, (b[2] - a[2]) / HZ / dt


# ---------------------------------------------------------------------------------------------
# Generators


class LineReader:
    """Lines from a pipe with a deadline."""

    def __init__(self, f):
        self.fd = f.fileno()
        self.buf = b""
        self.eof = False

    def readline(self, deadline):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 1:]
                return line.decode(errors="replace")
            if self.eof:
                if self.buf:
                    line, self.buf = self.buf, b""
                    return line.decode(errors="replace")
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            r, _, _ = select.select([self.fd], [], [], min(left, 1.0))
            if r:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    self.eof = True
                else:
                    self.buf += chunk


class RunResult:
    def __init__(self, metric="rx"):
        self.seconds = []  # dicts: t, rx, tx, cps, foreign, steal, warmup, clean
        # The figure of the run, per second: "rx" (Mpps delivered) or "cps" (connections
        # completed per second, conn cases).
        self.metric = metric
        self.rx_json = None
        self.tx_json = None
        self.error = None
        self.extra = {}
        # From pktgen's JSON (None when it printed none, e.g. the flowgen cross-check):
        self.p50_us = None  # one-way latency of the measured seconds, median ...
        self.p99_us = None  # ... and 99th percentile
        self.loss_pct = None  # frames sent that never came back, % of those sent, whole run

    def warm_frames_estimate(self):
        return sum(s["tx"] for s in self.seconds if s["warmup"]) * 1e6 / 2

    def measured(self):
        return [s for s in self.seconds if not s["warmup"]]

    def filter(self, noise_max, min_clean):
        secs = self.seconds
        for i, s in enumerate(secs):
            prev = secs[i - 1]["foreign"] if i > 0 else s["foreign"]
            s["clean"] = s["foreign"] <= noise_max and prev <= noise_max
        m = self.measured()
        k = self.metric
        clean = [s.get(k) for s in m if s["clean"]]
        self.n_measured = len(m)
        self.n_clean = len(clean)
        self.is_clean = self.error is None and len(clean) >= min(min_clean, max(len(m), 1))
        self.value_all = median([s.get(k) for s in m]) if m else None
        self.value_clean = median(clean)
        if self.error is not None:
            self.value = None
        else:
            self.value = self.value_clean if self.is_clean else self.value_all
        # Frames delivered (Mpps) over the same seconds: the figure itself unless a conn case.
        rxs = [s for s in m if s["clean"]] if self.is_clean else m
        self.rx_value = None if self.error is not None else median([s["rx"] for s in rxs])
        self.rx_clean = median([s["rx"] for s in m if s["clean"]])
        self.rx_all = median([s["rx"] for s in m]) if m else None
        self.foreign_max = max((s["foreign"] for s in m), default=0.0)
        self.tx = median([s["tx"] for s in m])


class Pktgen:
    name = "pktgen"

    def __init__(self, ctx):
        self.ctx = ctx
        self.bin = os.path.join(ctx.bindir, "pktgen")

    def run(self, mode, socks, case, warmup, duration, logdir, sampler, on_measure=None):
        a = self.ctx.args
        argv = [self.bin, "bench"]
        for s in socks:
            argv += [f"--{mode}", s]
        if case.mode == "conn":
            argv += ["--mode", "conn"]  # 60 B frames, a new 5-tuple per connection: no --flows/--size
        else:
            argv += ["--flows", case.flows, "--size", case.frame]
            if case.mode == "tcp":
                argv += ["--mode", "tcp"]  # a handshake per flow first, then data both ways
        argv += ["--duration", duration, "--warmup", warmup, "--cpu", a.gen_cpu]
        res = RunResult("cps" if case.mode == "conn" else "rx")
        errlog = open(os.path.join(logdir, "pktgen.stderr"), "w")
        outpath = os.path.join(logdir, "pktgen.json")
        with open(outpath, "wb") as out:
            s0 = sampler.sample()
            p = self.ctx.procs.start("pktgen", argv, {a.gen_cpu}, stdout=out, stderr=subprocess.PIPE)
        reader = LineReader(p.stderr)
        if on_measure and warmup == 0:
            on_measure()
        deadline = time.monotonic() + warmup + duration + 60
        prev = s0
        line_re = re.compile(r"pktgen: t=(\d+) tx=([\d.]+) rx=([\d.]+) Mpps(.*)")
        conns_re = re.compile(r"conns=([\d.]+)/s")
        try:
            while True:
                line = reader.readline(deadline)
                if line is None:
                    break
                errlog.write(line + "\n")
                m = line_re.match(line)
                if not m:
                    continue
                s = sampler.sample()
                fr, st = foreign_fraction(prev, s)
                prev = s
                c = conns_re.search(m.group(4))
                res.seconds.append({"t": int(m.group(1)), "tx": float(m.group(2)),
                                    "rx": float(m.group(3)), "cps": float(c.group(1)) if c else None,
                                    "foreign": fr, "steal": st, "warmup": "warm" in m.group(4)})
                if on_measure and int(m.group(1)) == warmup:
                    on_measure()  # the measured seconds start now: the switch's counters too
                if a.verbose:
                    log(f"    {line.strip()} foreign={fr:.2f}")
            rc = p.wait(30)
        except TimeoutError:
            res.error = "pktgen did not finish in time"
            self.ctx.procs.stop(p, signal.SIGTERM, 5)
            errlog.close()
            return res
        finally:
            p.stderr.close()
        self.ctx.procs.stop(p)
        errlog.close()
        if rc != 0:
            res.error = f"pktgen exited with {rc}:\n" + tail(os.path.join(logdir, "pktgen.stderr"), 8)
            return res
        try:
            with open(outpath) as f:
                j = json.loads(f.read().strip().splitlines()[-1])
        except (OSError, ValueError, IndexError) as e:
            res.error = f"pktgen printed no JSON result ({e})"
            return res
        res.rx_json, res.tx_json = j.get("rx_mpps"), j.get("tx_mpps")
        res.extra = {k: j.get(k) for k in ("frames_sent", "frames_received", "rx_error", "frames_lost",
                                           "conns_per_sec", "conns_completed", "handshake_unexpected",
                                           "reply_overflow")}
        res.loss_pct = j.get("loss_pct")
        lat = j.get("latency_us") or {}
        res.p50_us, res.p99_us = lat.get("p50"), lat.get("p99")
        res.extra["latency_samples"] = lat.get("samples")
        # The JSON's per-second figures have more digits than the progress lines.
        m = res.measured()
        for key, js in (("rx", "rx_mpps_per_second"), ("tx", "tx_mpps_per_second"),
                        ("cps", "conns_per_sec_per_second")):
            per = j.get(js) or []
            if len(per) == len(m):
                for s, v in zip(m, per):
                    s[key] = float(v)
        if case.mode == "conn" and res.extra.get("conns_per_sec") is None:
            res.error = "pktgen --mode conn printed no conns_per_sec (an old build?)"
        return res


class Flowgen:
    """DPDK testpmd flowgen on two virtio-user ports: the independent cross-check generator."""

    name = "flowgen"

    def __init__(self, ctx):
        self.ctx = ctx

    def run(self, mode, socks, case, warmup, duration, logdir, sampler, on_measure=None):
        a = self.ctx.args
        server = ",server=1" if mode == "listen" else ""
        argv = [TESTPMD, "-l", f"{a.dut_cpu},{a.gen_cpu}", "--main-lcore", a.dut_cpu, "--no-pci",
                "--in-memory", "--single-file-segments", "--file-prefix", "bwbench-gen", "-m", "512"]
        for i, s in enumerate(socks):
            argv += ["--vdev", f"net_virtio_user{i},path={s},queues=1{server}"]
        # flowgen sends --txpkts minus 4 bytes (it leaves room for the FCS): --txpkts=64 gives
        # the 60 B frames pktgen sends with --size 60 (bulwark's byte counters show 60 B a frame).
        argv += ["--", "--forward-mode=flowgen", f"--flowgen-flows={case.flows}", "--nb-cores=1",
                 "--rxq=1", "--txq=1", f"--txpkts={case.size}", "--total-num-mbufs=32768",
                 "--stats-period=1", "--auto-start"]
        res = RunResult()
        outlog = open(os.path.join(logdir, "flowgen.log"), "w")
        s0 = sampler.sample()
        p = self.ctx.procs.start("testpmd-gen", argv, {a.dut_cpu, a.gen_cpu}, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT)
        reader = LineReader(p.stdout)
        deadline = time.monotonic() + warmup + duration + 60
        prev = s0
        rx, tx = [], []
        started = False
        n = 0
        try:
            while n < warmup + duration:
                line = reader.readline(deadline)
                if line is None:
                    res.error = "testpmd flowgen exited early:\n" + tail(os.path.join(logdir, "flowgen.log"), 8)
                    break
                outlog.write(line + "\n")
                m = re.search(r"Rx-pps:\s+(\d+)", line)
                if m:
                    rx.append(int(m.group(1)))
                m = re.search(r"Tx-pps:\s+(\d+)", line)
                if m:
                    tx.append(int(m.group(1)))
                if len(rx) == 2 and len(tx) == 2:
                    s = sampler.sample()
                    fr, st = foreign_fraction(prev, s)
                    prev = s
                    if started or sum(tx) > 0:
                        if not started:
                            started = True
                            # The first second with traffic is partial: count it as warm-up.
                        n += 1
                        res.seconds.append({"t": n, "rx": sum(rx) / 1e6, "tx": sum(tx) / 1e6,
                                            "foreign": fr, "steal": st, "warmup": n <= warmup})
                        if on_measure and n == warmup:
                            on_measure()
                        if a.verbose:
                            log(f"    flowgen t={n} rx={sum(rx) / 1e6:.3f} foreign={fr:.2f}")
                    rx, tx = [], []
        except TimeoutError:
            res.error = "testpmd flowgen: no traffic in time:\n" + tail(os.path.join(logdir, "flowgen.log"), 8)
        finally:
            self.ctx.procs.stop(p, signal.SIGINT, 10)
            try:
                rest = p.stdout.read()
                outlog.write(rest.decode(errors="replace"))
            except (OSError, ValueError):
                pass
            p.stdout.close()
            outlog.close()
        return res


# ---------------------------------------------------------------------------------------------
# Switches under test


class Bulwark:
    name = "bulwark"

    def __init__(self, ctx):
        self.ctx = ctx
        self.bulwarkd = os.path.join(ctx.bindir, "bulwarkd")
        self.bulwarkctl = os.path.join(ctx.bindir, "bulwarkctl")
        self.proc = None
        self.dir = os.path.join(ctx.tmp, "bulwark")
        self.policy_files = {}
        # The policy as a document with group rules instead of per-port CIDR rules.
        self.groups = ctx.args.groups in ("all", "AB")

    def ctl(self, *args, timeout=30):
        r = subprocess.run([self.bulwarkctl, "--run-dir", self.dir, *args], capture_output=True,
                           text=True, timeout=timeout)
        return r

    def policy_file(self, pipe, i, pol, proto="udp"):
        key = (pipe, i, proto)
        if key not in self.policy_files:
            path = os.path.join(self.ctx.tmp, f"policy-{pipe}-{proto}-p{i}.json")
            with open(path, "w") as f:
                json.dump(pol, f)
            self.policy_files[key] = path
        return self.policy_files[key]

    def start(self, case, logdir):
        a = self.ctx.args
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        socks = [os.path.join(self.dir, f"p{i}.sock") for i in range(2)]
        cfg = os.path.join(self.dir, "bulwark.toml")
        with open(cfg, "w") as f:
            # conn: 4x the table, because closed connections leave it only when the sweeper
            # (a control thread, sharing the generator's CPU here) gets to them; at 300k+
            # connections/s the opener's half of 2M filled up and refused new ones
            # (ct_vnic_limit), which would measure the table size instead of setup speed.
            cap = CT_CAPACITY * (4 if case.mode == "conn" else 1)
            f.write(f"[switch]\nworkers = [{a.dut_cpu}]\n\n[conntrack]\ncapacity = {cap}\n")
            if case.mode == "conn":
                # pktgen closes every connection with a RST. A RST-closed connection otherwise
                # stays 30 s (TIME-WAIT, tcp_closed's default) in the table, and the opener's
                # share of it (half the capacity: 1M) fills within seconds at these rates; then
                # new connections are refused and the figure measures a full table.
                f.write("\n[conntrack.timeouts]\ntcp_closed = 1\n")
            for i, s in enumerate(socks):
                f.write(f'\n[[ports]]\nname = "p{i}"\nsocket = "{s}"\nmode = "server"\nsegment = 10\n')
                if self.groups:
                    f.write(f'tags = {{ side = "{("opener", "answerer")[i]}" }}\n')
        shutil.copy(cfg, logdir)
        log_path = os.path.join(logdir, "bulwarkd.log")
        # Control threads on the generator's CPU (as OVS's non-PMD threads); the worker pins
        # itself to the DUT CPU.
        self.proc = self.ctx.procs.start("bulwarkd", [self.bulwarkd, "--run-dir", self.dir, "--config", cfg],
                                         {a.gen_cpu}, log_path=log_path)
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"bulwarkd exited with {self.proc.returncode}:\n" + tail(log_path))
            if all(os.path.exists(s) for s in socks) and os.path.exists(os.path.join(self.dir, "api.sock")):
                if self.ctl("ports").returncode == 0:
                    break
            if time.monotonic() > deadline:
                raise BenchError("bulwarkd did not come up within 20 s:\n" + tail(log_path))
            time.sleep(0.05)
        proto = "tcp" if case.mode == "tcp" else "udp"
        if self.groups:
            doc = group_document(case.pipe, proto)
            if doc:
                path = os.path.join(self.ctx.tmp, f"document-{case.pipe}-{proto}.json")
                with open(path, "w") as f:
                    json.dump(doc, f)
                r = self.ctl("policy", "apply", "-f", path, timeout=60)
                if r.returncode != 0:
                    raise BenchError(f"bulwarkctl policy apply failed: {r.stderr.strip() or r.stdout.strip()}")
            return "dial", socks
        pols = policies(case.pipe, proto)
        if pols:
            for i, pol in enumerate(pols):
                r = self.ctl("policy", "set", f"p{i}", self.policy_file(case.pipe, i, pol, proto), timeout=60)
                if r.returncode != 0:
                    raise BenchError(f"bulwarkctl policy set p{i} failed: {r.stderr.strip() or r.stdout.strip()}")
        return "dial", socks

    def api_get(self, path):
        """GET on bulwarkd's API socket (what bulwarkctl has no command for)."""
        import socket
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.settimeout(10)
            c.connect(os.path.join(self.dir, "api.sock"))
            c.sendall(f"GET {path} HTTP/1.1\r\nHost: bulwark\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while True:
                chunk = c.recv(65536)
                if not chunk:
                    break
                data += chunk
        return json.loads(data.partition(b"\r\n\r\n")[2] or b"null")

    def mark(self):
        try:
            self.marked = self.api_get("/v1/stats")
        except (OSError, ValueError):
            self.marked = None

    def collect(self, logdir):
        out = {"marked": getattr(self, "marked", None)}
        self.marked = None
        try:
            out["conntrack"] = self.api_get("/v1/conntrack")
            with open(os.path.join(logdir, "conntrack.json"), "w") as f:
                json.dump(out["conntrack"], f)
        except (OSError, ValueError):
            pass
        for what, args in (("ports", ["--json", "ports"]), ("stats", ["--json", "stats"])):
            try:
                r = self.ctl(*args)
            except subprocess.TimeoutExpired:
                continue
            with open(os.path.join(logdir, f"bulwarkctl-{what}.json"), "w") as f:
                f.write(r.stdout)
            try:
                out[what] = json.loads(r.stdout)
            except ValueError:
                pass
        return summarize_bulwark(out)

    def stop(self):
        if self.proc is not None:
            rc = self.ctx.procs.stop(self.proc, signal.SIGTERM, 10)
            self.proc = None
            if rc not in (0, None, -signal.SIGTERM):
                log(f"note: bulwarkd exited with {rc}")
        shutil.rmtree(self.dir, ignore_errors=True)


def summarize_bulwark(out):
    """From `bulwarkctl --json stats` after the run, less the snapshot taken when the measured
    seconds began: drops by reason over both ports ('reason=count;...'), frames per busy
    worker loop, and the tracked connections."""
    def totals(st):
        drops, rx, busy = {}, 0, 0
        for p in (st or {}).get("ports") or []:
            rx += p.get("rx_packets", 0)
            for k, v in (p.get("drops") or {}).items():
                drops[k] = drops.get(k, 0) + v
        for w in (st or {}).get("workers") or []:
            busy += w.get("busy_polls", 0)
        return drops, rx, busy

    d1, rx1, b1 = totals(out.get("stats"))
    d0, rx0, b0 = totals(out.get("marked"))
    res = {"bulwark_drops": ";".join(f"{k}={v - d0.get(k, 0)}" for k, v in sorted(d1.items()) if v - d0.get(k, 0) > 0)}
    if b1 - b0 > 0:
        # Frames taken per busy loop over the ports (at most 64: a burst of 32 from each of
        # the two): near 64 the switch is the bottleneck (full bursts waiting each time).
        res["bulwark_frames_per_busy_poll"] = f"{(rx1 - rx0) / (b1 - b0):.1f}"
    ct = out.get("conntrack") or {}
    if "live" in ct:
        res["bulwark_ct_live"] = ct["live"]
    return res


class Testpmd:
    name = "testpmd"

    def __init__(self, ctx):
        self.ctx = ctx
        self.proc = None
        self.dir = os.path.join(ctx.tmp, "testpmd")

    def start(self, case, logdir):
        a = self.ctx.args
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        socks = [os.path.join(self.dir, f"vhost{i}.sock") for i in range(2)]
        argv = [TESTPMD, "-l", f"{a.dut_cpu},{a.gen_cpu}", "--main-lcore", a.gen_cpu, "--no-pci",
                "--in-memory", "--single-file-segments", "--file-prefix", "bwbench-dut", "-m", "512"]
        for i, s in enumerate(socks):
            argv += ["--vdev", f"net_vhost{i},iface={s},queues=1"]
        argv += ["--", "--forward-mode=io", "--nb-cores=1", "--rxq=1", "--txq=1",
                 "--total-num-mbufs=32768", "--stats-period=1", "--auto-start"]
        log_path = os.path.join(logdir, "testpmd.log")
        with open(log_path, "w") as f:
            f.write(" ".join(map(str, argv)) + "\n")
        self.proc = self.ctx.procs.start("testpmd-dut", argv, {a.dut_cpu, a.gen_cpu}, log_path=log_path)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"testpmd exited with {self.proc.returncode}:\n" + tail(log_path))
            if all(os.path.exists(s) for s in socks):
                with open(log_path, errors="replace") as f:
                    if "packet forwarding - ports=" in f.read():
                        break
            if time.monotonic() > deadline:
                raise BenchError("testpmd did not start forwarding within 30 s:\n" + tail(log_path))
            time.sleep(0.1)
        return "dial", socks

    def mark(self):
        pass

    def collect(self, logdir):
        return {}

    def stop(self):
        if self.proc is not None:
            self.ctx.procs.stop(self.proc, signal.SIGINT, 15)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


class Ovs:
    """OVS-DPDK 3.1 in a private directory: ovsdb-server for the whole bench, a fresh
    ovs-vswitchd for every run (bench-lab caveat 5: a ct pipeline taints later runs)."""

    name = "ovs"

    def __init__(self, ctx):
        self.ctx = ctx
        self.dir = os.path.join(ctx.tmp, "ovs")
        self.run_dir = os.path.join(self.dir, "run")
        self.db_sock = os.path.join(self.run_dir, "db.sock")
        self.ctl_sock = os.path.join(self.run_dir, "ovs-vswitchd.ctl")
        self.env = dict(os.environ, OVS_RUNDIR=self.run_dir, OVS_DBDIR=os.path.join(self.dir, "db"),
                        OVS_LOGDIR=os.path.join(self.dir, "log"), OVS_SYSCONFDIR=os.path.join(self.dir, "etc"))
        self.db = None
        self.proc = None
        self.bridge_added = False

    def cmd(self, argv, timeout=30, check=True):
        r = subprocess.run([str(x) for x in argv], capture_output=True, text=True, timeout=timeout, env=self.env)
        if check and r.returncode != 0:
            raise BenchError(f"{' '.join(map(str, argv[:3]))} failed: {(r.stderr or r.stdout).strip()}")
        return r

    def vsctl(self, *args, timeout=30, check=True):
        return self.cmd(["ovs-vsctl", f"--db=unix:{self.db_sock}", f"--timeout={timeout}", *args],
                        timeout=timeout + 5, check=check)

    def appctl(self, *args, check=False):
        return self.cmd(["ovs-appctl", "-t", self.ctl_sock, *args], timeout=15, check=check)

    def ensure_db(self, logdir):
        if self.db is not None and self.db.poll() is None:
            return
        a = self.ctx.args
        for d in ("run", "db", "log", "etc"):
            os.makedirs(os.path.join(self.dir, d), exist_ok=True)
        dbfile = os.path.join(self.dir, "db", "conf.db")
        if os.path.exists(dbfile):
            os.unlink(dbfile)
        self.cmd(["ovsdb-tool", "create", dbfile, OVS_SCHEMA])
        self.db = self.ctx.procs.start(
            "ovsdb-server",
            ["ovsdb-server", dbfile, f"--remote=punix:{self.db_sock}",
             f"--unixctl={os.path.join(self.run_dir, 'ovsdb-server.ctl')}",
             f"--log-file={os.path.join(self.dir, 'log', 'ovsdb-server.log')}"],
            {a.gen_cpu}, log_path=os.path.join(self.ctx.out, "logs", "ovsdb-server.out"), env=self.env)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.db_sock):
            if self.db.poll() is not None or time.monotonic() > deadline:
                raise BenchError("ovsdb-server did not start:\n" + tail(os.path.join(self.dir, "log", "ovsdb-server.log")))
            time.sleep(0.05)
        self.vsctl("--no-wait", "init")
        self.vsctl("--no-wait", "set", "Open_vSwitch", ".",
                   "other_config:dpdk-init=true", "other_config:dpdk-socket-mem=1024",
                   "other_config:dpdk-socket-limit=1024",
                   'other_config:dpdk-extra="--file-prefix=bwbench-ovs --in-memory --no-pci"',
                   f"other_config:pmd-cpu-mask={1 << a.dut_cpu:#x}")

    def start(self, case, logdir):
        a = self.ctx.args
        self.ensure_db(logdir)
        socks = [os.path.join(self.dir, f"vhu{i}.sock") for i in range(2)]
        for s in socks:
            if os.path.exists(s):
                os.unlink(s)
        log_file = os.path.join(logdir, "ovs-vswitchd.log")
        self.proc = self.ctx.procs.start(
            "ovs-vswitchd",
            [OVS_VSWITCHD, f"unix:{self.db_sock}", f"--unixctl={self.ctl_sock}", f"--log-file={log_file}"],
            {a.gen_cpu}, log_path=os.path.join(logdir, "ovs-vswitchd.out"), env=self.env)
        # ovs-vsctl (without --no-wait) returns once ovs-vswitchd has applied the change.
        self.bridge_added = True
        self.vsctl("add-br", BRIDGE, "--", "set", "bridge", BRIDGE, "datapath_type=netdev",
                   "--", "add-port", BRIDGE, "vhu0", "--", "set", "Interface", "vhu0",
                   "type=dpdkvhostuserclient", f"options:vhost-server-path={socks[0]}", "ofport_request=1",
                   "--", "add-port", BRIDGE, "vhu1", "--", "set", "Interface", "vhu1",
                   "type=dpdkvhostuserclient", f"options:vhost-server-path={socks[1]}", "ofport_request=2",
                   timeout=60)
        if self.proc.poll() is not None:
            raise BenchError(f"ovs-vswitchd exited with {self.proc.returncode}:\n" + tail(log_file))
        flows = os.path.join(logdir, f"flows-{case.ovs_pipeline}.txt")
        with open(flows, "w") as f:
            f.write(OVS_FLOWS[case.ovs_pipeline])
        # The ct pipeline needs NXM+table_id or OXM: OpenFlow 1.3.
        self.cmd(["ovs-ofctl", "-O", "OpenFlow13", "replace-flows", BRIDGE, flows])
        return "listen", socks

    def mark(self):
        self.appctl("dpif-netdev/pmd-stats-clear")  # PMD statistics of the measured seconds

    def collect(self, logdir):
        out = []
        for args in (["dpif-netdev/pmd-stats-show"], ["dpif-netdev/pmd-rxq-show"], ["dpctl/ct-get-nconns"]):
            r = self.appctl(*args)
            out.append(f"### ovs-appctl {' '.join(args)}\n{r.stdout}{r.stderr}")
        r = self.cmd(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", BRIDGE], check=False)
        out.append(f"### ovs-ofctl dump-flows\n{r.stdout}{r.stderr}")
        r = self.appctl("dpctl/dump-flows")
        out.append(f"### ovs-appctl dpctl/dump-flows ({len(r.stdout.splitlines())} lines, first 20)\n"
                   + "\n".join(r.stdout.splitlines()[:20]))
        with open(os.path.join(logdir, "ovs-stats.txt"), "w") as f:
            f.write("\n".join(out) + "\n")
        extra = {}
        r = self.appctl("dpctl/ct-get-nconns")
        if r.returncode == 0:
            extra["ovs_ct_conns"] = r.stdout.strip()
        r = self.appctl("dpif-netdev/pmd-stats-show")
        m = re.search(r"idle cycles:\s+\d+\s+\(([\d.]+)\s*%\)", r.stdout)
        if m:
            extra["ovs_pmd_idle_pct"] = m.group(1)
        return extra

    def stop(self):
        if self.proc is not None:
            if self.proc.poll() is None and self.bridge_added:
                try:
                    self.vsctl("del-br", BRIDGE, timeout=10, check=False)
                except subprocess.TimeoutExpired:
                    pass
            self.ctx.procs.stop(self.proc, signal.SIGTERM, 15)
            self.proc = None
        if self.bridge_added:
            delete_tap()
            self.bridge_added = False

    def shutdown(self):
        self.stop()
        if self.db is not None:
            self.ctx.procs.stop(self.db, signal.SIGTERM, 10)
            self.db = None


def delete_tap():
    if os.path.exists(f"/sys/class/net/{BRIDGE}"):
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)


# ---------------------------------------------------------------------------------------------
# Hugepages (DPDK and OVS only; bulwark and pktgen do not use them)


class Hugepages:
    PATH = "/proc/sys/vm/nr_hugepages"

    def __init__(self):
        self.old = None

    @staticmethod
    def meminfo(key):
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        return 0

    def reserve(self, pages):
        if self.meminfo("Hugepagesize") != 2048:
            raise BenchError("the default hugepage size is not 2 MiB; reserve 2 GiB of hugepages yourself")
        free = self.meminfo("HugePages_Free")
        if free >= pages:
            log(f"hugepages: {free} x 2 MiB free, none reserved")
            return
        with open(self.PATH) as f:
            self.old = int(f.read())
        want = self.old + (pages - free)
        for attempt in range(2):
            with open(self.PATH, "w") as f:
                f.write(str(want))
            if self.meminfo("HugePages_Free") >= pages:
                break
            with open("/proc/sys/vm/compact_memory", "w") as f:
                f.write("1")
        got = self.meminfo("HugePages_Free")
        log(f"hugepages: nr_hugepages {self.old} -> {want} ({got} free; restored at exit)")
        if got < pages:
            raise BenchError(f"could reserve only {got} of {pages} free 2 MiB hugepages")

    def restore(self):
        if self.old is not None:
            with open(self.PATH, "w") as f:
                f.write(str(self.old))
            log(f"hugepages: nr_hugepages restored to {self.old}")
            self.old = None


# ---------------------------------------------------------------------------------------------
# The bench


class Ctx:
    pass


def check_binaries(ctx, duts, conn=False):
    need = (["bulwarkd", "bulwarkctl"] if "bulwark" in duts else []) + (["pktgen"] if ctx.args.generator == "pktgen" else [])
    missing = [b for b in need if not os.access(os.path.join(ctx.bindir, b), os.X_OK)]
    if missing:
        raise BenchError(f"missing {', '.join(missing)} in {ctx.bindir}: {BUILD_HINT}")
    if "pktgen" in need:
        r = subprocess.run([os.path.join(ctx.bindir, "pktgen"), "bench", "--help"], capture_output=True, text=True)
        if "--flows" not in r.stdout + r.stderr:
            raise BenchError(f"{ctx.bindir}/pktgen has no `bench` mode (an old build?): {BUILD_HINT}")
        if conn and "--mode" not in r.stdout + r.stderr:
            raise BenchError(f"{ctx.bindir}/pktgen bench has no --mode conn (an old build?): {BUILD_HINT}")
    # Each binary against the sources of the crates it is built from (pktgen does not take in
    # the switch's crates: comparing it with them warned after every change to the switch).
    crates = {"bulwarkd": ("vhost", "dataplane", "conntrack", "control"),
              "bulwarkctl": ("vhost", "dataplane", "conntrack", "control"),
              "pktgen": ("pktgen",)}
    stale = []
    for b in need:
        built = os.path.getmtime(os.path.join(ctx.bindir, b))
        newest_src = 0.0
        for crate in crates[b]:
            for root, _, files in os.walk(os.path.join(REPO, crate, "src")):
                for fn in files:
                    newest_src = max(newest_src, os.path.getmtime(os.path.join(root, fn)))
        if newest_src > built:
            stale.append(b)
    if stale:
        log(f"warning: sources are newer than {', '.join(stale)} in {ctx.bindir} ({BUILD_HINT})")
    # Only the tools of the switches being run: an --ab or --duts bulwark run needs neither
    # DPDK nor OVS.
    tools = ([TESTPMD] if "testpmd" in duts or ctx.args.generator == "flowgen" else []) + \
        ([OVS_VSWITCHD, "ovsdb-server", "ovs-vsctl", "ovs-ofctl"] if "ovs" in duts else []) + ["gnuplot"]
    for tool in tools:
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} not found: run scripts/setup-bench (or scripts/bench without --no-install)")


def write_env(ctx):
    def sh(cmd):
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
        except subprocess.TimeoutExpired:
            return "?"
    model = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-")
    dpdk_v = sh("dpkg-query -W -f='${Version}' dpdk")
    ovs_v = sh("dpkg-query -W -f='${Version}' openvswitch-switch-dpdk")
    memt = sh("grep MemTotal /proc/meminfo")
    lines = [
        f"command: scripts/bench {' '.join(sys.argv[1:])}",
        f"started: {ctx.started_wall}",
        f"git: {sh(f'git -C {REPO} rev-parse HEAD')} {'(dirty)' if sh(f'git -C {REPO} status --porcelain --untracked-files=no') else ''}",
        f"kernel: {os.uname().release}",
        f"cpu: {model} x {os.cpu_count()}",
        f"memory: {memt}",
        f"dpdk: {dpdk_v}",
        f"openvswitch-switch-dpdk: {ovs_v}",
        f"cpus: switch (DUT) on CPU {ctx.args.dut_cpu}, generator on CPU {ctx.args.gen_cpu}",
        f"rounds={ctx.args.rounds} warmup={ctx.args.warmup}s duration={ctx.args.duration}s "
        f"retries={ctx.args.retries} noise_max={ctx.args.noise_max} min_clean={ctx.args.min_clean}",
    ]
    with open(os.path.join(ctx.out, "env.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


RUN_FIELDS = ["case", "round", "dut", "generator", "attempt", "rx_mpps", "clean", "rx_mpps_clean",
              "rx_mpps_all", "tx_mpps", "clean_seconds", "measured_seconds", "foreign_cpu_max",
              "rx_mpps_json", "frames_sent", "frames_received", "error", "bulwark_drops",
              "bulwark_ct_live", "bulwark_frames_per_busy_poll", "primed_s", "unprimed_rx_mpps", "ovs_ct_conns", "ovs_pmd_idle_pct", "logdir",
              # Appended later (keep the columns above in place): pktgen's latency and loss,
              # and for conn cases the run's figure in connections per second (the rx_mpps*
              # columns hold frames delivered for every case).
              "latency_p50_us", "latency_p99_us", "latency_samples", "loss_pct", "frames_lost",
              "conns_per_sec", "conns_per_sec_clean", "conns_per_sec_all", "conns_completed",
              "handshake_unexpected", "reply_overflow"]


def csv_line(vals):
    out = []
    for v in vals:
        s = "" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))
        if any(c in s for c in ',"\n'):
            s = '"' + s.replace('"', '""') + '"'
        out.append(s)
    return ",".join(out) + "\n"


def time_for_a_repeat(ctx):
    """With --budget: repeat a run only if the planned runs still fit in the budget after it."""
    if not ctx.args.budget:
        return True
    el = time.monotonic() - ctx.t0
    avg = el / max(ctx.attempts, 1)
    return el + avg * (1 + ctx.runs_planned - ctx.run_no) <= ctx.args.budget


def run_one(ctx, dut, gen, case, rnd, warmup, duration):
    """One DUT run with retries for noise; returns the kept RunResult."""
    a = ctx.args
    best = None
    ctx.run_no += 1
    for attempt in range(1, a.retries + 2):
        ctx.attempts += 1
        logdir = os.path.join(ctx.out, "logs", case.name, f"r{rnd}-{dut.name}-{gen.name}-a{attempt}")
        os.makedirs(logdir, exist_ok=True)
        res = None
        extra = {}
        try:
            mode, socks = dut.start(case, logdir)
            res = gen.run(mode, socks, case, warmup, duration, logdir, ctx.sampler, dut.mark)
            if (res.error is None and case.mode == "udp" and res.warm_frames_estimate() < case.flows
                    and a.prime_max > 0):
                res = prime_and_rerun(ctx, dut, gen, case, mode, socks, res, warmup, duration, logdir)
            if res.error is None:
                extra = dut.collect(logdir)
        except BenchError as e:
            res = res or RunResult()
            res.error = str(e)
        except subprocess.TimeoutExpired as e:
            res = res or RunResult()
            res.error = f"timeout: {e}"
        finally:
            dut.stop()
        res.filter(a.noise_max, a.min_clean)
        res.extra.update(extra)
        res.attempt = attempt
        res.logdir = logdir
        with open(os.path.join(ctx.out, "seconds.csv"), "a") as f:
            for s in res.seconds:
                f.write(csv_line([case.name, rnd, dut.name, gen.name, attempt, s["t"], s["warmup"],
                                  s["rx"], s["tx"], s["foreign"], s["steal"], s["clean"], s.get("cps")]))
        conn = case.mode == "conn"
        with open(os.path.join(ctx.out, "runs.csv"), "a") as f:
            f.write(csv_line([case.name, rnd, dut.name, gen.name, attempt, res.rx_value, res.is_clean,
                              res.rx_clean, res.rx_all, res.tx, res.n_clean, res.n_measured,
                              res.foreign_max, res.rx_json, res.extra.get("frames_sent"),
                              res.extra.get("frames_received"), (res.error or "").splitlines()[0] if res.error else None,
                              res.extra.get("bulwark_drops"), res.extra.get("bulwark_ct_live"),
                              res.extra.get("bulwark_frames_per_busy_poll"), res.extra.get("primed_s"),
                              res.extra.get("first_rx_mpps"), res.extra.get("ovs_ct_conns"),
                              res.extra.get("ovs_pmd_idle_pct"), os.path.relpath(logdir, ctx.out),
                              res.p50_us, res.p99_us, res.extra.get("latency_samples"), res.loss_pct,
                              res.extra.get("frames_lost"), res.value if conn else None,
                              res.value_clean if conn else None, res.value_all if conn else None,
                              res.extra.get("conns_completed"), res.extra.get("handshake_unexpected"),
                              res.extra.get("reply_overflow")]))
        el = int(time.monotonic() - ctx.t0)
        where = f"[{ctx.run_no}/{ctx.runs_planned} {el // 60}:{el % 60:02d}] {case.name} round {rnd}/{ctx.rounds_of(case)}"
        if res.error:
            log(f"{where} {dut.name} ({gen.name}): FAILED: {res.error}")
            if best is None:
                best = res
            if attempt <= a.retries and time_for_a_repeat(ctx):
                log(f"{where} {dut.name}: repeating the failed run ({attempt}/{a.retries})")
                continue
            break
        note = "" if res.is_clean else f" NOISY (foreign CPU up to {res.foreign_max:.0%})"
        x = res.extra
        drops = ""
        if "bulwark_ct_live" in x or "bulwark_frames_per_busy_poll" in x:
            drops += f" [ct {x.get('bulwark_ct_live', '?')}, {x.get('bulwark_frames_per_busy_poll', '?')} frames/busy loop]"
        if "ovs_ct_conns" in x or "ovs_pmd_idle_pct" in x:
            drops += f" [ct {x.get('ovs_ct_conns', '?')}, PMD idle {x.get('ovs_pmd_idle_pct', '?')} %]"
        if x.get("bulwark_drops"):
            drops += f" drops while measuring: {x['bulwark_drops']}"
        if res.tx and res.rx_value and res.rx_value < 0.97 * res.tx:
            drops += f" LOSS {1 - res.rx_value / res.tx:.0%} of what the generator sent"
        if conn:
            drops += (f" [{fmt_mpps(res.rx_value)} Mpps; handshake_unexpected {x.get('handshake_unexpected')}, "
                      f"reply_overflow {x.get('reply_overflow')}]")
        lat = ""
        if res.p50_us is not None:
            lat += f", p50/p99 {fmt_us(res.p50_us)}/{fmt_us(res.p99_us)} us"
        if res.loss_pct is not None:
            lat += f", loss {fmt_pct(res.loss_pct)} %"
        log(f"{where} {dut.name:7s} {case.fmt(res.value):>7s} {case.unit} (tx {fmt_mpps(res.tx)} Mpps, "
            f"{res.n_clean}/{res.n_measured} clean s{lat}){note}{drops}")
        if best is None or best.error or res.n_clean > best.n_clean:
            best = res
        if res.is_clean:
            return res
        if attempt <= a.retries:
            if not time_for_a_repeat(ctx):
                log(f"{where} {dut.name}: noisy run, no time left for a repeat (--budget {a.budget} s)")
                break
            log(f"{where} {dut.name}: noisy run, repeating ({attempt}/{a.retries})")
    if best.error:
        ctx.failures += 1
    return best


def prime_and_rerun(ctx, dut, gen, case, mode, socks, res, warmup, duration, logdir):
    """The warm-up did not send every flow once in each direction: the run measured connection
    set-up, not a steady state. Keep the switch running and let the generator send until one
    of its runs has sent every flow (each run starts again at flow 0, so the flows set up so
    far go by fast and each run gets further), at most --prime-max seconds; then measure again."""
    a = ctx.args
    frontier = (res.extra.get("frames_sent") or 0) / 2  # flows sent by each port in one run
    t0 = time.monotonic()
    n = 0
    secs = 5
    log(f"    {case.name} {dut.name}: the warm-up sent {res.warm_frames_estimate() / case.flows:.2f} of the "
        f"{case.flows} flows (measured {fmt_mpps(median([s['rx'] for s in res.measured()]))} Mpps while setting "
        f"up connections); priming for up to {a.prime_max} s")
    while frontier < case.flows and time.monotonic() - t0 < a.prime_max:
        n += 1
        d = os.path.join(logdir, f"prime-{n}")
        os.makedirs(d, exist_ok=True)
        secs = int(max(2, min(secs, a.prime_max - (time.monotonic() - t0))))
        pr = gen.run(mode, socks, case, 0, secs, d, ctx.sampler)
        if pr.error:
            res.error = f"priming: {pr.error}"
            return res
        frontier = max(frontier, (pr.extra.get("frames_sent") or 0) / 2)
        secs *= 2
    primed = time.monotonic() - t0
    covered = frontier >= case.flows
    log(f"    {case.name} {dut.name}: primed {primed:.0f} s ({min(frontier / case.flows, 1):.2f} of the flows"
        f"{'' if covered else ': NOT all, the figure includes connection set-up'}); measuring again")
    res2 = gen.run(mode, socks, case, warmup, duration, logdir, ctx.sampler, dut.mark)
    res2.extra["primed_s"] = f"{primed:.0f}" + ("" if covered else " (incomplete)")
    res2.extra["first_rx_mpps"] = median([s["rx"] for s in res.measured()])
    return res2


def summarize(values):
    """values: list per round of dict dut -> RunResult. Clean runs (and rounds whose two runs
    are clean, for a ratio) are used when there are any; otherwise all, and the figure is
    marked noisy (a '*' in the table)."""
    s = {"noisy": set()}
    for d in DUTS:
        runs = [r[d] for r in values if r.get(d) is not None and r[d].value is not None]
        clean = [x for x in runs if x.is_clean]
        if runs and not clean:
            s["noisy"].add(d)
        s[d] = median([x.value for x in (clean or runs)])
        # Latency and loss: medians over the same runs (None when pktgen reported none).
        s[f"{d}_p50_us"] = median([x.p50_us for x in (clean or runs)])
        s[f"{d}_p99_us"] = median([x.p99_us for x in (clean or runs)])
        s[f"{d}_loss_pct"] = median([x.loss_pct for x in (clean or runs)])
        s[f"{d}_rx_mpps"] = median([x.rx_value for x in (clean or runs)])
    for d in ("testpmd", "ovs"):
        pairs = []
        for r in values:
            b, o = r.get("bulwark"), r.get(d)
            if b is not None and o is not None and b.value and o.value:
                pairs.append((b.value / o.value, b.is_clean and o.is_clean))
        clean = [x for x, c in pairs if c]
        if pairs and not clean:
            s["noisy"].add(f"ratio_{d}")
        s[f"ratio_{d}"] = median(clean or [x for x, _ in pairs])
        s[f"ratios_{d}"] = [x for x, _ in pairs]
    s["rounds"] = len(values)
    s["clean_rounds"] = sum(1 for r in values if all(x is not None and x.is_clean for x in r.values()))
    return s


def write_outputs(ctx, results, xres):
    out = ctx.out
    with open(os.path.join(out, "results.csv"), "w") as f:
        # The first 16 columns are as they always were; for conn cases the *_mpps columns are
        # empty and the figure is in *_cps (the ratios are of the figure, whichever it is).
        f.write("case,pipeline,flows,frame_bytes,wire_bytes,bulwark_mpps,testpmd_mpps,ovs_mpps,"
                "bulwark_testpmd_ratio,bulwark_ovs_ratio,ovs_pipeline,rounds,clean_rounds,"
                "ratios_testpmd,ratios_ovs,noisy,metric,bulwark_cps,testpmd_cps,ovs_cps,"
                + ",".join(f"{d}_{k}" for d in DUTS for k in ("p50_us", "p99_us", "loss_pct"))
                + ",bulwark_rx_mpps,testpmd_rx_mpps,ovs_rx_mpps\n")
        for case, s in results:
            conn = case.mode == "conn"
            fig = [None if conn else s[d] for d in DUTS]
            cps = [s[d] if conn else None for d in DUTS]
            f.write(csv_line([case.name, case.pipe, case.flows or None, case.frame, case.size, *fig,
                              s["ratio_testpmd"], s["ratio_ovs"], case.ovs_pipeline, s["rounds"],
                              s["clean_rounds"], " ".join(f"{x:.3f}" for x in s["ratios_testpmd"]),
                              " ".join(f"{x:.3f}" for x in s["ratios_ovs"]), " ".join(sorted(s["noisy"])),
                              "conns_per_sec" if conn else "mpps", *cps,
                              *[s[f"{d}_{k}"] for d in DUTS for k in ("p50_us", "p99_us", "loss_pct")],
                              *[s[f"{d}_rx_mpps"] for d in DUTS]]))
    lines = []
    w = max([len(c.name) for c, _ in results] + [8])
    lines.append(f"{'case':{w}s} {'bulwark':>8s} {'testpmd':>8s} {'OVS':>8s} {'unit':7s} {'b/testpmd':>9s} {'b/OVS':>6s}  OVS pipeline  rounds (clean)")
    for case, s in results:
        def col(k, f, wd):
            return (f(s[k]) + ("*" if k in s["noisy"] else "")).rjust(wd)
        lines.append(f"{case.name:{w}s} {col('bulwark', case.fmt, 8)} {col('testpmd', case.fmt, 8)} "
                     f"{col('ovs', case.fmt, 8)} {case.unit:7s} {col('ratio_testpmd', fmt_ratio, 9)} {col('ratio_ovs', fmt_ratio, 6)}  "
                     f"{case.ovs_pipeline:12s}  {s['rounds']} ({s['clean_rounds']})")
    lines.append("")
    lines.append("Latency (one-way, us: p50/p99 of every 128th frame in the measured seconds) and loss (% of the")
    lines.append("frames sent that never came back, whole run), median over rounds:")
    dash = lambda v, f: "-" if v is None else f(v)  # noqa: E731
    lines.append(f"{'case':{w}s} {'bulwark p50/p99':>16s} {'loss %':>7s}  {'testpmd p50/p99':>16s} {'loss %':>7s}  "
                 f"{'OVS p50/p99':>16s} {'loss %':>7s}")
    for case, s in results:
        cols = []
        for d in DUTS:
            lat = f"{dash(s[d + '_p50_us'], fmt_us)}/{dash(s[d + '_p99_us'], fmt_us)}"
            cols.append(f"{lat:>16s} {dash(s[d + '_loss_pct'], fmt_pct):>7s}")
        lines.append(f"{case.name:{w}s} " + "  ".join(cols))
    lines.append("")
    if any(s["noisy"] for _, s in results):
        lines.append("*: no clean run (or round) for this figure: other jobs used the CPU; repeat the case.")
    lines.append("Mpps: frames delivered by the switch, both directions, median over rounds (each run: median of")
    lines.append("its clean seconds). Ratios: median of the per-round ratios; compare these, not the Mpps.")
    lines.append("testpmd: io-fwd between two vhost-user ports (the limit of one vhost-user switch core);")
    lines.append("OVS: port fwd for l2 cases, ct(commit)+established for ct/rules cases. bulwark l2: no policy")
    lines.append("(no firewall: plain L2 switching); ct: a small stateful policy; rulesN: N non-matching rules")
    lines.append("and a final allow on both ports' egress and ingress.")
    if any(c.mode == "conn" for c, _ in results):
        lines.append("conns/s (conn4k): TCP connections completed per second (pktgen --mode conn: SYN, SYN-ACK,")
        lines.append("ACK, RST, each connection a new 5-tuple); bulwark: 4000 non-matching rules and a final allow")
        lines.append("on both ports, tcp_closed timeout 1 s; OVS: the ct(commit)+established pipeline. No latency")
        lines.append("is sampled in conn mode; its loss counts handshake frames.")
    if xres:
        lines.append("")
        lines.append("Cross-check with DPDK testpmd flowgen (virtio-user) as the generator (MACs fixed by testpmd:")
        lines.append("bulwark floods; same 5-tuple from both ports):")
        for case, s, pk in xres:
            pkr = f", pktgen ratio {fmt_ratio(pk)}" if pk is not None else ""
            lines.append(f"  {case.name}: bulwark {fmt_mpps(s['bulwark'])} testpmd {fmt_mpps(s['testpmd'])} Mpps, "
                         f"bulwark/testpmd {fmt_ratio(s['ratio_testpmd'])}{pkr} ({s['rounds']} rounds, "
                         f"{s['clean_rounds']} clean)")
        with open(os.path.join(out, "xcheck.csv"), "w") as f:
            f.write("case,generator,bulwark_mpps,testpmd_mpps,bulwark_testpmd_ratio,pktgen_bulwark_testpmd_ratio,rounds,clean_rounds\n")
            for case, s, pk in xres:
                f.write(csv_line([case.name, "testpmd-flowgen", s["bulwark"], s["testpmd"], s["ratio_testpmd"], pk,
                                  s["rounds"], s["clean_rounds"]]))
    table = "\n".join(lines) + "\n"
    with open(os.path.join(out, "table.txt"), "w") as f:
        f.write(table)
    plot(ctx, results)
    return table


def plot(ctx, results):
    out = ctx.out
    dat = os.path.join(out, "plot.dat")
    nan = lambda v: "NaN" if v is None else f"{v:.4f}"  # noqa: E731
    with open(dat, "w") as f:
        f.write("# case bulwark testpmd ovs b/testpmd b/ovs\n")
        for case, s in results:
            # conns/s do not belong on the Mpps axis: only the ratios of conn cases are drawn.
            v = [None if case.mode == "conn" else s[d] for d in DUTS]
            f.write(f"{case.name} {nan(v[0])} {nan(v[1])} {nan(v[2])} "
                    f"{nan(s['ratio_testpmd'])} {nan(s['ratio_ovs'])}\n")
    n = len(results)
    width = max(900, 90 * n + 200)
    # The Mpps panel only when there is a Mpps case (gnuplot fails on a panel of NaN only).
    has_mpps = any(case.mode != "conn" and any(s[d] is not None for d in DUTS) for case, s in results)
    panels = 2 if has_mpps else 1
    mpps_panel = ("set ylabel \"Mpps delivered (median of rounds)\"\n"
                  f"plot '{dat}' using 2:xtic(1) title 'bulwark' lc rgb '#1f77b4', '' using 3 title "
                  "'testpmd io-fwd' lc rgb '#7f7f7f', '' using 4 title 'OVS-DPDK' lc rgb '#ff7f0e'\n") if has_mpps else ""
    title = f"bulwark vs DPDK testpmd io-fwd vs OVS-DPDK 3.1 - switch on CPU {ctx.args.dut_cpu}, pktgen on CPU {ctx.args.gen_cpu} - {ctx.started_wall}"
    gp = f"""
set terminal pngcairo size {width},900 font "sans,10"
set output '{os.path.join(out, "bench.png")}'
set multiplot layout {panels},1 title "{title}"
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set xtics rotate by -30 scale 0 nomirror
set grid ytics
set xrange [-0.6:{n - 0.4}]
set yrange [0:*]
set key above horizontal
set lmargin at screen {max(0.02, 60 / width):.3f}
set rmargin at screen 0.98
{mpps_panel}set ylabel "ratio (median of per-round ratios)"
plot '{dat}' using 5:xtic(1) title 'bulwark / testpmd' lc rgb '#2ca02c', '' using 6 title 'bulwark / OVS' lc rgb '#d62728', 1 with lines lc rgb 'black' dt 2 notitle
unset multiplot
"""
    gpf = os.path.join(out, "plot.gp")
    with open(gpf, "w") as f:
        f.write(gp)
    r = subprocess.run(["gnuplot", gpf], capture_output=True, text=True)
    if r.returncode != 0:
        log(f"warning: gnuplot failed: {r.stderr.strip()[:500]}")


def interrupt(sig, _frame):
    """Signal handler: unwinds the run, whose `finally` stops what it started."""
    raise Interrupted(signal.Signals(sig).name)


def stop_signals(handler):
    """Installs `handler` for the signals that end a run (SIG_IGN while cleaning up)."""
    for sg in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sg, handler)


def new_ctx(args, duts, cases, suffix=""):
    """The run's context: output directory with its CSV headers and env.txt, this script pinned
    to the generator's CPU, the process table and the noise sampler."""
    ctx = Ctx()
    ctx.args = args
    ctx.bindir = os.path.abspath(args.bin_dir)
    ctx.t0 = time.monotonic()
    ctx.started_wall = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + suffix
    base = os.path.join(REPO, "bench-results")
    ctx.out = os.path.abspath(args.out) if args.out else os.path.join(base, stamp)
    check_binaries(ctx, duts, any(c.mode == "conn" for c in cases))
    os.makedirs(os.path.join(ctx.out, "logs"), exist_ok=True)
    if not args.out:
        link = os.path.join(base, "latest")
        if os.path.islink(link):
            os.unlink(link)
        if not os.path.exists(link):
            os.symlink(stamp, link)
    with open(os.path.join(ctx.out, "runs.csv"), "w") as f:
        f.write(",".join(RUN_FIELDS) + "\n")
    with open(os.path.join(ctx.out, "seconds.csv"), "w") as f:
        f.write("case,round,dut,generator,attempt,t,warmup,rx_mpps,tx_mpps,foreign_cpu,steal_cpu,clean,conns_per_sec\n")
    write_env(ctx)

    # This script and everything it starts run on the generator's CPU, unless pinned elsewhere.
    os.sched_setaffinity(0, {args.gen_cpu})
    ctx.procs = Procs()
    ctx.sampler = CpuSampler(ctx.procs)
    ctx.failures = 0
    ctx.run_no = 0
    ctx.attempts = 0
    # On tmpfs, as /run is on Debian: bulwarkd keeps its connection table in a state file in
    # its run directory, which on a disk filesystem the kernel would write back. A tmpfs of its
    # own with huge pages (hugetmpfs.py), as bulwarkd should be deployed.
    ctx.tmp = tempfile.mkdtemp(prefix="bwbench.", dir="/dev/shm" if os.path.isdir("/dev/shm") else "/tmp")
    ctx.tmp_mounted = hugetmpfs.mount(ctx.tmp, log)
    return ctx


def remove_tmp(ctx):
    """Removes the scratch directory (and the tmpfs mounted on it)."""
    if getattr(ctx, "tmp_mounted", False):
        hugetmpfs.umount(ctx.tmp, log)
    shutil.rmtree(ctx.tmp, ignore_errors=True)


def run_ab(args, cases):
    """--ab DIR_A,DIR_B: bulwark against bulwark. Each round runs both builds' bulwarkd (A then
    B, the next round B then A, so neither always follows the other) with the same pktgen (from
    --bin-dir); the figure is the median of the per-round ratios B/A. For changes too small to
    see across separate runs of the matrix, which drift by a tenth on this machine."""
    dirs = [os.path.abspath(d) for d in args.ab.split(",")]
    if len(dirs) != 2:
        raise BenchError("--ab takes two directories, A,B (each with bulwarkd and bulwarkctl)")
    for d in dirs:
        for b in ("bulwarkd", "bulwarkctl"):
            if not os.access(os.path.join(d, b), os.X_OK):
                raise BenchError(f"--ab: no {b} in {d}")
    ctx = new_ctx(args, ["bulwark"], cases, "-ab")
    ctx.rounds_of = lambda c: args.rounds  # noqa: E731
    ctx.runs_planned = len(cases) * args.rounds * 2
    builds = []
    for name, d in zip(("A", "B"), dirs):
        b = Bulwark(ctx)
        b.name = f"bulwark-{name}"
        b.groups = args.groups in (name, "AB", "all")
        b.bulwarkd, b.bulwarkctl = os.path.join(d, "bulwarkd"), os.path.join(d, "bulwarkctl")
        builds.append(b)
    log(f"A/B: {len(cases)} cases x {args.rounds} rounds; A = {dirs[0]}, B = {dirs[1]}; "
        f"output in {ctx.out}")

    stop_signals(interrupt)
    lines = ["case,unit,a,b,ratio_b_a,b_ahead,rounds,ratios"]
    try:
        gen = Pktgen(ctx)
        for case in cases:
            warm = max(args.warmup, 5) if case.flows >= 1_000_000 else args.warmup
            pairs = []
            for rnd in range(1, args.rounds + 1):
                order = builds if rnd % 2 else builds[::-1]
                got = {b.name: run_one(ctx, b, gen, case, rnd, warm, args.duration) for b in order}
                a, b = got["bulwark-A"], got["bulwark-B"]
                if a.value and b.value:
                    pairs.append((a.value, b.value))
            if not pairs:
                log(f"{case.name}: no round with both figures")
                continue
            ratios = [b / a for a, b in pairs]
            ahead = sum(1 for a, b in pairs if b > a)
            ma, mb, mr = median([a for a, _ in pairs]), median([b for _, b in pairs]), median(ratios)
            log(f"{case.name}: A {case.fmt(ma)} B {case.fmt(mb)} {case.unit}; B/A {mr:.3f} "
                f"(rounds: {' '.join(f'{r:.3f}' for r in ratios)}); B ahead in {ahead} of {len(pairs)}")
            lines.append(csv_line([case.name, case.unit, ma, mb, round(mr, 4), ahead, len(pairs),
                                   " ".join(f"{r:.4f}" for r in ratios)]))
    except Interrupted as e:
        log(f"interrupted ({e}): stopping what was started")
        ctx.failures += 1
    finally:
        stop_signals(signal.SIG_IGN)
        for b in builds:
            b.stop()
        ctx.procs.stop_all()
        remove_tmp(ctx)
    with open(os.path.join(ctx.out, "ab.csv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    log(f"results in {ctx.out}/ab.csv")
    return 1 if ctx.failures else 0


def main():
    ap = argparse.ArgumentParser(
        prog="scripts/bench",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="bulwark vs DPDK testpmd io-fwd vs OVS-DPDK on this machine (issue 4).",
        epilog=f"""
The matrix: pipelines l2, ct, rules1k, rules10k x flows 1k, 100k, 1m x frames 64, 1500 B
(on the wire; the frames are 60 and 1496 B without FCS): 24 cases named PIPE-FLOWS-SIZE,
e.g. rules1k-100k-64. Outside the matrix, TCP flows (ct-100k-64-tcp, rules1k-100k-64-tcp,
rules1k-100k-1500-tcp: pktgen --mode tcp, a handshake per flow, then segments both ways whose
seq/ack a window-checking tracker accepts; any grid case name with -tcp works with --cases)
and the connection-setup case conn4k (below); the full run is the 24 cases, the 3 TCP cases
and conn4k. For every case and round: bulwark, testpmd, OVS, each
started fresh, each driven by `pktgen bench` for WARMUP + DURATION seconds. The full run with
the defaults (3 rounds, 3 s + 8 s; 5 s warm-up with 1M flows) takes about an hour on a
2-CPU machine (one round of 2 s + 2 s: 9 minutes). A run whose warm-up did not send every
flow (bulwark sets up connections at ~0.1 M/s with 10k rules) is primed and measured again.
--quick: {', '.join(QUICK_CASES)}, 2 rounds of 2 s + 4 s, and the
flowgen cross-check for l2-1k-64 once: about 3 minutes.

conn4k: TCP connection setup. pktgen --mode conn: port 0 (10.254.0.1) opens connections to
port 1 as fast as it can, connection c from port 1024 + c % 64000 to (10.253.0.0 + c / 64000):80,
each one SYN, SYN-ACK, ACK and a RST that closes it; the figure is connections completed
per second (conns/s), compared like Mpps. bulwark: 4000 filler rules (none matches this
traffic) and a final allow-all on egress and ingress of both ports, and
[conntrack.timeouts] tcp_closed = 1: a RST-closed connection otherwise stays 30 s (TIME-WAIT)
in the table, and the opener's share of it (1M connections) would fill within seconds.
testpmd: the same pktgen run through io-fwd (the generator's ceiling). OVS: the ct(commit) +
established pipeline (protocol-independent; OVS's own conntrack timeouts unchanged).
conn4k is not in --quick: one round of it takes a minute or more, which would take --quick
past 5 minutes (`--cases conn4k --rounds 1`: 2-3 minutes).

Figures: a run's figure is what the switch delivered (the generator's received frames per
second, both ports together; conns/s for conn4k). A case reports, per switch, the median over
rounds, and the median of the per-round ratios bulwark/testpmd and bulwark/OVS: this machine
drifts by up to 30 % within minutes, so compare the ratios. Also per switch, the median over
rounds of each run's one-way latency p50 and p99 in microseconds (pktgen stamps every 128th
frame; the measured seconds only; none in conn mode) and of its loss (frames sent that never
came back, in % of those sent, warm-up included; the generator sends as fast as it can, so
loss is what the switch dropped at full load, not an RFC 2544 loss-free rate). Noise filter (bench-lab.md): a second is clean
when the CPU time used by processes not ours (/proc/stat busy minus our processes' utime +
stime) was at most --noise-max of one CPU in it and in the second before; a run needs
--min-clean clean seconds, else it is repeated (--retries) and, if it stays noisy, kept with
the median of all its seconds and counted as not clean in the table's "rounds (clean)".

  bulwark   bulwarkd, one worker on the DUT CPU, two server-mode ports on segment 10, conntrack
            capacity {CT_CAPACITY}. l2: no policy (allow all; bulwark tracks connections even
            then). ct: p0 (10.254.0.1) may open UDP to port 1001, p1 accepts it, both defaults
            drop (replies pass because they are tracked). rules1k/rules10k: 1000/10000 rules that
            do not match the traffic and a final allow, egress and ingress of both ports.
  testpmd   dpdk-testpmd io-fwd between two net_vhost ports: the limit of one vhost-user
            switch core, the same for every pipeline.
  ovs       ovs-vswitchd-dpdk 3.1 (private run directory, 1 PMD on the DUT CPU, other threads
            on the generator CPU): port fwd (in_port=1->2, 2->1) for l2, and the ct(commit) +
            established pipeline for ct/rules1k/rules10k (bench-lab.md's flow tables).

Cross-check (--xcheck, on by default for l2-1k-64 if it is run): DPDK testpmd flowgen
(virtio-user) drives bulwark and testpmd io-fwd, an independent generator.

Output in --out (default bench-results/STAMP[-quick]/, and bench-results/latest points to
it): table.txt, results.csv (per case), runs.csv (per run, every attempt), seconds.csv
(per second, with the foreign CPU load of the noise filter), xcheck.csv, bench.png, env.txt,
logs/ (every process's log, bulwarkctl and OVS statistics after each run). The run ends with
one line per case: `bench: CASE bulwark_mpps=X testpmd_mpps=Y ovs_mpps=Z` followed by
`D_p50_us=`, `D_p99_us=` and `D_loss_pct=` for D = bulwark, testpmd, ovs ("nan": none), or for
conn4k `bench: conn4k bulwark_cps=X testpmd_cps=Y ovs_cps=Z` followed by the D_loss_pct fields.
""")
    ap.add_argument("--quick", action="store_true", help="a small subset in under 5 minutes")
    ap.add_argument("--cases", help="comma-separated case names or shell patterns (default: all 24 and conn4k; --list)")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--duts", default="bulwark,testpmd,ovs", help="which switches to run (default: all three)")
    ap.add_argument("--rounds", type=int, help="rounds per case (default 3; --quick 2)")
    ap.add_argument("--warmup", type=int, help="warm-up seconds per run (default 3; --quick 2; at least 5 with 1M flows)")
    ap.add_argument("--duration", type=int, help="measured seconds per run (default 8; --quick 4)")
    ap.add_argument("--retries", type=int, help="repeats of a noisy run (default 2; --quick 1)")
    ap.add_argument("--prime-max", type=int, default=60,
                    help="when a run's warm-up did not send every flow, send for up to this many seconds more "
                         "and measure again (60; 0: never)")
    ap.add_argument("--budget", type=int,
                    help="seconds: repeat noisy or failed runs only while the rest still fits (--quick: 270)")
    ap.add_argument("--noise-max", type=float, default=0.15, help="foreign CPU per second for a clean second, in CPUs (0.15)")
    ap.add_argument("--min-clean", type=int, default=3, help="clean seconds for a clean run (3)")
    ap.add_argument("--xcheck", choices=["auto", "on", "off"], default="auto",
                    help="flowgen cross-check: auto = for l2-1k-64 when it is in the run; on = also when not")
    ap.add_argument("--generator", choices=["pktgen", "flowgen"], default="pktgen",
                    help="generator of the main matrix (flowgen: for debugging the harness)")
    ap.add_argument("--out", help="output directory")
    ap.add_argument("--bin-dir", default=os.path.join(REPO, "target", "release"), help="bulwarkd, bulwarkctl, pktgen")
    ap.add_argument("--ab", metavar="DIR_A,DIR_B",
                    help="bulwark against bulwark: two builds' bulwarkd/bulwarkctl alternated per round, "
                         "the same pktgen (--bin-dir); reports the median per-round ratio B/A")
    ap.add_argument("--groups", choices=["all", "A", "B", "AB"],
                    help="bulwark's policies as a policy document with group rules instead of per-port "
                         "CIDR rules: all (every bulwark run), or with --ab the build(s) A, B or AB "
                         "(--ab OLD,NEW --groups B: the old main's CIDR rules against group rules)")
    ap.add_argument("--hugepages", type=int, default=1024, help="2 MiB hugepages to have free for DPDK/OVS (1024)")
    ap.add_argument("--dut-cpu", type=int, default=0)
    ap.add_argument("--gen-cpu", type=int, default=1)
    ap.add_argument("--no-install", action="store_true", help="do not run scripts/setup-bench (handled by scripts/bench)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every measured second")
    args = ap.parse_args()

    if args.list:
        for c in all_cases():
            print(c.name + ("  (quick)" if c.name in QUICK_CASES else "")
                  + ("  (TCP connection setup, conns/s)" if c.mode == "conn" else ""))
        return 0
    q = args.quick
    args.rounds = args.rounds or (2 if q else 3)
    args.warmup = args.warmup if args.warmup is not None else (2 if q else 3)
    args.duration = args.duration or (4 if q else 8)
    args.retries = args.retries if args.retries is not None else (1 if q else 2)
    args.budget = args.budget if args.budget is not None else (270 if q else 0)
    if args.cases:
        import fnmatch
        names = [c.name for c in all_cases()]
        sel = []
        for pat in args.cases.split(","):
            hit = [n for n in names if fnmatch.fnmatch(n, pat.strip())]
            if not hit:
                raise BenchError(f"no case matches {pat!r} (see --list)")
            sel += [n for n in hit if n not in sel]
        cases = [parse_case(n) for n in sel]
    elif q:
        cases = [parse_case(n) for n in QUICK_CASES]
    else:
        cases = all_cases()
    if args.ab:
        return run_ab(args, cases)
    duts = [d.strip() for d in args.duts.split(",") if d.strip()]
    for d in duts:
        if d not in DUTS:
            raise BenchError(f"unknown switch {d!r} (bulwark, testpmd, ovs)")
    if args.generator == "flowgen" and any(c.mode != "udp" for c in cases):
        raise BenchError("conn and -tcp cases need pktgen (--mode conn/tcp); testpmd flowgen sends UDP only")
    if os.cpu_count() < 2 or args.dut_cpu == args.gen_cpu:
        raise BenchError("needs two CPUs: the switch on --dut-cpu, the generator on --gen-cpu")

    ctx = new_ctx(args, duts, cases, "-quick" if q else "")
    huge = Hugepages()
    objs = {}

    stop_signals(interrupt)

    xcases = []
    if args.xcheck != "off" and "bulwark" in duts and "testpmd" in duts:
        x = [c for c in cases if c.name == "l2-1k-64"]
        if not x and args.xcheck == "on":
            x = [parse_case("l2-1k-64")]
        xcases = x
    xrounds = 1 if q else args.rounds
    ctx.rounds_of = lambda c: args.rounds  # noqa: E731
    ctx.runs_planned = len(cases) * args.rounds * len(duts) + len(xcases) * xrounds * 2

    log(f"{len(cases)} cases x {args.rounds} rounds x {', '.join(duts)} "
        f"({args.warmup} s warm-up + {args.duration} s per run); output in {ctx.out}")
    results, xres = [], []
    try:
        if os.path.exists(f"/sys/class/net/{BRIDGE}"):
            log(f"deleting a leftover {BRIDGE} tap (from an interrupted earlier run)")
            delete_tap()
        if "testpmd" in duts or "ovs" in duts or xcases or args.generator == "flowgen":
            huge.reserve(args.hugepages)
        makers = {"bulwark": Bulwark, "testpmd": Testpmd, "ovs": Ovs}
        for d in duts:
            objs[d] = makers[d](ctx)
        gen = Pktgen(ctx) if args.generator == "pktgen" else Flowgen(ctx)
        for case in cases:
            warm = max(args.warmup, 5) if case.flows >= 1_000_000 else args.warmup
            per_round = []
            for rnd in range(1, args.rounds + 1):
                r = {}
                for d in duts:
                    r[d] = run_one(ctx, objs[d], gen, case, rnd, warm, args.duration)
                per_round.append(r)
            s = summarize(per_round)
            results.append((case, s))
            log(f"{case.name}: bulwark {case.fmt(s['bulwark'])} testpmd {case.fmt(s['testpmd'])} "
                f"OVS {case.fmt(s['ovs'])} {case.unit}; bulwark/testpmd {fmt_ratio(s['ratio_testpmd'])} "
                f"bulwark/OVS {fmt_ratio(s['ratio_ovs'])}")
        if xcases:
            fg = Flowgen(ctx)
            ctx.rounds_of = lambda c: xrounds  # noqa: E731
            for case in xcases:
                per_round = []
                for rnd in range(1, xrounds + 1):
                    r = {}
                    for d in ("bulwark", "testpmd"):
                        r[d] = run_one(ctx, objs[d], fg, case, rnd, args.warmup, args.duration)
                    per_round.append(r)
                s = summarize(per_round)
                pk = next((m["ratio_testpmd"] for c, m in results if c.name == case.name), None)
                xres.append((case, s, pk))
                log(f"cross-check {case.name} (testpmd flowgen): bulwark {fmt_mpps(s['bulwark'])} "
                    f"testpmd {fmt_mpps(s['testpmd'])} Mpps; bulwark/testpmd {fmt_ratio(s['ratio_testpmd'])}")
    except Interrupted as e:
        log(f"interrupted ({e}): stopping what was started")
        ctx.failures += 1
    finally:
        stop_signals(signal.SIG_IGN)
        for d in ("bulwark", "testpmd", "ovs"):
            o = objs.get(d)
            if o is not None:
                try:
                    (o.shutdown if hasattr(o, "shutdown") else o.stop)()
                except Exception as e:  # keep cleaning up
                    log(f"cleanup of {d}: {e}")
        ctx.procs.stop_all()
        delete_tap()
        try:
            huge.restore()
        except OSError as e:
            log(f"could not restore nr_hugepages: {e}")
        remove_tmp(ctx)

    if results or xres:
        table = write_outputs(ctx, results, xres)
        print()
        print(table, end="")
        print()
        el = int(time.monotonic() - ctx.t0)
        log(f"done in {el // 60} min {el % 60} s; {ctx.failures} failed runs; results in {ctx.out} "
            "(table.txt, results.csv, runs.csv, seconds.csv, bench.png)")
        for case, s in results:
            # The first three fields are parsed by other tools: keep them as they are, and
            # append anything new after them.
            if case.mode == "conn":
                head = (f"bench: {case.name} bulwark_cps={case.fmt(s['bulwark'])} "
                        f"testpmd_cps={case.fmt(s['testpmd'])} ovs_cps={case.fmt(s['ovs'])}")
                more = [f"{d}_loss_pct={fmt_pct(s[d + '_loss_pct'])}" for d in DUTS]
            else:
                head = (f"bench: {case.name} bulwark_mpps={fmt_mpps(s['bulwark'])} "
                        f"testpmd_mpps={fmt_mpps(s['testpmd'])} ovs_mpps={fmt_mpps(s['ovs'])}")
                more = [f"{d}_{k}={f(s[d + '_' + k])}" for d in DUTS
                        for k, f in (("p50_us", fmt_us), ("p99_us", fmt_us), ("loss_pct", fmt_pct))]
            print(" ".join([head] + more), flush=True)
    return 1 if ctx.failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        sys.exit(2)
