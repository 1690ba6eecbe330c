//! Flags parsed into a checked configuration, and bad values refused.
use super::*;
use clap::Parser;

fn parse(args: &[&str]) -> Result<Config, String> {
    let args = Args::try_parse_from(std::iter::once("mesh-proxy").chain(args.iter().copied()))
        .map_err(|e| e.to_string())?;
    Config::try_from(args).map_err(|e| e.to_string())
}

#[test]
fn outbound_with_static_discovery() {
    let config = parse(&[
        "--outbound",
        "stockdata=127.0.0.1:4140",
        "--discover",
        "stockdata=static:127.0.0.1:1;127.0.0.1:2",
    ])
    .unwrap();
    assert_eq!(
        config.outbound,
        [("stockdata".into(), "127.0.0.1:4140".parse().unwrap())]
    );
    assert_eq!(
        config.discovery["stockdata"],
        DiscoverySpec::Static(vec![
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap()
        ])
    );
    assert_eq!(config.balancer.strategy, BalanceStrategy::P2cEwma);
}

#[test]
fn outbound_defaults_to_the_destination_api() {
    let config = parse(&[
        "--outbound",
        "stockdata=127.0.0.1:4140",
        "--destination",
        "http://127.0.0.1:8086",
        "--discover",
        "other=dns:stockdata:80",
    ])
    .unwrap();
    assert_eq!(config.discovery["stockdata"], DiscoverySpec::Destination);
    assert_eq!(
        config.discovery["other"],
        DiscoverySpec::Dns {
            host: "stockdata".into(),
            port: 80
        }
    );
}

#[test]
fn bad_values_name_their_flag() {
    for (args, flag) in [
        (&["--outbound", "stockdata"][..], "--outbound"),
        (&["--outbound", "stockdata=nowhere"][..], "--outbound"),
        (&["--outbound", "s=127.0.0.1:1"][..], "--discover"),
        (
            &[
                "--outbound",
                "s=127.0.0.1:1",
                "--discover",
                "s=carrier-pigeon",
            ][..],
            "--discover",
        ),
        (
            &["--outbound", "s=127.0.0.1:1", "--discover", "s=destination"][..],
            "--discover",
        ),
        (
            &["--outbound", "s=127.0.0.1:1", "--destination", "grpc://x"][..],
            "--destination",
        ),
        (&["--app", "127.0.0.1:1"][..], "--inbound"),
        (
            &["--outbound-transparent", "127.0.0.1:4140"][..],
            "--destination",
        ),
        (&["--balance", "random"][..], "--balance"),
        (
            &[
                "--outbound",
                "s=127.0.0.1:1",
                "--discover",
                "s=static:127.0.0.1:2",
                "--timeout",
                "s=soon",
            ][..],
            "--timeout",
        ),
        (
            &[
                "--outbound",
                "s=127.0.0.1:1",
                "--discover",
                "s=static:127.0.0.1:2",
                "--timeout",
                "s=0ms",
            ][..],
            "--timeout",
        ),
        (&["--detect-timeout", "soon"][..], "--detect-timeout"),
        (&["--retry-on", "s=sometimes"][..], "--retry-on"),
        (&["--retry-on", "s"][..], "--retry-on"),
        (&["--retry-attempts", "0"][..], "--retry-attempts"),
        (&["--retry-budget-ratio", "20"][..], "--retry-budget-ratio"),
        (&["--max-header-bytes", "10"][..], "--max-header-bytes"),
        (&["--max-connections", "0"][..], "--max-connections"),
        (
            &["--header-read-timeout", "0s"][..],
            "--header-read-timeout",
        ),
        (&[][..], "nothing to proxy"),
    ] {
        let err = parse(args).unwrap_err();
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}
