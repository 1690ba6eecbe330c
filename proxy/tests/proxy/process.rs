//! The `mesh-proxy` and `mesh-controller` binaries as processes: start-up
//! errors name their flag; SIGTERM drains and exits 0.

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
