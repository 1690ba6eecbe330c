//! The Kubernetes index: what the controller keeps of Services,
//! EndpointSlices and Pods, and the endpoint set it publishes for each
//! Service port a destination stream follows. Pure: the watchers feed it
//! (`apply`, `delete`, `reset` per kind) and tests drive it directly.
//!
//! Which endpoints a Service port has, from all of its EndpointSlices:
//! - the slice's port with the Service port's name gives the target port
//!   (resolved per slice, as named ports may differ between pods);
//! - an endpoint that is ready (nil means ready) and not terminating takes
//!   new requests; when none is, serving endpoints that are terminating do
//!   (as kube-proxy falls back to them), so a single-replica rollout does
//!   not fail;
//! - an address listed in several slices appears once;
//! - the pod an endpoint names (`targetRef`) gives its instance name, and,
//!   once the pod is known, its ServiceAccount, node and whether it carries
//!   the mesh's sidecar. A slice that names a pod not seen yet keeps the
//!   address; the pod's details follow when it arrives.

use super::names::{self, NameError, Target};
use crate::{
    backend::{EndpointMeta, LookupError, Published},
    inject::PROXY_CONTAINER,
};
use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};
use tokio::sync::watch;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The kinds the index follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
    Pod,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Service, Kind::EndpointSlice, Kind::Pod];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Pod => "Pod",
        }
    }
}

/// An object the index cannot use; it is skipped, the others stay live.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {namespace}/{name}: {reason}")]
pub struct Uninterpretable {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub reason: String,
}

/// Namespace and name.
type Key = (String, String);

#[derive(Debug, Clone, PartialEq)]
struct ServiceInfo {
    cluster_ips: Vec<IpAddr>,
    /// Port name ("" when unnamed) and number, in the Service's order.
    ports: Vec<(String, u16)>,
}

#[derive(Debug, Clone, PartialEq)]
struct SliceInfo {
    service: String,
    /// Port name ("" when unnamed) and target port number.
    ports: Vec<(String, u16)>,
    endpoints: Vec<SliceEndpoint>,
}

#[derive(Debug, Clone, PartialEq)]
struct SliceEndpoint {
    addrs: Vec<IpAddr>,
    ready: bool,
    serving: bool,
    terminating: bool,
    pod: Option<String>,
    node: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
struct PodInfo {
    service_account: String,
    node: String,
    meshed: bool,
    /// Its address, once it has one.
    ip: Option<IpAddr>,
    /// What the dashboard calls it: its Deployment (or other owner).
    workload: String,
}

/// A pod with the mesh's sidecar, as the dashboard scrapes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshedPod {
    pub workload: String,
    /// The pod's name.
    pub instance: String,
    /// The sidecar's admin server: the pod's address and `admin_port`.
    pub admin: SocketAddr,
}

#[derive(Debug, Default)]
struct State {
    services: HashMap<Key, ServiceInfo>,
    /// Keyed by the slice's own namespace and name.
    slices: HashMap<Key, SliceInfo>,
    pods: HashMap<Key, PodInfo>,
    watches: HashMap<Target, watch::Sender<Published>>,
    /// Set when the controller issues identities: meshed endpoints then
    /// carry their ServiceAccount's SPIFFE ID in this trust domain.
    trust_domain: Option<String>,
}

/// How the index's sources fare: the kinds listed at least once, and the
/// kinds whose watch fails now, with the error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    pub listed: Vec<Kind>,
    pub failing: BTreeMap<&'static str, String>,
}

impl Health {
    /// Every kind listed, and no watch failing: ready to answer.
    pub fn ready(&self) -> bool {
        self.listed.len() == Kind::ALL.len() && self.failing.is_empty()
    }
}

/// The index; shared by the watchers and the destination streams.
#[derive(Debug)]
pub struct Index {
    cluster_domain: String,
    default_namespace: String,
    state: Mutex<State>,
    health: watch::Sender<Health>,
}

