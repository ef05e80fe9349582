//! The whole frame path in one process, for instruction counts that do not drift.
//!
//! Two vhost-user ports (bulwark's own socket threads, pktgen's virtio-net driver on the other
//! end, all in this process) on one segment; the switch's worker loop is driven by hand
//! (`Switch::stepper`) on this thread. Every measured pass is one call of
//! `frame_cost_measured_pass`: one pass of the worker loop over both ports, each of which has
//! a full burst (32 frames of 60 bytes) waiting, through every stage (take, headers, decide,
//! deliver, complete). Under callgrind, `scripts/framecost` collects only inside that function,
//! so the instructions it reports are the frame path's and nothing else (not the generator's,
//! not the setup's, not idle polls).
//!
//! Cases (the wall-clock bench's pipelines, `scripts/bench`):
//! - `l2`: no policy; switched at L2 only.
//! - `ct`: the small stateful policy: port 0 may open UDP to port 1001, port 1 accepts it,
//!   the replies pass as tracked connections.
//! - `rules1k`: 1,000 filler rules that match neither direction, then allow; every frame is a
//!   hit in the connection table (established flows, both directions).
//! - `rules1k-new`: the same policy, every frame from port 0 a connection never seen (both
//!   rulesets consulted, a connection inserted); port 1 sends nothing.
//! - `groups1k-new`: as `rules1k-new`, with the policy as a policy document of group rules
//!   (bench.py's `group_document`: port 0 in group opener, port 1 in answerer; filler rules
//!   naming the peer's group with other protocols or ports, memberless groups, addresses),
//!   compiled by `control::compiler`.
//!
//! Run natively (`cargo bench -p bulwark-benches --bench frame_cost`) it checks that every
//! frame arrives and prints ns/frame, which drifts; `scripts/framecost` runs it under callgrind.
//!
//! Arguments: `[CASE...] [--passes N] [--flows N]` (default: every case, 2,000 passes, 1,000
//! flows).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark_vhost::{LinkState, NetDevice, PortConn, SocketMode};
use control::compile;
use control::compiler::{Compiler, VnicIn};
use control::document::{Document, Format, VnicAttrs};
use control::policy::PolicyConfig;
use dataplane::filter::Policy;
use dataplane::{PortSpec, Stepper, Switch, SwitchConfig, BURST};
use pktgen::{build_udp_frame, Connect, DeviceConfig, VirtioNet};
use serde_json::{json, Value};

const CASES: [&str; 5] = ["l2", "ct", "rules1k", "rules1k-new", "groups1k-new"];
const MAC: [[u8; 6]; 2] = [[2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]];
const IP0: [u8; 4] = [10, 254, 0, 1];
/// 60-byte frames (64 on the wire with the FCS): 14 + 20 + 8 + 18.
const PAYLOAD: [u8; 18] = [0; 18];

/// One pass of the worker loop: the only code callgrind collects in (`--toggle-collect`).
#[inline(never)]
fn frame_cost_measured_pass(st: &mut Stepper<'_>) -> usize {
    st.step()
}

fn main() {
    let mut cases = Vec::new();
    let (mut passes, mut flows) = (2000usize, 1000u32);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> u64 {
            let v = args.next().unwrap_or_default();
            v.parse()
                .unwrap_or_else(|_| fail(&format!("{name}: not a number: {v:?}")))
        };
        match a.as_str() {
            "--passes" => passes = num("--passes").max(1) as usize,
            "--flows" => flows = num("--flows").clamp(1, 1 << 20) as u32,
            "--bench" => {} // from `cargo bench`
            c if CASES.contains(&c) => cases.push(c.to_string()),
            other => fail(&format!(
                "unknown argument {other:?} (cases: {}; --passes N, --flows N)",
                CASES.join(", ")
            )),
        }
    }
    if cases.is_empty() {
        cases = CASES.iter().map(|c| c.to_string()).collect();
    }
    for case in &cases {
        let r = run(case, passes, flows);
        // scripts/framecost reads this line.
        println!(
            "case={case} passes={passes} flows={flows} frames={} ns_per_frame={:.1}",
            r.frames,
            r.elapsed.as_nanos() as f64 / r.frames.max(1) as f64
        );
    }
}

