//! Serving, in one place: accepting on a listener, the connection permit,
//! protocol detection, and handing each connection (opaque) or each of its
//! requests (HTTP) to its direction. Limits are checked in [`crate::limits`];
//! the HTTP protocols are served by [`crate::http`] and [`crate::http2`].
//!
//! ```text
//! accept -> permit (limits) -> detect -> [inbound: mesh TLS -> detect inside]
//!        -> policy: may this peer connect (inbound)
//!        -> opaque: policy: may it call -> Direction::tcp (closed unless an
//!           opaque port, when no protocol was detected)
//!        -> HTTP/1, HTTP/2: per request: head size (limits) -> head checks (head)
//!                           -> policy: may it call -> Direction::http
//! ```
//!
//! Also the drain: every connection holds a guard, and [`Drain::wait`]
//! returns once all are gone or the drain timeout passed.

use crate::{
    Config,
    body::{ProxyBody, Received},
    detect::{self, Prefixed, Protocol},
    discover::resolve::Resolver,
    errors::{self, ProxyError},
    http::{self, DrainGuard},
    inbound::{Inbound, InboundListener},
    limits::{ConnectionPermit, Limits, Refusal},
    metrics::{Direction, Metrics, RouteLabels},
    outbound::{Outbound, Service, intercept::Intercepted},
    policy::{Admits as _, Policy},
    tcp,
    tls::{self, MeshTls, PeerTls, ServerIo, Transport},
};
use anyhow::Context as _;
use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
};
use tracing::Instrument as _;

/// The `target` label of connections forwarded untouched.
pub const PASSTHROUGH: &str = "passthrough";

/// The proxy's bound sockets; bound before [`crate::run`] so tests can use
/// port 0 and `main` can report a taken port by its flag.
#[derive(Debug)]
pub struct Listeners {
    pub outbound: Vec<(String, TcpListener)>,
    pub outbound_transparent: Vec<TcpListener>,
    pub inbound: Vec<TcpListener>,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let mut outbound = Vec::new();
        for (service, addr) in &config.outbound {
            let listener = bind(*addr).with_context(|| {
                format!("cannot listen on {addr} (--outbound {service}=... / MESH_PROXY_OUTBOUND)")
            })?;
            outbound.push((service.clone(), listener));
        }
        let bind_all = |addrs: &[SocketAddr], flag: &str| {
            addrs
                .iter()
                .map(|addr| {
                    bind(*addr).with_context(|| format!("cannot listen on {addr} ({flag})"))
                })
                .collect::<anyhow::Result<Vec<_>>>()
        };
        let outbound_transparent = bind_all(
            &config.outbound_transparent,
            "--outbound-transparent / MESH_PROXY_OUTBOUND_TRANSPARENT",
        )?;
        let inbound = bind_all(&config.inbound, "--inbound / MESH_PROXY_INBOUND")?;
        let admin = bind(config.admin).with_context(|| {
            format!(
                "cannot listen on {} (--admin / MESH_PROXY_ADMIN)",
                config.admin
            )
        })?;
        Ok(Self {
            outbound,
            outbound_transparent,
            inbound,
            admin,
        })
    }
}

/// A listener on `addr`. An IPv6 one takes IPv6 only, so that one for each
/// family can share a port (`0.0.0.0:4143` and `[::]:4143`).
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// The sockets that take traffic, by what serves them.
#[derive(Debug)]
pub struct Accepting {
    /// Named outbound services' listeners.
    pub named: Vec<(String, TcpListener)>,
    /// The transparent outbound listeners.
    pub intercepted: Vec<TcpListener>,
    pub inbound: Vec<TcpListener>,
}

/// Starts the accept loop of every listener; they end when the drain starts.
pub fn accept_all(
    server: Arc<Server>,
    sockets: Accepting,
    outbound: &Arc<Outbound>,
    config: &Config,
    metrics: &Arc<Metrics>,
) -> tokio::task::JoinSet<()> {
    let mut loops = tokio::task::JoinSet::new();
    for (service, listener) in sockets.named {
        let target = outbound
            .service(&service)
            .expect("every outbound service has a balancer")
            .clone();
        let handler = Arc::new(OutboundTarget {
            outbound: outbound.clone(),
            target,
        });
        let span = tracing::info_span!("outbound", %service);
        let accepting = server.clone().accept(listener, Arc::new(Fixed(handler)));
        loops.spawn(accepting.instrument(span));
    }
    if let Some(controller) = config.destination.clone() {
        // One for every family's listener: they share the resolve cache.
        let intercepted = Arc::new(Intercepted {
            outbound: outbound.clone(),
            resolver: Resolver::new(controller, config.resolve_timeout),
            metrics: metrics.clone(),
        });
        for listener in sockets.intercepted {
            let span = tracing::info_span!("outbound", service = "intercepted");
            let accepting = server.clone().accept(listener, intercepted.clone());
            loops.spawn(accepting.instrument(span));
        }
    }
    let inbound = Arc::new(InboundListener::new(
        config.app,
        config.inbound_policy.clone(),
        config.opaque.clone(),
        metrics.clone(),
    ));
    for listener in sockets.inbound {
        let span = tracing::info_span!("inbound", app = ?config.app);
        let accepting = server.clone().accept(listener, inbound.clone());
        loops.spawn(accepting.instrument(span));
    }
    loops
}