impl Index {
    /// An empty index for a cluster whose DNS domain is `cluster_domain`;
    /// names without a namespace and callers without one use
    /// `default_namespace`.
    pub fn new(cluster_domain: &str, default_namespace: &str) -> Self {
        Self {
            cluster_domain: cluster_domain.to_owned(),
            default_namespace: default_namespace.to_owned(),
            state: Mutex::new(State::default()),
            health: watch::channel(Health::default()).0,
        }
    }

    /// Meshed endpoints carry identities in `trust_domain`.
    pub fn with_identities(mut self, trust_domain: &str) -> Self {
        self.state
            .get_mut()
            .expect("index lock is never poisoned")
            .trust_domain = Some(trust_domain.to_owned());
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("index lock is never poisoned")
    }

    // === Reads: the destination API ===

    /// The Service port `name` means for an app in `context_namespace`.
    pub fn target(&self, name: &str, context_namespace: &str) -> Result<Target, NameError> {
        let namespace = if context_namespace.is_empty() {
            &self.default_namespace
        } else {
            context_namespace
        };
        names::parse(name, namespace, &self.cluster_domain)
    }

    /// A receiver that always holds `target`'s current answer.
    pub fn watch(&self, target: &Target) -> watch::Receiver<Published> {
        let mut state = self.lock();
        if let Some(tx) = state.watches.get(target) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(answer(&state, target));
        state.watches.insert(target.clone(), tx);
        rx
    }

    /// The Service whose cluster IP and port `ip:port` is, by its fully
    /// qualified name and port.
    pub fn resolve(&self, ip: IpAddr, port: u16) -> Result<Option<String>, LookupError> {
        let state = self.lock();
        let mut matches: Vec<String> = state
            .services
            .iter()
            .filter(|(_, s)| s.cluster_ips.contains(&ip) && s.ports.iter().any(|p| p.1 == port))
            .map(|((namespace, name), _)| {
                names::qualified(namespace, name, &self.cluster_domain, port)
            })
            .collect();
        match matches.len() {
            0 => Ok(None),
            1 => Ok(matches.pop()),
            _ => {
                matches.sort();
                Err(LookupError::Ambiguous {
                    ip,
                    port,
                    services: matches,
                })
            }
        }
    }

    /// Waits until every kind was listed once.
    pub async fn synced(&self) {
        let mut rx = self.health.subscribe();
        let _ = rx
            .wait_for(|health| health.listed.len() == Kind::ALL.len())
            .await;
    }

    /// Whether every kind was listed once.
    pub fn is_synced(&self) -> bool {
        self.health.borrow().listed.len() == Kind::ALL.len()
    }

    /// Follows the index's health (the controller's readiness).
    pub fn health(&self) -> watch::Receiver<Health> {
        self.health.subscribe()
    }

    /// Notes that `kind`'s first list is in.
    pub fn mark_synced(&self, kind: Kind) {
        self.health.send_if_modified(|health| {
            let new = !health.listed.contains(&kind);
            if new {
                health.listed.push(kind);
            }
            new
        });
    }

    /// Notes that `kind`'s watch fails with `error`, or (`None`) works.
    /// Returns whether that changed.
    pub fn set_failing(&self, kind: Kind, error: Option<String>) -> bool {
        self.health.send_if_modified(|health| match error {
            Some(error) => {
                health
                    .failing
                    .insert(kind.as_str(), error.clone())
                    .as_deref()
                    != Some(&*error)
            }
            None => health.failing.remove(kind.as_str()).is_some(),
        })
    }

