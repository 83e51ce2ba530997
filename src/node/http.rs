//! The node's HTTP server (axum): `GET /healthz`, push webhooks at
//! `POST /hooks/{site}`, and the API (bearer token from `[http]
//! admin_token`): `GET /sites`, `GET /sites/{site}`, `GET /deploys/{id}`,
//! `POST /sites/{site}/deploy`, and Apache's requests for releases to
//! load on demand (`load.rs`). JSON in and out; every error is
//! `{"error": "..."}` with a status that says what kind it is.
//!
//! Handlers stay thin: webhook checks are `webhook`'s pure functions, and
//! every deploy goes through `Upstream`, which queues it in the registry
//! and runs it through the engine.
//!
//! The server is hyper's HTTP/1 under our own accept loop (`serve`), so
//! that no client can hold the node's resources: headers must arrive within
//! `[http] header_timeout` (which also closes idle keep-alive connections),
//! a body within `body_timeout` and only once the request is known to be
//! worth reading (a webhook for a configured site, an API call with the
//! token), and at most `max_connections` are served at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router, body::Bytes};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{Value, json};

use crate::config::HttpConfig;
use crate::engine::queue::{Enqueued, KEEP_FINISHED, Status};
use crate::engine::state::SiteState;
use crate::engine::upstream::redact;
use crate::layout::Layout;
use crate::names::SiteName;
use crate::node::Node;
use crate::node::listen::{self, Throttle};
use crate::node::webhook::{self, Event};

/// Delivery ids remembered for refusing replays, node-wide.
pub const REPLAY_CACHE: usize = 10_000;
/// Deploys and history lines `GET /sites/{site}` shows.
const RECENT: usize = 20;
/// The most of anything from a request that goes into a log line or an
/// answer.
const ECHO: usize = 100;

/// What a client of the HTTP server may hold, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    pub fn from_config(cfg: &HttpConfig) -> Limits {
        Limits {
            header_timeout: Duration::from_secs(cfg.header_timeout),
            max_connections: cfg.max_connections,
        }
    }
}

/// The answer to a connection over `max_connections`, written without
/// reading anything from it.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
Content-Type: application/json\r\n\
Retry-After: 1\r\n\
Connection: close\r\n\
Content-Length: 53\r\n\
\r\n\
{\"error\": \"too many connections; try again shortly\"}\n";

/// Connections over the cap being answered 503 at once; more than this
/// are closed without an answer, so a flood costs nothing either.
const REFUSING: usize = 32;

/// Serves `app` until the process ends. The accept loop never returns: an
/// accept error (out of file descriptors) is logged and retried.
pub async fn serve(listener: tokio::net::TcpListener, app: Router, limits: Limits) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let refusing = Arc::new(tokio::sync::Semaphore::new(REFUSING));
    let mut accept_errors = Throttle::default();
    let mut turned_away = Throttle::default();
    loop {
        let (stream, peer) = listen::accept(&listener, "http", &mut accept_errors).await;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Some(held) = turned_away.allow(Instant::now()) {
                tracing::warn!(
                    "http: answered 503 to {peer}: {} connections are open{}",
                    limits.max_connections,
                    listen::held_note(held)
                );
            }
            if let Ok(turn) = refusing.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    let _turn = turn;
                    refuse_busy(stream).await;
                });
            }
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!("http: connection from {peer}: {e}");
            }
        });
    }
}

/// Answers 503 without reading the request, then closes. What the client
/// sent is read and dropped for a moment first: closing a socket with
/// unread data resets the connection, and the client might lose the answer.
async fn refuse_busy(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let lingering = async {
        stream.write_all(BUSY).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        for _ in 0..16 {
            if stream.read(&mut sink).await? == 0 {
                break;
            }
        }
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), lingering).await;
}

pub fn router(api: Arc<Node>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/hooks/{site}", post(hook))
        .route("/sites", get(list_sites))
        .route("/sites/{site}", get(show_site))
        .route("/sites/{site}/deploy", post(deploy_site))
        .route("/deploys/{id}", get(show_deploy))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        // Apache's requests for hosts to load, whatever their path.
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            crate::node::load::door,
        ))
        .with_state(api)
}

/// Every error the HTTP side answers with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    /// A webhook without a valid signature.
    #[error("{0}")]
    BadSignature(String),
    /// An API request without the right bearer token.
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{1}")]
    Status(StatusCode, String),
    /// The node's own fault: the client learns that much, the node's log
    /// gets the detail.
    #[error("internal error on the node (the details are in its log)")]
    Internal(anyhow::Error),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadSignature(_) | ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Status(s, _) => *s,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(e) = &self {
            tracing::error!("http: {e:#}");
        }
        let status = self.status();
        let mut r = (status, Json(json!({ "error": self.to_string() }))).into_response();
        // An error may come before the request's body was read (an unknown
        // site, a missing token): the connection cannot carry another
        // request, and the client must be told so rather than find out by
        // writing into a closed socket.
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        if matches!(self, ApiError::Unauthorized(_)) {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"toppcloud\""),
            );
        }
        r
    }
}

