//! `meshctl demo`: the whole mesh on one machine, beside the problem it fixes.
//!
//! ```text
//! browser :P    -> stockweb -> mesh-proxy (outbound) --per request--> mesh-proxy (inbound) -> stockdata-1..N
//!                                   ^ endpoints (destination API)
//!                             mesh-controller <-- endpoints and proxies registered by meshctl
//! browser :P+1  -> stockweb (no mesh) --one connection--> service address -> one replica
//! browser :P+2  -> mesh-dashboard (scrapes every proxy; demo controls call meshctl's demo API)
//! ```
//!
//! Traffic between the sidecars is mTLS: each run makes its own trust
//! anchor, issuer and workload credentials ([`identity`]), the controller
//! issues the proxies' certificates, and the replicas are registered with
//! the identity their sidecars prove.
//!
//! Every process is a child of `meshctl`; Ctrl-C (or SIGTERM) stops them
//! all, the front ends first. The demo API (see [`control`]) adds, kills
//! and slows replicas for the dashboard's demo controls.

mod control;
mod identity;

use identity::DemoIdentity;

use crate::{
    process::{self, Service},
    service_vip,
};
use anyhow::{Context as _, bail};
use std::io::Write as _;
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};
use stockkube_proto::mesh::{
    DeregisterRequest, Endpoint, ProxyInfo, RegisterRequest, registry_client::RegistryClient,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Mutex,
};
use tonic::transport::Channel;

/// How long children get to drain when stopped.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// The delay "slow down" gives a replica.
const SLOW_DELAY_MS: u64 = 200;
const BINARIES: &[&str] = &[
    "stockdata",
    "stockweb",
    "mesh-proxy",
    "mesh-controller",
    "mesh-dashboard",
];

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Number of StockData replicas, each with its sidecar.
    #[arg(long, env = "MESHCTL_DEMO_REPLICAS", default_value_t = 3,
          value_parser = clap::value_parser!(u16).range(1..=32))]
    pub replicas: u16,

    /// First of the web ports on 127.0.0.1: StockWeb with the mesh on P,
    /// StockWeb without the mesh on P+1, the dashboard on P+2.
    #[arg(long, env = "MESHCTL_DEMO_PORT", default_value_t = 8080,
          value_parser = clap::value_parser!(u16).range(1..=65533))]
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

/// The user-facing ports, checked free before anything starts.
struct WebPorts {
    meshed: SocketAddr,
    plain: SocketAddr,
    dashboard: SocketAddr,
}

async fn claim_web_ports(port: u16) -> anyhow::Result<WebPorts> {
    let at = |offset: u16| SocketAddr::from(([127, 0, 0, 1], port + offset));
    let ports = WebPorts {
        meshed: at(0),
        plain: at(1),
        dashboard: at(2),
    };
    for (addr, what) in [
        (ports.meshed, "P"),
        (ports.plain, "P+1"),
        (ports.dashboard, "P+2"),
    ] {
        // Bound and released at once: the child binds it a moment later.
        TcpListener::bind(addr).await.with_context(|| {
            format!(
                "port {} ({what} of --port {port}) is taken; choose another with --port",
                addr.port()
            )
        })?;
    }
    Ok(ports)
}

/// A free loopback port for an internal listener.
async fn free_addr() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("no free loopback port")?;
    Ok(listener.local_addr()?)
}

/// One StockData replica and its sidecar.
struct Replica {
    app: SocketAddr,
    inbound: SocketAddr,
    stockdata: Option<Service>,
    proxy: Option<Service>,
    delay_ms: u64,
}

/// What the demo runs, shared with its control API.
pub struct Demo {
    bin_dir: PathBuf,
    controller: SocketAddr,
    identity: Arc<DemoIdentity>,
    registry: Mutex<RegistryClient<Channel>>,
    /// The demo's credential: the controller takes Registry writes only
    /// from a caller it knows.
    credential: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    replicas: Mutex<BTreeMap<String, Replica>>,
    next_index: std::sync::atomic::AtomicU16,
}

