//! The local registry backend: services and their endpoints, in memory,
//! and the proxies the dashboard scrapes.
//!
//! Each service's endpoint set is published whole on a `watch` channel, so a
//! destination stream sees every change (or, under churn, at least the
//! latest set) and computes the difference itself. Writers take a short lock
//! on the service map; nothing on a proxy's request path ever touches it.
//!
//! With a lease ([`Registry::with_lease`]), every registration is a lease
//! its writer renews by registering again: one not renewed within the lease
//! is dropped by [`Registry::expire`], so a writer that died without
//! deregistering (a SIGKILLed sidecar) does not stay listed. Nothing here
//! grows with what callers only ask about: a service with no endpoints and
//! no watcher is forgotten.

use crate::backend::EndpointMeta;
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{sync::watch, time::Instant};

/// One service's endpoints, keyed by address.
pub type EndpointSet = Arc<BTreeMap<SocketAddr, EndpointMeta>>;

/// A proxy the dashboard should scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRecord {
    pub workload: String,
    pub instance: String,
    pub admin_addr: SocketAddr,
}

/// What [`Registry::expire`] dropped.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expired {
    pub endpoints: Vec<(String, SocketAddr)>,
    pub proxies: Vec<ProxyRecord>,
}

/// The in-memory registry; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    services: Arc<Mutex<HashMap<String, watch::Sender<EndpointSet>>>>,
    proxies: Arc<Mutex<BTreeMap<SocketAddr, (ProxyRecord, Instant)>>>,
    /// When each endpoint was last registered.
    renewed: Arc<Mutex<HashMap<(String, SocketAddr), Instant>>>,
    /// How long a registration lasts unless renewed; `None`: until removed.
    lease: Option<Duration>,
}

impl Registry {
    /// A registry whose registrations last `lease` unless renewed.
    pub fn with_lease(lease: Duration) -> Self {
        Self {
            lease: Some(lease),
            ..Self::default()
        }
    }

    /// How often a writer should renew: two fifths of the lease, so that
    /// one lost renewal does not drop it, and a writer that died is gone
    /// within two and a half of its renewal intervals.
    pub fn renew_after(&self) -> Option<Duration> {
        self.lease.map(|lease| lease * 2 / 5)
    }