/// Reads a request body of at most `limit` bytes within `[http]
/// body_timeout`: 413 for a larger one (at once when Content-Length says
/// so), 408 for one that does not arrive in time. Call it only once the
/// request is known to be worth reading.
async fn read_body(
    api: &Node,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::TooLarge(format!("the body is larger than {limit} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let timeout = Duration::from_secs(api.cfg.http.body_timeout);
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::BadRequest(format!("cannot read the body: {e}"))),
        Err(_) => Err(ApiError::Status(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the body did not arrive within {} s ([http] body_timeout)",
                timeout.as_secs()
            ),
        )),
    }
}

/// At most `ECHO` characters of something a request said.
pub(crate) fn echo(s: &str) -> String {
    // No control characters: nothing from a request may forge a log line.
    s.chars()
        .take(ECHO)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn no_route() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

async fn wrong_method() -> ApiError {
    ApiError::Status(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed here".into(),
    )
}

// ---- webhooks ------------------------------------------------------------

/// What a delivery turned out to be, for its answer and its log line.
struct Accepted {
    status: StatusCode,
    outcome: &'static str,
    body: Value,
    location: Option<String>,
}

impl IntoResponse for Accepted {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(self.body)).into_response();
        if let Some(loc) = self.location
            && let Ok(v) = HeaderValue::from_str(&loc)
        {
            r.headers_mut().insert(header::LOCATION, v);
        }
        r
    }
}

/// Who sent a delivery, as far as it is known, for its log line.
#[derive(Default)]
struct Sender {
    provider: Option<&'static str>,
    delivery: Option<String>,
}

async fn hook(
    State(api): State<Arc<Node>>,
    Path(site): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut sender = Sender::default();
    let result = receive(&api, &site, &headers, body, &mut sender).await;
    let provider = sender.provider.unwrap_or("unknown");
    let delivery = sender.delivery.as_deref().unwrap_or("-");
    let site = echo(&site);
    match result {
        Ok(a) => {
            let detail = match (a.body.get("deploy"), a.body.get("reason")) {
                (_, Some(reason)) => reason.as_str().unwrap_or_default().to_string(),
                (Some(id), None) => format!("deploy {}", id.as_str().unwrap_or_default()),
                (None, None) => String::new(),
            };
            tracing::info!(
                site = ?site, provider, delivery = ?delivery, outcome = a.outcome,
                "webhook {}: {detail}", a.outcome
            );
            a.into_response()
        }
        Err(e) => {
            tracing::warn!(
                site = ?site, provider, delivery = ?delivery, outcome = "rejected",
                "webhook rejected ({}): {e}", e.status().as_u16()
            );
            e.into_response()
        }
    }
}

fn ignored(reason: String) -> Accepted {
    Accepted {
        status: StatusCode::OK,
        outcome: "ignored",
        body: json!({ "status": "ignored", "reason": reason }),
        location: None,
    }
}

