//! bulwarkctl: the command-line client of bulwarkd's API.

use std::path::PathBuf;
use std::process::ExitCode;

use control::config::DEFAULT_RUN_DIR;
use serde_json::{json, Value};

const USAGE: &str = "usage: bulwarkctl [--run-dir DIR | --api SOCKET] [--json] COMMAND

commands:
  ports                                  ports, state and counters
  port show NAME                         one port, with its drop counters
  port add NAME --socket PATH (--segment N | --vlan N) [--mode client|server] [--queues N]
                                         [--mac MAC]  (bind the port to the guest's MAC)
  port del NAME
  policy NAME                            its firewall rules with per-rule counters
  policy set NAME FILE                   replace its policy (FILE: JSON, or TOML if *.toml;
                                         '-' reads JSON from stdin; '{}' allows everything)
  conns [NAME]                           tracked connections (of one port, or all)
  flush NAME                             drop a port's tracked connections
  macs                                   the MAC learning table
  stats                                  workers, and every non-zero drop counter

  --run-dir DIR   bulwarkd's run directory (default /run/bulwark); the API is DIR/api.sock
  --api SOCKET    the API socket itself
  --json          print the API's JSON instead of tables";

fn main() -> ExitCode {
    control::sys::default_sigpipe();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulwarkctl: {e}");
            ExitCode::from(1)
        }
    }
}

fn run() -> Result<(), String> {
    let mut api = PathBuf::from(DEFAULT_RUN_DIR).join("api.sock");
    let mut as_json = false;
    let mut rest = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--run-dir" => {
                api = PathBuf::from(args.next().ok_or("--run-dir needs a value")?).join("api.sock")
            }
            "--api" => api = PathBuf::from(args.next().ok_or("--api needs a value")?),
            "--json" => as_json = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            _ => rest.push(a),
        }
    }
    let words: Vec<&str> = rest.iter().map(String::as_str).collect();
    let call = |method: &str, path: &str, body: Option<String>| -> Result<Value, String> {
        let (status, text) = control::http::call(&api, method, path, body.as_deref())
            .map_err(|e| format!("cannot reach bulwarkd at {}: {e}", api.display()))?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| format!("bad JSON from bulwarkd: {e}"))?;
        if status >= 400 {
            let field = v["field"].as_str().unwrap_or("");
            let err = v["error"].as_str().unwrap_or("unknown error");
            return Err(if field.is_empty() {
                err.to_string()
            } else {
                format!("{field}: {err}")
            });
        }
        Ok(v)
    };
    let v = match words.as_slice() {
        ["ports"] => call("GET", "/v1/ports", None)?,
        ["port", "show", name] => call("GET", &format!("/v1/ports/{name}"), None)?,
        ["port", "add", name, opts @ ..] => {
            let mut body = json!({ "name": name });
            let mut it = opts.iter();
            while let Some(o) = it.next() {
                let val = it.next().ok_or_else(|| format!("{o} needs a value"))?;
                match *o {
                    "--socket" => body["socket"] = json!(val),
                    "--mode" => body["mode"] = json!(val),
                    "--mac" => body["mac"] = json!(val),
                    "--segment" | "--vlan" | "--queues" => {
                        let n: u64 = val
                            .parse()
                            .map_err(|_| format!("{o}: {val:?} is not a number"))?;
                        body[&o[2..]] = json!(n);
                    }
                    _ => return Err(format!("unknown option {o}\n{USAGE}")),
                }
            }
            call("POST", "/v1/ports", Some(body.to_string()))?
        }
        ["port", "del", name] => call("DELETE", &format!("/v1/ports/{name}"), None)?,
        ["policy", "set", name, file] => {
            let body = read_policy(file)?;
            call("PUT", &format!("/v1/ports/{name}/policy"), Some(body))?
        }
        ["policy", name] => call("GET", &format!("/v1/ports/{name}/policy"), None)?,
        ["conns"] => call("GET", "/v1/conns", None)?,
        ["conns", name] => call("GET", &format!("/v1/ports/{name}/conns"), None)?,
        ["flush", name] => call("DELETE", &format!("/v1/ports/{name}/conns"), None)?,
        ["macs"] => call("GET", "/v1/macs", None)?,
        ["stats"] => call("GET", "/v1/stats", None)?,
        _ => return Err(USAGE.to_string()),
    };
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    match words.as_slice() {
        ["ports"] => print_ports(v.as_array().map(Vec::as_slice).unwrap_or_default()),
        ["port", "show", ..] | ["port", "add", ..] => {
            print_ports(std::slice::from_ref(&v));
            print_drops(std::slice::from_ref(&v));
        }
        ["port", "del", name] => println!("removed port {name}"),
        ["policy", ..] => print_policy(&v),
        ["conns", ..] => print_conns(v.as_array().map(Vec::as_slice).unwrap_or_default()),
        ["flush", name] => println!("flushed {} connections of port {name}", s(&v["flushed"])),
        ["macs"] => {
            let rows: Vec<Vec<String>> = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    vec![
                        s(&m["segment"]),
                        s(&m["mac"]),
                        s(&m["port"]),
                        s(&m["age_secs"]),
                    ]
                })
                .collect();
            table(&["SEGMENT", "MAC", "PORT", "AGE(s)"], &rows);
        }
        ["stats"] => {
            let rows: Vec<Vec<String>> = v["workers"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
                .map(|(i, w)| {
                    vec![
                        i.to_string(),
                        s(&w["cpu"]),
                        s(&w["busy_polls"]),
                        s(&w["idle_polls"]),
                    ]
                })
                .collect();
            table(&["WORKER", "CPU", "BUSY POLLS", "IDLE POLLS"], &rows);
            println!();
            print_drops(v["ports"].as_array().map(Vec::as_slice).unwrap_or_default());
        }
        _ => {}
    }
    Ok(())
}

