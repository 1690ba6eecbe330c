//! `meshctl demo`: the StockKube sample on one machine.
//!
//! For now it shows the problem the mesh solves: StockData replicas behind
//! one connection-balancing address (a stand-in for a Kubernetes Service,
//! see [`crate::service_vip`]) and StockWeb pointed at that address. Every
//! row of StockWeb's page names the same replica.
//!
//! ```text
//! browser -> stockweb --(one HTTP/2 connection)--> service address -> stockdata-1
//!                                                                    stockdata-2 (idle)
//! ```

use crate::{
    process::{self, Service},
    service_vip,
};
use anyhow::{Context as _, bail};
use std::{net::SocketAddr, path::PathBuf, time::Duration};
use tokio::net::{TcpListener, TcpStream};

/// How long children get to start listening, and to drain when stopped.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Number of StockData replicas.
    #[arg(long, env = "MESHCTL_DEMO_REPLICAS", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..=32))]
    pub replicas: u16,

    /// Address StockWeb listens on; open it in a browser.
    #[arg(long, env = "MESHCTL_DEMO_WEB_ADDR", default_value = "127.0.0.1:8080")]
    pub web_addr: SocketAddr,

    /// Address that stands for the StockData Service: it spreads connections
    /// over the replicas, as kube-proxy does.
    #[arg(
        long,
        env = "MESHCTL_DEMO_SERVICE_ADDR",
        default_value = "127.0.0.1:9000"
    )]
    pub service_addr: SocketAddr,

    /// Port of the first StockData replica on 127.0.0.1; the others follow.
    #[arg(long, env = "MESHCTL_DEMO_STOCKDATA_PORT", default_value_t = 9001)]
    pub stockdata_port: u16,

    /// Directory holding the `stockdata` and `stockweb` binaries. Default:
    /// the directory of `meshctl` itself.
    #[arg(long, env = "MESHCTL_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
}

pub fn main(args: DemoArgs) -> anyhow::Result<()> {
    let bin_dir = process::bin_dir(args.bin_dir.as_deref())?;
    process::ensure_binaries(&bin_dir, &["stockdata", "stockweb"])?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run(args, bin_dir))
}

async fn run(args: DemoArgs, bin_dir: PathBuf) -> anyhow::Result<()> {
    let replica_addrs = replica_addrs(&args)?;

    let service_listener = TcpListener::bind(args.service_addr)
        .await
        .with_context(|| format!("cannot listen on {} (--service-addr)", args.service_addr))?;
    let service_task = tokio::spawn(service_vip::serve(service_listener, replica_addrs.clone()));

    let mut services = Vec::new();
    for (index, addr) in replica_addrs.iter().enumerate() {
        let name = format!("stockdata-{}", index + 1);
        services.push(Service::spawn(
            name.clone(),
            &bin_dir.join("stockdata"),
            &[
                "--listen".into(),
                addr.to_string(),
                "--server-id".into(),
                name,
            ],
            &[],
        )?);
    }
    services.push(Service::spawn(
        "stockweb",
        &bin_dir.join("stockweb"),
        &[
            "--listen".into(),
            args.web_addr.to_string(),
            "--stockdata-address".into(),
            format!("http://{}", args.service_addr),
        ],
        &[],
    )?);

    let mut listening: Vec<SocketAddr> = replica_addrs.clone();
    listening.push(args.web_addr);
    let outcome = match wait_until_listening(&mut services, &listening).await {
        Ok(()) => {
            print_banner(&args, &replica_addrs);
            watch(&mut services).await
        }
        Err(err) => Err(err),
    };

    service_task.abort();
    // StockWeb first, so no page load is cut off by a replica going away.
    for service in services.into_iter().rev() {
        service.stop(STOP_GRACE).await;
    }
    println!("demo stopped");
    outcome
}

fn replica_addrs(args: &DemoArgs) -> anyhow::Result<Vec<SocketAddr>> {
    (0..args.replicas)
        .map(|i| {
            let port = args
                .stockdata_port
                .checked_add(i)
                .context("--stockdata-port plus --replicas passes port 65535")?;
            Ok(SocketAddr::from(([127, 0, 0, 1], port)))
        })
        .collect()
}

/// Polls until every address accepts a connection; fails as soon as a child
/// exits (a port in use, say: its own message is already on stderr).
async fn wait_until_listening(
    services: &mut [Service],
    addrs: &[SocketAddr],
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let mut pending: Vec<SocketAddr> = addrs.to_vec();
    loop {
        for service in services.iter_mut() {
            if let Some(status) = service.try_exited() {
                bail!("{} exited ({status}) before it was ready", service.name);
            }
        }
        let mut still_pending = Vec::new();
        for addr in pending {
            if TcpStream::connect(addr).await.is_err() {
                still_pending.push(addr);
            }
        }
        pending = still_pending;
        if pending.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("nothing listening on {pending:?} after {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn print_banner(args: &DemoArgs, replicas: &[SocketAddr]) {
    println!();
    println!("StockKube demo is running (no mesh: every call rides one connection)");
    for (index, addr) in replicas.iter().enumerate() {
        println!("  stockdata-{:<3}      {addr}", index + 1);
    }
    println!(
        "  stockdata service  {}  (spreads connections, like a Kubernetes Service)",
        args.service_addr
    );
    println!("  StockWeb           http://{}/", args.web_addr);
    println!();
    println!("Open StockWeb: all 100 rows name one server. Press Ctrl-C to stop.");
}

/// Runs until SIGINT/SIGTERM (Ok) or until a child exits on its own (Err).
async fn watch(services: &mut [Service]) -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    // Children are checked on a tick rather than awaited one by one: a dead
    // replica must be noticed whichever it is.
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            _ = tick.tick() => {
                for service in services.iter_mut() {
                    if let Some(status) = service.try_exited() {
                        bail!("{} exited unexpectedly ({status})", service.name);
                    }
                }
            }
        }
    }
}
