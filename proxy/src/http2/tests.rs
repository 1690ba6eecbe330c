//! HTTP/2 both ways over loopback: windows, trailers-only answers, resets, GOAWAY.
use super::*;
use crate::{
    body::{Frames, Recorder},
    metrics::{Direction, Metrics, RouteLabels},
};
use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt as _;
use std::{collections::VecDeque, net::SocketAddr, sync::Arc};
use tokio::net::TcpListener;
use tokio::time::Instant;

fn recorder() -> Recorder {
    let metrics = Arc::new(Metrics::default());
    let route = metrics.route(RouteLabels {
        direction: Direction::Inbound,
        target: "test".into(),
        endpoint: "test".into(),
        tls: Default::default(),
    });
    Recorder::new(Arc::new(route), Instant::now())
}

/// Stream limits as a proxy's outbound side has them by default.
fn streams() -> Arc<StreamLimits> {
    let limits = crate::limits::Limits::new(LimitsConfig::default(), Arc::default());
    limits.streams(Direction::Outbound).clone()
}

/// Serves HTTP/2 on a fresh loopback port with `handle`.
async fn server<H, F>(handle: H) -> SocketAddr
where
    H: Fn(http::Request<Received>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = http::Response<ProxyBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (drain_tx, drain) = watch::channel(false);
    tokio::spawn(async move {
        let _drain_tx = drain_tx;
        while let Ok((conn, _)) = listener.accept().await {
            let (drain, handle) = (drain.clone(), handle.clone());
            tokio::spawn(async move {
                let _ = serve(conn, &LimitsConfig::default(), &streams(), drain, handle).await;
            });
        }
    });
    addr
}

fn request<B>(addr: SocketAddr, body: B) -> http::Request<B> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/echo"))
        .body(body)
        .unwrap()
}

#[tokio::test]
async fn a_body_larger_than_every_window_is_echoed_whole_with_its_trailers() {
    // The request streams back as the response while it is still being
    // sent: both directions must release and wait for window, and the
    // request keeps streaming after the response head arrived.
    let addr = server(|request: http::Request<Received>| async move {
        http::Response::new(ProxyBody::upstream(request.into_body(), recorder()))
    })
    .await;
    let chunk: Bytes = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let chunks = 8 * 1024 * 1024 / chunk.len();
    let mut frames: VecDeque<_> = (0..chunks).map(|_| Frame::data(chunk.clone())).collect();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    frames.push_back(Frame::trailers(trailers));

    let client = Client::default();
    let response = client
        .send(addr, None, request(addr, Frames(frames)))
        .await
        .unwrap();
    let collected = tokio::time::timeout(Duration::from_secs(30), response.into_body().collect())
        .await
        .expect("the echo finishes")
        .unwrap();
    let trailers = collected.trailers().cloned();
    let bytes = collected.to_bytes();
    assert_eq!(bytes.len(), chunks * chunk.len());
    assert!(bytes.chunks(chunk.len()).all(|c| c == chunk));
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
}

#[tokio::test]
async fn a_response_without_a_body_stays_one_headers_frame() {
    let addr = server(|_request| async move {
        let mut response = http::Response::new(ProxyBody::local(""));
        response
            .headers_mut()
            .insert("grpc-status", "14".parse().unwrap());
        response
    })
    .await;
    let response = Client::default()
        .send(addr, None, request(addr, Frames(VecDeque::new())))
        .await
        .unwrap();
    assert_eq!(response.headers()["grpc-status"], "14");
    assert!(
        response.body().is_end_stream(),
        "END_STREAM on the HEADERS frame"
    );
}

#[tokio::test]
async fn a_client_that_gives_up_cancels_the_handler() {
    struct Dropped(Option<tokio::sync::oneshot::Sender<()>>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            let _ = self.0.take().map(|tx| tx.send(()));
        }
    }
    let (started_tx, started) = tokio::sync::mpsc::unbounded_channel();
    let addr = server(move |_request| {
        let started_tx = started_tx.clone();
        async move {
            let (dropped_tx, dropped) = tokio::sync::oneshot::channel();
            let _guard = Dropped(Some(dropped_tx));
            let _ = started_tx.send(dropped);
            std::future::pending::<()>().await;
            unreachable!()
        }
    })
    .await;
    let client = Client::default();
    let mut started = started;
    let dropped = {
        let sending = client.send(addr, None, request(addr, Frames(VecDeque::new())));
        tokio::pin!(sending);
        tokio::select! {
            _ = &mut sending => panic!("the handler never answers"),
            dropped = started.recv() => dropped.unwrap(),
        }
        // Leaving this block drops the request: RST_STREAM(CANCEL).
    };
    tokio::time::timeout(Duration::from_secs(10), dropped)
        .await
        .expect("the handler is dropped when its client resets the stream")
        .unwrap();
}

