//! Opaque TCP: bytes forwarded unchanged in both directions. Balancing, when
//! there is any, happens once per connection, by the caller.

use crate::detect::Prefixed;
use std::net::SocketAddr;
use tokio::net::TcpStream;

/// Connects to `upstream` and relays until either side closes.
pub async fn forward(
    mut client: Prefixed<TcpStream>,
    upstream: SocketAddr,
) -> std::io::Result<(u64, u64)> {
    let mut server = TcpStream::connect(upstream).await?;
    server.set_nodelay(true)?;
    tokio::io::copy_bidirectional(&mut client, &mut server).await
}
