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
use tokio::net::TcpListener;
use tonic::transport::Channel;

async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let answer = mesh_runtime::test_http::get(addr, path).await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    serde_json::from_str(&answer.body).unwrap_or_else(|e| panic!("{path}: {e}: {}", answer.body))
}

/// One request on a fresh connection: the response's head and body.
async fn request(addr: SocketAddr, method: &str, path: &str) -> (String, String) {
    let answer = raw(addr, Raw::new(method, path).host(&addr.to_string())).await;
    (answer.head, answer.body)
}

/// A request written as a test says, so that its Host, Origin and the like
/// are exactly those.
pub(crate) use mesh_runtime::test_http::Request as Raw;

/// Sends `request` on a fresh connection and reads the whole answer.
pub(crate) async fn raw(addr: SocketAddr, request: Raw) -> mesh_runtime::test_http::Answer {
    mesh_runtime::test_http::send(addr, request)
        .await
        .unwrap_or_else(|e| panic!("the dashboard at {addr} did not answer: {e}"))
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

/// A dashboard in this process over the controller at `controller`,
/// scraping every 200 ms, with `flags` added: its address.
async fn spawn_dashboard(controller: SocketAddr, flags: &[&str]) -> SocketAddr {
    let controller = format!("http://{controller}");
    let args = mesh_dashboard::Args::try_parse_from(
        [
            "mesh-dashboard",
            "--controller",
            &controller,
            "--scrape-interval",
            "200ms",
        ]
        .into_iter()
        .chain(flags.iter().copied()),
    )
    .unwrap();
    let config = mesh_dashboard::Config::try_from(args).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dashboard = listener.local_addr().unwrap();
    tokio::spawn(mesh_dashboard::run(
        config,
        listener,
        std::future::pending(),
    ));
    dashboard
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
    let dashboard = spawn_dashboard(controller, &["--window", "60s"]).await;

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
