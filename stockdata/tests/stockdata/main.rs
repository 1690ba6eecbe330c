//! Whole-service tests of StockData over real sockets: the API, health and
//! reflection with tonic clients; interop with Python grpcio; the binary's
//! start-up errors and drain on SIGTERM.

mod api;
mod interop;
mod process;
