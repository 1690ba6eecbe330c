//! `meshctl stat`, `routes`, `top` and `tap` against the running demo's
//! dashboard: tables as docs/dashboard.md shows them, valid JSON, requests
//! tapped live, and a clear failure when the dashboard is unreachable.

use crate::{Demo, free_port_triple, http_get, meshctl, until_proxies_up, wait_for_line};
use serde_json::Value;
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

/// Runs `meshctl ARGS`: exit success, stdout, stderr.
async fn run(args: &[&str]) -> (bool, String, String) {
    let output = tokio::time::timeout(Duration::from_secs(30), meshctl().args(args).output())
        .await
        .expect("meshctl answers within 30 s")
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The cells of the table row that starts with `first`.
fn row<'t>(table: &'t str, first: &str) -> Vec<&'t str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&first))
        .unwrap_or_else(|| panic!("no row {first:?} in\n{table}"))
}

#[tokio::test]
async fn stat_routes_top_and_tap_print_the_dashboards_figures() {
    let port = free_port_triple();
    let mut guard = Demo::start(&["--replicas", "2", "--port", &port.to_string()]);
    wait_for_line(&mut guard.0, "Ctrl-C").await;
    let web = SocketAddr::from(([127, 0, 0, 1], port));
    let dashboard = format!("http://127.0.0.1:{}", port + 2);
    let dashboard_addr = SocketAddr::from(([127, 0, 0, 1], port + 2));

    // Traffic after the dashboard's first look at every proxy, then until
    // two scrapes have counted it.
    until_proxies_up(dashboard_addr, 3).await;
    let give_up = Instant::now() + Duration::from_secs(30);
    let stat = loop {
        http_get(web, "/api/stocks").await;
        let (ok, stat, err) = run(&["stat", "--dashboard", &dashboard]).await;
        assert!(ok, "{err}");
        let stockdata = row(&stat, "stockdata");
        if stockdata[3] != "0.0rps" {
            break stat;
        }
        assert!(
            Instant::now() < give_up,
            "stockdata never had a rate:\n{stat}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let header: Vec<&str> = stat.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "MESHED",
            "SUCCESS",
            "RPS",
            "LATENCY_P50",
            "LATENCY_P95",
            "LATENCY_P99"
        ]
    );
    let stockdata = row(&stat, "stockdata");
    assert_eq!(stockdata[1], "2/2", "{stat}");
    assert_eq!(stockdata[2], "100.00%", "{stat}");
    assert!(stockdata[4].ends_with("ms"), "{stat}");
    assert_eq!(row(&stat, "stockweb")[1], "1/1", "{stat}");
    // Columns line up: every row's cells start where the header's do.
    let starts = |line: &str| -> Vec<usize> {
        line.char_indices()
            .filter(|&(i, c)| c != ' ' && (i == 0 || line.as_bytes()[i - 1] == b' '))
            .map(|(i, _)| i)
            .collect()
    };
    for line in stat.lines().skip(1) {
        assert_eq!(starts(line), starts(stat.lines().next().unwrap()), "{stat}");
    }

    let (ok, wide, err) = run(&[
        "stat",
        "deploy/stockdata",
        "-o",
        "wide",
        "--dashboard",
        &dashboard,
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(wide.lines().count(), 2, "one workload asked for:\n{wide}");
    let wide_header: Vec<&str> = wide.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        wide_header[7..],
        ["TRAFFIC", "REQUESTS", "REFUSED"],
        "{wide}"
    );
    assert_eq!(row(&wide, "stockdata")[7], "inbound", "{wide}");

    let (ok, json, err) = run(&["stat", "-o", "json", "--dashboard", &dashboard]).await;
    assert!(ok, "{err}");
    let json: Value = serde_json::from_str(&json).expect("-o json is JSON");
    let names: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["name"].as_str())
        .collect();
    assert_eq!(names, ["stockdata", "stockweb"], "{json}");
    assert_eq!(json[0]["meshed"], 2);
    assert!(json[0]["rps"].as_f64().unwrap() > 0.0, "{json}");

    // Routes: the method StockData serves, and the one StockWeb calls.
    let (ok, routes, err) = run(&["routes", "stockdata", "--dashboard", &dashboard]).await;
    assert!(ok, "{err}");
    let get = row(&routes, "/StockData.Stocks/Get");
    assert_eq!((get[1], get[2]), ("stockdata", "100.00%"), "{routes}");
    let (ok, served, err) = run(&["routes", "deploy/stockweb", "--dashboard", &dashboard]).await;
    assert!(ok, "{err}");
    assert!(
        served.contains("stockweb served no routes") && served.contains("try --to stockdata"),
        "{served}"
    );
    let (ok, called, err) = run(&[
        "routes",
        "stockweb",
        "--to",
        "stockdata",
        "-o",
        "json",
        "--dashboard",
        &dashboard,
    ])
    .await;
    assert!(ok, "{err}");
    let called: Value = serde_json::from_str(&called).expect("-o json is JSON");
    assert_eq!(called[0]["route"], "/StockData.Stocks/Get", "{called}");
    assert!(called[0]["requests"].as_f64().unwrap() >= 100.0, "{called}");

    // Top: the busiest routes, once when stdout is not a terminal.
    let (ok, top, err) = run(&["top", "deploy/stockdata", "--dashboard", &dashboard]).await;
    assert!(ok, "{err}");
    assert!(
        top.starts_with("Busiest routes of stockdata over the last"),
        "{top}"
    );
    let get = row(&top, "/StockData.Stocks/Get");
    assert_eq!(
        (get[1], get[2], get[3]),
        ("served", "stockdata", "100.00%"),
        "{top}"
    );
    let (ok, top, err) = run(&["top", "stockweb", "-o", "json", "--dashboard", &dashboard]).await;
    assert!(ok, "{err}");
    let top: Value = serde_json::from_str(&top).expect("-o json is JSON");
    assert_eq!(
        (top[0]["route"].as_str(), top[0]["traffic"].as_str()),
        (Some("/StockData.Stocks/Get"), Some("called")),
        "{top}"
    );

    // Tap: requests made while it runs, one line each, from both sides.
    let load = tokio::spawn(async move {
        for _ in 0..100 {
            http_get(web, "/api/stocks").await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let (ok, tapped, err) = run(&[
        "tap",
        "deploy/stockdata",
        "--path",
        "/StockData.",
        "--max-requests",
        "3",
        "--dashboard",
        &dashboard,
    ])
    .await;
    assert!(ok, "{err}");
    let lines: Vec<&str> = tapped.lines().collect();
    assert_eq!(lines.len(), 3, "{tapped}");
    for line in &lines {
        assert!(
            line.starts_with("req proxy=in  stockdata/stockdata-"),
            "{line}"
        );
        for field in [
            ":method=POST",
            ":path=/StockData.Stocks/Get",
            ":status=200 grpc-status=0",
            "tls=true",
            "attempts=1",
        ] {
            assert!(line.contains(field), "{field} in {line}");
        }
    }
    let (ok, tapped, err) = run(&[
        "tap",
        "stockweb",
        "--direction",
        "outbound",
        "--max-requests",
        "2",
        "-o",
        "json",
        "--dashboard",
        &dashboard,
    ])
    .await;
    assert!(ok, "{err}");
    for line in tapped.lines() {
        let event: Value = serde_json::from_str(line).expect("-o json is JSON lines");
        assert_eq!(
            (event["workload"].as_str(), event["direction"].as_str()),
            (Some("stockweb"), Some("outbound"))
        );
        assert!(
            event["endpoint_instance"]
                .as_str()
                .unwrap()
                .starts_with("stockdata-"),
            "{event}"
        );
        assert_eq!(
            event["identity"], "spiffe://cluster.local/ns/demo/sa/stockdata",
            "{event}"
        );
    }
    assert_eq!(tapped.lines().count(), 2, "{tapped}");
    load.abort();
    // A tap that sees nothing ends when asked to.
    let (ok, quiet, err) = run(&[
        "tap",
        "stockdata",
        "--path",
        "/Nothing.",
        "--duration",
        "1s",
        "--dashboard",
        &dashboard,
    ])
    .await;
    assert!(ok && quiet.is_empty(), "{quiet}{err}");

    // Mistakes and an unreachable dashboard: non-zero, with why.
    let (ok, _, err) = run(&["routes", "nosuch", "--dashboard", &dashboard]).await;
    assert!(
        !ok && err.contains("no meshed workload \"nosuch\""),
        "{err}"
    );
    let (ok, _, err) = run(&["tap", "nosuch", "--dashboard", &dashboard]).await;
    assert!(
        !ok && err.contains("404") && err.contains("no proxy is up"),
        "{err}"
    );
    let closed = format!("http://127.0.0.1:{}", crate::free_port());
    for args in [
        &["stat", "--dashboard", &closed][..],
        &["routes", "stockdata", "--dashboard", &closed],
        &["top", "stockdata", "--dashboard", &closed],
        &["tap", "stockdata", "--dashboard", &closed],
    ] {
        let (ok, out, err) = run(args).await;
        assert!(!ok && out.is_empty(), "{args:?}: {out}");
        assert!(
            err.contains(&format!("cannot reach the dashboard at {closed}")),
            "{err}"
        );
    }
}