/// Verifies a delivery and, for a push to the deploy branch, queues a
/// deploy of the freshly fetched upstream head. The body is read only once
/// the site is known to take webhooks: anyone can send one, and an unknown
/// site must cost the node nothing.
async fn receive(
    api: &Arc<Node>,
    raw_site: &str,
    headers: &HeaderMap,
    body: Body,
    sender: &mut Sender,
) -> Result<Accepted, ApiError> {
    let unknown = || {
        ApiError::NotFound(format!(
            "no site {:?} takes webhooks on this node",
            echo(raw_site)
        ))
    };
    let site = SiteName::parse(raw_site, &api.cfg.domain).map_err(|_| unknown())?;
    let cfg = api
        .cfg
        .sites
        .get(&site)
        .filter(|s| s.upstream.is_some())
        .ok_or_else(unknown)?;
    let secret = cfg.secret().ok_or_else(|| {
        ApiError::Forbidden(format!(
            "site {site} accepts no webhooks: its webhook_secret is missing or empty in the node config"
        ))
    })?;
    let body = read_body(api, headers, body, api.cfg.http.max_body).await?;
    let provider = webhook::verify(headers, &body, secret.expose().as_bytes(), unix_now())
        .map_err(|e| ApiError::BadSignature(e.to_string()))?;
    sender.provider = Some(provider.name());
    let delivery = webhook::delivery_id(provider, headers);
    sender.delivery = delivery.clone();

    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if form {
        return Err(ApiError::UnsupportedMediaType(
            "form-encoded payloads are not read: set the webhook's content type to application/json".into(),
        ));
    }
    let json = webhook::parse_json(&body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let push = match webhook::event(provider, headers, &json)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?
    {
        Event::Ping => return Ok(ignored("ping: the hook works; nothing to deploy".into())),
        Event::Other(name) => {
            return Ok(ignored(format!(
                "event {name:?} is not a push; nothing to deploy"
            )));
        }
        Event::Push(p) => p,
    };
    let branch = api.upstream.branch(&site);
    if push.branch() != Some(branch.as_str()) {
        return Ok(ignored(format!(
            "push to {}; this site deploys {branch}",
            echo(&push.git_ref)
        )));
    }
    if push.deleted {
        return Ok(ignored(format!(
            "{branch} was deleted upstream; the live release stays"
        )));
    }

    let by = match (&delivery, &push.after) {
        (Some(d), _) => format!("{} delivery {}", provider.name(), d),
        (None, Some(after)) => format!(
            "{} push of {} (no delivery id)",
            provider.name(),
            echo(after)
        ),
        (None, None) => format!("{} push (no delivery id)", provider.name()),
    };
    // Checked and recorded under one lock, so two copies of a delivery
    // arriving together cannot both get through.
    let mut replays = api.replays.lock().unwrap_or_else(|e| e.into_inner());
    let key = delivery.map(|d| format!("{}:{d}", provider.name()));
    if let Some(k) = &key
        && let Some(id) = replays.get(k)
        // A delivery whose deploy failed did not deploy: the forge may
        // send it again ("redeliver") once the cause is fixed.
        && !api
            .upstream
            .registry()
            .get(id)
            .is_some_and(|d| d.status == Status::Failed)
    {
        let id = id.to_string();
        return Ok(Accepted {
            status: StatusCode::OK,
            outcome: "ignored",
            body: json!({
                "status": "duplicate",
                "reason": format!("delivery seen before (deploy {id}); not deployed again"),
                "deploy": id,
            }),
            location: Some(format!("/deploys/{id}")),
        });
    }
    let queued = api.upstream.request(&site, by, false);
    if let Some(k) = key {
        replays.insert(k, queued.id().to_string());
    }
    drop(replays);
    Ok(accepted(&queued))
}

fn accepted(queued: &Enqueued) -> Accepted {
    let id = queued.id();
    let queue = match queued {
        Enqueued::Start(_) => "started",
        Enqueued::Pending(_) => "pending behind the running deploy",
        Enqueued::Joined(_) => "joined the pending deploy",
    };
    Accepted {
        status: StatusCode::ACCEPTED,
        outcome: "accepted",
        body: json!({
            "status": "accepted",
            "deploy": id,
            "queue": queue,
            "location": format!("/deploys/{id}"),
        }),
        location: Some(format!("/deploys/{id}")),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

// ---- the API -------------------------------------------------------------

/// Proof that a request carried the admin token.
pub struct Admin;

impl FromRequestParts<Arc<Node>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Node>) -> Result<Admin, ApiError> {
        let Some(token) = api.cfg.http.admin_token() else {
            return Err(ApiError::Forbidden(
                "the API is disabled: set [http] admin_token in the node config".into(),
            ));
        };
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            None => Err(ApiError::Unauthorized(
                "missing token: send Authorization: Bearer <[http] admin_token>".into(),
            )),
            Some(t) if webhook::same_secret(t.as_bytes(), token.expose().as_bytes()) => Ok(Admin),
            Some(_) => Err(ApiError::Unauthorized("wrong token".into())),
        }
    }
}

fn release_json(st: &SiteState, id: crate::names::ReleaseId, url: Option<String>) -> Value {
    let mut v = json!({ "release": id.get() });
    if let Some(r) = st.record(id) {
        v["version"] = json!(r.version);
        v["created"] = json!(r.created);
        v["source"] = json!(r.source);
        v["sha"] = json!(r.sha);
    }
    if let Some(u) = url {
        v["url"] = json!(u);
    }
    v
}

/// The sites the node knows: configured or deployed.
fn known_sites(api: &Node) -> BTreeMap<SiteName, Option<SiteState>> {
    let mut all: BTreeMap<SiteName, Option<SiteState>> =
        api.cfg.sites.keys().map(|k| (k.clone(), None)).collect();
    for (site, st) in api.engine.sites() {
        all.insert(site, Some(st));
    }
    all
}

