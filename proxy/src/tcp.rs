//! Opaque TCP: bytes forwarded unchanged in both directions. Balancing, when
//! there is any, happens once per connection, by the caller.

use crate::tls::{Alpn, MeshTls};
use std::net::SocketAddr;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

/// Connects to `upstream` and relays until either side closes; over mTLS
/// with a server that must prove `tls`'s identity when given.
pub async fn forward<C>(
    mut client: C,
    upstream: SocketAddr,
    tls: Option<(&MeshTls, &str)>,
) -> std::io::Result<(u64, u64)>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let server = TcpStream::connect(upstream).await?;
    server.set_nodelay(true)?;
    match tls {
        None => tokio::io::copy_bidirectional(&mut client, &mut { server }).await,
        Some((tls, identity)) => {
            let mut server = tls.connect(server, identity, Alpn::None).await?;
            tokio::io::copy_bidirectional(&mut client, &mut server).await
        }
    }
}
