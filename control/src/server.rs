//! The API server: HTTP/1.1 and JSON on axum and hyper, on tokio, on the control threads
//! only (never a worker's CPU). It listens on the Unix socket `<run-dir>/api.sock` and,
//! optionally, on TCP, where every request needs `Authorization: Bearer <token>`.
//!
//! The routes and the OpenAPI document come from one definition: each handler carries its
//! `#[utoipa::path]`, and `router` collects both, so a route cannot exist undocumented.
//! `docs/openapi.json` is that document; a test checks it is current, and CI runs schemathesis
//! against a running bulwarkd with it.
//!
//! Limits that hold whatever the client does (`Limits`): a request head of at most 16 KiB that
//! must arrive within 5 s, a body of at most 16 MiB, and 30 s for the whole exchange from
//! accept to the last byte of the response; one request per connection; at most 128
//! connections at once (further ones wait in the listen backlog). Requests are served
//! concurrently; the agent's blocking calls run on tokio's blocking threads.
//!
//! Every error is `{"error": "...", "field": "..."}` (`model::ApiError`) with a 4xx/5xx status,
//! including unknown paths, wrong methods, bad JSON and oversized bodies.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::{header, request::Parts, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::agent::Agent;
use crate::config::PortConfig;
use crate::document::{Document, Format};
use crate::model::{
    AddressInfo, ApiError, ConnExport, ConnView, ConntrackInfo, Flushed, GroupInfo, HandedOver,
    Handover, Health, Imported, MacInfo, PolicyApplied, PolicyDoc, PolicyInfo, PortInfo, ReachInfo,
    ReachRequest, Removed, RevisionInfo, StatsInfo, Tags, TraceInfo, TraceRequest, TraceStarted,
};
use crate::policy::PolicyConfig;

/// What one client may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request head (request line and headers), bytes; hyper's floor is 8 KiB.
    pub max_head_bytes: usize,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Time for the request head to arrive.
    pub head_timeout: Duration,
    /// Time for the whole exchange, from accept to the end of the response.
    pub request_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 16 * 1024,
            max_body_bytes: 16 * 1024 * 1024,
            head_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_connections: 128,
        }
    }
}

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self)).into_response()
    }
}

/// The document's frame: title, version, and the bearer scheme of the TCP listener.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "bulwarkd API",
        description = "The management API of bulwarkd, the bulwark virtual switch. On the Unix \
socket `<run-dir>/api.sock` no credentials are needed (the socket's permissions guard it); on \
the optional TCP listener every request needs `Authorization: Bearer <token>`.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerOnTcp),
    tags((name = "bulwark", description = "ports, policies, connections and counters"))
)]
struct ApiDoc;

struct BearerOnTcp;

impl Modify for BearerOnTcp {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every route, with its part of the document.
fn routes() -> OpenApiRouter<Arc<Agent>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(list_ports, add_port))
        .routes(routes!(show_port, remove_port))
        .routes(routes!(show_policy, set_policy))
        .routes(routes!(set_tags))
        .routes(routes!(forget_address))
        .routes(routes!(port_conns, flush_conns))
        .routes(routes!(export_conns))
        .routes(routes!(hand_over))
        .routes(routes!(import_conns))
        .routes(routes!(start_trace, read_trace))
        .routes(routes!(all_conns))
        .routes(routes!(conntrack))
        .routes(routes!(macs))
        .routes(routes!(stats))
        .routes(routes!(get_policy_doc, apply_policy_doc))
        .routes(routes!(policy_history))
        .routes(routes!(remove_app))
        .routes(routes!(groups))
        .routes(routes!(reach))
}

/// The OpenAPI document of every route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = routes().split_for_parts();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// The document as `docs/openapi.json` holds it (and `GET /v1/openapi.json` serves it).
pub fn openapi_json() -> String {
    let mut s = openapi().to_pretty_json().unwrap_or_default();
    s.push('\n');
    s
}