/// A burst of `list`'s frames from position `k` on, round.
fn pick(list: &[Vec<u8>], k: usize) -> Vec<&[u8]> {
    (0..BURST)
        .map(|j| list[(k + j) % list.len()].as_slice())
        .collect()
}

fn fail(msg: &str) -> ! {
    eprintln!("frame_cost: {msg}");
    std::process::exit(2)
}

struct Outcome {
    frames: usize,
    elapsed: Duration,
}

/// The filler rules of `scripts/bench` (bench.py's `filler_rules`): near the traffic, never
/// matching it.
fn filler_rules(n: usize) -> Vec<Value> {
    (0..n)
        .map(|k| match k % 4 {
            0 => json!({"action": "allow", "proto": "udp",
                "dst": format!("10.{}.{}.0/24", k / 4 % 200 + 1, k / 800 % 256), "dst_ports": 1001}),
            1 => json!({"action": "drop", "proto": "tcp", "dst": "10.253.0.0/16",
                "dst_ports": [1000 + k % 7, format!("{}-{}", 1001 + k % 50, 1100 + k % 50)]}),
            2 => json!({"action": "allow", "proto": "udp",
                "src": [format!("192.168.{}.0/24", k / 4 % 256),
                        format!("172.{}.{}.0/24", 16 + k / 1024 % 16, k % 256)]}),
            _ => {
                let p = 2000 + k;
                json!({"action": "reject", "proto": "udp", "dst": "10.253.0.0/16",
                    "src_ports": [p, format!("{}-{}", p + 20000, p + 20010)]})
            }
        })
        .collect()
}

/// bench.py's `group_document("rules1k")`: 1,000 filler rules in a policy document, then allow.
fn group_document(n: usize) -> Value {
    let mut services: Vec<Value> = Vec::new();
    let mut svc = |v: Value| {
        let name = format!("s{}", services.len());
        let mut v = v;
        v["name"] = json!(name);
        services.push(v);
        name
    };
    let mut groups = vec![
        json!({"name": "opener", "select": {"tag": "side", "eq": "opener"}}),
        json!({"name": "answerer", "select": {"tag": "side", "eq": "answerer"}}),
    ];
    groups.extend((0..64).map(|k| {
        json!({"name": format!("empty{k}"),
        "select": {"tag": "side", "eq": format!("nobody{k}")}})
    }));
    let mut rules: Vec<Value> = (0..n)
        .map(|k| {
            let mut r = match k % 4 {
                0 => json!({"src": "opener", "dst": format!("empty{}", k % 64),
                    "services": svc(json!({"proto": "udp", "ports": [1001]})), "action": "allow"}),
                1 => json!({"src": "opener", "dst": "answerer", "action": "drop",
                    "services": svc(json!({"proto": "tcp",
                        "ports": [1000 + k % 7, format!("{}-{}", 1001 + k % 50, 1100 + k % 50)]}))}),
                2 => json!({"src": [format!("192.168.{}.0/24", k / 4 % 256),
                        format!("172.{}.{}.0/24", 16 + k / 1024 % 16, k % 256)],
                    "dst": "answerer", "services": svc(json!({"proto": "udp"})), "action": "allow"}),
                _ => {
                    let p = 2000 + k;
                    json!({"src": "opener", "dst": "answerer", "action": "reject",
                        "services": svc(json!({"proto": "udp",
                            "src_ports": [p, format!("{}-{}", p + 20000, p + 20010)]}))})
                }
            };
            r["name"] = json!(format!("f{k}"));
            r
        })
        .collect();
    rules.push(json!({"name": "rest", "src": "any", "dst": "any", "action": "allow"}));
    json!({"services": services, "groups": groups,
        "policies": [{"name": "rules1k", "tier": "application",
            "applied_to": ["opener", "answerer"], "rules": rules}],
        "defaults": {"egress": "drop", "ingress": "drop"}})
}

