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
//! Every process is a child of `meshctl`, supervised as a kubelet would
//! ([`supervise`]): one that dies on its own is reported, its replica's
//! endpoint removed, and it is started again after a back-off; the rest
//! carries on. Only the controller's death ends the demo. Ctrl-C (or
//! SIGTERM) stops them all, the front ends first. The demo API (see
//! [`control`]) adds, kills and slows replicas for the dashboard's demo
//! controls.

mod control;
mod identity;
mod supervise;

use identity::DemoIdentity;
use supervise::{Change, Supervised};

use crate::{process, service_vip};
use anyhow::{Context as _, bail};
use std::io::Write as _;
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU16, AtomicU64, Ordering},
    },
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
/// How often the supervisor looks at its children.
const SUPERVISE_EVERY: Duration = Duration::from_millis(250);
/// How often registrations are renewed until the controller says.
const RENEW_EVERY: Duration = Duration::from_secs(10);
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

    /// The most replicas running at once; the dashboard's "Add a replica"
    /// is refused past it (each replica is two processes).
    #[arg(long, env = "MESHCTL_DEMO_MAX_REPLICAS", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=32))]
    pub max_replicas: u16,

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
    if args.replicas > args.max_replicas {
        bail!(
            "--replicas {} is more than --max-replicas {}",
            args.replicas,
            args.max_replicas
        );
    }
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

/// One StockData replica and its sidecar: a pod of two containers.
struct Replica {
    app: SocketAddr,
    inbound: SocketAddr,
    admin: SocketAddr,
    stockdata: Supervised,
    proxy: Supervised,
    delay_ms: u64,
    /// Killed through the demo API: stays down.
    killed: bool,
    /// Its endpoint is registered: both processes are up.
    registered: bool,
}

impl Replica {
    /// `up`, `starting`, `crashed`, `restarting` or `killed`.
    fn state(&self) -> &'static str {
        use supervise::State;
        let states = [self.stockdata.state(), self.proxy.state()];
        if self.killed {
            "killed"
        } else if states.iter().any(|s| matches!(s, State::Crashed { .. })) {
            "crashed"
        } else if states.contains(&State::Starting) {
            if self.restarts() > 0 {
                "restarting"
            } else {
                "starting"
            }
        } else {
            "up"
        }
    }

    fn restarts(&self) -> u32 {
        self.stockdata.restarts + self.proxy.restarts
    }
}

/// A replica as the demo API lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplicaView {
    pub name: String,
    /// `up`, `starting`, `crashed`, `restarting` or `killed`.
    pub state: &'static str,
    /// Restarts of its processes after they died on their own.
    pub restarts: u32,
    /// How a process of it last died on its own.
    pub last_exit: Option<String>,
    pub delay_ms: u64,
}

/// What the demo runs, shared with its control API.
pub struct Demo {
    bin_dir: PathBuf,
    controller: SocketAddr,
    identity: Arc<DemoIdentity>,
    registry: RegistryClient<Channel>,
    /// The demo's credential: the controller takes Registry writes only
    /// from a caller it knows.
    credential: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    replicas: Mutex<BTreeMap<String, Replica>>,
    /// Proxies registered besides the replicas' (StockWeb's), renewed with
    /// them.
    other_proxies: Mutex<Vec<ProxyInfo>>,
    next_index: AtomicU16,
    max_replicas: usize,
    /// How soon the controller wants registrations renewed, in ms.
    renew_after_ms: AtomicU64,
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

    /// Notes how soon the controller wants a registration again.
    fn lease(&self, renew_after_ms: u64) {
        if renew_after_ms > 0 {
            self.renew_after_ms.store(renew_after_ms, Ordering::Relaxed);
        }
    }

    fn renew_every(&self) -> Duration {
        match self.renew_after_ms.load(Ordering::Relaxed) {
            0 => RENEW_EVERY,
            ms => Duration::from_millis(ms).clamp(Duration::from_millis(100), RENEW_EVERY),
        }
    }

    async fn register_proxy(&self, info: ProxyInfo) -> anyhow::Result<()> {
        let instance = info.instance.clone();
        let answer = self
            .registry
            .clone()
            .register_proxy(self.authorized(info))
            .await
            .with_context(|| format!("cannot register {instance}'s proxy"))?;
        self.lease(answer.into_inner().renew_after_ms);
        Ok(())
    }

    async fn register_endpoint(&self, name: &str, inbound: SocketAddr) -> anyhow::Result<()> {
        let answer = self
            .registry
            .clone()
            .register(self.authorized(RegisterRequest {
                service: "stockdata".into(),
                endpoint: Some(Endpoint {
                    addr: inbound.to_string(),
                    instance: name.to_owned(),
                    meshed: true,
                    identity: DemoIdentity::spiffe_id("stockdata"),
                    ..Default::default()
                }),
            }))
            .await
            .with_context(|| format!("cannot register {name}"))?;
        self.lease(answer.into_inner().renew_after_ms);
        Ok(())
    }