/// The routes over `agent`, plus `GET /v1/openapi.json`, JSON errors for unknown paths and
/// methods, and the body limit of `limits`.
pub fn router(agent: Arc<Agent>, limits: &Limits) -> Router {
    let max_body = limits.max_body_bytes;
    let spec: Arc<str> = openapi_json().into();
    let (router, _) = routes().with_state(agent).split_for_parts();
    router
        .route(
            "/v1/openapi.json",
            axum::routing::get(move || {
                let spec = spec.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        spec.to_string(),
                    )
                }
            }),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // A body that is sent without a length is cut at the limit as it is read (`Body`);
        // one whose Content-Length is over it is refused before a byte of it is read.
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(
            move |req: Request, next: Next| refuse_large(req, next, max_body),
        ))
}

async fn refuse_large(req: Request, next: Next, max: usize) -> Response {
    let len = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match len {
        Some(n) if n > max as u64 => ApiError::with(
            413,
            "Content-Length",
            format!("a body of {n} bytes is over the limit of {max}"),
        )
        .into_response(),
        _ => next.run(req).await,
    }
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {}", req.uri().path()))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::with(
        405,
        "",
        format!("{} not allowed on {}", req.method(), req.uri().path()),
    )
}

/// Requires `Authorization: Bearer <token>` (the TCP listener's guard).
async fn require_token(State(token): State<Arc<str>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), token.as_bytes()) {
        next.run(req).await
    } else {
        let mut r = ApiError::with(
            401,
            "Authorization",
            "a bearer token is required (Authorization: Bearer <token>)",
        )
        .into_response();
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
        r
    }
}

/// Compares without an early exit, so the time taken does not tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves `app` on a Unix socket until the listener fails for good.
pub async fn serve_unix(listener: tokio::net::UnixListener, app: Router, limits: Limits) {
    serve(|| listener.accept(), app, limits).await
}

/// Serves `app` on TCP, every request needing `token` as its bearer token.
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    app: Router,
    token: Arc<str>,
    limits: Limits,
) {
    let app = app.layer(axum::middleware::from_fn_with_state(token, require_token));
    serve(|| listener.accept(), app, limits).await
}

async fn serve<F, Fut, S, A>(mut accept: F, app: Router, limits: Limits)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::io::Result<(S, A)>>,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors and the like: wait a little rather than spin.
                tracing::warn!("api: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            serve_connection(stream, app, limits).await;
            drop(slot);
        });
    }
}

async fn serve_connection<S>(stream: S, app: Router, limits: Limits)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper_util::service::TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .max_buf_size(limits.max_head_bytes.max(8192))
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), svc);
    match tokio::time::timeout(limits.request_timeout, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!("api: connection ended: {e}"),
        Err(_) => tracing::debug!(
            "api: request took longer than {:?}; connection closed",
            limits.request_timeout
        ),
    }
}

/// Runs one of the agent's blocking calls off the async threads.
async fn blocking<T, F>(f: F) -> Result<Json<T>, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("request handler failed: {e}")))?
        .map(Json)
}

/// A JSON request body, whatever its Content-Type; errors name the field serde names.
struct Body<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(de).map(Body).map_err(|e| {
            let path = e.path().to_string();
            let msg = e.inner().to_string();
            // The path names the field (`policy.egress[1].action`); at the top level serde
            // names a missing field only in its message: surface the name.
            let field = if path.is_empty() || path == "." {
                msg.split('`').nth(1).unwrap_or("").to_string()
            } else {
                path
            };
            ApiError::bad(field, msg)
        })
    }
}

/// A request's body, within the size limit.
async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state)
        .await
        .map_err(|e| match e.status().as_u16() {
            413 => ApiError::with(413, "", "the body is over the size limit"),
            status => ApiError::with(status, "", e.body_text()),
        })
}

/// A policy document (JSON) as the body; errors name the field by its whole path
/// (`policies[0].rules[2].action`).
struct DocBody(Document);

impl<S: Send + Sync> FromRequest<S> for DocBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| ApiError::bad("", format!("the body is not UTF-8: {e}")))?;
        Ok(DocBody(Document::parse(text, Format::Json)?))
    }
}

