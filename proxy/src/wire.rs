//! HTTP/2 as bytes on the wire: frames ([`frame`], RFC 9113 §4 and §6),
//! header compression ([`hpack`], RFC 7541), and one connection's protocol
//! over them, without I/O ([`conn`]). These are the parts of the forwarding
//! HTTP/2 layer issue 22 calls for, tested against the RFCs' examples, a
//! real peer (h2) and arbitrary input; the request path does not use them
//! yet (it runs on `h2`, see [`crate::http2`]).

pub mod conn;
pub mod frame;
pub mod fuzz;
pub mod hpack;
