use super::{issuer::Authority, *};
use std::{collections::HashMap, time::Duration};
use x509_parser::{extensions::GeneralName, pem::Pem, prelude::*};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn id(text: &str) -> SpiffeId {
    text.parse().unwrap()
}

fn csr() -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    rcgen::CertificateParams::new(vec!["ignored.example".to_owned()])
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec()
}

fn pems(text: &str) -> Vec<Pem> {
    Pem::iter_from_buffer(text.as_bytes())
        .map(|p| p.unwrap())
        .collect()
}

#[test]
fn spiffe_ids_read_and_write_the_same() {
    let text = "spiffe://cluster.local/ns/stocks/sa/stockweb";
    assert_eq!(id(text).to_string(), text);
    for bad in [
        "",
        "spiffe://cluster.local/ns/stocks",
        "https://cluster.local/ns/stocks/sa/web",
        "spiffe://cluster.local/ns/Stocks/sa/web",
        "spiffe://cluster.local/ns/stocks/sa/web/more",
        "spiffe:///ns/a/sa/b",
    ] {
        assert!(
            matches!(bad.parse::<SpiffeId>(), Err(IdentityError::BadRequest(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn the_issuer_names_only_the_identity_for_the_lifetime_and_chains_to_the_anchor() {
    let authority = Authority::generate("cluster.local", 365 * DAY).unwrap();
    let issuer = issuer::Issuer::new(&authority, Duration::from_secs(10)).unwrap();
    let identity = id("spiffe://cluster.local/ns/stocks/sa/stockweb");
    let (chain, valid_until) = issuer.certify(&csr(), &identity).unwrap();
    let chain = pems(&chain);
    assert_eq!(chain.len(), 2, "the leaf, then the issuer");
    let leaf = chain[0].parse_x509().unwrap();
    let issuer_cert = chain[1].parse_x509().unwrap();
    let anchor = pems(&authority.trust_anchor_pem)[0].contents.clone();
    let (_, anchor) = X509Certificate::from_der(&anchor).unwrap();

    let names: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::URI(uri) => uri.to_string(),
            GeneralName::DNSName(dns) => dns.to_string(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        names,
        [identity.to_string(), identity.dns_name()],
        "what the request asked for is not used"
    );
    assert!(!leaf.is_ca());
    assert_eq!(leaf.validity().not_after.timestamp(), valid_until);
    let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert_eq!(
        lifetime,
        10 + 60,
        "10 s, backdated by a minute for clock skew"
    );
    leaf.verify_signature(Some(issuer_cert.public_key()))
        .unwrap();
    issuer_cert
        .verify_signature(Some(anchor.public_key()))
        .unwrap();
    assert!(leaf.verify_signature(Some(anchor.public_key())).is_err());
}

#[test]
fn a_request_that_is_no_csr_or_not_signed_by_its_key_is_refused() {
    let authority = Authority::generate("cluster.local", DAY).unwrap();
    let issuer = issuer::Issuer::new(&authority, DAY).unwrap();
    let identity = id("spiffe://cluster.local/ns/a/sa/b");
    let mut tampered = csr();
    let last = tampered.len() - 5;
    tampered[last] ^= 0xff;
    for bad in [b"garbage".to_vec(), Vec::new(), tampered] {
        assert!(matches!(
            issuer.certify(&bad, &identity),
            Err(IdentityError::BadRequest(_))
        ));
    }
}

#[tokio::test]
async fn a_credential_proves_one_identity_in_one_trust_domain() {
    let authority = Authority::generate("cluster.local", DAY).unwrap();
    let service = IdentityService::new(
        "cluster.local",
        issuer::Issuer::new(&authority, DAY).unwrap(),
        credentials::Credentials::Bootstrap(HashMap::from([(
            "0123456789abcdef-stockweb".to_owned(),
            ("stocks".to_owned(), "stockweb".to_owned()),
        )])),
    );
    let request = |identity: &str, token: &str| CertifyRequest {
        identity: identity.into(),
        token: token.into(),
        certificate_signing_request: csr(),
    };
    let web = "spiffe://cluster.local/ns/stocks/sa/stockweb";
    assert!(
        service
            .certify(&request(web, "0123456789abcdef-stockweb"))
            .await
            .is_ok()
    );
    let refused = [
        (request(web, "wrong"), "unauthenticated"),
        (request(web, ""), "unauthenticated"),
        (
            request(
                "spiffe://cluster.local/ns/stocks/sa/stockdata",
                "0123456789abcdef-stockweb",
            ),
            "denied",
        ),
        (
            request(
                "spiffe://elsewhere/ns/stocks/sa/stockweb",
                "0123456789abcdef-stockweb",
            ),
            "bad",
        ),
    ];
    for (request, expected) in refused {
        let err = service.certify(&request).await.unwrap_err();
        let kind = match err {
            IdentityError::Unauthenticated(_) => "unauthenticated",
            IdentityError::Denied(_) => "denied",
            IdentityError::BadRequest(_) => "bad",
            other => panic!("{other}"),
        };
        assert_eq!(kind, expected, "{}", request.identity);
    }
}
