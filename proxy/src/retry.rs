//! Retries: which failed requests are sent again, with which body, within
//! which budget.
//!
//! - A request that got no response at all (connection refused or reset,
//!   GOAWAY, REFUSED_STREAM: nothing came back) is retried on another
//!   endpoint.
//! - A request that got a response is retried only when the service's
//!   [`RetryPolicy`] names its status (gRPC `grpc-status` of a trailers-only
//!   response, or the HTTP status): by default UNAVAILABLE and 503.
//! - Either way the body must have fit in the replay buffer
//!   ([`replay::ReplayBody`]), the request must have attempts left, and the
//!   service's [`budget::RetryBudget`] must grant the retry. The overall
//!   request deadline (see `outbound`) covers every attempt.

pub mod budget;
pub mod replay;

use std::time::Duration;

/// Retry settings shared by every service, and the default policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Attempts per request, the first included; 1 turns retries off.
    pub max_attempts: u32,
    /// Request bodies up to this size are kept for replay.
    pub max_body_bytes: usize,
    pub budget: budget::BudgetConfig,
}

impl RetryConfig {
    /// How much of a request body is kept for replay: nothing when retries
    /// are off.
    pub fn replay_limit(&self) -> usize {
        if self.max_attempts > 1 {
            self.max_body_bytes
        } else {
            0
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            max_body_bytes: 64 * 1024,
            budget: budget::BudgetConfig {
                ratio: 0.2,
                min_per_second: 10.0,
                ttl: Duration::from_secs(10),
            },
        }
    }
}

/// The response statuses one service retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    grpc: Vec<tonic::Code>,
    http: Vec<u16>,
}

impl Default for RetryPolicy {
    /// UNAVAILABLE for gRPC (the server did not process the call), 503 for
    /// HTTP, as Istio retries by default.
    fn default() -> Self {
        Self {
            grpc: vec![tonic::Code::Unavailable],
            http: vec![503],
        }
    }
}

/// gRPC codes by the names the docs and `--retry-on` use.
const GRPC_CODES: [(&str, tonic::Code); 16] = [
    ("cancelled", tonic::Code::Cancelled),
    ("unknown", tonic::Code::Unknown),
    ("invalid-argument", tonic::Code::InvalidArgument),
    ("deadline-exceeded", tonic::Code::DeadlineExceeded),
    ("not-found", tonic::Code::NotFound),
    ("already-exists", tonic::Code::AlreadyExists),
    ("permission-denied", tonic::Code::PermissionDenied),
    ("resource-exhausted", tonic::Code::ResourceExhausted),
    ("failed-precondition", tonic::Code::FailedPrecondition),
    ("aborted", tonic::Code::Aborted),
    ("out-of-range", tonic::Code::OutOfRange),
    ("unimplemented", tonic::Code::Unimplemented),
    ("internal", tonic::Code::Internal),
    ("unavailable", tonic::Code::Unavailable),
    ("data-loss", tonic::Code::DataLoss),
    ("unauthenticated", tonic::Code::Unauthenticated),
];

impl std::str::FromStr for RetryPolicy {
    type Err = String;

    /// `off`, or `;`-separated gRPC code names (`unavailable`,
    /// `resource-exhausted`; `_` works too) and HTTP statuses (`503`).
    fn from_str(text: &str) -> Result<Self, String> {
        let mut policy = RetryPolicy {
            grpc: Vec::new(),
            http: Vec::new(),
        };
        if text == "off" {
            return Ok(policy);
        }
        for item in text.split(';').map(str::trim).filter(|i| !i.is_empty()) {
            if let Ok(status) = item.parse::<u16>() {
                if !(100..=599).contains(&status) {
                    return Err(format!("{status} is not an HTTP status"));
                }
                policy.http.push(status);
                continue;
            }
            let name = item.to_ascii_lowercase().replace('_', "-");
            match GRPC_CODES.iter().find(|(n, _)| *n == name) {
                Some((_, code)) => policy.grpc.push(*code),
                None => {
                    return Err(format!(
                        "{item:?} is neither an HTTP status nor a gRPC code (unavailable, resource-exhausted, ...)"
                    ));
                }
            }
        }
        if policy.grpc.is_empty() && policy.http.is_empty() {
            return Err("empty: give statuses or `off`".into());
        }
        Ok(policy)
    }
}

impl RetryPolicy {
    /// Whether a response with this head is one to retry. A gRPC status
    /// counts only where it is visible before the body: in a trailers-only
    /// response, which is how servers answer a call they did not process.
    pub fn retries(&self, status: http::StatusCode, headers: &http::HeaderMap) -> bool {
        match headers
            .get(crate::names::GRPC_STATUS)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
        {
            Some(code) => self.grpc.contains(&tonic::Code::from_i32(code)),
            None => self.http.contains(&status.as_u16()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status: u16, grpc_status: Option<&str>) -> (http::StatusCode, http::HeaderMap) {
        let mut headers = http::HeaderMap::new();
        if let Some(code) = grpc_status {
            headers.insert("grpc-status", code.parse().unwrap());
        }
        (http::StatusCode::from_u16(status).unwrap(), headers)
    }

    #[test]
    fn the_default_retries_unavailable_and_503_only() {
        let policy = RetryPolicy::default();
        let retries = |status, grpc| {
            let (status, headers) = head(status, grpc);
            policy.retries(status, &headers)
        };
        assert!(retries(200, Some("14")));
        assert!(!retries(200, Some("0")));
        assert!(!retries(200, Some("13")), "INTERNAL may have run");
        assert!(retries(503, None));
        assert!(!retries(500, None));
        assert!(!retries(200, None));
    }

    #[test]
    fn policies_parse_names_and_statuses() {
        let policy: RetryPolicy = "unavailable;RESOURCE_EXHAUSTED;502;503".parse().unwrap();
        assert_eq!(
            policy.grpc,
            [tonic::Code::Unavailable, tonic::Code::ResourceExhausted]
        );
        assert_eq!(policy.http, [502, 503]);
        let off: RetryPolicy = "off".parse().unwrap();
        let (status, headers) = head(200, Some("14"));
        assert!(!off.retries(status, &headers));
        for bad in ["", "sometimes", "700", "unavailable;nope"] {
            assert!(bad.parse::<RetryPolicy>().is_err(), "{bad:?}");
        }
    }
}
