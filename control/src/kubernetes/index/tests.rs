//! The index on objects as the API server sends them (JSON), no HTTP.

use super::*;
use serde_json::{Value, json};

fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("a valid object")
}

fn service(name: &str, cluster_ip: &str, ports: &[(&str, u16)]) -> Service {
    from_json(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "stocks", "name": name},
        "spec": {
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "ports": ports.iter().map(|(n, p)| json!({"name": n, "port": p, "protocol": "TCP"})).collect::<Vec<_>>(),
        },
    }))
}

/// An endpoint: address, (ready, serving, terminating), pod.
type Ep<'a> = (&'a str, (Option<bool>, Option<bool>, Option<bool>), &'a str);

const READY: (Option<bool>, Option<bool>, Option<bool>) = (Some(true), Some(true), Some(false));
const NOT_READY: (Option<bool>, Option<bool>, Option<bool>) =
    (Some(false), Some(false), Some(false));
const TERMINATING: (Option<bool>, Option<bool>, Option<bool>) =
    (Some(false), Some(true), Some(true));

fn slice(name: &str, service: &str, ports: &[(&str, u16)], endpoints: &[Ep<'_>]) -> EndpointSlice {
    from_json(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "stocks", "name": name, "labels": {SERVICE_NAME_LABEL: service}},
        "addressType": "IPv4",
        "ports": ports.iter().map(|(n, p)| json!({"name": n, "port": p, "protocol": "TCP"})).collect::<Vec<_>>(),
        "endpoints": endpoints.iter().map(|(ip, (ready, serving, terminating), pod)| json!({
            "addresses": [ip],
            "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
            "nodeName": "node-1",
            "targetRef": {"kind": "Pod", "namespace": "stocks", "name": pod},
        })).collect::<Vec<_>>(),
    }))
}

fn pod(name: &str, service_account: &str, meshed: bool) -> Pod {
    let mut containers = vec![json!({"name": "stockdata", "image": "stockdata"})];
    if meshed {
        containers.push(json!({"name": PROXY_CONTAINER, "image": "mesh-proxy"}));
    }
    from_json(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": "stocks", "name": name},
        "spec": {"serviceAccountName": service_account, "nodeName": "node-1", "containers": containers},
    }))
}

fn index() -> Index {
    Index::new("cluster.local", "default")
}

fn follow(index: &Index, name: &str) -> watch::Receiver<Published> {
    index.watch(&index.target(name, "stocks").unwrap())
}

