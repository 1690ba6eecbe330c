//! Command-line flags and environment variables of the `stockdata` binary,
//! parsed into a checked [`Config`]. Nothing is bound or started here.

use std::{net::SocketAddr, time::Duration};

/// The StockData demo gRPC service: serves NASDAQ-100 stocks and names the
/// replica that answered in a `server-id` response header.
#[derive(Debug, clap::Parser)]
#[command(name = "stockdata", version)]
pub struct Args {
    /// Address to listen on. Port 80 is what the original sample's container
    /// used. Several, comma-separated or with the flag repeated, are served
    /// alike (the benchmarks put many endpoints on one replica this way).
    #[arg(
        long,
        env = "STOCKDATA_LISTEN",
        default_value = "0.0.0.0:80",
        value_delimiter = ','
    )]
    pub listen: Vec<SocketAddr>,

    /// Replica id sent in the `server-id` header. Default: the hostname plus a
    /// short random suffix, fixed for the life of the process.
    #[arg(long, env = "STOCKDATA_SERVER_ID")]
    pub server_id: Option<String>,

    /// Demo fault: wait this many milliseconds before answering each call.
    #[arg(
        long = "delay",
        env = "STOCKDATA_DELAY_MS",
        default_value_t = 0,
        value_name = "MS"
    )]
    pub delay_ms: u64,

    /// Demo fault: fail this share of calls (0.0 to 1.0) with UNAVAILABLE.
    #[arg(
        long,
        env = "STOCKDATA_FAIL_RATE",
        default_value_t = 0.0,
        value_name = "F"
    )]
    pub fail_rate: f64,
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// At least one address.
    pub listen: Vec<SocketAddr>,
    pub server_id: String,
    pub faults: Faults,
}

/// Artificial faults for demos; both off by default.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// Added before each answer.
    pub delay: Duration,
    /// Share of calls, from 0.0 to 1.0, that fail with UNAVAILABLE.
    pub fail_rate: f64,
}

/// A flag value that parses but makes no sense.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--fail-rate (STOCKDATA_FAIL_RATE) must be between 0.0 and 1.0, got {0}")]
    FailRate(f64),
    #[error("--server-id (STOCKDATA_SERVER_ID) must be printable ASCII without spaces, got {0:?}")]
    ServerId(String),
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(args: Args) -> Result<Self, Self::Error> {
        // `contains` is false for NaN too, which must be refused as well.
        if !(0.0..=1.0).contains(&args.fail_rate) {
            return Err(ConfigError::FailRate(args.fail_rate));
        }
        let server_id = match args.server_id {
            Some(id) if is_valid_server_id(&id) => id,
            Some(id) => return Err(ConfigError::ServerId(id)),
            None => default_server_id(),
        };
        Ok(Config {
            listen: args.listen,
            server_id,
            faults: Faults {
                delay: Duration::from_millis(args.delay_ms),
                fail_rate: args.fail_rate,
            },
        })
    }
}

/// The id goes into an HTTP header value and is shown in tables, so it is
/// kept to visible ASCII.
fn is_valid_server_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 253 && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Hostname plus four random characters, so two replicas on one host (the
/// local demo) still differ while a pod's id stays recognisable.
pub fn default_server_id() -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let host: String = host.chars().filter(|c| c.is_ascii_graphic()).collect();
    let host = if host.is_empty() {
        "stockdata".to_owned()
    } else {
        host
    };
    let suffix: String = std::iter::repeat_with(fastrand::alphanumeric)
        .take(4)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    format!("{host}-{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let args = Args::try_parse_from(std::iter::once("stockdata").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Config::try_from(args).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_match_the_original_container() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.listen, ["0.0.0.0:80".parse().unwrap()]);
        assert_eq!(config.faults, Faults::default());
        assert!(
            is_valid_server_id(&config.server_id),
            "{}",
            config.server_id
        );
    }

    #[test]
    fn flags_set_every_field() {
        let config = parse(&[
            "--listen",
            "127.0.0.1:5000",
            "--server-id",
            "replica-a",
            "--delay",
            "250",
            "--fail-rate",
            "0.5",
        ])
        .unwrap();
        assert_eq!(config.listen, ["127.0.0.1:5000".parse().unwrap()]);
        assert_eq!(config.server_id, "replica-a");
        assert_eq!(config.faults.delay, Duration::from_millis(250));
        assert_eq!(config.faults.fail_rate, 0.5);
    }

    #[test]
    fn bad_values_name_their_flag() {
        let err = parse(&["--fail-rate", "1.5"]).unwrap_err();
        assert!(err.contains("--fail-rate") && err.contains("1.5"), "{err}");
        let err = parse(&["--fail-rate", "NaN"]).unwrap_err();
        assert!(err.contains("--fail-rate"), "{err}");
        let config = parse(&[
            "--listen",
            "127.0.0.1:5000,127.0.0.1:5001",
            "--listen",
            "[::1]:5002",
        ])
        .unwrap();
        assert_eq!(config.listen.len(), 3, "{:?}", config.listen);
        let err = parse(&["--listen", "nowhere"]).unwrap_err();
        assert!(err.contains("--listen"), "{err}");
        let err = parse(&["--server-id", "a b"]).unwrap_err();
        assert!(err.contains("--server-id"), "{err}");
        let err = parse(&["--bogus"]).unwrap_err();
        assert!(err.contains("--bogus"), "{err}");
    }

    #[test]
    fn default_ids_differ_between_processes_on_one_host() {
        let a = default_server_id();
        let b = default_server_id();
        assert!(is_valid_server_id(&a), "{a}");
        // Four random characters from 36: a collision here is 1 in 1.7 million.
        assert_ne!(a, b);
    }
}
