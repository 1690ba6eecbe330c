//! Responses the proxy makes itself when it cannot forward a request: gRPC
//! callers get a trailers-only gRPC status, others a plain HTTP status.

use crate::body::ProxyBody;
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

#[cfg(test)]
mod tests {
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
