"""The spoof guard and address discovery with real guests, under a group policy document, on a
topology of its own: bulwarkd-guard (`bulwarkd-guard.toml`, run dir `run-guard/`) and four guests
on segment 50, each port bound to its guest's MAC:

    dhcpd    10.10.5.254/24 (static)  strict, addresses 10.10.5.254, dhcp_server ─┐
    client   no address at boot       strict, tier=app (its lease: 10.10.5.50)    ─┤
    web      10.10.5.1/24             learn,  tier=web                            ─┼─ segment 50
    mallory  10.10.5.66/24            learn,  tier=web (the attacker)             ─┘

The document (policy-guard.yaml): groups web and app by the tag tier, lab (segment 50); an
infrastructure rule lets every guest of lab send and take DHCP (udp/67, udp/68, any address),
and web -> app allows tcp/7000 and ping; defaults drop. The guests' IPv6 is switched off after
boot, so that no router solicitation or listener report from a link-local address (which a
strict port has not bound) counts as ip_spoofed in the checks below.

s1 boots them and applies the document. s2: before a lease, the strict client's own address
passes nothing (its echo replies are ip_spoofed, its ARP arp_spoofed); it then takes a lease
with busybox udhcpc from udhcpd on dhcpd (while mallory runs a rogue udhcpd, whose replies are
dhcp_server_untrusted), the lease shows in `port show client` with source dhcp, and web reaches
it (ping, nc) under web -> app. s3: web changes its address (flush, add 10.10.5.11) and keeps
its access; the new address shows as learned. s4: mallory takes the client's address
(gratuitous ARP, pings from it, answers ARP for it): arp_spoofed and ip_spoofed on mallory, and
web's pings to 10.10.5.50 still reach the client (its ARP entry is the client's MAC, the echo
counters say who got them). s5: mallory takes the client's MAC: src_mac_spoofed, the MAC table
keeps the client's MAC on the client's port, web still reaches the client.

Runs after the files that use `net` (conftest LAST, after test_policy, before test_multiqueue):
starting it stops the topology before it (by PID). s2 needs s1's document, s3..s5 also s2's
lease; each fails saying so when those did not run or failed. s4 and s5 put mallory back on its
own address and MAC, also when they fail.
"""

import json
import os
import re
import time

import pytest

from lab import Bulwarkd, Guest, PolicyApi, Topology, delta, fmt_delta, indent, log, tail
from lab.guest import GuestError
from lab.traffic import nc_connect, nc_listen, nc_stop_listeners, short

pytestmark = pytest.mark.bulwarkd

SEG = 50
GUARD_GUESTS = [
    # name, segment, ip (None: DHCP), mac
    ("dhcpd", SEG, "10.10.5.254", "52:54:00:00:50:fe"),
    ("client", SEG, None, "52:54:00:00:50:02"),
    ("web", SEG, "10.10.5.1", "52:54:00:00:50:01"),
    ("mallory", SEG, "10.10.5.66", "52:54:00:00:50:66"),
]
NAMES = tuple(n for n, _, _, _ in GUARD_GUESTS)
MACS = {n: mac for n, _, _, mac in GUARD_GUESTS}
LEASE = "10.10.5.50"          # udhcpd's static lease for the client's MAC
ROGUE_LEASE = "10.10.5.99"    # what mallory's rogue udhcpd offers the client
WEB_NEW = "10.10.5.11"        # web's address after s3
LEASE_SECS = 600
PORT_SVC = 7000

PORTS = {
    "dhcpd": {"mac": MACS["dhcpd"], "spoof_guard": "strict", "addresses": ["10.10.5.254"], "dhcp_server": True},
    "client": {"mac": MACS["client"], "spoof_guard": "strict"},
    "web": {"mac": MACS["web"], "spoof_guard": "learn"},
    "mallory": {"mac": MACS["mallory"], "spoof_guard": "learn"},
}
TAGS = {"dhcpd": {"role": "dhcp"}, "client": {"tier": "app"}, "web": {"tier": "web"}, "mallory": {"tier": "web"}}

