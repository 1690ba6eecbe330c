//! A stand-in for a Kubernetes ClusterIP Service in the local demo: one
//! address that spreads TCP *connections* round-robin over the replicas, as
//! kube-proxy does. Every request on a connection reaches the replica that
//! connection was given, which is exactly why a gRPC client's one HTTP/2
//! connection sends all its calls to one replica.

use std::{
    net::SocketAddr,
    sync::Arc,
    sync::atomic::{AtomicUsize, Ordering},
};
use tokio::net::{TcpListener, TcpStream};

/// Accepts on `listener` and relays each connection to the next backend,
/// until the task is dropped or aborted.
pub async fn serve(listener: TcpListener, backends: Vec<SocketAddr>) {
    let next = Arc::new(AtomicUsize::new(0));
    loop {
        let (mut inbound, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Running out of file descriptors and the like pass; keep accepting.
            Err(err) => {
                eprintln!("meshctl: service address accept failed: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let backend = backends[next.fetch_add(1, Ordering::Relaxed) % backends.len()];
        tokio::spawn(async move {
            match TcpStream::connect(backend).await {
                Ok(mut outbound) => {
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                // Like a Service with a dead endpoint: the connection is reset.
                Err(err) => eprintln!("meshctl: {peer} -> {backend}: {err}"),
            }
        });
    }
}
