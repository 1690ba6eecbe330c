//! One proxy cannot exhaust the dashboard: a `/metrics` larger than the
//! byte limit (15 MB, sent without a length), one with more series than
//! the series limit, and one at the limit of what is kept, registered for
//! 60 s, leave the dashboard binary's memory within 100 MB of where it
//! was, each shown with its error, and the memory comes back once they are
//! deregistered.

use super::{IDLE, get_json, register, spawn_admin, spawn_controller};
use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};
use stockdata::test_util::eventually;
use stockkube_proto::{admin, mesh::DeregisterProxyRequest};
use tokio::net::TcpListener;

/// Resident memory of `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .expect("VmRSS in /proc/PID/status")
        * 1024
}

/// An admin server whose `/metrics` is `metrics`, in 1 MB chunks with no
/// length given when `chunked`.
async fn hostile_admin(metrics: bytes::Bytes, chunked: bool) -> SocketAddr {
    use axum::{body::Body, routing::get};
    let app = axum::Router::new()
        .route(
            admin::METRICS,
            get(move || {
                let metrics = metrics.clone();
                async move {
                    if chunked {
                        let chunks: Vec<Result<bytes::Bytes, Infallible>> = metrics
                            .chunks(1 << 20)
                            .map(|c| Ok(metrics.slice_ref(c)))
                            .collect();
                        Body::from_stream(tokio_stream::iter(chunks))
                    } else {
                        Body::from(metrics)
                    }
                }
            }),
        )
        .route(admin::ENDPOINTS, get(|| async { r#"{"services":[]}"# }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// `count` lines of `name` with distinct labels, as a proxy would write
/// them.
fn series(name: &str, count: usize) -> String {
    (0..count)
        .map(|i| {
            format!(
                "{name}{{direction=\"outbound\",target=\"stockdata\",endpoint=\"10.0.{}.{}:8080\",classification=\"success\",tls=\"true\"}} {i}\n",
                i / 256,
                i % 256
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_proxy_costs_the_dashboard_a_bounded_amount_of_memory() {
    let (controller, mut client) = spawn_controller().await;
    let (honest, _honest) = spawn_admin(Arc::new(std::sync::Mutex::new(IDLE))).await;
    register(&mut client, "stockweb", "stockweb-1", honest).await;

    let port = mesh_runtime::test_ports::free_port();
    let dashboard_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let dashboard = tokio::process::Command::new(env!("CARGO_BIN_EXE_mesh-dashboard"))
        .args(["--listen", &dashboard_addr.to_string()])
        .args(["--controller", &format!("http://{controller}")])
        .args(["--scrape-interval", "2s", "--window", "60s"])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = dashboard.id().unwrap();
    eventually(
        "the honest proxy scraped",
        Duration::from_secs(20),
        || async {
            // Not listening yet is no failure.
            tokio::net::TcpStream::connect(dashboard_addr).await.ok()?;
            let proxies = get_json(dashboard_addr, "/api/proxies").await;
            (proxies[0]["up"] == true).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let baseline = rss(pid);

    // More than 15 MB without a length; under the byte limit but past the
    // series limit; and 9,000 series of a family the pages read, under both
    // limits, so that every scrape of it is kept for the whole window.
    let (huge, many) = (
        series("mesh_requests_total", 120_000),
        series("junk_total", 20_000),
    );
    assert!(huge.len() > 15_000_000 && many.len() < 4 << 20);
    let huge = hostile_admin(huge.into(), true).await;
    let many = hostile_admin(many.into(), false).await;
    let kept = hostile_admin(series("mesh_requests_total", 9_000).into(), false).await;
    for (instance, admin) in [("huge", huge), ("many", many), ("kept", kept)] {
        register(&mut client, "hostile", instance, admin).await;
    }

    let started = tokio::time::Instant::now();
    let mut peak = baseline;
    while started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        peak = peak.max(rss(pid));
    }
    let proxies = get_json(dashboard_addr, "/api/proxies").await;
    let error = |instance: &str| {
        proxies
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["instance"] == instance)
            .map(|p| p["error"].as_str().unwrap_or("").to_owned())
            .unwrap_or_else(|| panic!("{instance} not listed: {proxies}"))
    };
    assert!(
        error("huge").contains("/metrics is larger than 4194304 bytes"),
        "{proxies}"
    );
    assert!(
        error("many").contains("more than 10000 series"),
        "{proxies}"
    );
    assert_eq!(error("kept"), "", "at the limits, it is read: {proxies}");
    let page = super::request(dashboard_addr, "GET", "/").await.1;
    assert!(
        page.contains("larger than 4194304 bytes"),
        "the page shows why"
    );
    eprintln!(
        "dashboard RSS: {} MB at rest, {} MB at the peak with the hostile proxies",
        baseline >> 20,
        peak >> 20
    );
    assert!(
        peak <= baseline + (100 << 20),
        "the dashboard went from {baseline} to {peak} bytes"
    );

    for admin in [huge, many, kept] {
        client
            .deregister_proxy(DeregisterProxyRequest {
                admin_addr: admin.to_string(),
            })
            .await
            .unwrap();
    }
    // The history forgets them at the next scrape; the allocator gives the
    // pages back within its 10 s.
    eventually("the memory given back", Duration::from_secs(30), || async {
        (rss(pid) <= baseline + (20 << 20)).then_some(())
    })
    .await;
}
