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
pub mod tap;
pub mod trends;
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

    /// How far back the pages' charts go (one point per scrape, bounded:
    /// see docs/dashboard.md).
    #[arg(long, env = "MESH_DASHBOARD_HISTORY", default_value = "15m", value_parser = mesh_runtime::parse_duration)]
    pub history: Duration,

    /// StockWeb's base URL, for the Servers page's "Load StockWeb once".
    #[arg(long, env = "MESH_DASHBOARD_STOCKWEB_URL", value_name = "URL")]
    pub stockweb_url: Option<String>,

    /// `meshctl demo`'s control API; turns the demo controls on.
    #[arg(long, env = "MESH_DASHBOARD_DEMO_API", value_name = "URL")]
    pub demo_api: Option<String>,

    /// The most a proxy's `/metrics` may weigh (bytes; `KiB` and `MiB`
    /// suffixes); a larger one is not read and the proxy is shown with that
    /// error.
    #[arg(long, env = "MESH_DASHBOARD_SCRAPE_MAX_BYTES", default_value = "4MiB", value_parser = parse_bytes)]
    pub scrape_max_bytes: usize,

    /// The most samples a proxy's `/metrics` may hold; past it, it is not
    /// read and the proxy is shown with that error.
    #[arg(
        long,
        env = "MESH_DASHBOARD_SCRAPE_MAX_SERIES",
        default_value_t = 10_000
    )]
    pub scrape_max_series: usize,

    /// The most samples kept from one scrape round, all proxies together
    /// (of the metric families the pages read); proxies past it are shown
    /// with that error. It bounds the history's memory (docs/dashboard.md).
    #[arg(
        long,
        env = "MESH_DASHBOARD_HISTORY_MAX_SERIES",
        default_value_t = 20_000
    )]
    pub history_max_series: usize,

    /// The host names the dashboard answers to (in the Host header, any
    /// port); others get 403, so a web page cannot reach it through a name
    /// it controls (DNS rebinding). Comma-separated; `*` answers any.
    /// Default: localhost, 127.0.0.1 and ::1, and the --listen address
    /// when it is a specific one.
    #[arg(
        long,
        env = "MESH_DASHBOARD_ALLOWED_HOSTS",
        value_delimiter = ',',
        value_name = "HOST"
    )]
    pub allowed_hosts: Vec<String>,

    /// The token `meshctl demo` gives the dashboard for its control API
    /// (set by `meshctl demo`, in the environment only).
    #[arg(
        long,
        env = "MESH_DASHBOARD_DEMO_API_TOKEN",
        hide = true,
        hide_env_values = true
    )]
    pub demo_api_token: Option<String>,

    /// Directory of the stylesheet and script.
    #[arg(long, env = "MESH_DASHBOARD_ASSETS_DIR", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/assets"))]
    pub assets_dir: PathBuf,
}

/// `4194304`, `512KiB`, `4MiB`: a size in bytes.
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let unit: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1024,
        "MiB" => 1024 * 1024,
        other => return Err(format!("unknown unit {other:?}: use B, KiB or MiB")),
    };
    let number: usize = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 4MiB"))?;
    number
        .checked_mul(unit)
        .filter(|bytes| *bytes > 0)
        .ok_or_else(|| format!("{text:?} must be more than zero and fit in memory"))
}

/// Which Host names are answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedHosts {
    Any,
    /// Lowercase host names or IP literals, without port or brackets.
    Only(Vec<String>),
}

impl AllowedHosts {
    fn new(configured: &[String], listen: SocketAddr) -> Self {
        if configured.iter().any(|h| h.trim() == "*") {
            return Self::Any;
        }
        let mut hosts: Vec<String> = if configured.is_empty() {
            let mut defaults = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
            if !listen.ip().is_unspecified() {
                defaults.push(listen.ip().to_string());
            }
            defaults
        } else {
            configured
                .iter()
                .map(|h| {
                    h.trim()
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_ascii_lowercase()
                })
                .filter(|h| !h.is_empty())
                .collect()
        };
        hosts.dedup();
        Self::Only(hosts)
    }