#[tokio::test]
async fn after_a_goaway_new_requests_go_to_a_new_connection() {
    // The first connection is drained (GOAWAY) while a request holds it
    // open; later connections are not.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (drain_first, drain) = watch::channel(false);
    let release = Arc::new(tokio::sync::Notify::new());
    let (held_tx, mut held) = tokio::sync::mpsc::unbounded_channel();
    let handle = {
        let release = release.clone();
        move |request: http::Request<Received>| {
            let (release, held_tx) = (release.clone(), held_tx.clone());
            async move {
                if request.uri().path() == "/hold" {
                    let _ = held_tx.send(());
                    release.notified().await;
                }
                http::Response::new(ProxyBody::local("ok"))
            }
        }
    };
    tokio::spawn(async move {
        let mut first = Some(drain);
        loop {
            let (conn, _) = listener.accept().await.unwrap();
            let drain = first.take().unwrap_or_else(|| watch::channel(false).1);
            let handle = handle.clone();
            tokio::spawn(async move {
                let _ = serve(conn, &LimitsConfig::default(), &streams(), drain, handle).await;
            });
        }
    });

    let client = Arc::new(Client::default());
    let uri = |path: &str| format!("http://{addr}{path}");
    let get = |path: &str| {
        http::Request::builder()
            .uri(uri(path))
            .body(Frames(VecDeque::new()))
            .unwrap()
    };
    let holding = tokio::spawn({
        let (client, request) = (client.clone(), get("/hold"));
        async move { client.send(addr, None, request).await.map(|r| r.status()) }
    });
    held.recv().await.unwrap();
    drain_first.send(true).unwrap();

    // Requests go on while the old connection drains: none may fail.
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut sent = 0;
    while Instant::now() < deadline && sent < 200 {
        let response = client.send(addr, None, get("/quick")).await;
        assert_eq!(
            response.unwrap().status(),
            200,
            "request {sent} after GOAWAY"
        );
        sent += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    release.notify_one();
    let held_status = tokio::time::timeout(Duration::from_secs(10), holding)
        .await
        .expect("the held request finishes on the draining connection")
        .unwrap();
    assert_eq!(held_status.unwrap(), 200);
}

#[tokio::test]
async fn a_response_head_past_what_the_client_decodes_fails_its_request() {
    let addr = server(|_request| async move {
        let mut response = http::Response::new(ProxyBody::local("ok"));
        // Past the client's 1 MiB, within what a connection carries.
        let value = "a".repeat(1_200_000);
        response
            .headers_mut()
            .insert("x-huge", value.parse().unwrap());
        response
    })
    .await;
    let client = Client::default();
    let failed = client
        .send(addr, None, request(addr, Frames(VecDeque::new())))
        .await
        .expect_err("no response");
    assert!(
        matches!(
            failed,
            ClientError::Request(crate::http2::StreamError::Reset(code))
                if code == crate::wire::frame::ErrorCode::PROTOCOL_ERROR
        ),
        "{failed:?}"
    );
}

#[tokio::test]
async fn a_connection_that_went_idle_reads_every_size_of_request_whole() {
    // A served connection idle for a second gives its buffers back and
    // reads into the stack: the requests sent after such a pause arrive
    // there, some larger than that first read; the others on a connection
    // that just went idle and keeps its buffers.
    let addr = server(|request: http::Request<Received>| async move {
        http::Response::new(ProxyBody::upstream(request.into_body(), recorder()))
    })
    .await;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    for (size, pause) in [
        (0, false),
        (1, true),
        (4000, false),
        (4096, false),
        (4097, true),
        (3 * 4096, false),
        (100_000, true),
    ] {
        if pause {
            tokio::time::sleep(connection::IDLE_RELEASE + Duration::from_millis(200)).await;
        }
        let body: Bytes = (0..size).map(|i| (i % 253) as u8).collect();
        client = client.ready().await.unwrap();
        let (response, mut send) = client
            .send_request(request(addr, ()), body.is_empty())
            .unwrap();
        if !body.is_empty() {
            send.reserve_capacity(body.len());
            send.send_data(body.clone(), true).unwrap();
        }
        let echo = async {
            let mut received = response.await.unwrap().into_body();
            let mut echoed = Vec::new();
            while let Some(data) = received.data().await {
                let data = data.unwrap();
                received
                    .flow_control()
                    .release_capacity(data.len())
                    .unwrap();
                echoed.extend_from_slice(&data);
            }
            echoed
        };
        let echoed = tokio::time::timeout(Duration::from_secs(10), echo)
            .await
            .unwrap_or_else(|_| panic!("the {size}-byte request is never answered whole"));
        assert_eq!(echoed.len(), size, "the {size}-byte request's echo");
        assert!(echoed == body, "the {size}-byte request comes back as sent");
    }
}
