//! The local registry backend: services and their endpoints, in memory.
//!
//! Each service's endpoint set is published whole on a `watch` channel, so a
//! destination stream sees every change (or, under churn, at least the
//! latest set) and computes the difference itself. Writers take a short lock
//! on the service map; nothing on a proxy's request path ever touches it.

use crate::backend::EndpointMeta;
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
};
use tokio::sync::watch;

/// One service's endpoints, keyed by address.
pub type EndpointSet = Arc<BTreeMap<SocketAddr, EndpointMeta>>;

/// A proxy the dashboard should scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRecord {
    pub workload: String,
    pub instance: String,
    pub admin_addr: SocketAddr,
}

/// The in-memory registry; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    services: Arc<Mutex<HashMap<String, watch::Sender<EndpointSet>>>>,
    proxies: Arc<Mutex<BTreeMap<SocketAddr, ProxyRecord>>>,
}

impl Registry {
    /// A receiver that always holds the service's current endpoint set. A
    /// service nobody registered yet is watched as empty.
    pub fn watch(&self, service: &str) -> watch::Receiver<EndpointSet> {
        self.sender(service).subscribe()
    }

    /// Adds `addr` to `service`, or replaces what is known of it (its
    /// instance name, its identity). Returns whether the set changed.
    pub fn register(
        &self,
        service: &str,
        addr: SocketAddr,
        endpoint: impl Into<EndpointMeta>,
    ) -> bool {
        let endpoint = endpoint.into();
        self.sender(service).send_if_modified(|set| {
            if set.get(&addr) == Some(&endpoint) {
                return false;
            }
            Arc::make_mut(set).insert(addr, endpoint);
            true
        })
    }

    /// Removes `addr` from `service`. Returns whether it was there.
    pub fn deregister(&self, service: &str, addr: SocketAddr) -> bool {
        self.sender(service).send_if_modified(|set| {
            set.contains_key(&addr) && Arc::make_mut(set).remove(&addr).is_some()
        })
    }

    /// Every service with at least one endpoint, sorted by name.
    pub fn list(&self) -> Vec<(String, EndpointSet)> {
        let services = self
            .services
            .lock()
            .expect("registry lock is never poisoned");
        let mut list: Vec<_> = services
            .iter()
            .map(|(name, tx)| (name.clone(), tx.borrow().clone()))
            .filter(|(_, set)| !set.is_empty())
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    /// Records a proxy, keyed by its admin address.
    pub fn register_proxy(&self, proxy: ProxyRecord) {
        self.proxies
            .lock()
            .expect("registry lock is never poisoned")
            .insert(proxy.admin_addr, proxy);
    }

    /// Forgets the proxy at `admin_addr`; whether it was known.
    pub fn deregister_proxy(&self, admin_addr: SocketAddr) -> bool {
        self.proxies
            .lock()
            .expect("registry lock is never poisoned")
            .remove(&admin_addr)
            .is_some()
    }

    /// Every proxy, ordered by admin address.
    pub fn proxies(&self) -> Vec<ProxyRecord> {
        self.proxies
            .lock()
            .expect("registry lock is never poisoned")
            .values()
            .cloned()
            .collect()
    }

    fn sender(&self, service: &str) -> watch::Sender<EndpointSet> {
        let mut services = self
            .services
            .lock()
            .expect("registry lock is never poisoned");
        services
            .entry(service.to_owned())
            .or_insert_with(|| watch::Sender::new(EndpointSet::default()))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn register_and_deregister_report_changes() {
        let registry = Registry::default();
        assert!(registry.register("stockdata", addr(1), "a"));
        assert!(!registry.register("stockdata", addr(1), "a"), "idempotent");
        assert!(registry.register("stockdata", addr(1), "a2"), "rename");
        assert!(registry.deregister("stockdata", addr(1)));
        assert!(!registry.deregister("stockdata", addr(1)));
        assert!(!registry.deregister("other", addr(1)));
    }

    #[tokio::test]
    async fn watchers_see_every_change() {
        let registry = Registry::default();
        let mut rx = registry.watch("stockdata");
        assert!(rx.borrow_and_update().is_empty());
        registry.register("stockdata", addr(1), "a");
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow_and_update().len(), 1);
        registry.register("stockdata", addr(2), "b");
        registry.deregister("stockdata", addr(1));
        rx.changed().await.unwrap();
        let set = rx.borrow_and_update().clone();
        assert_eq!(set.keys().copied().collect::<Vec<_>>(), [addr(2)]);
    }

    #[test]
    fn proxies_are_keyed_by_admin_address() {
        let registry = Registry::default();
        let proxy = |instance: &str| ProxyRecord {
            workload: "stockdata".into(),
            instance: instance.into(),
            admin_addr: addr(4191),
        };
        registry.register_proxy(proxy("a"));
        registry.register_proxy(proxy("b"));
        assert_eq!(registry.proxies(), [proxy("b")]);
        assert!(registry.deregister_proxy(addr(4191)));
        assert!(!registry.deregister_proxy(addr(4191)));
        assert!(registry.proxies().is_empty());
    }

    #[test]
    fn list_skips_empty_services_and_sorts() {
        let registry = Registry::default();
        registry.register("b", addr(2), "x");
        registry.register("a", addr(1), "y");
        let _ = registry.watch("empty");
        let names: Vec<_> = registry.list().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["a", "b"]);
    }
}