/// `?dry_run=true`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct DryRun {
    /// Report what would change and change nothing.
    #[serde(default)]
    dry_run: bool,
}

struct Query<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| ApiError::with(e.status().as_u16(), "query", e.body_text()))
    }
}

/// A port name from the path.
struct Name(String);

impl<S: Send + Sync> FromRequestParts<S> for Name {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|p| Name(p.0))
            .map_err(|e| ApiError::with(e.status().as_u16(), "name", e.body_text()))
    }
}

/// A port name and an address from the path.
struct NameAddr(String, String);

impl<S: Send + Sync> FromRequestParts<S> for NameAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map(|p| NameAddr(p.0 .0, p.0 .1))
            .map_err(|e| ApiError::with(e.status().as_u16(), "name", e.body_text()))
    }
}

type AgentState = State<Arc<Agent>>;

/// Is bulwarkd up?
#[utoipa::path(get, path = "/v1/health", tag = "bulwark",
    responses((status = 200, description = "bulwarkd answers", body = Health)))]
async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// All ports, with their state and counters.
#[utoipa::path(get, path = "/v1/ports", tag = "bulwark",
    responses((status = 200, description = "every port", body = Vec<PortInfo>)))]
async fn list_ports(State(a): AgentState) -> Result<Json<Vec<PortInfo>>, ApiError> {
    blocking(move || Ok(a.ports())).await
}

/// Adds a port (as the config file writes one) and persists it in the run directory.
#[utoipa::path(post, path = "/v1/ports", tag = "bulwark", request_body = PortConfig,
    responses(
        (status = 201, description = "added", body = PortInfo),
        (status = 400, description = "a field is wrong (named in `field`)", body = ApiError),
        (status = 409, description = "the name, socket or UUID is taken, or the switch is full", body = ApiError),
        (status = 413, description = "body too large", body = ApiError)))]
async fn add_port(
    State(a): AgentState,
    Body(cfg): Body<PortConfig>,
) -> Result<(StatusCode, Json<PortInfo>), ApiError> {
    let info = blocking(move || a.add_port(cfg, true)).await?;
    Ok((StatusCode::CREATED, info))
}

/// One port.
#[utoipa::path(get, path = "/v1/ports/{name}", tag = "bulwark",
    params(("name" = String, Path, description = "port name")),
    responses(
        (status = 200, description = "the port", body = PortInfo),
        (status = 404, description = "no such port", body = ApiError)))]
async fn show_port(State(a): AgentState, Name(name): Name) -> Result<Json<PortInfo>, ApiError> {
    blocking(move || a.port(&name)).await
}

/// Removes a port: the workers stop using it, its socket closes, its connections go.
#[utoipa::path(delete, path = "/v1/ports/{name}", tag = "bulwark",
    params(("name" = String, Path, description = "port name")),
    responses(
        (status = 200, description = "removed", body = Removed),
        (status = 404, description = "no such port", body = ApiError)))]
async fn remove_port(State(a): AgentState, Name(name): Name) -> Result<Json<Removed>, ApiError> {
    blocking(move || a.remove_port(&name).map(|()| Removed { removed: name })).await
}

/// A port's policy, with per-rule counters.
#[utoipa::path(get, path = "/v1/ports/{name}/policy", tag = "bulwark",
    params(("name" = String, Path, description = "port name")),
    responses(
        (status = 200, description = "the policy", body = PolicyInfo),
        (status = 404, description = "no such port", body = ApiError)))]
async fn show_policy(State(a): AgentState, Name(name): Name) -> Result<Json<PolicyInfo>, ApiError> {
    blocking(move || a.policy(&name)).await
}

/// Replaces a port's policy. Connections it no longer allows are cut on their next packet.
#[utoipa::path(put, path = "/v1/ports/{name}/policy", tag = "bulwark", request_body = PolicyConfig,
    params(("name" = String, Path, description = "port name")),
    responses(
        (status = 200, description = "the new policy", body = PolicyInfo),
        (status = 400, description = "a field is wrong (named in `field`)", body = ApiError),
        (status = 404, description = "no such port", body = ApiError),
        (status = 413, description = "body too large", body = ApiError)))]
