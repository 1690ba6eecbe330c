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

#[test]
fn inbound_policies_per_port_and_what_they_need() {
    let identity = [
        "--inbound",
        "127.0.0.1:4143",
        "--destination",
        "http://127.0.0.1:8086",
        "--identity",
        "spiffe://cluster.local/ns/stocks/sa/stockdata",
        "--identity-token-file",
        "/var/run/token",
        "--identity-trust-anchors",
        "/var/run/ca.crt",
    ];
    let with = |extra: &[&str]| parse(&[&identity[..], extra].concat());
    let config = with(&[
        "--inbound-policy",
        "all-authenticated",
        "--inbound-port-policy",
        "9090=all-unauthenticated",
        "--inbound-port-policy",
        "8080=deny",
    ])
    .unwrap();
    assert_eq!(config.inbound_policy.default, Policy::AllAuthenticated);
    assert_eq!(
        config.inbound_policy.for_port(9090),
        &Policy::AllUnauthenticated
    );
    assert_eq!(config.inbound_policy.for_port(8080), &Policy::Deny);

    let err = with(&["--inbound-port-policy", "0=deny"]).unwrap_err();
    assert!(err.starts_with("--inbound-port-policy"), "{err}");
    let err = with(&["--inbound-port-policy", "1=deny;1=deny"]).unwrap_err();
    assert!(err.contains("twice"), "{err}");
    let err = with(&["--inbound-policy", "everyone"]).unwrap_err();
    assert!(err.starts_with("--inbound-policy"), "{err}");

    // Without an identity there is no mTLS to require.
    let err = parse(&[
        "--inbound",
        "127.0.0.1:4143",
        "--inbound-policy",
        "all-authenticated",
    ])
    .unwrap_err();
    assert!(err.contains("needs --identity"), "{err}");
    let err = parse(&identity[..8]).unwrap_err();
    assert!(err.starts_with("--identity-trust-anchors"), "{err}");
    let pem = "-----BEGIN CERTIFICATE-----...";
    let config = parse(&[&identity[..8], &["--identity-trust-anchors-pem", pem]].concat()).unwrap();
    assert_eq!(
        config.identity.unwrap().trust_anchors,
        crate::identity::TrustAnchors::Pem(pem.into())
    );
}