DOCUMENT = f"""\
# The VM test of the spoof guard (tests/vm/test_guard.py): DHCP for every guest of the segment,
# web -> app on tcp/{PORT_SVC} and ping; nothing else.
services:
  - {{ name: svc, proto: tcp, ports: [{PORT_SVC}] }}
  - {{ name: ping, proto: icmp, icmp_type: 8 }}
  - {{ name: bootps, proto: udp, ports: [67] }}
  - {{ name: bootpc, proto: udp, ports: [68] }}
groups:
  - {{ name: web, select: {{ tag: tier, eq: web }} }}
  - {{ name: app, select: {{ tag: tier, eq: app }} }}
  - {{ name: lab, select: {{ attr: segment, eq: "{SEG}" }} }}
policies:
  - name: dhcp
    tier: infrastructure
    rules:
      - {{ name: dhcp, src: any, dst: any, services: [bootps, bootpc], action: allow, applied_to: [lab] }}
  - name: guarded
    tier: application
    rules:
      - {{ name: web-to-app, src: web, dst: app, services: [svc, ping], action: allow }}
defaults: {{ egress: drop, ingress: drop }}
"""
GROUPS = {"web": ["mallory", "web"], "app": ["client"], "lab": sorted(NAMES)}

# The client's udhcpc script: the lease's address on eth0 (busybox passes ip and mask).
DHCP_SCRIPT = ('#!/bin/sh\\n'
               'case "$1" in\\n'
               'deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;\\n'
               'bound|renew) ip -4 addr flush dev "$interface"; ip addr add "$ip/${mask:-24}" dev "$interface" ;;\\n'
               'esac\\n'
               'echo "$1 ip=$ip mask=$mask" >>/tmp/udhcpc-events.log\\n')


class GuardLab:
    """The topology, and what each test hands on to the next."""

    def __init__(self, topo, workdir):
        self.topo, self.sw, self.workdir = topo, topo.sw, workdir
        self.g = topo.by
        self.policy = PolicyApi(self.sw, workdir)
        self.doc_path = os.path.join(workdir, "policy-guard.yaml")
        self.done = {}   # test name -> True when it passed

    def need(self, *tests):
        self.topo.need()
        missing = [t for t in tests if not self.done.get(t)]
        if missing:
            raise GuestError(f"needs {', '.join(missing)} to have passed (with -k, select the tests before this one)")

    def sh(self, name, cmd, timeout=30):
        """Run cmd in guest `name`; (status, output); GuestError when it does not finish."""
        rc, out = self.g[name].run(cmd, timeout=timeout)
        if rc is None:
            raise GuestError(f"{name}: `{cmd[:120]}` did not finish in {timeout} s:" + indent(out))
        return rc, out

    def addresses(self, port):
        """{address: {source, since, expires}} from `bulwarkctl --json port show PORT`."""
        return {a.get("address"): a for a in self.sw.port_json(port).get("addresses") or []}

    def wait_address(self, port, addr, present=True, timeout=5.0):
        """The port's addresses once addr is (or is not) among them, or after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            a = self.addresses(port)
            if (addr in a) == present or time.monotonic() >= deadline:
                return a
            time.sleep(0.2)

    def drops(self):
        return self.policy.drops()

    def echos_in(self, name):
        """The guest's Icmp InEchos (/proc/net/snmp): echo requests its kernel received."""
        _, out = self.sh(name, "grep '^Icmp:' /proc/net/snmp")
        rows = [l.split()[1:] for l in out.splitlines() if l.startswith("Icmp:")]
        if len(rows) >= 2 and "InEchos" in rows[0]:
            try:
                return int(rows[1][rows[0].index("InEchos")])
            except (ValueError, IndexError):
                pass
        raise GuestError(f"{name}: no Icmp InEchos in /proc/net/snmp:" + indent(out))

    def ping(self, src, ip, count=3):
        """busybox ping -c count from src to ip; (received, transmitted, output)."""
        _, out = self.sh(src, f"ping -c {count} -W 2 {ip} 2>&1", timeout=count * 2 + 20)
        m = re.search(r"(\d+) packets transmitted, (\d+) packets received", out)
        return (int(m.group(2)), int(m.group(1)), out) if m else (0, 0, out)

    def neigh_mac(self, name, ip):
        """The MAC of ip in the guest's neighbour table (None: no entry with one)."""
        _, out = self.sh(name, f"ip neigh show {ip} dev eth0")
        m = re.search(r"lladdr ([0-9a-f:]{17})", out)
        return m.group(1) if m else None

    def mac_port(self, mac):
        """The port the switch's MAC table has mac on (segment 50), or None."""
        for e in self.sw.ctl_json("macs"):
            if e.get("mac", "").lower() == mac and e.get("segment") == SEG:
                return e.get("port")
        return None


