//! The dashboard's HTTP surface: pages, their JSON, live updates, and the
//! demo controls.
//!
//! | route | answers |
//! |---|---|
//! | `GET /` | overview: golden metrics per workload |
//! | `GET /topology` | the mesh as an SVG graph |
//! | `GET /servers` | requests per replica, the balancers' view, the demo's replicas |
//! | `GET /routes?workload=W` | golden metrics per route (request path; a gRPC method) of each workload, or of `W`, busiest first |
//! | `GET /tap?...` | the requests passing through chosen proxies, live (with `collect=1`, three seconds of them, for a browser without JavaScript) |
//! | `GET /api/tap?...` | the same as JSON lines, until the reader leaves; see [`crate::tap`] |
//! | `POST /servers` | the same after loading StockWeb once (a form with the token) |
//! | `GET /api/overview`, `/api/topology`, `/api/servers`, `/api/routes?workload=W` | the same data as JSON |
//! | `GET /api/proxies` | every proxy, up or down, with the reason |
//! | `GET /events` | server-sent events: `scrape` after every scrape round |
//! | `POST /demo/replicas`, `/demo/replicas/{name}/kill`, `/demo/replicas/{name}/slow` | demo controls (only under `meshctl demo`) |
//!
//! Only the Host names configured are answered (403 otherwise), and a POST
//! is taken only with the token this run put in its forms, and not when the
//! browser says it comes from another site or origin: a web page the user
//! visits cannot drive the demo.
//!
//! Every page works without JavaScript; `assets/live.js` swaps in fresh
//! content on each `scrape` event (`?fragment=1` renders only the content).

use crate::{
    AllowedHosts, Config,
    tap::{TapError, TapQuery, Tapping},
    trends::{Chart, Trends},
};
use crate::{
    scrape::History,
    views::{self, Overview, Routes, Servers, Topology, Window},
};
use askama::Template;
use axum::{
    Form, Json, Router,
    extract::{Path, Query, Request, State},
    http::{Method, StatusCode, header},
    middleware::{self, Next},
    response::{
        Html, IntoResponse, Redirect, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::{get, post},
};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use std::{
    collections::BTreeMap,
    convert::Infallible,
    path::Path as FsPath,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt as _, wrappers::WatchStream};
use tower_http::services::ServeDir;

/// Shared by every handler; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    pub history: watch::Receiver<History>,
    pub window: Duration,
    /// StockWeb's base URL, for the "load StockWeb" button.
    pub stockweb: Option<http::Uri>,
    /// `meshctl demo`'s control API; demo controls show only when set.
    pub demo_api: Option<http::Uri>,
    /// `authorization` for the demo API.
    demo_auth: Option<http::HeaderValue>,
    pub http: Client<HttpConnector, Empty<Bytes>>,
    /// Turns true at shutdown, ending event streams so the drain is quick.
    pub stopping: watch::Receiver<bool>,
    /// Made at start and put in every form: a POST without it did not come
    /// from a page this dashboard served.
    form_token: Arc<str>,
    allowed_hosts: Arc<AllowedHosts>,
    tapping: Arc<Tapping>,
    trends: Arc<Mutex<Trends>>,
}

impl AppState {
    pub fn new(
        config: &Config,
        history: watch::Receiver<History>,
        trends: Arc<Mutex<Trends>>,
        stopping: watch::Receiver<bool>,
    ) -> std::io::Result<Self> {
        let demo_auth = config
            .demo_api_token
            .as_deref()
            .map(|token| {
                http::HeaderValue::from_str(&format!("Bearer {}", token.trim())).map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "MESH_DASHBOARD_DEMO_API_TOKEN is no header value",
                    )
                })
            })
            .transpose()?;
        Ok(Self {
            history,
            window: config.window,
            stockweb: config.stockweb_url.clone(),
            demo_api: config.demo_api.clone(),
            demo_auth,
            http: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            stopping,
            form_token: mesh_runtime::random_hex(16)?.into(),
            allowed_hosts: Arc::new(config.allowed_hosts.clone()),
            tapping: Arc::default(),
            trends,
        })
    }

    fn history(&self) -> History {
        self.history.borrow().clone()
    }

    fn trends(&self) -> std::sync::MutexGuard<'_, Trends> {
        self.trends.lock().expect("trends lock is never poisoned")
    }

    /// Whether a submitted form carries this run's token.
    fn genuine(&self, form: &ActionForm) -> Result<(), AppError> {
        if mesh_runtime::same_secret(form.token.as_bytes(), self.form_token.as_bytes()) {
            Ok(())
        } else {
            Err(AppError::Forbidden(
                "this form was not served by this dashboard (or the dashboard restarted since): reload the page and try again".into(),
            ))
        }
    }
}

