//! Opaque TCP: bytes forwarded unchanged in both directions, until either
//! side closes or no byte has passed either way for the idle timeout.
//! Balancing, when there is any, happens once per connection, by the
//! caller; so does deciding whether a connection may be opaque at all
//! ([`OpaqueConfig::allows`]).

use crate::{
    activity::Activity,
    tls::{Alpn, MeshTls},
};
use std::{io, net::SocketAddr, sync::Arc, time::Duration};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_util::io::InspectReader;

/// Opaque TCP settings.
#[derive(Debug, Clone)]
pub struct OpaqueConfig {
    /// Ports whose connections may be relayed though their protocol was
    /// not detected (Linkerd's opaque ports): server-speaks-first or binary
    /// protocols. On any other port such a connection is closed, so that a
    /// slow or garbled client cannot bypass the HTTP layer's limits.
    pub ports: Arc<[u16]>,
    /// How long a relay may carry no bytes either way.
    pub idle_timeout: Duration,
}

impl Default for OpaqueConfig {
    fn default() -> Self {
        Self {
            ports: Arc::new([]),
            idle_timeout: Duration::from_secs(3600),
        }
    }
}

impl OpaqueConfig {
    /// Whether a connection to `port` may be relayed undetected.
    pub fn allows(&self, port: u16) -> bool {
        self.ports.contains(&port)
    }
}

/// Connects to `upstream` and relays until either side closes or the relay
/// is idle for `idle_timeout`; over mTLS with a server that must prove
/// `tls`'s identity when given.
pub async fn forward<C>(
    client: C,
    upstream: SocketAddr,
    tls: Option<(&MeshTls, &str)>,
    idle_timeout: Duration,
) -> io::Result<(u64, u64)>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let server = TcpStream::connect(upstream).await?;
    server.set_nodelay(true)?;
    match tls {
        None => relay(client, server, idle_timeout).await,
        Some((tls, identity)) => {
            let server = tls.connect(server, identity, Alpn::None).await?;
            relay(client, server, idle_timeout).await
        }
    }
}

/// Copies both ways until one side closes, or nothing moved for `idle`.
async fn relay<A, B>(client: A, server: B, idle: Duration) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::default();
    let moved = |bytes: &[u8]| {
        if !bytes.is_empty() {
            activity.moved();
        }
    };
    let mut client = InspectReader::new(client, moved);
    let mut server = InspectReader::new(server, moved);
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut server) => copied,
        () = activity.idle_for(idle) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no bytes either way for {idle:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A relay between two in-memory pipes, with paused time.
    #[tokio::test(start_paused = true)]
    async fn a_relay_ends_after_the_idle_timeout_and_not_before() {
        let (mut client, client_side) = tokio::io::duplex(1024);
        let (server_side, mut server) = tokio::io::duplex(1024);
        let idle = Duration::from_secs(60);
        let relay = tokio::spawn(relay(client_side, server_side, idle));
        // Bytes every 40 s keep it open past the idle timeout.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(40)).await;
            client.write_all(b"ping").await.unwrap();
            let mut got = [0; 4];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"ping");
        }
        assert!(!relay.is_finished());
        // Then silence: closed once 60 s passed (checked every 15 s).
        tokio::time::sleep(Duration::from_secs(59)).await;
        tokio::task::yield_now().await;
        assert!(!relay.is_finished());
        tokio::time::sleep(Duration::from_secs(17)).await;
        let ended = relay.await.unwrap().unwrap_err();
        assert_eq!(ended.kind(), io::ErrorKind::TimedOut);
    }
}
