"""The group policy document, on a topology of its own: bulwarkd-policy (`bulwarkd-policy.toml`,
run dir `run-policy/`) and three guests in three tiers, tagged in its config:

    web 10.10.4.1/24  tier=web ─┐
    app 10.10.4.2/24  tier=app ─┼─ segment 40 ── bulwarkd-policy
    db  10.10.4.3/24  tier=db  ─┘

p1 applies a policy document (written to the workdir as policy-three-tier.yaml: groups web, app,
db selected by the tag tier; one application-tier policy, web -> app and app -> db on tcp/7000,
tcp/5201 and ping; defaults drop) with `bulwarkctl policy apply -f`; p2 checks with busybox nc
that web reaches app and app reaches db on the allowed port and nothing else opens anything;
p3 re-tags db (`bulwarkctl port tags`) into the app group and back, and access follows with no
rule change; p4 cuts a running iperf3 stream web -> app by re-tagging app out of the app group
(`policy_revoked_*`).

Runs after the files that use `net` (conftest LAST, before test_multiqueue): starting it stops
net (by PID). p2..p4 need p1's document and fail saying so without it.
"""

import json
import os

import pytest

from lab import (Bulwarkd, Guest, PolicyApi, Topology, delta, fmt_delta, fmt_intervals, indent, iperf_intervals, log,
                 tail)
from lab.guest import GuestError
from lab.traffic import (iperf_run, iperf_server, nc_connect, nc_listen, nc_listener_state, nc_stop_listeners,
                         short, stop_iperf_server)

pytestmark = pytest.mark.bulwarkd

POL_GUESTS = [
    # name, segment, ip, mac; the port's tag tier=<name>
    ("web", 40, "10.10.4.1", "52:54:00:00:40:01"),
    ("app", 40, "10.10.4.2", "52:54:00:00:40:02"),
    ("db", 40, "10.10.4.3", "52:54:00:00:40:03"),
]
NAMES = tuple(n for n, _, _, _ in POL_GUESTS)
PORT_SVC, PORT_OTHER, PORT_IPERF = 7000, 7001, 5201

DOCUMENT = f"""\
# The VM test's three tiers (tests/vm/test_policy.py): groups by the tag tier, web -> app and
# app -> db on the service ports and ping; nothing else opens anything.
services:
  - {{ name: svc, proto: tcp, ports: [{PORT_SVC}] }}
  - {{ name: iperf, proto: tcp, ports: [{PORT_IPERF}] }}
  - {{ name: ping, proto: icmp, icmp_type: 8 }}
groups:
  - {{ name: web, select: {{ tag: tier, eq: web }} }}
  - {{ name: app, select: {{ tag: tier, eq: app }} }}
  - {{ name: db, select: {{ tag: tier, eq: db }} }}
policies:
  - name: three-tier
    tier: application
    rules:
      - {{ name: web-to-app, src: web, dst: app, services: [svc, iperf, ping], action: allow }}
      - {{ name: app-to-db, src: app, dst: db, services: [svc, iperf, ping], action: allow }}
defaults: {{ egress: drop, ingress: drop }}
"""
WEB_TO_APP, APP_TO_DB = "application/three-tier/web-to-app", "application/three-tier/app-to-db"
GROUPS_AT_START = {"web": ["web"], "app": ["app"], "db": ["db"]}


class Tiers:
    """The topology, and what p1 hands on to the later tests."""

    def __init__(self, topo, workdir):
        self.topo, self.sw = topo, topo.sw
        self.web, self.app, self.db = (topo.by[n] for n in NAMES)
        self.policy = PolicyApi(self.sw, workdir)   # ctl_json, drops, save
        self.doc_path = os.path.join(workdir, "policy-three-tier.yaml")
        self.state = {"applied": False}

    def need_document(self):
        if not self.state["applied"]:
            raise GuestError("the policy document was not applied (see p1; with -k, select p1 too)")

    def groups(self):
        """{group: sorted vNIC names} from `bulwarkctl --json groups`."""
        return {g.get("name"): sorted(g.get("vnics") or []) for g in self.policy.ctl_json("groups")}

    def revision(self):
        return self.policy.ctl_json("policy", "get").get("revision")

    def retag(self, port, tier):
        """`bulwarkctl port tags PORT tier=TIER`; GuestError when it fails."""
        rc, out, err = self.sw.ctl_cmd("port", "tags", port, f"tier={tier}")
        if rc != 0:
            raise GuestError(f"`bulwarkctl port tags {port} tier={tier}` exited {rc}: {(err or out).strip()[-300:]}")

    def tags_of(self, port):
        return self.sw.port_json(port).get("tags")