/// What every form posts: the run's token.
#[derive(Debug, serde::Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    token: String,
}

pub fn app(state: AppState, assets_dir: &FsPath) -> Router {
    Router::new()
        .route("/", get(overview_page))
        .route("/topology", get(topology_page))
        .route("/servers", get(servers_page).post(servers_load))
        .route("/routes", get(routes_page))
        .route(
            "/api/overview",
            get(|State(s): State<AppState>| async move { Json(compute(&s, views::overview)) }),
        )
        .route(
            "/api/topology",
            get(|State(s): State<AppState>| async move { Json(compute(&s, views::topology)) }),
        )
        .route(
            "/api/servers",
            get(|State(s): State<AppState>| async move { Json(compute(&s, views::servers)) }),
        )
        .route("/api/routes", get(api_routes))
        .route("/tap", get(tap_page))
        .route("/api/tap", get(api_tap))
        .route("/api/proxies", get(api_proxies))
        .route("/events", get(events))
        .route("/demo/replicas", post(demo_add))
        .route("/demo/replicas/{name}/{action}", post(demo_action))
        .nest_service("/assets", ServeDir::new(assets_dir))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Every request: its Host must be one the dashboard answers to (a page
/// elsewhere cannot reach it through a name it controls). Every POST: not
/// from another site, by `Sec-Fetch-Site` and `Origin` where the browser
/// sends them (the form token, checked by each handler, covers the rest).
async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    let Some(host) = host.filter(|host| state.allowed_hosts.allows(host)) else {
        return AppError::Forbidden(
            "this dashboard does not answer to that host name (see --allowed-hosts)".into(),
        )
        .into_response();
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let site = headers
            .get("sec-fetch-site")
            .map(|v| v.to_str().unwrap_or("?"));
        if site.is_some_and(|site| !matches!(site, "same-origin" | "none")) {
            return AppError::Forbidden("requests from other sites are refused".into())
                .into_response();
        }
        let origin = headers
            .get(header::ORIGIN)
            .map(|v| v.to_str().unwrap_or("?"));
        let same_origin = |origin: &str| {
            origin
                .parse::<http::Uri>()
                .ok()
                .and_then(|uri| {
                    uri.authority()
                        .map(|a| a.as_str().eq_ignore_ascii_case(host))
                })
                .unwrap_or(false)
        };
        if origin.is_some_and(|origin| !same_origin(origin)) {
            return AppError::Forbidden("requests from other origins are refused".into())
                .into_response();
        }
    }
    next.run(request).await
}

/// A view, or `None` before the first scrape.
fn compute<T>(state: &AppState, view: fn(&Window<'_>) -> T) -> Option<T> {
    let history = state.history();
    Window::new(&history, state.window).map(|window| view(&window))
}

/// `?fragment` counts when present, whatever its value (`?fragment=true`
/// from a script).
#[derive(Debug, serde::Deserialize, Default)]
struct PageQuery {
    fragment: Option<String>,
}

impl PageQuery {
    fn fragment(&self) -> bool {
        self.fragment.is_some()
    }
}

#[derive(Template)]
#[template(path = "layout.html")]
struct Layout<'a> {
    title: &'a str,
    active: &'a str,
    content: String,
    /// Whether `live.js` swaps in fresh content after each scrape.
    live: bool,
}

/// A page `live.js` leaves alone (its own script keeps it current).
fn page_without_updates(
    title: &str,
    active: &str,
    content: impl Template,
) -> Result<Html<String>, AppError> {
    let content = content.render()?;
    Ok(Html(
        Layout {
            title,
            active,
            content,
            live: false,
        }
        .render()?,
    ))
}

/// The page, or just its content for live updates.
fn page(
    title: &str,
    active: &str,
    content: impl Template,
    fragment: bool,
) -> Result<Html<String>, AppError> {
    let content = content.render()?;
    if fragment {
        return Ok(Html(content));
    }
    Ok(Html(
        Layout {
            title,
            active,
            content,
            live: true,
        }
        .render()?,
    ))
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewContent {
    view: Option<Overview>,
    /// Per workload: requests per second, success rate and p99 over the
    /// history.
    charts: BTreeMap<String, [Chart; 3]>,
    history_minutes: f64,
}

impl OverviewContent {
    fn charts_of(&self, workload: &str) -> Option<&[Chart; 3]> {
        self.charts.get(workload)
    }
}

async fn overview_page(
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> Result<Html<String>, AppError> {
    let view = compute(&state, views::overview);
    let trends = state.trends();
    let charts = view
        .iter()
        .flat_map(|v| v.workloads.iter())
        .map(|w| {
            let charts = [
                trends.rps(&w.workload),
                trends.success(&w.workload),
                trends.p99(&w.workload),
            ];
            (w.workload.clone(), charts)
        })
        .collect();
    let history_minutes = trends.span().as_secs_f64() / 60.0;
    drop(trends);
    page(
        "Overview",
        "overview",
        OverviewContent {
            view,
            charts,
            history_minutes,
        },
        q.fragment(),
    )
}

#[derive(Template)]
#[template(path = "topology.html")]
struct TopologyContent {
    view: Option<Topology>,
}

async fn topology_page(
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> Result<Html<String>, AppError> {
    page(
        "Topology",
        "topology",
        TopologyContent {
            view: compute(&state, views::topology),
        },
        q.fragment(),
    )
}

/// Which workload a page is about (all when absent).
#[derive(Debug, serde::Deserialize, Default)]
struct WorkloadQuery {
    workload: Option<String>,
    fragment: Option<String>,
}

/// The routes of every workload, or of the one asked for.
fn routes_of(state: &AppState, workload: Option<&str>) -> Option<Routes> {
    let mut routes = compute(state, views::routes)?;
    if let Some(workload) = workload {
        routes.workloads.retain(|w| w.workload == workload);
    }
    Some(routes)
}

async fn api_routes(
    State(state): State<AppState>,
    Query(q): Query<WorkloadQuery>,
) -> Json<Option<Routes>> {
    Json(routes_of(&state, q.workload.as_deref()))
}

#[derive(Template)]
#[template(path = "routes.html")]
struct RoutesContent {
    view: Option<Routes>,
    workload: Option<String>,
    /// Every workload, for the links between them.
    all: Vec<String>,
}

async fn routes_page(
    State(state): State<AppState>,
    Query(q): Query<WorkloadQuery>,
) -> Result<Html<String>, AppError> {
    let all = compute(&state, views::routes)
        .map(|r| r.workloads.into_iter().map(|w| w.workload).collect())
        .unwrap_or_default();
    page(
        "Routes",
        "routes",
        RoutesContent {
            view: routes_of(&state, q.workload.as_deref()),
            workload: q.workload,
            all,
        },
        q.fragment.is_some(),
    )
}

/// `/api/tap`: the merged taps as JSON lines, for as long as the reader
/// stays.
async fn api_tap(
    State(state): State<AppState>,
    Query(query): Query<TapQuery>,
) -> Result<Response, AppError> {
    let merged = state
        .tapping
        .start(&state.history(), &query, &state.http, &state.stopping)?;
    let lines = merged.map(Ok::<_, Infallible>);
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(lines),
    )
        .into_response())
}

/// A tap's filters as the page's form has them, and whether to collect.
#[derive(Debug, Default, serde::Deserialize)]
struct TapPageQuery {
    #[serde(flatten)]
    tap: TapQuery,
    collect: Option<String>,
}

/// One request as the Tap page shows it.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct TapRow {
    pub workload: String,
    pub instance: String,
    pub direction: String,
    pub method: String,
    pub path: String,
    pub source: Option<String>,
    pub endpoint: Option<String>,
    pub endpoint_instance: Option<String>,
    pub status: u16,
    pub grpc_status: Option<u8>,
    pub latency_ms: f64,
    pub attempts: u32,
    pub tls: bool,
    pub identity: Option<String>,
}

#[derive(Template)]
#[template(path = "tap.html")]
struct TapContent {
    workloads: Vec<String>,
    query: TapQuery,
    /// Requests collected for a page without JavaScript.
    collected: Option<Vec<TapRow>>,
    /// Proxies' errors and drops while collecting.
    notes: Vec<String>,
}

/// How long, and how many requests at most, the page collects without
/// JavaScript.
const COLLECT_FOR: Duration = Duration::from_secs(3);
const COLLECT_AT_MOST: usize = 100;

async fn tap_page(
    State(state): State<AppState>,
    Query(q): Query<TapPageQuery>,
) -> Result<Response, AppError> {
    let workloads = compute(&state, views::routes)
        .map(|r| r.workloads.into_iter().map(|w| w.workload).collect())
        .unwrap_or_default();
    let (mut collected, mut notes) = (None, Vec::new());
    if q.collect.is_some() {
        let mut merged =
            state
                .tapping
                .start(&state.history(), &q.tap, &state.http, &state.stopping)?;
        let mut rows = Vec::new();
        let until = tokio::time::Instant::now() + COLLECT_FOR;
        while rows.len() < COLLECT_AT_MOST {
            let Ok(Some(line)) = tokio::time::timeout_at(until, merged.lines.recv()).await else {
                break;
            };
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(&line) else {
                continue;
            };
            let proxy = format!(
                "{}/{}",
                value["workload"].as_str().unwrap_or("?"),
                value["instance"].as_str().unwrap_or("?")
            );
            match value["type"].as_str() {
                Some("request") => rows.push(serde_json::from_value(value).unwrap_or_default()),
                Some("dropped") => notes.push(format!(
                    "{proxy}: {} requests not shown (the tap's rate)",
                    value["count"]
                )),
                Some("error") => notes.push(format!(
                    "{proxy}: {}",
                    value["error"].as_str().unwrap_or("?")
                )),
                _ => {}
            }
        }
        rows.reverse();
        collected = Some(rows);
    }
    let content = TapContent {
        workloads,
        query: q.tap,
        collected,
        notes,
    };
    Ok(page_without_updates("Tap", "tap", content)?.into_response())
}

#[derive(Template)]
#[template(path = "servers.html")]
struct ServersContent {
    view: Option<Servers>,
    stockweb: Option<StockWebLoad>,
    can_load: bool,
    demo: Option<DemoReplicas>,
    token: Arc<str>,
    /// Per (service, instance): requests served per second over the
    /// history.
    served: BTreeMap<(String, String), Chart>,
    history_minutes: f64,
}

/// The demo's replicas as `meshctl demo` supervises them, or why they
/// cannot be shown.
type DemoReplicas = Result<Vec<DemoReplica>, String>;

/// A replica as the demo API lists it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct DemoReplica {
    pub name: String,
    /// `up`, `starting`, `crashed`, `restarting` or `killed`.
    pub state: String,
    pub restarts: u32,
    pub last_exit: Option<String>,
    pub delay_ms: u64,
}