/// What a listener makes of a connection it accepted, before anything is
/// read from it.
pub enum Accepted<H> {
    /// Detect its protocol and hand it to this direction.
    Handle(Arc<H>),
    /// Forward it untouched to this address, without detection (an
    /// intercepted connection to no service the mesh knows).
    Forward(SocketAddr),
    /// Close it, counted with this reason.
    Refuse(Refusal, String),
}

/// One listener's way of choosing what serves each connection.
pub trait Listener: Send + Sync + 'static {
    type Handler: Handler;

    fn accept(&self, conn: &TcpStream) -> impl Future<Output = Accepted<Self::Handler>> + Send;
}

/// A listener whose connections all go to one handler (a named outbound
/// service, an inbound listener with `--app`).
pub struct Fixed<H>(pub Arc<H>);

impl<H: Handler> Listener for Fixed<H> {
    type Handler = H;

    async fn accept(&self, _: &TcpStream) -> Accepted<H> {
        Accepted::Handle(self.0.clone())
    }
}

/// What a direction does with a connection once its protocol is known.
pub trait Handler: Send + Sync + 'static {
    const DIRECTION: Direction;

    /// The app port and its policy (inbound); `None`: everyone may.
    fn policy(&self) -> Option<(u16, &Policy)> {
        None
    }

    /// Relays an opaque connection; `undetected` when it is not a protocol
    /// the proxy knows (not HTTP, not TLS it passes through), which only
    /// opaque ports relay. `Err`: refused, with why.
    fn tcp(
        &self,
        io: ServerIo,
        peer: PeerTls,
        undetected: bool,
    ) -> impl Future<Output = Result<(), (Refusal, String)>> + Send;

    /// Serves one request from `source`; its extensions hold the
    /// connection's [`PeerTls`] when it is mesh TLS (none: plaintext).
    fn http(
        &self,
        protocol: Protocol,
        request: ::http::Request<Received>,
        source: std::net::IpAddr,
    ) -> impl Future<Output = ::http::Response<ProxyBody>> + Send;
}

/// An outbound listener: the proxy's outbound side with this listener's
/// target service.
pub struct OutboundTarget {
    pub outbound: Arc<Outbound>,
    pub target: Arc<Service>,
}

impl Handler for OutboundTarget {
    const DIRECTION: Direction = Direction::Outbound;

    async fn tcp(
        &self,
        io: ServerIo,
        _: PeerTls,
        undetected: bool,
    ) -> Result<(), (Refusal, String)> {
        self.outbound.proxy_tcp(&self.target, io, undetected).await
    }

    async fn http(
        &self,
        protocol: Protocol,
        request: ::http::Request<Received>,
        source: std::net::IpAddr,
    ) -> ::http::Response<ProxyBody> {
        // Boxed: the request path's future is large, and unboxed it is
        // copied into each future that awaits it (0.989 × the instructions
        // per request, docs/benchmarks.md; the inbound path's is small
        // enough: boxing it measured 0.998 ×).
        Box::pin(
            self.outbound
                .proxy_http(protocol, &self.target, request, source),
        )
        .await
    }
}

impl Handler for Inbound {
    const DIRECTION: Direction = Direction::Inbound;

    fn policy(&self) -> Option<(u16, &Policy)> {
        Some((self.port(), self.port_policy()))
    }

    async fn tcp(
        &self,
        io: ServerIo,
        peer: PeerTls,
        undetected: bool,
    ) -> Result<(), (Refusal, String)> {
        self.proxy_tcp(io, peer, undetected).await
    }

    async fn http(
        &self,
        protocol: Protocol,
        request: ::http::Request<Received>,
        source: std::net::IpAddr,
    ) -> ::http::Response<ProxyBody> {
        self.proxy_http(protocol, request, source).await
    }
}

/// Detection settings.
#[derive(Debug, Clone, Copy)]
pub struct DetectConfig {
    /// How long to wait for a client's first bytes.
    pub timeout: Duration,
    /// How many bytes to read at most before deciding.
    pub max_bytes: usize,
}