@pytest.fixture(scope="module")
def tiers(opts, workdir, start_topology):
    """bulwarkd-policy (workers = [1]) with web, app, db on segment 40, tagged tier=web/app/db in its
    config; no document until p1 applies one (Tiers). Snapshots bulwarkctl into ctl-policy-end-* at
    the end; then stops them (by PID). The document stays in run-policy/ (the workdir's)."""
    guests = [Guest(n, seg, ip, mac, workdir) for n, seg, ip, mac in POL_GUESTS]
    sw = Bulwarkd(opts.bulwarkd, opts.bulwarkctl, workdir, guests, tag="-policy",
                  tags={n: {"tier": n} for n in NAMES})
    log(f"policy: starting bulwarkd-policy; booting {', '.join(f'{n} (tier={n})' for n in NAMES)}")
    with start_topology(Topology("policy", sw, guests, end_check="all")) as topo:
        try:
            yield Tiers(topo, workdir)
        finally:
            sw.snapshot("policy-end")


def nc_denied(rc, secs, out, before, after):
    """A connection that no rule allows: nc timed out after its 3 s wait, and the listener saw
    nothing: still listening, no socket on the port that was not there before the attempt (an
    earlier connection may linger in TIME_WAIT), 0 bytes received."""
    return (rc != 0 and "timed out" in out and secs >= 2.5 and after[0] and not set(after[1]) - set(before[1])
            and after[2] == 0)


def new_sockets(before, after):
    return sorted(set(after[1]) - set(before[1])) or "none"


def test_p1_apply_document(tiers, workdir, report):
    """p1. policy: web, app, db boot; a group document applies through bulwarkctl; groups follow the tags"""
    topo, sw = tiers.topo, tiers.sw
    res = [r for _, r in topo.boot()]
    bad = [f"{g.name}: {r}" for g, r in zip(topo.guests, res) if r is not True]
    if bad:
        bad += [f"{g.name} console tail:\n" + tail(g.serial_log, 15) for g in topo.guests if not g.up]
        bad.append("bulwarkd-policy log tail:\n" + tail(sw.log, 20))
        report.verdict(False, "\n  ".join(bad))
    report.note("booted: " + ", ".join(f"{g.name} {g.boot_secs:.1f}s" for g in topo.guests if g.boot_secs))
    tags = {n: tiers.tags_of(n) for n in NAMES}
    report.check(tags == {n: {"tier": n} for n in NAMES}, f"tags from the config: {tags}")
    # Before any document nothing is filtered: web reaches db (so p2's denials are the document's).
    o, msg = topo.ping_ok("web", "db")
    report.check(o, msg + " (no document yet: not filtered)")
    r0 = tiers.revision()
    report.check(r0 == 0, f"revision before the apply: {r0} (want 0)")
    with open(tiers.doc_path, "w") as f:
        f.write(DOCUMENT)

    # A dry run says what would change and changes nothing.
    rc, out, err = sw.ctl_cmd("policy", "apply", "-f", tiers.doc_path, "--dry-run", json_out=True)
    try:
        dry = json.loads(out) if rc == 0 else {}
    except ValueError:
        dry = {}
    added = {v.get("port"): sorted(v.get("added") or []) for v in dry.get("vnics") or []}
    want_added = {"web": [f"egress {WEB_TO_APP}"], "app": [f"egress {APP_TO_DB}", f"ingress {WEB_TO_APP}"],
                  "db": [f"ingress {APP_TO_DB}"]}
    r1 = tiers.revision()
    report.check(rc == 0 and dry.get("dry_run") is True and added == want_added and r1 == 0,
                 f"--dry-run: exit {rc}, rules added per vNIC {added}, revision after it {r1}"
                 + ("" if rc == 0 else f": {(err or out).strip()[-300:]}")
                 + ("" if added == want_added and r1 == 0 else f" -- want {want_added} and revision 0"))
    rc, out, err = sw.ctl_cmd("policy", "apply", "-f", tiers.doc_path)
    with open(os.path.join(workdir, "ctl-policy-apply.txt"), "w") as f:
        f.write(f"# exit {rc}\n{out}{err}")
    rev = tiers.revision()
    said = out.strip().splitlines()[0] if out.strip() else (err or "").strip()[-300:]
    report.check(rc == 0 and "revision 1 applied" in out and rev == 1,
                 f"`bulwarkctl policy apply -f {os.path.basename(tiers.doc_path)}`: exit {rc}, {said!r}; "
                 f"revision now {rev}")
    groups = tiers.groups()
    report.check(groups == GROUPS_AT_START, f"groups: {groups}" + ("" if groups == GROUPS_AT_START
                                                                   else f" -- want {GROUPS_AT_START}"))
    pa = tiers.policy.ctl_json("policy", "app")
    tiers.policy.save("policy-app-applied", pa)
    names = {side: [r.get("name") for r in (pa.get("rules") or {}).get(side) or []] for side in ("egress", "ingress")}
    good = (pa.get("filtered") is True and pa.get("groups") == ["app"] and pa.get("egress_default") == "drop"
            and pa.get("ingress_default") == "drop" and set(names["egress"]) == {APP_TO_DB}
            and set(names["ingress"]) == {WEB_TO_APP})
    report.check(good, f"app's effective rules: filtered={pa.get('filtered')}, groups {pa.get('groups')}, defaults "
                 f"{pa.get('egress_default')}/{pa.get('ingress_default')}, egress {names['egress']}, ingress "
                 f"{names['ingress']}" + ("" if good else f" -- want filtered, ['app'], drop/drop, egress only "
                                                           f"{APP_TO_DB}, ingress only {WEB_TO_APP}"))
    # A document that names a group that does not exist is refused by field, and changes nothing.
    bad_path = os.path.join(workdir, "policy-invalid.yaml")
    with open(bad_path, "w") as f:
        f.write(DOCUMENT.replace("dst: db,", "dst: dbz,"))
    rc, out, err = sw.ctl_cmd("policy", "apply", "-f", bad_path)
    msg = (err or out).strip()
    rev2 = tiers.revision()
    report.check(rc != 0 and "policies[0].rules[1].dst" in msg and "dbz" in msg and rev2 == 1,
                 f"a document naming group 'dbz': exit {rc}, {msg[-160:]!r}, revision still {rev2}"
                 + ("" if rc != 0 and rev2 == 1 else " -- want a refusal naming policies[0].rules[1].dst, revision 1"))
    tiers.state["applied"] = report.ok
    report.verdict()


