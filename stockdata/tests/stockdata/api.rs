//! The gRPC surface, through real tonic clients on an ephemeral port.

use stockdata::test_util::{connect, spawn_replica};
use stockkube_proto::{
    headers::SERVER_ID,
    stockdata::{GetRequest, stocks_client::StocksClient},
};
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

#[tokio::test]
async fn get_returns_the_stock_and_names_the_replica() {
    let replica = spawn_replica("replica-a").await;
    let mut client = StocksClient::new(connect(replica.addr).await);

    let response = client.get(GetRequest { id: 1 }).await.unwrap();
    assert_eq!(response.metadata().get(SERVER_ID).unwrap(), "replica-a");
    let stock = response.into_inner().stock.unwrap();
    assert_eq!((stock.id, stock.symbol.as_str()), (1, "AAPL"));
    assert_eq!(stock.name, "Apple Inc.");

    replica.shutdown().await;
}

#[tokio::test]
async fn invalid_and_unknown_ids_answer_their_codes() {
    let replica = spawn_replica("replica-a").await;
    let mut client = StocksClient::new(connect(replica.addr).await);

    let status = client.get(GetRequest { id: 0 }).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("1 or more"), "{status:?}");

    let status = client.get(GetRequest { id: 100_000 }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("100000"), "{status:?}");

    replica.shutdown().await;
}

#[tokio::test]
async fn health_reports_serving_for_the_server_and_the_service() {
    let replica = spawn_replica("replica-a").await;
    let mut health = HealthClient::new(connect(replica.addr).await);

    for service in ["", "StockData.Stocks"] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap();
        assert_eq!(
            response.into_inner().status(),
            ServingStatus::Serving,
            "service {service:?}"
        );
    }
    let status = health
        .check(HealthCheckRequest {
            service: "No.Such".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    replica.shutdown().await;
}

#[tokio::test]
async fn reflection_lists_the_stocks_service() {
    let replica = spawn_replica("replica-a").await;
    let mut reflection = ServerReflectionClient::new(connect(replica.addr).await);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list, got {response:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"StockData.Stocks"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

    replica.shutdown().await;
}

#[tokio::test]
async fn one_connection_carries_many_concurrent_calls() {
    let replica = spawn_replica("replica-a").await;
    let client = StocksClient::new(connect(replica.addr).await);

    let mut calls = tokio::task::JoinSet::new();
    for id in 1..=100 {
        let mut client = client.clone();
        calls.spawn(async move { client.get(GetRequest { id }).await });
    }
    let mut answered = 0;
    while let Some(result) = calls.join_next().await {
        let response = result.unwrap().unwrap();
        assert_eq!(response.metadata().get(SERVER_ID).unwrap(), "replica-a");
        answered += 1;
    }
    assert_eq!(answered, 100);

    replica.shutdown().await;
}
