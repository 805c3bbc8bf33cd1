//! The dashboard: `tether listen … --http 127.0.0.1:8080` (and `tether bridge`, `tether
//! demo`) serves, from the process itself, a page of its devices, a live plot of a device's
//! readings, a command box and the log; `/metrics` for Prometheus; and the JSON API the page
//! is built on.
//!
//! ```text
//!  connection tasks (session::Engine)          this module (axum, its own tasks)
//!  ─────────────────────────────────          ───────────────────────────────────
//!  Link counters, Entry (peer, heard) ◄─lock── /api/devices, /metrics: read on request,
//!     under each session's lock                each session's lock taken for a moment
//!  Sampler: watched devices only ──send──►┐
//!  tracing lines (log::Layer) ────send──►┤    /api/events (Server-Sent Events): samples
//!        bounded broadcast, never waits   └──► of the watched device, replies, log lines;
//!                                              a subscriber that falls behind loses the
//!  Commands ◄── Server::command ◄───────────── oldest (counted) and is dropped
//!                                              POST /api/devices/{id}/commands
//!  assets built in (include_str!): / app.js style.css; a canvas plot, no build step
//! ```
//!
//! Nothing here can slow a link: a link's task never waits on the dashboard (it publishes
//! with `send`, which drops what a slow reader has not taken), and the dashboard holds a
//! session's lock only to copy its counters.
//!
//! Safe by default: on a loopback address the dashboard answers only requests whose `Host`
//! is a loopback address or `localhost` (a web page elsewhere cannot reach it through DNS
//! rebinding), and commands are JSON, which a page of another origin cannot send without a
//! CORS preflight this server never grants. On any other address it does not start without
//! a token (`--http-token-file`), which the API, the event stream and `/metrics` then
//! require (`Authorization: Bearer TOKEN`, or `?token=TOKEN` where a header cannot be set).

pub mod log;
mod metrics;
mod view;

pub use view::{transport_of, CommandError, DeviceView, Observe, Rates, Totals};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use tokio::sync::{broadcast, watch};

use crate::session::tap::{Update, Watch};

/// Where the dashboard listens and who may use it.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// The address to listen on (port 0: one the system picks).
    pub addr: SocketAddr,
    /// A file holding the token the API requires; required off loopback.
    pub token_file: Option<PathBuf>,
}

/// The address `--http` without a value listens on.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";

