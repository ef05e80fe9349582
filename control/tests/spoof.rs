//! Spoof guard and address discovery end to end, tried as an attacker on the segment would:
//! a guest sends from its neighbour's IP, claims it in ARP and ND, puts the neighbour's MAC in
//! its frames or inside its ARP, plays DHCP server; each is dropped under its own reason, and
//! the victim's traffic keeps reaching the victim. Addresses are learned from ARP, ND, first
//! use and snooped DHCP leases, kept across a restart, with a limit per vNIC and duplicates
//! refused.

mod common;

use std::time::Duration;

use common::*;
use etherparse::PacketBuilder;
use serde_json::{json, Value};

const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(5);

const IP_VICTIM: [u8; 4] = [10, 0, 0, 1];
const IP_PEER: [u8; 4] = [10, 0, 0, 2];
const IP_EVIL: [u8; 4] = [10, 0, 0, 3];
const IP_LEASE: [u8; 4] = [10, 0, 0, 50];

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn arp(src_mac: [u8; 6], sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa);
    f.resize(60, 0);
    f
}

/// A neighbour advertisement from `src` for `target` (with `ll` in its target option).
fn na(src_mac: [u8; 6], src: [u8; 16], target: [u8; 16], ll: [u8; 6]) -> Vec<u8> {
    let mut body = vec![136u8, 0, 0, 0, 0x20, 0, 0, 0];
    body.extend_from_slice(&target);
    body.extend_from_slice(&[2, 1]);
    body.extend_from_slice(&ll);
    let mut out = Vec::new();
    let dst: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    PacketBuilder::ethernet2(src_mac, [0x33, 0x33, 0, 0, 0, 1])
        .ipv6(src, dst, 255)
        .write(&mut out, etherparse::IpNumber(58), &body)
        .unwrap();
    out
}

/// A DHCP ACK from `server` granting `yiaddr` to `client` for `lease` seconds.
fn dhcp_ack(server: ([u8; 6], [u8; 4]), client: [u8; 6], yiaddr: [u8; 4], lease: u32) -> Vec<u8> {
    let mut b = vec![0u8; 240];
    b[0] = 2;
    b[1] = 1;
    b[2] = 6;
    b[16..20].copy_from_slice(&yiaddr);
    b[28..34].copy_from_slice(&client);
    b[236..240].copy_from_slice(&[99, 130, 83, 99]);
    b.extend_from_slice(&[53, 1, 5, 51, 4]);
    b.extend_from_slice(&lease.to_be_bytes());
    b.push(255);
    let mut out = Vec::new();
    PacketBuilder::ethernet2(server.0, client)
        .ipv4(server.1, yiaddr, 64)
        .udp(67, 68)
        .write(&mut out, &b)
        .unwrap();
    out
}

