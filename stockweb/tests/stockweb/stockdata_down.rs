//! StockData unreachable, or failing: StockWeb still answers, with error rows.

use crate::support::{get, get_json, spawn_stockweb};
use stockdata::{Faults, test_util::spawn_replica_with};

#[tokio::test]
async fn a_dead_stockdata_gives_error_rows_not_a_crash() {
    // A port that was free a moment ago and has no listener now.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let web = spawn_stockweb(&format!("http://{closed}")).await;

    let json = get_json(web.addr).await;
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 100);
    assert_eq!(json["errors"], 100);
    assert!(json["servers"].as_object().unwrap().is_empty());
    for row in rows {
        let error = row["error"].as_str().expect("every row failed");
        assert!(error.starts_with("UNAVAILABLE"), "{error}");
        assert!(row["symbol"].is_null() && row["server"].is_null(), "{row}");
    }

    let page = get(web.addr, "/").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("100 failed"), "{}", page.body);
    assert_eq!(page.body.matches("<tr class=\"error\">").count(), 100);

    assert_eq!(get(web.addr, "/healthz").await.status, 200, "still serving");
}

#[tokio::test]
async fn failing_calls_show_their_status_and_the_server_that_refused() {
    let replica = spawn_replica_with(
        "flaky",
        Faults {
            fail_rate: 1.0,
            ..Faults::default()
        },
    )
    .await;
    let web = spawn_stockweb(&replica.url()).await;

    let json = get_json(web.addr).await;
    assert_eq!(json["errors"], 100);
    let row = &json["rows"][0];
    assert_eq!(row["server"], "flaky");
    assert_eq!(
        row["error"],
        "UNAVAILABLE: injected failure (stockdata --fail-rate)"
    );
}
