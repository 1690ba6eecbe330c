//! Interop: Python grpcio, generated from the same stocks.proto, calls a
//! replica and reads its `server-id` header.

use stockdata::test_util::{python_interop_report, spawn_replica};

#[tokio::test]
async fn python_grpcio_client_reads_the_server_id() {
    let replica = spawn_replica("py-interop-1").await;
    let Some(report) = python_interop_report(replica.addr).await else {
        return;
    };
    let report: serde_json::Value = serde_json::from_str(&report).expect("the client prints JSON");
    assert_eq!(report["server_id"], "py-interop-1", "{report}");
    assert_eq!(report["stock"]["id"], 1, "{report}");
    assert_eq!(report["stock"]["symbol"], "AAPL", "{report}");
    assert_eq!(report["refusal"]["code"], "INVALID_ARGUMENT", "{report}");
    replica.shutdown().await;
}
