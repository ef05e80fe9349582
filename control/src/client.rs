//! The API from the caller's side: blocking calls that send and parse the API's own types
//! (`model`, `config`, `policy`), so a renamed or missing field is an error, never a blank.
//! Over the Unix socket, or over TCP with a bearer token.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::PortConfig;
use crate::document::Document;
use crate::model::{
    AddressInfo, ApiError, ConnExport, ConnView, ConntrackInfo, Flushed, GroupInfo, HandedOver,
    Handover, Health, Imported, MacInfo, PolicyApplied, PolicyDoc, PolicyInfo, PortInfo, ReachInfo,
    ReachRequest, Removed, RevisionInfo, StatsInfo, Tags, TraceInfo, TraceRequest, TraceStarted,
};
use crate::policy::PolicyConfig;

/// Where the API is.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// A Unix socket (`<run-dir>/api.sock`).
    Unix(PathBuf),
    /// `host:port` on TCP, with the bearer token every request needs there.
    Tcp {
        /// `host:port`.
        addr: String,
        /// The token.
        token: String,
    },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
            Endpoint::Tcp { addr, .. } => write!(f, "http://{addr}"),
        }
    }
}

/// Why a call failed.
#[derive(Debug)]
pub enum ClientError {
    /// bulwarkd could not be reached (or the exchange broke off).
    Unreachable(String),
    /// bulwarkd refused the request.
    Api(ApiError),
    /// bulwarkd answered something that is not the documented response.
    BadResponse(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Unreachable(e) | ClientError::BadResponse(e) => f.write_str(e),
            ClientError::Api(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// A client of one bulwarkd.
#[derive(Debug)]
pub struct Client {
    endpoint: Endpoint,
    timeout: Duration,
    rt: tokio::runtime::Runtime,
}

/// Percent-encodes a path segment (port names are plain, but a typo must not change the path).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// A client of the API at `endpoint`; each call gives up after `timeout`.
    pub fn new(endpoint: Endpoint, timeout: Duration) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Client {
            endpoint,
            timeout,
            rt,
        })
    }

    /// A client of the Unix socket `sock`, with a 30 s timeout.
    pub fn unix(sock: &Path) -> std::io::Result<Self> {
        Client::new(Endpoint::Unix(sock.to_path_buf()), Duration::from_secs(30))
    }

