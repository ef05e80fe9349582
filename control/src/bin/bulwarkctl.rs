//! bulwarkctl: the command-line client of bulwarkd's API.

use std::path::PathBuf;
use std::process::ExitCode;

use control::config::DEFAULT_RUN_DIR;
use serde_json::{json, Value};

const USAGE: &str = "usage: bulwarkctl [--run-dir DIR | --api SOCKET] [--json] COMMAND

commands:
  ports                                  ports, state and counters
  port show NAME                         one port, with its drop counters
  port add NAME --socket PATH (--segment N | --vlan N) [--mode client|server]
  port del NAME
  macs                                   the MAC learning table
  stats                                  workers, and every non-zero drop counter

  --run-dir DIR   bulwarkd's run directory (default /run/bulwark); the API is DIR/api.sock
  --api SOCKET    the API socket itself
  --json          print the API's JSON instead of tables";

fn main() -> ExitCode {
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
                    "--segment" | "--vlan" => {
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
            "NAME", "SEGMENT", "MODE", "STATE", "RX PKTS", "RX BYTES", "TX PKTS", "TX BYTES",
            "DROPS", "SOCKET",
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