fn addrs(published: &Published) -> Vec<String> {
    published
        .endpoints
        .keys()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn a_services_endpoints_come_from_its_slices_on_each_slices_target_port() {
    let index = index();
    let mut rx = follow(&index, "stockdata");
    index
        .apply_service(&service("stockdata", "10.96.0.10", &[("grpc", 80)]))
        .unwrap();
    index
        .apply_slice(&slice(
            "stockdata-a",
            "stockdata",
            &[("grpc", 8080)],
            &[("10.0.0.1", READY, "sd-1")],
        ))
        .unwrap();
    // Another slice whose pods serve the named port elsewhere.
    index
        .apply_slice(&slice(
            "stockdata-b",
            "stockdata",
            &[("grpc", 9090)],
            &[("10.0.0.2", READY, "sd-2")],
        ))
        .unwrap();
    assert!(rx.has_changed().unwrap());
    let published = rx.borrow_and_update().clone();
    assert!(published.exists);
    assert_eq!(addrs(&published), ["10.0.0.1:8080", "10.0.0.2:9090"]);
    assert_eq!(
        published.endpoints.values().next().unwrap().instance,
        "sd-1"
    );
    // A slice of another Service changes nothing here.
    index
        .apply_slice(&slice(
            "web-a",
            "web",
            &[("http", 80)],
            &[("10.0.0.9", READY, "web-1")],
        ))
        .unwrap();
    assert!(!rx.has_changed().unwrap());
}

#[test]
fn ready_endpoints_take_requests_and_terminating_ones_only_when_none_is_ready() {
    let index = index();
    let rx = follow(&index, "stockdata");
    index
        .apply_service(&service("stockdata", "10.96.0.10", &[("", 80)]))
        .unwrap();
    let endpoints = |list: &[Ep<'_>]| {
        index
            .apply_slice(&slice("sd", "stockdata", &[("", 8080)], list))
            .unwrap();
        addrs(&rx.borrow())
    };
    assert_eq!(
        endpoints(&[
            ("10.0.0.1", READY, "a"),
            ("10.0.0.2", NOT_READY, "b"),
            ("10.0.0.3", TERMINATING, "c"),
            // Conditions left out: ready.
            ("10.0.0.4", (None, None, None), "d"),
        ]),
        ["10.0.0.1:8080", "10.0.0.4:8080"]
    );
    // The last ready one goes: the terminating one that still serves takes
    // requests rather than none at all.
    assert_eq!(
        endpoints(&[("10.0.0.2", NOT_READY, "b"), ("10.0.0.3", TERMINATING, "c")]),
        ["10.0.0.3:8080"]
    );
    // Ready but terminating (publishNotReadyAddresses): no new requests.
    assert_eq!(
        endpoints(&[
            ("10.0.0.1", READY, "a"),
            ("10.0.0.5", (Some(true), Some(true), Some(true)), "e")
        ]),
        ["10.0.0.1:8080"]
    );
    assert!(rx.borrow().exists);
    assert!(endpoints(&[("10.0.0.2", NOT_READY, "b")]).is_empty());
    assert!(
        rx.borrow().exists,
        "a Service with no ready endpoints still exists"
    );
}

#[test]
fn an_address_in_two_slices_appears_once() {
    let index = index();
    let rx = follow(&index, "stockdata");
    index
        .apply_service(&service("stockdata", "10.96.0.10", &[("", 80)]))
        .unwrap();
    for name in ["sd-a", "sd-b"] {
        index
            .apply_slice(&slice(
                name,
                "stockdata",
                &[("", 8080)],
                &[("10.0.0.1", READY, "a")],
            ))
            .unwrap();
    }
    assert_eq!(addrs(&rx.borrow()), ["10.0.0.1:8080"]);
    index.delete_slice("stocks", "sd-a");
    assert_eq!(addrs(&rx.borrow()), ["10.0.0.1:8080"], "still in the other");
    index.delete_slice("stocks", "sd-b");
    assert!(addrs(&rx.borrow()).is_empty());
}

#[test]
fn a_pod_that_arrives_after_its_slice_fills_in_its_identity() {
    let index = index();
    let rx = follow(&index, "stockdata");
    index
        .apply_service(&service("stockdata", "10.96.0.10", &[("", 80)]))
        .unwrap();
    index
        .apply_slice(&slice(
            "sd",
            "stockdata",
            &[("", 8080)],
            &[("10.0.0.1", READY, "sd-1")],
        ))
        .unwrap();
    let meta =
        |rx: &watch::Receiver<Published>| rx.borrow().endpoints.values().next().unwrap().clone();
    assert_eq!(
        meta(&rx),
        EndpointMeta {
            instance: "sd-1".into(),
            meshed: false,
            service_account: String::new(),
            node: "node-1".into(),
            identity: String::new(),
        }
    );
    index.apply_pod(&pod("sd-1", "stockdata", true)).unwrap();
    let meta = meta(&rx);
    assert!(meta.meshed);
    assert_eq!(meta.service_account, "stockdata");
    assert_eq!(meta.identity, "", "no identities without a trust domain");
}

#[test]
fn meshed_pods_carry_their_service_accounts_identity() {
    let index = index().with_identities("example.org");
    let rx = follow(&index, "stockdata");
    index
        .apply_service(&service("stockdata", "10.96.0.10", &[("", 80)]))
        .unwrap();
    index
        .apply_slice(&slice(
            "sd",
            "stockdata",
            &[("", 8080)],
            &[("10.0.0.1", READY, "sd-1"), ("10.0.0.2", READY, "sd-2")],
        ))
        .unwrap();
    index.apply_pod(&pod("sd-1", "stockdata", true)).unwrap();
    index.apply_pod(&pod("sd-2", "stockdata", false)).unwrap();
    let identities: Vec<String> = rx
        .borrow()
        .endpoints
        .values()
        .map(|meta| meta.identity.clone())
        .collect();
    assert_eq!(
        identities,
        ["spiffe://example.org/ns/stocks/sa/stockdata", ""],
        "an unmeshed pod has no proxy to prove one"
    );
}

#[test]
fn names_ports_and_existence() {
    let index = index();
    let unknown = follow(&index, "stockdata:80");
    assert_eq!(
        *unknown.borrow(),
        Published::default(),
        "no such service yet"
    );
    index
        .apply_service(&service(
            "stockdata",
            "10.96.0.10",
            &[("grpc", 80), ("admin", 9990)],
        ))
        .unwrap();
    index
        .apply_slice(&slice(
            "sd",
            "stockdata",
            &[("grpc", 8080), ("admin", 9991)],
            &[("10.0.0.1", READY, "a")],
        ))
        .unwrap();
    assert_eq!(addrs(&unknown.borrow()), ["10.0.0.1:8080"]);
    assert_eq!(
        addrs(&follow(&index, "stockdata.stocks.svc:9990").borrow()),
        ["10.0.0.1:9991"]
    );
    assert_eq!(
        addrs(&follow(&index, "stockdata").borrow()),
        ["10.0.0.1:8080"],
        "the first port"
    );
    assert!(
        !follow(&index, "stockdata:81").borrow().exists,
        "no such port"
    );
    // Another namespace has no such Service.
    let elsewhere = index.watch(&index.target("stockdata", "web").unwrap());
    assert!(!elsewhere.borrow().exists);
    index.delete_service("stocks", "stockdata");
    assert_eq!(*unknown.borrow(), Published::default());
}

#[test]
fn cluster_ips_resolve_to_their_service() {
    let index = index();
    index
        .apply_service(&service("stockdata", "10.96.0.10", &[("", 80)]))
        .unwrap();
    index
        .apply_service(&service("headless", "None", &[("", 80)]))
        .unwrap();
    let ip = |s: &str| s.parse().unwrap();
    assert_eq!(
        index.resolve(ip("10.96.0.10"), 80).unwrap().as_deref(),
        Some("stockdata.stocks.svc.cluster.local:80")
    );
    assert_eq!(index.resolve(ip("10.96.0.10"), 81).unwrap(), None);
    assert_eq!(index.resolve(ip("10.0.0.1"), 80).unwrap(), None);
    index
        .apply_service(&service("copy", "10.96.0.10", &[("", 80)]))
        .unwrap();
    assert!(matches!(
        index.resolve(ip("10.96.0.10"), 80),
        Err(LookupError::Ambiguous { .. })
    ));
}

#[test]
fn a_relist_forgets_what_is_gone_and_skips_what_it_cannot_use() {
    let index = index();
    let gone = follow(&index, "gone");
    let kept = follow(&index, "stockdata");
    index
        .apply_service(&service("gone", "10.96.0.11", &[("", 80)]))
        .unwrap();
    assert!(gone.borrow().exists);
    let mut broken = service("broken", "10.96.0.12", &[("", 80)]);
    broken.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 70_000;
    let skipped = index.reset_services(&[
        service("stockdata", "10.96.0.10", &[("", 80)]),
        broken.clone(),
    ]);
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].name, "broken");
    assert!(!gone.borrow().exists, "deleted while the watch was down");
    assert!(kept.borrow().exists);
    assert!(index.apply_service(&broken).is_err());
    let mut unlabelled = slice("sd", "stockdata", &[("", 8080)], &[]);
    unlabelled.metadata.labels = None;
    assert!(index.apply_slice(&unlabelled).is_err());
}

