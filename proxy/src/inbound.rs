//! Inbound: traffic from other proxies to the local app.
//!
//! ```text
//! peer proxy -> inbound listener -> which app port: --app, or the port the
//!                                   peer dialled (original destination)
//!            -> [mesh TLS] -> detect -> HTTP/1, HTTP/2: forward to the app (connections reused)
//!                                       opaque TCP:     relay to the app
//! ```
//!
//! Each app port has its policy ([`crate::policy`]), applied by
//! [`crate::serve`]; metrics name the client's identity when it has one.

use crate::{
    body::{ProxyBody, Received, Recorder},
    detect::Protocol,
    errors::{self, ProxyError},
    http::{Upstream, set_authority, strip_hop_by_hop},
    metrics::{Direction, Metrics, RouteLabels, RouteMetrics, paths::PathRoutes},
    policy::{InboundPolicy, Policy},
    tcp::{self, OpaqueConfig},
    tls::{PeerTls, ServerIo},
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
use stockkube_proto::metrics::labels;
use tokio::{net::TcpStream, time::Instant};

/// Distinct client identities with series of their own, per app port;
/// clients past this are counted without their identity.
const MAX_CLIENT_IDS: usize = 256;

/// The inbound listener: every connection to `--app`, or, without it, to
/// the port its peer dialled, on 127.0.0.1 (the pod's iptables rules
/// redirected it here; the app listens on that port).
#[derive(Debug)]
pub struct InboundListener {
    app: Option<Arc<Inbound>>,
    /// One per app port seen, made on first use.
    ports: Mutex<HashMap<u16, Arc<Inbound>>>,
    policy: InboundPolicy,
    opaque: OpaqueConfig,
    metrics: Arc<Metrics>,
}

impl InboundListener {
    pub fn new(
        app: Option<SocketAddr>,
        policy: InboundPolicy,
        opaque: OpaqueConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            app: app.map(|app| {
                let port_policy = policy.for_port(app.port()).clone();
                Arc::new(Inbound::new(app, port_policy, &opaque, metrics.clone()))
            }),
            ports: Mutex::new(HashMap::new()),
            policy,
            opaque,
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
            let policy = self.policy.for_port(app.port()).clone();
            Arc::new(Inbound::new(
                app,
                policy,
                &self.opaque,
                self.metrics.clone(),
            ))
        });
        Accepted::Handle(inbound.clone())
    }
}

#[derive(Debug)]
pub struct Inbound {
    app: SocketAddr,
    authority: http::uri::Authority,
    policy: Policy,
    /// Whether the app port is opaque (`--opaque-ports`).
    opaque: bool,
    opaque_idle_timeout: std::time::Duration,
    /// Plaintext clients' metric handles.
    route: Arc<RouteMetrics>,
    /// Mesh TLS clients' handles, by the client's identity.
    tls_routes: Mutex<HashMap<PeerTls, Arc<RouteMetrics>>>,
    /// The app's routes' metrics.
    paths: PathRoutes,
    /// The app's address, as taps show it.
    app_label: Arc<str>,
    upstream: Upstream<Received>,
    metrics: Arc<Metrics>,
}

impl Inbound {
    pub fn new(
        app: SocketAddr,
        policy: Policy,
        opaque: &OpaqueConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        let addr = app.to_string();
        Self {
            opaque: opaque.allows(app.port()),
            opaque_idle_timeout: opaque.idle_timeout,
            app,
            authority: addr.parse().expect("a socket address is a valid authority"),
            policy,
            route: Arc::new(metrics.route(Self::labels(app, PeerTls::None))),
            tls_routes: Mutex::new(HashMap::new()),
            paths: metrics.paths(Direction::Inbound, labels::APP.into()),
            app_label: addr.as_str().into(),
            upstream: Upstream::default(),
            metrics,
        }
    }

