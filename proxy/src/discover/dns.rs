//! DNS discovery: every address record of `HOST`, with a fixed port,
//! re-resolved every refresh interval. A failed lookup keeps the last set.

use super::{Discover, Endpoint, Endpoints, normalize};
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct Dns {
    host: String,
    port: u16,
    refresh: Duration,
}

impl Dns {
    pub fn new(host: &str, port: u16, refresh: Duration) -> Self {
        Self {
            host: host.to_owned(),
            port,
            refresh,
        }
    }
}

impl Discover for Dns {
    fn watch(&self, service: &str) -> watch::Receiver<Endpoints> {
        let (tx, rx) = watch::channel(Endpoints::from([]));
        let Dns {
            host,
            port,
            refresh,
        } = self.clone();
        let service = service.to_owned();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(refresh);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = tx.closed() => return,
                }
                match tokio::net::lookup_host((host.as_str(), port)).await {
                    Ok(addrs) => {
                        let set = normalize(addrs.map(|a| Endpoint::new(a, "")).collect());
                        tx.send_if_modified(|current| {
                            if *current == set {
                                return false;
                            }
                            tracing::info!(%service, %host, endpoints = set.len(), "dns endpoints changed");
                            *current = set;
                            true
                        });
                    }
                    Err(err) => {
                        tracing::warn!(%service, %host, %err, "dns lookup failed; keeping the last endpoints")
                    }
                }
            }
        });
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_every_address_of_a_name() {
        let dns = Dns::new("localhost", 4140, Duration::from_secs(60));
        let mut rx = dns.watch("local");
        let set = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| !s.is_empty()))
            .await
            .expect("localhost resolves within 10 s")
            .unwrap()
            .clone();
        assert!(
            set.iter()
                .all(|e| e.addr.port() == 4140 && e.addr.ip().is_loopback()),
            "{set:?}"
        );
    }
}
