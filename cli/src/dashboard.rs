//! `meshctl dashboard`: runs `mesh-dashboard` against a running mesh (its
//! controller) until Ctrl-C, and prints its URL once it listens.

use crate::process::{self, Service};
use anyhow::{Context as _, bail};
use std::{net::SocketAddr, path::PathBuf, time::Duration};
use stockkube_proto::ports;

#[derive(Debug, clap::Args)]
pub struct DashboardArgs {
    /// The controller whose registry lists the proxies.
    #[arg(
        long,
        env = "MESHCTL_CONTROLLER",
        default_value_t = format!("http://127.0.0.1:{}", ports::CONTROLLER),
        value_name = "URL"
    )]
    pub controller: String,

    /// Address the dashboard listens on.
    #[arg(long, env = "MESHCTL_DASHBOARD_ADDR", default_value_t = SocketAddr::from(([127, 0, 0, 1], ports::DASHBOARD)))]
    pub addr: SocketAddr,

    /// StockWeb's URL, for the Servers page's "Load StockWeb once".
    #[arg(long, env = "MESHCTL_STOCKWEB_URL", value_name = "URL")]
    pub stockweb_url: Option<String>,

    /// Directory holding `mesh-dashboard`. Default: beside `meshctl`.
    #[arg(long, env = "MESHCTL_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
}

pub fn main(args: DashboardArgs) -> anyhow::Result<()> {
    let bin_dir = process::bin_dir(args.bin_dir.as_deref())?;
    process::ensure_binaries(&bin_dir, &["mesh-dashboard"])?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run(args, bin_dir))
}

async fn run(args: DashboardArgs, bin_dir: PathBuf) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut flags = vec![
        "--listen".to_owned(),
        args.addr.to_string(),
        "--controller".to_owned(),
        args.controller.clone(),
    ];
    if let Some(url) = &args.stockweb_url {
        flags.extend(["--stockweb-url".to_owned(), url.clone()]);
    }
    let mut dashboard = Service::spawn(
        "mesh-dashboard",
        &bin_dir.join("mesh-dashboard"),
        &flags,
        &[],
    )?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(args.addr).await.is_err() {
        if let Some(status) = dashboard.try_exited() {
            bail!("mesh-dashboard exited ({status})");
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("mesh-dashboard did not listen on {} within 30 s", args.addr);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("dashboard  http://{}/  (Ctrl-C stops)", args.addr);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let outcome = loop {
        tokio::select! {
            _ = interrupt.recv() => break Ok(()),
            _ = terminate.recv() => break Ok(()),
            _ = tick.tick() => if let Some(status) = dashboard.try_exited() {
                break Err(anyhow::anyhow!("mesh-dashboard exited ({status})"));
            },
        }
    };
    dashboard.stop(Duration::from_secs(10)).await;
    outcome
}