    fn labels(app: SocketAddr, tls: PeerTls) -> RouteLabels {
        RouteLabels {
            direction: Direction::Inbound,
            target: labels::APP.into(),
            endpoint: app.to_string().into(),
            tls,
        }
    }

    /// The app port this side serves.
    pub fn port(&self) -> u16 {
        self.app.port()
    }

    /// Who may call it.
    pub fn port_policy(&self) -> &Policy {
        &self.policy
    }

    /// The metric handles of calls from `peer`.
    fn route_of(&self, peer: &PeerTls) -> Arc<RouteMetrics> {
        if *peer == PeerTls::None {
            return self.route.clone();
        }
        let mut routes = self.tls_routes.lock().expect("lock is never poisoned");
        if let Some(route) = routes.get(peer) {
            return route.clone();
        }
        let key = if routes.len() < MAX_CLIENT_IDS {
            peer.clone()
        } else {
            PeerTls::Mesh { id: None }
        };
        routes
            .entry(key.clone())
            .or_insert_with(|| Arc::new(self.metrics.route(Self::labels(self.app, key))))
            .clone()
    }

    pub async fn proxy_http(
        &self,
        protocol: Protocol,
        mut request: http::Request<Received>,
        source: std::net::IpAddr,
    ) -> http::Response<ProxyBody> {
        let grpc = errors::is_grpc(&request);
        let peer = request.extensions().get::<PeerTls>();
        let route = match peer {
            Some(peer) => self.route_of(peer),
            None => self.route.clone(),
        };
        let arrived = Instant::now();
        let mut recorder = Recorder::new(route, arrived);
        let mut call = self.paths.call(&request, arrived, source);
        call.served_by(&self.app_label, None, 1, peer.unwrap_or(&PeerTls::None));
        recorder.answers(call);
        set_authority(&mut request, self.authority.clone());
        if protocol == Protocol::Http1 {
            strip_hop_by_hop(request.headers_mut());
        }
        match self.upstream.send(protocol, self.app, request, None).await {
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

    /// Relays an opaque connection to the app; one whose protocol was not
    /// detected only when the app port is opaque.
    pub async fn proxy_tcp(
        &self,
        client: ServerIo,
        peer: PeerTls,
        undetected: bool,
    ) -> Result<(), (Refusal, String)> {
        if undetected && !self.opaque {
            return Err((
                Refusal::ProtocolNotDetected,
                format!(
                    "a connection to app port {} that is not HTTP, and the port is not opaque",
                    self.app.port()
                ),
            ));
        }
        self.route_of(&peer).tcp_connection();
        if let Err(err) = tcp::forward(client, self.app, None, self.opaque_idle_timeout).await {
            tracing::debug!(%err, app = %self.app, "opaque connection ended with an error");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_identities_past_the_cap_share_one_series_without_client_id() {
        let metrics = Arc::new(Metrics::default());
        let app = SocketAddr::from((Ipv4Addr::LOCALHOST, 8080));
        let inbound = Inbound::new(
            app,
            Policy::AllUnauthenticated,
            &OpaqueConfig::default(),
            metrics.clone(),
        );
        for n in 0..MAX_CLIENT_IDS + 44 {
            let peer = PeerTls::Mesh {
                id: Some(format!("spiffe://cluster.local/ns/a/sa/client-{n}").into()),
            };
            metrics.request(inbound.route_of(&peer).route());
        }
        let text = metrics.encode();
        let requests: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("mesh_requests_total{") && l.contains(r#"tls="true""#))
            .collect();
        let named = requests.iter().filter(|l| l.contains("client_id=")).count();
        assert_eq!(named, MAX_CLIENT_IDS);
        let rest: Vec<&&str> = requests
            .iter()
            .filter(|l| !l.contains("client_id="))
            .collect();
        assert_eq!(rest.len(), 1, "{rest:?}");
        assert!(rest[0].ends_with(" 44"), "{rest:?}");
    }
}