/// What every connection of every listener shares.
#[derive(Debug)]
pub struct Server {
    detect: DetectConfig,
    limits: Limits,
    /// Idle timeout of connections forwarded untouched.
    forward_idle_timeout: Duration,
    metrics: Arc<Metrics>,
    /// The mesh's TLS, terminated on inbound listeners.
    tls: Option<Arc<MeshTls>>,
    drain: watch::Receiver<bool>,
    guard: DrainGuard,
}

impl Server {
    /// Serves until `drain` says so; connections hold a guard of `drain`.
    pub fn new(
        detect: DetectConfig,
        limits: Limits,
        forward_idle_timeout: Duration,
        metrics: Arc<Metrics>,
        tls: Option<Arc<MeshTls>>,
        drain: &Drain,
    ) -> Self {
        Self {
            detect,
            limits,
            forward_idle_timeout,
            metrics,
            tls,
            drain: drain.signal(),
            guard: drain
                .guard
                .clone()
                .expect("a drain hands out guards until it waits"),
        }
    }

    /// Accepts until the drain starts, serving each connection in its own task.
    pub async fn accept<L: Listener>(self: Arc<Self>, listener: TcpListener, handler: Arc<L>) {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "listening");
        }
        let mut stop = self.drain.clone();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop.wait_for(|draining| *draining) => return,
            };
            match accepted {
                Ok((conn, peer)) => {
                    // Closing at once tells a refused client to go
                    // elsewhere; the backlog would only make it wait.
                    let Some(permit) = self.limits.admit(L::Handler::DIRECTION, peer) else {
                        drop(conn);
                        continue;
                    };
                    let span = tracing::debug_span!("conn", %peer);
                    let handler = handler.clone();
                    let connection = self.clone().connection(handler, conn, permit);
                    tokio::spawn(connection.instrument(span));
                }
                Err(err) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Asks the listener what serves the connection, detects its protocol
    /// and hands it to its direction. Holds the drain guard and the
    /// connection's permit until it closes.
    async fn connection<L: Listener>(
        self: Arc<Self>,
        listener: Arc<L>,
        conn: TcpStream,
        permit: ConnectionPermit,
    ) {
        let _ = conn.set_nodelay(true);
        let direction = L::Handler::DIRECTION;
        let handler = match listener.accept(&conn).await {
            Accepted::Handle(handler) => handler,
            Accepted::Forward(addr) => {
                self.metrics.tcp_connection(&RouteLabels {
                    direction,
                    target: PASSTHROUGH.into(),
                    endpoint: addr.to_string().into(),
                    tls: PeerTls::None,
                });
                // Boxed, like the handshake and opaque forwarding below: the
                // connection's task is as large as its largest stage, for
                // its whole life (issue 22: memory per idle connection).
                let forwarding =
                    Box::pin(tcp::forward(conn, addr, None, self.forward_idle_timeout));
                if let Err(err) = forwarding.await {
                    tracing::debug!(%err, %addr, "forwarded connection ended with an error");
                }
                return;
            }
            Accepted::Refuse(reason, detail) => {
                self.limits.refused(direction, reason, &detail);
                return;
            }
        };
        let source = permit.source();
        self.serve(handler, conn, source).await
    }

    /// Detects a connection's protocol (inside the mesh's TLS, which
    /// inbound listeners terminate), applies the inbound policy, and hands
    /// the connection or each of its requests to its direction.
    async fn serve<H: Handler>(
        self: Arc<Self>,
        handler: Arc<H>,
        mut conn: TcpStream,
        source: std::net::IpAddr,
    ) {
        let direction = H::DIRECTION;
        let Some((protocol, prefix)) = self.detect(&mut conn).await else {
            return;
        };
        // `undetected`: opaque because it is no protocol the proxy knows
        // (TLS that is not the mesh's is known: it passes through).
        let (protocol, io, peer, undetected) = match &self.tls {
            Some(mesh) if direction == Direction::Inbound && tls::looks_like_tls(&prefix) => {
                // Boxed: the handshake's state is most of a connection
                // task's size, kept by every connection served after it.
                match Box::pin(mesh.accept(conn, prefix)).await {
                    Ok(tls::Accepted::Terminated(mut stream, peer)) => {
                        let Some((protocol, prefix)) = self.detect(&mut stream).await else {
                            return;
                        };
                        let io = Prefixed::new(prefix, Transport::Tls(stream));
                        (protocol, io, peer, protocol == Protocol::Opaque)
                    }
                    Ok(tls::Accepted::Passthrough(read, conn)) => {
                        let io = Prefixed::new(read, Transport::Plain(conn));
                        (Protocol::Opaque, io, PeerTls::None, false)
                    }
                    Err(err) => {
                        self.limits.refused(direction, Refusal::TlsHandshake, &err);
                        return;
                    }
                }
            }
            _ => (
                protocol,
                Prefixed::new(prefix, Transport::Plain(conn)),
                PeerTls::None,
                protocol == Protocol::Opaque,
            ),
        };
        if let Some((port, policy)) = handler.policy()
            && let Err(reason) = policy.admit_connection(&peer)
        {
            let detail = format_args!("a connection to port {port} from {}", describe(&peer));
            self.limits.refused(direction, reason, &detail);
            return;
        }
        self.metrics.accepted(direction, protocol.as_str());
        // `self` holds a drain guard until the connection is done.
        if protocol == Protocol::Opaque {
            if let Err(err) = self.authorize(&*handler, &peer) {
                tracing::debug!(err = %err.message(), "opaque connection refused");
                return;
            }
            // Boxed, so that an HTTP connection's task is not the size of
            // opaque forwarding.
            if let Err((reason, detail)) = Box::pin(handler.tcp(io, peer, undetected)).await {
                self.limits.refused(direction, reason, &detail);
            }
            return;
        }
        let server = self.clone();
        let served = http::serve(
            protocol,
            io,
            &self.limits.config,
            self.limits.streams(direction),
            self.drain.clone(),
            self.guard.clone(),
            move |mut request| {
                let (handler, server, peer) = (handler.clone(), server.clone(), peer.clone());
                async move {
                    let grpc = errors::is_grpc(&request);
                    if let Err(err) = server.limits.check_head(direction, &request) {
                        return err.response(grpc);
                    }
                    if let Err(err) = server.limits.check_request(direction, &request) {
                        return err.response(grpc);
                    }
                    if let Err(err) = server.authorize(&*handler, &peer) {
                        return err.response(grpc);
                    }
                    // Only mesh TLS needs saying: a request without it is
                    // plaintext, and the extension map is an allocation.
                    if peer.is_tls() {
                        request.extensions_mut().insert(peer);
                    }
                    handler.http(protocol, request, source).await
                }
            },
        )
        .await;
        if let Err(err) = served {
            self.limits.connection_error(direction, source, &err);
        }
    }

    /// The protocol of the bytes `io` starts with, and those bytes; `None`
    /// when it closed or failed first.
    async fn detect<I>(&self, io: &mut I) -> Option<(Protocol, bytes::BytesMut)>
    where
        I: tokio::io::AsyncRead + Unpin,
    {
        match detect::detect(io, self.detect.timeout, self.detect.max_bytes).await {
            Ok(found) => found,
            Err(err) => {
                tracing::debug!(%err, "connection failed during detection");
                None
            }
        }
    }

    /// Whether the policy lets `peer` call the app (counted when not).
    fn authorize<H: Handler>(&self, handler: &H, peer: &PeerTls) -> Result<(), ProxyError> {
        let Some((port, policy)) = handler.policy() else {
            return Ok(());
        };
        let trust_domain = self.tls.as_deref().map(MeshTls::trust_domain);
        policy.authorize(peer, trust_domain).map_err(|reason| {
            let err = ProxyError::Forbidden {
                client: describe(peer),
                port,
                reason: reason.as_str(),
            };
            self.limits.refused(H::DIRECTION, reason, &err);
            err
        })
    }
}

