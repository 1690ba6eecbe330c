//! `meshctl demo`: the whole mesh on one machine, beside the problem it fixes.
//!
//! ```text
//!                    +-> stockweb --> mesh-proxy (outbound) --per request--> mesh-proxy (inbound) -> stockdata-1
//! browser :P    ----+                        ^ endpoints                     mesh-proxy (inbound) -> stockdata-2
//!                                            | (destination API)             mesh-proxy (inbound) -> stockdata-3
//!                                      mesh-controller  <-- registered by meshctl
//! browser :P+1  ----> stockweb (no mesh) --one connection--> service address --> one replica
//! ```
//!
//! Every process is a child of `meshctl`; Ctrl-C (or SIGTERM) stops them
//! all, the front ends first.

use crate::{
    process::{self, Service},
    service_vip,
};
use anyhow::{Context as _, bail};
use std::{net::SocketAddr, path::PathBuf, time::Duration};
use stockkube_proto::mesh::{Endpoint, RegisterRequest, registry_client::RegistryClient};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

/// How long children get to start listening, and to drain when stopped.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(10);
const BINARIES: &[&str] = &["stockdata", "stockweb", "mesh-proxy", "mesh-controller"];

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Number of StockData replicas, each with its sidecar.
    #[arg(long, env = "MESHCTL_DEMO_REPLICAS", default_value_t = 3,
          value_parser = clap::value_parser!(u16).range(1..=32))]
    pub replicas: u16,

    /// First of the web ports on 127.0.0.1: StockWeb with the mesh on P,
    /// StockWeb without the mesh on P+1.
    #[arg(long, env = "MESHCTL_DEMO_PORT", default_value_t = 8080,
          value_parser = clap::value_parser!(u16).range(1..=65534))]
    pub port: u16,

    /// Balancing of the meshed StockWeb's sidecar: p2c-ewma or round-robin.
    #[arg(long, env = "MESHCTL_DEMO_BALANCE", default_value = "p2c-ewma")]
    pub balance: String,

    /// Directory holding the service binaries. Default: the directory of
    /// `meshctl` itself.
    #[arg(long, env = "MESHCTL_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
}

pub fn main(args: DemoArgs) -> anyhow::Result<()> {
    let bin_dir = process::bin_dir(args.bin_dir.as_deref())?;
    process::ensure_binaries(&bin_dir, BINARIES)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run(args, bin_dir))
}

/// The web ports, checked free before anything starts.
struct WebPorts {
    meshed: SocketAddr,
    plain: SocketAddr,
}

async fn claim_web_ports(port: u16) -> anyhow::Result<WebPorts> {
    let meshed = SocketAddr::from(([127, 0, 0, 1], port));
    let plain = SocketAddr::from(([127, 0, 0, 1], port + 1));
    for (addr, what) in [(meshed, "P"), (plain, "P+1")] {
        // Bound and released at once: the child binds it a moment later.
        TcpListener::bind(addr).await.with_context(|| {
            format!(
                "port {} ({what} of --port {port}) is taken; choose another with --port",
                addr.port()
            )
        })?;
    }
    Ok(WebPorts { meshed, plain })
}

/// A free loopback port for an internal listener.
async fn free_addr() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("no free loopback port")?;
    Ok(listener.local_addr()?)
}

