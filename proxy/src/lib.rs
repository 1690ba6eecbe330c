//! `mesh-proxy`: the StockKube Mesh sidecar.
//!
//! ```text
//!             outbound listener (one per target service)
//! local app --> serve: permit, detect --HTTP--> outbound: route -> deadline -> budget/replay
//!                  |                              -> attempts [pick -> send (mTLS to endpoints
//!                  |                                 with an identity) -> classify -> feedback]
//!                  |                              -> respond
//!                  +--opaque--> outbound: balance per connection -> endpoint (mTLS likewise)
//!
//!             inbound listener
//! peer proxy -> serve: permit, detect [mesh TLS terminated, detect inside] -> policy
//!                  --HTTP--> policy per request -> inbound -> local app (connections reused)
//!                  +--opaque--> local app
//!
//! discovery (static | dns | destination) --watch--> balancers
//! identity: key + certificate from the controller, renewed --> tls (both sides)
//! admin: /metrics /ready /live /endpoints /identity; optional self-registration
//! ```
//!
//! Layout: [`config`] flags; [`serve`] accepting, detection ([`detect`]) and
//! the drain; [`limits`] every limit against bad peers; [`head`] what a
//! request head must be to be forwarded; [`outbound`] and
//! [`inbound`] the two directions; [`errors`] the proxy's own answers;
//! [`discover`] endpoint sources; [`balance`] balancers, failure accrual and
//! probes; [`identity`] the proxy's certificate, [`tls`] mTLS between
//! proxies, [`policy`] who may call the app; [`retry`] retry policy, budget
//! and replayable bodies; [`http`]
//! (HTTP/1 via hyper), [`http2`] (HTTP/2 both ways, on [`wire`]), [`tcp`] and
//! [`body`] the transports, [`activity`] their idle timeouts; [`metrics`] and [`admin`] what operators read;
//! [`register`] self-registration with the controller; [`redirect`] the
//! iptables rules of the `mesh-proxy-init` container; [`wire`] HTTP/2
//! frames, HPACK, a connection's protocol and message checks: the proxy's
//! own HTTP/2 layer.

pub mod activity;
pub mod admin;
pub mod balance;
pub mod body;
pub mod config;
pub mod detect;
pub mod discover;
pub mod errors;
pub mod head;
pub mod http;
pub mod http2;
pub mod identity;
pub mod inbound;
pub mod limits;
pub mod metrics;
pub mod names;
pub mod orig_dst;
pub mod outbound;
pub mod policy;
pub mod redirect;
pub mod register;
pub mod retry;
pub mod serve;
pub mod tap;
pub mod tcp;
pub mod tls;
pub mod wire;

use crate::{
    balance::{Balancer, Balancers},
    limits::Limits,
    metrics::Metrics,
    serve::Server,
};
use std::{future::Future, net::SocketAddr, sync::Arc};
use tokio::net::TcpListener;

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
    let all_balancers = Arc::new(Balancers::new(balancers.iter().cloned()));
    let taps = Arc::new(tap::Taps::new(config.tap_headers.clone()));
    let metrics = Arc::new(
        Metrics::with_balancers(all_balancers.clone())
            .with_max_routes(config.max_routes)
            .with_taps(taps),
    );
    let drain = serve::Drain::default();
    let identity = match &config.identity {
        None => None,
        Some(identity_config) => {
            let key = identity::Key::generate()
                .map_err(|e| anyhow::anyhow!("cannot make the proxy's key: {e}"))?;
            let (current_tx, current) = tokio::sync::watch::channel(None);
            let tls = mesh_tls(identity_config, current.clone())?;
            let task = tokio::spawn(identity::maintain(
                identity::Controller::new(identity_config.clone()),
                key,
                current_tx,
                metrics.clone(),
                drain.signal(),
            ));
            Some((current, tls, task))
        }
    };
    let tls = identity.as_ref().map(|(_, tls, _)| tls.clone());
    let outbound = Arc::new(outbound::Outbound::new(
        balancers,
        all_balancers.clone(),
        discover::destination(&config),
        &config,
        metrics.clone(),
        tls.clone(),
    ));
    let limits = Limits::new(config.limits, metrics.clone());
    let server = Arc::new(Server::new(
        config.detect,
        limits,
        config.opaque.idle_timeout,
        metrics.clone(),
        tls,
        &drain,
    ));

    let inbound_addr = listeners.inbound.first().map(local_addr);
    // Only the accept loops and connections hold the server from here on
    // (and with it a drain guard).
    let mut accept_loops = serve::accept_all(
        server,
        serve::Accepting {
            named: listeners.outbound,
            intercepted: listeners.outbound_transparent,
            inbound: listeners.inbound,
        },
        &outbound,
        &config,
        &metrics,
    );

    let phase = Arc::new(admin::Phase::default());
    let admin_addr = local_addr(&listeners.admin);
    let (stop_admin, admin_stopped) = tokio::sync::watch::channel(false);
    let admin = tokio::spawn(admin::serve(
        listeners.admin,
        admin::AdminState {
            metrics,
            balancers: all_balancers,
            phase: phase.clone(),
            identity: config.identity.as_ref().zip(identity.as_ref()).map(
                |(config, (current, _, _))| (config.identity.as_str().into(), current.clone()),
            ),
        },
        admin_stopped,
    ));
    // Announced with the ports actually bound (a flag may have said 0).
    let registration = config.registration.clone().map(|registration| {
        let registration = registration.bound(admin_addr, inbound_addr);
        tokio::spawn(register::run(registration, drain.signal()))
    });

    phase.set(admin::Phase::SERVING);
    tracing::info!(admin = %admin_addr, "mesh-proxy ready");
    shutdown.await;

    tracing::info!("draining");
    phase.set(admin::Phase::DRAINING);
    drain.start();
    while accept_loops.join_next().await.is_some() {}
    drain.wait(config.drain_timeout).await;
    let _ = stop_admin.send(true);
    let _ = admin.await;
    if let Some((_, _, task)) = identity {
        let _ = task.await;
    }
    if let Some(registration) = registration {
        let _ = registration.await;
    }
    tracing::info!("mesh-proxy stopped");
    Ok(())
}

/// The mesh's TLS for this proxy's identity, presenting `current`.
fn mesh_tls(
    config: &identity::IdentityConfig,
    current: identity::Current,
) -> anyhow::Result<Arc<tls::MeshTls>> {
    let (anchors, source) = config
        .trust_anchors
        .read()
        .map_err(|e| anyhow::anyhow!(e))?;
    let tls = tls::MeshTls::new(&config.identity, &anchors, current)
        .map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
    Ok(Arc::new(tls))
}

/// The address a listener is bound to, for logs and tests.
pub fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .expect("a bound listener has an address")
}