def fmt_addrs(a):
    return ", ".join(f"{k} ({v.get('source')})" for k, v in sorted(a.items())) or "none"


def d(before, after, reason, names=NAMES):
    return delta(before, after, reason, names)


@pytest.fixture(scope="module")
def guard(opts, workdir, start_topology):
    """bulwarkd-guard (workers = [1]) with dhcpd, client, web, mallory on segment 50 (the ports as
    in PORTS and TAGS); no document until s1 applies one. Snapshots bulwarkctl into
    ctl-guard-end-* at the end; then stops them (by PID)."""
    guests = [Guest(n, seg, ip, mac, workdir) for n, seg, ip, mac in GUARD_GUESTS]
    sw = Bulwarkd(opts.bulwarkd, opts.bulwarkctl, workdir, guests, tag="-guard", tags=TAGS, ports=PORTS)
    log(f"guard: starting bulwarkd-guard; booting {', '.join(NAMES)}")
    with start_topology(Topology("guard", sw, guests, end_check="all")) as topo:
        try:
            yield GuardLab(topo, workdir)
        finally:
            sw.snapshot("guard-end")
            for name in ("client", "web", "mallory", "dhcpd"):
                try:
                    with open(os.path.join(workdir, f"guard-{name}-port.json"), "w") as f:
                        json.dump(sw.port_json(name), f, indent=2)
                except Exception:  # best effort: the snapshot is for debugging
                    pass


def test_s1_boot_and_document(guard, report):
    """s1. guard: dhcpd, client (no address), web, mallory boot; the document applies; groups follow the tags"""
    topo, sw = guard.topo, guard.sw
    res = [r for _, r in topo.boot()]
    bad = [f"{g.name}: {r}" for g, r in zip(topo.guests, res) if r is not True]
    if bad:
        bad += [f"{g.name} console tail:\n" + tail(g.serial_log, 15) for g in topo.guests if not g.up]
        bad.append("bulwarkd-guard log tail:\n" + tail(sw.log, 20))
        report.verdict(False, "\n  ".join(bad))
    report.note("booted: " + ", ".join(f"{g.name} {g.boot_secs:.1f}s" for g in topo.guests if g.boot_secs))
    # No IPv6: a strict port has no link-local address bound, so its solicitations and
    # listener reports would be ip_spoofed and blur the counts below.
    for n in NAMES:
        rc, out = guard.sh(n, "echo 1 >/proc/sys/net/ipv6/conf/all/disable_ipv6; "
                              "echo 1 >/proc/sys/net/ipv6/conf/eth0/disable_ipv6; ip -4 addr show dev eth0")
        have = " ".join(re.findall(r"inet (\S+)", out)) or "no IPv4 address"
        report.check(rc == 0, f"{n}: IPv6 off, eth0: {have}")
    _, out = guard.sh("client", "ip -4 addr show dev eth0")
    report.check("inet " not in out, "client has no IPv4 address before DHCP"
                 + ("" if "inet " not in out else indent(out)))
    shown = {n: (p.get("spoof_guard"), p.get("mac")) for n in NAMES for p in [sw.port_json(n)]}
    want = {n: (PORTS[n]["spoof_guard"], MACS[n]) for n in NAMES}
    report.check(shown == want, f"ports' spoof_guard and mac: {shown}" + ("" if shown == want else f" -- want {want}"))
    a = guard.addresses("dhcpd")
    good = a.get("10.10.5.254", {}).get("source") == "static"
    report.check(good, f"dhcpd's addresses: {fmt_addrs(a)} (want 10.10.5.254 static)")
    with open(guard.doc_path, "w") as f:
        f.write(DOCUMENT)
    rc, out, err = sw.ctl_cmd("policy", "apply", "-f", guard.doc_path)
    said = out.strip().splitlines()[0] if out.strip() else (err or "").strip()[-300:]
    report.check(rc == 0 and "revision 1 applied" in out,
                 f"`bulwarkctl policy apply -f policy-guard.yaml`: exit {rc}, {said!r}")
    groups = {g.get("name"): sorted(g.get("vnics") or []) for g in sw.ctl_json("groups")}
    report.check(groups == GROUPS, f"groups: {groups}" + ("" if groups == GROUPS else f" -- want {GROUPS}"))
    r = sw.ctl_json("reach", "web", "client", f"tcp/{PORT_SVC}")
    report.check(r.get("allowed") is True, f"`reach web client tcp/{PORT_SVC}`: allowed={r.get('allowed')}")
    # The document is in force: web -> mallory is web -> web, which no rule allows.
    got, sent, out = guard.ping("web", "10.10.5.66", 2)
    report.check(sent == 2 and got == 0, f"web -> mallory ping (no rule: web -> web): {got}/{sent} answered (want 0/2)")
    guard.done["s1"] = report.ok
    report.verdict()


