//! The attempt loop against a scripted upstream: no sockets, paused time.

use super::*;
use crate::{
    balance::{AccrualConfig, Balancer, BalancerConfig, EwmaConfig},
    config::BalanceStrategy,
    discover::{Endpoint, Endpoints, normalize},
    http2::ClientError,
    retry::{RetryPolicy, budget::BudgetConfig, budget::RetryBudget, replay::BoxError},
};
use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt as _;
use std::{
    net::SocketAddr,
    pin::Pin,
    sync::Mutex,
    task::{Context, Poll},
    time::Duration,
};

/// What the scripted endpoint on a port does with a request.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Answers with this gRPC status in a trailers-only response.
    Grpc(u8),
    /// Refuses the connection.
    Refused,
    /// Never answers.
    Hang,
    /// Reads the whole request body, then answers gRPC OK (or fails the way
    /// an HTTP client does when the body it sends fails).
    ReadBody,
    /// Reads the whole request body, then resets the stream.
    ReadThenReset,
}

/// An upstream whose endpoints follow a script, one step per port, and
/// which records the ports it was sent to.
struct Scripted {
    steps: Vec<(u16, Step)>,
    sent: Mutex<Vec<u16>>,
}

impl Scripted {
    fn new(steps: &[(u16, Step)]) -> Self {
        Self {
            steps: steps.to_vec(),
            sent: Mutex::new(Vec::new()),
        }
    }

    fn sent(&self) -> Vec<u16> {
        self.sent.lock().unwrap().clone()
    }
}

fn grpc_response(code: u8) -> http::Response<()> {
    http::Response::builder()
        .header("content-type", "application/grpc")
        .header("grpc-status", code.to_string())
        .body(())
        .unwrap()
}

impl<B> SendRequest<ReplayBody<B>> for Scripted
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Body = ();

    fn send(
        &self,
        _protocol: Protocol,
        addr: SocketAddr,
        request: http::Request<ReplayBody<B>>,
        _server_id: Option<&Arc<str>>,
    ) -> impl Future<Output = Result<http::Response<()>, UpstreamError>> + Send {
        // The request goes where its URI says: the address given is that one.
        let named: SocketAddr = request.uri().authority().unwrap().as_str().parse().unwrap();
        assert_eq!(named, addr, "the address is the URI's");
        self.sent.lock().unwrap().push(addr.port());
        let step = self
            .steps
            .iter()
            .find(|(port, _)| *port == addr.port())
            .map(|(_, step)| *step)
            .expect("every port has a step");
        async move {
            match step {
                Step::Grpc(code) => Ok(grpc_response(code)),
                Step::Refused => Err(UpstreamError::Http2(ClientError::Connect {
                    addr,
                    source: std::io::ErrorKind::ConnectionRefused.into(),
                })),
                Step::Hang => std::future::pending().await,
                Step::ReadBody => match request.into_body().collect().await {
                    Ok(_) => Ok(grpc_response(0)),
                    Err(err) => Err(UpstreamError::Http2(ClientError::RequestBody(err))),
                },
                Step::ReadThenReset => {
                    let _ = request.into_body().collect().await;
                    Err(UpstreamError::Http2(ClientError::Request(
                        crate::http2::StreamError::Reset(
                            crate::wire::frame::ErrorCode::INTERNAL_ERROR,
                        ),
                    )))
                }
            }
        }
    }

    fn peer_tls(&self, _server_id: Option<&Arc<str>>) -> crate::tls::PeerTls {
        crate::tls::PeerTls::None
    }
}

/// A request body of `len` bytes in one frame, or one that fails: its
/// client reset the stream.
enum TestBody {
    Bytes(Option<Bytes>),
    Fails,
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            TestBody::Bytes(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            TestBody::Fails => Poll::Ready(Some(Err("the client reset the stream".into()))),
        }
    }
}

fn body(len: usize) -> TestBody {
    TestBody::Bytes((len > 0).then(|| Bytes::from(vec![7; len])))
}

fn endpoints(ports: &[u16]) -> Endpoints {
    normalize(
        ports
            .iter()
            .map(|p| Endpoint::new(SocketAddr::from(([127, 0, 0, 1], *p)), ""))
            .collect(),
    )
}