    /// Whether a request's `Host` (`name`, `name:port`, `[v6]:port`) is one.
    pub fn allows(&self, host: &str) -> bool {
        let Self::Only(hosts) = self else {
            return true;
        };
        let name = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => host.rsplit_once(':').map_or(host, |(name, _)| name),
        };
        hosts.iter().any(|h| h.eq_ignore_ascii_case(name))
    }
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub controller: http::Uri,
    pub scrape_interval: Duration,
    pub window: Duration,
    pub history: Duration,
    pub stockweb_url: Option<http::Uri>,
    pub demo_api: Option<http::Uri>,
    pub demo_api_token: Option<String>,
    pub scrape_max_bytes: usize,
    pub scrape_max_series: usize,
    pub history_max_series: usize,
    pub allowed_hosts: AllowedHosts,
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
        anyhow::ensure!(
            args.history >= args.scrape_interval * 2
                && args.history <= Duration::from_secs(24 * 3600),
            "--history (MESH_DASHBOARD_HISTORY) must hold at least two scrapes, and at most a day"
        );
        Ok(Config {
            controller: url(&args.controller, "--controller (MESH_DASHBOARD_CONTROLLER)")?,
            scrape_interval: args.scrape_interval,
            window: args.window,
            history: args.history,
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
            demo_api_token: args.demo_api_token,
            scrape_max_bytes: args.scrape_max_bytes,
            scrape_max_series: args.scrape_max_series,
            history_max_series: args.history_max_series,
            allowed_hosts: AllowedHosts::new(&args.allowed_hosts, args.listen),
            assets_dir: args.assets_dir,
        })
    }
}

/// Adds a point to `trends` after every scrape round, until scraping ends.
async fn record_trends(
    mut history: tokio::sync::watch::Receiver<scrape::History>,
    trends: std::sync::Arc<std::sync::Mutex<trends::Trends>>,
) {
    while history.changed().await.is_ok() {
        let latest = history.borrow_and_update().clone();
        trends
            .lock()
            .expect("trends lock is never poisoned")
            .record(&latest);
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
        max_bytes: config.scrape_max_bytes,
        max_series: config.scrape_max_series,
        max_kept: config.history_max_series,
    });
    let trends = std::sync::Arc::new(std::sync::Mutex::new(trends::Trends::new(
        config.history,
        config.scrape_interval,
    )));
    tokio::spawn(record_trends(history.clone(), trends.clone()));
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let state = web::AppState::new(&config, history, trends, stopping)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_with_their_units() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_bytes("4MiB"), Ok(4 * 1024 * 1024));
        assert!(parse_bytes("4GB").unwrap_err().contains("unit"));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("lots").is_err());
    }

    #[test]
    fn only_the_allowed_host_names_are_answered() {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 8084));
        let default = AllowedHosts::new(&[], loopback);
        for host in ["localhost:8084", "LOCALHOST", "127.0.0.1:1", "[::1]:8084"] {
            assert!(default.allows(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8084",
            "127.0.0.1.nip.io:8084",
            "",
            "[::2]:1",
        ] {
            assert!(!default.allows(host), "{host}");
        }
        let everywhere = SocketAddr::from(([0, 0, 0, 0], 8084));
        assert!(!AllowedHosts::new(&[], everywhere).allows("0.0.0.0:8084"));
        let named = AllowedHosts::new(
            &["Dashboard.Example".into(), "[fd00::1]".into()],
            everywhere,
        );
        assert!(named.allows("dashboard.example:443"));
        assert!(named.allows("[fd00::1]:8084"));
        assert!(
            !named.allows("localhost:8084"),
            "configured names replace the defaults"
        );
        assert!(AllowedHosts::new(&["*".into()], loopback).allows("anything.example"));
    }
}
