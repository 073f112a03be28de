//! The HTTPS API for coordinators, auditors and admins (`pulihctl`), and
//! Prometheus metrics, on `[api] listen`.
//!
//! * TLS with the controller's server certificate (the one agents pin via
//!   the CA); clients pin `pki/ca.pem`. A manual accept loop (as in
//!   [`crate::server`]) caps connections, times out handshakes and stops on
//!   the shutdown token.
//! * Every route is declared once in [`routes`] with the [`Access`] it
//!   needs; one middleware ([`authorize`]) checks the bearer token and the
//!   [`ROLE_MATRIX`]. No handler checks roles itself.
//! * Errors are JSON ([`types::ErrorBody`]); bodies are capped at
//!   [`MAX_BODY`]; request types refuse unknown fields; a panic in a handler
//!   becomes a 500, not a dead server.
//! * Failed authentications are rate-limited per client address.
//! * Catalog work runs on the blocking pool; long work (verify, restore,
//!   prune, GC, scrub) too, outside the catalog lock. Restores are confined
//!   below `[restore] root`.
//! * Every state change is written to the audit log with the caller as
//!   actor (`token:NAME`).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::{header, request::Parts, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::catalog::{Catalog, CatalogError, Role, TokenAuth};
use crate::metrics::Metrics;
use crate::session::Backend;

pub mod drills;
mod drp;
pub mod failover;
mod handlers;
mod lifecycle;
pub mod types;

use types::{ErrorBody, ErrorDetail};

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// Bytes of an oversized body read and dropped before answering 413.
const DRAIN_LIMIT: usize = 1024 * 1024;
/// Most API connections at once.
const MAX_CONNECTIONS: usize = 256;
/// Seconds a TLS handshake or a request's headers may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Seconds a request's body may take (64 KiB at most: 2 KiB/s). A client
/// trickling a body would otherwise hold a connection slot as long as it
/// liked.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// The OpenAPI document, kept in the repository and served as is.
pub const OPENAPI: &str = include_str!("../../../docs/api/openapi.json");

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// No token (the OpenAPI document, metrics).
    Public,
    /// Read the catalog, reports and audit log.
    Read,
    /// Verify, restore, drills, retention.
    Operate,
    /// Tokens, enrollment, revocation.
    Admin,
}

impl Access {
    fn describe(self) -> &'static str {
        match self {
            Access::Public => "use public endpoints",
            Access::Read => "read",
            Access::Operate => "run verify, restore or other operations",
            Access::Admin => "administer tokens and agents, or approve the DR plan",
        }
    }
}

/// What each role may do: the role matrix as data.
pub const ROLE_MATRIX: &[(Role, &[Access])] = &[
    (Role::Admin, &[Access::Public, Access::Read, Access::Operate, Access::Admin]),
    (Role::Coordinator, &[Access::Public, Access::Read, Access::Operate]),
    (Role::Auditor, &[Access::Public, Access::Read]),
];

/// Whether `role` may use a route needing `access`.
pub fn may(role: Role, access: Access) -> bool {
    ROLE_MATRIX.iter().any(|(r, allowed)| *r == role && allowed.contains(&access))
}

/// One route: method, path (axum syntax), what it needs, its handler.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    handler: MethodRouter<Arc<ApiState>>,
}

fn route<H, T>(method: Method, path: &'static str, access: Access, handler: H) -> Route
where
    H: axum::handler::Handler<T, Arc<ApiState>>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).expect("routes use standard methods");
    Route { method, path, access, handler: on(filter, handler) }
}