def test_p2_reach_by_group(tiers, report):
    """p2. policy: web reaches app and app reaches db on the allowed port; web never reaches db"""
    web, app, db = tiers.web, tiers.app, tiers.db
    tiers.topo.need()
    tiers.need_document()
    p = PORT_SVC
    # busybox nc -l takes one connection: the denied ones first (the listeners must see nothing),
    # then the allowed ones.
    nc_listen(app, [p, PORT_OTHER])
    nc_listen(db, [p])
    nc_listen(web, [p])
    try:
        b_db, b_other, b_web = nc_listener_state(db, p), nc_listener_state(app, PORT_OTHER), nc_listener_state(web, p)
        d0 = tiers.policy.drops()
        wd = nc_connect(web, db, p, 3)
        wo = nc_connect(web, app, PORT_OTHER, 3)
        aw = nc_connect(app, web, p, 3)
        d1 = tiers.policy.drops()
        st_db, st_other, st_web = nc_listener_state(db, p), nc_listener_state(app, PORT_OTHER), nc_listener_state(web, p)
        wa = nc_connect(web, app, p, 4)
        ad = nc_connect(app, db, p, 4)
        d2 = tiers.policy.drops()
    finally:
        nc_stop_listeners(web, app, db)
    pe = delta(d0, d1, "policy_drop_egress", NAMES)
    for (rc, secs, out), b, st, what, dst in (
            (wd, b_db, st_db, f"web->db:{p} (no rule: web's egress default drop)", "db"),
            (wo, b_other, st_other, f"web->app:{PORT_OTHER} (not a service of web-to-app)", "app"),
            (aw, b_web, st_web, f"app->web:{p} (the rules have a direction)", "web")):
        good = nc_denied(rc, secs, out, b, st)
        report.check(good, f"{what}: nc exit {rc} after {secs:.2f}s: {short(out)}; {dst}'s listener still "
                     f"listening={st[0]}, new sockets on the port {new_sockets(b, st)}, received {st[2]} bytes"
                     + ("" if good else f" -- want 'timed out' after >= 2.5 s and nothing at {dst}"))
    good = pe[0]["web"] >= 2 and pe[0]["app"] >= 1
    report.check(good, f"the denied connections: {fmt_delta('policy_drop_egress', pe)}"
                 + ("" if good else " -- want web >= 2, app >= 1"))
    for (rc, secs, out), src, dst, rule in ((wa, "web", "app", "web-to-app"), (ad, "app", "db", "app-to-db")):
        pong = f"PONG-{dst}-{p}"
        report.check(rc == 0 and pong in out, f"{src}->{dst}:{p} (allowed: {rule}): nc exit {rc} in {secs:.2f}s, got "
                     f"{short(out)}" + ("" if rc == 0 and pong in out else f" -- want {pong}"))
    pd = delta(d1, d2, "policy_drop", NAMES)
    report.check(pd[1] == 0, f"the allowed connections: {fmt_delta('policy_drop', pd)} (want +0)")
    # The operator's question, answered from the compiled rules.
    r = tiers.policy.ctl_json("reach", "web", "app", f"tcp/{p}")
    good = r.get("allowed") is True and (r.get("egress") or {}).get("rule") == WEB_TO_APP
    report.check(good, f"`reach web app tcp/{p}`: allowed={r.get('allowed')} by {(r.get('egress') or {}).get('rule')}")
    r = tiers.policy.ctl_json("reach", "web", "db", f"tcp/{p}")
    good = r.get("allowed") is False and (r.get("egress") or {}).get("action") == "drop"
    report.check(good, f"`reach web db tcp/{p}`: allowed={r.get('allowed')}, web egress "
                 f"{(r.get('egress') or {}).get('action')}")
    report.verdict()