async fn set_policy(
    State(a): AgentState,
    Name(name): Name,
    Body(p): Body<PolicyConfig>,
) -> Result<Json<PolicyInfo>, ApiError> {
    blocking(move || a.set_policy(&name, p)).await
}

/// Replaces a vNIC's tags (all of them: a tag not named is removed). The policy does not
/// change.
#[utoipa::path(put, path = "/v1/ports/{name}/tags", tag = "bulwark", request_body = Tags,
    params(("name" = String, Path, description = "port name")),
    responses(
        (status = 200, description = "the port, with its new tags", body = PortInfo),
        (status = 400, description = "a field is wrong (named in `field`)", body = ApiError),
        (status = 404, description = "no such port", body = ApiError),
        (status = 413, description = "body too large", body = ApiError)))]
async fn set_tags(
    State(a): AgentState,
    Name(name): Name,
    Body(t): Body<Tags>,
) -> Result<Json<PortInfo>, ApiError> {
    blocking(move || a.set_tags(&name, t.tags)).await
}

/// A port's tracked connections (it is either end).
#[utoipa::path(get, path = "/v1/ports/{name}/conns", tag = "bulwark",
    params(("name" = String, Path, description = "port name")),
    responses(
        (status = 200, description = "its connections", body = Vec<ConnView>),
        (status = 404, description = "no such port", body = ApiError)))]
async fn port_conns(
    State(a): AgentState,
    Name(name): Name,
) -> Result<Json<Vec<ConnView>>, ApiError> {
    blocking(move || a.conns(Some(&name))).await
}

/// Drops a port's tracked connections.
#[utoipa::path(delete, path = "/v1/ports/{name}/conns", tag = "bulwark",
    params(("name" = String, Path, description = "port name")),
    responses(
        (status = 200, description = "how many were dropped", body = Flushed),
        (status = 404, description = "no such port", body = ApiError)))]
async fn flush_conns(State(a): AgentState, Name(name): Name) -> Result<Json<Flushed>, ApiError> {
    blocking(move || a.flush(&name).map(|flushed| Flushed { flushed })).await
}

/// A port's tracked connections, exported for another switch (its guest is migrating
/// there); the table is not changed. `docs/MIGRATION.md`.
#[utoipa::path(get, path = "/v1/ports/{name}/conns/export", tag = "bulwark",
    params(("name" = String, Path, description = "port name")),
    responses(
        (status = 200, description = "the connections", body = ConnExport),
        (status = 404, description = "no such port", body = ApiError)))]
async fn export_conns(
    State(a): AgentState,
    Name(name): Name,
) -> Result<Json<ConnExport>, ApiError> {
    blocking(move || a.export_conns(&name)).await
}

/// The source switch's side of a migration, when the guest has moved: exports the port's
/// connections (for the destination's import) and hands them over here: those with a vNIC
/// that stays go through `via` (the port towards the guest's new switch) from now on, the
/// others are removed.
#[utoipa::path(post, path = "/v1/ports/{name}/conns/handover", tag = "bulwark",
    params(("name" = String, Path, description = "port name")),
    request_body = Handover,
    responses(
        (status = 200, description = "exported and handed over", body = HandedOver),
        (status = 400, description = "`via` is not another port", body = ApiError),
        (status = 404, description = "no such port", body = ApiError)))]
async fn hand_over(
    State(a): AgentState,
    Name(name): Name,
    Body(h): Body<Handover>,
) -> Result<Json<HandedOver>, ApiError> {
    blocking(move || a.hand_over(&name, &h.via)).await
}

/// `?remote=PORT`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Remote {
    /// The port that reaches the vNICs the connections name that are not on this switch
    /// (required when there are any).
    remote: Option<String>,
}