/// Every route of the API. The router, the role check and the OpenAPI
/// test all read this list.
pub fn routes(metrics: bool) -> Vec<Route> {
    use handlers as h;
    use Access::*;
    let mut v = vec![
        route(Method::GET, "/api/v1/openapi.json", Public, h::openapi),
        route(Method::GET, "/api/v1/agents", Read, h::agents),
        route(Method::POST, "/api/v1/agents/{name}/revoke", Admin, h::revoke_agent),
        route(Method::POST, "/api/v1/enroll-tokens", Admin, h::enroll_token),
        route(Method::GET, "/api/v1/snapshots", Read, h::snapshots),
        route(Method::GET, "/api/v1/snapshots/{id}", Read, h::snapshot),
        route(Method::POST, "/api/v1/verify", Operate, h::verify),
        route(Method::POST, "/api/v1/restore", Operate, h::restore),
        route(Method::GET, "/api/v1/tokens", Admin, h::tokens),
        route(Method::POST, "/api/v1/tokens", Admin, h::create_token),
        route(Method::DELETE, "/api/v1/tokens/{name}", Admin, h::revoke_token),
        route(Method::GET, "/api/v1/audit", Read, h::audit),
        route(Method::GET, "/api/v1/audit/verify", Read, h::audit_verify),
        route(Method::POST, "/api/v1/prune", Operate, lifecycle::prune),
        route(Method::POST, "/api/v1/snapshots/{id}/forget", Operate, lifecycle::forget),
        route(Method::POST, "/api/v1/gc", Operate, lifecycle::gc),
        route(Method::POST, "/api/v1/scrub", Operate, lifecycle::scrub_start),
        route(Method::GET, "/api/v1/scrub", Read, lifecycle::scrub_status),
        route(Method::GET, "/api/v1/damage", Read, lifecycle::damage),
        route(Method::POST, "/api/v1/drp/generate", Operate, drp::generate),
        route(Method::GET, "/api/v1/drp/versions", Read, drp::versions),
        route(Method::GET, "/api/v1/drp/versions/{version}", Read, drp::version),
        route(Method::GET, "/api/v1/drp/versions/{version}/file", Read, drp::file),
        route(Method::GET, "/api/v1/drp/versions/{version}/content", Read, drp::content),
        route(Method::POST, "/api/v1/drp/versions/{version}/approve", Admin, drp::approve),
        route(Method::POST, "/api/v1/failover", Operate, failover::failover),
        route(Method::POST, "/api/v1/failback", Operate, failover::failback),
        route(Method::GET, "/api/v1/failovers", Read, failover::failovers),
        route(Method::GET, "/api/v1/failovers/{id}", Read, failover::failover_one),
        route(Method::GET, "/api/v1/standby-jobs", Read, failover::jobs),
        route(Method::GET, "/api/v1/systems", Read, drills::systems),
        route(Method::POST, "/api/v1/drills", Operate, drills::start),
        route(Method::GET, "/api/v1/drills", Read, drills::list),
        route(Method::GET, "/api/v1/drills/{id}", Read, drills::show),
        route(Method::GET, "/api/v1/drills/{id}/report", Read, drills::report),
    ];
    if metrics {
        v.push(route(Method::GET, "/metrics", Public, h::metrics));
    }
    v
}

/// What the handlers share.
pub struct ApiState {
    pub backend: Arc<Backend>,
    /// Fingerprint of the controller's CA, returned with enrollment tokens.
    pub ca_fingerprint: String,
    /// Default lifetime of an enrollment token.
    pub enroll_ttl_hours: u64,
    pub metrics: Arc<Metrics>,
    pub limiter: FailureLimiter,
    /// The data directory: prune, GC and scrub open their own catalog
    /// connection and take its locks, as the local CLI does.
    pub datadir: crate::datadir::DataDir,
    /// API restores are confined below this directory (`[restore] root`).
    pub restore_root: std::path::PathBuf,
    /// Default rate of a scrub started over the API (`[scrub] rate`), bytes/s.
    pub scrub_rate: u64,
    /// The scrub running in this process (shared with the scheduled one).
    pub scrub: Arc<crate::scrub::ScrubTracker>,
    /// Inputs of the DR plan; `None` when `[drp]` cannot be resolved.
    pub drp: Option<crate::drp::DrpSettings>,
    /// Directory of the system definitions (failover, failback).
    pub systems_dir: std::path::PathBuf,
    /// The drill engine (`None`: drill endpoints answer 503).
    pub drills: Option<Arc<crate::drill::Engine>>,
}