async fn run(args: DemoArgs, bin_dir: PathBuf) -> anyhow::Result<()> {
    // Handlers first: a Ctrl-C during start-up must still stop every child.
    let mut signals = Signals::new()?;
    let web = claim_web_ports(args.port).await?;
    let bin = |name: &str| bin_dir.join(name);
    let mut services: Vec<Service> = Vec::new();
    let mut listening: Vec<SocketAddr> = Vec::new();

    let outcome = async {
        let controller = free_addr().await?;
        services.push(Service::spawn(
            "mesh-controller",
            &bin("mesh-controller"),
            &["--listen".into(), controller.to_string()],
            &[],
        )?);
        listening.push(controller);

        // Replicas, each behind its inbound sidecar.
        let mut replicas = Vec::new();
        for index in 1..=args.replicas {
            let name = format!("stockdata-{index}");
            let (app, inbound, admin) = (free_addr().await?, free_addr().await?, free_addr().await?);
            services.push(Service::spawn(
                name.clone(),
                &bin("stockdata"),
                &["--listen".into(), app.to_string(), "--server-id".into(), name.clone()],
                &[],
            )?);
            services.push(Service::spawn(
                format!("{name} proxy"),
                &bin("mesh-proxy"),
                &[
                    "--inbound".into(),
                    inbound.to_string(),
                    "--app".into(),
                    app.to_string(),
                    "--admin".into(),
                    admin.to_string(),
                ],
                &[],
            )?);
            listening.extend([app, inbound, admin]);
            replicas.push((name, app, inbound));
        }

        // StockWeb with the mesh: its sidecar balances each call.
        let (outbound, web_admin) = (free_addr().await?, free_addr().await?);
        services.push(Service::spawn(
            "stockweb proxy",
            &bin("mesh-proxy"),
            &[
                "--outbound".into(),
                format!("stockdata={outbound}"),
                "--destination".into(),
                format!("http://{controller}"),
                "--admin".into(),
                web_admin.to_string(),
                "--balance".into(),
                args.balance.clone(),
            ],
            &[],
        )?);
        services.push(Service::spawn(
            "stockweb",
            &bin("stockweb"),
            &[
                "--listen".into(),
                web.meshed.to_string(),
                "--stockdata-address".into(),
                format!("http://{outbound}"),
            ],
            &[],
        )?);
        listening.extend([outbound, web_admin, web.meshed]);

        // StockWeb without the mesh, through a Service-like address.
        let service_addr = free_addr().await?;
        let service_listener = TcpListener::bind(service_addr).await?;
        let backends = replicas.iter().map(|(_, app, _)| *app).collect();
        let service_task = tokio::spawn(service_vip::serve(service_listener, backends));
        services.push(Service::spawn(
            "stockweb (no mesh)",
            &bin("stockweb"),
            &[
                "--listen".into(),
                web.plain.to_string(),
                "--stockdata-address".into(),
                format!("http://{service_addr}"),
            ],
            &[],
        )?);
        listening.push(web.plain);

        wait_until_listening(&mut services, &listening).await?;
        register(controller, &replicas).await?;
        wait_for_endpoints(web_admin, replicas.len()).await?;

        println!();
        println!("StockKube Mesh demo: {} StockData replicas", replicas.len());
        println!("  stockweb with the mesh     http://{}/", web.meshed);
        println!("  stockweb without the mesh  http://{}/", web.plain);
        println!("  stockweb sidecar metrics   http://{web_admin}/metrics");
        println!("  stockweb sidecar endpoints http://{web_admin}/endpoints");
        println!();
        println!("With the mesh the Server column spreads over every replica; without it, one. Ctrl-C stops.");

        let watched = watch(&mut services, &mut signals).await;
        service_task.abort();
        watched
    }
    .await;

    // Front ends first, so no page load is cut off by a replica going away.
    for service in services.into_iter().rev() {
        service.stop(STOP_GRACE).await;
    }
    println!("demo stopped");
    outcome
}

/// Registers every replica's inbound proxy as an endpoint of `stockdata`.
async fn register(
    controller: SocketAddr,
    replicas: &[(String, SocketAddr, SocketAddr)],
) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{controller}"))?
        .connect()
        .await
        .context("cannot reach mesh-controller")?;
    let mut registry = RegistryClient::new(channel);
    for (name, _, inbound) in replicas {
        registry
            .register(RegisterRequest {
                service: "stockdata".into(),
                endpoint: Some(Endpoint {
                    addr: inbound.to_string(),
                    instance: name.clone(),
                }),
            })
            .await
            .with_context(|| format!("cannot register {name}"))?;
    }
    Ok(())
}

/// Waits until the meshed StockWeb's sidecar knows `expected` endpoints, so
/// the first page load is already balanced.
async fn wait_for_endpoints(admin: SocketAddr, expected: usize) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(body) = http_get(admin, "/endpoints").await {
            let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let known = json["services"][0]["endpoints"]
                .as_array()
                .map_or(0, Vec::len);
            if known >= expected {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the stockweb sidecar did not learn {expected} endpoints within {READY_TIMEOUT:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A bare HTTP/1.1 GET; the body of a 200 answer.
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        _ => bail!("unexpected answer from {addr}{path}"),
    }
}

/// Polls until every address accepts a connection; fails as soon as a child
/// exits (its own message is already on stderr).
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

/// SIGINT and SIGTERM, registered when created.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        })
    }
}

/// Runs until SIGINT/SIGTERM (Ok) or until a child exits on its own (Err).
async fn watch(services: &mut [Service], signals: &mut Signals) -> anyhow::Result<()> {
    // Children are checked on a tick rather than awaited one by one: a dead
    // replica must be noticed whichever it is.
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = signals.interrupt.recv() => return Ok(()),
            _ = signals.terminate.recv() => return Ok(()),
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
