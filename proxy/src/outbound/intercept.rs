//! Intercepted outbound connections: the pod's iptables rules redirect the
//! app's connections to this listener. Each goes where the app sent it:
//! when the controller knows its original destination as a Service, it is
//! served as that Service (per-request balancing, retries, metrics, as a
//! named outbound listener does); otherwise, or when the controller does not
//! answer in time, it is forwarded untouched, without protocol detection.

use super::Outbound;
use crate::{
    discover::resolve::{Resolution, Resolver},
    limits::Refusal,
    metrics::Metrics,
    orig_dst,
    serve::{Accepted, Listener, OutboundTarget},
};
use std::sync::Arc;
use tokio::net::TcpStream;

/// The transparent outbound listener.
pub struct Intercepted {
    pub outbound: Arc<Outbound>,
    pub resolver: Resolver,
    pub metrics: Arc<Metrics>,
}

impl Listener for Intercepted {
    type Handler = OutboundTarget;

    async fn accept(&self, conn: &TcpStream) -> Accepted<OutboundTarget> {
        let Some(destination) = orig_dst::redirected(conn) else {
            return Accepted::Refuse(
                Refusal::NoOriginalDestination,
                "a connection to the transparent outbound listener that was not redirected to it"
                    .into(),
            );
        };
        let resolution = self.resolver.resolve(destination).await;
        self.metrics.resolved(resolution.as_str());
        let target = match &resolution {
            Resolution::Service(name) => self.outbound.discovered(name),
            Resolution::Unknown | Resolution::Unavailable => None,
        };
        match target {
            Some(target) => Accepted::Handle(Arc::new(OutboundTarget {
                outbound: self.outbound.clone(),
                target,
            })),
            None => Accepted::Forward(destination),
        }
    }
}