/// Why the dashboard could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Off loopback without a token.
    #[error("--http {0} is not a loopback address: anyone who reaches it could read the devices and command them; give --http-token-file FILE (a secret the page, the API and /metrics then require), or listen on 127.0.0.1")]
    NeedsToken(SocketAddr),
    /// The token file cannot be read.
    #[error("cannot read the token file {path}: {source}")]
    TokenRead {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The token file can be read by others.
    #[error("the token file {path} is accessible to other users (mode {mode:03o}); run `chmod 600 {path}`")]
    TokenPermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The token is too short to be a secret.
    #[error("the token in {path} is {len} characters long; a token must be at least {MIN_TOKEN} (e.g. `head -c 24 /dev/urandom | base64 > {path}`)")]
    TokenShort {
        /// The file.
        path: PathBuf,
        /// The token's length.
        len: usize,
    },
    /// The address cannot be listened on.
    #[error("cannot listen for the dashboard on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The shortest token accepted.
pub const MIN_TOKEN: usize = 16;

/// A running dashboard; [`Dashboard::stop`] ends it (dropping it leaves it running until
/// the runtime ends).
#[derive(Debug)]
pub struct Dashboard {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Dashboard {
    /// The address it listens on (with the port chosen for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The page's address, for people.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Ends the event streams and the server, waiting for them up to 2 s.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(2), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// What every handler shares.
struct App {
    view: Arc<dyn Observe>,
    title: String,
    token: Option<String>,
    /// Whether to check the `Host` header (loopback without a token).
    loopback_only: bool,
    rates: Rates,
    log: &'static log::LogBus,
    stop: watch::Receiver<bool>,
}

/// Starts the dashboard of `view` (the page's heading says `title`): checks the address
/// and the token, binds, and serves on tasks of its own.
pub async fn start(
    opts: &HttpOptions,
    view: Arc<dyn Observe>,
    title: String,
) -> Result<Dashboard, HttpError> {
    let token = match &opts.token_file {
        Some(path) => Some(read_token(path)?),
        None if !opts.addr.ip().is_loopback() => return Err(HttpError::NeedsToken(opts.addr)),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .map_err(|source| HttpError::Bind {
            addr: opts.addr,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| HttpError::Bind {
        addr: opts.addr,
        source,
    })?;
    let (stop, stopped) = watch::channel(false);
    let app = Arc::new(App {
        view,
        title,
        loopback_only: token.is_none(),
        token,
        rates: Rates::default(),
        log: log::enable(),
        stop: stopped.clone(),
    });
    let router = router(app.clone());
    let task = tokio::spawn(async move {
        let ticker = tokio::spawn(tick_rates(app.clone()));
        let mut stopped = stopped;
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await;
        ticker.abort();
        if let Err(e) = served {
            tracing::warn!("the dashboard stopped: {e}");
        }
    });
    Ok(Dashboard { addr, stop, task })
}

/// Reads the token: the file's first line, trimmed; the file readable by its owner only.
fn read_token(path: &Path) -> Result<String, HttpError> {
    let read = |source| HttpError::TokenRead {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(HttpError::TokenPermissions {
                path: path.to_owned(),
                mode,
            });
        }
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.chars().count() < MIN_TOKEN {
        return Err(HttpError::TokenShort {
            path: path.to_owned(),
            len: token.chars().count(),
        });
    }
    Ok(token)
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(|| asset(Asset::Page)))
        .route("/app.js", get(|| asset(Asset::Script)))
        .route("/style.css", get(|| asset(Asset::Style)))
        .route("/api/devices", get(devices))
        .route("/api/devices/{id}", get(device))
        .route("/api/devices/{id}/commands", post(command))
        .route("/api/events", get(events))
        .route("/metrics", get(prometheus))
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

/// Refuses what the address and token do not allow (see the module's docs).
async fn guard(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    if app.loopback_only && !loopback_host(request.headers()) {
        return error(
            StatusCode::FORBIDDEN,
            "this dashboard answers only requests addressed to a loopback address or localhost",
        );
    }
    let path = request.uri().path();
    let protected = path.starts_with("/api/") || path == "/metrics";
    if let (Some(token), true) = (&app.token, protected) {
        let given = bearer(request.headers()).or_else(|| query_token(request.uri().query()));
        if !given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "a token is required: Authorization: Bearer TOKEN (the token in --http-token-file)",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    next.run(request).await
}

/// Whether the request's `Host` is a loopback address or `localhost` (with any port).
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn query_token(query: Option<&str>) -> Option<&str> {
    query?.split('&').find_map(|kv| kv.strip_prefix("token="))
}

/// Compares in time that does not depend on where the two differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error(status: StatusCode, text: &str) -> Response {
    (status, Json(serde_json::json!({ "error": text }))).into_response()
}

enum Asset {
    Page,
    Script,
    Style,
}

/// The page's files, built into the binary: nothing is fetched from elsewhere.
async fn asset(which: Asset) -> Response {
    let (body, kind) = match which {
        Asset::Page => (
            include_str!("assets/index.html"),
            "text/html; charset=utf-8",
        ),
        Asset::Script => (
            include_str!("assets/app.js"),
            "text/javascript; charset=utf-8",
        ),
        Asset::Style => (include_str!("assets/style.css"), "text/css; charset=utf-8"),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Samples the counters once a second for the records/s columns.
async fn tick_rates(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let devices = app.view.devices();
        let total = app.view.totals().records;
        app.rates.tick(&devices, total);
    }
}

/// A device id from a URL (hex, as in the CSV); `Err`: the answer to give.
fn parse_id(id: &str) -> Result<u32, Box<Response>> {
    u32::from_str_radix(id, 16).map_err(|_| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            &format!("`{id}` is not a device id (hex, as in the CSV)"),
        ))
    })
}

/// `GET /api/devices`: the totals and every device.
async fn devices(State(app): State<Arc<App>>) -> Response {
    let mut devices = app.view.devices();
    let mut totals = app.view.totals();
    app.rates.fill(&mut devices, Some(&mut totals));
    no_store(Json(serde_json::json!({
        "title": app.title,
        "totals": totals,
        "devices": devices,
    })))
}

/// `GET /api/devices/{id}`: one device.
async fn device(State(app): State<Arc<App>>, UrlPath(id): UrlPath<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    match app.view.device(id) {
        Some(d) => {
            let mut one = [d];
            app.rates.fill(&mut one, None);
            let [d] = one;
            no_store(Json(d))
        }
        None => error(StatusCode::NOT_FOUND, &format!("no such device: {id:08x}")),
    }
}

fn no_store(body: impl IntoResponse) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], body).into_response()
}

#[derive(Deserialize)]
struct CommandBody {
    command: String,
}

/// `POST /api/devices/{id}/commands`, `{"command": "output on"}`: queued for the device,
/// delivered in order across reconnects; its acknowledgement comes in the log.
async fn command(
    State(app): State<Arc<App>>,
    UrlPath(id): UrlPath<String>,
    body: Result<Json<CommandBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => {
            return error(
                e.status(),
                &format!(
                    "a command is JSON, {{\"command\": \"…\"}}: {}",
                    e.body_text()
                ),
            )
        }
    };
    let text = body.command.trim();
    if text.is_empty() {
        return error(StatusCode::BAD_REQUEST, "the command is empty");
    }
    match app.view.command(id, text.as_bytes()) {
        Ok(()) => {
            tracing::info!("command `{text}` for device {id:08x} from the dashboard");
            (
                StatusCode::ACCEPTED,
                Json(serde_json::json!({ "device": format!("{id:08x}"), "queued": text })),
            )
                .into_response()
        }
        Err(e @ CommandError::NoDevice(_)) => error(StatusCode::NOT_FOUND, &e.to_string()),
        Err(e @ CommandError::Refused(_)) => error(StatusCode::CONFLICT, &e.to_string()),
    }
}

