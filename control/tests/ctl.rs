//! bulwarkctl against a running bulwarkd, as an operator types it: every command, its tables
//! and its JSON, and the messages it prints when something is wrong.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn ctl(sw: &Bulwarkd, args: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_bulwarkctl"))
        .arg("--run-dir")
        .arg(&sw.run)
        .args(args)
        .output()
        .expect("run bulwarkctl");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(sw: &Bulwarkd, args: &[&str]) -> String {
    let o = ctl(sw, args);
    assert_eq!(o.code, 0, "bulwarkctl {args:?}: {}{}", o.stdout, o.stderr);
    o.stdout
}

fn fails(sw: &Bulwarkd, args: &[&str]) -> String {
    let o = ctl(sw, args);
    assert_eq!(
        o.code, 1,
        "bulwarkctl {args:?} should fail: {}{}",
        o.stdout, o.stderr
    );
    assert!(o.stdout.is_empty(), "{}", o.stdout);
    o.stderr
}

#[test]
fn every_command_against_a_running_bulwarkd() {
    let sw = Bulwarkd::start(&[("a", 10)]);
    let sock = path_str(&sw.dir.join("b.sock"));
    // port add, with a bound MAC; the table shows it.
    let out = ok(
        &sw,
        &[
            "port",
            "add",
            "b",
            "--socket",
            &sock,
            "--segment",
            "10",
            "--mode",
            "server",
            "--mac",
            "52:54:00:00:00:0b",
        ],
    );
    assert!(
        out.lines().nth(1).is_some_and(|l| l.starts_with("b ")),
        "{out}"
    );
    assert!(out.contains("no drops"), "{out}");
    // ports: both, as a table and as the API's JSON.
    let out = ok(&sw, &["ports"]);
    assert!(out.starts_with("NAME"), "{out}");
    assert_eq!(out.lines().count(), 3, "{out}");
    let v: Value = serde_json::from_str(&ok(&sw, &["--json", "ports"])).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(v[1]["mac"], "52:54:00:00:00:0b");
    // port show, by name; an unknown one is an error that names it.
    assert!(ok(&sw, &["port", "show", "a"]).contains("a "));
    let err = fails(&sw, &["port", "show", "zz"]);
    assert!(err.contains("no port named \"zz\""), "{err}");
    // policy set from TOML, then policy NAME (and policy show NAME) shows its rules.
    let file = sw.dir.join("p.toml");
    std::fs::write(
        &file,
        "ingress_default = \"drop\"\ningress = [{ id = 7, action = \"allow\", proto = \"tcp\", dst_ports = 22 }]\n",
    )
    .unwrap();
    let out = ok(&sw, &["policy", "set", "b", &path_str(&file)]);
    assert!(out.contains("ingress default drop"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("7 ") && l.contains("allow")),
        "{out}"
    );
    assert_eq!(ok(&sw, &["policy", "b"]), ok(&sw, &["policy", "show", "b"]));
    let v: Value = serde_json::from_str(&ok(&sw, &["--json", "policy", "b"])).unwrap();
    assert_eq!(v["rules"]["ingress"][0]["id"], 7);
    assert!(ok(&sw, &["policy", "a"]).contains("no policy"));
    // A bad policy names the field, locally (unknown key) or from bulwarkd (bad value).
    std::fs::write(&file, "ingress = [{ action = \"allow\", colour = 1 }]\n").unwrap();
    let err = fails(&sw, &["policy", "set", "b", &path_str(&file)]);
    assert!(err.contains("colour"), "{err}");
    std::fs::write(
        &file,
        "ingress = [{ action = \"allow\", dst_ports = 22 }]\n",
    )
    .unwrap();
    let err = fails(&sw, &["policy", "set", "b", &path_str(&file)]);
    assert!(err.contains("policy.ingress[0].dst_ports"), "{err}");
    // The rest of the commands, each as a table.
    assert!(ok(&sw, &["conns"]).ends_with("0 connections\n"));
    assert!(ok(&sw, &["conns", "b"]).ends_with("0 connections\n"));
    assert_eq!(
        ok(&sw, &["flush", "b"]),
        "flushed 0 connections of port b\n"
    );
    assert!(ok(&sw, &["macs"]).starts_with("SEGMENT"));
    assert!(ok(&sw, &["conntrack"]).contains("connection slots in use"));
    let out = ok(&sw, &["stats"]);
    assert!(out.starts_with("WORKER"), "{out}");
    let v: Value = serde_json::from_str(&ok(&sw, &["--json", "stats"])).unwrap();
    assert!(v["drop_reasons"].as_array().unwrap().len() > 20);
    // port del, then it is gone.
    assert_eq!(ok(&sw, &["port", "del", "b"]), "removed port b\n");
    assert!(fails(&sw, &["port", "del", "b"]).contains("no port named"));
    // A conflicting add names the field.
    let err = fails(
        &sw,
        &["port", "add", "a", "--socket", &sock, "--segment", "10"],
    );
    assert!(err.contains("name"), "{err}");
}

#[test]
fn usage_errors_and_an_absent_bulwarkd() {
    let sw = Bulwarkd::start(&[]);
    // Argument errors come from clap, with exit code 2 and the usage.
    let o = ctl(&sw, &["port", "add", "x", "--socket", "/tmp/x.sock"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("--segment"), "{}", o.stderr);
    let o = ctl(&sw, &["frobnicate"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    // No bulwarkd at the address: say where it looked.
    let o = Command::new(env!("CARGO_BIN_EXE_bulwarkctl"))
        .args(["--run-dir", "/nonexistent/bulwark", "ports"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot reach bulwarkd at /nonexistent/bulwark/api.sock"),
        "{err}"
    );
}