struct Setup {
    service: Service,
    retry: RetryConfig,
    metrics: Arc<Metrics>,
    _discovery: tokio::sync::watch::Sender<Endpoints>,
}

fn setup(ports: &[u16], timeout: Option<Duration>, budget: BudgetConfig) -> Setup {
    let (tx, rx) = tokio::sync::watch::channel(endpoints(ports));
    let balancer = Balancer::new(
        "svc",
        rx,
        BalancerConfig {
            // Round-robin: which endpoint comes next is known.
            strategy: BalanceStrategy::RoundRobin,
            ewma: EwmaConfig {
                decay: Duration::from_secs(10),
                default_rtt: Duration::from_millis(30),
            },
            accrual: AccrualConfig::default(),
            failfast: Duration::from_secs(3),
        },
    );
    let retry = RetryConfig {
        max_attempts: 3,
        max_body_bytes: 1024,
        budget,
    };
    let metrics = Arc::new(Metrics::default());
    Setup {
        service: Service::new(
            balancer,
            timeout,
            RetryPolicy::default(),
            RetryBudget::new(budget),
            metrics.paths(crate::metrics::Direction::Outbound, "stockdata".into()),
        ),
        retry,
        metrics,
        _discovery: tx,
    }
}

impl Setup {
    async fn run(
        &self,
        upstream: &Scripted,
        request_body: TestBody,
        grpc_timeout: Option<&str>,
    ) -> Outcome<()> {
        let mut request = http::Request::builder()
            .method("POST")
            .uri("http://svc/StockData.Stocks/Get")
            .header("content-type", "application/grpc");
        if let Some(timeout) = grpc_timeout {
            request = request.header("grpc-timeout", timeout);
        }
        let (head, request_body) = request.body(request_body).unwrap().into_parts();
        self.service.budget.deposit();
        let replay = ReplayBody::new(request_body, self.retry.replay_limit());
        let deadline = Deadline::of(Instant::now(), self.service.timeout, &head.headers);
        Attempts {
            upstream,
            service: &self.service,
            retry: &self.retry,
            metrics: &self.metrics,
        }
        .run(Protocol::Http2, true, &head, &replay, deadline)
        .await
    }

    /// (served, failed) per endpoint, in port order.
    fn charged(&self) -> Vec<(u64, u64)> {
        self.service
            .balancer
            .snapshot()
            .endpoints
            .iter()
            .map(|e| (e.served, e.failed))
            .collect()
    }

    fn metric(&self, line: &str) -> bool {
        self.metrics.encode().lines().any(|l| l == line)
    }
}

fn answered(outcome: &Outcome<()>) -> (Option<u8>, u32) {
    match outcome {
        Outcome::Answered(response, attempt) => (
            response.headers()["grpc-status"]
                .to_str()
                .unwrap()
                .parse()
                .ok(),
            attempt.number,
        ),
        other => panic!("expected a response, got {other:?}"),
    }
}

fn failed(outcome: &Outcome<()>) -> (&ProxyError, u32) {
    match outcome {
        Outcome::Failed(err, attempt) => (err, attempt.number),
        other => panic!("expected a failure, got {other:?}"),
    }
}

const GENEROUS: BudgetConfig = BudgetConfig {
    ratio: 0.2,
    min_per_second: 10.0,
    ttl: Duration::from_secs(10),
};

const SPENT: BudgetConfig = BudgetConfig {
    ratio: 0.0,
    min_per_second: 0.0,
    ttl: Duration::from_secs(10),
};