    async fn deregister_endpoint(&self, name: &str, inbound: SocketAddr) -> anyhow::Result<()> {
        self.registry
            .clone()
            .deregister(self.authorized(DeregisterRequest {
                service: "stockdata".into(),
                addr: inbound.to_string(),
            }))
            .await
            .with_context(|| format!("cannot deregister {name}"))?;
        Ok(())
    }

    fn replica_proxy(name: &str, admin: SocketAddr) -> ProxyInfo {
        ProxyInfo {
            workload: "stockdata".into(),
            instance: name.to_owned(),
            admin_addr: admin.to_string(),
        }
    }

    /// Starts `stockdata-N` and its sidecar, waits until both listen (and
    /// the sidecar holds its certificate), and registers the replica as an
    /// endpoint and its proxy for scraping. Refused past `--max-replicas`.
    pub async fn add_replica(&self) -> anyhow::Result<String> {
        let running = self
            .replicas
            .lock()
            .await
            .values()
            .filter(|r| !r.killed)
            .count();
        if running >= self.max_replicas {
            bail!(
                "{running} replicas run already, the most this demo runs (--max-replicas {})",
                self.max_replicas
            );
        }
        let index = self.next_index.fetch_add(1, Ordering::Relaxed);
        let name = format!("stockdata-{index}");
        let (app, inbound, admin) = (free_addr().await?, free_addr().await?, free_addr().await?);
        let stockdata = Supervised::start(
            name.clone(),
            self.bin("stockdata"),
            stockdata_args(&name, app, 0),
            vec![app],
        )?;
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
        // Ready once it holds its certificate: only then can callers'
        // proxies complete mTLS with it.
        let proxy = Supervised::start_with(
            format!("{name} proxy"),
            self.bin("mesh-proxy"),
            flags,
            Vec::new(),
            vec![inbound, admin],
            Some(admin),
        )?;
        let mut replica = Replica {
            app,
            inbound,
            admin,
            stockdata,
            proxy,
            delay_ms: 0,
            killed: false,
            registered: false,
        };
        supervise::until_up(
            &mut [&mut replica.stockdata, &mut replica.proxy],
            process::READY_TIMEOUT,
        )
        .await?;
        self.register_proxy(Self::replica_proxy(&name, admin))
            .await?;
        self.register_endpoint(&name, inbound).await?;
        replica.registered = true;
        self.replicas.lock().await.insert(name.clone(), replica);
        Ok(name)
    }

    /// Kills a replica and its sidecar outright, as a deleted pod dies, and
    /// takes it out of the endpoints first, as Kubernetes would. It is not
    /// restarted; its proxy stays registered, so the dashboard shows it down.
    pub async fn kill_replica(&self, name: &str) -> anyhow::Result<()> {
        let mut replicas = self.replicas.lock().await;
        let replica = replicas
            .get_mut(name)
            .with_context(|| format!("no replica named {name}"))?;
        if replica.registered {
            self.deregister_endpoint(name, replica.inbound).await?;
            replica.registered = false;
        }
        replica.killed = true;
        replica.stockdata.kill().await;
        replica.proxy.kill().await;
        Ok(())
    }

    /// Restarts a replica's StockData with an artificial delay, on the same
    /// port, so its sidecar reconnects and the balancer sees it slow.
    pub async fn slow_replica(&self, name: &str) -> anyhow::Result<()> {
        let mut replicas = self.replicas.lock().await;
        let replica = replicas
            .get_mut(name)
            .with_context(|| format!("no replica named {name}"))?;
        if replica.killed {
            bail!("{name} was killed");
        }
        replica.delay_ms = SLOW_DELAY_MS;
        replica
            .stockdata
            .restart_with(stockdata_args(name, replica.app, SLOW_DELAY_MS), STOP_GRACE)
            .await?;
        supervise::until_up(&mut [&mut replica.stockdata], process::READY_TIMEOUT).await
    }

    /// Every replica, by name.
    pub async fn list(&self) -> Vec<ReplicaView> {
        self.replicas
            .lock()
            .await
            .iter()
            .map(|(name, r)| ReplicaView {
                name: name.clone(),
                state: r.state(),
                restarts: r.restarts(),
                last_exit: r
                    .stockdata
                    .last_exit
                    .clone()
                    .or_else(|| r.proxy.last_exit.clone()),
                delay_ms: r.delay_ms,
            })
            .collect()
    }

