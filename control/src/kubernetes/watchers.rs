//! One `kube` watcher per kind (Services, EndpointSlices, Pods, cluster
//! wide) feeding the [`Index`]. The watcher lists, then watches from the
//! list's `resourceVersion` with bookmarks; after `410 Gone`, a dropped
//! watch or an API server restart it lists again (with backoff), and a
//! relist replaces what the index had, so objects deleted meanwhile go.
//!
//! An object that cannot be read (it fails to deserialize) or used (the
//! index refuses it) is logged once and skipped; the others stay live.
//! Each kind's state (listed yet, failing now) is kept in the index's
//! [`Health`](super::index::Health), which the controller's readiness follows.

use super::index::{Index, Kind, Uninterpretable};
use futures_util::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Resource,
    core::{DeserializeGuard, error_boundary::InvalidObject},
    runtime::{WatchStreamExt as _, utils::Backoff, watcher},
};
use serde::de::DeserializeOwned;
use std::{collections::HashSet, fmt::Debug, sync::Arc, time::Duration};

/// How long a watch request may stay open before the watcher renews it. A
/// connection that died silently is noticed by then (kube adds 5 s).
const WATCH_TIMEOUT_SECS: u32 = 55;

/// How often a failing kind checks whether the API server answers again.
const RECOVERY_PROBE: Duration = Duration::from_secs(2);

/// Retries after a failed list or watch: 250 ms, doubling up to 5 s, less up
/// to 20% jitter. kube's default grows to 30 s, so an API server back after
/// a restart went unused for half a minute (seen against a real one).
#[derive(Debug)]
struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(5);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let wait = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(wait.mul_f64(1.0 - 0.2 * fastrand::f64()))
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// A kind the index follows.
trait Watched:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    const KIND: Kind;
    fn apply(index: &Index, object: &Self) -> Result<(), Uninterpretable>;
    fn delete(index: &Index, namespace: &str, name: &str);
    fn reset(index: &Index, objects: &[Self]) -> Vec<Uninterpretable>;
}

impl Watched for Service {
    const KIND: Kind = Kind::Service;
    fn apply(index: &Index, object: &Self) -> Result<(), Uninterpretable> {
        index.apply_service(object)
    }
    fn delete(index: &Index, namespace: &str, name: &str) {
        index.delete_service(namespace, name)
    }
    fn reset(index: &Index, objects: &[Self]) -> Vec<Uninterpretable> {
        index.reset_services(objects)
    }
}

impl Watched for EndpointSlice {
    const KIND: Kind = Kind::EndpointSlice;
    fn apply(index: &Index, object: &Self) -> Result<(), Uninterpretable> {
        index.apply_slice(object)
    }
    fn delete(index: &Index, namespace: &str, name: &str) {
        index.delete_slice(namespace, name)
    }
    fn reset(index: &Index, objects: &[Self]) -> Vec<Uninterpretable> {
        index.reset_slices(objects)
    }
}

impl Watched for Pod {
    const KIND: Kind = Kind::Pod;
    fn apply(index: &Index, object: &Self) -> Result<(), Uninterpretable> {
        index.apply_pod(object)
    }
    fn delete(index: &Index, namespace: &str, name: &str) {
        index.delete_pod(namespace, name)
    }
    fn reset(index: &Index, objects: &[Self]) -> Vec<Uninterpretable> {
        index.reset_pods(objects)
    }
}

/// Starts the three watchers; they run until the returned tasks are
/// aborted.
pub fn spawn(client: Client, index: Arc<Index>) -> Vec<tokio::task::JoinHandle<()>> {
    vec![
        tokio::spawn(follow::<Service>(client.clone(), index.clone())),
        tokio::spawn(follow::<EndpointSlice>(client.clone(), index.clone())),
        tokio::spawn(follow::<Pod>(client, index)),
    ]
}

