//! `mesh-proxy`: the StockKube Mesh sidecar.
//!
//! ```text
//!            outbound listener (one per target service)
//! local app ---------> limits -> detect --HTTP--> route -> deadline -> attempt:
//!                                  |        balance (p2c peak-EWMA | round-robin, accrual, probes)
//!                                  |        -> endpoint: one HTTP/2 connection each
//!                                  |        failed? retry elsewhere (policy, replay buffer, budget)
//!                                  +--opaque--> balance per connection -> endpoint
//!
//!            inbound listener
//! peer proxy --------> limits -> detect --HTTP--> local app (connections reused)
//!                                  +--opaque--> local app
//!
//! discovery (static | dns | destination) --watch--> balancers
//! admin: /metrics /ready /live /endpoints; optional self-registration
//! ```
//!
//! Layout: [`config`] flags; [`detect`] protocol detection; [`discover`]
//! endpoint sources; [`balance`] balancers and failure accrual; [`retry`]
//! retry policy, budget and replayable bodies; [`limits`] limits against bad
//! peers; [`outbound`] and [`inbound`] the two directions; [`http`] (HTTP/1 via
//! hyper) and [`http2`] (HTTP/2 on h2 directly), [`tcp`],
//! [`body`], [`errors`] shared plumbing; [`metrics`] and [`admin`] what
//! operators read; [`run`] wires it together and drains on shutdown;
//! [`redirect`] the iptables rules of the `mesh-proxy-init` container;
//! [`register`] self-registration with the controller.

pub mod admin;
pub mod balance;
pub mod body;
pub mod config;
pub mod detect;
pub mod discover;
pub mod errors;
pub mod http;
pub mod http2;
pub mod inbound;
pub mod limits;
pub mod metrics;
pub mod outbound;
pub mod redirect;
pub mod register;
pub mod retry;
pub mod tcp;

use crate::{
    balance::{AccrualConfig, Balancer, BalancerConfig, EwmaConfig},
    config::DiscoverySpec,
    detect::Protocol,
    discover::Discover,
    metrics::{Direction, Metrics},
};
use anyhow::Context as _;
use std::{
    future::{Future, IntoFuture as _},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tracing::Instrument as _;

pub use config::{Args, Config};

/// The proxy's bound sockets; bound before [`run`] so tests can use port 0
/// and `main` can report a taken port by its flag.
#[derive(Debug)]
pub struct Listeners {
    pub outbound: Vec<(String, TcpListener)>,
    pub inbound: Option<TcpListener>,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let mut outbound = Vec::new();
        for (service, addr) in &config.outbound {
            let listener = TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen on {addr} (--outbound {service}=... / MESH_PROXY_OUTBOUND)")
            })?;
            outbound.push((service.clone(), listener));
        }
        let inbound = match config.inbound {
            Some((addr, _)) => Some(TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen on {addr} (--inbound / MESH_PROXY_INBOUND)")
            })?),
            None => None,
        };
        let admin = TcpListener::bind(config.admin).await.with_context(|| {
            format!(
                "cannot listen on {} (--admin / MESH_PROXY_ADMIN)",
                config.admin
            )
        })?;
        Ok(Self {
            outbound,
            inbound,
            admin,
        })
    }
}

