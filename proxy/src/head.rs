//! What a request head must be for the proxy to forward it at all, checked
//! before anything else reads it: not `CONNECT` (a tunnel, which the mesh
//! does not proxy: 405), and an authority that is one valid `host[:port]`
//! (400 otherwise: a missing `Host` on HTTP/1.1, two of them, one with a
//! space or user info). A bad head is answered by the proxy and counted
//! (`bad_request`); it never reaches routing or an endpoint.
//!
//! Why here: routing reads the authority to choose a service, and the
//! upstream connection is shared, so a `CONNECT` or a `Host` the next hop
//! parses differently must not travel on.

use crate::errors::ProxyError;
use http::{Method, Version, header::HOST, uri::Authority};

/// `Ok` when the head may be forwarded; else the proxy's answer.
pub fn check<B>(request: &http::Request<B>) -> Result<(), ProxyError> {
    if request.method() == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed {
            method: Method::CONNECT,
        });
    }
    check_authority(request).map_err(|problem| ProxyError::BadAuthority { problem })
}

/// The authority rules of RFC 9110 section 7.2 and RFC 9112 section 3.2.
fn check_authority<B>(request: &http::Request<B>) -> Result<(), &'static str> {
    if let Some(authority) = request.uri().authority() {
        // Parsed by the HTTP layer already (`:authority`, or an
        // absolute-form target); a `Host` beside it is ignored, as RFC
        // 9112 says.
        return valid_host(authority);
    }
    let mut hosts = request.headers().get_all(HOST).iter();
    let Some(host) = hosts.next() else {
        return match request.version() {
            // HTTP/1.0 predates Host; HTTP/2 without `:authority` may still
            // be routed by the listener's service.
            Version::HTTP_09 | Version::HTTP_10 | Version::HTTP_2 => Ok(()),
            _ => Err("an HTTP/1.1 request without Host"),
        };
    };
    if hosts.next().is_some() {
        return Err("more than one Host");
    }
    if host.is_empty() {
        // What a client sends when the target has no authority.
        return Ok(());
    }
    let authority = Authority::try_from(host.as_bytes()).map_err(|_| "a Host that is no host")?;
    valid_host(&authority)
}

/// A `host[:port]` without user info (which HTTP forbids senders to send,
/// and which would hide the real host from a reader that skips it), whose
/// port, if any, is a number below 65536.
fn valid_host(authority: &Authority) -> Result<(), &'static str> {
    let text = authority.as_str();
    if text.contains('@') {
        return Err("an authority with user info");
    }
    let host = authority.host();
    if host.is_empty() {
        return Err("an authority without a host");
    }
    // Without user info the authority starts with its host.
    let port = text.get(host.len()..).unwrap_or_default();
    match port.strip_prefix(':') {
        None if port.is_empty() => Ok(()),
        // `host:` is allowed: an empty port is the scheme's default.
        Some("") => Ok(()),
        Some(digits)
            if digits.bytes().all(|b| b.is_ascii_digit()) && digits.parse::<u16>().is_ok() =>
        {
            Ok(())
        }
        _ => Err("an authority whose port is no port"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, uri: &str, version: Version, hosts: &[&[u8]]) -> http::Request<()> {
        let mut request = http::Request::builder()
            .method(method)
            .uri(uri)
            .version(version)
            .body(())
            .unwrap();
        for host in hosts {
            request
                .headers_mut()
                .append(HOST, http::HeaderValue::from_bytes(host).unwrap());
        }
        request
    }

    fn problem(request: &http::Request<()>) -> Option<String> {
        check(request).err().map(|err| err.message())
    }

    #[test]
    fn connect_is_not_allowed() {
        let connect = request("CONNECT", "web:443", Version::HTTP_11, &[b"web:443"]);
        let err = check(&connect).unwrap_err();
        assert_eq!(err.status().0, http::StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn good_authorities_pass() {
        for ok in [
            request("GET", "/x", Version::HTTP_11, &[b"web"]),
            request("GET", "/x", Version::HTTP_11, &[b"Web.NS.svc:8080"]),
            request("GET", "/x", Version::HTTP_11, &[b"[::1]:80"]),
            request("GET", "/x", Version::HTTP_11, &[b""]),
            request("GET", "/x", Version::HTTP_10, &[]),
            request("POST", "http://web:80/Get", Version::HTTP_2, &[]),
            // An absolute-form target wins over Host, whatever Host says.
            request("GET", "http://web/x", Version::HTTP_11, &[b"a b"]),
        ] {
            assert_eq!(problem(&ok), None, "{ok:?}");
        }
    }

    #[test]
    fn bad_authorities_are_400() {
        for (bad, why) in [
            (request("GET", "/x", Version::HTTP_11, &[b"a b"]), "no host"),
            (request("GET", "/x", Version::HTTP_11, &[]), "without Host"),
            (
                request("GET", "/x", Version::HTTP_11, &[b"web", b"evil"]),
                "more than one Host",
            ),
            (
                request("GET", "/x", Version::HTTP_11, &[b"user@web"]),
                "user info",
            ),
            (
                request("GET", "/x", Version::HTTP_11, &[b"web:x"]),
                "no port",
            ),
            (
                request("GET", "/x", Version::HTTP_11, &[b"web:99999"]),
                "no port",
            ),
            (
                request("GET", "/x", Version::HTTP_11, &[b":80"]),
                "without a host",
            ),
            (
                request("GET", "http://u:p@web/x", Version::HTTP_2, &[]),
                "user info",
            ),
        ] {
            let err = check(&bad).unwrap_err();
            assert_eq!(err.status().0, http::StatusCode::BAD_REQUEST, "{bad:?}");
            assert!(err.message().contains(why), "{why}: {}", err.message());
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Whatever Host an HTTP/1.1 client sends: an answer, no panic;
            /// and never a 405 for a GET.
            #[test]
            fn any_host_is_checked_without_panicking(host in prop::collection::vec(any::<u8>(), 0..100)) {
                if let Ok(value) = http::HeaderValue::from_bytes(&host) {
                    let mut request = request("GET", "/x", Version::HTTP_11, &[]);
                    request.headers_mut().insert(HOST, value);
                    if let Err(err) = check(&request) {
                        prop_assert_eq!(err.status().0, http::StatusCode::BAD_REQUEST);
                    }
                }
            }

            /// DNS names and IPv4 addresses, with or without a port, pass.
            #[test]
            fn host_names_with_ports_pass(
                labels in prop::collection::vec("[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?", 1..5),
                port in prop::option::of(any::<u16>()),
            ) {
                let mut host = labels.join(".");
                if let Some(port) = port {
                    host = format!("{host}:{port}");
                }
                let request = request("GET", "/x", Version::HTTP_11, &[host.as_bytes()]);
                prop_assert!(check(&request).is_ok(), "{}", host);
            }
        }
    }
}
