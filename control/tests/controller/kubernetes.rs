//! The Kubernetes backend against a fake API server over real HTTP: the
//! destination stream follows Services, EndpointSlices and Pods; watches
//! survive `410 Gone`, cut watches and an API server restart; lookups wait
//! for the first lists; addresses resolve to Services; a bad object is
//! skipped; the binary finds its API server through KUBECONFIG.

use crate::next;
use mesh_controller::test_util::FakeApiServer;
use serde_json::{Value, json};
use std::time::Duration;
use stockkube_proto::mesh::{
    GetDestination, ResolveRequest, Update, destination_client::DestinationClient, update,
};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

fn service(name: &str, cluster_ip: &str) -> Value {
    json!({
        "kind": "Service",
        "metadata": {"namespace": "stocks", "name": name},
        "spec": {
            "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
            "ports": [{"name": "grpc", "port": 80, "targetPort": "grpc", "protocol": "TCP"}],
        },
    })
}

/// An EndpointSlice of `stockdata` with (address, pod, ready, terminating).
fn slice(name: &str, endpoints: &[(&str, &str, bool, bool)]) -> Value {
    json!({
        "kind": "EndpointSlice",
        "metadata": {
            "namespace": "stocks", "name": name,
            "labels": {"kubernetes.io/service-name": "stockdata"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints.iter().map(|(ip, pod, ready, terminating)| json!({
            "addresses": [ip],
            "conditions": {"ready": ready, "serving": true, "terminating": terminating},
            "nodeName": "node-1",
            "targetRef": {"kind": "Pod", "namespace": "stocks", "name": pod},
        })).collect::<Vec<_>>(),
    })
}

fn pod(name: &str) -> Value {
    json!({
        "kind": "Pod",
        "metadata": {"namespace": "stocks", "name": name},
        "spec": {
            "serviceAccountName": "stockdata",
            "nodeName": "node-1",
            "containers": [{"name": "stockdata", "image": "stockdata"}, {"name": "mesh-proxy", "image": "mesh-proxy"}],
        },
    })
}

/// A fake API server with the `stockdata` Service and two ready pods.
async fn cluster() -> FakeApiServer {
    let api = FakeApiServer::start().await;
    api.apply(service("stockdata", "10.96.0.10"));
    api.apply(pod("stockdata-1"));
    api.apply(pod("stockdata-2"));
    api.apply(slice(
        "stockdata-abc",
        &[
            ("10.0.0.1", "stockdata-1", true, false),
            ("10.0.0.2", "stockdata-2", true, false),
        ],
    ));
    api
}

/// The controller in this process, on the Kubernetes backend.
async fn controller(api: &FakeApiServer) -> (Channel, Vec<tokio::task::JoinHandle<()>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (backend, watchers) = mesh_controller::kubernetes_backend(
        api.client(),
        "cluster.local",
        "default",
        Some("cluster.local"),
    );
    tokio::spawn(mesh_controller::run(
        backend,
        listener,
        std::future::pending(),
    ));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    (channel, watchers)
}

async fn follow(channel: &Channel, name: &str) -> tonic::Streaming<Update> {
    DestinationClient::new(channel.clone())
        .get(GetDestination {
            service: name.into(),
            context_namespace: "stocks".into(),
        })
        .await
        .unwrap()
        .into_inner()
}

fn added(update: update::Update) -> Vec<(String, String, bool)> {
    let update::Update::Add(set) = update else {
        panic!("expected endpoints, got {update:?}");
    };
    set.endpoints
        .into_iter()
        .map(|e| (e.addr, e.instance, e.meshed))
        .collect()
}

#[tokio::test]
async fn k8s_endpoints_follow_slices_and_pods() {
    let api = cluster().await;
    let (channel, _watchers) = controller(&api).await;
    let mut stream = follow(&channel, "stockdata").await;
    let first = next(&mut stream).await;
    let update::Update::Add(set) = &first else {
        panic!("expected the whole set, got {first:?}");
    };
    assert_eq!(
        added(first.clone()),
        [
            ("10.0.0.1:8080".into(), "stockdata-1".into(), true),
            ("10.0.0.2:8080".into(), "stockdata-2".into(), true),
        ]
    );
    assert_eq!(set.endpoints[0].service_account, "stockdata");
    assert_eq!(set.endpoints[0].node, "node-1");

    // Scaled to three: a pod, and its endpoint in a second slice. Pods and
    // slices are watched apart: the endpoint may come first, unmeshed, and
    // then again once its pod is known.
    api.apply(pod("stockdata-3"));
    api.apply(slice(
        "stockdata-def",
        &[("10.0.0.3", "stockdata-3", true, false)],
    ));
    let mut third = added(next(&mut stream).await);
    if third.iter().any(|(_, _, meshed)| !meshed) {
        third = added(next(&mut stream).await);
    }
    assert_eq!(
        third,
        [("10.0.0.3:8080".into(), "stockdata-3".into(), true)]
    );

    // One is terminating: it gets no new requests.
    api.apply(slice(
        "stockdata-abc",
        &[
            ("10.0.0.1", "stockdata-1", false, true),
            ("10.0.0.2", "stockdata-2", true, false),
        ],
    ));
    let update::Update::Remove(removed) = next(&mut stream).await else {
        panic!("expected a removal");
    };
    assert_eq!(removed.addrs, ["10.0.0.1:8080"]);

    // Every name an app uses reaches the same Service.
    for name in ["stockdata.stocks", "stockdata.stocks.svc.cluster.local:80"] {
        let mut other = follow(&channel, name).await;
        assert_eq!(added(next(&mut other).await).len(), 2, "{name}");
    }

    // The Service goes: no such service, and the stream stays open.
    api.delete("Service", "stocks", "stockdata");
    let update::Update::Remove(removed) = next(&mut stream).await else {
        panic!("expected a removal");
    };
    assert_eq!(removed.addrs.len(), 2);
    let update::Update::NoEndpoints(none) = next(&mut stream).await else {
        panic!("expected no endpoints");
    };
    assert!(!none.exists);
    api.apply(service("stockdata", "10.96.0.10"));
    assert_eq!(added(next(&mut stream).await).len(), 2, "back when it is");
}

#[tokio::test]
async fn k8s_watches_survive_cuts_410_gone_and_an_api_server_restart() {
    let api = cluster().await;
    let (channel, _watchers) = controller(&api).await;
    let mut stream = follow(&channel, "stockdata").await;
    assert_eq!(added(next(&mut stream).await).len(), 2);

    // A dropped watch resumes and misses nothing.
    api.cut_watches();
    api.apply(pod("stockdata-3"));
    api.apply(slice(
        "stockdata-def",
        &[("10.0.0.3", "stockdata-3", true, false)],
    ));
    meshed_endpoint_added(&mut stream, "10.0.0.3:8080").await;

    // Down, and while it is, a slice goes; then its old versions are gone
    // (410), so the watcher lists again and notices the deletion.
    let lists_before = lists(&api);
    api.set_down(true);
    api.delete("EndpointSlice", "stocks", "stockdata-def");
    api.expire_versions();
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.set_down(false);
    let update::Update::Remove(removed) = next(&mut stream).await else {
        panic!("expected a removal");
    };
    assert_eq!(removed.addrs, ["10.0.0.3:8080"]);
    assert!(lists(&api) > lists_before, "relisted: {:?}", api.requests());

    // And changes after that still arrive.
    api.apply(slice(
        "stockdata-def",
        &[("10.0.0.4", "stockdata-4", true, false)],
    ));
    assert_eq!(added(next(&mut stream).await).len(), 1);
}

/// Waits for `addr` to be added as meshed. The resumed watches may deliver
/// the slice before its pod: then the endpoint is added first without the
/// pod's facts, and again once the pod arrives.
async fn meshed_endpoint_added(stream: &mut tonic::Streaming<Update>, addr: &str) {
    loop {
        let endpoints = added(next(stream).await);
        assert!(endpoints.iter().all(|(a, _, _)| a == addr), "{endpoints:?}");
        if endpoints.iter().any(|(_, _, meshed)| *meshed) {
            return;
        }
    }
}

/// How many LISTs (requests without `watch`) the fake served.
fn lists(api: &FakeApiServer) -> usize {
    api.requests()
        .iter()
        .filter(|r| !r.contains("watch="))
        .count()
}

#[tokio::test]
async fn k8s_lookups_wait_for_the_first_lists_and_readiness_follows_the_watches() {
    let api = cluster().await;
    api.set_down(true);
    let (channel, _watchers) = controller(&api).await;
    let mut health = HealthClient::new(channel.clone());
    let destination = "stockkube.mesh.v1.Destination".to_owned();
    let status = |health: &mut HealthClient<Channel>| {
        let mut health = health.clone();
        let service = destination.clone();
        async move {
            health
                .check(HealthCheckRequest { service })
                .await
                .unwrap()
                .into_inner()
                .status()
        }
    };
    assert_eq!(status(&mut health).await, ServingStatus::NotServing);

    // Asked before the controller could list anything: it waits, rather
    // than say there is no such service.
    let waiting = tokio::spawn({
        let channel = channel.clone();
        async move {
            let mut stream = follow(&channel, "stockdata").await;
            next(&mut stream).await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "answered before the first lists");
    api.set_down(false);
    assert_eq!(added(waiting.await.unwrap()).len(), 2);
    eventually_status(&mut health, &destination, ServingStatus::Serving).await;

    api.set_down(true);
    eventually_status(&mut health, &destination, ServingStatus::NotServing).await;
    api.set_down(false);
    eventually_status(&mut health, &destination, ServingStatus::Serving).await;
}

async fn eventually_status(health: &mut HealthClient<Channel>, service: &str, want: ServingStatus) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        if status == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health stayed {status:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn k8s_cluster_ips_resolve_to_their_service() {
    let api = cluster().await;
    let (channel, _watchers) = controller(&api).await;
    let mut destination = DestinationClient::new(channel);
    let resolve = |ip: &str, port| ResolveRequest {
        ip: ip.into(),
        port,
    };
    let answer = destination
        .resolve(resolve("10.96.0.10", 80))
        .await
        .unwrap();
    assert_eq!(
        answer.into_inner().service,
        "stockdata.stocks.svc.cluster.local:80"
    );
    for (ip, port) in [("10.96.0.10", 81), ("10.0.0.1", 8080), ("10.96.0.99", 80)] {
        let answer = destination.resolve(resolve(ip, port)).await.unwrap();
        assert_eq!(answer.into_inner().service, "", "{ip}:{port} is no service");
    }
    api.apply(service("copy", "10.96.0.10"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        match destination.resolve(resolve("10.96.0.10", 80)).await {
            Err(status) => break status,
            Ok(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the copy never arrived"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let status = destination
        .resolve(resolve("stockdata", 80))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn k8s_an_object_it_cannot_read_is_skipped_and_the_rest_stay_live() {
    let api = cluster().await;
    // Ports that are not a list, and an EndpointSlice with no address type.
    api.apply(json!({
        "kind": "Service",
        "metadata": {"namespace": "stocks", "name": "broken"},
        "spec": {"ports": "eighty"},
    }));
    api.apply(json!({
        "kind": "EndpointSlice",
        "metadata": {"namespace": "stocks", "name": "broken-x", "labels": {"kubernetes.io/service-name": "stockdata"}},
        "endpoints": 7,
    }));
    let (channel, _watchers) = controller(&api).await;
    let mut stream = follow(&channel, "stockdata").await;
    assert_eq!(added(next(&mut stream).await).len(), 2);
    // Changes after it still arrive.
    api.apply(json!({
        "kind": "Service",
        "metadata": {"namespace": "stocks", "name": "broken"},
        "spec": {"ports": [{"port": "not a number"}]},
    }));
    api.apply(slice(
        "stockdata-def",
        &[("10.0.0.3", "stockdata-3", true, false)],
    ));
    assert_eq!(added(next(&mut stream).await).len(), 1);
    let mut broken = follow(&channel, "broken").await;
    let update::Update::NoEndpoints(none) = next(&mut broken).await else {
        panic!("expected no such service");
    };
    assert!(!none.exists);
}

#[tokio::test]
async fn k8s_the_binary_finds_its_api_server_through_kubeconfig() {
    let api = cluster().await;
    let dir =
        std::env::temp_dir().join(format!("mesh-controller-kubeconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = api.write_kubeconfig(&dir);
    let port = mesh_runtime::test_ports::free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mesh-controller"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--backend",
            "kubernetes",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_lazy();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut stream = loop {
        let mut client = DestinationClient::new(channel.clone());
        let request = GetDestination {
            service: "stockdata.stocks".into(),
            context_namespace: String::new(),
        };
        match client.get(request).await {
            Ok(stream) => break stream.into_inner(),
            Err(status) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "never served: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(added(next(&mut stream).await).len(), 2);
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn k8s_the_binary_says_when_it_has_no_cluster_configuration() {
    let mut command = crate::controller_binary();
    command
        .env_clear()
        .env("KUBECONFIG", "/nonexistent/kubeconfig");
    let stderr = crate::refused(
        command,
        &["--listen", "127.0.0.1:0", "--backend", "kubernetes"],
    )
    .await;
    assert!(stderr.contains("--backend kubernetes"), "{stderr}");
}

#[tokio::test]
async fn k8s_pods_with_the_sidecar_are_listed_for_the_dashboard() {
    use stockkube_proto::mesh::{ListProxiesRequest, registry_client::RegistryClient};
    let api = cluster().await;
    let mut running = pod("stockdata-7d9f8-abcde");
    running["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "stockdata-7d9f8",
        "uid": "1", "controller": true,
    }]);
    running["status"] = json!({"podIP": "10.0.0.9"});
    api.apply(running);
    let (channel, _watchers) = controller(&api).await;
    let mut registry = RegistryClient::new(channel);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let proxies = loop {
        let proxies = registry
            .list_proxies(ListProxiesRequest {})
            .await
            .map(|r| r.into_inner().proxies)
            .unwrap_or_default();
        if !proxies.is_empty() {
            break proxies;
        }
        assert!(tokio::time::Instant::now() < deadline, "no proxy listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The other pods have no address yet: nothing to scrape there.
    let listed: Vec<_> = proxies
        .iter()
        .map(|p| {
            (
                p.workload.as_str(),
                p.instance.as_str(),
                p.admin_addr.as_str(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [("stockdata", "stockdata-7d9f8-abcde", "10.0.0.9:4191")]
    );
}
