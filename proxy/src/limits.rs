//! Limits against peers that send too much or too slowly: request header
//! size, time to send a request head, streams per HTTP/2 connection,
//! connections per proxy. Each refusal is counted in `/metrics`
//! (`mesh_refused_total{direction,reason}`) and logged: every one at debug
//! level, and at most one warning per reason and direction every 10 s, with
//! how many there were, so a flood of bad peers does not flood the log.

use crate::metrics::{Direction, Metrics};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Limit settings (flags in `config`).
#[derive(Debug, Clone, Copy)]
pub struct LimitsConfig {
    /// Largest request header block, counted as HTTP/2 does (RFC 9113
    /// section 6.5.2: name + value + 32 per field).
    pub max_header_bytes: usize,
    /// How long an HTTP/1 client may take to send a request head.
    pub header_read_timeout: Duration,
    /// Streams one HTTP/2 client connection may have open at once; clients
    /// learn it from SETTINGS and queue the rest.
    pub max_concurrent_streams: u32,
    /// Connections open at once, all listeners together.
    pub max_connections: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            max_concurrent_streams: 256,
            max_connections: 4096,
        }
    }
}

impl LimitsConfig {
    /// The hard limit the HTTP libraries enforce themselves: above the
    /// proxy's own check, so that requests just over the limit get the
    /// proxy's answer (a gRPC RESOURCE_EXHAUSTED or a 431, counted); a head
    /// past twice the limit is refused by the HTTP layer (also a 431, and
    /// on HTTP/1 also counted).
    pub fn transport_header_bytes(&self) -> usize {
        (self.max_header_bytes * 2).max(8192)
    }
}

/// Why a peer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    MaxConnections,
    HeaderTooLarge,
    HeaderReadTimeout,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::HeaderTooLarge => "header_too_large",
            Refusal::HeaderReadTimeout => "header_read_timeout",
        }
    }
}

/// Counts and logs refusals.
#[derive(Debug)]
pub struct Refusals {
    metrics: Arc<Metrics>,
    /// Per reason and direction: when the last warning went out, and how
    /// many refusals came since.
    warned: Mutex<HashMap<(Direction, Refusal), (Instant, u64)>>,
}

const WARN_EVERY: Duration = Duration::from_secs(10);

impl Refusals {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            warned: Mutex::new(HashMap::new()),
        }
    }

    pub fn refused(&self, direction: Direction, reason: Refusal, detail: &dyn std::fmt::Display) {
        self.metrics.refused(direction, reason.as_str());
        tracing::debug!(reason = reason.as_str(), %detail, "refused");
        let now = Instant::now();
        let mut warned = self
            .warned
            .lock()
            .expect("refusal log lock is never poisoned");
        let entry = warned
            .entry((direction, reason))
            .or_insert((now - WARN_EVERY, 0));
        entry.1 += 1;
        if now.duration_since(entry.0) >= WARN_EVERY {
            tracing::warn!(
                ?direction,
                reason = reason.as_str(),
                count = entry.1,
                %detail,
                "refused peers (one warning per reason every 10 s; each at debug level)"
            );
            *entry = (now, 0);
        }
    }
}

/// A request head's size as HTTP/2 counts it: every field's name and value
/// plus 32, pseudo-headers included.
pub fn header_bytes<B>(request: &http::Request<B>) -> usize {
    let uri = request.uri();
    let pseudo = [
        (":method", request.method().as_str().len()),
        (":scheme", uri.scheme_str().map_or(0, str::len)),
        (
            ":authority",
            uri.authority().map_or(0, |a| a.as_str().len()),
        ),
        (
            ":path",
            uri.path_and_query().map_or(1, |p| p.as_str().len()),
        ),
    ];
    let pseudo: usize = pseudo.iter().map(|(name, len)| name.len() + len + 32).sum();
    let fields: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum();
    pseudo + fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_bytes_count_names_values_and_overhead() {
        let request = http::Request::builder()
            .uri("http://stockdata/StockData.Stocks/Get")
            .header("x-a", "12345")
            .body(())
            .unwrap();
        let pseudo = (7 + 3 + 32) + (7 + 4 + 32) + (10 + 9 + 32) + (5 + 21 + 32);
        assert_eq!(header_bytes(&request), pseudo + (3 + 5 + 32));
    }

    #[test]
    fn warnings_are_counted_not_repeated() {
        let metrics = Arc::new(Metrics::default());
        let refusals = Refusals::new(metrics.clone());
        for _ in 0..5 {
            refusals.refused(Direction::Inbound, Refusal::MaxConnections, &"full");
        }
        let warned = refusals.warned.lock().unwrap();
        // The first warned; four are waiting for the next warning.
        assert_eq!(warned[&(Direction::Inbound, Refusal::MaxConnections)].1, 4);
        assert!(
            metrics
                .encode()
                .contains(r#"mesh_refused_total{direction="inbound",reason="max_connections"} 5"#)
        );
    }
}