impl Demo {
    fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// A Registry write, with the demo's credential.
    fn authorized<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.credential.clone());
        request
    }

    /// Starts `stockdata-N` and its sidecar, waits until both listen, and
    /// registers the replica as an endpoint and its proxy for scraping.
    pub async fn add_replica(&self) -> anyhow::Result<String> {
        let index = self
            .next_index
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("stockdata-{index}");
        let (app, inbound, admin) = (free_addr().await?, free_addr().await?, free_addr().await?);
        let mut replica = Replica {
            app,
            inbound,
            stockdata: None,
            proxy: None,
            delay_ms: 0,
        };
        replica.stockdata = Some(spawn_stockdata(&self.bin("stockdata"), &name, app, 0)?);
        let mut flags = vec![
            "--inbound".into(),
            inbound.to_string(),
            "--app".into(),
            app.to_string(),
            "--admin".into(),
            admin.to_string(),
            "--destination".into(),
            format!("http://{}", self.controller),
        ];
        flags.extend(self.identity.proxy_flags("stockdata"));
        replica.proxy = Some(Service::spawn(
            format!("{name} proxy"),
            &self.bin("mesh-proxy"),
            &flags,
            &[],
        )?);
        let mut children: Vec<&mut Service> = replica
            .stockdata
            .iter_mut()
            .chain(replica.proxy.iter_mut())
            .collect();
        process::wait_until_listening(&mut children, &[app, inbound, admin]).await?;
        // Ready once it holds its certificate: only then can callers'
        // proxies complete mTLS with it.
        wait_ready(admin).await?;
        let mut registry = self.registry.lock().await;
        registry
            .register_proxy(self.authorized(ProxyInfo {
                workload: "stockdata".into(),
                instance: name.clone(),
                admin_addr: admin.to_string(),
            }))
            .await
            .with_context(|| format!("cannot register {name}'s proxy"))?;
        registry
            .register(self.authorized(RegisterRequest {
                service: "stockdata".into(),
                endpoint: Some(Endpoint {
                    addr: inbound.to_string(),
                    instance: name.clone(),
                    meshed: true,
                    identity: DemoIdentity::spiffe_id("stockdata"),
                    ..Default::default()
                }),
            }))
            .await
            .with_context(|| format!("cannot register {name}"))?;
        drop(registry);
        self.replicas.lock().await.insert(name.clone(), replica);
        Ok(name)
    }

    /// Kills a replica and its sidecar outright, as a crashed pod dies, and
    /// takes it out of the endpoints as Kubernetes would. Its proxy stays
    /// registered, so the dashboard shows it down.
    pub async fn kill_replica(&self, name: &str) -> anyhow::Result<()> {
        let mut replicas = self.replicas.lock().await;
        let replica = replicas
            .get_mut(name)
            .with_context(|| format!("no replica named {name}"))?;
        self.registry
            .lock()
            .await
            .deregister(self.authorized(DeregisterRequest {
                service: "stockdata".into(),
                addr: replica.inbound.to_string(),
            }))
            .await
            .with_context(|| format!("cannot deregister {name}"))?;
        for service in [replica.stockdata.take(), replica.proxy.take()]
            .into_iter()
            .flatten()
        {
            service.kill().await;
        }
        Ok(())
    }

    /// Restarts a replica's StockData with an artificial delay, on the same
    /// port, so its sidecar reconnects and the balancer sees it slow.
    pub async fn slow_replica(&self, name: &str) -> anyhow::Result<()> {
        let mut replicas = self.replicas.lock().await;
        let replica = replicas
            .get_mut(name)
            .with_context(|| format!("no replica named {name}"))?;
        let stockdata = replica
            .stockdata
            .take()
            .with_context(|| format!("{name} is not running"))?;
        stockdata.stop(STOP_GRACE).await;
        replica.delay_ms = SLOW_DELAY_MS;
        let mut restarted =
            spawn_stockdata(&self.bin("stockdata"), name, replica.app, replica.delay_ms)?;
        process::wait_until_listening(&mut [&mut restarted], &[replica.app]).await?;
        replica.stockdata = Some(restarted);
        Ok(())
    }

    /// Name, state and delay of every replica.
    pub async fn list(&self) -> Vec<(String, bool, u64)> {
        self.replicas
            .lock()
            .await
            .iter()
            .map(|(name, r)| (name.clone(), r.stockdata.is_some(), r.delay_ms))
            .collect()
    }

    /// A replica process that died without being killed through the API.
    async fn unexpected_exit(&self) -> Option<String> {
        let mut replicas = self.replicas.lock().await;
        for replica in replicas.values_mut() {
            for service in replica.stockdata.iter_mut().chain(replica.proxy.iter_mut()) {
                if let Some(status) = service.try_exited() {
                    return Some(format!("{} exited unexpectedly ({status})", service.name));
                }
            }
        }
        None
    }

    async fn stop_replicas(&self) {
        let mut replicas = self.replicas.lock().await;
        for replica in replicas.values_mut() {
            // Sidecar first, so no request is sent to a replica going away.
            for service in [replica.proxy.take(), replica.stockdata.take()]
                .into_iter()
                .flatten()
            {
                service.stop(STOP_GRACE).await;
            }
        }
    }
}

