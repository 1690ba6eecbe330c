//! Whole-proxy tests over real sockets: per-request balancing of gRPC calls
//! over one client connection, discovery changes under load, peak-EWMA
//! against a slow replica, HTTP/1 and opaque TCP, metrics, and bad peers.

mod fake_control;
mod support;

mod bad_peers;
mod balancing;
mod discovery;
mod metrics;
mod process;
mod protocols;
mod redirect;
mod resilience;
