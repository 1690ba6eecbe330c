//! Discovery through the controller's destination API, changed under load.

use crate::{
    fake_control::FakeControl,
    support::{Tally, spawn_proxy},
};
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use stockdata::{
    Faults,
    test_util::{Replica, connect, eventually, spawn_replica_with},
};
use stockkube_proto::{
    headers::SERVER_ID,
    stockdata::{GetRequest, stocks_client::StocksClient},
};
use tokio::sync::watch;

async fn replica(id: &str) -> Replica {
    // A little latency keeps calls in flight while the set changes.
    spawn_replica_with(
        id,
        Faults {
            delay: Duration::from_millis(10),
            ..Faults::default()
        },
    )
    .await
}

#[tokio::test]
async fn endpoints_added_and_removed_under_load() {
    let registry = FakeControl::default();
    let (controller, _stop) = registry.spawn().await;
    let (a, b, c) = (replica("a").await, replica("b").await, replica("c").await);
    registry.register("stockdata", a.addr, "a");
    registry.register("stockdata", b.addr, "b");

    let proxy = spawn_proxy(&[
        "--outbound",
        "stockdata=127.0.0.1:0",
        "--destination",
        &controller,
    ])
    .await;
    let client = StocksClient::new(connect(proxy.outbound).await);

    // Load: 20 concurrent callers for as long as `running` is true, at most
    // 60 s; every answer is logged with its time.
    let log: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let failures: Arc<Mutex<Tally>> = Arc::default();
    let (running_tx, running) = watch::channel(true);
    let mut callers = tokio::task::JoinSet::new();
    for worker in 0..20 {
        let (mut client, log, failures, running) = (
            client.clone(),
            log.clone(),
            failures.clone(),
            running.clone(),
        );
        callers.spawn(async move {
            let give_up = Instant::now() + Duration::from_secs(60);
            while *running.borrow() && Instant::now() < give_up {
                match client.get(GetRequest { id: worker + 1 }).await {
                    Ok(response) => {
                        let server = response
                            .metadata()
                            .get(SERVER_ID)
                            .unwrap()
                            .to_str()
                            .unwrap()
                            .to_owned();
                        log.lock().unwrap().push((Instant::now(), server));
                    }
                    Err(status) => failures.lock().unwrap().failures.push(status),
                }
            }
        });
    }
    let served_by = |server: &'static str, since: Instant| {
        let log = log.clone();
        move || {
            let hit = log
                .lock()
                .unwrap()
                .iter()
                .any(|(at, s)| *at >= since && s == server);
            std::future::ready(hit.then_some(()))
        }
    };

    eventually(
        "load reaches a and b",
        Duration::from_secs(10),
        served_by("a", Instant::now()),
    )
    .await;
    eventually(
        "load reaches b",
        Duration::from_secs(10),
        served_by("b", Instant::now()),
    )
    .await;

    let added = Instant::now();
    registry.register("stockdata", c.addr, "c");
    eventually(
        "c serves within 2 s",
        Duration::from_secs(2),
        served_by("c", added),
    )
    .await;

    registry.deregister("stockdata", a.addr);
    let removed = Instant::now();
    // Calls already sent to `a` may still answer; after a grace for them,
    // nothing reaches `a` any more.
    let settled = removed + Duration::from_millis(500);
    eventually(
        "traffic continues after the removal",
        Duration::from_secs(5),
        served_by("b", settled),
    )
    .await;
    running_tx.send_replace(false);
    while callers.join_next().await.is_some() {}

    let log = std::mem::take(&mut *log.lock().unwrap());
    let failures = std::mem::take(&mut failures.lock().unwrap().failures);
    let late_a = log
        .iter()
        .filter(|(at, s)| *at >= settled && s == "a")
        .count();
    assert_eq!(late_a, 0, "a kept serving after it was deregistered");
    assert!(
        failures.is_empty(),
        "calls failed during the changes: {failures:?}"
    );
    assert!(log.len() > 100, "load ran: {} calls", log.len());

    // `/metrics` follows discovery: a's series went with it, b's and c's stay.
    let series = |text: &str, replica: &Replica| {
        let needle = format!(r#"endpoint="{}""#, replica.addr);
        text.lines().filter(|line| line.contains(&needle)).count()
    };
    eventually("a's series are removed", Duration::from_secs(5), || async {
        let (_, text) = crate::support::http_get(proxy.admin, "/metrics").await;
        (series(&text, &a) == 0).then_some(())
    })
    .await;
    let (_, text) = crate::support::http_get(proxy.admin, "/metrics").await;
    assert!(series(&text, &b) > 5 && series(&text, &c) > 5, "{text}");
    proxy.shutdown().await;
}

