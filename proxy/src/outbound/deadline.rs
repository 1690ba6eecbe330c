//! The deadline stage: how long one request may take, all its attempts
//! together, and whom it blames when that runs out. It is the shorter of the
//! service's `--timeout` and the client's own `grpc-timeout`.

use crate::errors::{Blame, ProxyError};
use std::{sync::Arc, time::Duration};
use tokio::time::Instant;

/// When a request's time is up, counted from its arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    pub at: Instant,
    pub after: Duration,
    /// Who is charged when it passes: the endpoint for the service's own
    /// timeout, the client for a `grpc-timeout` shorter than that.
    pub blame: Blame,
}

impl Deadline {
    /// The deadline of a request that arrived at `arrived`; `None` when
    /// neither the service nor the client set one.
    pub fn of(
        arrived: Instant,
        service_timeout: Option<Duration>,
        headers: &http::HeaderMap,
    ) -> Option<Self> {
        let client = grpc_timeout(headers);
        let after = [service_timeout, client].into_iter().flatten().min()?;
        let blame = if service_timeout == Some(after) {
            Blame::Endpoint
        } else {
            Blame::Client
        };
        Some(Self {
            at: arrived + after,
            after,
            blame,
        })
    }

    /// The proxy's answer once it passed.
    pub fn expired(&self, target: &Arc<str>) -> ProxyError {
        ProxyError::Timeout {
            target: target.clone(),
            after: self.after,
            blame: self.blame,
        }
    }
}

/// The deadline a gRPC client asked for in `grpc-timeout`: an integer of up
/// to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`). `None` when absent
/// or malformed (the header is then ignored, as gRPC servers do).
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get(crate::names::GRPC_TIMEOUT)?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(grpc_timeout: Option<&str>) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        if let Some(v) = grpc_timeout {
            headers.insert("grpc-timeout", v.parse().unwrap());
        }
        headers
    }

    #[test]
    fn grpc_timeouts_parse_by_the_spec() {
        let timeout = |v: &str| grpc_timeout(&headers(Some(v)));
        assert_eq!(timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "100", "100x", "123456789m", "-1S", "1.5S"] {
            assert_eq!(timeout(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }

    #[test]
    fn the_shorter_wins_and_decides_the_blame() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(Deadline::of(now, None, &headers(None)), None);

        let service = Deadline::of(now, Some(ms(200)), &headers(Some("1S"))).unwrap();
        assert_eq!((service.after, service.blame), (ms(200), Blame::Endpoint));
        assert_eq!(service.at, now + ms(200));

        let client = Deadline::of(now, Some(ms(200)), &headers(Some("50m"))).unwrap();
        assert_eq!((client.after, client.blame), (ms(50), Blame::Client));

        let only_client = Deadline::of(now, None, &headers(Some("3S"))).unwrap();
        assert_eq!(only_client.blame, Blame::Client);

        // A malformed grpc-timeout is ignored, not an error.
        let ignored = Deadline::of(now, Some(ms(200)), &headers(Some("soon"))).unwrap();
        assert_eq!(ignored.after, ms(200));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn any_value_parses_without_panicking(value in "[ -~]{0,16}") {
                if let Ok(value) = http::HeaderValue::from_str(&value) {
                    let mut headers = http::HeaderMap::new();
                    headers.insert(crate::names::GRPC_TIMEOUT, value);
                    let _ = grpc_timeout(&headers);
                }
            }

            /// Up to 8 digits and a unit: exactly that long.
            #[test]
            fn valid_values_are_exact(n in 0u64..100_000_000, unit in prop::sample::select(vec!["H", "M", "S", "m", "u", "n"])) {
                let parsed = grpc_timeout(&headers(Some(&format!("{n}{unit}")))).unwrap();
                let expected = match unit {
                    "H" => Duration::from_secs(n * 3600),
                    "M" => Duration::from_secs(n * 60),
                    "S" => Duration::from_secs(n),
                    "m" => Duration::from_millis(n),
                    "u" => Duration::from_micros(n),
                    _ => Duration::from_nanos(n),
                };
                prop_assert_eq!(parsed, expected);
            }
        }
    }
}