def test_s2_dhcp_lease(guard, workdir, report):
    """s2. guard: the strict client passes nothing but DHCP until udhcpd's lease is snooped; then web reaches it"""
    guard.need("s1")
    web_ip, cmac, wmac = guard.g["web"].ip, MACS["client"], MACS["web"]
    # Before any lease only DHCP passes: a DHCP discover (no server runs yet) passes the guard
    # and the document's dhcp rule, so the switch learns the client's MAC (else web's frames to
    # it would be flooded, and a flood matches no group rule: web's egress would drop them).
    rc, out = guard.sh("client", "timeout 10 udhcpc -i eth0 -s /bin/true -n -q -t 1 -T 1 2>&1; echo UDHCPC=$?",
                       timeout=20)
    port = guard.mac_port(cmac)
    report.check(port == "client", f"client's DHCP discover with no server ({short(out)}): MAC table has {cmac} on "
                 f"port {port} (want client: the discover passed)")
    # Then the client sets the address it will be leased itself. web's echo requests reach it
    # (web -> app allows ping); its replies come from an address a strict port has not bound
    # (static neighbour entries on both sides: no ARP needed).
    guard.sh("client", f"ip addr add {LEASE}/24 dev eth0; arp -i eth0 -s {web_ip} {wmac}")
    guard.sh("web", f"arp -i eth0 -s {LEASE} {cmac}")
    e0 = guard.echos_in("client")
    d0 = guard.drops()
    got, sent, pout = guard.ping("web", LEASE, 3)
    d1 = guard.drops()
    e1 = guard.echos_in("client")
    rc, aout = guard.sh("client", f"timeout 10 arping -c 3 -w 4 -I eth0 {web_ip} 2>&1", timeout=20)
    d2 = guard.drops()
    guard.sh("client", f"arp -i eth0 -d {web_ip}; ip -4 addr flush dev eth0; ip neigh flush dev eth0")
    guard.sh("web", f"arp -i eth0 -d {LEASE}")
    ips = d(d0, d1, "ip_spoofed")
    good = sent == 3 and got == 0 and e1 - e0 >= 3 and ips[0]["client"] >= 3
    report.check(good, f"before the lease, web -> {LEASE} (the client's own address): {got}/{sent} answered, the "
                 f"client received {e1 - e0} echo requests, {fmt_delta('ip_spoofed', ips)}"
                 + ("" if good else " -- want 0/3 answered, >= 3 received, ip_spoofed >= 3 on client:"
                    + indent(pout, 4)))
    arps = d(d1, d2, "arp_spoofed")
    report.check(arps[0]["client"] >= 3, f"client's arping {web_ip} from {LEASE}: exit {rc}, "
                 f"{fmt_delta('arp_spoofed', arps)}"
                 + ("" if arps[0]["client"] >= 3 else " -- want >= 3 on client:" + indent(aout, 4)))

    # The DHCP server, and a rogue one on mallory offering another address.
    for name, lease in (("dhcpd", LEASE), ("mallory", ROGUE_LEASE)):
        pool = lease[:-1]   # the static lease's ten: 10.10.5.50-59, 10.10.5.90-99
        conf = (f"start {pool}0\\nend {pool}9\\ninterface eth0\\nmax_leases 10\\n"
                f"lease_file /tmp/udhcpd.leases\\npidfile /tmp/udhcpd.pid\\n"
                f"static_lease {cmac} {lease}\\noption subnet 255.255.255.0\\noption lease {LEASE_SECS}\\n")
        rc, out = guard.sh(name, f"printf '{conf}' >/tmp/udhcpd.conf; touch /tmp/udhcpd.leases; "
                                 f"(udhcpd -f /tmp/udhcpd.conf >/tmp/udhcpd.log 2>&1 & echo $! >/tmp/udhcpd.bgpid); "
                                 f"sleep 1; kill -0 $(cat /tmp/udhcpd.bgpid) && echo RUNNING; cat /tmp/udhcpd.log")
        if "RUNNING" not in out:
            report.verdict(False, f"udhcpd on {name} did not start (exit {rc}):" + indent(out))
    try:
        guard.sh("client", f"printf '{DHCP_SCRIPT}' >/tmp/udhcpc.sh; chmod +x /tmp/udhcpc.sh; "
                           f"rm -f /tmp/udhcpc-events.log")
        d3 = guard.drops()
        rc, out = guard.sh("client", "timeout 40 udhcpc -i eth0 -s /tmp/udhcpc.sh -n -q -t 5 -T 3 2>&1; "
                                     "echo UDHCPC=$?; ip -4 addr show dev eth0; cat /tmp/udhcpc-events.log", timeout=60)
        # The rogue answers the same discover; give its offer a moment if it is slower.
        deadline = time.monotonic() + 3
        while True:
            d4 = guard.drops()
            if d(d3, d4, "dhcp_server_untrusted")[0]["mallory"] or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
    finally:
        logs = {}
        for name in ("dhcpd", "mallory"):
            _, logs[name] = guard.sh(name, "kill $(cat /tmp/udhcpd.bgpid) 2>/dev/null; sleep 0.2; cat /tmp/udhcpd.log")
            with open(os.path.join(workdir, f"guard-udhcpd-{name}.log"), "w") as f:
                f.write(logs[name])
    with open(os.path.join(workdir, "guard-udhcpc.txt"), "w") as f:
        f.write(out)
    m = re.search(r"UDHCPC=(\d+)", out)
    leased = re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/(\d+)", out)
    good = m is not None and m.group(1) == "0" and leased == [(LEASE, "24")]
    report.check(good, f"client: udhcpc exit {m.group(1) if m else '?'}, eth0 now {leased or 'no address'}"
                 + ("" if good else f" -- want exit 0 and {LEASE}/24:" + indent(out, 12)))
    unt = d(d3, d4, "dhcp_server_untrusted")
    said = {n: re.findall(r"sending (OFFER|ACK) to ([\d.]+)", logs[n]) for n in logs}
    good = (unt[0]["mallory"] >= 1 and unt[0]["dhcpd"] == 0 and ("OFFER", ROGUE_LEASE) in said["mallory"]
            and ("ACK", LEASE) in said["dhcpd"])
    report.check(good, f"udhcpd logs: dhcpd {said['dhcpd']}, mallory (rogue) {said['mallory']}; the rogue's replies: "
                 f"{fmt_delta('dhcp_server_untrusted', unt)}" + ("" if good else f" -- want dhcpd's ACK of {LEASE}, "
                 f"the rogue's OFFER of {ROGUE_LEASE}, dhcp_server_untrusted >= 1 on mallory and 0 on dhcpd"))
    a = guard.wait_address("client", LEASE)
    b = a.get(LEASE) or {}
    since, expires = b.get("since"), b.get("expires")
    timed = isinstance(since, int) and isinstance(expires, int)
    good = (b.get("source") == "dhcp" and timed and LEASE_SECS - 30 <= expires - since <= LEASE_SECS + 5
            and ROGUE_LEASE not in a)
    report.check(good, f"`port show client` addresses: {fmt_addrs(a)}; {LEASE}: since {since}, expires {expires}"
                 + (f" (+{expires - since} s)" if timed else "")
                 + ("" if good else f" -- want {LEASE} from dhcp, expiring ~{LEASE_SECS} s after since, "
                                    f"no {ROGUE_LEASE}"))
    if not report.ok:
        report.verdict()
    guard.g["client"].ip = LEASE
    # With the lease bound, the client's traffic passes: web reaches it (ARP both ways now).
    d5 = guard.drops()
    o, msg = guard.topo.ping_ok("web", "client")
    report.check(o, msg + " (web -> app: ping)")
    nc_listen(guard.g["client"], [PORT_SVC])
    try:
        rc, secs, nout = nc_connect(guard.g["web"], guard.g["client"], PORT_SVC, 4)
    finally:
        nc_stop_listeners(guard.g["client"])
    pong = f"PONG-client-{PORT_SVC}"
    report.check(rc == 0 and pong in nout, f"web -> client:{PORT_SVC} (web-to-app): nc exit {rc} in {secs:.2f}s, "
                 f"got {short(nout)}" + ("" if rc == 0 and pong in nout else f" -- want {pong}"))
    d6 = guard.drops()
    g = [d(d5, d6, r)[0]["client"] for r in ("ip_spoofed", "arp_spoofed")]
    report.check(g == [0, 0], f"client's ip_spoofed/arp_spoofed while web reached it: +{g[0]}/+{g[1]} (want +0/+0)")
    guard.done["s2"] = report.ok
    report.verdict()


