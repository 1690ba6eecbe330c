//! The problem the mesh solves, reproduced: two replicas behind one address
//! that balances connections, and StockWeb's 100 calls all reach one of them.

use crate::support::{get, get_json, spawn_stockweb};
use stockdata::test_util::{ConnectionBalancer, connect, spawn_replica};
use stockkube_proto::{
    headers::SERVER_ID,
    stockdata::{GetRequest, stocks_client::StocksClient},
};

#[tokio::test]
async fn every_call_over_one_channel_reaches_the_same_replica() {
    let a = spawn_replica("replica-a").await;
    let b = spawn_replica("replica-b").await;
    let service = ConnectionBalancer::start(vec![a.addr, b.addr]).await;
    let web = spawn_stockweb(&format!("http://{}", service.addr)).await;

    let first = get_json(web.addr).await;
    let rows = first["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 100);
    assert!(rows.iter().all(|r| r.get("error").is_none()), "{first}");
    let servers = first["servers"].as_object().unwrap();
    assert_eq!(
        servers.len(),
        1,
        "one server answered everything: {servers:?}"
    );
    let (server, count) = servers.iter().next().unwrap();
    assert_eq!(count, 100);
    assert!(["replica-a", "replica-b"].contains(&server.as_str()));
    assert!(rows.iter().all(|r| r["server"] == server.as_str()));

    // Rows carry real stocks sorted by symbol.
    let symbols: Vec<_> = rows.iter().map(|r| r["symbol"].as_str().unwrap()).collect();
    let mut sorted = symbols.clone();
    sorted.sort_unstable();
    assert_eq!(symbols, sorted);
    assert!(
        rows.iter()
            .any(|r| r["symbol"] == "AAPL" && r["name"] == "Apple Inc." && r["id"] == 1)
    );

    // The page renders the same story, and a second load reuses the channel.
    let page = get(web.addr, "/").await;
    assert_eq!(page.status, 200);
    assert!(page.content_type.starts_with("text/html"));
    assert!(page.body.contains("<h1>NASDAQ 100</h1>"));
    assert!(page.body.contains(&format!("{server}</span>")));
    assert!(page.body.contains("100 rows (100%)"), "{}", page.body);
    assert_eq!(page.body.matches("<tr>").count(), 101, "header + 100 rows");
    let second = get_json(web.addr).await;
    assert_eq!(second["servers"], first["servers"]);
    assert_eq!(
        service.counts().iter().sum::<usize>(),
        1,
        "one connection for all loads"
    );

    // The Service does balance: a new connection lands on the other replica.
    // The problem is the single connection, not the Service.
    let mut other = StocksClient::new(connect(service.addr).await);
    let response = other.get(GetRequest { id: 1 }).await.unwrap();
    let other_server = response
        .metadata()
        .get(SERVER_ID)
        .unwrap()
        .to_str()
        .unwrap();
    assert_ne!(other_server, server);
    assert_eq!(service.counts(), [1, 1]);
}

#[tokio::test]
async fn health_endpoint_answers_and_the_stylesheet_is_served() {
    let replica = spawn_replica("replica-a").await;
    let web = spawn_stockweb(&replica.url()).await;

    let health = get(web.addr, "/healthz").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));

    let css = get(web.addr, "/assets/site.css").await;
    assert_eq!(css.status, 200);
    assert!(
        css.content_type.starts_with("text/css"),
        "{}",
        css.content_type
    );

    assert_eq!(get(web.addr, "/nope").await.status, 404);
    assert_eq!(get(web.addr, "/assets/../Cargo.toml").await.status, 404);
}
