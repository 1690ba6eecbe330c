//! `meshctl identity ADMIN-ADDR`: a proxy's identity, when its certificate
//! expires, and the chain it presents (PEM, which `openssl x509` and
//! `openssl verify` read), from its admin server's `/identity`.

use anyhow::Context as _;
use std::{
    net::SocketAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

#[derive(Debug, clap::Args)]
pub struct IdentityArgs {
    /// The proxy's admin address, e.g. 127.0.0.1:4191 (through
    /// `kubectl port-forward POD 4191` in a cluster).
    #[arg(value_name = "ADMIN-ADDR")]
    admin: SocketAddr,
}

#[derive(Debug, serde::Deserialize)]
struct IdentityView {
    identity: String,
    valid_until: u64,
    certificate_chain: String,
}

pub fn main(args: IdentityArgs) -> anyhow::Result<()> {
    let body = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(crate::demo::http_get(
            args.admin,
            stockkube_proto::admin::IDENTITY,
        ))?;
    let view: IdentityView = serde_json::from_str(&body)
        .with_context(|| format!("{} answered no identity document", args.admin))?;
    print!("{}", render(&view, SystemTime::now()));
    Ok(())
}

fn render(view: &IdentityView, now: SystemTime) -> String {
    let until = UNIX_EPOCH + Duration::from_secs(view.valid_until);
    let left = match until.duration_since(now) {
        Ok(left) => format!("in {}", human(left)),
        Err(past) => format!("EXPIRED {} ago", human(past.duration())),
    };
    let certificates = view
        .certificate_chain
        .matches("-----BEGIN CERTIFICATE-----")
        .count();
    format!(
        "identity      {}\nexpires       {} ({left})\nchain         {certificates} certificates: the proxy's, then its issuer's\n{}",
        view.identity,
        httpdate::fmt_http_date(until),
        view.certificate_chain
    )
}

/// `1d 2h`, `3h 4m`, `5m 6s`, `7s`.
fn human(duration: Duration) -> String {
    let secs = duration.as_secs();
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_says_who_until_when_and_the_chain_follows() {
        let view = IdentityView {
            identity: "spiffe://cluster.local/ns/demo/sa/stockdata".into(),
            valid_until: 1_000_000 + 3 * 3600 + 5 * 60,
            certificate_chain: "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----\n".into(),
        };
        let text = render(&view, UNIX_EPOCH + Duration::from_secs(1_000_000));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "identity      spiffe://cluster.local/ns/demo/sa/stockdata"
        );
        assert_eq!(
            lines[1],
            "expires       Mon, 12 Jan 1970 16:51:40 GMT (in 3h 5m)"
        );
        assert!(lines[2].starts_with("chain         2 certificates"));
        assert!(text.ends_with(&view.certificate_chain));
        let late = render(
            &view,
            UNIX_EPOCH + Duration::from_secs(1_000_000 + 4 * 3600),
        );
        assert!(late.contains("(EXPIRED 55m 0s ago)"), "{late}");
    }
}
