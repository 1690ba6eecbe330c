//! Command-line flags and environment variables of the `stockweb` binary,
//! parsed into a checked [`Config`]. Nothing is bound or connected here.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// The StockWeb demo front end: one page makes 100 concurrent StockData calls
/// over a single gRPC channel and shows which server answered each.
#[derive(Debug, clap::Parser)]
#[command(name = "stockweb", version)]
pub struct Args {
    /// Address to listen on for HTTP.
    #[arg(long, env = "STOCKWEB_LISTEN", default_value = "0.0.0.0:80")]
    pub listen: SocketAddr,

    /// StockData's address, an http:// URL (the original sample's
    /// StockData__Address). Resolved and connected once, then reused.
    #[arg(
        long,
        env = "STOCKDATA_ADDRESS",
        default_value = "http://stockdata",
        value_name = "URL"
    )]
    pub stockdata_address: String,

    /// Deadline for each StockData call, in milliseconds.
    #[arg(
        long = "call-timeout",
        env = "STOCKWEB_CALL_TIMEOUT_MS",
        default_value_t = 5000,
        value_name = "MS"
    )]
    pub call_timeout_ms: u64,

    /// Directory of the stylesheet and other static files.
    #[arg(long, env = "STOCKWEB_ASSETS_DIR", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/assets"))]
    pub assets_dir: PathBuf,
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub stockdata_address: http::Uri,
    pub call_timeout: Duration,
    pub assets_dir: PathBuf,
}

/// A flag value that parses as a string but not as what it names.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--stockdata-address (STOCKDATA_ADDRESS) {value:?} is not a URL: {reason}")]
    Address { value: String, reason: String },
    #[error("--call-timeout (STOCKWEB_CALL_TIMEOUT_MS) must be at least 1, got 0")]
    ZeroTimeout,
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(args: Args) -> Result<Self, Self::Error> {
        if args.call_timeout_ms == 0 {
            return Err(ConfigError::ZeroTimeout);
        }
        Ok(Config {
            listen: args.listen,
            stockdata_address: parse_address(&args.stockdata_address)?,
            call_timeout: Duration::from_millis(args.call_timeout_ms),
            assets_dir: args.assets_dir,
        })
    }
}

/// Accepts `http://host[:port][/]`: the sample's form. TLS between pods is
/// the mesh's job, so `https` is refused rather than half-supported.
fn parse_address(value: &str) -> Result<http::Uri, ConfigError> {
    let refuse = |reason: &str| ConfigError::Address {
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: http::Uri = value
        .parse()
        .map_err(|e: http::uri::InvalidUri| refuse(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(refuse(&format!(
                "scheme {other:?} is not supported, use http://"
            )));
        }
        None => {
            return Err(refuse(
                "it needs a scheme and a host, like http://stockdata:80",
            ));
        }
    }
    match uri.authority() {
        Some(authority) if !authority.host().is_empty() => {}
        _ => return Err(refuse("it has no host")),
    }
    if !matches!(uri.path(), "" | "/") {
        return Err(refuse("a path is not supported"));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let args = Args::try_parse_from(std::iter::once("stockweb").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Config::try_from(args).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_follow_the_sample() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.stockdata_address, "http://stockdata/");
        assert_eq!(config.listen, "0.0.0.0:80".parse().unwrap());
        assert_eq!(config.call_timeout, Duration::from_secs(5));
        assert!(config.assets_dir.join("site.css").exists());
    }

    #[test]
    fn accepts_hosts_ports_and_ips() {
        for address in [
            "http://stockdata",
            "http://stockdata:5000",
            "http://127.0.0.1:4140/",
            "http://[::1]:80",
        ] {
            parse(&["--stockdata-address", address]).unwrap_or_else(|e| panic!("{address}: {e}"));
        }
    }

    #[test]
    fn refuses_what_is_not_an_http_url_and_names_the_flag() {
        for address in [
            "::not a url",
            "stockdata:80",
            "https://stockdata",
            "ftp://stockdata",
            "http://stockdata/api",
            "http://",
            "",
        ] {
            let err = parse(&["--stockdata-address", address]).unwrap_err();
            assert!(
                err.contains("--stockdata-address") && err.contains("STOCKDATA_ADDRESS"),
                "{address}: {err}"
            );
        }
    }

    #[test]
    fn refuses_a_zero_timeout() {
        let err = parse(&["--call-timeout", "0"]).unwrap_err();
        assert!(err.contains("--call-timeout"), "{err}");
    }
}