    /// Every pod with the sidecar and an address, by namespace and name.
    pub fn meshed_pods(&self, admin_port: u16) -> Vec<MeshedPod> {
        let state = self.lock();
        let mut pods: Vec<MeshedPod> = state
            .pods
            .iter()
            .filter(|(_, pod)| pod.meshed)
            .filter_map(|((_, name), pod)| {
                Some(MeshedPod {
                    workload: pod.workload.clone(),
                    instance: name.clone(),
                    admin: SocketAddr::new(pod.ip?, admin_port),
                })
            })
            .collect();
        pods.sort_by(|a, b| (&a.workload, &a.instance).cmp(&(&b.workload, &b.instance)));
        pods
    }

    // === Writes: the watchers ===

    pub fn apply_service(&self, service: &Service) -> Result<(), Uninterpretable> {
        let (key, info) = service_info(service)?;
        let mut state = self.lock();
        if state.services.get(&key) != Some(&info) {
            state.services.insert(key.clone(), info);
            publish(&mut state, |t| (&t.namespace, &t.name) == (&key.0, &key.1));
        }
        Ok(())
    }

    pub fn delete_service(&self, namespace: &str, name: &str) {
        let mut state = self.lock();
        if state
            .services
            .remove(&(namespace.to_owned(), name.to_owned()))
            .is_some()
        {
            publish(&mut state, |t| t.namespace == namespace && t.name == name);
        }
    }

    /// Replaces every Service with `services` (a relist); those missing are
    /// gone. Returns the ones that could not be used.
    pub fn reset_services(&self, services: &[Service]) -> Vec<Uninterpretable> {
        let (infos, skipped) = collect(services.iter().map(service_info));
        let mut state = self.lock();
        state.services = infos;
        publish(&mut state, |_| true);
        skipped
    }

    pub fn apply_slice(&self, slice: &EndpointSlice) -> Result<(), Uninterpretable> {
        let (key, info) = slice_info(slice)?;
        let mut state = self.lock();
        let previous = state.slices.insert(key.clone(), info.clone());
        if previous.as_ref() != Some(&info) {
            let services = [Some(info.service), previous.map(|p| p.service)];
            publish(&mut state, |t| {
                t.namespace == key.0 && services.iter().flatten().any(|s| *s == t.name)
            });
        }
        Ok(())
    }

    pub fn delete_slice(&self, namespace: &str, name: &str) {
        let mut state = self.lock();
        if let Some(slice) = state
            .slices
            .remove(&(namespace.to_owned(), name.to_owned()))
        {
            publish(&mut state, |t| {
                t.namespace == namespace && t.name == slice.service
            });
        }
    }

    pub fn reset_slices(&self, slices: &[EndpointSlice]) -> Vec<Uninterpretable> {
        let (infos, skipped) = collect(slices.iter().map(slice_info));
        let mut state = self.lock();
        state.slices = infos;
        publish(&mut state, |_| true);
        skipped
    }

    pub fn apply_pod(&self, pod: &Pod) -> Result<(), Uninterpretable> {
        let (key, info) = pod_info(pod)?;
        let mut state = self.lock();
        if state.pods.get(&key) != Some(&info) {
            state.pods.insert(key.clone(), info);
            publish(&mut state, |t| t.namespace == key.0);
        }
        Ok(())
    }

    pub fn delete_pod(&self, namespace: &str, name: &str) {
        let mut state = self.lock();
        if state
            .pods
            .remove(&(namespace.to_owned(), name.to_owned()))
            .is_some()
        {
            publish(&mut state, |t| t.namespace == namespace);
        }
    }

    pub fn reset_pods(&self, pods: &[Pod]) -> Vec<Uninterpretable> {
        let (infos, skipped) = collect(pods.iter().map(pod_info));
        let mut state = self.lock();
        state.pods = infos;
        publish(&mut state, |_| true);
        skipped
    }
}

