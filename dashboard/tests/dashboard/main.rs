//! The dashboard over real sockets, against a real controller and a proxy
//! admin server that serves recorded documents (`tests/fixtures/`): its JSON
//! API reports what the proxy did; a proxy that stops answering is shown
//! down; the binary refuses bad flags.

mod bounded;
mod guarded;
mod tapped;

use clap::Parser as _;
use serde_json::Value;
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use stockdata::test_util::eventually;
use stockkube_proto::{
    admin,
    mesh::{ProxyInfo, registry_client::RegistryClient},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tonic::transport::Channel;

async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// One request on a fresh connection: the response's head and body.
async fn request(addr: SocketAddr, method: &str, path: &str) -> (String, String) {
    let answer = raw(addr, Raw::new(method, path).host(&addr.to_string())).await;
    (answer.head, answer.body)
}

/// A request written by hand, so that its Host, Origin and the like are
/// exactly what a test says.
pub(crate) struct Raw {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Raw {
    pub(crate) fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.into(),
            path: path.into(),
            headers: Vec::new(),
            body: String::new(),
        }
    }

    pub(crate) fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    pub(crate) fn post(path: &str) -> Self {
        Self::new("POST", path)
    }

    pub(crate) fn host(self, host: &str) -> Self {
        self.header("host", host)
    }

    pub(crate) fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// An `application/x-www-form-urlencoded` body, as a form posts.
    pub(crate) fn form(mut self, body: &str) -> Self {
        self.body = body.into();
        self.header("content-type", "application/x-www-form-urlencoded")
    }
}

/// A response's head and body.
pub(crate) struct Answer {
    pub(crate) head: String,
    pub(crate) body: String,
}

/// Sends `request` on a fresh connection and reads the whole answer.
pub(crate) async fn raw(addr: SocketAddr, request: Raw) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut text = format!("{} {} HTTP/1.1\r\n", request.method, request.path);
    for (name, value) in &request.headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n{}",
        request.body.len(),
        request.body
    ));
    stream.write_all(text.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    Answer {
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// A recorded pair of admin documents: `/metrics` and `/endpoints`.
#[derive(Clone, Copy)]
struct Recorded {
    metrics: &'static str,
    endpoints: &'static str,
}

const IDLE: Recorded = Recorded {
    metrics: include_str!("../fixtures/stockweb-idle.metrics.txt"),
    endpoints: include_str!("../fixtures/stockweb-idle.endpoints.json"),
};

const AFTER_40_CALLS: Recorded = Recorded {
    metrics: include_str!("../fixtures/stockweb-40-calls.metrics.txt"),
    endpoints: include_str!("../fixtures/stockweb-40-calls.endpoints.json"),
};

/// A proxy's admin server that serves whichever recorded documents it is
/// given; aborting its task takes it down.
async fn spawn_admin(serving: Arc<Mutex<Recorded>>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use axum::{extract::State, routing::get};
    type Shared = State<Arc<Mutex<Recorded>>>;
    let app = axum::Router::new()
        .route(
            admin::METRICS,
            get(|State(now): Shared| async move {
                let metrics = now.lock().unwrap().metrics;
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics,
                )
            }),
        )
        .route(
            admin::ENDPOINTS,
            get(|State(now): Shared| async move {
                let endpoints = now.lock().unwrap().endpoints;
                ([("content-type", "application/json")], endpoints)
            }),
        )
        .with_state(serving);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, task)
}

/// A controller on the local registry, in this process: its address and a
/// Registry client.
async fn spawn_controller() -> (SocketAddr, RegistryClient<Channel>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let controller = listener.local_addr().unwrap();
    tokio::spawn(mesh_controller::run(
        mesh_controller::Registry::default(),
        listener,
        std::future::pending(),
    ));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{controller}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (controller, RegistryClient::new(channel))
}