    /// Where it calls.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// One request: returns the status and the body as sent.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let unreachable = |e: &dyn std::fmt::Display| {
            ClientError::Unreachable(format!("cannot reach bulwarkd at {}: {e}", self.endpoint))
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "bulwark")
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Endpoint::Tcp { token, .. } = &self.endpoint {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::BadResponse(format!("bad request: {e}")))?;
        let exchange = async {
            let resp = match &self.endpoint {
                Endpoint::Unix(p) => {
                    let s = tokio::net::UnixStream::connect(p).await?;
                    send(s, req).await?
                }
                Endpoint::Tcp { addr, .. } => {
                    let s = tokio::net::TcpStream::connect(addr.as_str()).await?;
                    send(s, req).await?
                }
            };
            Ok::<_, std::io::Error>(resp)
        };
        self.rt
            .block_on(async { tokio::time::timeout(self.timeout, exchange).await })
            .map_err(|_| unreachable(&format!("no answer within {:?}", self.timeout)))?
            .map_err(|e| unreachable(&e))
    }

    /// One request in the API's types: a 2xx body parsed as `T`, or the API's error.
    pub fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::BadResponse(format!("cannot encode the request: {e}")))?;
        let (status, bytes) = self.raw(method, path, body)?;
        if status >= 400 {
            let mut e: ApiError = serde_json::from_slice(&bytes).map_err(|_| {
                ClientError::BadResponse(format!(
                    "status {status} with a body that is not an API error: {:?}",
                    String::from_utf8_lossy(&bytes)
                ))
            })?;
            e.status = status;
            return Err(ClientError::Api(e));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::BadResponse(format!(
                "{method} {path}: the answer is not the documented response: {e}"
            ))
        })
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call("GET", path, None::<&()>)
    }

    /// `GET /v1/health`.
    pub fn health(&self) -> Result<Health, ClientError> {
        self.get("/v1/health")
    }
    /// `GET /v1/ports`.
    pub fn ports(&self) -> Result<Vec<PortInfo>, ClientError> {
        self.get("/v1/ports")
    }
    /// `GET /v1/ports/NAME`.
    pub fn port(&self, name: &str) -> Result<PortInfo, ClientError> {
        self.get(&format!("/v1/ports/{}", segment(name)))
    }
    /// `POST /v1/ports`.
    pub fn add_port(&self, port: &PortConfig) -> Result<PortInfo, ClientError> {
        self.call("POST", "/v1/ports", Some(port))
    }
    /// `DELETE /v1/ports/NAME`.
    pub fn remove_port(&self, name: &str) -> Result<Removed, ClientError> {
        self.call(
            "DELETE",
            &format!("/v1/ports/{}", segment(name)),
            None::<&()>,
        )
    }
    /// `GET /v1/ports/NAME/policy`.
    pub fn policy(&self, name: &str) -> Result<PolicyInfo, ClientError> {
        self.get(&format!("/v1/ports/{}/policy", segment(name)))
    }
    /// `PUT /v1/ports/NAME/policy`.
    pub fn set_policy(&self, name: &str, p: &PolicyConfig) -> Result<PolicyInfo, ClientError> {
        self.call(
            "PUT",
            &format!("/v1/ports/{}/policy", segment(name)),
            Some(p),
        )
    }
    /// `PUT /v1/ports/NAME/tags`.
    pub fn set_tags(&self, name: &str, tags: &Tags) -> Result<PortInfo, ClientError> {
        self.call(
            "PUT",
            &format!("/v1/ports/{}/tags", segment(name)),
            Some(tags),
        )
    }
    /// `GET /v1/conns` or `GET /v1/ports/NAME/conns`.
    pub fn conns(&self, name: Option<&str>) -> Result<Vec<ConnView>, ClientError> {
        match name {
            Some(n) => self.get(&format!("/v1/ports/{}/conns", segment(n))),
            None => self.get("/v1/conns"),
        }
    }
    /// `DELETE /v1/ports/NAME/conns`.
    pub fn flush(&self, name: &str) -> Result<Flushed, ClientError> {
        self.call(
            "DELETE",
            &format!("/v1/ports/{}/conns", segment(name)),
            None::<&()>,
        )
    }
    /// `POST /v1/ports/NAME/trace`.
    pub fn start_trace(&self, name: &str, count: u32) -> Result<TraceStarted, ClientError> {
        self.call(
            "POST",
            &format!("/v1/ports/{}/trace", segment(name)),
            Some(&TraceRequest { count }),
        )
    }
    /// `GET /v1/ports/NAME/trace`.
    pub fn trace(&self, name: &str) -> Result<TraceInfo, ClientError> {
        self.get(&format!("/v1/ports/{}/trace", segment(name)))
    }
    /// `GET /v1/macs`.
    pub fn macs(&self) -> Result<Vec<MacInfo>, ClientError> {
        self.get("/v1/macs")
    }
    /// `GET /v1/conntrack`.
    pub fn conntrack(&self) -> Result<ConntrackInfo, ClientError> {
        self.get("/v1/conntrack")
    }
    /// `GET /v1/stats`.
    pub fn stats(&self) -> Result<StatsInfo, ClientError> {
        self.get("/v1/stats")
    }
    /// `GET /v1/policy`.
    pub fn policy_doc(&self) -> Result<PolicyDoc, ClientError> {
        self.get("/v1/policy")
    }
    /// `GET /v1/ports/NAME/conns/export`.
    pub fn export_conns(&self, name: &str) -> Result<ConnExport, ClientError> {
        self.get(&format!("/v1/ports/{}/conns/export", segment(name)))
    }
    /// `POST /v1/ports/NAME/conns/handover`.
    pub fn hand_over(&self, name: &str, via: &str) -> Result<HandedOver, ClientError> {
        self.call(
            "POST",
            &format!("/v1/ports/{}/conns/handover", segment(name)),
            Some(&Handover {
                via: via.to_string(),
            }),
        )
    }
    /// `POST /v1/ports/NAME/conns/import[?remote=PORT]`.
    pub fn import_conns(
        &self,
        name: &str,
        export: &ConnExport,
        remote: Option<&str>,
    ) -> Result<Imported, ClientError> {
        let q = remote.map_or(String::new(), |r| format!("?remote={}", segment(r)));
        self.call(
            "POST",
            &format!("/v1/ports/{}/conns/import{q}", segment(name)),
            Some(export),
        )
    }
    /// `PUT /v1/policy[?dry_run=true]`.
    pub fn apply_policy(
        &self,
        doc: &Document,
        dry_run: bool,
    ) -> Result<PolicyApplied, ClientError> {
        let q = if dry_run { "?dry_run=true" } else { "" };
        self.call("PUT", &format!("/v1/policy{q}"), Some(doc))
    }
    /// `GET /v1/policy/history`.
    pub fn policy_history(&self) -> Result<Vec<RevisionInfo>, ClientError> {
        self.get("/v1/policy/history")
    }
    /// `DELETE /v1/policy/apps/NAME[?dry_run=true]`.
    pub fn remove_app(&self, app: &str, dry_run: bool) -> Result<PolicyApplied, ClientError> {
        let q = if dry_run { "?dry_run=true" } else { "" };
        self.call(
            "DELETE",
            &format!("/v1/policy/apps/{}{q}", segment(app)),
            None::<&()>,
        )
    }
    /// `DELETE /v1/ports/NAME/addresses/ADDR`.
    pub fn forget_address(&self, name: &str, addr: &str) -> Result<Vec<AddressInfo>, ClientError> {
        self.call(
            "DELETE",
            &format!("/v1/ports/{}/addresses/{}", segment(name), segment(addr)),
            None::<&()>,
        )
    }
    /// `GET /v1/groups`.
    pub fn groups(&self) -> Result<Vec<GroupInfo>, ClientError> {
        self.get("/v1/groups")
    }
    /// `POST /v1/reach`.
    pub fn reach(&self, req: &ReachRequest) -> Result<ReachInfo, ClientError> {
        self.call("POST", "/v1/reach", Some(req))
    }
}

async fn send<S>(stream: S, req: Request<Full<Bytes>>) -> std::io::Result<(u16, Vec<u8>)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    let driver = tokio::spawn(conn);
    let resp = tx.send_request(req).await.map_err(std::io::Error::other)?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes()
        .to_vec();
    driver.abort();
    Ok((status, body))
}

/// One raw request to the Unix socket `sock`: (status, body text). For tests and tools that
/// want to see exactly what the API sends.
pub fn call(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), ClientError> {
    let c = Client::unix(sock).map_err(|e| ClientError::Unreachable(e.to_string()))?;
    let (status, bytes) = c.raw(method, path, body.map(|b| b.as_bytes().to_vec()))?;
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}
