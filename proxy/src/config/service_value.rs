//! `SERVICE=VALUE`: the one shape of every per-service flag (`--outbound`,
//! `--discover`, `--timeout`, `--retry-on`), parsed through one
//! [`FromStr`](std::str::FromStr) type, and the values only those flags take.

use mesh_runtime::parse_duration;
use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

/// One per-service flag value: the service's name and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceValue<T> {
    pub service: String,
    pub value: T,
}

impl<T> FromStr for ServiceValue<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    type Err = String;

    fn from_str(entry: &str) -> Result<Self, String> {
        let (service, value) = entry
            .split_once('=')
            .ok_or_else(|| format!("expected SERVICE=VALUE, got {entry:?}"))?;
        check_service_name(service)?;
        let value = value
            .parse()
            .map_err(|e| format!("{service}: {value:?}: {e}"))?;
        Ok(Self {
            service: service.to_owned(),
            value,
        })
    }
}

/// A service (or workload) name: letters, digits, `-`, `.`, `_`.
pub fn check_service_name(service: &str) -> Result<(), String> {
    let ok = !service.is_empty()
        && service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{service:?} is not a service name (letters, digits, '-', '.', '_')"
        ))
    }
}

/// A request timeout: a duration of more than zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout(pub Duration);

impl FromStr for Timeout {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let duration = parse_duration(text)?;
        if duration.is_zero() {
            return Err("a timeout must be more than zero".into());
        }
        Ok(Self(duration))
    }
}

/// Where one service's endpoints come from: `static:ADDR[;ADDR...]`,
/// `dns:HOST:PORT` or `destination`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoverySpec {
    Static(Vec<SocketAddr>),
    Dns { host: String, port: u16 },
    Destination,
}

impl FromStr for DiscoverySpec {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        if spec == "destination" {
            return Ok(DiscoverySpec::Destination);
        }
        if let Some(list) = spec.strip_prefix("static:") {
            let addrs = list
                .split(';')
                .filter(|s| !s.is_empty())
                .map(|a| {
                    a.parse()
                        .map_err(|_| format!("{a:?} is not an ip:port address"))
                })
                .collect::<Result<Vec<SocketAddr>, _>>()?;
            if addrs.is_empty() {
                return Err("static: needs at least one address".into());
            }
            return Ok(DiscoverySpec::Static(addrs));
        }
        if let Some(target) = spec.strip_prefix("dns:") {
            let (host, port) = target
                .rsplit_once(':')
                .ok_or_else(|| format!("dns:{target} needs HOST:PORT"))?;
            let port = port
                .parse()
                .map_err(|_| format!("{port:?} is not a port"))?;
            if host.is_empty() {
                return Err(format!("dns:{target} has no host"));
            }
            return Ok(DiscoverySpec::Dns {
                host: host.to_owned(),
                port,
            });
        }
        Err("not static:..., dns:HOST:PORT or destination".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_per_service_flag_shares_one_shape() {
        let addr: ServiceValue<SocketAddr> = "stockdata=127.0.0.1:4140".parse().unwrap();
        assert_eq!(addr.service, "stockdata");
        assert_eq!(addr.value, "127.0.0.1:4140".parse().unwrap());
        let timeout: ServiceValue<Timeout> = "web=250ms".parse().unwrap();
        assert_eq!(timeout.value, Timeout(Duration::from_millis(250)));
        let spec: ServiceValue<DiscoverySpec> = "s=dns:stockdata:80".parse().unwrap();
        assert_eq!(
            spec.value,
            DiscoverySpec::Dns {
                host: "stockdata".into(),
                port: 80
            }
        );
    }

    #[test]
    fn a_bad_entry_says_what_is_wrong_with_it() {
        let err = |entry: &str| entry.parse::<ServiceValue<SocketAddr>>().unwrap_err();
        assert!(err("stockdata").contains("expected SERVICE=VALUE"));
        assert!(err("stock data=127.0.0.1:1").contains("not a service name"));
        assert!(err("stockdata=nowhere").contains(r#"stockdata: "nowhere""#));
        let timeout = "web=0ms".parse::<ServiceValue<Timeout>>().unwrap_err();
        assert!(timeout.contains("more than zero"), "{timeout}");
        for spec in ["static:", "static:x", "dns:host", "dns::80", "pigeon"] {
            assert!(spec.parse::<DiscoverySpec>().is_err(), "{spec}");
        }
    }
}
