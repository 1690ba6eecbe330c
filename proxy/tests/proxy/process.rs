//! The `mesh-proxy` and `mesh-controller` binaries as processes: start-up
//! errors name their flag; SIGTERM drains and exits 0.

use crate::support::{free_port, try_http_get};
use std::{process::Stdio, time::Duration};
use tokio::process::Command;

async fn run_to_exit(bin: &str, args: &[&str]) -> std::process::Output {
    let output = Command::new(bin)
        .args(args)
        .env_clear()
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(20), output)
        .await
        .expect("exits within 20 s")
        .expect("starts")
}

const PROXY: &str = env!("CARGO_BIN_EXE_mesh-proxy");

#[tokio::test]
async fn bad_flags_name_themselves() {
    for (args, expected) in [
        (&["--outbound", "stockdata"][..], "--outbound"),
        (
            &["--outbound", "s=127.0.0.1:0", "--discover", "s=nope"][..],
            "--discover",
        ),
        (
            &[
                "--balance",
                "random",
                "--inbound",
                "127.0.0.1:0",
                "--app",
                "127.0.0.1:1",
            ][..],
            "--balance",
        ),
        (&["--frobnicate"][..], "--frobnicate"),
        (&[][..], "nothing to proxy"),
    ] {
        let output = run_to_exit(PROXY, args).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn a_taken_port_names_its_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = run_to_exit(
        PROXY,
        &[
            "--inbound",
            "127.0.0.1:0",
            "--app",
            "127.0.0.1:1",
            "--admin",
            &addr,
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr} (--admin")),
        "{stderr}"
    );
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let mut child = Command::new(PROXY)
        .args([
            "--inbound",
            "127.0.0.1:0",
            "--app",
            "127.0.0.1:1",
            "--admin",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "mesh_proxy=info")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let ready = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("mesh-proxy ready") {
                return;
            }
        }
        panic!("exited before ready");
    };
    tokio::time::timeout(Duration::from_secs(20), ready)
        .await
        .expect("ready within 20 s");
    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits within 20 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}

/// What a pod's readiness probe and a request in flight see once the
/// kubelet sends SIGTERM: `/ready` answers `503 draining`, `/live` and
/// `/metrics` still answer (the admin server stays up through the drain),
/// and the request still gets its answer.
#[tokio::test]
async fn after_sigterm_ready_says_draining_while_requests_finish() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // An app that answers after 1.5 s, and says when a request arrived.
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = app.local_addr().unwrap();
    let (arrived, mut request_arrived) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = app.accept().await {
            let arrived = arrived.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 4096];
                let mut read = 0;
                while !buffer[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                }
                let _ = arrived.send(()).await;
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nfinished")
                    .await;
            });
        }
    });
    let (inbound, admin) = (free_port(), free_port());
    let mut child = Command::new(PROXY)
        .args(["--inbound", &format!("127.0.0.1:{inbound}")])
        .args(["--app", &app_addr.to_string()])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .env("RUST_LOG", "mesh_proxy=info")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !try_http_get(admin, "/ready")
        .await
        .is_ok_and(|a| a.starts_with("HTTP/1.1 200"))
    {
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let in_flight = tokio::spawn(try_http_get(inbound, "/slow"));
    tokio::time::timeout(Duration::from_secs(10), request_arrived.recv())
        .await
        .expect("the request reaches the app");
    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    // Poll until the proxy has seen the signal.
    let ready = loop {
        let answer = try_http_get(admin, "/ready")
            .await
            .expect("the admin server answers while draining");
        if !answer.starts_with("HTTP/1.1 200") {
            break answer;
        }
        assert!(std::time::Instant::now() < deadline, "never draining");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(ready.ends_with("draining\n"), "{ready}");
    let metrics = try_http_get(admin, "/metrics").await.unwrap();
    assert!(
        metrics.starts_with("HTTP/1.1 200"),
        "metrics readable while draining"
    );
    let live = try_http_get(admin, "/live").await.unwrap();
    assert!(
        live.starts_with("HTTP/1.1 200"),
        "live while draining: {live}"
    );

    let answer = in_flight.await.unwrap().unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("finished"),
        "{answer}"
    );
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits after the drain")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        try_http_get(admin, "/ready").await.is_err(),
        "the admin server stops last"
    );
}