/// The destination switch's side of a migration: takes another switch's export of a vNIC's
/// connections into this port. The exported vNIC becomes this port, a vNIC of this switch
/// (same UUID) stays itself, any other end becomes `remote`. Each connection is charged to
/// its owner's limit and judged by this switch's rules on its next packet. At most 16 MiB of
/// body (about 140,000 connections); `bulwarkctl port import` sends a bigger export in parts.
#[utoipa::path(post, path = "/v1/ports/{name}/conns/import", tag = "bulwark",
    params(("name" = String, Path, description = "port name"), Remote),
    request_body = ConnExport,
    responses(
        (status = 200, description = "imported", body = Imported),
        (status = 400, description = "a field is wrong (named in `field`)", body = ApiError),
        (status = 404, description = "no such port", body = ApiError),
        (status = 413, description = "body too large", body = ApiError)))]
async fn import_conns(
    State(a): AgentState,
    Name(name): Name,
    Query(q): Query<Remote>,
    Body(e): Body<ConnExport>,
) -> Result<Json<Imported>, ApiError> {
    blocking(move || a.import_conns(&name, &e, q.remote.as_deref())).await
}

/// Every tracked connection.
#[utoipa::path(get, path = "/v1/conns", tag = "bulwark",
    responses((status = 200, description = "all connections", body = Vec<ConnView>)))]
async fn all_conns(State(a): AgentState) -> Result<Json<Vec<ConnView>>, ApiError> {
    blocking(move || a.conns(None)).await
}

/// The connection table's size and use.
#[utoipa::path(get, path = "/v1/conntrack", tag = "bulwark",
    responses((status = 200, description = "the table", body = ConntrackInfo)))]
async fn conntrack(State(a): AgentState) -> Result<Json<ConntrackInfo>, ApiError> {
    blocking(move || Ok(a.conntrack())).await
}

/// The MAC learning table.
#[utoipa::path(get, path = "/v1/macs", tag = "bulwark",
    responses((status = 200, description = "learned addresses", body = Vec<MacInfo>)))]
async fn macs(State(a): AgentState) -> Result<Json<Vec<MacInfo>>, ApiError> {
    blocking(move || Ok(a.macs())).await
}

/// Workers, every drop reason described, and every port's counters.
#[utoipa::path(get, path = "/v1/stats", tag = "bulwark",
    responses((status = 200, description = "the counters", body = StatsInfo)))]
async fn stats(State(a): AgentState) -> Result<Json<StatsInfo>, ApiError> {
    blocking(move || Ok(a.stats())).await
}

/// Traces the next `count` frames the port's guest sends, through every stage of the frame
/// path; `GET` the same path for the records. Earlier records are discarded.
#[utoipa::path(post, path = "/v1/ports/{name}/trace", tag = "bulwark", request_body = TraceRequest,
    params(("name" = String, Path, description = "port name")),
    responses(
        (status = 200, description = "tracing", body = TraceStarted),
        (status = 400, description = "a field is wrong (named in `field`)", body = ApiError),
        (status = 404, description = "no such port", body = ApiError),
        (status = 413, description = "body too large", body = ApiError)))]
async fn start_trace(
    State(a): AgentState,
    Name(name): Name,
    Body(req): Body<TraceRequest>,
) -> Result<Json<TraceStarted>, ApiError> {
    blocking(move || a.start_trace(&name, req.count)).await
}

/// The trace records collected since the last call (each is handed out once).
#[utoipa::path(get, path = "/v1/ports/{name}/trace", tag = "bulwark",
    params(("name" = String, Path, description = "port name")),
    responses(
        (status = 200, description = "the records", body = TraceInfo),
        (status = 404, description = "no such port", body = ApiError)))]
async fn read_trace(State(a): AgentState, Name(name): Name) -> Result<Json<TraceInfo>, ApiError> {
    blocking(move || a.trace(&name)).await
}

/// The running policy document and its revision.
#[utoipa::path(get, path = "/v1/policy", tag = "bulwark",
    responses((status = 200, description = "the document", body = PolicyDoc)))]
async fn get_policy_doc(State(a): AgentState) -> Result<Json<PolicyDoc>, ApiError> {
    blocking(move || Ok(a.policy_doc())).await
}