def test_p3_retag_moves_access(tiers, report):
    """p3. policy: re-tagging db as tier=app moves it to group app (web reaches it, app no longer) and back"""
    web, app, db = tiers.web, tiers.app, tiers.db
    tiers.topo.need()
    tiers.need_document()
    p = PORT_SVC
    rev0 = tiers.revision()
    try:
        tiers.retag("db", "app")
        g1 = tiers.groups()
        nc_listen(db, [p])
        b1 = nc_listener_state(db, p)
        d0 = tiers.policy.drops()
        ad = nc_connect(app, db, p, 3)
        d1 = tiers.policy.drops()
        st1 = nc_listener_state(db, p)
        wd = nc_connect(web, db, p, 4)
        rev1 = tiers.revision()
        tiers.retag("db", "db")
        g2 = tiers.groups()
        nc_listen(db, [p])
        b2 = nc_listener_state(db, p)
        d2 = tiers.policy.drops()
        wd2 = nc_connect(web, db, p, 3)
        d3 = tiers.policy.drops()
        st2 = nc_listener_state(db, p)
        ad2 = nc_connect(app, db, p, 4)
    finally:
        nc_stop_listeners(db)
        if tiers.tags_of("db") != {"tier": "db"}:
            tiers.retag("db", "db")
    want1 = {"web": ["web"], "app": ["app", "db"], "db": []}
    report.check(g1 == want1, f"db tagged tier=app: groups {g1}" + ("" if g1 == want1 else f" -- want {want1}"))
    pe = delta(d0, d1, "policy_drop_egress", NAMES)
    good = nc_denied(*ad, b1, st1) and pe[0]["app"] >= 1
    report.check(good, f"app->db:{p} (db no longer in group db; app -> app has no rule): nc exit {ad[0]} after "
                 f"{ad[1]:.2f}s: {short(ad[2])}; {fmt_delta('policy_drop_egress', pe)}; db's listener still "
                 f"listening={st1[0]}, new sockets {new_sockets(b1, st1)}, received {st1[2]} bytes"
                 + ("" if good else " -- want 'timed out', policy_drop_egress on app, nothing at db"))
    good = wd[0] == 0 and f"PONG-db-{p}" in wd[2]
    report.check(good, f"web->db:{p} (db in group app: web-to-app): nc exit {wd[0]} in {wd[1]:.2f}s, got {short(wd[2])}"
                 + ("" if good else f" -- want PONG-db-{p}"))
    report.check(rev0 == rev1 == 1, f"revision {rev0} -> {rev1} (a re-tag changes no rule: want 1 throughout)")
    report.check(g2 == GROUPS_AT_START, f"db tagged tier=db again: groups {g2}"
                 + ("" if g2 == GROUPS_AT_START else f" -- want {GROUPS_AT_START}"))
    pe = delta(d2, d3, "policy_drop_egress", NAMES)
    good = nc_denied(*wd2, b2, st2) and pe[0]["web"] >= 1
    report.check(good, f"web->db:{p} again (no rule): nc exit {wd2[0]} after {wd2[1]:.2f}s: {short(wd2[2])}; "
                 f"{fmt_delta('policy_drop_egress', pe)}; db's listener still listening={st2[0]}, new sockets "
                 f"{new_sockets(b2, st2)}, received {st2[2]} bytes"
                 + ("" if good else " -- want 'timed out', policy_drop_egress on web, nothing at db"))
    good = ad2[0] == 0 and f"PONG-db-{p}" in ad2[2]
    report.check(good, f"app->db:{p} again (app-to-db): nc exit {ad2[0]} in {ad2[1]:.2f}s, got {short(ad2[2])}"
                 + ("" if good else f" -- want PONG-db-{p}"))
    report.verdict()


