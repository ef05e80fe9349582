"""Firewall policies through bulwarkctl, and the drop counters that show what a policy did."""

import json
import os

from .guest import GuestError


class PolicyApi:
    """`bulwarkctl policy set/policy/ports` of one bulwarkd. Every policy it sets is kept in the
    workdir as policy-NN-<port>-<tag>.json (NN counts up over the run)."""

    def __init__(self, sw, workdir):
        self.sw, self.workdir = sw, workdir
        self.counter = 0

    def ctl_json(self, *a):
        return self.sw.ctl_json(*a)

    def save(self, tag, obj):
        """Keep a JSON document in the workdir as fw-<tag>.json."""
        with open(os.path.join(self.workdir, f"fw-{tag}.json"), "w") as f:
            json.dump(obj, f, indent=2)

    def set_policy(self, port, pol, tag):
        self.counter += 1
        path = os.path.join(self.workdir, f"policy-{self.counter:02d}-{port}-{tag}.json")
        with open(path, "w") as f:
            json.dump(pol, f, indent=2)
        rc, out, err = self.sw.ctl_cmd("policy", "set", port, path)
        if rc != 0:
            raise GuestError(f"`bulwarkctl policy set {port} {os.path.basename(path)}` exited {rc}: "
                             f"{(err or out).strip()[-500:]}")

    def drops(self):
        """{port name: {drop reason: count}} from `bulwarkctl --json ports`."""
        return {p.get("name"): dict(p.get("drops") or {}) for p in self.sw.ports_json() if isinstance(p, dict)}


def delta(before, after, reason, names=("vm1", "vm2", "vm3")):
    """{port: increase} of one drop reason, and the sum; 'absent' when no port has that key.
    A policy reason without a direction ('policy_drop') sums its _egress and _ingress
    counters: each is counted on the vNIC whose rule made the drop."""
    keys = [reason] if any(reason in v for v in after.values()) else \
        [reason + "_egress", reason + "_ingress"]
    get = lambda m, n: sum(m.get(n, {}).get(k) or 0 for k in keys)
    d = {n: get(after, n) - get(before, n) for n in names}
    absent = not any(k in v for v in after.values() for k in keys)
    return d, sum(d.values()), absent


def fmt_delta(reason, dd):
    d, total, absent = dd
    if absent:
        return f"{reason}: no such drop counter in `ports --json`"
    parts = ", ".join(f"{n} +{v}" for n, v in d.items() if v)
    return f"{reason} +{total}" + (f" ({parts})" if parts else "")