#[test]
fn the_retry_decision_table() {
    let granted = || true;
    let spent = || false;
    // (reason, attempt of 3, replayable, budget) -> decision
    assert_eq!(decide(None, 1, 3, true, granted), Decision::Done);
    assert_eq!(decide(None, 3, 3, false, spent), Decision::Done);
    assert_eq!(
        decide(Some("error"), 1, 3, true, granted),
        Decision::Retry("error")
    );
    assert_eq!(
        decide(Some("status"), 2, 3, true, granted),
        Decision::Retry("status")
    );
    assert_eq!(
        decide(Some("error"), 3, 3, true, granted),
        Decision::Skip("attempts")
    );
    assert_eq!(
        decide(Some("error"), 1, 1, true, granted),
        Decision::Skip("attempts")
    );
    assert_eq!(
        decide(Some("error"), 1, 3, false, granted),
        Decision::Skip("body")
    );
    assert_eq!(
        decide(Some("status"), 1, 3, true, spent),
        Decision::Skip("budget")
    );
    // The budget is not asked (and so not spent) when the rest says no.
    let asked = std::cell::Cell::new(false);
    decide(Some("error"), 3, 3, true, || {
        asked.set(true);
        true
    });
    decide(Some("error"), 1, 3, false, || {
        asked.set(true);
        true
    });
    assert!(!asked.get());
}

#[tokio::test(start_paused = true)]
async fn a_success_is_one_attempt_and_credits_its_endpoint() {
    let setup = setup(&[1, 2], None, GENEROUS);
    let upstream = Scripted::new(&[(1, Step::Grpc(0)), (2, Step::Grpc(0))]);
    let outcome = setup.run(&upstream, body(10), None).await;
    assert_eq!(answered(&outcome), (Some(0), 1));
    assert_eq!(upstream.sent(), [1]);
    assert_eq!(setup.charged(), [(1, 0), (0, 0)]);
}

#[tokio::test(start_paused = true)]
async fn a_refused_attempt_is_retried_on_another_endpoint() {
    let setup = setup(&[1, 2], None, GENEROUS);
    let upstream = Scripted::new(&[(1, Step::Refused), (2, Step::ReadBody)]);
    let outcome = setup.run(&upstream, body(100), None).await;
    // The body went again, whole, to the second endpoint.
    assert_eq!(answered(&outcome), (Some(0), 2));
    assert_eq!(upstream.sent(), [1, 2]);
    assert_eq!(setup.charged(), [(0, 1), (1, 0)]);
    assert!(setup.metric(
        r#"mesh_retries_total{direction="outbound",target="svc",endpoint="127.0.0.1:1",reason="error"} 1"#
    ));
    // The failed attempt is counted as a 502-class answer of its endpoint.
    assert!(setup.metric(
        r#"mesh_responses_total{direction="outbound",target="svc",endpoint="127.0.0.1:1",tls="false",status_code="200",grpc_status="14",classification="failure"} 1"#
    ));
}

#[tokio::test(start_paused = true)]
async fn a_retryable_status_is_retried_until_attempts_run_out_then_passed_on() {
    let setup = setup(&[1, 2, 3, 4], None, GENEROUS);
    let unavailable = Step::Grpc(14);
    let upstream = Scripted::new(&[
        (1, unavailable),
        (2, unavailable),
        (3, unavailable),
        (4, unavailable),
    ]);
    let outcome = setup.run(&upstream, body(0), None).await;
    assert_eq!(answered(&outcome), (Some(14), 3));
    assert_eq!(upstream.sent(), [1, 2, 3], "each attempt on a new endpoint");
    assert_eq!(setup.charged(), [(0, 1), (0, 1), (0, 1), (0, 0)]);
    assert!(setup.metric(
        r#"mesh_retries_skipped_total{direction="outbound",target="svc",reason="attempts"} 1"#
    ));
}

#[tokio::test(start_paused = true)]
async fn a_status_the_policy_does_not_name_is_final_and_no_failure() {
    let setup = setup(&[1, 2], None, GENEROUS);
    let upstream = Scripted::new(&[(1, Step::Grpc(13)), (2, Step::Grpc(0))]);
    let outcome = setup.run(&upstream, body(0), None).await;
    assert_eq!(answered(&outcome), (Some(13), 1));
    // INTERNAL is the app's answer: the endpoint served it.
    assert_eq!(setup.charged(), [(1, 0), (0, 0)]);
}