    /// One look at every replica: deaths reported, restarts made, and the
    /// endpoint registered exactly while both of its processes are up.
    async fn supervise_replicas(&self) {
        let mut replicas = self.replicas.lock().await;
        for (name, replica) in replicas.iter_mut() {
            for process in [&mut replica.stockdata, &mut replica.proxy] {
                if let Some(change) = process.poll().await {
                    report(process, &change);
                }
            }
            let up = !replica.killed && replica.stockdata.is_up() && replica.proxy.is_up();
            if up == replica.registered {
                continue;
            }
            let written = if up {
                self.register_endpoint(name, replica.inbound).await
            } else {
                self.deregister_endpoint(name, replica.inbound).await
            };
            match written {
                Ok(()) => replica.registered = up,
                Err(err) => eprintln!("meshctl: {err:#}"),
            }
        }
    }

    /// Registers again what is registered: the controller keeps
    /// registrations as leases.
    async fn renew(&self) {
        let mut proxies = self.other_proxies.lock().await.clone();
        let mut endpoints = Vec::new();
        for (name, replica) in self.replicas.lock().await.iter() {
            // A killed or crashed replica's proxy stays listed, so the
            // dashboard shows it down.
            proxies.push(Self::replica_proxy(name, replica.admin));
            if replica.registered {
                endpoints.push((name.clone(), replica.inbound));
            }
        }
        for proxy in proxies {
            if let Err(err) = self.register_proxy(proxy).await {
                eprintln!("meshctl: {err:#}");
            }
        }
        for (name, inbound) in endpoints {
            if let Err(err) = self.register_endpoint(&name, inbound).await {
                eprintln!("meshctl: {err:#}");
            }
        }
    }

    async fn stop_replicas(&self) {
        let mut replicas = self.replicas.lock().await;
        for replica in replicas.values_mut() {
            // Sidecar first, so no request is sent to a replica going away.
            replica.proxy.stop(STOP_GRACE).await;
            replica.stockdata.stop(STOP_GRACE).await;
        }
    }
}

/// Says what happened to a supervised process, on stderr beside the
/// children's own logs.
fn report(process: &Supervised, change: &Change) {
    match change {
        Change::Crashed { status, restart_in } => eprintln!(
            "meshctl: {} exited unexpectedly ({status}); restarting it in {restart_in:?}",
            process.name
        ),
        Change::Restarted => eprintln!(
            "meshctl: {} restarted (restart {})",
            process.name, process.restarts
        ),
        Change::Up if process.restarts > 0 => {
            eprintln!("meshctl: {} is up again", process.name);
        }
        Change::Up => {}
    }
}

fn stockdata_args(name: &str, app: SocketAddr, delay_ms: u64) -> Vec<String> {
    vec![
        "--listen".into(),
        app.to_string(),
        "--server-id".into(),
        name.to_owned(),
        "--delay".into(),
        delay_ms.to_string(),
    ]
}

