//! Balancer behaviour: strategies, updates, failure accrual and probes, on paused time.
use super::*;
use std::{collections::HashMap, net::SocketAddr};
use tokio::time::Instant;

const EWMA: EwmaConfig = EwmaConfig {
    decay: Duration::from_secs(10),
    default_rtt: Duration::from_millis(30),
};

fn endpoints(ports: &[u16]) -> Endpoints {
    crate::discover::normalize(
        ports
            .iter()
            .map(|p| Endpoint::new(SocketAddr::from(([127, 0, 0, 1], *p)), ""))
            .collect(),
    )
}

fn config(strategy: BalanceStrategy) -> BalancerConfig {
    BalancerConfig {
        strategy,
        ewma: EWMA,
        accrual: AccrualConfig {
            failures: 3,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_millis(800),
        },
        failfast: Duration::from_millis(200),
    }
}

fn balancer(strategy: BalanceStrategy, ports: &[u16]) -> (watch::Sender<Endpoints>, Arc<Balancer>) {
    let (tx, rx) = watch::channel(endpoints(ports));
    (tx, Balancer::new("svc", rx, config(strategy)))
}

#[tokio::test(start_paused = true)]
async fn round_robin_takes_turns() {
    let (_tx, balancer) = balancer(BalanceStrategy::RoundRobin, &[1, 2, 3]);
    let mut ports = Vec::new();
    for _ in 0..6 {
        let picked = balancer.pick().await.unwrap();
        ports.push(picked.endpoint().endpoint.addr.port());
        picked.succeeded();
    }
    assert_eq!(ports, [1, 2, 3, 1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn p2c_prefers_the_endpoint_with_fewer_in_flight() {
    let (_tx, balancer) = balancer(BalanceStrategy::P2cEwma, &[1, 2]);
    // Hold 5 requests on whichever endpoint comes first; with equal
    // latency estimates every later pick must go to the other one.
    let first = balancer.pick().await.unwrap();
    let busy = first.endpoint().endpoint.addr.port();
    let held: Vec<_> = (0..4).map(|_| first.endpoint().clone()).collect();
    for state in &held {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
    }
    for _ in 0..50 {
        let picked = balancer.pick().await.unwrap();
        assert_ne!(picked.endpoint().endpoint.addr.port(), busy);
    }
}

#[tokio::test(start_paused = true)]
async fn p2c_avoids_a_slow_endpoint() {
    let (_tx, balancer) = balancer(BalanceStrategy::P2cEwma, &[1, 2, 3]);
    // Teach it: port 1 answers in 50 ms, the others in 1 ms.
    for state in balancer.endpoints.borrow().iter() {
        let rtt = if state.endpoint.addr.port() == 1 {
            50
        } else {
            1
        };
        *state.rtt.lock().unwrap() =
            super::peak_ewma::PeakEwma::new(Duration::from_millis(rtt), Instant::now());
    }
    let mut counts: HashMap<u16, usize> = HashMap::new();
    for _ in 0..1000 {
        let picked = balancer.pick().await.unwrap();
        *counts
            .entry(picked.endpoint().endpoint.addr.port())
            .or_default() += 1;
        // Completed at once (paused time: a sample of zero, which leaves
        // the estimate as it was): no in-flight skew, only latency decides.
        picked.succeeded();
    }
    // The slow one is tried again only once its estimate, decayed by the
    // picks it lost (2% each), is below a fast one's: after about 200
    // lost picks, in two pairs of three: about 3 of 1,000.
    let slow = counts.get(&1).copied().unwrap_or(0);
    assert!((1..=10).contains(&slow), "{counts:?}");
    // The two fast ones share the rest: the one passed over becomes the
    // cheaper.
    assert!(counts[&2] > 400 && counts[&3] > 400, "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_passed_over_is_tried_again() {
    let (_tx, balancer) = balancer(BalanceStrategy::P2cEwma, &[1, 2]);
    // Port 1 fell behind: 3 ms against 1 ms.
    for state in balancer.endpoints.borrow().iter() {
        let rtt = if state.endpoint.addr.port() == 1 {
            3
        } else {
            1
        };
        *state.rtt.lock().unwrap() =
            super::peak_ewma::PeakEwma::new(Duration::from_millis(rtt), Instant::now());
    }
    let mut first_pick_of_1 = None;
    for n in 0..200 {
        let picked = balancer.pick().await.unwrap();
        if picked.endpoint().endpoint.addr.port() == 1 && first_pick_of_1.is_none() {
            first_pick_of_1 = Some(n);
        }
        picked.succeeded();
    }
    // 0.98^n * 3 < 1 after 55 lost picks; with time alone (no time passes
    // here) it would never be picked.
    assert_eq!(first_pick_of_1, Some(55));
}

#[tokio::test(start_paused = true)]
async fn updates_keep_state_of_endpoints_that_stay() {
    let (tx, balancer) = balancer(BalanceStrategy::RoundRobin, &[1, 2]);
    let picked = balancer.pick().await.unwrap();
    let kept = picked.endpoint().clone();
    picked.succeeded();
    tx.send_replace(endpoints(&[1, 2, 3]));
    let mut rx = balancer.endpoints.clone();
    rx.wait_for(|set| set.len() == 3).await.unwrap();
    let set = balancer.endpoints.borrow().clone();
    assert!(set.iter().any(|s| Arc::ptr_eq(s, &kept)));
    assert_eq!(kept.served.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn no_endpoints_fails_after_the_failfast_timeout_or_waits_for_some() {
    let (tx, balancer) = balancer(BalanceStrategy::P2cEwma, &[]);
    assert!(balancer.pick().await.is_err());

    let waiting = {
        let balancer = balancer.clone();
        tokio::spawn(async move {
            balancer
                .pick()
                .await
                .map(|p| p.endpoint().endpoint.addr.port())
        })
    };
    tx.send_replace(endpoints(&[7]));
    assert_eq!(waiting.await.unwrap().unwrap(), 7);
}

#[tokio::test(start_paused = true)]
async fn a_failure_is_charged_and_remembered() {
    let (_tx, balancer) = balancer(BalanceStrategy::RoundRobin, &[1]);
    balancer.pick().await.unwrap().failed(&"connection refused");
    let snapshot = balancer.snapshot();
    let endpoint = &snapshot.endpoints[0];
    assert_eq!(endpoint.failed, 1);
    assert_eq!(endpoint.in_flight, 0);
    assert_eq!(endpoint.last_error.as_deref(), Some("connection refused"));
    assert!(endpoint.ewma_ms >= 990.0, "{}", endpoint.ewma_ms);
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_eject_until_a_probe_succeeds() {
    let (_tx, balancer) = balancer(BalanceStrategy::RoundRobin, &[1, 2]);
    let port = |p: &Picked| p.endpoint().endpoint.addr.port();
    // Port 1 fails three times in a row (port 2 answers in between).
    for _ in 0..3 {
        let picked = balancer.pick().await.unwrap();
        assert_eq!(port(&picked), 1);
        picked.failed(&"refused");
        balancer.pick().await.unwrap().succeeded();
    }
    let view = balancer.snapshot();
    assert!(view.endpoints[0].ejected, "{view:?}");
    for _ in 0..10 {
        let picked = balancer.pick().await.unwrap();
        assert_eq!(port(&picked), 2, "ejected endpoints get no traffic");
        picked.succeeded();
    }
    // After the backoff (at most 200 ms) port 1 is probed; it fails again
    // and is ejected at once, for longer.
    let probe = wait_for_probe(&balancer, 1).await;
    probe.failed(&"refused again");
    assert!(balancer.snapshot().endpoints[0].ejected);
    // Next time the probe succeeds: back for good.
    let probe = wait_for_probe(&balancer, 1).await;
    probe.succeeded();
    let view = balancer.snapshot();
    assert!(
        !view.endpoints[0].ejected && view.endpoints[0].failed == 4,
        "{view:?}"
    );
}

/// Picks until `port` comes up (within 2 s), completing other picks.
async fn wait_for_probe(balancer: &Balancer, port: u16) -> Picked {
    let give_up = Instant::now() + Duration::from_secs(2);
    loop {
        let picked = balancer.pick().await.unwrap();
        if picked.endpoint().endpoint.addr.port() == port {
            return picked;
        }
        picked.succeeded();
        assert!(Instant::now() < give_up, "port {port} never probed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_endpoint_is_avoided_then_probed_and_restored() {
    let (_tx, balancer) = balancer(BalanceStrategy::P2cEwma, &[1, 2]);
    let port = |p: &Picked| p.endpoint().endpoint.addr.port();
    // Both measured fast; then port 1 fails once.
    for _ in 0..20 {
        balancer.pick().await.unwrap().succeeded();
    }
    loop {
        let picked = balancer.pick().await.unwrap();
        if port(&picked) == 1 {
            picked.failed(&"reset");
            break;
        }
        picked.succeeded();
    }
    // Its penalty keeps it out of p2c's choices...
    for _ in 0..50 {
        let picked = balancer.pick().await.unwrap();
        assert_eq!(port(&picked), 2, "a penalized endpoint is avoided");
        picked.succeeded();
    }
    // ...until its probe (after at most 200 ms), whose success wipes the
    // penalty: it takes turns again.
    wait_for_probe(&balancer, 1).await.succeeded();
    let mut ones = 0;
    for _ in 0..100 {
        let picked = balancer.pick().await.unwrap();
        ones += usize::from(port(&picked) == 1);
        picked.succeeded();
    }
    assert!(ones >= 20, "restored endpoint got {ones} of 100");
}

#[tokio::test(start_paused = true)]
async fn all_ejected_fails_open() {
    let (_tx, balancer) = balancer(BalanceStrategy::P2cEwma, &[1, 2]);
    for _ in 0..20 {
        balancer.pick().await.unwrap().failed(&"down");
    }
    assert!(balancer.snapshot().endpoints.iter().all(|e| e.ejected));
    // Still answers with an endpoint rather than refusing.
    assert!(balancer.pick().await.is_ok());
}