fn site_summary(api: &Node, site: &SiteName, st: Option<&SiteState>) -> Value {
    let name = site.as_str();
    let cfg = api.cfg.sites.get(site);
    let upstream = cfg.and_then(|c| c.upstream.as_deref());
    let live = st.and_then(|st| {
        st.live
            .as_ref()
            .map(|p| release_json(st, p.release, Some(api.engine.url(name))))
    });
    let mut v = json!({
        "site": name,
        "url": api.engine.url(name),
        "live": live,
        "disabled": st.is_some_and(|st| st.disabled),
        "upstream": upstream.map(redact),
        "webhooks": upstream.is_some() && cfg.and_then(|c| c.secret()).is_some(),
    });
    if let Ok(site) = SiteName::parse(name, &api.cfg.domain) {
        v["branch"] = json!(api.upstream.branch(&site));
    }
    v
}

async fn list_sites(_: Admin, State(api): State<Arc<Node>>) -> Json<Value> {
    let sites: Vec<Value> = known_sites(&api)
        .iter()
        .map(|(name, st)| site_summary(&api, name, st.as_ref()))
        .collect();
    Json(json!({ "sites": sites }))
}

fn parse_site(api: &Node, raw: &str) -> Result<SiteName, ApiError> {
    SiteName::parse(raw, &api.cfg.domain).map_err(|e| ApiError::NotFound(e.to_string()))
}

async fn show_site(
    _: Admin,
    State(api): State<Arc<Node>>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let site = parse_site(&api, &raw)?;
    let all = known_sites(&api);
    let Some(st) = all.get(&site) else {
        return Err(ApiError::NotFound(format!("no site {site} on this node")));
    };
    let mut v = site_summary(&api, &site, st.as_ref());
    if let Some(st) = st {
        v["previous"] = json!(st.prev.as_ref().map(|p| release_json(
            st,
            p.release,
            Some(api.engine.url(&site.prev_host()))
        )));
        let versions: BTreeMap<String, Value> = st
            .versions()
            .into_iter()
            .map(|(n, id)| {
                (
                    n.to_string(),
                    release_json(st, id, Some(api.engine.url(&site.version_host(n)))),
                )
            })
            .collect();
        v["versions"] = json!(versions);
        let releases: Vec<Value> = st
            .releases
            .iter()
            .rev()
            .map(|r| release_json(st, r.id, None))
            .collect();
        v["releases"] = json!(releases);
    }
    let deploys: Vec<Value> = api
        .upstream
        .registry()
        .recent(&site, RECENT)
        .iter()
        .map(|d| {
            // Logs are for GET /deploys/{id}; this is the overview.
            let mut v = json!(d);
            if let Some(o) = v.as_object_mut() {
                o.remove("log");
            }
            v
        })
        .collect();
    v["deploys"] = json!(deploys);
    v["history"] = json!(history(&api.layout, &site)?);
    Ok(Json(v))
}

/// The last lines of the site's deploy log: every deploy, however started.
/// The site's last deploys from its durable record (`deploys.jsonl`).
fn history(layout: &Layout, site: &SiteName) -> Result<Vec<Value>, ApiError> {
    let path = layout.deploy_log(site);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(ApiError::Internal(
                anyhow::Error::new(e).context(format!("cannot read {}", path.display())),
            ));
        }
    };
    let lines: Vec<&str> = text.lines().collect();
    Ok(lines
        .iter()
        .rev()
        .take(RECENT)
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

async fn deploy_site(
    _: Admin,
    State(api): State<Arc<Node>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let site = parse_site(&api, &raw)?;
    if api.upstream.url(&site).is_none() {
        let known = known_sites(&api).contains_key(&site);
        let msg = format!(
            "site {site} has no upstream: set upstream = \"<git URL>\" under [sites.\"{site}\"] in the node config"
        );
        return Err(if known {
            ApiError::Conflict(msg)
        } else {
            ApiError::NotFound(msg)
        });
    }
    let body = read_body(&api, &headers, body, 2 * 1024 * 1024).await?;
    let force = if body.iter().all(u8::is_ascii_whitespace) {
        false
    } else {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
        let Some(obj) = v.as_object() else {
            return Err(ApiError::BadRequest(
                "the body must be a JSON object".into(),
            ));
        };
        match obj.get("force") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::BadRequest(
                    "\"force\" must be true or false".into(),
                ));
            }
        }
    };
    let queued = api.upstream.request(&site, "api request".into(), force);
    tracing::info!(site = %site, deploy = queued.id(), force, "deploy requested through the API");
    Ok(accepted(&queued).into_response())
}

async fn show_deploy(
    _: Admin,
    State(api): State<Arc<Node>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match api.upstream.registry().get(&id) {
        Some(d) => Ok(Json(json!(d))),
        None => Err(ApiError::NotFound(format!(
            "no deploy {:?} (the node keeps the last {KEEP_FINISHED} finished deploys, until it restarts)",
            echo(&id)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busy_answer_is_well_formed() {
        let text = std::str::from_utf8(BUSY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, body.len());
        let v: Value = serde_json::from_str(body).unwrap();
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("too many connections")
        );
    }
}
