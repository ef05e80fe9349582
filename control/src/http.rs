//! Just enough HTTP/1.1 for a local JSON API over a Unix socket: one request per connection,
//! `Content-Length` bodies, bounded sizes, and a read timeout so a stuck client cannot hold
//! the API thread.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 16 * 1024 * 1024;

/// A parsed request.
#[derive(Debug)]
pub struct Request {
    /// Method, upper case.
    pub method: String,
    /// Path (no query string handling beyond keeping it in the path).
    pub path: String,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// Reads one request from `s`.
pub fn read_request(s: &UnixStream) -> Result<Request, String> {
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let mut head = 0;
    r.read_line(&mut line)
        .map_err(|e| format!("reading request line: {e}"))?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return Err("malformed request line".into());
    };
    let (method, path) = (method.to_ascii_uppercase(), path.to_string());
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        let n = r
            .read_line(&mut h)
            .map_err(|e| format!("reading headers: {e}"))?;
        head += n;
        if n == 0 || head > MAX_HEAD {
            return Err("headers too long or truncated".into());
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                len = v
                    .trim()
                    .parse()
                    .map_err(|_| "bad Content-Length".to_string())?;
                if len > MAX_BODY {
                    return Err(format!("body larger than {MAX_BODY} bytes"));
                }
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)
        .map_err(|e| format!("reading body: {e}"))?;
    Ok(Request { method, path, body })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        _ => "Internal Server Error",
    }
}

/// Writes a JSON response and closes our side.
pub fn write_response(mut s: &UnixStream, status: u16, body: &str) -> io::Result<()> {
    write!(
        s,
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        reason(status),
        body.len()
    )?;
    s.flush()
}

/// Client side: sends one request to the API socket at `sock`, returns (status, body).
pub fn call(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> io::Result<(u16, String)> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: bulwark\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other("malformed HTTP response"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other("malformed HTTP status line"))?;
    Ok((status, body.to_string()))
}
