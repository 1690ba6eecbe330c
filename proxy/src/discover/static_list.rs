//! A fixed endpoint list, from `--discover SERVICE=static:ADDR;ADDR`.

use super::{Discover, Endpoint, Endpoints, normalize};
use std::net::SocketAddr;
use tokio::sync::watch;

/// Always answers the same set.
#[derive(Debug, Clone)]
pub struct StaticList {
    endpoints: Endpoints,
}

impl StaticList {
    pub fn new(addrs: &[SocketAddr]) -> Self {
        Self {
            endpoints: normalize(addrs.iter().map(|a| Endpoint::new(*a, "")).collect()),
        }
    }
}

impl Discover for StaticList {
    fn watch(&self, _service: &str) -> watch::Receiver<Endpoints> {
        // The sender is dropped at once: the set never changes.
        watch::channel(self.endpoints.clone()).1
    }
}
