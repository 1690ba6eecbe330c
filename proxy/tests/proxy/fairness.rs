//! One client's streams hold only their own share of the proxy: a client
//! that does not read its responses, holds more streams than the upstream
//! allows, or sends a request head and never its body, does not make the
//! other clients of the same endpoint wait, and is cut off after the stream
//! idle timeout (HTTP/2 and HTTP/1). An endpoint that closes the shared
//! connection for what came over it is not blamed for it.

use crate::support::{
    assert_uncharged, http_get, parse_prometheus, refused, stockdata_proxy, sum, until_in_flight,
};
use bytes::Bytes;
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use stockdata::test_util::eventually;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// Streams whose client reads nothing: four times the attack in issue 19.
const UNREAD: usize = 16;

/// Bytes in `/big`'s response.
const BIG: usize = 20 * 1024 * 1024;

/// An HTTP/2 upstream allowing `max_streams` streams per connection:
/// `/big` answers 20 MB, `/hold` answers nothing until its client goes,
/// `/slow` a short body 2 s late, anything else a short body at once; each
/// once the request's body has ended.
async fn upstream(max_streams: u32) -> SocketAddr {
    upstream_with_reset_limit(max_streams, usize::MAX).await.0
}

/// [`upstream`], with a reset limit as HTTP/2 servers have: once its
/// clients reset `limit` `/hold` streams, it closes the connections it has
/// with GOAWAY(ENHANCE_YOUR_CALM). The receiver turns 1 then.
async fn upstream_with_reset_limit(
    max_streams: u32,
    limit: usize,
) -> (SocketAddr, watch::Receiver<u64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (calm, calmed) = watch::channel(0);
    let resets = Arc::new((AtomicUsize::new(0), limit, calm));
    let watching = calmed.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let mut calm = watching.clone();
            calm.mark_unchanged();
            let resets = resets.clone();
            tokio::spawn(async move {
                let mut conn = h2::server::Builder::new()
                    .max_concurrent_streams(max_streams)
                    .handshake::<_, Bytes>(conn)
                    .await?;
                let mut calmed = false;
                loop {
                    tokio::select! {
                        Ok(()) = calm.changed(), if !calmed => {
                            calmed = true;
                            conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                        }
                        accepted = conn.accept() => match accepted {
                            Some(accepted) => {
                                let (request, respond) = accepted?;
                                tokio::spawn(answer(request, respond, resets.clone()));
                            }
                            None => return Ok::<_, h2::Error>(()),
                        },
                    }
                }
            });
        }
    });
    (addr, calmed)
}

/// Resets of `/hold` streams so far, the limit, and what tells when it is
/// reached.
type Resets = Arc<(AtomicUsize, usize, watch::Sender<u64>)>;

