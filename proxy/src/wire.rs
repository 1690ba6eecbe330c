//! HTTP/2 as bytes on the wire: frames ([`frame`], RFC 9113 §4 and §6),
//! header compression ([`hpack`], RFC 7541), one connection's protocol
//! over them, without I/O ([`conn`]), and what a message's fields must be
//! ([`message`], RFC 9113 §8). These are the parts of the forwarding
//! HTTP/2 layer issue 22 calls for, tested against the RFCs' examples, a
//! real peer (h2) and arbitrary input ([`fuzz`], what the fuzz targets in
//! `proxy/fuzz` run). [`crate::http2::connection`] drives a
//! [`conn::Connection`] over each socket, served or to an upstream.
//!
//! Left to the layer that drives a connection: `content-length` against
//! the data that comes (checked by [`crate::http2::connection`]), and
//! limits on what a peer can make us do cheaply and often (streams opened
//! and reset at once, floods of empty or control frames), which the proxy
//! keeps around it ([`crate::http2::serve`], [`crate::limits`]).

pub mod conn;
pub mod frame;
pub mod fuzz;
pub mod hpack;
pub mod message;
