//! The proxy's identity through the `mesh-proxy` binary and the real
//! Identity service: not ready until it holds a certificate, then renewing
//! short-lived ones, counted in `/metrics`.

use crate::support::{free_port, try_http_get};
use mesh_controller::identity::{
    IdentityService,
    credentials::Credentials,
    issuer::{Authority, Issuer},
};
use std::{
    collections::HashMap,
    process::Stdio,
    time::{Duration, Instant},
};
use tokio::process::Command;

const PROXY: &str = env!("CARGO_BIN_EXE_mesh-proxy");
const CREDENTIAL: &str = "8d1e4c0b9a77-stockweb-bootstrap";

/// The value of the first sample of `name` with `labels` in `metrics`.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[tokio::test]
async fn the_proxy_is_ready_once_certified_and_renews_short_lived_certificates() {
    let dir = std::env::temp_dir().join(format!("mesh-proxy-identity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, format!("{CREDENTIAL}\n")).unwrap();
    let authority = Authority::generate("cluster.local", Duration::from_secs(3600)).unwrap();
    let anchors = dir.join("ca.crt");
    std::fs::write(&anchors, &authority.trust_anchor_pem).unwrap();
    let (controller_port, admin) = (free_port(), free_port());

    // The proxy starts before the controller answers.
    let mut proxy = Command::new(PROXY)
        .args(["--inbound", "127.0.0.1:0", "--app", "127.0.0.1:1"])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args([
            "--destination",
            &format!("http://127.0.0.1:{controller_port}"),
        ])
        .args(["--identity", "spiffe://cluster.local/ns/stocks/sa/stockweb"])
        .arg("--identity-token-file")
        .arg(&token)
        .arg("--identity-trust-anchors")
        .arg(&anchors)
        .env("RUST_LOG", "mesh_proxy=warn")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let not_ready = loop {
        if let Ok(answer) = try_http_get(admin, "/ready").await {
            break answer;
        }
        assert!(Instant::now() < deadline, "the admin server never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
    assert!(
        not_ready.ends_with("no identity certificate yet\n"),
        "{not_ready}"
    );

    // The controller, signing certificates of 3 s.
    let identity = IdentityService::new(
        "cluster.local",
        Issuer::new(&authority, Duration::from_secs(3)).unwrap(),
        Credentials::Bootstrap(HashMap::from([(
            CREDENTIAL.to_owned(),
            ("stocks".to_owned(), "stockweb".to_owned()),
        )])),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", controller_port))
        .await
        .unwrap();
    let controller = tokio::spawn(mesh_controller::run_with(
        mesh_controller::Registry::default(),
        Some(identity),
        listener,
        std::future::pending(),
    ));

    let deadline = Instant::now() + Duration::from_secs(20);
    while !try_http_get(admin, "/ready")
        .await
        .is_ok_and(|a| a.starts_with("HTTP/1.1 200"))
    {
        assert!(
            Instant::now() < deadline,
            "never ready after the controller came"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Renewed at about 2.1 s: at least three certificates within 10 s, each
    // later than the one before.
    let mut expiries = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = try_http_get(admin, "/metrics").await.unwrap();
        let ok = sample(
            &metrics,
            "mesh_identity_certifications_total{result=\"ok\"}",
        )
        .unwrap_or(0.0);
        let expiry = sample(&metrics, "mesh_identity_certificate_expiry_seconds").unwrap();
        if expiries.last() != Some(&expiry) {
            expiries.push(expiry);
        }
        if ok >= 3.0 && expiries.len() >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "renewals: {ok}, expiries {expiries:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(expiries.windows(2).all(|w| w[0] < w[1]), "{expiries:?}");
    assert!(
        try_http_get(admin, "/ready")
            .await
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );

    let _ = proxy.start_kill();
    controller.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