    /// Expires registrations until the registry is dropped everywhere else,
    /// checking ten times per lease. Nothing to do without a lease.
    pub async fn expire_continuously(self) {
        let Some(lease) = self.lease else {
            return;
        };
        let mut tick = tokio::time::interval(lease / 10);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let expired = self.expire();
            for (service, addr) in &expired.endpoints {
                tracing::info!(%service, %addr, "endpoint lease expired");
            }
            for proxy in &expired.proxies {
                tracing::info!(workload = %proxy.workload, instance = %proxy.instance, admin_addr = %proxy.admin_addr, "proxy lease expired");
            }
        }
    }

    /// A receiver that always holds the service's current endpoint set. A
    /// service nobody registered yet is watched as empty.
    pub fn watch(&self, service: &str) -> watch::Receiver<EndpointSet> {
        let mut services = self.lock_services();
        if let Some(tx) = services.get(service) {
            return tx.subscribe();
        }
        // Only a new entry can add to what is unused; sweep then, so names
        // that were only asked about (and are no longer) do not pile up.
        services.retain(|_, tx| !unused(tx));
        let (tx, rx) = watch::channel(EndpointSet::default());
        services.insert(service.to_owned(), tx);
        rx
    }

    /// What is registered for `addr` in `service`, if anything; asks
    /// without adding anything.
    pub fn endpoint(&self, service: &str, addr: SocketAddr) -> Option<EndpointMeta> {
        self.lock_services()
            .get(service)?
            .borrow()
            .get(&addr)
            .cloned()
    }

    /// Adds `addr` to `service`, or replaces what is known of it (its
    /// instance name, its identity), and renews its lease. Returns whether
    /// the set changed.
    pub fn register(
        &self,
        service: &str,
        addr: SocketAddr,
        endpoint: impl Into<EndpointMeta>,
    ) -> bool {
        let endpoint = endpoint.into();
        let tx = {
            let mut services = self.lock_services();
            services
                .entry(service.to_owned())
                .or_insert_with(|| watch::Sender::new(EndpointSet::default()))
                .clone()
        };
        self.lock_renewed()
            .insert((service.to_owned(), addr), Instant::now());
        tx.send_if_modified(|set| {
            if set.get(&addr) == Some(&endpoint) {
                return false;
            }
            Arc::make_mut(set).insert(addr, endpoint);
            true
        })
    }

    /// Removes `addr` from `service`. Returns whether it was there.
    pub fn deregister(&self, service: &str, addr: SocketAddr) -> bool {
        self.lock_renewed().remove(&(service.to_owned(), addr));
        let mut services = self.lock_services();
        let Some(tx) = services.get(service) else {
            return false;
        };
        let removed = tx.send_if_modified(|set| {
            set.contains_key(&addr) && Arc::make_mut(set).remove(&addr).is_some()
        });
        if unused(tx) {
            services.remove(service);
        }
        removed
    }

    /// Every service with at least one endpoint, sorted by name.
    pub fn list(&self) -> Vec<(String, EndpointSet)> {
        let services = self.lock_services();
        let mut list: Vec<_> = services
            .iter()
            .map(|(name, tx)| (name.clone(), tx.borrow().clone()))
            .filter(|(_, set)| !set.is_empty())
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    /// Records a proxy, keyed by its admin address, and renews its lease.
    pub fn register_proxy(&self, proxy: ProxyRecord) {
        self.lock_proxies()
            .insert(proxy.admin_addr, (proxy, Instant::now()));
    }

    /// Forgets the proxy at `admin_addr`; whether it was known.
    pub fn deregister_proxy(&self, admin_addr: SocketAddr) -> bool {
        self.lock_proxies().remove(&admin_addr).is_some()
    }

    /// Every proxy, ordered by admin address.
    pub fn proxies(&self) -> Vec<ProxyRecord> {
        self.lock_proxies()
            .values()
            .map(|(proxy, _)| proxy.clone())
            .collect()
    }

    /// Drops every registration whose lease ran out; nothing without a
    /// lease.
    pub fn expire(&self) -> Expired {
        let Some(lease) = self.lease else {
            return Expired::default();
        };
        let now = Instant::now();
        let mut expired = Expired::default();
        self.lock_proxies().retain(|_, (proxy, renewed)| {
            let live = now.duration_since(*renewed) <= lease;
            if !live {
                expired.proxies.push(proxy.clone());
            }
            live
        });
        self.lock_renewed().retain(|key, renewed| {
            let live = now.duration_since(*renewed) <= lease;
            if !live {
                expired.endpoints.push(key.clone());
            }
            live
        });
        for (service, addr) in &expired.endpoints {
            self.deregister(service, *addr);
        }
        expired
    }

    fn lock_services(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<EndpointSet>>> {
        self.services
            .lock()
            .expect("registry lock is never poisoned")
    }

    fn lock_proxies(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<SocketAddr, (ProxyRecord, Instant)>> {
        self.proxies
            .lock()
            .expect("registry lock is never poisoned")
    }

    fn lock_renewed(&self) -> std::sync::MutexGuard<'_, HashMap<(String, SocketAddr), Instant>> {
        self.renewed
            .lock()
            .expect("registry lock is never poisoned")
    }
}

/// A service entry that holds nothing and that nobody watches.
fn unused(tx: &watch::Sender<EndpointSet>) -> bool {
    tx.receiver_count() == 0 && tx.borrow().is_empty()
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
    fn services_only_asked_about_are_forgotten() {
        let registry = Registry::default();
        for i in 0..10_000 {
            assert!(!registry.deregister(&format!("nobody-{i}"), addr(1)));
            assert!(registry.endpoint(&format!("nobody-{i}"), addr(1)).is_none());
        }
        assert!(registry.lock_services().is_empty());
        // A watched name stays while watched, and goes once its last
        // watcher is gone and another name is watched.
        let watcher = registry.watch("asked");
        drop(registry.watch("asked-and-gone"));
        assert!(registry.lock_services().contains_key("asked"));
        drop(watcher);
        let _other = registry.watch("other");
        let names: Vec<String> = registry.lock_services().keys().cloned().collect();
        assert_eq!(names, ["other"]);
        // The last endpoint of an unwatched service takes the entry with it.
        registry.register("s", addr(1), "a");
        assert!(registry.deregister("s", addr(1)));
        assert!(!registry.lock_services().contains_key("s"));
    }

    #[tokio::test(start_paused = true)]
    async fn registrations_not_renewed_within_the_lease_expire() {
        let registry = Registry::with_lease(Duration::from_secs(30));
        assert_eq!(registry.renew_after(), Some(Duration::from_secs(12)));
        let mut rx = registry.watch("stockdata");
        let proxy = |port| ProxyRecord {
            workload: "stockdata".into(),
            instance: format!("p{port}"),
            admin_addr: addr(port),
        };
        registry.register("stockdata", addr(1), "renewed");
        registry.register("stockdata", addr(2), "dead");
        registry.register_proxy(proxy(11));
        registry.register_proxy(proxy(12));
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(10)).await;
            // Renewing an unchanged registration publishes nothing.
            rx.borrow_and_update();
            assert!(!registry.register("stockdata", addr(1), "renewed"));
            assert!(!rx.has_changed().unwrap());
            registry.register_proxy(proxy(11));
            let expired = registry.expire();
            if expired != Expired::default() {
                assert_eq!(expired.endpoints, [("stockdata".to_owned(), addr(2))]);
                assert_eq!(expired.proxies, [proxy(12)]);
            }
        }
        assert_eq!(
            rx.borrow().keys().copied().collect::<Vec<_>>(),
            [addr(1)],
            "the dead endpoint left the set its watchers see"
        );
        assert_eq!(registry.proxies(), [proxy(11)]);
        // Without a lease nothing expires.
        let forever = Registry::default();
        forever.register("s", addr(1), "a");
        tokio::time::advance(Duration::from_secs(86_400)).await;
        assert_eq!(forever.expire(), Expired::default());
        assert_eq!(forever.list().len(), 1);
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
