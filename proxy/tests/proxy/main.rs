//! Whole-proxy tests over real sockets: per-request balancing of gRPC calls
//! over one client connection, discovery changes under load, peak-EWMA
//! against a slow replica, HTTP/1 and opaque TCP, metrics, and bad peers.

// Whole-process tests time real sockets: real time is the point here
// (`proxy/clippy.toml` keeps the library on tokio's pausable clock).
#![allow(clippy::disallowed_types)]

mod fake_control;
mod netns;
mod support;

mod bad_peers;
mod balancing;
mod discovery;
mod fairness;
mod identity;
mod intercept;
mod metrics;
mod mtls;
mod process;
mod protocols;
mod redirect;
mod resilience;
mod tap;
mod wire;
