//! Inbound: traffic from other proxies to the local app.
//!
//! ```text
//! peer proxy -> inbound listener -> detect
//!                 HTTP/1, HTTP/2: forward to the app (connections reused)
//!                 opaque TCP:     relay to the app
//! ```

use crate::{
    body::{ProxyBody, Received, Recorder},
    detect::{Prefixed, Protocol},
    errors::{self, ProxyError},
    http::{Upstream, set_authority, strip_hop_by_hop},
    metrics::{Direction, Metrics, RouteLabels, RouteMetrics},
    tcp,
};
use std::{net::SocketAddr, sync::Arc};
use tokio::{net::TcpStream, time::Instant};

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