async fn follow<K: Watched>(client: Client, index: Arc<Index>) {
    let kind = K::KIND.as_str();
    let api: Api<DeserializeGuard<K>> = Api::all(client);
    let config = watcher::Config::default().timeout(WATCH_TIMEOUT_SECS);
    let mut events = watcher(api.clone(), config)
        .backoff(WatchBackoff::default())
        .boxed();
    let mut listing: Vec<K> = Vec::new();
    let mut skipped = Skipped::default();
    let mut probe = tokio::time::interval(RECOVERY_PROBE);
    loop {
        let failing = index.health().borrow().failing.contains_key(kind);
        let event = tokio::select! {
            event = events.next() => match event {
                Some(event) => event,
                None => return,
            },
            // A watch that starts again yields nothing until an object
            // changes: while failing, ask the API server directly whether it
            // answers again, so readiness comes back with it.
            _ = probe.tick(), if failing => {
                let params = kube::api::ListParams::default().limit(1);
                if api.list_metadata(&params).await.is_ok() && index.set_failing(K::KIND, None) {
                    tracing::info!(kind, "API server answers again");
                }
                continue;
            }
        };
        let event = match event {
            Ok(event) => event,
            // The versions it watched from are gone (a restarted API server,
            // compaction): not an outage; the watcher lists again.
            Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                tracing::info!(kind, "resource version expired (410 Gone); listing again");
                continue;
            }
            Err(err) => {
                let message = mesh_runtime::error_chain(&err);
                let failing_before = index.health().borrow().failing.contains_key(kind);
                index.set_failing(K::KIND, Some(message.clone()));
                if !failing_before {
                    // One warning per outage; the watcher retries with backoff.
                    tracing::warn!(kind, err = %message, "watch failed; retrying");
                }
                continue;
            }
        };
        if index.set_failing(K::KIND, None) {
            tracing::info!(kind, "watch recovered");
        }
        match event {
            watcher::Event::Init => listing.clear(),
            watcher::Event::InitApply(DeserializeGuard(object)) => match object {
                Ok(object) => listing.push(object),
                Err(invalid) => skipped.unreadable(kind, &invalid),
            },
            watcher::Event::InitDone => {
                let listed = std::mem::take(&mut listing);
                for err in K::reset(&index, &listed) {
                    skipped.unusable(&err);
                }
                tracing::info!(kind, objects = listed.len(), "listed");
                index.mark_synced(K::KIND);
            }
            watcher::Event::Apply(DeserializeGuard(object)) => match object {
                Ok(object) => {
                    if let Err(err) = K::apply(&index, &object) {
                        skipped.unusable(&err);
                    }
                }
                Err(invalid) => skipped.unreadable(kind, &invalid),
            },
            watcher::Event::Delete(DeserializeGuard(object)) => {
                let metadata = match &object {
                    Ok(object) => object.meta(),
                    Err(invalid) => &invalid.metadata,
                };
                if let (Some(namespace), Some(name)) = (&metadata.namespace, &metadata.name) {
                    K::delete(&index, namespace, name);
                }
            }
        }
    }
}

/// The objects skipped so far, so that each is logged once (per version).
#[derive(Default)]
struct Skipped(HashSet<(String, String, String, String)>);

impl Skipped {
    fn unreadable(&mut self, kind: &'static str, invalid: &InvalidObject) {
        let metadata = &invalid.metadata;
        let key = (
            kind.to_owned(),
            metadata.namespace.clone().unwrap_or_default(),
            metadata.name.clone().unwrap_or_default(),
            metadata.resource_version.clone().unwrap_or_default(),
        );
        if self.0.insert(key.clone()) {
            tracing::warn!(kind, namespace = %key.1, name = %key.2, error = %invalid.error, "skipping an object that cannot be read");
        }
    }

    fn unusable(&mut self, err: &Uninterpretable) {
        let key = (
            err.kind.to_owned(),
            err.namespace.clone(),
            err.name.clone(),
            err.reason.clone(),
        );
        if self.0.insert(key) {
            tracing::warn!(%err, "skipping an object that cannot be used");
        }
    }
}
