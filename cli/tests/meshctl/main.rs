//! `meshctl` as a user runs it: the demo starts the sample, shows the
//! one-server problem, and stops cleanly; bad flags and busy ports fail
//! with a clear message.

use std::{
    net::{SocketAddr, TcpListener},
    process::Stdio,
    time::Duration,
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpStream,
    process::{Child, Command},
};

const MESHCTL: &str = env!("CARGO_BIN_EXE_meshctl");

fn meshctl() -> Command {
    let mut command = Command::new(MESHCTL);
    // The service binaries sit beside meshctl; if this test binary was built
    // alone, meshctl builds them with the cargo that built it.
    command
        .env("CARGO", env!("CARGO"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port `p` with `p + 1` free too, for two replicas.
fn free_port_pair() -> u16 {
    for _ in 0..50 {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two consecutive free ports in 50 tries");
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a header block");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

async fn wait_for_line(child: &mut Child, needle: &str) -> Vec<String> {
    let stdout = child.stdout.as_mut().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    let wait = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.contains(needle);
            seen.push(line);
            if done {
                return;
            }
        }
        panic!("meshctl exited before printing {needle:?}: {seen:?}");
    };
    tokio::time::timeout(Duration::from_secs(300), wait)
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} within 300 s"));
    seen
}

#[tokio::test]
async fn demo_runs_the_sample_and_stops_on_sigterm() {
    let web = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let service = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let first_replica = free_port_pair();
    let mut demo = meshctl()
        .args(["demo", "--replicas", "2"])
        .args(["--web-addr", &web.to_string()])
        .args(["--service-addr", &service.to_string()])
        .args(["--stockdata-port", &first_replica.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();

    let banner = wait_for_line(&mut demo, "Press Ctrl-C").await.join("\n");
    assert!(banner.contains(&format!("http://{web}/")), "{banner}");

    let json: serde_json::Value =
        serde_json::from_str(&http_get(web, "/api/stocks").await).unwrap();
    assert_eq!(json["rows"].as_array().unwrap().len(), 100, "{json}");
    let servers = json["servers"].as_object().unwrap();
    assert_eq!(
        servers.len(),
        1,
        "no mesh yet: one server answers all: {servers:?}"
    );
    let server = servers.keys().next().unwrap();
    assert!(
        server == "stockdata-1" || server == "stockdata-2",
        "{server}"
    );

    let pid = rustix::process::Pid::from_raw(demo.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), demo.wait())
        .await
        .expect("the demo stops within 30 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
    // Its children went with it: nothing listens on their ports any more.
    for addr in [web, SocketAddr::from(([127, 0, 0, 1], first_replica))] {
        assert!(TcpStream::connect(addr).await.is_err(), "{addr} still open");
    }
}

#[tokio::test]
async fn demo_reports_a_busy_port_and_exits_non_zero() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let output = meshctl()
        .args(["demo", "--service-addr", &busy_addr])
        .args(["--web-addr", &format!("127.0.0.1:{}", free_port())])
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), output)
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {busy_addr} (--service-addr)")),
        "{stderr}"
    );
}

#[tokio::test]
async fn unknown_flags_and_bad_values_are_refused() {
    for (args, expected) in [
        (&["demo", "--frobnicate"][..], "--frobnicate"),
        (&["demo", "--replicas", "0"][..], "--replicas"),
        (&["demo", "--web-addr", "nowhere"][..], "--web-addr"),
        (
            &["demo", "--bin-dir", "/nonexistent/bin"][..],
            "/nonexistent/bin",
        ),
    ] {
        let output = meshctl()
            .env_remove("CARGO")
            .args(args)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