fn addresses(sw: &Bulwarkd, port: &str) -> Vec<(String, String)> {
    sw.port(port)["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["address"].as_str().unwrap().to_string(),
                a["source"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn has(sw: &Bulwarkd, port: &str, addr: &str) -> bool {
    addresses(sw, port).iter().any(|(a, _)| a == addr)
}

fn wait_bound(sw: &Bulwarkd, port: &str, addr: &str) {
    sw.wait_for(|| has(sw, port, addr), &format!("{addr} bound to {port}"));
}

fn port_cfg(guard: &str, m: [u8; 6], extra: &str) -> String {
    format!(
        "spoof_guard = \"{guard}\"\nmac = \"{}\"\n{extra}",
        mac_str(m)
    )
}

#[test]
fn a_neighbour_cannot_take_over_an_address() {
    let (mv, mp, me) = (mac(1), mac(2), mac(3));
    let mut sw = Bulwarkd::start_extra(
        &[
            ("victim", 10, "server", &port_cfg("learn", mv, "")),
            (
                "peer",
                10,
                "server",
                &port_cfg("strict", mp, "addresses = [\"10.0.0.2\"]"),
            ),
            (
                "evil",
                10,
                "server",
                &port_cfg("learn", me, "max_addresses = 2"),
            ),
        ],
        &[worker_cpu()],
    );
    let mut victim = sw.attach("victim", mv);
    let mut peer = sw.attach("peer", mp);
    let mut evil = sw.attach("evil", me);
    assert_eq!(
        addresses(&sw, "peer"),
        [("10.0.0.2".into(), "static".into())]
    );

    // The victim announces itself: its address is learned from its ARP and bound to it.
    let f = arp(mv, mv, IP_VICTIM, IP_PEER);
    send_all(&mut victim, std::slice::from_ref(&f));
    assert_eq!(recv_n(&mut peer, 1, LONG), vec![f.clone()]);
    assert_eq!(recv_n(&mut evil, 1, LONG).len(), 1);
    wait_bound(&sw, "victim", "10.0.0.1");
    assert_eq!(
        addresses(&sw, "victim"),
        [("10.0.0.1".into(), "arp".into())]
    );
    // Reach questions default to the vNICs' own addresses.
    let (s, v) = sw.api(
        "POST",
        "/v1/reach",
        Some(r#"{"from": "victim", "to": "peer", "proto": "udp", "port": 53}"#),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["tuple"], "udp 10.0.0.1:49152 -> 10.0.0.2:53", "{v}");
    send_all(&mut peer, &[arp(mp, mp, IP_PEER, IP_VICTIM)]);
    recv_n(&mut victim, 1, LONG);
    recv_n(&mut evil, 1, LONG);

    // evil sends from the victim's address, claims it in ARP, claims it with the victim's MAC
    // inside, and puts the victim's MAC on its frames: each dropped, under its own reason.
    let from_victim = udp((me, IP_VICTIM, 5000), (mp, IP_PEER, 53), b"spoofed");
    assert!(exchange(&mut evil, &mut peer, &from_victim, SHORT).is_empty());
    assert_eq!(sw.drops("evil", "ip_spoofed"), 1);
    let gratuitous = arp(me, me, IP_VICTIM, IP_VICTIM);
    send_all(&mut evil, &[gratuitous]);
    assert!(recv_n(&mut peer, 1, SHORT).is_empty(), "no ARP poisoning");
    assert_eq!(sw.drops("evil", "arp_spoofed"), 1);
    send_all(&mut evil, &[arp(me, mv, IP_EVIL, IP_PEER)]);
    assert!(recv_n(&mut peer, 1, SHORT).is_empty());
    assert_eq!(sw.drops("evil", "arp_spoofed"), 2);
    let as_victim = udp((mv, IP_VICTIM, 5000), (mp, IP_PEER, 53), b"x");
    assert!(exchange(&mut evil, &mut peer, &as_victim, SHORT).is_empty());
    assert_eq!(sw.drops("evil", "src_mac_spoofed"), 1);
    // The strict peer may not use another address either, not even a free one.
    let f = udp((mp, IP_EVIL, 5000), (mv, IP_VICTIM, 53), b"x");
    assert!(exchange(&mut peer, &mut victim, &f, SHORT).is_empty());
    assert_eq!(sw.drops("peer", "ip_spoofed"), 1);
    assert!(
        !has(&sw, "evil", "10.0.0.1"),
        "{:?}",
        addresses(&sw, "evil")
    );
    assert!(!has(&sw, "peer", "10.0.0.3"));

    // The victim's traffic still reaches the victim (the MAC table was not poisoned).
    let f = udp((mp, IP_PEER, 53), (mv, IP_VICTIM, 5000), b"for the victim");
    assert_eq!(exchange(&mut peer, &mut victim, &f, LONG), vec![f.clone()]);
    assert!(recv_n(&mut evil, 1, SHORT).is_empty());

    // evil may use a free address of its own (learn: first use binds), up to its limit.
    let own = udp((me, IP_EVIL, 5000), (mp, IP_PEER, 53), b"mine");
    assert_eq!(
        exchange(&mut evil, &mut peer, &own, LONG),
        vec![own.clone()]
    );
    wait_bound(&sw, "evil", "10.0.0.3");
    let second = udp((me, [10, 0, 0, 4], 5000), (mp, IP_PEER, 53), b"2");
    assert_eq!(exchange(&mut evil, &mut peer, &second, LONG).len(), 1);
    wait_bound(&sw, "evil", "10.0.0.4");
    let third = udp((me, [10, 0, 0, 5], 5000), (mp, IP_PEER, 53), b"3");
    assert!(exchange(&mut evil, &mut peer, &third, SHORT).is_empty());
    assert_eq!(sw.drops("evil", "address_limit"), 1);

    // IPv6: the victim's address learned from its advertisement; evil's advertisement for it
    // (and one with another MAC inside) dropped.
    let v6 = |last: u8| {
        let mut a = [0u8; 16];
        a[0] = 0xfd;
        a[15] = last;
        a
    };
    send_all(&mut victim, &[na(mv, v6(1), v6(1), mv)]);
    recv_n(&mut peer, 1, LONG);
    recv_n(&mut evil, 1, LONG);
    wait_bound(&sw, "victim", "fd00::1");
    send_all(&mut evil, &[na(me, v6(3), v6(1), me)]);
    assert!(recv_n(&mut peer, 1, SHORT).is_empty());
    assert!(sw.drops("evil", "nd_spoofed") + sw.drops("evil", "address_limit") >= 1);

    // A learned binding survives a restart: the address is still the victim's.
    sw.restart();
    assert!(
        has(&sw, "victim", "10.0.0.1"),
        "{:?}",
        addresses(&sw, "victim")
    );
    let mut evil = sw.attach("evil", me);
    let mut peer = sw.attach("peer", mp);
    assert!(exchange(&mut evil, &mut peer, &from_victim, SHORT).is_empty());
    assert_eq!(sw.drops("evil", "ip_spoofed"), 1, "{}", sw.port("evil"));

    // A learned address can be forgotten; a static one cannot.
    let (s, v) = sw.api("DELETE", "/v1/ports/victim/addresses/10.0.0.1", None);
    assert_eq!(s, 200, "{v}");
    assert!(!has(&sw, "victim", "10.0.0.1"));
    let (s, v) = sw.api("DELETE", "/v1/ports/peer/addresses/10.0.0.2", None);
    assert_eq!((s, v["field"].clone()), (409, json!("address")), "{v}");
    let (s, _) = sw.api("DELETE", "/v1/ports/peer/addresses/banana", None);
    assert_eq!(s, 400);
}

#[test]
fn dhcp_leases_are_snooped_from_dhcp_servers_only() {
    let (ms, mc, me) = (mac(1), mac(2), mac(3));
    const IP_SERVER: [u8; 4] = [10, 0, 0, 254];
    let sw = Bulwarkd::start_extra(
        &[
            (
                "server",
                10,
                "server",
                &port_cfg(
                    "strict",
                    ms,
                    "addresses = [\"10.0.0.254\"]\ndhcp_server = true",
                ),
            ),
            ("client", 10, "server", &port_cfg("strict", mc, "")),
            ("evil", 10, "server", &port_cfg("learn", me, "")),
        ],
        &[worker_cpu()],
    );
    let mut server = sw.attach("server", ms);
    let mut client = sw.attach("client", mc);
    let mut evil = sw.attach("evil", me);
    // Before a lease the strict client may only ask (DHCP from 0.0.0.0).
    let discover = {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(mc, [0xff; 6])
            .ipv4([0; 4], [255; 4], 64)
            .udp(68, 67)
            .write(&mut out, &[0u8; 240])
            .unwrap();
        out
    };
    send_all(&mut client, &[discover]);
    assert_eq!(recv_n(&mut server, 1, LONG).len(), 1);
    recv_n(&mut evil, 1, SHORT);
    let early = udp((mc, IP_LEASE, 5000), (ms, IP_SERVER, 53), b"x");
    assert!(exchange(&mut client, &mut server, &early, SHORT).is_empty());
    assert_eq!(sw.drops("client", "ip_spoofed"), 1);

    // A DHCP server reply from a guest that is not the DHCP server: dropped, nothing bound.
    let fake = dhcp_ack((me, IP_EVIL), mc, [10, 0, 0, 66], 600);
    assert!(exchange(&mut evil, &mut client, &fake, SHORT).is_empty());
    assert_eq!(sw.drops("evil", "dhcp_server_untrusted"), 1);

    // The server's ACK: delivered, and the lease bound to the client (by its MAC).
    let ack = dhcp_ack((ms, IP_SERVER), mc, IP_LEASE, 600);
    assert_eq!(
        exchange(&mut server, &mut client, &ack, LONG),
        vec![ack.clone()]
    );
    wait_bound(&sw, "client", "10.0.0.50");
    let a: Vec<Value> = sw.port("client")["addresses"].as_array().unwrap().clone();
    assert_eq!(a[0]["source"], "dhcp", "{a:?}");
    assert!(a[0]["expires"].as_u64().unwrap() > a[0]["since"].as_u64().unwrap());
    assert!(!has(&sw, "client", "10.0.0.66"));
    let f = udp((mc, IP_LEASE, 5000), (ms, IP_SERVER, 53), b"leased");
    assert_eq!(
        exchange(&mut client, &mut server, &f, LONG),
        vec![f.clone()]
    );
    // The lease is the client's: nobody else may take the address.
    let steal = udp((me, IP_LEASE, 5000), (ms, IP_SERVER, 53), b"x");
    assert!(exchange(&mut evil, &mut server, &steal, SHORT).is_empty());
    assert_eq!(sw.drops("evil", "ip_spoofed"), 1);

    // A lease that ends unbinds the address.
    let short = dhcp_ack((ms, IP_SERVER), mc, [10, 0, 0, 51], 1);
    assert_eq!(exchange(&mut server, &mut client, &short, LONG).len(), 1);
    wait_bound(&sw, "client", "10.0.0.51");
    sw.wait_for(|| !has(&sw, "client", "10.0.0.51"), "the 1 s lease to end");
}

#[test]
fn bad_guard_configs_name_the_field() {
    let sw = Bulwarkd::start(&[]);
    let sock = path_str(&sw.sock("x"));
    for (extra, field) in [
        (json!({"spoof_guard": "strict"}), "mac"),
        (
            json!({"spoof_guard": "paranoid", "mac": "02:00:00:00:00:01"}),
            "spoof_guard",
        ),
        (json!({"addresses": ["10.0.0.1/24"]}), "addresses[0]"),
        (
            json!({"addresses": ["10.0.0.1", "10.0.0.1"]}),
            "addresses[1]",
        ),
        (json!({"addresses": ["224.0.0.1"]}), "addresses[0]"),
        (json!({"max_addresses": 0}), "max_addresses"),
        (
            json!({"max_addresses": 1, "addresses": ["10.0.0.1", "10.0.0.2"]}),
            "addresses",
        ),
    ] {
        let mut body = json!({"name": "x", "socket": sock, "segment": 10, "mode": "server"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (s, v) = sw.api("POST", "/v1/ports", Some(&body.to_string()));
        assert_eq!(s, 400, "{body}: {v}");
        assert!(v["field"].as_str().unwrap().contains(field), "{body}: {v}");
    }
    // An address another vNIC of the segment has: refused by name.
    let ok = json!({"name": "a", "socket": path_str(&sw.sock("a")), "segment": 10,
                    "mode": "server", "addresses": ["10.0.0.1"]});
    assert_eq!(sw.api("POST", "/v1/ports", Some(&ok.to_string())).0, 201);
    let dup = json!({"name": "b", "socket": path_str(&sw.sock("b")), "segment": 10,
                     "mode": "server", "addresses": ["10.0.0.9", "10.0.0.1"]});
    let (s, v) = sw.api("POST", "/v1/ports", Some(&dup.to_string()));
    assert_eq!((s, v["field"].clone()), (409, json!("addresses[1]")), "{v}");
    // On another segment the same address is another vNIC's to have.
    let other = json!({"name": "c", "socket": path_str(&sw.sock("c")), "segment": 20,
                       "mode": "server", "addresses": ["10.0.0.1"]});
    assert_eq!(sw.api("POST", "/v1/ports", Some(&other.to_string())).0, 201);
}
