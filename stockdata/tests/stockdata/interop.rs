//! Interop: Python grpcio, generated from the same stocks.proto, calls a
//! replica and reads its `server-id` header.
//!
//! The interpreter comes from `STOCKKUBE_PYTHON`, else the venv that
//! `scripts/test.sh` creates at `target/interop-venv`. Without one the test
//! fails under `CI=true` and says how to get one otherwise.

use std::{path::PathBuf, process::Stdio};
use stockdata::test_util::spawn_replica;

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("stockdata sits inside the workspace")
        .to_owned()
}

fn python() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("STOCKKUBE_PYTHON") {
        return Some(PathBuf::from(path));
    }
    let venv = workspace_root().join("target/interop-venv/bin/python");
    venv.exists().then_some(venv)
}

#[tokio::test]
async fn python_grpcio_client_reads_the_server_id() {
    let Some(python) = python() else {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(
            !ci,
            "CI=true but no Python with grpcio: run scripts/test.sh or set STOCKKUBE_PYTHON"
        );
        eprintln!(
            "SKIPPED python_grpcio_client_reads_the_server_id: no interop venv; \
             scripts/test.sh creates one"
        );
        return;
    };
    let replica = spawn_replica("py-interop-1").await;

    let output = tokio::process::Command::new(&python)
        .arg(workspace_root().join("stockdata/tests/interop/client.py"))
        .arg(workspace_root().join("proto/proto"))
        .arg(replica.addr.to_string())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(60), output)
        .await
        .expect("the Python client finishes within 60 s")
        .expect("the Python interpreter starts");
    assert!(
        output.status.success(),
        "python client failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );

    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "client printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    assert_eq!(report["server_id"], "py-interop-1", "{report}");
    assert_eq!(report["stock"]["id"], 1, "{report}");
    assert_eq!(report["stock"]["symbol"], "AAPL", "{report}");
    assert_eq!(report["refusal"]["code"], "INVALID_ARGUMENT", "{report}");

    replica.shutdown().await;
}
