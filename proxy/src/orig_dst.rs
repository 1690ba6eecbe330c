//! The original destination of a connection that iptables redirected to the
//! proxy (`SO_ORIGINAL_DST`, IPv4 and IPv6): where the app meant to
//! connect, or the pod address and port a peer dialled.

use std::{io, net::SocketAddr};
use tokio::net::TcpStream;

/// Where `conn` was headed before the redirection. A connection that was
/// not redirected reports the address it arrived at (the listener's own):
/// [`redirected`] tells the two apart.
pub fn original_destination(conn: &TcpStream) -> io::Result<SocketAddr> {
    match conn.local_addr()? {
        SocketAddr::V4(_) => rustix::net::sockopt::ip_original_dst(conn).map(SocketAddr::V4),
        SocketAddr::V6(_) => rustix::net::sockopt::ipv6_original_dst(conn).map(SocketAddr::V6),
    }
    .map_err(io::Error::from)
}

/// The original destination of a redirected connection; `None` for one that
/// came to the listener directly (or whose destination cannot be read).
pub fn redirected(conn: &TcpStream) -> Option<SocketAddr> {
    let local = conn.local_addr().ok()?;
    let original = original_destination(conn).ok()?;
    (original != local).then_some(original)
}
