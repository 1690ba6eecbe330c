//! `meshctl bench`: the load tool against a real StockData, and the suite's
//! smoke run (a few hundred calls per row, Envoy included) so the harness
//! that produces docs/benchmarks.md cannot rot. No speed is asserted here;
//! only that every row ran and no call failed.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

const MESHCTL: &str = env!("CARGO_BIN_EXE_meshctl");

use crate::bin;

/// A stockdata process, killed on drop.
struct Replica(std::process::Child);

impl Replica {
    /// A replica named `id` on free loopback ports (one per `addresses`),
    /// with `extra` flags, once it listens on every one.
    async fn start(id: &str, addresses: usize, extra: &[&str]) -> (Self, Vec<u16>) {
        let ports: Vec<u16> = (0..addresses).map(|_| crate::free_port()).collect();
        let listen: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let replica = Replica(
            Command::new(bin("stockdata"))
                .args(["--listen", &listen.join(","), "--server-id", id])
                .args(extra)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .spawn()
                .expect("stockdata is built beside meshctl"),
        );
        for port in &ports {
            let give_up = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while tokio::net::TcpStream::connect(("127.0.0.1", *port))
                .await
                .is_err()
            {
                assert!(
                    std::time::Instant::now() < give_up,
                    "stockdata listens on {port}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        (replica, ports)
    }
}

/// `name` in a directory of PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// h2load, or `None` where a test may skip without it (never with CI=true).
fn h2load_or_skip() -> Option<PathBuf> {
    let h2load = on_path("h2load");
    if h2load.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "with CI=true h2load is required (scripts/test.sh installs nghttp2-client)"
        );
        eprintln!("no h2load: SKIPPED");
    }
    h2load
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `meshctl bench ARGS --json`, which must succeed: its report.
async fn bench_json(args: &[&str]) -> serde_json::Value {
    let output = tokio::process::Command::new(MESHCTL)
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test]
async fn the_load_tool_reports_throughput_latency_and_servers_as_json() {
    let (_replica, ports) = Replica::start("b1", 1, &[]).await;
    let target = format!("http://127.0.0.1:{}", ports[0]);
    let report = bench_json(&[
        "--target",
        &target,
        "--connections",
        "2",
        "--streams",
        "5",
        "--requests",
        "400",
    ])
    .await;
    assert_eq!(report["requests"], 400, "{report}");
    assert_eq!(report["servers"]["b1"], 400, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    let latency = &report["latency_us"];
    let p50 = latency["p50"].as_u64().unwrap();
    assert!(
        p50 > 0 && p50 <= latency["p99"].as_u64().unwrap(),
        "{report}"
    );
    assert!(report["rps"].as_f64().unwrap() > 0.0, "{report}");

    // Open loop: the calls go out at the rate asked for.
    let output = tokio::process::Command::new(MESHCTL)
        .args([
            "bench",
            "--target",
            &target,
            "--streams",
            "10",
            "--requests",
            "100",
            "--rate",
            "200",
        ])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("open loop at 200/s"), "{text}");
    assert!(text.contains("requests  100 ("), "{text}");
    assert!(text.contains("b1 100.0%"), "{text}");
}

/// h2load counts an HTTP 200 as a success, which a gRPC error answered in
/// trailers only also is: driven by h2load, a call counts only if its
/// response message arrived. One replica on two addresses (stockdata's
/// `--listen` takes several), failing half its calls.
#[tokio::test]
async fn h2load_runs_count_grpc_errors_as_failed() {
    let Some(h2load) = h2load_or_skip() else {
        return;
    };
    let (_replica, ports) = Replica::start("h1", 2, &["--fail-rate", "0.5"]).await;
    for port in ports {
        let target = format!("http://127.0.0.1:{port}");
        let h2load = h2load.to_str().expect("a UTF-8 path");
        let report = bench_json(&[
            "--target",
            &target,
            "--streams",
            "10",
            "--requests",
            "1000",
            "--warmup",
            "0",
            "--h2load",
            h2load,
        ])
        .await;
        assert_eq!(report["requests"], 1000, "{report}");
        // About half, as the replica's fail rate says (binomial: 500 ± 16).
        let failed = report["errors"]["no_response_message"]
            .as_u64()
            .unwrap_or(0);
        assert!((400..=600).contains(&failed), "{report}");
        assert!(
            report["latency_us"]["p99"].as_u64().unwrap() > 0,
            "{report}"
        );
    }
}

/// The scaling curves' harness, on small points: every point ran for
/// mesh-proxy and for HAProxy, the baseline, without a failed call, and the
/// idle-memory figure was read.
#[tokio::test]
async fn the_scaling_smoke_run_covers_every_point() {
    if h2load_or_skip().is_none() {
        return;
    }
    if on_path("haproxy").is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "with CI=true the scaling smoke run needs haproxy (scripts/test.sh installs it)"
        );
        eprintln!("SKIPPED: no haproxy on PATH");
        return;
    }
    let output = tokio::process::Command::new(MESHCTL)
        .args(["bench", "--scaling", "--smoke"])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Both curves, each point for both proxies.
    for point in ["| 1 | ", "| 10 | "] {
        for proxy in ["mesh-proxy", "haproxy"] {
            let row = format!("{point}{proxy} | ");
            assert_eq!(text.matches(&row).count(), 2, "{row}: {text}");
        }
    }
    for row in text.lines().filter(|l| l.starts_with("| 1")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(cells[cells.len() - 2], "0", "errors in {row}");
        let rps: f64 = cells[3].parse().unwrap_or_else(|_| panic!("rate in {row}"));
        assert!(rps > 0.0, "{row}");
        // HAProxy's 300 calls may take less than a clock tick of CPU.
        if cells[2] == "mesh-proxy" {
            let cpu: f64 = cells[4].parse().unwrap_or_else(|_| panic!("CPU in {row}"));
            assert!(cpu > 0.0, "{row}");
        }
    }
    assert!(
        text.contains("with 100 open and idle after one call each"),
        "{text}"
    );
}