def test_s3_address_change_keeps_access(guard, report):
    """s3. guard: web (learn) moves to a new address and keeps its access; the new address is learned"""
    guard.need("s1", "s2")
    web, client = guard.g["web"], guard.g["client"]
    old = web.ip
    o, msg = guard.topo.ping_ok("web", "client")
    report.check(o, msg + f" (from {old})")
    a0 = guard.wait_address("web", old)
    report.check(old in a0, f"web's addresses before: {fmt_addrs(a0)} (want {old})")
    d0 = guard.drops()
    rc, out = guard.sh("web", f"ip -4 addr flush dev eth0; ip addr add {WEB_NEW}/24 dev eth0; ip -4 addr show dev eth0")
    good = rc == 0 and f"inet {WEB_NEW}/24" in out and f"inet {old}/" not in out
    report.check(good, f"web: {old} flushed, {WEB_NEW}/24 added (exit {rc})" + ("" if good else indent(out)))
    web.ip = WEB_NEW
    e0 = guard.echos_in("client")
    got, sent, pout = guard.ping("web", LEASE, 3)
    e1 = guard.echos_in("client")
    report.check(got >= 2 and e1 - e0 >= 3, f"web ({WEB_NEW}) -> client ping: {got}/{sent} answered, the client "
                 f"received {e1 - e0} echo requests"
                 + ("" if got >= 2 else " -- want >= 2 answered:" + indent(pout, 4)))
    nc_listen(client, [PORT_SVC])
    try:
        rc, secs, nout = nc_connect(web, client, PORT_SVC, 4)
    finally:
        nc_stop_listeners(client)
    pong = f"PONG-client-{PORT_SVC}"
    report.check(rc == 0 and pong in nout, f"web -> client:{PORT_SVC} from {WEB_NEW}: nc exit {rc} in {secs:.2f}s, "
                 f"got {short(nout)}" + ("" if rc == 0 and pong in nout else f" -- want {pong}"))
    a1 = guard.wait_address("web", WEB_NEW)
    src = (a1.get(WEB_NEW) or {}).get("source")
    report.check(src in ("arp", "ip"), f"web's addresses after: {fmt_addrs(a1)} (want {WEB_NEW} learned, "
                 f"from arp or ip)")
    d1 = guard.drops()
    bad = {r: d(d0, d1, r)[0]["web"] for r in ("ip_spoofed", "arp_spoofed", "address_limit")}
    report.check(not any(bad.values()), f"web's guard drops over the change: {bad} (want all 0)")
    groups = {g.get("name"): g for g in guard.sw.ctl_json("groups")}
    addrs = (groups.get("web") or {}).get("addresses") or []
    report.check(WEB_NEW in addrs, f"group web's addresses: {addrs} (want {WEB_NEW} among them)")
    rev = guard.sw.ctl_json("policy", "get").get("revision")
    report.check(rev == 1, f"policy revision {rev} (an address change changes no rule: want 1)")
    guard.done["s3"] = report.ok
    report.verdict()