/// Sends the new answer to every followed target `affected` selects, and
/// forgets targets nobody follows any more.
fn publish(state: &mut State, affected: impl Fn(&Target) -> bool) {
    state.watches.retain(|_, tx| tx.receiver_count() > 0);
    let targets: Vec<Target> = state
        .watches
        .keys()
        .filter(|t| affected(t))
        .cloned()
        .collect();
    for target in targets {
        let next = answer(state, &target);
        if let Some(tx) = state.watches.get(&target) {
            tx.send_if_modified(|current| {
                let changed = *current != next;
                if changed {
                    *current = next;
                }
                changed
            });
        }
    }
}

/// `target`'s endpoints now (see the module's rules).
fn answer(state: &State, target: &Target) -> Published {
    let key = (target.namespace.clone(), target.name.clone());
    let Some(service) = state.services.get(&key) else {
        return Published::default();
    };
    let port_name = match target.port {
        Some(port) => match service.ports.iter().find(|(_, p)| *p == port) {
            Some((name, _)) => name,
            // The Service exists, but not on that port.
            None => return Published::default(),
        },
        None => match service.ports.first() {
            Some((name, _)) => name,
            None => {
                return Published {
                    exists: true,
                    ..Published::default()
                };
            }
        },
    };
    let mut active = BTreeMap::new();
    let mut terminating = BTreeMap::new();
    let slices = state
        .slices
        .iter()
        .filter(|((namespace, _), slice)| *namespace == key.0 && slice.service == key.1);
    for (_, slice) in slices {
        let Some(&(_, port)) = slice.ports.iter().find(|(name, _)| name == port_name) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let set = if endpoint.ready && !endpoint.terminating {
                &mut active
            } else if endpoint.serving && endpoint.terminating {
                &mut terminating
            } else {
                continue;
            };
            for ip in &endpoint.addrs {
                set.entry(SocketAddr::new(*ip, port))
                    .or_insert_with(|| meta(state, &key.0, endpoint));
            }
        }
    }
    Published {
        exists: true,
        endpoints: Arc::new(if active.is_empty() {
            terminating
        } else {
            active
        }),
    }
}

fn meta(state: &State, namespace: &str, endpoint: &SliceEndpoint) -> EndpointMeta {
    let pod = endpoint
        .pod
        .as_ref()
        .and_then(|name| state.pods.get(&(namespace.to_owned(), name.clone())));
    EndpointMeta {
        instance: endpoint.pod.clone().unwrap_or_default(),
        meshed: pod.is_some_and(|p| p.meshed),
        service_account: pod.map(|p| p.service_account.clone()).unwrap_or_default(),
        identity: match (pod, &state.trust_domain) {
            (Some(pod), Some(domain)) if pod.meshed && !pod.service_account.is_empty() => {
                stockkube_proto::identity::spiffe_id(domain, namespace, &pod.service_account)
            }
            _ => String::new(),
        },
        node: endpoint
            .node
            .clone()
            .or_else(|| pod.map(|p| p.node.clone()))
            .unwrap_or_default(),
    }
}

fn collect<I>(
    items: impl Iterator<Item = Result<(Key, I), Uninterpretable>>,
) -> (HashMap<Key, I>, Vec<Uninterpretable>) {
    let mut infos = HashMap::new();
    let mut skipped = Vec::new();
    for item in items {
        match item {
            Ok((key, info)) => {
                infos.insert(key, info);
            }
            Err(err) => skipped.push(err),
        }
    }
    (infos, skipped)
}

/// An object's namespace and name, or why it has none.
fn key(
    kind: Kind,
    metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<Key, Uninterpretable> {
    let namespace = metadata.namespace.clone().unwrap_or_default();
    let name = metadata.name.clone().unwrap_or_default();
    if namespace.is_empty() || name.is_empty() {
        return Err(Uninterpretable {
            kind: kind.as_str(),
            namespace,
            name,
            reason: "no namespace or name".into(),
        });
    }
    Ok((namespace, name))
}

fn bad(kind: Kind, (namespace, name): &Key, reason: String) -> Uninterpretable {
    Uninterpretable {
        kind: kind.as_str(),
        namespace: namespace.clone(),
        name: name.clone(),
        reason,
    }
}

fn port_number(kind: Kind, key: &Key, port: Option<i32>) -> Result<u16, Uninterpretable> {
    port.and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| bad(kind, key, format!("port {port:?} is not 1-65535")))
}