/// Registers a proxy whose admin server is `admin`, for the dashboard.
async fn register(
    client: &mut RegistryClient<Channel>,
    workload: &str,
    instance: &str,
    admin: SocketAddr,
) {
    client
        .register_proxy(ProxyInfo {
            workload: workload.into(),
            instance: instance.into(),
            admin_addr: admin.to_string(),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn api_reports_traffic_per_replica_and_proxies_that_went_down() {
    // Controller.
    let (controller, mut client) = spawn_controller().await;

    // StockWeb's proxy, just started.
    let serving = Arc::new(Mutex::new(IDLE));
    let (admin, proxy) = spawn_admin(serving.clone()).await;
    register(&mut client, "stockweb", "stockweb-1", admin).await;

    // The dashboard, scraping every 200 ms.
    let args = mesh_dashboard::Args::try_parse_from([
        "mesh-dashboard",
        "--controller",
        &format!("http://{controller}"),
        "--scrape-interval",
        "200ms",
        "--window",
        "60s",
    ])
    .unwrap();
    let config = mesh_dashboard::Config::try_from(args).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dashboard = listener.local_addr().unwrap();
    tokio::spawn(mesh_dashboard::run(
        config,
        listener,
        std::future::pending(),
    ));

    eventually(
        "the dashboard sees the proxy",
        Duration::from_secs(10),
        || async {
            let proxies = get_json(dashboard, "/api/proxies").await;
            (proxies[0]["up"] == true).then_some(())
        },
    )
    .await;

    // 40 calls went through it.
    *serving.lock().unwrap() = AFTER_40_CALLS;
    let servers = eventually("40 requests counted", Duration::from_secs(10), || async {
        let servers = get_json(dashboard, "/api/servers").await;
        (servers["services"][0]["total"] == 40.0).then_some(servers)
    })
    .await;
    let replicas = servers["services"][0]["replicas"].as_array().unwrap();
    let names: Vec<_> = replicas
        .iter()
        .map(|r| r["instance"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["stockdata-1", "stockdata-2"], "{servers}");
    let served: f64 = replicas.iter().map(|r| r["served"].as_f64().unwrap()).sum();
    assert_eq!(served, 40.0);
    assert!(
        replicas.iter().all(|r| r["served"].as_f64().unwrap() > 0.0),
        "{servers}"
    );

    let overview = get_json(dashboard, "/api/overview").await;
    let row = &overview["workloads"][0];
    assert_eq!(
        (row["workload"].as_str(), row["direction"].as_str()),
        (Some("stockweb"), Some("outbound"))
    );
    assert_eq!(row["golden"]["requests"], 40.0);
    assert_eq!(row["golden"]["success_rate"], 1.0);

    let topology = get_json(dashboard, "/api/topology").await;
    assert_eq!(topology["edges"][0]["source"], "stockweb");
    assert_eq!(topology["edges"][0]["target"], "stockdata");

    // Without `meshctl demo` (in a cluster, in compose) the demo controls
    // are not shown, and posting to them changes nothing.
    let (head, page) = request(dashboard, "GET", "/servers").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        page.contains("stockdata-1"),
        "the Servers page shows the replicas"
    );
    assert!(
        !page.contains("Demo controls") && !page.contains(">Kill<"),
        "{page}"
    );
    let (head, _) = request(dashboard, "POST", "/demo/replicas").await;
    assert!(
        !head.starts_with("HTTP/1.1 303") && !head.starts_with("HTTP/1.1 2"),
        "{head}"
    );

    // The proxy stops: it is shown down, not dropped.
    proxy.abort();
    let _ = proxy.await;
    eventually("the proxy shown down", Duration::from_secs(10), || async {
        let proxies = get_json(dashboard, "/api/proxies").await;
        (proxies[0]["up"] == false && proxies[0]["error"].is_string()).then_some(())
    })
    .await;
    let overview = get_json(dashboard, "/api/overview").await;
    assert_eq!(overview["workloads"][0]["meshed"], 0);
    assert_eq!(overview["workloads"][0]["total"], 1);
    assert_eq!(overview["workloads"][0]["in_trouble"], true);
}

#[tokio::test]
async fn the_binary_refuses_bad_flags() {
    for (args, expected) in [
        (&["--controller", "grpc://x"][..], "--controller"),
        (&["--scrape-interval", "soon"][..], "--scrape-interval"),
        (
            &["--window", "1s", "--scrape-interval", "2s"][..],
            "--window",
        ),
        (&["--frobnicate"][..], "--frobnicate"),
    ] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_mesh-dashboard"))
            .args(args)
            .env_clear()
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
