//! The dashboard in a real browser (headless Chromium through WebDriver),
//! against `meshctl demo` with three replicas: the overview, topology,
//! routes, tap and Servers pages show the mesh (a request shows in the live
//! tap within 2 s); killing a replica from the demo controls
//! shows it down within 10 s while the others take its share. Screenshots
//! of each page are written to `target/screenshots/`.

use crate::{
    Demo, free_port_triple, http_get, signal, until_proxies_up, wait_for_line, webdriver::Browser,
};
use serde_json::Value;
use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

fn screenshot_dir() -> PathBuf {
    PathBuf::from(crate::MESHCTL)
        .parent()
        .and_then(|debug| debug.parent())
        .expect("meshctl sits in target/<profile>/")
        .join("screenshots")
}

/// Polls the page with `script` (it returns a value or null) until it
/// returns non-null, within `deadline`.
async fn wait_in_page(browser: &Browser, what: &str, deadline: Duration, script: &str) -> Value {
    let give_up = Instant::now() + deadline;
    loop {
        let value = browser.eval(script).await;
        if !value.is_null() {
            return value;
        }
        assert!(
            Instant::now() < give_up,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Accessibility basics every page must pass: tables have header cells,
/// SVGs have titles, and trouble is said in text, not colour alone.
const ACCESSIBILITY: &str = r#"
    const problems = [];
    document.querySelectorAll('table').forEach((t, i) => {
        if (!t.querySelector('thead th')) problems.push('table ' + i + ' has no header cells');
    });
    document.querySelectorAll('svg').forEach((s, i) => {
        if (!s.querySelector(':scope > title')) problems.push('svg ' + i + ' has no title');
    });
    document.querySelectorAll('img').forEach((m, i) => {
        if (!m.getAttribute('alt')) problems.push('img ' + i + ' has no alt');
    });
    document.querySelectorAll('tr.trouble, g.node.trouble, g.edge.trouble').forEach((e) => {
        if (!/down|failing|removed|ejected|FAILING|⚠|✗/.test(e.textContent)) problems.push('trouble without words: ' + e.outerHTML.slice(0, 80));
    });
    return problems;
"#;

async fn assert_accessible(browser: &Browser, page: &str) {
    let problems = browser.eval(ACCESSIBILITY).await;
    assert_eq!(problems, Value::Array(vec![]), "{page}: {problems}");
}

/// Loads StockWeb-with-mesh `times` times, as a user would.
async fn load_stockweb(web: SocketAddr, times: usize) {
    for _ in 0..times {
        let json: Value = serde_json::from_str(&http_get(web, "/api/stocks").await).unwrap();
        assert_eq!(json["rows"].as_array().map(Vec::len), Some(100));
    }
}

#[tokio::test]
async fn dashboard_pages_in_a_real_browser() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let port = free_port_triple();
    let mut guard = Demo::start(&["--replicas", "3", "--port", &port.to_string()]);
    let demo = &mut guard.0;
    wait_for_line(demo, "Ctrl-C").await;
    let web = SocketAddr::from(([127, 0, 0, 1], port));
    let dashboard_addr = SocketAddr::from(([127, 0, 0, 1], port + 2));
    let dashboard = format!("http://{dashboard_addr}");
    let shots = screenshot_dir();

    until_proxies_up(dashboard_addr, 4).await;
    load_stockweb(web, 3).await;

    // Overview: both workloads with traffic, once two scrapes have seen it.
    browser.goto(&format!("{dashboard}/")).await;
    let rates = wait_in_page(
        &browser,
        "stockweb and stockdata with non-zero rates",
        Duration::from_secs(20),
        r#"
        const rate = (w) => { const c = document.querySelector('tr[data-workload="' + w + '"] [data-rps]');
                              return c ? parseFloat(c.dataset.rps) : 0; };
        const r = { stockweb: rate('stockweb'), stockdata: rate('stockdata') };
        return (r.stockweb > 0 && r.stockdata > 0) ? r : null;
        "#,
    )
    .await;
    assert!(rates["stockweb"].as_f64().unwrap() > 0.0, "{rates}");
    let charts = browser
        .eval(r#"return Array.from(document.querySelectorAll('tr[data-workload="stockdata"] svg.spark title')).map(t => t.textContent);"#)
        .await;
    let charts: Vec<&str> = charts
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(charts.len(), 3, "rps, success and p99 charts: {charts:?}");
    assert!(
        charts[0].starts_with("requests per second over the last "),
        "{charts:?}"
    );
    assert_accessible(&browser, "overview").await;
    browser.screenshot(&shots.join("overview.png")).await;

    // Topology: a node per workload and the stockweb -> stockdata edge.
    browser.goto(&format!("{dashboard}/topology")).await;
    let graph = browser
        .eval(
            r#"return {
                nodes: Array.from(document.querySelectorAll('svg g.node')).map(n => n.dataset.workload),
                edge: !!document.querySelector('svg g.edge[data-source="stockweb"][data-target="stockdata"]'),
                replicas: document.querySelectorAll('svg g.node[data-workload="stockdata"] g.instance.up').length,
                security: (document.querySelector('svg g.edge[data-source="stockweb"] text.security') || {}).textContent
            };"#,
        )
        .await;
    let nodes: Vec<&str> = graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        nodes.contains(&"stockweb") && nodes.contains(&"stockdata"),
        "{graph}"
    );
    assert_eq!(graph["edge"], true, "{graph}");
    assert_eq!(graph["replicas"], 3, "{graph}");
    assert_eq!(
        graph["security"], "🔒 mTLS",
        "the edge says it is mTLS: {graph}"
    );
    assert_accessible(&browser, "topology").await;
    browser.screenshot(&shots.join("topology.png")).await;

    // Routes: StockData serves its gRPC method; StockWeb calls it.
    browser
        .goto(&format!("{dashboard}/routes?workload=stockdata"))
        .await;
    let served = wait_in_page(
        &browser,
        "StockData's Get route with a rate",
        Duration::from_secs(20),
        r#"const r = document.querySelector('table.routes[data-workload="stockdata"] tr[data-route="/StockData.Stocks/Get"][data-direction="inbound"] [data-rps]');
           return (r && parseFloat(r.dataset.rps) > 0) ? parseFloat(r.dataset.rps) : null;"#,
    )
    .await;
    assert!(served.as_f64().unwrap() > 0.0);
    assert_accessible(&browser, "routes").await;
    browser.screenshot(&shots.join("routes.png")).await;
    browser.goto(&format!("{dashboard}/routes")).await;
    let called = browser
        .eval(r#"return !!document.querySelector('table.routes[data-workload="stockweb"] tr[data-route="/StockData.Stocks/Get"][data-direction="outbound"][data-target="stockdata"]');"#)
        .await;
    assert_eq!(called, true, "StockWeb's called route is listed");

    // Tap: start it, make requests, see them in the live table within 2 s.
    browser
        .goto(&format!("{dashboard}/tap?workload=stockdata"))
        .await;
    browser.click("#tap-start").await;
    wait_in_page(
        &browser,
        "the tap attached",
        Duration::from_secs(10),
        r#"return /waiting for requests|tapping live/.test(document.getElementById('tap-status').textContent) ? true : null;"#,
    )
    .await;
    let asked = Instant::now();
    load_stockweb(web, 1).await;
    let tapped = wait_in_page(
        &browser,
        "a tapped request in the table",
        Duration::from_secs(2),
        r#"const r = document.querySelector('#tap-rows tr[data-path="/StockData.Stocks/Get"][data-direction="inbound"]');
           return r ? Array.from(r.cells).map(c => c.textContent) : null;"#,
    )
    .await;
    assert!(asked.elapsed() <= Duration::from_secs(2) + Duration::from_millis(500));
    let cells: Vec<&str> = tapped
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(cells[0].starts_with("stockdata/stockdata-"), "{cells:?}");
    assert!(cells[6].starts_with("200 · gRPC 0"), "{cells:?}");
    assert!(
        cells[9].starts_with("🔒 mTLS spiffe://cluster.local/ns/demo/sa/stockweb"),
        "the caller's identity: {cells:?}"
    );
    assert_accessible(&browser, "tap").await;
    browser.screenshot(&shots.join("tap.png")).await;
    browser.click("#tap-stop").await;

    // Servers: at least two replicas with requests; then StockWeb's own rows.
    browser.goto(&format!("{dashboard}/servers")).await;
    let serving = browser
        .eval(r#"return Array.from(document.querySelectorAll('tr[data-instance]')).filter(r => parseFloat(r.dataset.served) > 0).length;"#)
        .await;
    assert!(
        serving.as_u64().unwrap() >= 2,
        "replicas with requests: {serving}"
    );
    let security = browser
        .eval(r#"return Array.from(document.querySelectorAll('tr[data-instance]')).filter(r => parseFloat(r.dataset.served) > 0).map(r => r.querySelector('td.security').textContent.trim());"#)
        .await;
    for cell in security.as_array().unwrap() {
        let text = cell.as_str().unwrap();
        assert!(
            text.starts_with("🔒 mTLS")
                && text.contains("spiffe://cluster.local/ns/demo/sa/stockdata"),
            "each serving replica is reached over mTLS, its identity shown: {security}"
        );
    }
    browser.click("#load-stockweb").await;
    let groups = wait_in_page(
        &browser,
        "StockWeb's rows grouped by server",
        Duration::from_secs(15),
        r#"const rows = document.querySelectorAll('table.stockweb-rows tr[data-server]'); return rows.length ? rows.length : null;"#,
    )
    .await;
    assert!(
        groups.as_u64().unwrap() >= 2,
        "servers in one StockWeb load: {groups}"
    );
    assert_accessible(&browser, "servers").await;
    browser.screenshot(&shots.join("servers.png")).await;

    // Kill a replica from the demo controls and watch it go down live.
    browser.goto(&format!("{dashboard}/servers")).await;
    let share = |instance: &str| {
        format!(
            r#"const r = document.querySelector('tr[data-instance="{instance}"]'); return r ? parseFloat(r.dataset.share) : null;"#
        )
    };
    let before = browser.eval(&share("stockdata-1")).await.as_f64().unwrap()
        + browser.eval(&share("stockdata-3")).await.as_f64().unwrap();
    browser
        .click(r#"tr[data-instance="stockdata-2"] form[action$="/kill"] button"#)
        .await;
    let killed_at = Instant::now();
    let load = tokio::spawn(async move {
        // Traffic keeps flowing while the page updates by itself.
        for _ in 0..10 {
            load_stockweb(web, 1).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    wait_in_page(
        &browser,
        "stockdata-2 shown down",
        Duration::from_secs(10),
        r#"const r = document.querySelector('tr[data-instance="stockdata-2"]'); return (r && r.dataset.state === 'down') ? true : null;"#,
    )
    .await;
    assert!(killed_at.elapsed() <= Duration::from_secs(10));
    load.await.unwrap();
    let after = wait_in_page(
        &browser,
        "the other replicas' shares rise",
        Duration::from_secs(10),
        &format!(
            r#"const a = (function() {{ {} }})(); const b = (function() {{ {} }})(); return (a + b > {before}) ? a + b : null;"#,
            share("stockdata-1"),
            share("stockdata-3")
        ),
    )
    .await;
    assert!(after.as_f64().unwrap() > before);
    // Its chart shows the kill as a step: it served before, nothing now.
    let step = wait_in_page(
        &browser,
        "stockdata-2's served chart down to 0",
        Duration::from_secs(20),
        r#"const c = document.querySelector('tr[data-instance="stockdata-2"] svg.spark');
           return (c && c.dataset.last === '0' && parseFloat(c.dataset.peak) > 0) ? c.querySelector('title').textContent : null;"#,
    )
    .await;
    assert!(
        step.as_str().unwrap().contains("now 0.00 rps"),
        "the chart says it in words: {step}"
    );
    let status = browser
        .eval(r#"return document.getElementById('live-status').textContent;"#)
        .await;
    assert!(
        status.as_str().unwrap().starts_with("live"),
        "live updates: {status}"
    );
    assert_accessible(&browser, "servers after kill").await;
    browser
        .screenshot(&shots.join("servers-after-kill.png"))
        .await;

    signal(demo, rustix::process::Signal::INT);
    let status = tokio::time::timeout(Duration::from_secs(60), demo.wait())
        .await
        .expect("the demo stops within 60 s")
        .unwrap();
    assert!(status.success(), "{status}");
}
