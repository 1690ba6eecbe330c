//! TLS for the control plane: the one crypto provider (ring), the
//! injector's certificates (a fresh CA per install, issued with `rcgen`),
//! a serving certificate reloaded from files when they change, and the
//! checks `meshctl check` makes of what is installed.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::{
    RootCertStore,
    client::{WebPkiServerVerifier, danger::ServerCertVerifier as _},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject as _},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

/// How long before it was made a certificate says it was valid: the clock
/// of whoever checks it may lag the maker's by seconds (or, across machines,
/// more), and a certificate "not valid yet" is refused outright.
pub(crate) const BACKDATE: Duration = Duration::from_secs(60);

/// The crypto provider every TLS configuration of the mesh uses.
pub fn provider() -> Arc<CryptoProvider> {
    mesh_runtime::tls_provider()
}

/// A certificate authority and a serving certificate it signed, as PEM. The
/// CA's key is dropped once the serving certificate is signed: nothing can
/// sign another.
#[derive(Debug, Clone)]
pub struct ServingCertificate {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Why certificates could not be made, read or trusted.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{what}: not valid PEM: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the key does not fit the certificate, or is of a kind rustls cannot use: {0}")]
    Key(rustls::Error),
    #[error("the certificate is not trusted for {name}: {reason}")]
    Untrusted { name: String, reason: String },
    #[error("{0}: not an X.509 certificate")]
    X509(&'static str),
}

impl ServingCertificate {
    /// A new CA (named `ca_name`) and a certificate for `dns_names`, both
    /// valid from a minute ago (`BACKDATE`) until `valid_for` from now;
    /// ECDSA P-256 keys.
    pub fn generate(
        ca_name: &str,
        dns_names: &[String],
        valid_for: Duration,
    ) -> Result<Self, TlsError> {
        let now = time_now();
        let until = now + valid_for;

        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name = distinguished_name(ca_name);
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.not_before = now - BACKDATE;
        ca.not_after = until;
        let ca_cert = ca.self_signed(&ca_key)?;

        let key = KeyPair::generate()?;
        let mut leaf = CertificateParams::new(dns_names.to_vec())?;
        leaf.distinguished_name = distinguished_name(&dns_names[0]);
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.not_before = now - BACKDATE;
        leaf.not_after = until;
        let issuer = Issuer::from_params(&ca, &ca_key);
        let cert = leaf.signed_by(&key, &issuer)?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// The certificates of a PEM bundle (`what` names it in errors).
pub fn certificates(
    pem: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// A certificate chain and its key, ready to serve.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, TlsError> {
    let chain = certificates(cert_pem, "the certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem {
        what: "the key",
        reason: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(TlsError::Key)
}

/// Checks, as a TLS client trusting only `ca_pem` would, that `cert_pem`
/// (with its chain) is valid for `name` at `at`.
pub fn verify_serving(
    ca_pem: &[u8],
    cert_pem: &[u8],
    name: &str,
    at: std::time::SystemTime,
) -> Result<(), TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in certificates(ca_pem, "the CA bundle")? {
        roots.add(ca).map_err(|e| TlsError::Untrusted {
            name: name.into(),
            reason: format!("the CA bundle: {e}"),
        })?;
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsError::Untrusted {
            name: name.into(),
            reason: e.to_string(),
        })?;
    let chain = certificates(cert_pem, "the serving certificate")?;
    let server_name = ServerName::try_from(name.to_owned()).map_err(|e| TlsError::Untrusted {
        name: name.into(),
        reason: e.to_string(),
    })?;
    verifier
        .verify_server_cert(
            &chain[0],
            &chain[1..],
            &server_name,
            &[],
            UnixTime::since_unix_epoch(
                at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default(),
            ),
        )
        .map(drop)
        .map_err(|e| TlsError::Untrusted {
            name: name.into(),
            reason: e.to_string(),
        })
}

/// When the first certificate of a PEM bundle expires (seconds since the
/// Unix epoch).
pub fn not_after(pem: &[u8], what: &'static str) -> Result<i64, TlsError> {
    let der = certificates(pem, what)?.remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|_| TlsError::X509(what))?;
    Ok(cert.validity().not_after.timestamp())
}

/// A serving certificate read from `tls.crt` and `tls.key` in a directory (a
/// mounted `kubernetes.io/tls` Secret), read again by [`reload`] when the
/// files change, and replaced by [`install`] when the Secret itself is seen
/// to change (through the API, before the kubelet updates the files); so a
/// rotated Secret is served without a restart.
///
/// [`reload`]: ReloadingCertificate::reload
/// [`install`]: ReloadingCertificate::install
#[derive(Debug)]
pub struct ReloadingCertificate {
    dir: PathBuf,
    current: RwLock<Loaded>,
    /// The files as last read: a reload installs them only when they
    /// changed, so an older copy on disk never replaces what the API gave.
    files_seen: std::sync::Mutex<(Vec<u8>, Vec<u8>)>,
}

#[derive(Debug)]
struct Loaded {
    pair: (Vec<u8>, Vec<u8>),
    key: Arc<CertifiedKey>,
}

impl ReloadingCertificate {
    /// Reads the certificate now; an error if it cannot be served.
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let pair = read_pair(dir)?;
        let key = Arc::new(certified_key(&pair.0, &pair.1)?);
        Ok(Self {
            dir: dir.to_owned(),
            files_seen: std::sync::Mutex::new(pair.clone()),
            current: RwLock::new(Loaded { pair, key }),
        })
    }

