//! Responses the proxy makes itself when it cannot forward a request: gRPC
//! callers get a trailers-only gRPC status, others a plain HTTP status.

use crate::body::{ProxyBody, Recorder};
use http::{HeaderValue, Response, StatusCode, header};

/// Whether the request is gRPC (its content type says so).
pub fn is_grpc<B>(request: &http::Request<B>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A synthetic failure: `status` for HTTP, `grpc_code` for gRPC callers.
pub fn response(
    grpc: bool,
    status: StatusCode,
    grpc_code: tonic::Code,
    message: &str,
) -> Response<ProxyBody> {
    if grpc {
        let mut response = Response::new(ProxyBody::local(""));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from(grpc_code as i32));
        // grpc-message is percent-encoded; keep it to safe ASCII instead.
        let safe: String = message
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        if let Ok(value) = HeaderValue::from_str(&safe.replace('%', "%25")) {
            headers.insert("grpc-message", value);
        }
        response
    } else {
        let mut response = Response::new(ProxyBody::local(format!("{message}\n")));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }
}

/// A synthetic failure for a request already counted by `recorder`: the
/// response is recorded as finished, so metrics see every refusal.
pub fn recorded(
    recorder: Recorder,
    grpc: bool,
    status: StatusCode,
    grpc_code: tonic::Code,
    message: &str,
) -> Response<ProxyBody> {
    let mut recorder = recorder;
    let response = response(grpc, status, grpc_code, message);
    recorder.head(response.status(), response.headers());
    recorder.finish(true);
    response
}

/// The deadline a gRPC client asked for in `grpc-timeout`: an integer of up
/// to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`). `None` when absent
/// or malformed (the header is then ignored, as gRPC servers do).
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<std::time::Duration> {
    use std::time::Duration;
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
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
    use std::time::Duration;

    #[test]
    fn grpc_timeouts_parse_by_the_spec() {
        let timeout = |v: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("grpc-timeout", v.parse().unwrap());
            super::grpc_timeout(&headers)
        };
        assert_eq!(timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "100", "100x", "123456789m", "-1S", "1.5S"] {
            assert_eq!(timeout(bad), None, "{bad:?}");
        }
        assert_eq!(super::grpc_timeout(&http::HeaderMap::new()), None);
    }

    use super::*;

    #[test]
    fn grpc_failures_are_trailers_only_responses() {
        let response = response(
            true,
            StatusCode::BAD_GATEWAY,
            tonic::Code::Unavailable,
            "no endpoints, 100%",
        );
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["grpc-status"], "14");
        assert_eq!(response.headers()["grpc-message"], "no endpoints, 100%25");
    }

    #[test]
    fn http_failures_keep_their_status() {
        let response = response(
            false,
            StatusCode::SERVICE_UNAVAILABLE,
            tonic::Code::Unavailable,
            "none",
        );
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
