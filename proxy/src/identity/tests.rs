use super::*;
use mesh_controller::identity::issuer::{Authority, Issuer};
use std::{collections::VecDeque, sync::Mutex};

/// Answers from a script: `Ok(lifetime)` issues a certificate valid that
/// long from now; `Err` fails. Counts the calls; after the script, fails.
/// The chain is a real one from the controller's issuer (for the CSR's
/// key); the expiry reported is the script's.
#[derive(Clone)]
struct Scripted {
    answers: Arc<Mutex<VecDeque<Result<Duration, String>>>>,
    calls: Arc<Mutex<usize>>,
    issuer: Arc<Issuer>,
}

impl Scripted {
    fn new(answers: impl IntoIterator<Item = Result<Duration, String>>) -> Self {
        let authority = Authority::generate("cluster.local", Duration::from_secs(3600)).unwrap();
        Self {
            answers: Arc::new(Mutex::new(answers.into_iter().collect())),
            calls: Arc::default(),
            issuer: Arc::new(Issuer::new(&authority, Duration::from_secs(3600)).unwrap()),
        }
    }

    fn calls(&self) -> usize {
        *self.calls.lock().unwrap()
    }
}

impl Certifier for Scripted {
    async fn certify(&self, csr_der: Vec<u8>) -> Result<(String, i64), String> {
        assert!(!csr_der.is_empty());
        *self.calls.lock().unwrap() += 1;
        let answer = self.answers.lock().unwrap().pop_front();
        let lifetime = answer.unwrap_or_else(|| Err("the controller is away".into()))?;
        let until = SystemTime::now() + lifetime;
        let secs = until.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let identity = "spiffe://cluster.local/ns/stocks/sa/stockweb"
            .parse()
            .unwrap();
        let (chain, _) = self.issuer.certify(&csr_der, &identity).unwrap();
        Ok((chain, secs))
    }
}

struct Running {
    current: Current,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn start(certifier: &Scripted) -> Running {
    let (current_tx, current) = watch::channel(None);
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(maintain(
        certifier.clone(),
        Key::generate().unwrap(),
        current_tx,
        Arc::new(Metrics::default()),
        stopped,
    ));
    Running {
        current,
        stop,
        task,
    }
}

/// Lets the task run, then moves paused time on by `by`.
async fn advance(by: Duration) {
    tokio::task::yield_now().await;
    tokio::time::sleep(by).await;
    tokio::task::yield_now().await;
}

#[test]
fn renewal_comes_after_63_to_77_percent_of_the_lifetime() {
    let now = Instant::now();
    let lifetime = Duration::from_secs(100);
    assert_eq!(renew_at(now, lifetime, 0.5), now + Duration::from_secs(70));
    assert_eq!(renew_at(now, lifetime, 0.0), now + Duration::from_secs(63));
    assert!(renew_at(now, lifetime, 0.999_999) < now + Duration::from_secs(77));
}

#[tokio::test(start_paused = true)]
async fn the_first_certificate_comes_at_once_and_is_renewed_before_it_ends() {
    let lifetime = Duration::from_secs(100);
    let certifier = Scripted::new([Ok(lifetime), Ok(lifetime), Ok(lifetime)]);
    let mut running = start(&certifier);
    running.current.changed().await.unwrap();
    assert_eq!(certifier.calls(), 1);
    assert!(running.current.borrow().is_some());
    advance(Duration::from_secs(62)).await;
    assert_eq!(
        certifier.calls(),
        1,
        "not renewed before 63% of its lifetime"
    );
    advance(Duration::from_secs(16)).await;
    assert_eq!(certifier.calls(), 2, "renewed by 77%");
    running.stop.send_replace(true);
    running.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn failures_are_retried_with_backoff_until_one_succeeds() {
    let certifier = Scripted::new([
        Err("down".into()),
        Err("down".into()),
        Err("down".into()),
        Ok(Duration::from_secs(3600)),
    ]);
    let running = start(&certifier);
    advance(Duration::from_millis(1)).await;
    assert_eq!(certifier.calls(), 1);
    assert!(
        running.current.borrow().is_none(),
        "no certificate, not ready"
    );
    advance(Duration::from_secs(1)).await;
    assert_eq!(certifier.calls(), 2, "after 1 s");
    advance(Duration::from_secs(2)).await;
    assert_eq!(certifier.calls(), 3, "after 2 s more");
    advance(Duration::from_secs(4)).await;
    assert_eq!(certifier.calls(), 4, "after 4 s more");
    assert!(running.current.borrow().is_some());
    running.stop.send_replace(true);
    running.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_certificate_stays_in_use_while_renewal_fails_until_it_expires() {
    // One 20 s certificate, then the controller is away.
    let certifier = Scripted::new([Ok(Duration::from_secs(20))]);
    let running = start(&certifier);
    advance(Duration::from_millis(1)).await;
    assert!(running.current.borrow().is_some());
    // Its expiry is whole seconds: 19 to 20 s from now.
    advance(Duration::from_secs(18)).await;
    assert!(
        certifier.calls() >= 3,
        "renewal was tried, and retried: {}",
        certifier.calls()
    );
    assert!(
        running.current.borrow().is_some(),
        "still in use before it expires"
    );
    advance(Duration::from_secs(3)).await;
    assert!(running.current.borrow().is_none(), "not used once expired");
    running.stop.send_replace(true);
    running.task.await.unwrap();
}

#[test]
fn renewal_is_overdue_past_85_percent_of_the_lifetime() {
    let received = UNIX_EPOCH + Duration::from_secs(1_000);
    let key = Key::generate().unwrap();
    let authority = Authority::generate("cluster.local", Duration::from_secs(3600)).unwrap();
    let issuer = Issuer::new(&authority, Duration::from_secs(3600)).unwrap();
    let identity = "spiffe://cluster.local/ns/stocks/sa/stockweb"
        .parse()
        .unwrap();
    let (chain_pem, _) = issuer.certify(key.csr_der(), &identity).unwrap();
    let certified = Certified {
        key: key.certified(&chain_pem).unwrap(),
        chain_pem,
        valid_until: received + Duration::from_secs(100),
        received,
    };
    let at = |secs: u64| received + Duration::from_secs(secs);
    assert_eq!(certified.overdue(at(80)), None);
    assert_eq!(certified.overdue(at(85)), Some(Duration::from_secs(15)));
    assert_eq!(certified.overdue(at(120)), Some(Duration::ZERO));
}

#[test]
fn a_chain_for_another_key_is_refused() {
    let authority = Authority::generate("cluster.local", Duration::from_secs(3600)).unwrap();
    let issuer = Issuer::new(&authority, Duration::from_secs(3600)).unwrap();
    let identity = "spiffe://cluster.local/ns/stocks/sa/stockweb"
        .parse()
        .unwrap();
    let (ours, theirs) = (Key::generate().unwrap(), Key::generate().unwrap());
    let (chain_pem, _) = issuer.certify(theirs.csr_der(), &identity).unwrap();
    let err = ours.certified(&chain_pem).unwrap_err();
    assert!(err.contains("not for this proxy's key"), "{err}");
    assert!(ours.certified("no PEM at all").is_err());
}