#[tokio::test(start_paused = true)]
async fn the_services_timeout_blames_the_endpoint_and_is_not_retried() {
    let setup = setup(&[1, 2], Some(Duration::from_millis(200)), GENEROUS);
    let upstream = Scripted::new(&[(1, Step::Hang), (2, Step::Grpc(0))]);
    let started = Instant::now();
    let outcome = setup.run(&upstream, body(0), None).await;
    let (err, number) = failed(&outcome);
    assert!(
        matches!(
            err,
            ProxyError::Timeout {
                blame: Blame::Endpoint,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(number, 1);
    assert_eq!(started.elapsed(), Duration::from_millis(200));
    assert_eq!(setup.charged(), [(0, 1), (0, 0)]);
    assert!(setup.metric(
        r#"mesh_request_timeouts_total{direction="outbound",target="svc",endpoint="127.0.0.1:1",tls="false"} 1"#
    ));
}

#[tokio::test(start_paused = true)]
async fn a_clients_shorter_deadline_charges_nobody() {
    let setup = setup(&[1], Some(Duration::from_secs(5)), GENEROUS);
    let upstream = Scripted::new(&[(1, Step::Hang)]);
    let outcome = setup.run(&upstream, body(0), Some("50m")).await;
    let (err, _) = failed(&outcome);
    assert!(
        matches!(
            err,
            ProxyError::Timeout {
                blame: Blame::Client,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(setup.charged(), [(0, 0)]);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_breaks_off_its_body_costs_the_endpoint_nothing() {
    let setup = setup(&[1, 2], None, GENEROUS);
    let upstream = Scripted::new(&[(1, Step::ReadBody), (2, Step::ReadBody)]);
    let outcome = setup.run(&upstream, TestBody::Fails, None).await;
    let (err, number) = failed(&outcome);
    assert!(matches!(err, ProxyError::ClientCancelled(_)), "{err:?}");
    assert_eq!(number, 1, "not retried");
    assert_eq!(setup.charged(), [(0, 0), (0, 0)]);
}

#[tokio::test(start_paused = true)]
async fn a_body_too_large_to_replay_is_not_retried() {
    let setup = setup(&[1, 2], None, GENEROUS);
    let upstream = Scripted::new(&[(1, Step::ReadThenReset), (2, Step::Grpc(0))]);
    // 2 KiB went to the first endpoint, over the 1 KiB kept for replay.
    let outcome = setup.run(&upstream, body(2048), None).await;
    let (err, number) = failed(&outcome);
    assert!(matches!(err, ProxyError::Upstream { .. }), "{err:?}");
    assert_eq!(number, 1);
    assert!(setup.metric(
        r#"mesh_retries_skipped_total{direction="outbound",target="svc",reason="body"} 1"#
    ));

    // The same failure with a body that fits is retried.
    let setup = self::setup(&[1, 2], None, GENEROUS);
    let upstream = Scripted::new(&[(1, Step::ReadThenReset), (2, Step::ReadBody)]);
    let outcome = setup.run(&upstream, body(512), None).await;
    assert_eq!(answered(&outcome), (Some(0), 2));
}

#[tokio::test(start_paused = true)]
async fn a_spent_budget_skips_the_retry_and_answers_for_the_failure() {
    let setup = setup(&[1, 2], None, SPENT);
    let upstream = Scripted::new(&[(1, Step::Refused), (2, Step::Grpc(0))]);
    let outcome = setup.run(&upstream, body(0), None).await;
    let (err, number) = failed(&outcome);
    assert!(matches!(err, ProxyError::Upstream { .. }), "{err:?}");
    assert_eq!(number, 1);
    assert_eq!(upstream.sent(), [1]);
    assert!(setup.metric(
        r#"mesh_retries_skipped_total{direction="outbound",target="svc",reason="budget"} 1"#
    ));
}

#[tokio::test(start_paused = true)]
async fn no_endpoints_fails_after_the_failfast_timeout_without_an_attempt() {
    let setup = setup(&[], None, GENEROUS);
    let upstream = Scripted::new(&[]);
    let started = Instant::now();
    let outcome = setup.run(&upstream, body(0), None).await;
    assert!(
        matches!(outcome, Outcome::NotSent(ProxyError::NoEndpoints { .. })),
        "{outcome:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    assert!(upstream.sent().is_empty());
}