def test_p4_retag_cuts_established(tiers, workdir, report):
    """p4. policy: re-tagging app out of group app cuts a running iperf3 web -> app (policy_revoked), no rule change"""
    web, app = tiers.web, tiers.app
    tiers.topo.need()
    tiers.need_document()
    rev0 = tiers.revision()
    iperf_server(app)
    d0 = tiers.policy.drops()
    cut_at = 3
    moved = {}

    def during(wait_interval):
        if not wait_interval(cut_at):
            return {"err": f"no interval line number {cut_at} within 40 s"}
        tiers.retag("app", "db")
        moved["groups"] = tiers.groups()
        return {"cut": True}

    try:
        rc, out, info = iperf_run(web, app, PORT_IPERF, 9, 16, during)
        _, slog = app.run("cat /tmp/iperf3-s.log", timeout=15)
    finally:
        stop_iperf_server(app)
        if tiers.tags_of("app") != {"tier": "app"}:
            tiers.retag("app", "app")
    with open(os.path.join(workdir, "iperf3-policy-cut.txt"), "w") as f:
        f.write(out + "\n# server log\n" + slog)
    d1 = tiers.policy.drops()
    rev1 = tiers.revision()
    iv = iperf_intervals(out)
    # app left group app right after the client printed interval number cut_at; from 1.5 s after
    # its end on, nothing may get through.
    t_cut = iv[cut_at - 1][1] if len(iv) >= cut_at else float(cut_at)
    pre = iv[:cut_at]
    post = [x for x in iv if x[0] >= t_cut + 1.5]
    rv = delta(d0, d1, "policy_revoked", NAMES)
    nc = delta(d0, d1, "tcp_no_connection", NAMES)
    if not info.get("cut"):
        report.check(False, f"app not re-tagged during the run: {info.get('err')}")
    want = {"web": ["web"], "app": [], "db": ["app", "db"]}
    report.check(moved.get("groups") == want, f"app tagged tier=db during the stream: groups {moved.get('groups')}"
                 + ("" if moved.get("groups") == want else f" -- want {want}"))
    report.note(f"iperf3 web->app:{PORT_IPERF} -t 9 (killed at 16 s), app re-tagged tier=db after {cut_at} s: exit {rc}; "
                f"sender Mbit/s per second [{fmt_intervals(iv)}]; receiver (app log) "
                f"[{fmt_intervals(iperf_intervals(slog))}]")
    report.check(len(pre) >= 2 and all(r > 0 for _, _, r in pre),
                 f"flowing before the re-tag: {len(pre)} intervals before {t_cut:.2f} s, all > 0")
    good = len(post) >= 2 and all(r <= 0 for _, _, r in post)
    report.check(good, f"cut: intervals from {t_cut + 1.5:.2f} s on: [{fmt_intervals(post)}]"
                 + ("" if good else " -- want >= 2, all 0:" + indent(out, 16)))
    report.check(rc is not None and rc != 0, f"iperf3 exit {rc} (want non-zero: its connections were cut)")
    good = rv[1] > 0 and (rv[0]["web"] > 0 or rv[0]["app"] > 0)
    report.check(good, f"{fmt_delta('policy_revoked', rv)} (want > 0 on web or app), "
                 f"{fmt_delta('tcp_no_connection', nc)}")
    report.check(rev0 == rev1 == 1, f"revision {rev0} -> {rev1} (no rule changed: want 1 throughout)")
    # Back in group app: a new connection web -> app opens again (it was the membership, not the rules).
    nc_listen(app, [PORT_SVC])
    try:
        rc2, secs, out2 = nc_connect(web, app, PORT_SVC, 4)
    finally:
        nc_stop_listeners(app)
    tags = tiers.tags_of("app")
    good = tags == {"tier": "app"} and rc2 == 0 and f"PONG-app-{PORT_SVC}" in out2
    report.check(good, f"app tagged tier=app again ({tags}): web->app:{PORT_SVC} nc exit {rc2} in {secs:.2f}s, got "
                 f"{short(out2)}" + ("" if good else f" -- want PONG-app-{PORT_SVC}"))
    report.verdict()
