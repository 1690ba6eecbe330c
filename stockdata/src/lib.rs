//! StockData: the demo gRPC service of StockKube.
//!
//! It serves `StockData.Stocks/Get` over the NASDAQ-100 and names the replica
//! that answered in a `server-id` response header, so a client can see which
//! replica each call reached. Beside the API it serves the standard gRPC
//! health service and server reflection.
//!
//! Layout:
//! - [`catalog`]: the stocks and id validation (pure).
//! - [`service`]: the gRPC service, the `server-id` header, demo faults.
//! - [`config`]: flags and environment.
//! - [`run`]: serves a bound listener until shutdown, then drains.
//! - `test_util` (feature `test-util`): in-process replicas for other crates' tests.

pub mod catalog;
pub mod config;
pub mod service;
#[cfg(feature = "test-util")]
pub mod test_util;

use std::future::Future;
use stockkube_proto::stockdata::{self, stocks_server::StocksServer};
use tokio::net::TcpListener;
use tokio_stream::{StreamExt as _, StreamMap};

pub use config::{Args, Config, Faults};

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    ServerId(#[from] service::InvalidServerId),
    #[error("the reflection service could not load its descriptors")]
    Reflection(#[source] tonic_reflection::server::Error),
    #[error("no address to listen on")]
    NoListener,
    #[error("the listener has no local address")]
    Listener(#[source] std::io::Error),
    #[error("the gRPC server failed")]
    Transport(#[source] tonic::transport::Error),
}

/// Serves StockData, health and reflection on `listeners` (all alike) until
/// `shutdown` completes; then reports NOT_SERVING, stops accepting, lets
/// in-flight calls finish and returns. `config.listen` is not used: the
/// caller binds, so tests can hand over a listener on port 0.
pub async fn run(
    config: Config,
    listeners: Vec<TcpListener>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let stocks = StocksServer::new(service::StocksService::new(
        &config.server_id,
        config.faults,
    )?);

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<StocksServer<service::StocksService>>()
        .await;

    // grpcurl and most tools ask v1 first and fall back to v1alpha.
    let reflection_v1 = reflection_builder()
        .build_v1()
        .map_err(ServeError::Reflection)?;
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .map_err(ServeError::Reflection)?;

    let mut incoming = StreamMap::new();
    let mut addrs = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        addrs.push(listener.local_addr().map_err(ServeError::Listener)?);
        incoming.insert(
            i,
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        );
    }
    if addrs.is_empty() {
        return Err(ServeError::NoListener);
    }
    tracing::info!(
        server_id = %config.server_id,
        addr = %addrs[0],
        addrs = addrs.len(),
        delay = ?config.faults.delay,
        fail_rate = config.faults.fail_rate,
        "stockdata listening"
    );

    let drain = async move {
        shutdown.await;
        tracing::info!("draining in-flight calls");
        // Orchestrators polling health stop routing here while we drain.
        health_reporter
            .set_not_serving::<StocksServer<service::StocksService>>()
            .await;
    };

    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(stocks)
        .serve_with_incoming_shutdown(incoming.map(|(_, connection)| connection), drain)
        .await
        .map_err(ServeError::Transport)?;
    tracing::info!("stockdata stopped");
    Ok(())
}

fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(stockdata::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}
