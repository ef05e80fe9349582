//! The connection table survives bulwarkd: killed with SIGKILL, stopped with SIGTERM, or
//! restarted with a state file it cannot use. Connections that only the table lets through
//! (the policies deny them as new) go on after the restart, and a third VM still cannot cut
//! them; what the new policy denies is still denied.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// a may open TCP to b's port 80 and UDP to b's port 53; nothing else, either way, and no
/// mid-stream pickup: after a restart only a tracked connection lets b answer a.
const POLICY_A: &str = r#"
[ports.policy]
egress_default = "drop"
ingress_default = "drop"
egress = [
  { action = "allow", proto = "tcp", dst_ports = 80 },
  { action = "allow", proto = "udp", dst_ports = 53 },
]
"#;
const POLICY_B: &str = r#"
[ports.policy]
egress_default = "drop"
ingress_default = "drop"
ingress = [
  { action = "allow", proto = "tcp", dst_ports = 80 },
  { action = "allow", proto = "udp", dst_ports = 53 },
]
"#;

const GUARD_C: &str =
    "mac = \"02:00:00:00:00:03\"\nspoof_guard = \"strict\"\naddresses = [\"10.0.0.3\"]\n";

const WAIT: Duration = Duration::from_secs(5);
const SHORT: Duration = Duration::from_millis(300);

struct Guests {
    a: pktgen::VirtioNet,
    b: pktgen::VirtioNet,
    c: pktgen::VirtioNet,
}

fn attach(sw: &Bulwarkd) -> Guests {
    let mut g = Guests {
        a: sw.attach("a", mac(1)),
        b: sw.attach("b", mac(2)),
        c: sw.attach("c", mac(3)),
    };
    learn(&mut g.a, &mut g.b, mac(1), mac(2));
    assert_eq!(recv_n(&mut g.c, 2, WAIT).len(), 2, "a's and b's floods");
    send_all(&mut g.c, &[frame([0xff; 6], mac(3), 1)]);
    let _ = recv_n(&mut g.a, 1, WAIT);
    let _ = recv_n(&mut g.b, 1, WAIT);
    g
}

const A: ([u8; 6], [u8; 4], u16) = ([2, 0, 0, 0, 0, 1], IP_A, 40000);
const B: ([u8; 6], [u8; 4], u16) = ([2, 0, 0, 0, 0, 2], IP_B, 80);

/// Data both ways on a's TCP connection to b:80 (sequence numbers after `n` exchanges).
fn data_both_ways(g: &mut Guests, n: u32, what: &str) {
    let (sa, sb) = (1001 + 10 * n, 5001 + 10 * n);
    let f = tcp(A, B, sa, sb, "AP", b"0123456789");
    assert_eq!(
        exchange(&mut g.a, &mut g.b, &f, WAIT),
        vec![f.clone()],
        "{what}: a -> b"
    );
    let f = tcp(B, A, sb, sa + 10, "AP", b"9876543210");
    assert_eq!(
        exchange(&mut g.b, &mut g.a, &f, WAIT),
        vec![f.clone()],
        "{what}: b -> a"
    );
}

fn udp_reply(g: &mut Guests, what: &str) {
    let r = udp((mac(2), IP_B, 53), (mac(1), IP_A, 4000), b"answer");
    assert_eq!(
        exchange(&mut g.b, &mut g.a, &r, WAIT),
        vec![r.clone()],
        "{what}: UDP reply"
    );
}

/// What the policies deny is still denied, and a third VM forging b's side cannot cut a's
/// connection.
fn attacks(sw: &Bulwarkd, g: &mut Guests, n: u32, what: &str) {
    // b opening a connection to a: denied as new.
    let syn = tcp((mac(2), IP_B, 7000), (mac(1), IP_A, 22), 1, 0, "S", b"");
    assert!(
        exchange(&mut g.b, &mut g.a, &syn, SHORT).is_empty(),
        "{what}: b's SYN to a"
    );
    // c forges b's address and sends a RST on the connection (in window): it neither reaches
    // a nor cuts the connection.
    let (sa, sb) = (1001 + 10 * n, 5001 + 10 * n);
    let rst = tcp((mac(3), IP_B, 80), (mac(1), IP_A, 40000), sb, sa, "RA", b"");
    assert!(
        exchange(&mut g.c, &mut g.a, &rst, SHORT).is_empty(),
        "{what}: c's RST"
    );
    let conns = sw.api("GET", "/v1/ports/a/conns", None).1;
    let tcp_conns = conns
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["proto"] == 6 && c["dport"] == 80)
        .count();
    assert_eq!(
        tcp_conns, 1,
        "{what}: a's connection after c's forged RST: {conns}"
    );
}