impl ApiState {
    /// Runs catalog work on the blocking pool.
    pub async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Catalog) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let backend = self.backend.clone();
        tokio::task::spawn_blocking(move || {
            let mut cat = backend.catalog.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut cat)
        })
        .await
        .map_err(|e| ApiError::internal(format!("catalog task failed: {e}")))?
    }
}

/// The caller, as authenticated.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

impl Caller {
    /// The audit log's actor.
    pub fn actor(&self) -> String {
        format!("token:{}", self.name)
    }
}

/// The client's address, put on each request by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// An API error: a status and a JSON body.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::NotFound(m) => Self::not_found(m),
            CatalogError::Ambiguous(m) => Self::conflict(m),
            CatalogError::Invalid(m) => Self::bad_request(m),
            other => {
                warn!(error = %other, "catalog error in the API");
                Self::internal(other.to_string())
            }
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code.into(), message: self.message } };
        (self.status, axum::Json(body)).into_response()
    }
}

/// A JSON body: 413 when too large, 400 when not JSON, 422 when the JSON
/// does not fit the type (unknown or missing fields, wrong types).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        use http_body_util::BodyExt;
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("request body is larger than {MAX_BODY} bytes"),
            )
        };
        let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > DRAIN_LIMIT as u64) {
            return Err(too_large());
        }
        // Read at most MAX_BODY; past it keep reading (and dropping) up to
        // DRAIN_LIMIT, so a client still sending gets the 413 instead of a
        // reset connection.
        let mut body = req.into_body();
        let mut buf = Vec::new();
        let mut seen = 0usize;
        let read = async {
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
                if let Ok(data) = frame.into_data() {
                    seen += data.len();
                    if seen <= MAX_BODY {
                        buf.extend_from_slice(&data);
                    } else if seen > DRAIN_LIMIT {
                        break;
                    }
                }
            }
            Ok::<(), ApiError>(())
        };
        tokio::time::timeout(BODY_TIMEOUT, read).await.map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!("request body not received within {} s", BODY_TIMEOUT.as_secs()),
            )
        })??;
        if seen > MAX_BODY {
            return Err(too_large());
        }
        serde_json::from_slice(&buf).map(ApiJson).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => ApiError::invalid(format!("request body: {e}")),
            _ => ApiError::bad_request(format!("request body is not valid JSON: {e}")),
        })
    }
}

/// Query parameters; unknown ones are refused with 400.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// One path parameter.
pub struct ApiPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ApiPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// Failed authentications per client address over the last minute.
pub struct FailureLimiter {
    per_minute: u32,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

const WINDOW: Duration = Duration::from_secs(60);

impl FailureLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self { per_minute: per_minute.max(1), failures: Mutex::new(HashMap::new()) }
    }

    /// Whether `ip` used up its failures in the last minute.
    pub fn blocked(&self, ip: IpAddr) -> bool {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let Some(q) = map.get_mut(&ip) else { return false };
        while q.front().is_some_and(|t| t.elapsed() > WINDOW) {
            q.pop_front();
        }
        q.len() >= self.per_minute as usize
    }

    /// Counts a failure of `ip`.
    pub fn fail(&self, ip: IpAddr) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded memory under a spray of addresses: forget quiet ones.
        if map.len() > 10_000 {
            map.retain(|_, q| q.back().is_some_and(|t| t.elapsed() <= WINDOW));
        }
        let q = map.entry(ip).or_default();
        q.push_back(Instant::now());
        while q.len() > self.per_minute as usize {
            q.pop_front();
        }
    }
}

fn bearer(headers: &axum::http::HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned()).filter(|t| !t.is_empty())
}

fn unauthorized(message: String) -> Response {
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    r
}

