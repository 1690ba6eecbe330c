//! `mesh-dashboard`: the StockKube Mesh dashboard.
//!
//! It asks the controller which proxies exist, scrapes each one's admin
//! `/metrics` and `/endpoints` on an interval, keeps a few minutes of
//! history, and serves what that shows: golden metrics per workload
//! (overview), the mesh as a graph (topology), and which replica served how
//! much (servers, the sample's Server column). Pages update live through
//! server-sent events and work as plain HTML without JavaScript.
//!
//! Layout: [`scrape`] reads the proxies; [`prom`] parses their metrics;
//! [`stats`] turns counter and histogram deltas into rates and percentiles;
//! [`views`] computes each page's data; [`web`] serves pages, JSON and
//! events; [`run`] wires it together.

pub mod prom;
pub mod scrape;
pub mod stats;
pub mod views;
pub mod web;

use std::{future::Future, net::SocketAddr, path::PathBuf, time::Duration};
use stockkube_proto::ports;
use tokio::net::TcpListener;

/// Flags and environment of the `mesh-dashboard` binary.
#[derive(Debug, clap::Parser)]
#[command(name = "mesh-dashboard", version)]
pub struct Args {
    /// Address the dashboard listens on.
    #[arg(long, env = "MESH_DASHBOARD_LISTEN", default_value_t = SocketAddr::from(([127, 0, 0, 1], ports::DASHBOARD)))]
    pub listen: SocketAddr,

    /// The controller, whose registry lists the proxies to scrape.
    #[arg(
        long,
        env = "MESH_DASHBOARD_CONTROLLER",
        default_value_t = format!("http://127.0.0.1:{}", ports::CONTROLLER),
        value_name = "URL"
    )]
    pub controller: String,

    /// How often every proxy is scraped.
    #[arg(long, env = "MESH_DASHBOARD_SCRAPE_INTERVAL", default_value = "2s", value_parser = mesh_runtime::parse_duration)]
    pub scrape_interval: Duration,

    /// The window rates and percentiles are computed over.
    #[arg(long, env = "MESH_DASHBOARD_WINDOW", default_value = "60s", value_parser = mesh_runtime::parse_duration)]
    pub window: Duration,

    /// StockWeb's base URL, for the Servers page's "Load StockWeb once".
    #[arg(long, env = "MESH_DASHBOARD_STOCKWEB_URL", value_name = "URL")]
    pub stockweb_url: Option<String>,

    /// `meshctl demo`'s control API; turns the demo controls on.
    #[arg(long, env = "MESH_DASHBOARD_DEMO_API", value_name = "URL")]
    pub demo_api: Option<String>,

    /// Directory of the stylesheet and script.
    #[arg(long, env = "MESH_DASHBOARD_ASSETS_DIR", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/assets"))]
    pub assets_dir: PathBuf,
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub controller: http::Uri,
    pub scrape_interval: Duration,
    pub window: Duration,
    pub stockweb_url: Option<http::Uri>,
    pub demo_api: Option<http::Uri>,
    pub assets_dir: PathBuf,
}

impl TryFrom<Args> for Config {
    type Error = anyhow::Error;

    fn try_from(args: Args) -> anyhow::Result<Self> {
        let url = |value: &str, flag: &str| -> anyhow::Result<http::Uri> {
            let uri: http::Uri = value
                .parse()
                .map_err(|e| anyhow::anyhow!("{flag} {value:?} is not a URL: {e}"))?;
            anyhow::ensure!(
                uri.scheme_str() == Some("http") && uri.authority().is_some(),
                "{flag} {value:?} must be an http://host:port URL"
            );
            Ok(uri)
        };
        anyhow::ensure!(
            !args.scrape_interval.is_zero(),
            "--scrape-interval (MESH_DASHBOARD_SCRAPE_INTERVAL) must be more than zero"
        );
        anyhow::ensure!(
            args.window >= args.scrape_interval * 2,
            "--window (MESH_DASHBOARD_WINDOW) must hold at least two scrapes"
        );
        Ok(Config {
            controller: url(&args.controller, "--controller (MESH_DASHBOARD_CONTROLLER)")?,
            scrape_interval: args.scrape_interval,
            window: args.window,
            stockweb_url: args
                .stockweb_url
                .as_deref()
                .map(|u| url(u, "--stockweb-url (MESH_DASHBOARD_STOCKWEB_URL)"))
                .transpose()?,
            demo_api: args
                .demo_api
                .as_deref()
                .map(|u| url(u, "--demo-api (MESH_DASHBOARD_DEMO_API)"))
                .transpose()?,
            assets_dir: args.assets_dir,
        })
    }
}

/// Scrapes and serves until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let history = scrape::spawn(scrape::ScrapeConfig {
        controller: config.controller.clone(),
        interval: config.scrape_interval,
        // A little more than the window, so a full window is always there.
        keep: config.window + config.scrape_interval * 2,
    });
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let state = web::AppState::new(
        history,
        config.window,
        config.stockweb_url.clone(),
        config.demo_api.clone(),
        stopping,
    );
    tracing::info!(
        addr = %listener.local_addr()?,
        controller = %config.controller,
        demo = config.demo_api.is_some(),
        "mesh-dashboard listening"
    );
    axum::serve(listener, web::app(state, &config.assets_dir))
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("draining");
            let _ = stopping_tx.send(true);
        })
        .await
}
