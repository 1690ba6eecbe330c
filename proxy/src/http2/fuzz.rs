//! What the fuzz target `served` in `proxy/fuzz` runs, kept here (as
//! [`crate::wire::fuzz`] keeps the others) so that the unit tests run it
//! on random input with every `cargo test`: a served connection, the
//! proxy's limits and streams included, on arbitrary input. It must not
//! panic, and must end once its client has sent everything and closed.

use super::serve;
use crate::{
    body::{ProxyBody, Recorder},
    limits::{Limits, LimitsConfig},
    metrics::{Direction, Metrics, RouteLabels},
};
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// After the preface and an empty SETTINGS, `data` in pieces of `data[0]`
/// bytes to a connection served by [`serve`] whose handler echoes each
/// request's body as its response; then the client closes. Returns how
/// many requests reached the handler. Panics if anything panicked, in the
/// stream tasks too (which tokio would otherwise catch).
pub fn served_connection(data: &[u8]) -> usize {
    let Some((&split, rest)) = data.split_first() else {
        return 0;
    };
    catch_task_panics();
    let handled = Arc::new(AtomicUsize::new(0));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let (client, server) = tokio::io::duplex(1 << 20);
        let metrics = Arc::new(Metrics::default());
        let limits = Limits::new(LimitsConfig::default(), metrics.clone());
        let streams = limits.streams(Direction::Inbound).clone();
        let (_drain, drain) = tokio::sync::watch::channel(false);
        let route = Arc::new(metrics.route(RouteLabels {
            direction: Direction::Inbound,
            target: "fuzz".into(),
            endpoint: "fuzz".into(),
            tls: Default::default(),
        }));
        let counted = handled.clone();
        let echo = move |request: http::Request<_>| {
            counted.fetch_add(1, Ordering::Relaxed);
            let recorder = Recorder::new(route.clone(), tokio::time::Instant::now());
            async move { http::Response::new(ProxyBody::upstream(request.into_body(), recorder)) }
        };
        let served = tokio::spawn(async move {
            let _ = serve(server, &LimitsConfig::default(), &streams, drain, echo).await;
        });
        let (mut read, mut write) = tokio::io::split(client);
        // What the server writes is read and dropped, so it never waits.
        let reader = tokio::spawn(async move {
            let mut sink = vec![0; 1 << 16];
            while read.read(&mut sink).await.is_ok_and(|n| n > 0) {}
        });
        let mut start = crate::wire::frame::PREFACE.to_vec();
        start.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS
        let _ = write.write_all(&start).await;
        for chunk in rest.chunks(usize::from(split).max(1)) {
            if write.write_all(chunk).await.is_err() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let _ = write.shutdown().await;
        drop(write);
        served.await.expect("serving does not panic");
        reader.abort();
    });
    drop(runtime);
    assert!(!PANICKED.get(), "a task panicked (above)");
    handled.load(Ordering::Relaxed)
}

thread_local! {
    /// A panic happened on this thread: the runtime's, which runs every
    /// task of the connection.
    static PANICKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Installs (once) a panic hook that also notes the panic in [`PANICKED`].
fn catch_task_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.set(true);
            previous(info);
        }));
    });
    PANICKED.set(false);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Mostly frames after a request's HEADERS, so that streams get
    /// opened, fed and reset more often than by uniform bytes.
    fn framed() -> impl Strategy<Value = Vec<u8>> {
        crate::wire::fuzz::framed().prop_map(|frames| {
            // A POST with END_HEADERS on stream 1 (:method POST,
            // :scheme http, :path /, :authority a).
            let mut out = vec![
                0, 0, 6, 1, 4, 0, 0, 0, 1, 0x83, 0x86, 0x84, 0x41, 0x01, b'a',
            ];
            out.extend(frames);
            out
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn a_served_connection_takes_anything(split in 1u8.., data in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..512),
            framed(),
        ]) {
            let mut input = vec![split];
            input.extend(data);
            served_connection(&input);
        }
    }

    #[test]
    fn a_good_request_reaches_the_handler() {
        // A POST on stream 1 with END_STREAM, in pieces of 3 bytes.
        let mut input = vec![3, 0, 0, 6, 1, 5, 0, 0, 0, 1];
        input.extend([0x83, 0x86, 0x84, 0x41, 0x01, b'a']);
        assert_eq!(served_connection(&input), 1);
    }
}
