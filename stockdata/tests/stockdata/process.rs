//! The `stockdata` binary as a process: start-up errors, and drain on SIGTERM.

use std::{process::Stdio, time::Duration};
use stockkube_proto::stockdata::{GetRequest, stocks_client::StocksClient};
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

const BIN: &str = env!("CARGO_BIN_EXE_stockdata");

async fn run_to_exit(args: &[&str]) -> std::process::Output {
    let output = Command::new(BIN)
        .args(args)
        .env_remove("STOCKDATA_LISTEN")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(20), output)
        .await
        .expect("stockdata exits within 20 s")
        .expect("stockdata starts")
}

#[tokio::test]
async fn address_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();

    let output = run_to_exit(&["--listen", &addr, "--server-id", "x"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(stderr.contains("STOCKDATA_LISTEN"), "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
}

#[tokio::test]
async fn bad_flags_are_refused_before_binding() {
    for (args, expected) in [
        (&["--fail-rate", "2"][..], "--fail-rate"),
        (&["--listen", "not-an-address"][..], "--listen"),
        (&["--frobnicate"][..], "--frobnicate"),
    ] {
        let output = run_to_exit(args).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn help_documents_every_flag_and_variable() {
    let output = run_to_exit(&["--help"]).await;
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for word in [
        "--listen",
        "STOCKDATA_LISTEN",
        "--server-id",
        "STOCKDATA_SERVER_ID",
        "--delay",
        "STOCKDATA_DELAY_MS",
        "--fail-rate",
        "STOCKDATA_FAIL_RATE",
    ] {
        assert!(help.contains(word), "--help lacks {word}:\n{help}");
    }
}

/// A running `stockdata` whose log lines arrive on a channel.
struct Running {
    child: Child,
    logs: mpsc::UnboundedReceiver<String>,
}

impl Running {
    async fn start(args: &[&str]) -> (Self, String) {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "stockdata=debug")
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("stockdata starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, logs) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut running = Self { child, logs };
        let line = running.wait_for_log("stockdata listening").await;
        let addr = line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("addr="))
            .unwrap_or_else(|| panic!("no addr= in {line:?}"))
            .to_owned();
        (running, addr)
    }

    async fn wait_for_log(&mut self, needle: &str) -> String {
        let wait = async {
            while let Some(line) = self.logs.recv().await {
                if line.contains(needle) {
                    return line;
                }
            }
            panic!("stockdata exited before logging {needle:?}");
        };
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} log within 20 s"))
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }
}

#[tokio::test]
async fn sigterm_drains_in_flight_calls_and_exits_zero() {
    let (mut server, addr) = Running::start(&[
        "--listen",
        "127.0.0.1:0",
        "--server-id",
        "draining",
        "--delay",
        "400",
    ])
    .await;
    let client = StocksClient::new(stockdata::test_util::connect(&addr).await);

    let calls: Vec<_> = (1..=5)
        .map(|id| {
            let mut client = client.clone();
            tokio::spawn(async move { client.get(GetRequest { id }).await })
        })
        .collect();
    // Every call has reached the service (and is held by --delay) before the signal.
    for _ in 0..5 {
        server.wait_for_log("get received").await;
    }
    server.signal("-TERM");

    for call in calls {
        let response = call
            .await
            .unwrap()
            .expect("in-flight call completes during drain");
        assert!(response.into_inner().stock.is_some());
    }
    let status = tokio::time::timeout(Duration::from_secs(20), server.child.wait())
        .await
        .expect("stockdata exits within 20 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn sigint_stops_an_idle_server_with_status_zero() {
    let (mut server, _addr) = Running::start(&["--listen", "127.0.0.1:0"]).await;
    server.signal("-INT");
    let status = tokio::time::timeout(Duration::from_secs(20), server.child.wait())
        .await
        .expect("stockdata exits within 20 s of SIGINT")
        .unwrap();
    assert!(status.success(), "exit status {status}");
}