impl ServersContent {
    fn served_chart(&self, service: &str, instance: &str) -> Option<&Chart> {
        self.served.get(&(service.to_owned(), instance.to_owned()))
    }

    /// The demo's state of `instance`, when the demo knows it.
    fn demo_state(&self, instance: &str) -> Option<&str> {
        let replicas = self.demo.as_ref()?.as_ref().ok()?;
        replicas
            .iter()
            .find(|r| r.name == instance)
            .map(|r| r.state.as_str())
    }
}

/// One load of StockWeb's page data, grouped by the server that answered.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StockWebLoad {
    pub groups: Vec<(String, Vec<String>)>,
    pub errors: usize,
    pub error: Option<String>,
}

async fn servers_page(
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> Result<Html<String>, AppError> {
    servers(&state, None, q.fragment()).await
}

/// "Load StockWeb once": a hundred backend calls, so a POST with the
/// form's token, never a GET a foreign page could embed.
async fn servers_load(
    State(state): State<AppState>,
    Form(form): Form<ActionForm>,
) -> Result<Html<String>, AppError> {
    state.genuine(&form)?;
    let url = state.stockweb.clone().ok_or_else(|| {
        AppError::BadRequest("no StockWeb to load: start the dashboard with --stockweb-url".into())
    })?;
    let load = load_stockweb(&state, &url).await;
    servers(&state, Some(load), false).await
}

async fn servers(
    state: &AppState,
    stockweb: Option<StockWebLoad>,
    fragment: bool,
) -> Result<Html<String>, AppError> {
    let demo = match state.demo_api {
        Some(_) => Some(demo_replicas(state).await),
        None => None,
    };
    let view = compute(state, views::servers);
    let trends = state.trends();
    let served = view
        .iter()
        .flat_map(|v| v.services.iter())
        .flat_map(|s| s.replicas.iter().map(move |r| (s, r)))
        .map(|(s, r)| {
            let key = (s.service.clone(), r.instance.clone());
            let chart = trends.served(&s.service, &r.instance);
            (key, chart)
        })
        .collect();
    let history_minutes = trends.span().as_secs_f64() / 60.0;
    drop(trends);
    let content = ServersContent {
        view,
        stockweb,
        can_load: state.stockweb.is_some(),
        demo,
        token: state.form_token.clone(),
        served,
        history_minutes,
    };
    page("Servers", "servers", content, fragment)
}

async fn load_stockweb(state: &AppState, base: &http::Uri) -> StockWebLoad {
    let failed = |error: String| StockWebLoad {
        groups: Vec::new(),
        errors: 0,
        error: Some(error),
    };
    let Ok(uri) =
        format!("{}/api/stocks", base.to_string().trim_end_matches('/')).parse::<http::Uri>()
    else {
        return failed(format!("{base} is not a usable StockWeb URL"));
    };
    let body = async {
        let response = state.http.get(uri).await.map_err(|e| e.to_string())?;
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|e| e.to_string())
    };
    let json = match tokio::time::timeout(Duration::from_secs(10), body).await {
        Ok(Ok(json)) => json,
        Ok(Err(err)) => return failed(format!("StockWeb at {base} failed: {err}")),
        Err(_) => return failed(format!("StockWeb at {base} did not answer within 10 s")),
    };
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut errors = 0;
    for row in json["rows"].as_array().into_iter().flatten() {
        match (
            row["server"].as_str(),
            row["symbol"].as_str(),
            row.get("error"),
        ) {
            (Some(server), Some(symbol), None) => groups
                .entry(server.to_owned())
                .or_default()
                .push(symbol.to_owned()),
            _ => errors += 1,
        }
    }
    StockWebLoad {
        groups: groups.into_iter().collect(),
        errors,
        error: None,
    }
}