fn service_info(service: &Service) -> Result<(Key, ServiceInfo), Uninterpretable> {
    let key = key(Kind::Service, &service.metadata)?;
    let spec = service.spec.as_ref();
    let cluster_ips = spec
        .and_then(|s| {
            s.cluster_ips
                .clone()
                .or_else(|| s.cluster_ip.clone().map(|ip| vec![ip]))
        })
        .unwrap_or_default()
        .iter()
        // "None" (headless) and "" have no address.
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let ports = spec
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .map(|p| {
            Ok((
                p.name.clone().unwrap_or_default(),
                port_number(Kind::Service, &key, Some(p.port))?,
            ))
        })
        .collect::<Result<_, _>>()?;
    Ok((key, ServiceInfo { cluster_ips, ports }))
}

fn slice_info(slice: &EndpointSlice) -> Result<(Key, SliceInfo), Uninterpretable> {
    let key = key(Kind::EndpointSlice, &slice.metadata)?;
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(SERVICE_NAME_LABEL))
        .cloned()
        .ok_or_else(|| {
            bad(
                Kind::EndpointSlice,
                &key,
                format!("no {SERVICE_NAME_LABEL} label"),
            )
        })?;
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        // FQDN slices name hosts, not addresses: nothing to balance over.
        return Ok((
            key,
            SliceInfo {
                service,
                ports: Vec::new(),
                endpoints: Vec::new(),
            },
        ));
    }
    let ports = slice
        .ports
        .iter()
        .flatten()
        .map(|p| {
            Ok((
                p.name.clone().unwrap_or_default(),
                port_number(Kind::EndpointSlice, &key, p.port)?,
            ))
        })
        .collect::<Result<_, _>>()?;
    let endpoints = slice
        .endpoints
        .iter()
        .map(|endpoint| {
            let conditions = endpoint.conditions.clone().unwrap_or_default();
            let ready = conditions.ready.unwrap_or(true);
            let addrs = endpoint
                .addresses
                .iter()
                .map(|a| {
                    a.parse().map_err(|_| {
                        bad(
                            Kind::EndpointSlice,
                            &key,
                            format!("{a:?} is not an IP address"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?;
            Ok(SliceEndpoint {
                addrs,
                ready,
                serving: conditions.serving.unwrap_or(ready),
                terminating: conditions.terminating.unwrap_or(false),
                pod: endpoint
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| r.name.clone()),
                node: endpoint.node_name.clone(),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok((
        key,
        SliceInfo {
            service,
            ports,
            endpoints,
        },
    ))
}

fn pod_info(pod: &Pod) -> Result<(Key, PodInfo), Uninterpretable> {
    let key = key(Kind::Pod, &pod.metadata)?;
    let spec = pod.spec.as_ref();
    let meshed = spec.is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| c.name == PROXY_CONTAINER)
    });
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse().ok());
    let workload = workload(pod, &key.1);
    Ok((
        key,
        PodInfo {
            service_account: spec
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into()),
            node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
            meshed,
            ip,
            workload,
        },
    ))
}

/// A pod's workload: its controller's name, with a ReplicaSet's
/// pod-template-hash taken off (so a Deployment's pods say the Deployment);
/// the pod's own name when nothing controls it.
fn workload(pod: &Pod, name: &str) -> String {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    match owner {
        Some(owner) if owner.kind == "ReplicaSet" => match owner.name.rsplit_once('-') {
            Some((deployment, _hash)) => deployment.to_owned(),
            None => owner.name.clone(),
        },
        Some(owner) => owner.name.clone(),
        None => name.to_owned(),
    }
}

#[cfg(test)]
mod tests;