async fn answer(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    resets: Resets,
) {
    let path = request.uri().path().to_owned();
    if path == "/hold" {
        // Until the stream is reset (its client, or the proxy, gave up).
        let _ = std::future::poll_fn(|cx| respond.poll_reset(cx)).await;
        let (count, limit, calm) = &*resets;
        if count.fetch_add(1, Ordering::Relaxed) + 1 == *limit {
            calm.send_replace(1);
        }
        return;
    }
    // The whole request first, as a unary gRPC server reads it.
    let mut request = request.into_body();
    while let Some(data) = request.data().await {
        let Ok(data) = data else { return };
        let _ = request.flow_control().release_capacity(data.len());
    }
    if path == "/slow" {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let Ok(mut body) = respond.send_response(http::Response::new(()), false) else {
        return;
    };
    let mut left = if path == "/big" { BIG } else { 16 };
    while left > 0 {
        let chunk = left.min(64 * 1024);
        body.reserve_capacity(chunk);
        let granted = match std::future::poll_fn(|cx| body.poll_capacity(cx)).await {
            Some(Ok(granted)) => granted.min(chunk),
            _ => return,
        };
        left -= granted;
        if body
            .send_data(Bytes::from(vec![7; granted]), left == 0)
            .is_err()
        {
            return;
        }
    }
}

/// An HTTP/2 connection to `addr`; `window` is its streams' initial window
/// (0: a client that reads nothing).
async fn h2_client(addr: SocketAddr, window: u32) -> h2::client::SendRequest<Bytes> {
    let conn = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake::<_, Bytes>(conn)
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// A GET of `path` through the proxy at `addr` on `client`'s connection;
/// `end`: whether the request ends with its head (else its body follows).
async fn open(
    client: &h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    path: &str,
    end: bool,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let mut ready = client.clone().ready().await.unwrap();
    ready.send_request(get(addr, path), end).unwrap()
}

fn get(addr: SocketAddr, path: &str) -> http::Request<()> {
    http::Request::get(format!("http://{addr}{path}"))
        .body(())
        .unwrap()
}

/// `calls` GETs of a short body, `concurrency` at a time, each on a
/// connection of its own, as many clients would; how many succeeded,
/// and how long they took.
async fn well_behaved(proxy: SocketAddr, calls: usize, concurrency: usize) -> (usize, Duration) {
    let started = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let share = calls / concurrency + usize::from(worker < calls % concurrency);
        tasks.spawn(async move {
            let mut client = h2_client(proxy, 65_535).await;
            let mut ok = 0;
            for _ in 0..share {
                client = client.ready().await.unwrap();
                let (response, _) = client.send_request(get(proxy, "/small"), true).unwrap();
                let Ok(response) = response.await else {
                    continue;
                };
                let mut body = response.into_body();
                let mut read = 0;
                while let Some(Ok(data)) = body.data().await {
                    read += data.len();
                    let _ = body.flow_control().release_capacity(data.len());
                }
                ok += usize::from(read == 16);
            }
            ok
        });
    }
    let mut ok = 0;
    while let Some(done) = tasks.join_next().await {
        ok += done.unwrap();
    }
    (ok, started.elapsed())
}

/// Well-behaved calls per run.
const CALLS: usize = 2000;

/// Runs the well-behaved clients within a deadline far above what they
/// need: before fair sharing they hung until the attacker left.
async fn well_behaved_within(proxy: SocketAddr, what: &str) -> (usize, Duration) {
    tokio::time::timeout(Duration::from_secs(60), well_behaved(proxy, CALLS, 100))
        .await
        .unwrap_or_else(|_| panic!("the well-behaved calls finish {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_do_not_read_their_responses_do_not_stall_the_others() {
    let upstream = upstream(100).await;
    let proxy = stockdata_proxy(&[upstream], &[]).await;
    let (ok, baseline) = well_behaved_within(proxy.outbound, "before any attack").await;
    assert_eq!(ok, CALLS);

    // Streams of 20 MB whose client grants no window: they hold their
    // stream windows in the proxy, and nothing more, whichever of the
    // endpoint's connections they share with the other clients' calls.
    let attacker = h2_client(proxy.outbound, 0).await;
    let mut held = Vec::new();
    for _ in 0..UNREAD {
        let (response, _) = open(&attacker, proxy.outbound, "/big", true).await;
        held.push(response.await.unwrap());
    }

    let (ok, attacked) = well_behaved_within(proxy.outbound, "while streams read nothing").await;
    assert_eq!(ok, CALLS, "every well-behaved call succeeds");
    println!(
        "2,000 calls at 100 concurrent: {baseline:?} alone, {attacked:?} beside {UNREAD} unread 20 MB \
         responses ({:.2} of the rate)",
        baseline.as_secs_f64() / attacked.as_secs_f64()
    );
    drop(held);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_holding_more_streams_than_the_upstream_allows_does_not_stall_the_others() {
    let upstream = upstream(100).await;
    let proxy = stockdata_proxy(&[upstream], &[]).await;

    // 150 streams the upstream never answers: more than its 100.
    let attacker = h2_client(proxy.outbound, 65_535).await;
    let mut held = Vec::new();
    for _ in 0..150 {
        let (response, _) = open(&attacker, proxy.outbound, "/hold", true).await;
        held.push(response);
    }
    until_in_flight(proxy.admin, 150).await;

    let (ok, _) = well_behaved_within(proxy.outbound, "beside 150 held streams").await;
    assert_eq!(ok, CALLS, "every well-behaved call succeeds");
    drop(held);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_on_which_nothing_moves_are_reset_after_the_stream_idle_timeout() {
    let upstream = upstream(1000).await;
    let proxy = stockdata_proxy(&[upstream], &["--stream-idle-timeout", "1s"]).await;

    // Requests whose head arrived and whose body never does (held streams),
    // and a response its client never reads.
    let held_client = h2_client(proxy.outbound, 65_535).await;
    let mut held = Vec::new();
    for _ in 0..200 {
        let (response, body) = open(&held_client, proxy.outbound, "/small", false).await;
        held.push((response, body));
    }
    let unread_client = h2_client(proxy.outbound, 0).await;
    let (unread, _) = open(&unread_client, proxy.outbound, "/big", true).await;
    let unread = unread.await.unwrap();

    // Each is reset with CANCEL once nothing moved on it for the timeout.
    let reset = tokio::time::timeout(Duration::from_secs(20), async {
        for (response, _body) in held {
            let err = response.await.expect_err("a held stream is reset");
            assert_eq!(err.reason(), Some(h2::Reason::CANCEL), "{err}");
        }
        let mut body = unread.into_body();
        loop {
            match body.data().await {
                Some(Ok(_)) => continue,
                Some(Err(err)) => break err,
                None => panic!("the unread response ended instead of being reset"),
            }
        }
    })
    .await
    .expect("the idle streams are reset within 20 s");
    assert_eq!(reset.reason(), Some(h2::Reason::CANCEL), "{reset}");

    assert_eq!(refused(proxy.admin, "stream_idle_timeout").await, 201.0);
    // Their upstream streams went with them.
    until_in_flight(proxy.admin, 0).await;

    // A stream that keeps moving outlives the timeout: a slow reader of a
    // large response, reading a little at a time.
    let (ok, _) = well_behaved(proxy.outbound, 10, 1).await;
    assert_eq!(ok, 10);
    proxy.shutdown().await;
}

#[tokio::test]
async fn streams_over_the_cap_are_refused_and_counted() {
    let upstream = upstream(1000).await;
    let proxy = stockdata_proxy(&[upstream], &["--max-streams", "10"]).await;
    let client = h2_client(proxy.outbound, 65_535).await;
    let mut held = Vec::new();
    for _ in 0..10 {
        let (response, _) = open(&client, proxy.outbound, "/hold", true).await;
        held.push(response);
    }
    until_in_flight(proxy.admin, 10).await;
    // The eleventh, from another connection, is refused; clients retry those.
    let other = h2_client(proxy.outbound, 65_535).await;
    let (response, _) = open(&other, proxy.outbound, "/small", true).await;
    let err = response.await.expect_err("refused");
    assert_eq!(err.reason(), Some(h2::Reason::REFUSED_STREAM), "{err}");
    assert_eq!(refused(proxy.admin, "max_streams").await, 1.0);
    // Once they end, streams are admitted again.
    drop(held);
    until_in_flight(proxy.admin, 0).await;
    let (ok, _) = well_behaved(proxy.outbound, 10, 2).await;
    assert_eq!(ok, 10);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_closing_the_shared_connection_for_forwarded_resets_is_not_charged() {
    // An endpoint that closes its connections after 30 resets.
    let (upstream, mut calmed) = upstream_with_reset_limit(1000, 30).await;
    let proxy = stockdata_proxy(&[upstream], &[]).await;
    let client = h2_client(proxy.outbound, 65_535).await;
    // More requests in flight than --failure-accrual (7): were each charged
    // when the endpoint closes their connection, it would be ejected.
    let mut held = Vec::new();
    for _ in 0..10 {
        let (response, _) = open(&client, proxy.outbound, "/hold", true).await;
        held.push(response);
    }
    until_in_flight(proxy.admin, 10).await;

    // Another client opens streams and resets each once the proxy has
    // sent it on, until the endpoint has had enough (at most 40).
    let attacker = h2_client(proxy.outbound, 65_535).await;
    for _ in 0..40 {
        if *calmed.borrow_and_update() == 1 {
            break;
        }
        let (response, _) = open(&attacker, proxy.outbound, "/hold", true).await;
        until_in_flight(proxy.admin, 11).await;
        drop(response);
        until_in_flight(proxy.admin, 10).await;
    }
    assert_eq!(*calmed.borrow(), 1, "the endpoint closed its connection");

    // The held requests were retried on a new connection (as far as the
    // retry budget allows); the endpoint was charged nothing, whether the
    // proxy read its GOAWAY or only a broken connection.
    let retried = || async {
        let (_, text) = http_get(proxy.admin, "/metrics").await;
        let metrics = parse_prometheus(&text);
        sum(&metrics, "mesh_retries_total", &[]) + sum(&metrics, "mesh_retries_skipped_total", &[])
    };
    eventually(
        "the held requests retried",
        Duration::from_secs(10),
        || async { (retried().await >= 10.0).then_some(()) },
    )
    .await;
    assert_uncharged(proxy.admin).await;
    drop(held);
    proxy.shutdown().await;
}

#[tokio::test]
async fn http1_connections_on_which_nothing_moves_are_closed_after_the_stream_idle_timeout() {
    // An app that reads whole bodies before answering.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .fallback(|body: axum::body::Bytes| async move { format!("read {} bytes", body.len()) });
    tokio::spawn(async move { axum::serve(listener, app).await });
    let proxy = crate::support::spawn_proxy(&[
        "--outbound",
        "web=127.0.0.1:0",
        "--discover",
        &format!("web=static:{app_addr}"),
        "--stream-idle-timeout",
        "1s",
    ])
    .await;
    // A request that announces 100 bytes of body and sends 5.
    let mut conn = TcpStream::connect(proxy.outbound).await.unwrap();
    conn.write_all(b"POST /upload HTTP/1.1\r\nHost: web\r\nContent-Length: 100\r\n\r\nabcde")
        .await
        .unwrap();
    until_in_flight(proxy.admin, 1).await;
    // Closed by the proxy, well before the 10 s header read timeout, and
    // the request upstream cancelled with it.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(8), conn.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection is closed within 8 s");
    until_in_flight(proxy.admin, 0).await;
    eventually("the close counted", Duration::from_secs(5), || async {
        (refused(proxy.admin, "stream_idle_timeout").await == 1.0).then_some(())
    })
    .await;
    // Requests that move are served as before.
    let (status, body) = http_get(proxy.outbound, "/after").await;
    assert_eq!(status, 200, "{body}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_does_not_end_in_time_is_reset() {
    let upstream = upstream(1000).await;
    let proxy = stockdata_proxy(&[upstream], &["--request-body-timeout", "1s"]).await;
    let client = h2_client(proxy.outbound, 65_535).await;

    // A body that trickles: a frame every 200 ms, never its end. Moving,
    // so the stream idle timeout would never catch it.
    let (response, mut body) = open(&client, proxy.outbound, "/small", false).await;
    let trickle = tokio::spawn(async move {
        for _ in 0..50 {
            if body.send_data(Bytes::from_static(b"x"), false).is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let err = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("reset within 5 s")
        .expect_err("reset");
    assert_eq!(err.reason(), Some(h2::Reason::CANCEL), "{err}");
    trickle.abort();
    assert_eq!(refused(proxy.admin, "request_body_timeout").await, 1.0);

    // A body that ended in time, with a response that takes longer than the
    // timeout, and a request with no body held longer: neither is touched.
    let (slow, mut body) = open(&client, proxy.outbound, "/slow", false).await;
    body.send_data(Bytes::from_static(b"done"), true).unwrap();
    let (held, _) = open(&client, proxy.outbound, "/hold", true).await;
    let slow = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("answered within 10 s")
        .expect("answered, not reset");
    assert_eq!(slow.status(), 200);
    until_in_flight(proxy.admin, 1).await;
    assert_eq!(refused(proxy.admin, "request_body_timeout").await, 1.0);
    drop(held);
    proxy.shutdown().await;
}