fn handshake(g: &mut Guests) {
    let syn = tcp(A, B, 1000, 0, "S", b"");
    assert_eq!(
        exchange(&mut g.a, &mut g.b, &syn, WAIT),
        vec![syn.clone()],
        "SYN"
    );
    let sa = tcp(B, A, 5000, 1001, "SA", b"");
    assert_eq!(
        exchange(&mut g.b, &mut g.a, &sa, WAIT),
        vec![sa.clone()],
        "SYN+ACK"
    );
    let ack = tcp(A, B, 1001, 5001, "A", b"");
    assert_eq!(
        exchange(&mut g.a, &mut g.b, &ack, WAIT),
        vec![ack.clone()],
        "ACK"
    );
    let q = udp((mac(1), IP_A, 4000), (mac(2), IP_B, 53), b"query");
    assert_eq!(
        exchange(&mut g.a, &mut g.b, &q, WAIT),
        vec![q.clone()],
        "UDP query"
    );
}

fn opened(sw: &Bulwarkd) -> String {
    sw.api("GET", "/v1/conntrack", None).1["opened"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn connections_survive_kill_and_restart() {
    let mut sw = Bulwarkd::start_extra(
        &[
            ("a", 10, "server", POLICY_A),
            ("b", 10, "server", POLICY_B),
            // c has no policy but a strict spoof guard: the switch's answer to forgery.
            ("c", 10, "server", GUARD_C),
        ],
        &[worker_cpu()],
    );
    assert!(opened(&sw).contains("new"), "{}", opened(&sw));
    let mut g = attach(&sw);
    handshake(&mut g);
    data_both_ways(&mut g, 0, "before");
    attacks(&sw, &mut g, 1, "before");

    // SIGKILL: nothing is written at exit; the table is where the workers left it.
    drop(g);
    let t = Instant::now();
    sw.kill_and_start();
    let up = t.elapsed();
    let o = opened(&sw);
    assert!(
        o.contains("crash") && o.contains("2 connections kept"),
        "{o}"
    );
    let mut g = attach(&sw);
    // The forgery comes first, while the restored connection is still stale.
    attacks(&sw, &mut g, 1, "after SIGKILL");
    data_both_ways(&mut g, 1, "after SIGKILL");
    udp_reply(&mut g, "after SIGKILL");
    eprintln!(
        "restart after SIGKILL: API up {} ms after exec; {o}",
        up.as_millis()
    );

    // SIGTERM: a clean stop keeps them too, and says so.
    drop(g);
    sw.restart();
    let o = opened(&sw);
    assert!(
        o.contains("clean stop") && o.contains("2 connections kept"),
        "{o}"
    );
    let mut g = attach(&sw);
    attacks(&sw, &mut g, 2, "after SIGTERM");
    data_both_ways(&mut g, 2, "after SIGTERM");
    assert_eq!(sw.drops("a", "tcp_no_connection"), 0);
    assert!(sw.drops("c", "ip_spoofed") >= 1);

    // A state file this bulwarkd cannot read is set aside, and the table starts empty: the
    // connection is gone, and b's answers are what they are without it: mid-stream segments
    // of no connection (no pickup), dropped.
    drop(g);
    let file = sw.run.join("conntrack.table");
    sw.stop();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.write_at(&7u64.to_le_bytes(), 8).unwrap();
    }
    sw.start_again();
    let o = opened(&sw);
    assert!(o.contains("REFUSED"), "{o}");
    assert!(sw.run.join("conntrack.refused").exists());
    assert!(sw.log().contains("REFUSED"), "the log says so");
    let mut g = attach(&sw);
    let f = tcp(B, A, 5031, 1031, "AP", b"9876543210");
    assert!(exchange(&mut g.b, &mut g.a, &f, SHORT).is_empty());
    assert_eq!(sw.drops("b", "tcp_no_connection"), 1, "{}", sw.port("b"));
}

/// A vNIC that does not come back after the restart takes its connections with it; the
/// other vNICs keep theirs.
#[test]
fn connections_of_vnics_that_do_not_come_back_are_dropped() {
    let mut sw = Bulwarkd::start_extra(
        &[
            ("a", 10, "server", POLICY_A),
            ("b", 10, "server", POLICY_B),
            ("c", 10, "server", POLICY_B),
        ],
        &[worker_cpu()],
    );
    let mut g = attach(&sw);
    handshake(&mut g);
    // a to c: TCP to c's port 80.
    let c = ([2, 0, 0, 0, 0, 3], IP_C, 80);
    let syn = tcp(A, c, 77, 0, "S", b"");
    assert_eq!(exchange(&mut g.a, &mut g.c, &syn, WAIT).len(), 1);
    assert_eq!(sw.api("GET", "/v1/conntrack", None).1["live"], 3);
    drop(g);
    // c leaves the config while bulwarkd is down.
    sw.stop();
    let cfg = std::fs::read_to_string(sw.dir.join("bulwark.toml")).unwrap();
    let cut = cfg.find("[[ports]]\nname = \"c\"").unwrap();
    std::fs::write(sw.dir.join("bulwark.toml"), &cfg[..cut]).unwrap();
    sw.start_again();
    assert!(
        sw.log().contains("1 restored connections dropped"),
        "{}",
        sw.log()
    );
    assert_eq!(sw.api("GET", "/v1/conntrack", None).1["live"], 2);
}

/// A tmpfs with huge pages mounted on a directory for the test's life (root only).
struct HugeTmpfs(std::path::PathBuf);
impl HugeTmpfs {
    fn mount(dir: &std::path::Path) -> Option<HugeTmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                "huge=within_size,mode=0700",
                "bulwark-test",
            ])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| HugeTmpfs(dir.to_path_buf()))
    }
}
impl Drop for HugeTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// bulwarkd says how the table's memory is backed: all in huge pages when its state file is on
/// a tmpfs mounted with huge pages, and a warning that names the fix when a table of 2 MiB or
/// more is in 4 KiB pages (as on a tmpfs without `huge=`).
#[test]
fn the_table_says_whether_it_is_in_huge_pages() {
    // 30,000 connections: 2.5 MiB of slots.
    let backing = |state: &std::path::Path| {
        let top = format!(
            "[conntrack]\ncapacity = 30000\nstate_file = \"{}\"\n",
            state.display()
        );
        let mut sw = Bulwarkd::start_top(&top, &[("a", 10, "server", "")], &[worker_cpu()], &[]);
        let ct = sw.api("GET", "/v1/conntrack", None).1;
        sw.stop();
        let mapped = ct["mapped_bytes"].as_u64().expect("mapped_bytes");
        let huge = ct["huge_page_bytes"].as_u64().expect("huge_page_bytes");
        assert!(mapped >= 2 << 20 && huge <= mapped, "{ct}");
        (mapped, huge, sw.log())
    };
    let warning = "are in 4 KiB pages, not huge pages";

    let dir = std::env::temp_dir().join(format!("bulwark-huge-{}", std::process::id()));
    match HugeTmpfs::mount(&dir) {
        Some(m) => {
            let (mapped, huge, log) = backing(&m.0.join("conntrack.table"));
            assert_eq!(huge, mapped, "all in huge pages on a huge tmpfs\n{log}");
            assert!(!log.contains(warning), "{log}");
            assert!(log.contains("in huge pages"), "{log}");
        }
        None => eprintln!("not root (cannot mount a tmpfs): the huge-page case is not run"),
    }
    let _ = std::fs::remove_dir_all(&dir);

    // /dev/shm: on tmpfs, with huge pages or not as it was mounted; the warning says which.
    let shm = std::path::Path::new("/dev/shm").join(format!("bulwark-shm-{}", std::process::id()));
    std::fs::create_dir_all(&shm).unwrap();
    let (_, huge, log) = backing(&shm.join("conntrack.table"));
    let _ = std::fs::remove_dir_all(&shm);
    if huge == 0 {
        assert!(
            log.contains(warning) && log.contains("huge=within_size"),
            "{log}"
        );
    } else {
        assert!(!log.contains(warning), "{log}");
    }
}