/// Runs the proxy until `shutdown` completes, then drains: `/ready` turns
/// false, listeners stop accepting, HTTP connections get GOAWAY / close, and
/// in-flight requests have `config.drain_timeout` to finish.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let ready = Arc::new(AtomicBool::new(false));
    let ewma = EwmaConfig {
        decay: config.ewma_decay,
        default_rtt: config.ewma_default_rtt,
    };

    let destination = config
        .destination
        .clone()
        .map(discover::destination::Destination::new);
    let balancers: Vec<Arc<Balancer>> = config
        .discovery
        .iter()
        .map(|(service, spec)| {
            let rx = match spec {
                DiscoverySpec::Static(addrs) => {
                    discover::static_list::StaticList::new(addrs).watch(service)
                }
                DiscoverySpec::Dns { host, port } => {
                    discover::dns::Dns::new(host, *port, config.dns_refresh).watch(service)
                }
                DiscoverySpec::Destination => destination
                    .as_ref()
                    .expect("Config checks that --destination is set")
                    .watch(service),
            };
            Balancer::new(
                service,
                rx,
                BalancerConfig {
                    strategy: config.balance,
                    ewma,
                    accrual: AccrualConfig {
                        failures: config.failure_accrual,
                        ..AccrualConfig::default()
                    },
                    failfast: config.failfast_timeout,
                },
            )
        })
        .collect();
    let metrics = Arc::new(Metrics::with_balancers(balancers.clone()));
    let outbound = Arc::new(outbound::Outbound::new(
        balancers.iter().cloned(),
        &config,
        metrics.clone(),
    ));

    let (drain_tx, drain_rx) = watch::channel(false);
    // Every connection task holds a clone of `guard`; when the last is
    // dropped, `drained` yields None.
    let (guard, mut drained) = tokio::sync::mpsc::channel::<()>(1);
    let mut accept_loops = tokio::task::JoinSet::new();

    let settings = Arc::new(ConnSettings {
        detect_timeout: config.detect_timeout,
        detect_max_bytes: config.detect_max_bytes,
        limits: config.limits,
        connections: Arc::new(tokio::sync::Semaphore::new(config.limits.max_connections)),
        refusals: limits::Refusals::new(metrics.clone()),
        metrics: metrics.clone(),
    });
    for (service, listener) in listeners.outbound {
        let target = outbound
            .service(&service)
            .expect("every outbound service has a balancer")
            .clone();
        let handler = Arc::new(OutboundTarget {
            outbound: outbound.clone(),
            target,
        });
        accept_loops.spawn(
            accept_loop(
                listener,
                drain_rx.clone(),
                guard.clone(),
                handler,
                settings.clone(),
            )
            .instrument(tracing::info_span!("outbound", %service)),
        );
    }

    let inbound_addr = listeners.inbound.as_ref().map(local_addr);
    if let (Some(listener), Some((_, app))) = (listeners.inbound, config.inbound) {
        let handler = Arc::new(inbound::Inbound::new(app, metrics.clone()));
        accept_loops.spawn(
            accept_loop(
                listener,
                drain_rx.clone(),
                guard.clone(),
                handler,
                settings.clone(),
            )
            .instrument(tracing::info_span!("inbound", %app)),
        );
    }

    let admin_state = admin::AdminState {
        metrics: metrics.clone(),
        balancers: balancers.into(),
        ready: ready.clone(),
    };
    let mut admin_drain = drain_rx.clone();
    let admin_addr = listeners.admin.local_addr()?;
    let admin_server = tokio::spawn(
        axum::serve(listeners.admin, admin::app(admin_state))
            .with_graceful_shutdown(async move {
                let _ = admin_drain.wait_for(|draining| *draining).await;
            })
            .into_future(),
    );

    // Announced with the ports actually bound (a flag may have said 0).
    let registration = config.registration.clone().map(|mut registration| {
        registration.admin_port = admin_addr.port();
        if let (Some((_, port)), Some(inbound)) = (&mut registration.service, inbound_addr) {
            *port = inbound.port();
        }
        tokio::spawn(register::run(registration, drain_rx.clone()))
    });

    ready.store(true, Ordering::Release);
    tracing::info!(admin = %admin_addr, "mesh-proxy ready");
    shutdown.await;

    tracing::info!("draining");
    ready.store(false, Ordering::Release);
    let _ = drain_tx.send(true);
    while accept_loops.join_next().await.is_some() {}
    drop(guard);
    if tokio::time::timeout(config.drain_timeout, drained.recv())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?config.drain_timeout, "drain timed out; closing the remaining connections");
    }
    let _ = admin_server.await;
    if let Some(registration) = registration {
        let _ = registration.await;
    }
    tracing::info!("mesh-proxy stopped");
    Ok(())
}

/// What every connection of every listener shares: its settings, the
/// connection limit, and where refusals are counted.
#[derive(Debug)]
struct ConnSettings {
    detect_timeout: std::time::Duration,
    detect_max_bytes: usize,
    limits: limits::LimitsConfig,
    /// One permit per open client connection.
    connections: Arc<tokio::sync::Semaphore>,
    refusals: limits::Refusals,
    metrics: Arc<Metrics>,
}

impl ConnSettings {
    async fn detect(
        &self,
        mut conn: tokio::net::TcpStream,
    ) -> Option<(Protocol, detect::Prefixed<tokio::net::TcpStream>)> {
        let _ = conn.set_nodelay(true);
        match detect::detect(&mut conn, self.detect_timeout, self.detect_max_bytes).await {
            Ok(Some((protocol, prefix))) => Some((protocol, detect::Prefixed::new(prefix, conn))),
            Ok(None) => None,
            Err(err) => {
                tracing::debug!(%err, "connection failed during detection");
                None
            }
        }
    }
}

/// What one direction does with a connection once its protocol is known.
trait Handler: Send + Sync + 'static {
    const DIRECTION: Direction;

    fn tcp(&self, io: detect::Prefixed<TcpStream>) -> impl Future<Output = ()> + Send;

    fn http(
        &self,
        protocol: Protocol,
        request: ::http::Request<body::Received>,
    ) -> impl Future<Output = ::http::Response<body::ProxyBody>> + Send;
}