/// The one place where tokens and roles are checked.
async fn authorize(st: Arc<ApiState>, access: Access, mut req: Request, next: Next) -> Response {
    if access == Access::Public {
        return next.run(req).await;
    }
    let ip = req.extensions().get::<Peer>().map(|p| p.0.ip());
    if ip.is_some_and(|ip| st.limiter.blocked(ip)) {
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many failed authentications from this address; wait a minute",
        )
        .into_response();
    }
    let Some(token) = bearer(req.headers()) else {
        return unauthorized("missing bearer token: send 'Authorization: Bearer TOKEN'".into());
    };
    let auth = match st.db(move |c| Ok(c.authenticate(&token)?)).await {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let why = match auth {
        TokenAuth::Valid { name, role } => {
            if !may(role, access) {
                let allowed: Vec<&str> =
                    ROLE_MATRIX.iter().filter(|(_, a)| a.contains(&access)).map(|(r, _)| r.as_str()).collect();
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!(
                        "this token's role {role} may not {} ({} {} needs role {})",
                        access.describe(),
                        req.method(),
                        req.uri().path(),
                        allowed.join(" or ")
                    ),
                )
                .into_response();
            }
            req.extensions_mut().insert(Caller { name, role });
            return next.run(req).await;
        }
        TokenAuth::Unknown => "unknown token".to_string(),
        TokenAuth::Revoked { name } => format!("token {name} was revoked"),
        TokenAuth::Expired { name } => format!("token {name} has expired"),
    };
    if let Some(ip) = ip {
        st.limiter.fail(ip);
        warn!(%ip, reason = %why, "API authentication failed");
    }
    unauthorized(why)
}

/// Counts every request by route and status, and gives axum's own empty
/// errors (405) a JSON body.
async fn finish(axum::extract::State(st): axum::extract::State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |m| m.as_str()).to_owned();
    let method = req.method().clone();
    let mut resp = next.run(req).await;
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED && !is_json(&resp) {
        resp = ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "bad_request", format!("{method} is not allowed here"))
            .into_response();
    }
    st.metrics.api_request(&route, method.as_str(), resp.status().as_u16());
    resp
}

fn is_json(resp: &Response) -> bool {
    resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"))
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!("no endpoint {} {}; see /api/v1/openapi.json", req.method(), req.uri().path()))
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("an API handler panicked");
    ApiError::internal("internal error (the controller log has details)").into_response()
}

/// The API's router.
pub fn router(state: Arc<ApiState>, metrics: bool) -> Router {
    let mut r: Router<Arc<ApiState>> = Router::new();
    for rt in routes(metrics) {
        let st = state.clone();
        let access = rt.access;
        let handler = rt
            .handler
            .route_layer(middleware::from_fn(move |req: Request, next: Next| authorize(st.clone(), access, req, next)));
        r = r.route(rt.path, handler);
    }
    r.fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), finish))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

/// The TLS configuration of the API: the controller's certificate, no
/// client certificates, HTTP/1.1.
pub fn tls_config(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(pulih_core::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("API TLS certificate")?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Serves `router` on `listener` until `shutdown`; then lets requests in
/// flight finish (bounded).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: CancellationToken,
) -> Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    info!(addr = %listener.local_addr()?, "API listening");
    let token = shutdown.clone();
    crate::listen::accept_loop(listener, MAX_CONNECTIONS, shutdown, Duration::from_secs(15), "api", |stream, peer| {
        let (acceptor, router, token) = (acceptor.clone(), router.clone(), token.clone());
        async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => return debug!(error = %e, "API TLS handshake failed"),
                Err(_) => return debug!("API TLS handshake timed out"),
            };
            let svc = tower::ServiceExt::map_request(router, move |mut r: Request<hyper::body::Incoming>| {
                r.extensions_mut().insert(Peer(peer));
                r
            });
            let svc = hyper_util::service::TowerToHyperService::new(svc);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r { debug!(error = %e, "API connection ended") },
                _ = token.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
                }
            }
        }
        .instrument(tracing::debug_span!("api", %peer))
    })
    .await;
    Ok(())
}