/// A proxy in front of `app` that registers itself with `controller` as
/// `instance` of stockdata.
async fn self_registered(app: &Replica, controller: &str, instance: &str) -> crate::support::Proxy {
    let app_addr = app.addr.to_string();
    spawn_proxy(&[
        "--inbound",
        "127.0.0.1:0",
        "--app",
        &app_addr,
        "--destination",
        controller,
        "--register-workload",
        "stockdata",
        "--register-service",
        "stockdata",
        "--register-instance",
        instance,
        "--advertise",
        "127.0.0.1",
    ])
    .await
}

#[tokio::test]
async fn a_proxy_registers_itself_and_withdraws_when_it_drains() {
    let registry = FakeControl::default();
    let (controller, _stop) = registry.spawn().await;
    let app = replica("self-registered").await;
    let proxy = self_registered(&app, &controller, "stockdata-7").await;
    let inbound = proxy.inbound.unwrap();
    eventually("the proxy registered", Duration::from_secs(10), || async {
        let services = registry.list();
        let listed = services.iter().any(|(service, set)| {
            service == "stockdata" && set.get(&inbound).map(String::as_str) == Some("stockdata-7")
        });
        let proxies = registry.proxies();
        let known = proxies
            .iter()
            .any(|p| p.admin_addr == proxy.admin.to_string() && p.workload == "stockdata");
        (listed && known).then_some(())
    })
    .await;
    proxy.shutdown().await;
    assert!(registry.proxies().is_empty(), "withdrawn at drain");
    assert!(
        registry
            .list()
            .iter()
            .all(|(_, set)| !set.contains_key(&inbound)),
        "endpoint withdrawn at drain"
    );
}

/// The controller keeps registrations as leases: a proxy renews as soon as
/// the answers ask, so it stays registered through many leases, and its
/// withdrawal at drain is immediate.
#[tokio::test]
async fn a_self_registered_proxy_renews_its_lease_as_the_controller_asks() {
    let registry = mesh_controller::Registry::with_lease(Duration::from_millis(1000));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let controller = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(mesh_controller::run(registry.clone(), listener, async {
        let _ = stopped.await;
    }));
    let app = replica("leased").await;
    let proxy = self_registered(&app, &controller, "stockdata-8").await;
    let inbound = proxy.inbound.unwrap();
    let registered = || {
        let endpoint = registry.list().iter().any(|(_, set)| {
            set.get(&inbound)
                .is_some_and(|m| m.instance == "stockdata-8")
        });
        let proxied = registry
            .proxies()
            .iter()
            .any(|p| p.admin_addr == proxy.admin);
        endpoint && proxied
    };
    eventually("the proxy registered", Duration::from_secs(10), || async {
        registered().then_some(())
    })
    .await;
    // Five leases long, checked every 100 ms: never dropped. Without
    // renewals at 400 ms (the proxy's own pace is 10 s) it would be gone
    // within 1.1 s.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(registered(), "the lease ran out while the proxy ran");
    }
    proxy.shutdown().await;
    assert!(registry.proxies().is_empty(), "withdrawn at drain");
    let _ = stop.send(());
}