/// An outbound listener: the proxy's outbound side with this listener's
/// target service.
struct OutboundTarget {
    outbound: Arc<outbound::Outbound>,
    target: Arc<outbound::Service>,
}

impl Handler for OutboundTarget {
    const DIRECTION: Direction = Direction::Outbound;

    async fn tcp(&self, io: detect::Prefixed<TcpStream>) {
        self.outbound.proxy_tcp(&self.target, io).await
    }

    async fn http(
        &self,
        protocol: Protocol,
        request: ::http::Request<body::Received>,
    ) -> ::http::Response<body::ProxyBody> {
        self.outbound
            .proxy_http(protocol, &self.target, request)
            .await
    }
}

impl Handler for inbound::Inbound {
    const DIRECTION: Direction = Direction::Inbound;

    async fn tcp(&self, io: detect::Prefixed<TcpStream>) {
        self.proxy_tcp(io).await
    }

    async fn http(
        &self,
        protocol: Protocol,
        request: ::http::Request<body::Received>,
    ) -> ::http::Response<body::ProxyBody> {
        self.proxy_http(protocol, request).await
    }
}

/// Accepts until the drain starts, serving each connection in its own task.
async fn accept_loop<H: Handler>(
    listener: TcpListener,
    drain: watch::Receiver<bool>,
    guard: http::DrainGuard,
    handler: Arc<H>,
    settings: Arc<ConnSettings>,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "listening");
    }
    let mut stop = drain.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|draining| *draining) => return,
        };
        match accepted {
            Ok((conn, peer)) => {
                let Ok(permit) = settings.connections.clone().try_acquire_owned() else {
                    // Closing at once tells the client to go elsewhere;
                    // leaving it in the backlog would only make it wait.
                    drop(conn);
                    settings.refusals.refused(
                        H::DIRECTION,
                        limits::Refusal::MaxConnections,
                        &format_args!(
                            "{peer}: {} connections open",
                            settings.limits.max_connections
                        ),
                    );
                    continue;
                };
                let span = tracing::debug_span!("conn", %peer);
                let connection = serve_connection(
                    handler.clone(),
                    settings.clone(),
                    conn,
                    drain.clone(),
                    (guard.clone(), permit),
                );
                tokio::spawn(connection.instrument(span));
            }
            Err(err) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(%err, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Detects a connection's protocol and hands it to its direction. Holds
/// the drain guard and the connection's permit until it closes.
async fn serve_connection<H: Handler>(
    handler: Arc<H>,
    settings: Arc<ConnSettings>,
    conn: TcpStream,
    drain: watch::Receiver<bool>,
    (guard, _permit): (http::DrainGuard, tokio::sync::OwnedSemaphorePermit),
) {
    let Some((protocol, io)) = settings.detect(conn).await else {
        return;
    };
    settings.metrics.accepted(H::DIRECTION, protocol.as_str());
    let http = match protocol {
        Protocol::Opaque => return handler.tcp(io).await,
        http => http,
    };
    let per_request = settings.clone();
    let served = http::serve(http, io, &settings.limits, drain, guard, move |request| {
        let handler = handler.clone();
        let settings = per_request.clone();
        async move {
            let size = limits::header_bytes(&request);
            if size > settings.limits.max_header_bytes {
                let message = format!(
                    "request headers are {size} bytes, more than the {} allowed",
                    settings.limits.max_header_bytes
                );
                settings
                    .refusals
                    .refused(H::DIRECTION, limits::Refusal::HeaderTooLarge, &message);
                return errors::response(
                    errors::is_grpc(&request),
                    ::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    tonic::Code::ResourceExhausted,
                    &message,
                );
            }
            handler.http(http, request).await
        }
    })
    .await;
    if let Err(err) = served {
        // Limits the HTTP layer enforces itself are refusals like ours;
        // anything else is a peer that broke the protocol or went away.
        let refusal = match &err {
            http::ServeError::Http1(err) if err.is_parse_too_large() => {
                Some(limits::Refusal::HeaderTooLarge)
            }
            http::ServeError::Http1(err) if err.is_timeout() => {
                Some(limits::Refusal::HeaderReadTimeout)
            }
            _ => None,
        };
        match refusal {
            Some(reason) => settings.refusals.refused(H::DIRECTION, reason, &err),
            None => tracing::debug!(%err, "connection ended with an error"),
        }
    }
}

/// The address a listener is bound to, for logs and tests.
pub fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .expect("a bound listener has an address")
}