#[tokio::test]
async fn the_suite_smoke_run_covers_every_row_without_errors() {
    let envoy = std::env::var_os("STOCKKUBE_ENVOY")
        .map(PathBuf::from)
        .filter(|e| e.is_file());
    let [haproxy, nginx, h2load] =
        ["haproxy", "nginx", "h2load"].map(|name| on_path(name).is_some());
    if envoy.is_none() || !haproxy || !nginx || !h2load {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "with CI=true the smoke run needs Envoy (STOCKKUBE_ENVOY), haproxy, nginx and h2load \
             (scripts/test.sh installs them); envoy: {envoy:?}, haproxy: {haproxy}, nginx: {nginx}, \
             h2load: {h2load}"
        );
        eprintln!("some proxies are missing: the smoke run leaves their rows out");
    }
    let mut command = tokio::process::Command::new(MESHCTL);
    command.args(["bench", "--suite", "--smoke"]);
    if let Some(envoy) = &envoy {
        command.arg("--envoy").arg(envoy);
    }
    let output = command.output().await.unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| 1 ×")).collect();
    // Per load: direct, mesh-proxy one and two hops and two hops with mTLS,
    // the same three for Envoy and HAProxy, and two rows for nginx, for
    // those present.
    let per_load =
        4 + 3 * [envoy.is_some(), haproxy].iter().filter(|p| **p).count() + 2 * usize::from(nginx);
    assert_eq!(rows.len(), 3 * per_load, "{table}");
    let mut names = vec![
        "direct",
        "mesh-proxy",
        "mesh-proxy, 2 hops",
        "mesh-proxy, 2 hops, mTLS",
    ];
    if envoy.is_some() {
        names.push("envoy, 2 hops, mTLS");
    }
    if haproxy {
        names.push("haproxy, 2 hops, mTLS");
    }
    for name in names {
        assert!(
            rows.iter().any(|r| r.contains(&format!("| {name} |"))),
            "{name}: {table}"
        );
    }
    for row in rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(cells[cells.len() - 2], "0", "errors in {row}");
        assert_eq!(cells[cells.len() - 3], "300", "calls in {row}");
        // h2load drives the closed loops, meshctl bench the open loop; each
        // row says which, and what that client's CPU per call was.
        let client = if !h2load || row.starts_with("| 1 × 100 at ") {
            "meshctl"
        } else {
            "h2load"
        };
        assert_eq!(cells[7], client, "client of {row}");
        let client_cpu: f64 = cells[8]
            .parse()
            .unwrap_or_else(|_| panic!("client CPU in {row}"));
        assert!(client_cpu >= 0.0, "{row}");
    }
}