/// `GET /metrics`.
async fn prometheus(State(app): State<Arc<App>>) -> Response {
    let devices = app.view.devices();
    let totals = app.view.totals();
    let text = metrics::render(&totals, &devices, app.view.commit_latency());
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}

#[derive(Deserialize)]
struct EventsQuery {
    /// The device whose readings to stream, hex.
    watch: Option<String>,
}

/// `GET /api/events?watch=ID`: Server-Sent Events: `log` (the recent lines, then each new
/// one), and for the watched device `sample` and `reply`. A client that falls behind gets
/// `lagged` and the stream ends (EventSource connects again).
async fn events(State(app): State<Arc<App>>, Query(q): Query<EventsQuery>) -> Response {
    let watched = match q.watch.as_deref().filter(|w| !w.is_empty()).map(parse_id) {
        Some(Ok(id)) => Some(id),
        Some(Err(r)) => return *r,
        None => None,
    };
    let tap = app.view.tap().clone();
    // Subscribed before the watch starts, so that the first sample is not missed.
    let updates = tap.subscribe();
    let guard = watched.map(|d| tap.watch(d));
    let (recent, lines) = app.log.subscribe();
    let state = Events {
        app: app.clone(),
        recent: recent.into_iter(),
        updates,
        lines,
        watch: guard,
        ended: false,
    };
    Sse::new(event_stream(state))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

struct Events {
    app: Arc<App>,
    recent: std::vec::IntoIter<Arc<log::LogLine>>,
    updates: broadcast::Receiver<Update>,
    lines: broadcast::Receiver<Arc<log::LogLine>>,
    watch: Option<Watch>,
    ended: bool,
}

fn event_stream(state: Events) -> impl Stream<Item = Result<Event, std::convert::Infallible>> {
    stream::unfold(state, |mut s| async move {
        let event = s.next().await?;
        Some((Ok(event), s))
    })
}

impl Events {
    async fn next(&mut self) -> Option<Event> {
        if self.ended {
            return None;
        }
        if let Some(line) = self.recent.next() {
            return Some(json_event("log", &*line));
        }
        let watched = self.watch.as_ref().map(Watch::device);
        let mut stop = self.app.stop.clone();
        loop {
            tokio::select! {
                u = self.updates.recv() => match u {
                    Ok(Update::Sample(s)) if Some(s.device) == watched => {
                        let v: Vec<[f64; 3]> = s.fields.iter().map(|f| [f.last, f.min, f.max]).collect();
                        let names: Vec<String> = (0..v.len()).map(|i| s.field_name(i)).collect();
                        return Some(json_event("sample", &serde_json::json!({
                            "device": format!("{:08x}", s.device),
                            "t": s.time_ms,
                            "seq": s.seq,
                            "n": s.records,
                            "kind": s.kind.as_ref().map(|k| k.name.as_str()),
                            "names": names,
                            "v": v,
                        })));
                    }
                    Ok(Update::Reply { device, text }) if Some(device) == watched => {
                        return Some(json_event("reply", &serde_json::json!({
                            "device": format!("{device:08x}"),
                            "text": &*text,
                        })));
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => return Some(self.lagged(n)),
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                l = self.lines.recv() => match l {
                    Ok(line) => return Some(json_event("log", &*line)),
                    Err(broadcast::error::RecvError::Lagged(n)) => return Some(self.lagged(n)),
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = stop.wait_for(|s| *s) => return None,
            }
        }
    }

    /// Fell behind: counted, told, and dropped.
    fn lagged(&mut self, n: u64) -> Event {
        self.app.view.tap().note_lost(n);
        self.ended = true;
        Event::default()
            .event("lagged")
            .data(format!("{{\"lost\":{n}}}"))
    }
}

fn json_event(kind: &str, body: &impl serde::Serialize) -> Event {
    Event::default()
        .event(kind)
        .data(serde_json::to_string(body).unwrap_or_else(|_| "null".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(h: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::HOST, HeaderValue::from_str(h).unwrap());
        m
    }

    #[test]
    fn only_loopback_hosts_pass_the_rebinding_guard() {
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:80",
            "127.3.4.5",
        ] {
            assert!(loopback_host(&host(ok)), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "192.0.2.1:8080",
            "[2001:db8::1]:80",
            "",
        ] {
            assert!(!loopback_host(&host(bad)), "{bad}");
        }
        assert!(!loopback_host(&HeaderMap::new()), "no Host at all");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same(b"0123456789abcdef", b"0123456789abcdeF"));
        assert!(!same(b"0123456789abcdef", b"0123456789abcde"));
        assert_eq!(query_token(Some("watch=1&token=abc")), Some("abc"));
        assert_eq!(query_token(Some("watch=1")), None);
    }
}