/// A body of JSON text (the OpenAPI document).
pub(crate) fn json_text(text: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], Body::from(text)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_matrix() {
        use Access::*;
        assert!(may(Role::Admin, Admin) && may(Role::Admin, Operate) && may(Role::Admin, Read));
        assert!(!may(Role::Coordinator, Admin) && may(Role::Coordinator, Operate) && may(Role::Coordinator, Read));
        assert!(!may(Role::Auditor, Admin) && !may(Role::Auditor, Operate) && may(Role::Auditor, Read));
        for r in Role::ALL {
            assert!(may(r, Public));
        }
    }

    #[test]
    fn limiter_blocks_after_n_failures_per_address() {
        let l = FailureLimiter::new(3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(!l.blocked(a));
            l.fail(a);
        }
        assert!(l.blocked(a));
        assert!(!l.blocked(b));
    }

    #[test]
    fn bearer_parsing() {
        let mut h = axum::http::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h).as_deref(), Some("abc"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    /// Every route is in the OpenAPI document with the same method, and
    /// the document has no operation the router lacks.
    #[test]
    fn openapi_lists_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..3]), Some("3.1"));
        let mut in_doc = Vec::new();
        for (path, ops) in doc["paths"].as_object().expect("paths") {
            for (m, op) in ops.as_object().expect("operations") {
                if ["get", "post", "put", "delete", "patch"].contains(&m.as_str()) {
                    in_doc.push((m.to_uppercase(), path.clone()));
                    let public = op.get("security").is_some_and(|s| s.as_array().is_some_and(Vec::is_empty));
                    let route =
                        routes(true).into_iter().find(|r| r.path == path && r.method.as_str() == m.to_uppercase());
                    if let Some(r) = route {
                        assert_eq!(public, r.access == Access::Public, "{m} {path}: security vs access");
                    }
                }
            }
        }
        let mut in_router: Vec<(String, String)> =
            routes(true).iter().map(|r| (r.method.to_string(), r.path.to_owned())).collect();
        in_doc.sort();
        in_router.sort();
        assert_eq!(in_doc, in_router);
    }

    /// A body trickled (here: stalled) past the deadline is answered 408
    /// and frees the connection.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_request_body_times_out_with_408() {
        use http_body_util::channel::Channel;
        let (mut tx, body) = Channel::<axum::body::Bytes>::new(1);
        tx.send_data(axum::body::Bytes::from_static(b"{\"na")).await.unwrap();
        let req = Request::post("/x").header(header::CONTENT_LENGTH, "100").body(Body::new(body)).unwrap();
        // Paused time jumps to the first deadline: without one of its own,
        // the extractor would make this test fail here instead of hang.
        let read = ApiJson::<serde_json::Value>::from_request(req, &());
        let err = match tokio::time::timeout(Duration::from_secs(3600), read).await {
            Ok(Err(e)) => e,
            Ok(Ok(_)) => panic!("a stalled body was accepted"),
            Err(_) => panic!("the extractor waited an hour for the body"),
        };
        assert_eq!(err.status, StatusCode::REQUEST_TIMEOUT);
        assert!(err.message.contains("30 s"), "{}", err.message);
        drop(tx);
    }

    #[tokio::test]
    async fn a_panicking_handler_gives_a_json_500() {
        use tower::ServiceExt;
        let app: Router = Router::new()
            .route("/boom", axum::routing::get(|| async { panic!("boom") as &'static str }))
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response));
        let resp = app.clone().oneshot(Request::get("/boom").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(is_json(&resp));
        // The service still answers afterwards.
        let resp = app.oneshot(Request::get("/boom").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn router_builds_with_and_without_metrics() {
        // Building panics on overlapping routes; do it in a test, not in production first.
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::create(&dir.path().join("s")).unwrap();
        let cat = Catalog::create(&dir.path().join("c.db"), "t").unwrap();
        let st = Arc::new(ApiState {
            backend: crate::server::open_backend(store, cat, 1 << 20),
            ca_fingerprint: String::new(),
            enroll_ttl_hours: 1,
            metrics: Arc::new(Metrics::new()),
            limiter: FailureLimiter::new(10),
            datadir: crate::datadir::DataDir::new(dir.path()),
            restore_root: dir.path().join("restores"),
            scrub_rate: 0,
            scrub: Default::default(),
            drp: None,
            systems_dir: dir.path().join("systems"),
            drills: None,
        });
        let _ = router(st.clone(), true);
        let _ = router(st, false);
    }
}
