//! `mesh-proxy`: the StockKube Mesh sidecar.
//!
//! ```text
//!             outbound listener (one per target service)
//! local app --> serve: permit, detect --HTTP--> outbound: route -> deadline -> budget/replay
//!                  |                              -> attempts [pick -> send -> classify -> feedback]
//!                  |                              -> respond
//!                  +--opaque--> outbound: balance per connection -> endpoint
//!
//!             inbound listener
//! peer proxy -> serve: permit, detect --HTTP--> inbound -> local app (connections reused)
//!                  +--opaque--> local app
//!
//! discovery (static | dns | destination) --watch--> balancers
//! admin: /metrics /ready /live /endpoints; optional self-registration
//! ```
//!
//! Layout: [`config`] flags; [`serve`] accepting, detection ([`detect`]) and
//! the drain; [`limits`] every limit against bad peers; [`outbound`] and
//! [`inbound`] the two directions; [`errors`] the proxy's own answers;
//! [`discover`] endpoint sources; [`balance`] balancers, failure accrual and
//! probes; [`retry`] retry policy, budget and replayable bodies; [`http`]
//! (HTTP/1 via hyper), [`http2`] (HTTP/2 on h2 directly), [`tcp`] and
//! [`body`] the transports; [`metrics`] and [`admin`] what operators read;
//! [`register`] self-registration with the controller; [`redirect`] the
//! iptables rules of the `mesh-proxy-init` container.

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
pub mod serve;
pub mod tcp;

use crate::{balance::Balancer, limits::Limits, metrics::Metrics, serve::Server};
use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};
use tokio::net::TcpListener;
use tracing::Instrument as _;

pub use config::{Args, Config};
pub use serve::Listeners;

/// Runs the proxy until `shutdown` completes, then drains: `/ready` turns
/// false, listeners stop accepting, HTTP connections get GOAWAY / close, and
/// in-flight requests have `config.drain_timeout` to finish.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let balancers: Vec<Arc<Balancer>> = discover::watch_services(&config)
        .into_iter()
        .map(|(service, endpoints)| Balancer::new(&service, endpoints, config.balancer))
        .collect();
    let metrics = Arc::new(Metrics::with_balancers(balancers.clone()));
    let outbound = Arc::new(outbound::Outbound::new(
        balancers.iter().cloned(),
        &config,
        metrics.clone(),
    ));
    let drain = serve::Drain::default();
    let limits = Limits::new(config.limits, metrics.clone());
    let server = Arc::new(Server::new(config.detect, limits, metrics.clone(), &drain));

    let mut accept_loops = tokio::task::JoinSet::new();
    for (service, listener) in listeners.outbound {
        let target = outbound
            .service(&service)
            .expect("every outbound service has a balancer")
            .clone();
        let handler = Arc::new(serve::OutboundTarget {
            outbound: outbound.clone(),
            target,
        });
        let span = tracing::info_span!("outbound", %service);
        accept_loops.spawn(server.clone().accept(listener, handler).instrument(span));
    }
    let inbound_addr = listeners.inbound.as_ref().map(local_addr);
    if let (Some(listener), Some((_, app))) = (listeners.inbound, config.inbound) {
        let handler = Arc::new(inbound::Inbound::new(app, metrics.clone()));
        let span = tracing::info_span!("inbound", %app);
        accept_loops.spawn(server.clone().accept(listener, handler).instrument(span));
    }
    // From here on only the accept loops and connections hold the server
    // (and with it a drain guard).
    drop(server);

    let ready = Arc::new(AtomicBool::new(false));
    let admin_addr = local_addr(&listeners.admin);
    let admin = tokio::spawn(admin::serve(
        listeners.admin,
        admin::AdminState {
            metrics,
            balancers: balancers.into(),
            ready: ready.clone(),
        },
        drain.signal(),
    ));
    // Announced with the ports actually bound (a flag may have said 0).
    let registration = config.registration.clone().map(|registration| {
        let registration = registration.bound(admin_addr, inbound_addr);
        tokio::spawn(register::run(registration, drain.signal()))
    });

    ready.store(true, Ordering::Release);
    tracing::info!(admin = %admin_addr, "mesh-proxy ready");
    shutdown.await;

    tracing::info!("draining");
    ready.store(false, Ordering::Release);
    drain.start();
    while accept_loops.join_next().await.is_some() {}
    drain.wait(config.drain_timeout).await;
    let _ = admin.await;
    if let Some(registration) = registration {
        let _ = registration.await;
    }
    tracing::info!("mesh-proxy stopped");
    Ok(())
}

/// The address a listener is bound to, for logs and tests.
pub fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .expect("a bound listener has an address")
}