def test_s4_ip_spoof(guard, report):
    """s4. guard: mallory takes the client's address (ARP, pings, ARP answers): dropped; web still reaches the client"""
    guard.need("s1", "s2")
    web_ip, mip = guard.g["web"].ip, guard.g["mallory"].ip
    # mallory's own traffic passes: it is in group web, web -> app allows ping.
    got, sent, pout = guard.ping("mallory", LEASE, 2)
    report.check(got >= 1, f"mallory ({mip}) -> client ping before the attack: {got}/{sent} answered (mallory is "
                 f"in group web)" + ("" if got >= 1 else indent(pout, 4)))
    am = guard.wait_address("mallory", mip)
    report.check(am.get(mip, {}).get("source") in ("arp", "ip"),
                 f"mallory's addresses: {fmt_addrs(am)} (want {mip} learned)")
    e_web0, e_cli0, e_mal0 = guard.echos_in("web"), guard.echos_in("client"), guard.echos_in("mallory")
    d0 = guard.drops()
    try:
        rc, out = guard.sh("mallory", f"ip -4 addr flush dev eth0; ip addr add {LEASE}/24 dev eth0; "
                                      f"timeout 10 arping -U -c 3 -w 4 -I eth0 -s {LEASE} {LEASE} 2>&1; "
                                      f"echo ARPING=$?", timeout=25)
        d1 = guard.drops()
        # Pings from the stolen address (a static neighbour entry: mallory's ARP is dropped too).
        guard.sh("mallory", f"arp -i eth0 -s {web_ip} {MACS['web']}")
        got_m, sent_m, mout = guard.ping("mallory", web_ip, 3)
        d2 = guard.drops()
        e_web1 = guard.echos_in("web")
        # web asks for the client's address afresh: the client and mallory both answer; only
        # the client's answer gets through.
        guard.sh("web", "ip neigh flush dev eth0")
        got_w, sent_w, wout = guard.ping("web", LEASE, 3)
        d3 = guard.drops()
        nmac = guard.neigh_mac("web", LEASE)
        e_cli1, e_mal1 = guard.echos_in("client"), guard.echos_in("mallory")
        a_cli, a_mal = guard.addresses("client"), guard.addresses("mallory")
    finally:
        guard.sh("mallory", f"arp -i eth0 -d {web_ip}; ip -4 addr flush dev eth0; ip neigh flush dev eth0; "
                            f"ip addr add {mip}/24 dev eth0")
    arps = d(d0, d1, "arp_spoofed")
    report.check(arps[0]["mallory"] >= 3, f"mallory: `arping -U -s {LEASE} {LEASE}` ({short(out)}): "
                 f"{fmt_delta('arp_spoofed', arps)}" + ("" if arps[0]["mallory"] >= 3 else " -- want >= 3 on mallory"))
    ips = d(d1, d2, "ip_spoofed")
    good = ips[0]["mallory"] >= 3 and got_m == 0 and e_web1 == e_web0
    report.check(good, f"mallory -> web ping from {LEASE}: {got_m}/{sent_m} answered, web received {e_web1 - e_web0} "
                 f"echo requests, {fmt_delta('ip_spoofed', ips)}"
                 + ("" if good else " -- want 0 answered, 0 received, ip_spoofed >= 3 on mallory:" + indent(mout, 4)))
    arps2 = d(d2, d3, "arp_spoofed")
    good = got_w >= 2 and nmac == MACS["client"] and e_cli1 - e_cli0 >= got_w and e_mal1 == e_mal0
    report.check(good, f"web -> {LEASE} with its ARP entry flushed: {got_w}/{sent_w} answered, web's entry {nmac} "
                 f"(the client's is {MACS['client']}), echo requests received: client +{e_cli1 - e_cli0}, "
                 f"mallory +{e_mal1 - e_mal0}"
                 + ("" if good else " -- want the client's MAC, the client getting them, mallory none:"
                    + indent(wout, 4)))
    report.check(arps2[0]["mallory"] >= 1, f"mallory's ARP answers for {LEASE}: {fmt_delta('arp_spoofed', arps2)} "
                 f"(want >= 1 on mallory)")
    good = (a_cli.get(LEASE) or {}).get("source") == "dhcp" and LEASE not in a_mal
    report.check(good, f"addresses: client {fmt_addrs(a_cli)}; mallory {fmt_addrs(a_mal)} (want {LEASE} the "
                 f"client's, from dhcp)")
    # mallory back on its own address: it passes again.
    got, sent, pout = guard.ping("mallory", LEASE, 2)
    report.check(got >= 1, f"mallory back on {mip} -> client ping: {got}/{sent} answered"
                 + ("" if got >= 1 else indent(pout, 4)))
    guard.done["s4"] = report.ok
    report.verdict()