    /// Reads the files again; when they changed since last read and hold a
    /// usable pair, it is served from the next handshake on (`Ok(true)`).
    /// On an error the served pair stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let files = read_pair(&self.dir)?;
        {
            let mut seen = self.files_seen.lock().expect("certificate lock");
            if *seen == files {
                return Ok(false);
            }
            *seen = files.clone();
        }
        self.install(files.0, files.1)
    }

    /// Serves this certificate and key from the next handshake on, unless
    /// they are what is served already (`Ok(false)`) or unusable (an error;
    /// the served pair stays).
    pub fn install(&self, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Result<bool, TlsError> {
        let pair = (cert_pem, key_pem);
        if self.current.read().expect("certificate lock").pair == pair {
            return Ok(false);
        }
        let key = Arc::new(certified_key(&pair.0, &pair.1)?);
        *self.current.write().expect("certificate lock") = Loaded { pair, key };
        Ok(true)
    }

    /// The PEM certificate served now.
    pub fn cert_pem(&self) -> Vec<u8> {
        self.current
            .read()
            .expect("certificate lock")
            .pair
            .0
            .clone()
    }
}

fn read_pair(dir: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|source| TlsError::Read { path, source })
    };
    Ok((read("tls.crt")?, read("tls.key")?))
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("certificate lock").key.clone())
    }
}

/// A TLS 1.3 server configuration serving `cert` with ALPN for HTTP/2 and
/// HTTP/1.1.
pub fn server_config(cert: Arc<ReloadingCertificate>) -> rustls::ServerConfig {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    const NAME: &str = "mesh-injector.stockkube-mesh.svc";
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

    fn generate() -> ServingCertificate {
        ServingCertificate::generate("test CA", &[NAME.into()], YEAR).unwrap()
    }

    #[test]
    fn the_serving_certificate_is_trusted_through_its_ca_only_for_its_names() {
        let certs = generate();
        let now = SystemTime::now();
        verify_serving(
            certs.ca_pem.as_bytes(),
            certs.cert_pem.as_bytes(),
            NAME,
            now,
        )
        .unwrap();
        let wrong_name = verify_serving(
            certs.ca_pem.as_bytes(),
            certs.cert_pem.as_bytes(),
            "elsewhere.svc",
            now,
        );
        assert!(matches!(wrong_name, Err(TlsError::Untrusted { .. })));
        // A checker whose clock reads a little earlier than the maker's
        // (another machine, or a time taken just before the certificate was
        // made) still trusts it.
        let lagging = now - Duration::from_secs(30);
        verify_serving(
            certs.ca_pem.as_bytes(),
            certs.cert_pem.as_bytes(),
            NAME,
            lagging,
        )
        .unwrap();
        let other = generate();
        let other_ca = verify_serving(
            other.ca_pem.as_bytes(),
            certs.cert_pem.as_bytes(),
            NAME,
            now,
        );
        assert!(
            matches!(other_ca, Err(TlsError::Untrusted { .. })),
            "{other_ca:?}"
        );
        let later = now + YEAR + Duration::from_secs(3600);
        let expired = verify_serving(
            certs.ca_pem.as_bytes(),
            certs.cert_pem.as_bytes(),
            NAME,
            later,
        );
        assert!(matches!(expired, Err(TlsError::Untrusted { .. })));
    }

    #[test]
    fn certificates_last_the_time_asked_and_keys_fit() {
        let certs = generate();
        let expires = not_after(certs.cert_pem.as_bytes(), "cert").unwrap();
        let now = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(
            (expires - now - YEAR.as_secs() as i64).abs() < 60,
            "{expires} vs {now}"
        );
        certified_key(certs.cert_pem.as_bytes(), certs.key_pem.as_bytes()).unwrap();
        let other = generate();
        assert!(matches!(
            certified_key(certs.cert_pem.as_bytes(), other.key_pem.as_bytes()),
            Err(TlsError::Key(_))
        ));
        assert!(matches!(
            certificates(b"garbage", "x"),
            Err(TlsError::Pem { .. })
        ));
    }

    #[test]
    fn a_changed_pair_is_served_and_a_broken_one_is_not() {
        let dir = std::env::temp_dir().join(format!("mesh-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |certs: &ServingCertificate| {
            std::fs::write(dir.join("tls.crt"), &certs.cert_pem).unwrap();
            std::fs::write(dir.join("tls.key"), &certs.key_pem).unwrap();
        };
        let first = generate();
        write(&first);
        let cert = ReloadingCertificate::load(&dir).unwrap();
        assert!(!cert.reload().unwrap(), "unchanged");
        let second = generate();
        write(&second);
        assert!(cert.reload().unwrap());
        assert_eq!(cert.cert_pem(), second.cert_pem.as_bytes());
        std::fs::write(dir.join("tls.key"), "broken").unwrap();
        assert!(cert.reload().is_err());
        assert_eq!(cert.cert_pem(), second.cert_pem.as_bytes(), "kept");

        // A newer pair from the API is served, and the older files on disk,
        // unchanged since, do not replace it.
        write(&second);
        assert!(
            !cert.reload().unwrap(),
            "the repaired files are what is served"
        );
        let third = generate();
        assert!(
            cert.install(third.cert_pem.clone().into(), third.key_pem.clone().into())
                .unwrap()
        );
        assert!(
            !cert
                .install(third.cert_pem.clone().into(), third.key_pem.clone().into())
                .unwrap()
        );
        assert!(!cert.reload().unwrap());
        assert_eq!(cert.cert_pem(), third.cert_pem.as_bytes());
        assert!(
            cert.install(third.cert_pem.clone().into(), b"broken".to_vec())
                .is_err()
        );
        assert_eq!(cert.cert_pem(), third.cert_pem.as_bytes());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