/// A policy file as the JSON body of PUT /v1/ports/NAME/policy.
fn read_policy(file: &str) -> Result<String, String> {
    if file == "{}" {
        return Ok("{}".into());
    }
    let text = if file == "-" {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)
            .map_err(|e| format!("reading stdin: {e}"))?;
        t
    } else {
        std::fs::read_to_string(file).map_err(|e| format!("cannot read {file}: {e}"))?
    };
    if file.ends_with(".toml") {
        let v: control::policy::PolicyConfig =
            toml::from_str(&text).map_err(|e| format!("{file}: {e}"))?;
        serde_json::to_string(&v).map_err(|e| e.to_string())
    } else {
        Ok(text)
    }
}

fn print_policy(v: &Value) {
    println!("port {}  (policy epoch {})", s(&v["port"]), s(&v["epoch"]));
    let p = &v["policy"];
    if p.is_null() {
        println!("no policy: no firewall on this port (plain L2 between unfiltered ports)");
        return;
    }
    let defaults = |k: &str| p[k].as_str().unwrap_or("allow").to_string();
    println!(
        "egress default {}, ingress default {}, non-IP {}, ND {}, TCP pickup {}",
        defaults("egress_default"),
        defaults("ingress_default"),
        defaults("non_ip"),
        defaults("nd"),
        p["tcp_pickup"].as_bool().unwrap_or(false)
    );
    for dir in ["egress", "ingress"] {
        let written = p[dir].as_array().cloned().unwrap_or_default();
        let rows: Vec<Vec<String>> = v["rules"][dir]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let i = r["index"].as_u64().unwrap_or(0) as usize;
                let mut m = written.get(i).cloned().unwrap_or(Value::Null);
                if let Some(o) = m.as_object_mut() {
                    o.remove("id");
                    o.remove("action");
                }
                vec![
                    s(&r["id"]),
                    s(&r["action"]),
                    s(&r["packets"]),
                    s(&r["bytes"]),
                    s(&r["connections"]),
                    m.to_string(),
                ]
            })
            .collect();
        println!();
        println!("{dir} rules:");
        table(
            &["ID", "ACTION", "PACKETS", "BYTES", "CONNS", "MATCH"],
            &rows,
        );
    }
}

fn print_conns(conns: &[Value]) {
    let rows: Vec<Vec<String>> = conns
        .iter()
        .map(|c| {
            let proto = match c["proto"].as_u64() {
                Some(6) => "tcp".to_string(),
                Some(17) => "udp".to_string(),
                Some(1) => "icmp".to_string(),
                Some(58) => "icmpv6".to_string(),
                _ => s(&c["proto"]),
            };
            let ep = |a: &str, p: &str| {
                let addr = s(&c[a]);
                if addr.contains(':') {
                    format!("[{addr}]:{}", s(&c[p]))
                } else {
                    format!("{addr}:{}", s(&c[p]))
                }
            };
            vec![
                s(&c["zone"]),
                proto,
                ep("src", "sport"),
                ep("dst", "dport"),
                s(&c["state"]),
                s(&c["owner"]),
                s(&c["peer"]),
                s(&c["age_secs"]),
                s(&c["idle_secs"]),
                s(&c["packets"]),
                format!("{}/{}", s(&c["rule_egress"]), s(&c["rule_ingress"])),
            ]
        })
        .collect();
    table(
        &[
            "ZONE",
            "PROTO",
            "SOURCE",
            "DESTINATION",
            "STATE",
            "OWNER",
            "PEER",
            "AGE(s)",
            "IDLE(s)",
            "PACKETS",
            "RULES(eg/in)",
        ],
        &rows,
    );
    println!("{} connections", conns.len());
}

fn s(v: &Value) -> String {
    match v {
        Value::String(x) => x.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn print_ports(ports: &[Value]) {
    let rows: Vec<Vec<String>> = ports
        .iter()
        .map(|p| {
            let drops: u64 = p["drops"]
                .as_object()
                .map_or(0, |d| d.values().filter_map(Value::as_u64).sum());
            vec![
                s(&p["name"]),
                s(&p["segment"]),
                s(&p["mode"]),
                s(&p["state"]),
                format!("{}/{}", s(&p["queues_running"]), s(&p["queues"])),
                s(&p["rx_packets"]),
                s(&p["rx_bytes"]),
                s(&p["tx_packets"]),
                s(&p["tx_bytes"]),
                drops.to_string(),
                s(&p["socket"]),
            ]
        })
        .collect();
    table(
        &[
            "NAME", "SEGMENT", "MODE", "STATE", "QUEUES", "RX PKTS", "RX BYTES", "TX PKTS",
            "TX BYTES", "DROPS", "SOCKET",
        ],
        &rows,
    );
}

fn print_drops(ports: &[Value]) {
    let mut rows = Vec::new();
    for p in ports {
        for (reason, n) in p["drops"].as_object().into_iter().flatten() {
            if n.as_u64().unwrap_or(0) > 0 {
                rows.push(vec![s(&p["name"]), reason.clone(), s(n)]);
            }
        }
    }
    if rows.is_empty() {
        println!("no drops");
    } else {
        table(&["PORT", "DROP REASON", "COUNT"], &rows);
    }
}

fn table(head: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let out: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        println!("{}", out.join("  ").trim_end());
    };
    line(head.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}
