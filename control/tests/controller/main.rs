//! The controller over real sockets: the destination stream follows registry
//! writes made through the Registry API; bad input is refused; the binary
//! reports a taken port.

mod bounded;
mod identity;
mod kubernetes;

use std::time::Duration;
use stockkube_proto::mesh::{
    DeregisterRequest, Endpoint, GetDestination, ListRequest, RegisterRequest, Update,
    destination_client::DestinationClient, registry_client::RegistryClient, update,
};
use tokio::net::TcpListener;
use tonic::transport::Channel;

async fn spawn_controller() -> (Channel, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(mesh_controller::run(
        mesh_controller::Registry::default(),
        listener,
        async {
            let _ = stopped.await;
        },
    ));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (channel, stop)
}

fn register(service: &str, addr: &str, instance: &str) -> RegisterRequest {
    RegisterRequest {
        service: service.into(),
        endpoint: Some(Endpoint {
            addr: addr.into(),
            instance: instance.into(),
            ..Default::default()
        }),
    }
}

/// The next update of a destination stream, within 10 s.
pub(crate) async fn next(stream: &mut tonic::Streaming<Update>) -> update::Update {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an update within 10 s")
        .expect("the stream is healthy")
        .expect("the stream is open")
        .update
        .expect("updates carry a kind")
}

#[tokio::test]
async fn destination_streams_follow_registry_writes() {
    let (channel, _stop) = spawn_controller().await;
    let mut registry = RegistryClient::new(channel.clone());
    let mut destination = DestinationClient::new(channel);

    let mut stream = destination
        .get(GetDestination {
            service: "stockdata".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        next(&mut stream).await,
        update::Update::NoEndpoints(_)
    ));

    registry
        .register(register("stockdata", "127.0.0.1:9001", "a"))
        .await
        .unwrap();
    let update::Update::Add(set) = next(&mut stream).await else {
        panic!("expected an addition");
    };
    assert_eq!(set.endpoints[0].addr, "127.0.0.1:9001");
    assert_eq!(set.endpoints[0].instance, "a");

    registry
        .register(register("stockdata", "127.0.0.1:9002", "b"))
        .await
        .unwrap();
    let update::Update::Add(set) = next(&mut stream).await else {
        panic!("expected an addition");
    };
    assert_eq!(set.endpoints.len(), 1, "only the new endpoint: {set:?}");

    let removed = registry
        .deregister(DeregisterRequest {
            service: "stockdata".into(),
            addr: "127.0.0.1:9001".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .removed;
    assert!(removed);
    let update::Update::Remove(set) = next(&mut stream).await else {
        panic!("expected a removal");
    };
    assert_eq!(set.addrs, ["127.0.0.1:9001"]);

    // A second watcher starts from the whole current set.
    let mut late = destination
        .get(GetDestination {
            service: "stockdata".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let update::Update::Add(set) = next(&mut late).await else {
        panic!("expected the current set");
    };
    assert_eq!(set.endpoints.len(), 1);
    assert_eq!(set.endpoints[0].addr, "127.0.0.1:9002");

    let list = registry.list(ListRequest {}).await.unwrap().into_inner();
    assert_eq!(list.services.len(), 1);
    assert_eq!(list.services[0].service, "stockdata");
}

#[tokio::test]
async fn bad_names_and_addresses_are_refused() {
    let (channel, _stop) = spawn_controller().await;
    let mut registry = RegistryClient::new(channel.clone());
    for request in [
        register("stockdata", "stockdata:80", "a"),
        register("bad name", "127.0.0.1:1", "a"),
        RegisterRequest {
            service: "stockdata".into(),
            endpoint: None,
        },
    ] {
        let status = registry.register(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }
    let status = DestinationClient::new(channel)
        .get(GetDestination {
            service: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

/// Runs the controller binary with `args` (and `command`'s environment),
/// which must fail within 20 s: its stderr.
pub(crate) async fn refused(mut command: tokio::process::Command, args: &[&str]) -> String {
    let output = command.args(args).kill_on_drop(true).output();
    let output = tokio::time::timeout(Duration::from_secs(20), output)
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{args:?}: {stderr}");
    stderr
}

pub(crate) fn controller_binary() -> tokio::process::Command {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_mesh-controller"))
}

#[tokio::test]
async fn the_binary_reports_a_taken_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let stderr = refused(controller_binary(), &["--listen", &addr]).await;
    assert!(
        stderr.contains(&format!(
            "cannot listen on {addr} (--listen / MESH_CONTROLLER_LISTEN)"
        )),
        "{stderr}"
    );
}