/// The two ports' policies from `group_document`, compiled as the agent does.
fn group_policies() -> [Arc<Policy>; 2] {
    let text = group_document(1000).to_string();
    let doc = Document::parse(&text, Format::Json).expect("the document parses");
    let mut c = Compiler::new(Arc::new(doc)).expect("the document compiles");
    let mut one = |name: &str, side: &str| {
        let tags = [("side".to_string(), side.to_string())].into();
        c.vnic(
            &VnicIn {
                attrs: VnicAttrs {
                    name,
                    segment: 1,
                    tenant: "default",
                    host: "h",
                    tags: &tags,
                },
                own: None,
            },
            "",
        )
        .expect("the vNIC compiles")
        .policy
    };
    [one("p0", "opener"), one("p1", "answerer")]
}

/// The two ports' policies, as the bench's policy files have them.
fn policies(case: &str) -> [Arc<Policy>; 2] {
    let compiled = |v: Value| {
        let pc: PolicyConfig = serde_json::from_value(v).expect("policy JSON");
        Arc::new(compile::policy(&pc, "policy").expect("policy compiles"))
    };
    match case {
        "l2" => [Arc::new(Policy::none()), Arc::new(Policy::none())],
        "groups1k-new" => group_policies(),
        "ct" => [
            compiled(json!({"egress_default": "drop", "ingress_default": "drop",
                "egress": [{"action": "allow", "proto": "udp", "src": "10.254.0.1/32", "dst_ports": 1001}]})),
            compiled(json!({"egress_default": "drop", "ingress_default": "drop",
                "ingress": [{"action": "allow", "proto": "udp", "dst_ports": 1001}]})),
        ],
        _ => {
            let mut rules = filler_rules(1000);
            rules.push(json!({"action": "allow"}));
            let p = json!({"egress_default": "drop", "ingress_default": "drop",
                "egress": rules, "ingress": rules});
            let p = compiled(p);
            [p.clone(), p]
        }
    }
}

/// Flow `i`'s destination: 10.253.0.0 upwards (as pktgen bench numbers its flows).
fn flow_ip(i: u32) -> [u8; 4] {
    0x0afd_0000u32.wrapping_add(i).to_be_bytes()
}

struct Rig {
    dir: PathBuf,
    conns: Vec<PortConn>,
    devs: Vec<Arc<NetDevice>>,
    guests: Vec<VirtioNet>,
}

