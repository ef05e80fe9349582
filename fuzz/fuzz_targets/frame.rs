//! A guest's frame, whatever its bytes: the parser, the spoof guard in every mode, the filter's
//! decision between two vNICs with group and address rules (connection table included: each
//! input is judged in both directions, twice, so later calls see what the first created), the
//! reject answer, and
//! the DHCP reply reader. No panic, no out-of-bounds access, no unbounded memory.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, OnceLock};

use conntrack::{Config, Table, Timeouts};
use dataplane::filter::{tuple, Filter, Policy, Side};
use dataplane::guard::{dhcp_reply, Guard, Mode, Owners};
use dataplane::parse::{parse, HEADROOM};
use dataplane::reply::{reject, MAX_REPLY};
use dataplane::ruleset::{Action, Peer, Rule, Ruleset};
use dataplane::wire::Mac;
use libfuzzer_sys::fuzz_target;

struct World {
    table: Table,
    a: Policy,
    b: Policy,
    guards: Vec<Guard>,
    owners: Owners,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let mut web = Rule::any(1, Action::Allow);
        web.proto = Some(6);
        web.dst_ports = vec![80..=80, 8000..=8080];
        web.peer_groups = vec![1];
        let mut dns = Rule::any(2, Action::Allow);
        dns.proto = Some(17);
        dns.dst_ports = vec![53..=53];
        dns.dst = vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()];
        let mut ping = Rule::any(3, Action::Allow);
        ping.proto = Some(1);
        ping.icmp_type = Some(8);
        let mut pass = Rule::any(4, Action::Pass);
        pass.proto = Some(17);
        let mut rej = Rule::any(5, Action::Reject);
        rej.proto = Some(6);
        rej.dst_ports = vec![25..=25];
        let egress = Ruleset::compile_tiers(
            &[&[pass, rej][..], &[web, dns, ping][..]],
            Action::Drop,
            Peer::Dst,
        )
        .expect("compiles");
        let mut from_a = Rule::any(6, Action::Allow);
        from_a.peer_groups = vec![0];
        let ingress =
            Ruleset::compile_tiers(&[&[from_a][..]], Action::Reject, Peer::Src).expect("compiles");
        let (egress, ingress) = (Arc::new(egress), Arc::new(ingress));
        let policy = |groups: &[u32]| Policy {
            egress: egress.clone(),
            ingress: ingress.clone(),
            groups: groups.into(),
            ..Policy::allow_all()
        };
        let guard = |mode| Guard {
            mode,
            v4: Box::new([Ipv4Addr::new(10, 0, 0, 1)]),
            v6: Box::new(["fd00::1".parse::<Ipv6Addr>().unwrap()]),
            max: 4,
            dhcp_server: mode == Mode::Off,
        };
        let mut owners = Owners::new();
        owners.insert((10, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))), 2);
        World {
            table: Table::new(&Config {
                capacity: 4096,
                vnics: 8,
                workers: 1,
                timeouts: Timeouts::default(),
            }),
            a: policy(&[0]),
            b: policy(&[1]),
            guards: vec![guard(Mode::Off), guard(Mode::Learn), guard(Mode::Strict)],
            owners,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    // Every input starts from an empty table, so that a finding reproduces from its input alone.
    w.table.flush_vnic(1);
    w.table.flush_vnic(2);
    let _ = dhcp_reply(data);
    let h = &data[..data.len().min(HEADROOM)];
    let Ok(p) = parse(h, data.len()) else { return };
    let smac = Mac(h
        .get(6..12)
        .and_then(|m| m.try_into().ok())
        .unwrap_or([2, 0, 0, 0, 0, 1]));
    for g in &w.guards {
        let _ = g.wants(&p);
        let _ = g.check(&p, h, smac, 10, 1, &w.owners);
    }
    let t = tuple(&p);
    let _ = w.a.egress.lookup_peer(&t, &[1]);
    let _ = w.a.egress.lookup_linear_peer(&t, &[1]);
    let f = Filter {
        table: &w.table,
        epoch: 1,
    };
    let (a, b) = (
        Side {
            vnic: 1,
            policy: &w.a,
            epoch: 0,
        },
        Side {
            vnic: 2,
            policy: &w.b,
            epoch: 0,
        },
    );
    for now in [1, 2] {
        let _ = f.decide(&p, 10, a, Some(b), now, now * 1000);
        let _ = f.decide(&p, 10, b, Some(a), now, now * 1000);
        let _ = f.decide(&p, 10, a, None, now, now * 1000);
    }
    let mut out = [0u8; MAX_REPLY];
    let _ = reject(h, &p, &mut out);
});