fn spawn_stockdata(
    bin: &Path,
    name: &str,
    app: SocketAddr,
    delay_ms: u64,
) -> anyhow::Result<Service> {
    Service::spawn(
        name.to_owned(),
        bin,
        &[
            "--listen".into(),
            app.to_string(),
            "--server-id".into(),
            name.to_owned(),
            "--delay".into(),
            delay_ms.to_string(),
        ],
        &[],
    )
}

async fn run(args: DemoArgs, bin_dir: PathBuf) -> anyhow::Result<()> {
    // Handlers first: a Ctrl-C during start-up must still stop every child.
    let mut signals = Signals::new()?;
    let web = claim_web_ports(args.port).await?;
    let bin = |name: &str| bin_dir.join(name);
    let mut fixed: Vec<Service> = Vec::new();
    let mut demo: Option<Arc<Demo>> = None;

    let identity = Arc::new(DemoIdentity::create()?);
    let outcome = async {
        let controller = free_addr().await?;
        let mut flags = vec!["--listen".into(), controller.to_string()];
        flags.extend(identity.controller_flags());
        fixed.push(Service::spawn(
            "mesh-controller",
            &bin("mesh-controller"),
            &flags,
            &[],
        )?);
        process::wait_until_listening(&mut fixed.iter_mut().collect::<Vec<_>>(), &[controller]).await?;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{controller}"))?
            .connect()
            .await
            .context("cannot reach mesh-controller")?;
        let state = demo.insert(Arc::new(Demo {
            bin_dir: bin_dir.clone(),
            controller,
            identity: identity.clone(),
            registry: Mutex::new(RegistryClient::new(channel)),
            credential: format!("Bearer {}", identity.supervisor_credential()?.trim())
                .parse()
                .context("the demo's credential is no header value")?,
            replicas: Mutex::new(BTreeMap::new()),
            next_index: std::sync::atomic::AtomicU16::new(1),
        }));
        for _ in 0..args.replicas {
            state.add_replica().await?;
        }

        // StockWeb with the mesh: its sidecar balances each call.
        let (outbound, web_admin) = (free_addr().await?, free_addr().await?);
        let mut flags = vec![
            "--outbound".into(),
            format!("stockdata={outbound}"),
            "--destination".into(),
            format!("http://{controller}"),
            "--admin".into(),
            web_admin.to_string(),
            "--balance".into(),
            args.balance.clone(),
        ];
        flags.extend(identity.proxy_flags("stockweb"));
        fixed.push(Service::spawn(
            "stockweb proxy",
            &bin("mesh-proxy"),
            &flags,
            &[],
        )?);
        fixed.push(Service::spawn(
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

        // StockWeb without the mesh, through a Service-like address over the
        // replicas the demo started with.
        let service_listener = TcpListener::bind("127.0.0.1:0").await?;
        let service_addr = service_listener.local_addr()?;
        let backends = state.replicas.lock().await.values().map(|r| r.app).collect();
        let service_task = tokio::spawn(service_vip::serve(service_listener, backends));
        fixed.push(Service::spawn(
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

        // The demo API and the dashboard that calls it.
        let api_listener = TcpListener::bind("127.0.0.1:0").await?;
        let api_addr = api_listener.local_addr()?;
        let api_task = tokio::spawn(control::serve(api_listener, state.clone()));
        fixed.push(Service::spawn(
            "mesh-dashboard",
            &bin("mesh-dashboard"),
            &[
                "--listen".into(),
                web.dashboard.to_string(),
                "--controller".into(),
                format!("http://{controller}"),
                "--stockweb-url".into(),
                format!("http://{}", web.meshed),
                "--demo-api".into(),
                format!("http://{api_addr}"),
            ],
            &[],
        )?);

        process::wait_until_listening(
            &mut fixed.iter_mut().collect::<Vec<_>>(),
            &[outbound, web_admin, web.meshed, web.plain, web.dashboard],
        )
        .await?;
        let request = state.authorized(ProxyInfo {
            workload: "stockweb".into(),
            instance: "stockweb-1".into(),
            admin_addr: web_admin.to_string(),
        });
        state
            .registry
            .lock()
            .await
            .register_proxy(request)
            .await
            .context("cannot register stockweb's proxy")?;
        wait_for_endpoints(web_admin, args.replicas.into()).await?;

        println!();
        println!("StockKube Mesh demo: {} StockData replicas", args.replicas);
        println!("  stockweb with the mesh     http://{}/", web.meshed);
        println!("  stockweb without the mesh  http://{}/", web.plain);
        println!("  dashboard                  http://{}/", web.dashboard);
        println!("  stockweb sidecar metrics   http://{web_admin}/metrics");
        println!();
        println!("With the mesh the Server column spreads over every replica; without it, one. Ctrl-C stops.");

        let watched = watch(&mut fixed, state, &mut signals).await;
        service_task.abort();
        api_task.abort();
        watched
    }
    .await;

    // Front ends first, so no page load is cut off by a replica going away.
    for service in fixed.drain(1..).rev() {
        service.stop(STOP_GRACE).await;
    }
    if let Some(demo) = demo {
        demo.stop_replicas().await;
    }
    for service in fixed {
        service.stop(STOP_GRACE).await;
    }
    // Whoever read our output may be gone by now (a closed pipe); that is
    // no reason to fail the shutdown.
    let _ = writeln!(std::io::stdout(), "demo stopped");
    outcome
}

/// Waits until the proxy whose admin server is `admin` is ready (holds its
/// identity certificate).
pub(crate) async fn wait_ready(admin: SocketAddr) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + process::READY_TIMEOUT;
    while http_get(admin, stockkube_proto::admin::READY)
        .await
        .is_err()
    {
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the proxy at {admin} had no identity certificate within {:?}",
                process::READY_TIMEOUT
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Waits until the meshed StockWeb's sidecar knows `expected` endpoints, so
/// the first page load is already balanced.
pub(crate) async fn wait_for_endpoints(admin: SocketAddr, expected: usize) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + process::READY_TIMEOUT;
    loop {
        if let Ok(body) = http_get(admin, stockkube_proto::admin::ENDPOINTS).await {
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
                "the stockweb sidecar did not learn {expected} endpoints within {:?}",
                process::READY_TIMEOUT
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A bare HTTP/1.1 GET; the body of a 200 answer.
pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        Some((head, body)) => bail!(
            "{addr}{path} answered {}: {}",
            head.lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("HTTP/1.1 "),
            body.trim()
        ),
        None => bail!("unexpected answer from {addr}{path}"),
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
async fn watch(fixed: &mut [Service], demo: &Demo, signals: &mut Signals) -> anyhow::Result<()> {
    // Children are checked on a tick rather than awaited one by one: a dead
    // process must be noticed whichever it is.
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = signals.interrupt.recv() => return Ok(()),
            _ = signals.terminate.recv() => return Ok(()),
            _ = tick.tick() => {
                for service in fixed.iter_mut() {
                    if let Some(status) = service.try_exited() {
                        bail!("{} exited unexpectedly ({status})", service.name);
                    }
                }
                if let Some(message) = demo.unexpected_exit().await {
                    bail!(message);
                }
            }
        }
    }
}
