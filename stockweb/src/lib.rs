//! StockWeb: the demo web front end of StockKube.
//!
//! At start it builds **one** gRPC channel to StockData and shares it, as the
//! original sample's single `HttpClient` did. Every page load makes 100
//! concurrent `Get` calls over that channel and shows which replica answered
//! each, which makes the one-connection problem visible: without a mesh, all
//! 100 rows name the same server.
//!
//! Layout:
//! - [`config`]: flags and environment.
//! - [`stocks`]: the concurrent calls, rows and the per-server tally.
//! - [`web`]: routes, the page template, JSON, error responses.
//! - [`run`]: serves a bound listener until shutdown.

pub mod config;
pub mod stocks;
pub mod web;

use std::future::Future;
use tokio::net::TcpListener;

pub use config::{Args, Config};

/// Builds the shared StockData channel. It connects lazily, so StockWeb
/// starts (and shows error rows) while StockData is down, and reconnects
/// after a failure; while a connection is up every call reuses it.
pub fn stockdata_channel(config: &Config) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from(config.stockdata_address.clone())
        .connect_timeout(config.call_timeout)
        .timeout(config.call_timeout)
        .tcp_nodelay(true)
        .connect_lazy()
}

/// Serves StockWeb on `listener` until `shutdown` completes, then finishes
/// in-flight requests and returns. `config.listen` is not used: the caller
/// binds, so tests can hand over a listener on port 0.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = web::AppState {
        stockdata: stocks::StockData::new(stockdata_channel(&config)),
    };
    let app = web::app(state, &config.assets_dir);
    tracing::info!(
        addr = %listener.local_addr()?,
        stockdata = %config.stockdata_address,
        "stockweb listening"
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    tracing::info!("stockweb stopped");
    Ok(())
}