/// Who a peer is, for messages.
fn describe(peer: &PeerTls) -> String {
    match peer {
        PeerTls::None => "a plaintext client".into(),
        PeerTls::Mesh { id: None } => "a TLS client without a certificate".into(),
        PeerTls::Mesh { id: Some(id) } => id.to_string(),
    }
}

/// The drain: a signal every connection watches, and the guards whose
/// release tells when the last connection closed.
#[derive(Debug)]
pub struct Drain {
    signal: watch::Sender<bool>,
    guard: Option<DrainGuard>,
    released: mpsc::Receiver<()>,
}

impl Default for Drain {
    fn default() -> Self {
        let (signal, _) = watch::channel(false);
        // Nothing is ever sent: the receiver only learns when every guard
        // is dropped.
        let (guard, released) = mpsc::channel(1);
        Self {
            signal,
            guard: Some(guard),
            released,
        }
    }
}

impl Drain {
    /// Turns true when the drain starts.
    pub fn signal(&self) -> watch::Receiver<bool> {
        self.signal.subscribe()
    }

    /// Starts the drain: listeners stop, connections shut down gracefully.
    pub fn start(&self) {
        self.signal.send_replace(true);
    }

    /// Waits until every connection closed, at most `timeout`.
    pub async fn wait(mut self, timeout: Duration) {
        // Dropped so that the last connection's guard is the last guard.
        // The Server holds one too; it goes with the accept loops.
        self.guard = None;
        if tokio::time::timeout(timeout, self.released.recv())
            .await
            .is_err()
        {
            tracing::warn!(
                ?timeout,
                "drain timed out; closing the remaining connections"
            );
        }
    }
}
