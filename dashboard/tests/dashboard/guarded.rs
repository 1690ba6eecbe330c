//! Only the dashboard's own pages can drive the demo: a foreign Host name
//! (DNS rebinding), a cross-site or cross-origin POST, and a POST without
//! this run's form token are refused with 403 and reach nothing; the
//! dashboard's own form, posted as a browser posts it, works and carries
//! the demo API's token.

use super::{Raw, raw};
use clap::Parser as _;
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};
use tokio::net::TcpListener;

/// What the stand-in for `meshctl demo`'s API was asked: method, path and
/// `authorization`.
type Calls = Arc<Mutex<Vec<(String, String, String)>>>;

/// A stand-in for `meshctl demo`'s control API that records every call.
async fn demo_api() -> (SocketAddr, Calls) {
    use axum::{extract::Request, routing::any};
    let calls = Calls::default();
    let recorded = calls.clone();
    let app = axum::Router::new().fallback(any(move |request: Request| {
        let recorded = recorded.clone();
        async move {
            let auth = request
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let path = request.uri().path().to_owned();
            recorded
                .lock()
                .unwrap()
                .push((request.method().to_string(), path.clone(), auth));
            if path == "/replicas" && request.method() == "GET" {
                r#"[{"name":"stockdata-1","state":"crashed","restarts":2,"last_exit":"signal: 9 (SIGKILL)","delay_ms":0}]"#.to_owned()
            } else {
                "done\n".to_owned()
            }
        }
    }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, calls)
}

fn posts(calls: &Calls) -> Vec<String> {
    calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(method, _, _)| method == "POST")
        .map(|(_, path, _)| path.clone())
        .collect()
}

#[tokio::test]
async fn only_the_dashboards_own_forms_drive_the_demo() {
    let (api, calls) = demo_api().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dashboard = listener.local_addr().unwrap();
    let args = mesh_dashboard::Args::try_parse_from([
        "mesh-dashboard",
        // No controller: scrapes fail, which this test does not look at.
        "--controller",
        "http://127.0.0.1:9",
        "--demo-api",
        &format!("http://{api}"),
        "--demo-api-token",
        "the-demo-api-token",
        "--listen",
        &dashboard.to_string(),
    ])
    .unwrap();
    let config = mesh_dashboard::Config::try_from(args).unwrap();
    tokio::spawn(mesh_dashboard::run(
        config,
        listener,
        std::future::pending(),
    ));
    let own = dashboard.to_string();
    let origin = format!("http://{dashboard}");

    // The page, by its own name: the demo's replicas as the demo API says,
    // in text, and a token in each form.
    let page = raw(dashboard, Raw::get("/servers").host(&own)).await;
    assert!(page.head.starts_with("HTTP/1.1 200"), "{}", page.head);
    assert!(
        page.body
            .contains(r#"data-replica="stockdata-1" data-demo-state="crashed""#)
            && page.body.contains("✗ crashed")
            && page.body.contains("signal: 9 (SIGKILL)"),
        "{}",
        page.body
    );
    let token = page
        .body
        .split(r#"name="token" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the form carries a token")
        .to_owned();
    assert!(token.len() >= 32, "{token}");
    let form = format!("token={token}");
    assert_eq!(
        calls.lock().unwrap()[0],
        (
            "GET".to_owned(),
            "/replicas".to_owned(),
            "Bearer the-demo-api-token".to_owned()
        )
    );

    // A foreign Host name, as a rebound DNS name would send: no page, no
    // action, even with the token and an Origin that matches it.
    for (method, path) in [
        ("GET", "/servers"),
        ("GET", "/api/servers"),
        ("POST", "/demo/replicas"),
    ] {
        let answer = raw(
            dashboard,
            Raw::new(method, path)
                .host("evil.example:8084")
                .header("origin", "http://evil.example:8084")
                .form(&form),
        )
        .await;
        assert!(
            answer.head.starts_with("HTTP/1.1 403"),
            "{method} {path}: {}",
            answer.head
        );
    }

    // Cross-site and cross-origin POSTs, with the token even: refused.
    for refused in [
        Raw::post("/demo/replicas")
            .header("origin", "http://evil.example")
            .header("sec-fetch-site", "cross-site"),
        Raw::post("/demo/replicas/stockdata-1/kill").header("sec-fetch-site", "cross-site"),
        Raw::post("/demo/replicas/stockdata-1/slow").header("sec-fetch-site", "same-site"),
        Raw::post("/demo/replicas").header("origin", "http://evil.example"),
        Raw::post("/demo/replicas").header("origin", "null"),
        Raw::post("/servers")
            .header("origin", "http://evil.example")
            .header("sec-fetch-site", "cross-site"),
    ] {
        let answer = raw(dashboard, refused.host(&own).form(&form)).await;
        assert!(answer.head.starts_with("HTTP/1.1 403"), "{}", answer.head);
    }
    // Same origin without the token, or with another: refused too.
    for bad_form in ["", "token=", "token=0123456789abcdef0123456789abcdef"] {
        let answer = raw(
            dashboard,
            Raw::post("/demo/replicas")
                .host(&own)
                .header("origin", &origin)
                .header("sec-fetch-site", "same-origin")
                .form(bad_form),
        )
        .await;
        assert!(
            answer.head.starts_with("HTTP/1.1 403"),
            "{bad_form:?}: {}",
            answer.head
        );
        assert!(answer.body.contains("reload the page"), "{}", answer.body);
    }
    assert_eq!(
        posts(&calls),
        Vec::<String>::new(),
        "nothing reached the demo"
    );

    // The dashboard's own form, as a browser posts it: done, with the demo
    // API's token. A client that sends no Origin (curl) needs the token only.
    let answer = raw(
        dashboard,
        Raw::post("/demo/replicas/stockdata-1/kill")
            .host(&own)
            .header("origin", &origin)
            .header("sec-fetch-site", "same-origin")
            .form(&form),
    )
    .await;
    assert!(answer.head.starts_with("HTTP/1.1 303"), "{}", answer.head);
    let answer = raw(
        dashboard,
        Raw::post("/demo/replicas").host("localhost").form(&form),
    )
    .await;
    assert!(answer.head.starts_with("HTTP/1.1 303"), "{}", answer.head);
    assert_eq!(posts(&calls), ["/replicas/stockdata-1/kill", "/replicas"]);
    assert!(
        calls
            .lock()
            .unwrap()
            .iter()
            .all(|(_, _, auth)| auth == "Bearer the-demo-api-token")
    );

    // Loading StockWeb costs a hundred calls: not something a GET does.
    let answer = raw(dashboard, Raw::get("/servers?load=1").host(&own)).await;
    assert!(
        !answer.body.contains("stockweb-rows"),
        "a GET loads nothing"
    );
}