#[derive(Debug, serde::Serialize)]
struct ProxyStatus {
    workload: String,
    instance: String,
    admin_addr: String,
    up: bool,
    error: Option<String>,
}

async fn api_proxies(State(state): State<AppState>) -> Json<Vec<ProxyStatus>> {
    let history = state.history();
    Json(
        history
            .back()
            .map(|snap| {
                snap.proxies
                    .iter()
                    .map(|p| ProxyStatus {
                        workload: p.target.workload.clone(),
                        instance: p.target.instance.clone(),
                        admin_addr: p.target.admin_addr.to_string(),
                        up: p.up(),
                        error: p.error.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    )
}

async fn events(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut round = 0u64;
    // `None` items mark shutdown; the stream ends there, so a browser that
    // keeps the page open does not hold up the drain.
    let scrapes = WatchStream::from_changes(state.history.clone()).map(|_| Some(()));
    let stopping = WatchStream::new(state.stopping.clone())
        .filter(|s| *s)
        .map(|_| None);
    let stream = scrapes
        .merge(stopping)
        .take_while(Option::is_some)
        .map(move |_| {
            round += 1;
            Ok(Event::default().event("scrape").data(round.to_string()))
        });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

// === Demo controls ===

async fn demo_add(
    State(state): State<AppState>,
    Form(form): Form<ActionForm>,
) -> Result<Redirect, AppError> {
    state.genuine(&form)?;
    demo_call(&state, Method::POST, "/replicas").await?;
    Ok(Redirect::to("/servers"))
}

async fn demo_action(
    State(state): State<AppState>,
    Path((name, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Result<Redirect, AppError> {
    state.genuine(&form)?;
    if !matches!(action.as_str(), "kill" | "slow")
        || name.len() > 64
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(AppError::BadRequest("unknown demo action".into()));
    }
    demo_call(&state, Method::POST, &format!("/replicas/{name}/{action}")).await?;
    Ok(Redirect::to("/servers"))
}

/// The demo's replicas, for the Servers page.
async fn demo_replicas(state: &AppState) -> DemoReplicas {
    let body = demo_call(state, Method::GET, "/replicas")
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&body).map_err(|e| format!("the demo's replica list is unreadable: {e}"))
}

/// A call to the demo API: its body when it succeeded.
async fn demo_call(state: &AppState, method: Method, path: &str) -> Result<Bytes, AppError> {
    let base = state.demo_api.as_ref().ok_or(AppError::DemoOff)?;
    let uri: http::Uri = format!("{}{path}", base.to_string().trim_end_matches('/'))
        .parse()
        .map_err(|_| AppError::BadRequest(format!("bad demo path {path:?}")))?;
    let mut request = http::Request::builder().method(method).uri(uri);
    if let Some(auth) = &state.demo_auth {
        request = request.header(header::AUTHORIZATION, auth.clone());
    }
    let request = request
        .body(Empty::new())
        .expect("a request with an empty body is a valid request");
    let response = tokio::time::timeout(Duration::from_secs(30), state.http.request(request))
        .await
        .map_err(|_| AppError::Demo("meshctl demo did not answer within 30 s".into()))?
        .map_err(|e| AppError::Demo(e.to_string()))?;
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), 1024 * 1024)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if status == StatusCode::CONFLICT {
        // The demo said no (a cap reached, a replica gone): the user's
        // request, not the dashboard, is what failed.
        return Err(AppError::DemoRefused(
            String::from_utf8_lossy(&body).trim().to_owned(),
        ));
    }
    if !status.is_success() {
        return Err(AppError::Demo(format!(
            "{status}: {}",
            String::from_utf8_lossy(&body).trim()
        )));
    }
    Ok(body)
}

/// A failure a handler turns into a plain page; the detail goes to the log.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("rendering the page failed")]
    Render(#[from] askama::Error),
    #[error("demo controls are off: the dashboard is not running under `meshctl demo`")]
    DemoOff,
    #[error("the demo could not do that: {0}")]
    Demo(String),
    #[error("the demo refused: {0}")]
    DemoRefused(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Tap(#[from] TapError),
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = match &self {
            AppError::Render(_) => StatusCode::INTERNAL_SERVER_ERROR,
            AppError::DemoOff => StatusCode::NOT_FOUND,
            AppError::Demo(_) => StatusCode::BAD_GATEWAY,
            AppError::DemoRefused(_) => StatusCode::CONFLICT,
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::Tap(TapError::NoProxy) => StatusCode::NOT_FOUND,
            AppError::Tap(TapError::Busy) => StatusCode::SERVICE_UNAVAILABLE,
        };
        // Refusals are what a foreign page or a scanner causes: not worth
        // a warning each.
        match &self {
            AppError::Forbidden(_)
            | AppError::BadRequest(_)
            | AppError::DemoRefused(_)
            | AppError::Tap(_) => {
                tracing::debug!(err = %self, "request refused");
            }
            _ => tracing::warn!(err = %self, "request failed"),
        }
        let message = match &self {
            AppError::Render(_) => "Internal error".to_owned(),
            other => other.to_string(),
        };
        (status, format!("{message}\n")).into_response()
    }
}

// === Formatting helpers for templates ===

/// `1.23 ms`, `45.6 ms`, `1.2 s`, or `–` when unknown.
pub fn fmt_ms(ms: &Option<f64>) -> String {
    match *ms {
        None => "–".to_owned(),
        Some(ms) if ms >= 1000.0 => format!("{:.1} s", ms / 1000.0),
        Some(ms) if ms >= 10.0 => format!("{ms:.0} ms"),
        Some(ms) => format!("{ms:.2} ms"),
    }
}

/// `99.5%`, or `–` with no traffic.
pub fn fmt_rate(rate: &Option<f64>) -> String {
    rate.map_or_else(|| "–".to_owned(), |r| format!("{:.1}%", r * 100.0))
}

/// `12.3 rps`.
pub fn fmt_rps(rps: &f64) -> String {
    if *rps >= 100.0 {
        format!("{rps:.0} rps")
    } else {
        format!("{rps:.1} rps")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(fmt_ms(&Some(0.4567)), "0.46 ms");
        assert_eq!(fmt_ms(&Some(45.6)), "46 ms");
        assert_eq!(fmt_ms(&Some(1234.0)), "1.2 s");
        assert_eq!(fmt_ms(&None), "–");
        assert_eq!(fmt_rate(&Some(0.9951)), "99.5%");
        assert_eq!(fmt_rps(&2.0), "2.0 rps");
        assert_eq!(fmt_rps(&1234.4), "1234 rps");
    }
}