def test_s5_mac_spoof(guard, report):
    """s5. guard: mallory takes the client's MAC: src_mac_spoofed, the MAC table keeps it on the client's port"""
    guard.need("s1", "s2")
    web_ip, cmac, mmac = guard.g["web"].ip, MACS["client"], MACS["mallory"]
    port0 = guard.mac_port(cmac)
    report.check(port0 == "client", f"MAC table: {cmac} on port {port0} (want client)")
    e_cli0, e_mal0 = guard.echos_in("client"), guard.echos_in("mallory")
    d0 = guard.drops()
    set_mac = ("ip link set dev eth0 address {m} || {{ ip link set eth0 down; ip link set dev eth0 address {m}; "
               "ip link set eth0 up; }}")
    try:
        rc, out = guard.sh("mallory", set_mac.format(m=cmac) + "; cat /sys/class/net/eth0/address")
        now = out.strip().splitlines()[-1] if out.strip() else "?"
        if now != cmac:
            report.verdict(False, f"mallory could not take the MAC {cmac} (exit {rc}): {short(out)}")
        # ARP, which the policy allows (it would teach the switch the MAC if it passed), then
        # pings to the client (web -> app: allowed) through a static entry.
        rc, aout = guard.sh("mallory", f"timeout 10 arping -c 3 -w 4 -I eth0 {web_ip} 2>&1; "
                                       f"arp -i eth0 -s {LEASE} {cmac}", timeout=25)
        got_m, sent_m, mout = guard.ping("mallory", LEASE, 3)
        d1 = guard.drops()
        port1 = guard.mac_port(cmac)
        guard.sh("web", "ip neigh flush dev eth0")
        got_w, sent_w, wout = guard.ping("web", LEASE, 3)
        e_cli1, e_mal1 = guard.echos_in("client"), guard.echos_in("mallory")
    finally:
        guard.sh("mallory", set_mac.format(m=mmac) + f"; arp -i eth0 -d {LEASE}; ip neigh flush dev eth0")
    sm = d(d0, d1, "src_mac_spoofed")
    good = sm[0]["mallory"] >= 6 and got_m == 0
    report.check(good, f"mallory as {cmac}: 3 ARP requests and a ping to the client ({got_m}/{sent_m} answered): "
                 f"{fmt_delta('src_mac_spoofed', sm)}"
                 + ("" if good else " -- want >= 6 on mallory, 0 answered:" + indent(aout + mout, 6)))
    report.check(port1 == "client", f"MAC table after: {cmac} on port {port1} (want client)")
    good = got_w >= 2 and e_cli1 - e_cli0 >= got_w and e_mal1 == e_mal0
    report.check(good, f"web -> {LEASE}: {got_w}/{sent_w} answered; echo requests received: client "
                 f"+{e_cli1 - e_cli0}, mallory +{e_mal1 - e_mal0}"
                 + ("" if good else " -- want the client to get them:" + indent(wout, 4)))
    _, out = guard.sh("mallory", "cat /sys/class/net/eth0/address")
    d2 = guard.drops()
    got, sent, pout = guard.ping("mallory", LEASE, 2)
    d3 = guard.drops()
    sm2 = d(d2, d3, "src_mac_spoofed")
    report.check(out.strip() == mmac and got >= 1 and sm2[1] == 0,
                 f"mallory back on {out.strip()}: -> client ping {got}/{sent} answered, "
                 f"{fmt_delta('src_mac_spoofed', sm2)}" + ("" if got >= 1 else indent(pout, 4)))
    report.verdict()
