//! The route stage: which of the proxy's services a request is for. The
//! one its `:authority` (HTTP/2) or `Host` (HTTP/1) names, when the proxy
//! knows that service; else the service of the listener it came in on.
//! Host names compare without regard to case, as DNS names do (service
//! names are kept lowercase, see `config`).

use std::sync::Arc;

/// The host a request names, without its port.
pub fn host<B>(request: &http::Request<B>) -> Option<&str> {
    request.uri().host().or_else(|| {
        request
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| h.rsplit_once(':').map_or(h, |(host, _)| host))
    })
}

/// The service `request` goes to: the named one if known, else `target`.
pub fn route<'a, S, B>(
    services: &'a foldhash::HashMap<Arc<str>, Arc<S>>,
    request: &http::Request<B>,
    target: &'a Arc<S>,
) -> &'a Arc<S> {
    host(request)
        .and_then(|host| {
            if host.bytes().any(|b| b.is_ascii_uppercase()) {
                services.get(host.to_ascii_lowercase().as_str())
            } else {
                services.get(host)
            }
        })
        .unwrap_or(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services() -> foldhash::HashMap<Arc<str>, Arc<String>> {
        ["stockdata", "web"]
            .into_iter()
            .map(|name| (name.into(), Arc::new(name.to_owned())))
            .collect()
    }

    fn request(uri: &str, host: Option<&str>) -> http::Request<()> {
        let mut builder = http::Request::builder().uri(uri);
        if let Some(host) = host {
            builder = builder.header("host", host);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn the_authority_or_host_names_the_service() {
        let services = services();
        let target = Arc::new("listener's".to_owned());
        let to = |uri, host| route(&services, &request(uri, host), &target).to_string();
        // HTTP/2: :authority, with or without a port.
        assert_eq!(to("http://web/x", None), "web");
        assert_eq!(to("http://web:8080/x", None), "web");
        // HTTP/1: origin-form path and a Host header.
        assert_eq!(to("/x", Some("web:80")), "web");
        assert_eq!(to("/x", Some("stockdata")), "stockdata");
        // Host names have no case.
        assert_eq!(to("http://WEB:8080/x", None), "web");
        assert_eq!(to("/x", Some("StockData")), "stockdata");
    }

    #[test]
    fn an_unknown_or_missing_name_stays_on_the_listeners_service() {
        let services = services();
        let target = Arc::new("listener's".to_owned());
        let to = |uri, host| route(&services, &request(uri, host), &target).to_string();
        assert_eq!(to("http://127.0.0.1:4140/x", None), "listener's");
        assert_eq!(to("/x", Some("elsewhere")), "listener's");
        assert_eq!(to("/x", None), "listener's");
    }
}