impl Rig {
    fn new(case: &str) -> Rig {
        let dir =
            std::env::temp_dir().join(format!("bulwark-framecost-{}-{case}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let mut rig = Rig {
            dir,
            conns: Vec::new(),
            devs: Vec::new(),
            guests: Vec::new(),
        };
        for (i, mac) in MAC.iter().enumerate() {
            let path = rig.dir.join(format!("p{i}.sock"));
            let dev = Arc::new(NetDevice::new(1));
            let conn = PortConn::start(&format!("p{i}"), &path, SocketMode::Server, dev.clone())
                .expect("vhost-user socket");
            rig.conns.push(conn);
            let cfg = DeviceConfig {
                mac: *mac,
                ..DeviceConfig::default()
            };
            let g = VirtioNet::connect(Connect::Dial(path.clone()), cfg).expect("pktgen connects");
            wait_running(&dev, &path);
            rig.devs.push(dev);
            rig.guests.push(g);
        }
        rig
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.guests.clear();
        for c in self.conns.drain(..) {
            c.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_running(dev: &NetDevice, path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while dev.state() != LinkState::Running {
        if Instant::now() > deadline {
            fail(&format!("{} did not come up", path.display()));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn run(case: &str, passes: usize, flows: u32) -> Outcome {
    let rig = Rig::new(case);
    let sw = Switch::new(SwitchConfig {
        workers: vec![0],
        ..SwitchConfig::default()
    });
    let [p0, p1] = policies(case);
    let specs: Vec<PortSpec> = [p0, p1]
        .into_iter()
        .enumerate()
        .map(|(i, policy)| PortSpec {
            id: i as u16,
            segment: 1,
            dev: rig.devs[i].clone(),
            policy,
            mac: None,
            guard: Default::default(),
        })
        .collect();
    sw.set_ports(&specs).expect("ports publish");
    let mut rig = rig;
    let mut st = sw.stepper(0);

    let fwd = |i: u32| build_udp_frame(MAC[1], MAC[0], IP0, flow_ip(i), 1000, 1001, &PAYLOAD);
    let rev = |i: u32| build_udp_frame(MAC[0], MAC[1], flow_ip(i), IP0, 1001, 1000, &PAYLOAD);
    let new_flows = case.ends_with("-new");
    let two_way = !new_flows;
    let (fwd_frames, rev_frames): (Vec<Vec<u8>>, Vec<Vec<u8>>) = if new_flows {
        // Every measured frame a connection never seen: 65,536 destinations, then the next
        // source port.
        let n = passes * BURST;
        let frames = (0..n)
            .map(|i| {
                let mut f = fwd((i % 65536) as u32);
                // The UDP source port (after 14 + 20 bytes); the UDP checksum is absent.
                f[34..36].copy_from_slice(&(1024 + (i / 65536) as u16).to_be_bytes());
                f
            })
            .collect();
        (frames, Vec::new())
    } else {
        ((0..flows).map(fwd).collect(), (0..flows).map(rev).collect())
    };

    // Warm-up: both MACs learned; in the established cases every flow opened and answered.
    // Not measured.
    let warm: Vec<Vec<u8>> = if new_flows {
        // A flow of its own (source port 999), so the measured frames are all new.
        let (mut f, mut r) = (fwd(0), rev(0));
        f[34..36].copy_from_slice(&999u16.to_be_bytes());
        r[36..38].copy_from_slice(&999u16.to_be_bytes());
        vec![f, r]
    } else {
        fwd_frames.iter().chain(&rev_frames).cloned().collect()
    };
    for chunk in warm.chunks(BURST) {
        let (a, b): (Vec<&[u8]>, Vec<&[u8]>) = chunk
            .iter()
            .map(|f| f.as_slice())
            .partition(|f| f[6..12] == MAC[0]);
        exchange(&mut rig, &mut st, &a, &b, false);
    }

    let mut frames = 0;
    let mut elapsed = Duration::ZERO;
    let mut k = 0usize;
    for _ in 0..passes {
        let a = pick(&fwd_frames, k);
        let b = if two_way {
            pick(&rev_frames, k)
        } else {
            Vec::new()
        };
        k += BURST;
        let (n, t) = exchange(&mut rig, &mut st, &a, &b, true);
        frames += n;
        elapsed += t;
    }
    drop(st);
    sw.shutdown();
    Outcome { frames, elapsed }
}

/// Port 0's guest sends `a`, port 1's sends `b`; one pass of the worker (measured when
/// `measure`) moves them; both guests must then hold exactly the other's frames. Returns the
/// frames moved and the pass's time.
fn exchange(
    rig: &mut Rig,
    st: &mut Stepper<'_>,
    a: &[&[u8]],
    b: &[&[u8]],
    measure: bool,
) -> (usize, Duration) {
    let sent = [rig.guests[0].send(a), rig.guests[1].send(b)];
    assert_eq!(
        sent,
        [a.len(), b.len()],
        "the guests' transmit rings are full"
    );
    let t0 = Instant::now();
    let n = if measure {
        frame_cost_measured_pass(st)
    } else {
        st.step()
    };
    let t = t0.elapsed();
    black_box(n);
    let got = [
        rig.guests[0].recv_count().expect("port 0 receives"),
        rig.guests[1].recv_count().expect("port 1 receives"),
    ];
    // `n` counts pops (with the one that found the ring empty), so it is not compared.
    if n == 0 || got != [b.len(), a.len()] {
        fail(&format!(
            "one pass delivered {got:?} frames to ports 0 and 1 (expected [{}, {}])",
            b.len(),
            a.len()
        ));
    }
    for g in &mut rig.guests {
        g.poll_tx();
    }
    (a.len() + b.len(), t)
}