/// Applies a policy document as a whole (all or nothing). With `base_revision`, refused
/// when another revision landed since. With `?dry_run=true`, reports the change per vNIC
/// (rules added and removed, connections that would be cut) and changes nothing.
#[utoipa::path(put, path = "/v1/policy", tag = "bulwark", request_body = Document,
    params(DryRun),
    responses(
        (status = 200, description = "applied (or, dry run, what would change)", body = PolicyApplied),
        (status = 400, description = "a field is wrong (named in `field`)", body = ApiError),
        (status = 409, description = "`base_revision` is not the running revision", body = ApiError),
        (status = 413, description = "body too large", body = ApiError)))]
async fn apply_policy_doc(
    State(a): AgentState,
    Query(q): Query<DryRun>,
    DocBody(doc): DocBody,
) -> Result<Json<PolicyApplied>, ApiError> {
    blocking(move || a.apply_policy(doc, q.dry_run)).await
}

/// The revision history of the policy, oldest first (the last 1000).
#[utoipa::path(get, path = "/v1/policy/history", tag = "bulwark",
    responses((status = 200, description = "revisions", body = Vec<RevisionInfo>)))]
async fn policy_history(State(a): AgentState) -> Result<Json<Vec<RevisionInfo>>, ApiError> {
    blocking(move || Ok(a.policy_history())).await
}

/// Removes every service, group and policy an application owns, as a new revision;
/// refused (naming the referrer) if an object that stays refers to one of them.
#[utoipa::path(delete, path = "/v1/policy/apps/{name}", tag = "bulwark",
    params(("name" = String, Path, description = "application name"), DryRun),
    responses(
        (status = 200, description = "removed (or, dry run, what would change)", body = PolicyApplied),
        (status = 400, description = "an object that stays refers to one of the application's (named in `field`)", body = ApiError),
        (status = 404, description = "the application owns nothing", body = ApiError)))]
async fn remove_app(
    State(a): AgentState,
    Name(name): Name,
    Query(q): Query<DryRun>,
) -> Result<Json<PolicyApplied>, ApiError> {
    blocking(move || a.remove_app(&name, q.dry_run)).await
}

/// The policy document's groups with the vNICs in them now.
#[utoipa::path(get, path = "/v1/groups", tag = "bulwark",
    responses((status = 200, description = "groups and members", body = Vec<GroupInfo>)))]
async fn groups(State(a): AgentState) -> Result<Json<Vec<GroupInfo>>, ApiError> {
    blocking(move || Ok(a.groups())).await
}

/// May one vNIC open a connection to another, and by which rules? Answered from the
/// compiled rules; no packet is sent.
#[utoipa::path(post, path = "/v1/reach", tag = "bulwark", request_body = ReachRequest,
    responses(
        (status = 200, description = "the verdicts", body = ReachInfo),
        (status = 400, description = "a field is wrong (named in `field`)", body = ApiError),
        (status = 413, description = "body too large", body = ApiError)))]
async fn reach(
    State(a): AgentState,
    Body(req): Body<ReachRequest>,
) -> Result<Json<ReachInfo>, ApiError> {
    blocking(move || a.reach(&req)).await
}

/// Unbinds an address the vNIC learned (ARP, ND, first use, DHCP); its static addresses are
/// its config's. Returns the addresses it keeps.
#[utoipa::path(delete, path = "/v1/ports/{name}/addresses/{address}", tag = "bulwark",
    params(("name" = String, Path, description = "port name"),
           ("address" = String, Path, description = "IPv4 or IPv6 address")),
    responses(
        (status = 200, description = "the addresses it keeps", body = Vec<AddressInfo>),
        (status = 400, description = "not an address", body = ApiError),
        (status = 404, description = "no such port, or it has no such address", body = ApiError),
        (status = 409, description = "a static address", body = ApiError)))]
async fn forget_address(
    State(a): AgentState,
    NameAddr(name, addr): NameAddr,
) -> Result<Json<Vec<AddressInfo>>, ApiError> {
    blocking(move || a.forget_address(&name, &addr)).await
}
