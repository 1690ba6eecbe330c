//! Inbound: traffic from other proxies to the local app.
//!
//! ```text
//! peer proxy -> inbound listener -> which app port: --app, or the port the
//!                                   peer dialled (original destination)
//!            -> detect -> HTTP/1, HTTP/2: forward to the app (connections reused)
//!                         opaque TCP:     relay to the app
//! ```

use crate::{
    body::{ProxyBody, Received, Recorder},
    detect::{Prefixed, Protocol},
    errors::{self, ProxyError},
    http::{Upstream, set_authority, strip_hop_by_hop},
    metrics::{Direction, Metrics, RouteLabels, RouteMetrics},
    tcp,
};
use crate::{
    limits::Refusal,
    orig_dst,
    serve::{Accepted, Listener},
};
use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
};
use tokio::{net::TcpStream, time::Instant};

/// The inbound listener: every connection to `--app`, or, without it, to
/// the port its peer dialled, on 127.0.0.1 (the pod's iptables rules
/// redirected it here; the app listens on that port).
#[derive(Debug)]
pub struct InboundListener {
    app: Option<Arc<Inbound>>,
    /// One per app port seen, made on first use.
    ports: Mutex<HashMap<u16, Arc<Inbound>>>,
    metrics: Arc<Metrics>,
}

impl InboundListener {
    pub fn new(app: Option<SocketAddr>, metrics: Arc<Metrics>) -> Self {
        Self {
            app: app.map(|app| Arc::new(Inbound::new(app, metrics.clone()))),
            ports: Mutex::new(HashMap::new()),
            metrics,
        }
    }
}

impl Listener for InboundListener {
    type Handler = Inbound;

    async fn accept(&self, conn: &TcpStream) -> Accepted<Inbound> {
        if let Some(app) = &self.app {
            return Accepted::Handle(app.clone());
        }
        let Some(destination) = orig_dst::redirected(conn) else {
            return Accepted::Refuse(
                Refusal::NoOriginalDestination,
                "a connection to the inbound listener that was not redirected to it, and no --app"
                    .into(),
            );
        };
        let mut ports = self.ports.lock().expect("port map lock is never poisoned");
        let inbound = ports.entry(destination.port()).or_insert_with(|| {
            let app = SocketAddr::from((Ipv4Addr::LOCALHOST, destination.port()));
            Arc::new(Inbound::new(app, self.metrics.clone()))
        });
        Accepted::Handle(inbound.clone())
    }
}

#[derive(Debug)]
pub struct Inbound {
    app: SocketAddr,
    authority: http::uri::Authority,
    route: Arc<RouteMetrics>,
    upstream: Upstream<Received>,
    metrics: Arc<Metrics>,
}

impl Inbound {
    pub fn new(app: SocketAddr, metrics: Arc<Metrics>) -> Self {
        let addr = app.to_string();
        Self {
            app,
            authority: addr.parse().expect("a socket address is a valid authority"),
            route: Arc::new(metrics.route(RouteLabels {
                direction: Direction::Inbound,
                target: "app".into(),
                endpoint: addr.into(),
            })),
            upstream: Upstream::default(),
            metrics,
        }
    }

    pub async fn proxy_http(
        &self,
        protocol: Protocol,
        mut request: http::Request<Received>,
    ) -> http::Response<ProxyBody> {
        let grpc = errors::is_grpc(&request);
        let mut recorder = Recorder::new(self.route.clone(), Instant::now());
        set_authority(&mut request, self.authority.clone());
        if protocol == Protocol::Http1 {
            strip_hop_by_hop(request.headers_mut());
        }
        match self.upstream.send(protocol, request).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                if protocol == Protocol::Http1 {
                    strip_hop_by_hop(&mut parts.headers);
                }
                recorder.head(parts.status, &parts.headers);
                http::Response::from_parts(parts, ProxyBody::upstream(body, recorder))
            }
            Err(source) => {
                let err = ProxyError::App {
                    app: self.app,
                    source,
                };
                tracing::debug!(err = %err.message());
                err.recorded(recorder, grpc)
            }
        }
    }

    pub async fn proxy_tcp(&self, client: Prefixed<TcpStream>) {
        self.metrics.tcp_connection(self.route.route());
        if let Err(err) = tcp::forward(client, self.app).await {
            tracing::debug!(%err, app = %self.app, "opaque connection ended with an error");
        }
    }
}
