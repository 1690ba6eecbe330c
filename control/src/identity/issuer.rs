//! The mesh's certificate authority: a trust anchor (the root every proxy
//! trusts) and an issuer it signed, whose key signs the proxies'
//! certificates. Both keys stay in the controller's memory; the issuer's is
//! read from a file (a mounted Secret) or made here.

use super::{IdentityError, SpiffeId};
use crate::tls::BACKDATE;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer as Signer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::CertificateSigningRequestDer;
use std::{path::Path, time::Duration};
use time::OffsetDateTime;

/// The trust anchor and the issuer, as PEM: what a set-up writes for the
/// controller (`issuer.crt`, `issuer.key`) and gives every proxy (`ca.crt`).
#[derive(Debug, Clone)]
pub struct Authority {
    pub trust_anchor_pem: String,
    pub issuer_pem: String,
    pub issuer_key_pem: String,
}

impl Authority {
    /// A new trust anchor and an issuer it signed (ECDSA P-256), valid for
    /// `valid_for`. The anchor's key is dropped: only the issuer signs.
    pub fn generate(trust_domain: &str, valid_for: Duration) -> Result<Self, IdentityError> {
        let now = OffsetDateTime::now_utc();
        let ca = |name: String| {
            let mut params = CertificateParams::default();
            params.distinguished_name = DistinguishedName::new();
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params.not_before = now - BACKDATE;
            params.not_after = now + valid_for;
            params
        };
        let anchor_key = KeyPair::generate()?;
        let anchor = ca(format!("root.{trust_domain}"));
        let anchor_cert = anchor.self_signed(&anchor_key)?;
        let issuer_key = KeyPair::generate()?;
        let issuer = ca(format!("issuer.{trust_domain}"));
        let issuer_cert = issuer.signed_by(&issuer_key, &Signer::new(anchor, anchor_key))?;
        Ok(Self {
            trust_anchor_pem: anchor_cert.pem(),
            issuer_pem: issuer_cert.pem(),
            issuer_key_pem: issuer_key.serialize_pem(),
        })
    }

    /// Writes `ca.crt`, `issuer.crt` and `issuer.key` (its owner's alone)
    /// into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("ca.crt"), &self.trust_anchor_pem)?;
        std::fs::write(dir.join("issuer.crt"), &self.issuer_pem)?;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dir.join("issuer.key"))?
            .write_all(self.issuer_key_pem.as_bytes())
    }

    /// Reads what [`write`](Self::write) wrote.
    pub fn read(dir: &Path) -> Result<Self, IdentityError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path)
                .map_err(|e| IdentityError::Setup(format!("cannot read {}: {e}", path.display())))
        };
        Ok(Self {
            trust_anchor_pem: read("ca.crt")?,
            issuer_pem: read("issuer.crt")?,
            issuer_key_pem: read("issuer.key")?,
        })
    }
}

/// Signs proxies' certificates with the issuer's key.
pub struct Issuer {
    signer: Signer<'static, KeyPair>,
    issuer_pem: String,
    lifetime: Duration,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// The issuer of `authority`, signing certificates valid for `lifetime`.
    pub fn new(authority: &Authority, lifetime: Duration) -> Result<Self, IdentityError> {
        let key = KeyPair::from_pem(&authority.issuer_key_pem)
            .map_err(|e| IdentityError::Setup(format!("the issuer's key: {e}")))?;
        let signer = Signer::from_ca_cert_pem(&authority.issuer_pem, key)
            .map_err(|e| IdentityError::Setup(format!("the issuer's certificate: {e}")))?;
        Ok(Self {
            signer,
            issuer_pem: authority.issuer_pem.clone(),
            lifetime,
        })
    }

    /// A certificate for `identity` and the key of `csr` (whose signature
    /// proves the caller holds that key): the chain (leaf, issuer) as PEM
    /// and when it expires. Nothing the request asks for but its key is
    /// used: the name, the validity and the usages are the issuer's.
    pub fn certify(&self, csr: &[u8], identity: &SpiffeId) -> Result<(String, i64), IdentityError> {
        let request =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr))
                .map_err(|e| {
                    IdentityError::BadRequest(format!("the certificate signing request: {e}"))
                })?;
        let uri = identity
            .to_string()
            .try_into()
            .map_err(|e| IdentityError::BadRequest(format!("{identity} as a URI name: {e}")))?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        // The URI names the identity (SPIFFE); the DNS name is what TLS
        // clients check against the server name they asked for.
        let dns = identity
            .dns_name()
            .try_into()
            .map_err(|e| IdentityError::BadRequest(format!("{identity} as a DNS name: {e}")))?;
        params.subject_alt_names = vec![SanType::URI(uri), SanType::DnsName(dns)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = now - BACKDATE;
        params.not_after = now + self.lifetime;
        let request = CertificateSigningRequestParams {
            params,
            public_key: request.public_key,
        };
        let certificate = request.signed_by(&self.signer)?;
        Ok((
            format!("{}{}", certificate.pem(), self.issuer_pem),
            (now + self.lifetime).unix_timestamp(),
        ))
    }
}