#[tokio::test]
async fn lookups_wait_until_every_kind_was_listed() {
    let index = Arc::new(index());
    let waiting = tokio::spawn({
        let index = index.clone();
        async move { index.synced().await }
    });
    for kind in [Kind::Service, Kind::EndpointSlice] {
        index.mark_synced(kind);
    }
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished() && !index.is_synced());
    index.mark_synced(Kind::Pod);
    waiting.await.unwrap();
    assert!(index.is_synced());
}

#[test]
fn a_headless_service_resolves_by_name_to_its_pods() {
    let index = index();
    let rx = follow(&index, "stockdata-headless");
    index
        .apply_service(&service("stockdata-headless", "None", &[("grpc", 80)]))
        .unwrap();
    index
        .apply_slice(&slice(
            "sdh",
            "stockdata-headless",
            &[("grpc", 8080)],
            &[("10.0.0.1", READY, "a"), ("10.0.0.2", READY, "b")],
        ))
        .unwrap();
    assert_eq!(addrs(&rx.borrow()), ["10.0.0.1:8080", "10.0.0.2:8080"]);
    // It has no cluster IP to resolve.
    assert_eq!(
        index.resolve("10.0.0.1".parse().unwrap(), 8080).unwrap(),
        None
    );
}

#[test]
fn pods_with_the_sidecar_are_proxies_of_their_workload() {
    let index = index();
    let mut meshed = pod("stockdata-7d9f8-abcde", "stockdata", true);
    meshed.metadata.owner_references = Some(vec![from_json(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "stockdata-7d9f8",
        "uid": "1", "controller": true,
    }))]);
    index.apply_pod(&meshed).unwrap();
    // No address yet: nothing to scrape.
    assert!(index.meshed_pods(4191).is_empty());
    meshed.status = Some(from_json(json!({"podIP": "10.0.0.5"})));
    index.apply_pod(&meshed).unwrap();
    let mut plain = pod("web", "web", false);
    plain.status = Some(from_json(json!({"podIP": "10.0.0.6"})));
    index.apply_pod(&plain).unwrap();
    assert_eq!(
        index.meshed_pods(4191),
        [MeshedPod {
            workload: "stockdata".into(),
            instance: "stockdata-7d9f8-abcde".into(),
            admin: "10.0.0.5:4191".parse().unwrap(),
        }]
    );
}
