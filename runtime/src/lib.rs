//! Process plumbing shared by the mesh's own binaries (`mesh-proxy`,
//! `mesh-controller`, `mesh-dashboard`): logging set-up, shutdown signals,
//! how a fatal error ends the process, duration flags and the TLS crypto
//! provider; with the
//! `test-util` feature, what tests share: [`netns`] (network namespaces),
//! [`test_http`] (an HTTP client) and [`test_ports`] (ports for children). The demo
//! apps keep their own copies: they stand for any user's app and depend on
//! nothing of the mesh.

#[cfg(feature = "test-util")]
pub mod netns;
#[cfg(feature = "test-util")]
pub mod test_http;
#[cfg(feature = "test-util")]
pub mod test_ports;

/// The crypto provider every TLS configuration of the mesh uses (ring):
/// chosen here once, for the proxy and the control plane alike.
pub fn tls_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

use std::{future::Future, io::IsTerminal as _, process::ExitCode, time::Duration};

/// glibc's malloc keeps memory freed in a burst (thousands of held streams
/// reset at once, a large scrape parsed) for reuse, so the process's
/// resident size stays at its peak; every 10 s it is asked to return free
/// pages to the system (in the container images too: their binaries link
/// glibc statically, docker/binaries.sh). Elsewhere this waits forever.
/// Trimming a heap of a sidecar's size takes well under a millisecond.
pub async fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let mut every = tokio::time::interval(Duration::from_secs(10));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            trim();
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    std::future::pending::<()>().await;
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // One foreign call, with no pointer passed.
fn trim() {
    // SAFETY: malloc_trim only releases memory malloc holds free; it
    // touches no memory the program owns.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Whether a presented secret (a token, a credential) is the expected
/// one, compared in full whatever the first difference, so the time taken
/// tells nothing about it.
pub fn same_secret(presented: &[u8], expected: &[u8]) -> bool {
    presented.len() == expected.len()
        && presented
            .iter()
            .zip(expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

/// `bytes` random bytes from the kernel, as hex: a token or credential
/// nobody guesses.
pub fn random_hex(bytes: usize) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut random = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
    Ok(random.iter().map(|b| format!("{b:02x}")).collect())
}

/// Runs `main` and turns its outcome into an exit code. A fatal error is
/// printed as one line with its causes, prefixed with the binary's name;
/// never a panic or a backtrace, since it is for the person who started it.
pub fn exit(binary: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{binary}: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line: many libraries' errors say little
/// at the top ("client error (Connect)") and the reason underneath.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Logs to stderr. `RUST_LOG` wins; otherwise `info` for `crate_name` and
/// `warn` for everything else. Colours only on a terminal.
pub fn init_tracing(crate_name: &str) {
    init_tracing_with(crate_name, &[]);
}

/// As [`init_tracing`], with more default directives (`target=level`) for
/// libraries that would otherwise say too much; `RUST_LOG` still wins.
pub fn init_tracing_with(crate_name: &str, directives: &[&str]) {
    let mut default = format!("warn,{crate_name}=info");
    for directive in directives {
        default.push(',');
        default.push_str(directive);
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Registers SIGINT and SIGTERM handlers now, before anything is served, so
/// a signal that arrives early still drains instead of killing the process;
/// the returned future completes on the first of them.
pub fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    use anyhow::Context as _;
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// Parses `250ms`, `10s`, `2m`, `24h` or a bare number of seconds, for clap's
/// `value_parser`.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{value:?} is not a duration like 250ms, 10s or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "" | "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number * 60)),
        "h" => Ok(Duration::from_secs(number * 3600)),
        _ => Err(format!("{value:?} has unit {unit:?}; use ms, s, m or h")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("ten").is_err());
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn secrets_match_only_in_full() {
        assert!(same_secret(b"token", b"token"));
        assert!(!same_secret(b"tokem", b"token"));
        assert!(!same_secret(b"toke", b"token"));
        assert!(!same_secret(b"", b"token"));
    }
}