async fn run(args: DemoArgs, bin_dir: PathBuf) -> anyhow::Result<()> {
    // Handlers first: a Ctrl-C during start-up must still stop every child.
    let mut signals = Signals::new()?;
    let web = claim_web_ports(args.port).await?;
    let bin = |name: &str| bin_dir.join(name);
    // The controller first; the front ends after it, stopped first.
    let mut fixed: Vec<Supervised> = Vec::new();
    let mut demo: Option<Arc<Demo>> = None;

    let identity = Arc::new(DemoIdentity::create()?);
    let outcome = async {
        let controller = free_addr().await?;
        let mut flags = vec!["--listen".into(), controller.to_string()];
        flags.extend(identity.controller_flags());
        fixed.push(Supervised::start(
            "mesh-controller",
            bin("mesh-controller"),
            flags,
            vec![controller],
        )?);
        supervise::until_up(&mut [&mut fixed[0]], process::READY_TIMEOUT).await?;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{controller}"))?
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .context("cannot reach mesh-controller")?;
        let state = demo.insert(Arc::new(Demo {
            bin_dir: bin_dir.clone(),
            controller,
            identity: identity.clone(),
            registry: RegistryClient::new(channel),
            credential: format!("Bearer {}", identity.supervisor_credential()?.trim())
                .parse()
                .context("the demo's credential is no header value")?,
            replicas: Mutex::new(BTreeMap::new()),
            other_proxies: Mutex::new(Vec::new()),
            next_index: AtomicU16::new(1),
            max_replicas: args.max_replicas.into(),
            renew_after_ms: AtomicU64::new(0),
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
        fixed.push(Supervised::start_with(
            "stockweb proxy",
            bin("mesh-proxy"),
            flags,
            Vec::new(),
            vec![outbound, web_admin],
            Some(web_admin),
        )?);
        fixed.push(Supervised::start(
            "stockweb",
            bin("stockweb"),
            vec![
                "--listen".into(),
                web.meshed.to_string(),
                "--stockdata-address".into(),
                format!("http://{outbound}"),
            ],
            vec![web.meshed],
        )?);

        // StockWeb without the mesh, through a Service-like address over the
        // replicas the demo started with.
        let service_listener = TcpListener::bind("127.0.0.1:0").await?;
        let service_addr = service_listener.local_addr()?;
        let backends = state.replicas.lock().await.values().map(|r| r.app).collect();
        let service_task = tokio::spawn(service_vip::serve(service_listener, backends));
        fixed.push(Supervised::start(
            "stockweb (no mesh)",
            bin("stockweb"),
            vec![
                "--listen".into(),
                web.plain.to_string(),
                "--stockdata-address".into(),
                format!("http://{service_addr}"),
            ],
            vec![web.plain],
        )?);

        // The demo API and the dashboard that calls it, with a token only
        // the two of them know (in the dashboard's environment, which other
        // users cannot read, not on its command line, which they can).
        let api_listener = TcpListener::bind("127.0.0.1:0").await?;
        let api_addr = api_listener.local_addr()?;
        let api_token = mesh_runtime::random_hex(32).context("cannot read /dev/urandom")?;
        let api_task = tokio::spawn(control::serve(
            api_listener,
            state.clone(),
            api_token.clone(),
        ));
        fixed.push(Supervised::start_with(
            "mesh-dashboard",
            bin("mesh-dashboard"),
            vec![
                "--listen".into(),
                web.dashboard.to_string(),
                "--controller".into(),
                format!("http://{controller}"),
                "--stockweb-url".into(),
                format!("http://{}", web.meshed),
                "--demo-api".into(),
                format!("http://{api_addr}"),
            ],
            vec![("MESH_DASHBOARD_DEMO_API_TOKEN", api_token)],
            vec![web.dashboard],
            None,
        )?);

        supervise::until_up(
            &mut fixed.iter_mut().skip(1).collect::<Vec<_>>(),
            process::READY_TIMEOUT,
        )
        .await?;
        let stockweb_proxy = ProxyInfo {
            workload: "stockweb".into(),
            instance: "stockweb-1".into(),
            admin_addr: web_admin.to_string(),
        };
        state.register_proxy(stockweb_proxy.clone()).await?;
        state.other_proxies.lock().await.push(stockweb_proxy);
        wait_for_endpoints(web_admin, args.replicas.into()).await?;

        println!();
        println!("StockKube Mesh demo: {} StockData replicas", args.replicas);
        println!("  stockweb with the mesh     http://{}/", web.meshed);
        println!("  stockweb without the mesh  http://{}/", web.plain);
        println!("  dashboard                  http://{}/", web.dashboard);
        println!("  stockweb sidecar metrics   http://{web_admin}/metrics");
        println!();
        println!("With the mesh the Server column spreads over every replica; without it, one. Ctrl-C stops.");

        let watched = supervise_all(&mut fixed, state, &mut signals).await;
        service_task.abort();
        api_task.abort();
        watched
    }
    .await;

    // Front ends first, so no page load is cut off by a replica going away.
    for process in fixed.iter_mut().skip(1).rev() {
        process.stop(STOP_GRACE).await;
    }
    if let Some(demo) = demo {
        demo.stop_replicas().await;
    }
    for process in &mut fixed {
        process.stop(STOP_GRACE).await;
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

/// Supervises every child until SIGINT/SIGTERM (Ok) or until the
/// controller dies (Err): the demo cannot go on without it. Any other child
/// that dies is restarted; the registrations are renewed as the controller
/// asks.
async fn supervise_all(
    fixed: &mut [Supervised],
    demo: &Demo,
    signals: &mut Signals,
) -> anyhow::Result<()> {
    // Children are checked on a tick rather than awaited one by one: a dead
    // process must be noticed whichever it is.
    let mut tick = tokio::time::interval(SUPERVISE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = signals.interrupt.recv() => return Ok(()),
            _ = signals.terminate.recv() => return Ok(()),
            _ = tick.tick() => {}
        }
        for (index, process) in fixed.iter_mut().enumerate() {
            let Some(change) = process.poll().await else {
                continue;
            };
            if let (0, Change::Crashed { status, .. }) = (index, &change) {
                bail!(
                    "{} exited unexpectedly ({status}); the demo cannot go on without its controller",
                    process.name
                );
            }
            report(process, &change);
        }
        demo.supervise_replicas().await;
        if renewed.elapsed() >= demo.renew_every() {
            renewed = tokio::time::Instant::now();
            demo.renew().await;
        }
    }
}
