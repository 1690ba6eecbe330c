//! The demo's identities, as `meshctl install` sets them up in a cluster:
//! a trust anchor and an issuer made for this run, and a bootstrap
//! credential per workload standing in for a ServiceAccount token. All of
//! it lives in a directory only this user can read, removed when the demo
//! stops; the issuer's key is read by the controller alone.

use anyhow::Context as _;
use mesh_controller::identity::issuer::Authority;
use std::{
    io::Read as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

/// The demo's trust domain and namespace: identities read
/// `spiffe://cluster.local/ns/demo/sa/WORKLOAD`.
pub const TRUST_DOMAIN: &str = "cluster.local";
pub const NAMESPACE: &str = "demo";
/// The workloads that get an identity: the proxies', and the demo's own,
/// which registers the replicas (a Registry admin).
pub const WORKLOADS: &[&str] = &["stockweb", "stockdata", SUPERVISOR];
pub const SUPERVISOR: &str = "meshctl";
/// How long the demo's trust anchor is valid: longer than any demo runs.
const ANCHOR_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// The files of one demo run's identities.
#[derive(Debug)]
pub struct DemoIdentity {
    dir: PathBuf,
}

impl DemoIdentity {
    /// Makes the trust anchor, the issuer and the credentials in a new
    /// private directory.
    pub fn create() -> anyhow::Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("meshctl-demo-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let identity = Self { dir };
        std::fs::set_permissions(&identity.dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", identity.dir.display()))?;
        let authority = Authority::generate(TRUST_DOMAIN, ANCHOR_LIFETIME)
            .map_err(|e| anyhow::anyhow!("cannot make the demo's trust anchor: {e}"))?;
        authority
            .write(&identity.authority_dir())
            .with_context(|| {
                format!(
                    "cannot write the demo's issuer to {}",
                    identity.dir.display()
                )
            })?;
        let mut bootstrap = String::from("# NAMESPACE/ACCOUNT CREDENTIAL, made for this run\n");
        for workload in WORKLOADS {
            let credential = random_credential()?;
            bootstrap.push_str(&format!("{NAMESPACE}/{workload} {credential}\n"));
            write_private(&identity.token_file(workload), &credential)?;
        }
        write_private(&identity.bootstrap_file(), &bootstrap)?;
        Ok(identity)
    }

    fn authority_dir(&self) -> PathBuf {
        self.dir.join("authority")
    }

    fn bootstrap_file(&self) -> PathBuf {
        self.dir.join("bootstrap")
    }

    fn token_file(&self, workload: &str) -> PathBuf {
        self.dir.join(format!("{workload}.token"))
    }

    /// The trust anchors every proxy checks its peers against.
    pub fn trust_anchors(&self) -> PathBuf {
        self.authority_dir().join("ca.crt")
    }

    /// `spiffe://cluster.local/ns/demo/sa/WORKLOAD`.
    pub fn spiffe_id(workload: &str) -> String {
        stockkube_proto::identity::spiffe_id(TRUST_DOMAIN, NAMESPACE, workload)
    }

    /// The controller's flags: issue identities from this run's issuer for
    /// the workloads' credentials.
    pub fn controller_flags(&self) -> Vec<String> {
        vec![
            "--identity-dir".into(),
            self.authority_dir().display().to_string(),
            "--identity-bootstrap".into(),
            self.bootstrap_file().display().to_string(),
            "--trust-domain".into(),
            TRUST_DOMAIN.into(),
            "--registry-admin".into(),
            Self::spiffe_id(SUPERVISOR),
        ]
    }

    /// The demo's own credential, for its Registry writes.
    pub fn supervisor_credential(&self) -> anyhow::Result<String> {
        let file = self.token_file(SUPERVISOR);
        std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))
    }

    /// A proxy's flags for `workload`'s identity (with --destination set).
    pub fn proxy_flags(&self, workload: &str) -> Vec<String> {
        vec![
            "--identity".into(),
            Self::spiffe_id(workload),
            "--identity-token-file".into(),
            self.token_file(workload).display().to_string(),
            "--identity-trust-anchors".into(),
            self.trust_anchors().display().to_string(),
        ]
    }
}

impl Drop for DemoIdentity {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// 32 random bytes from the kernel, hex: a credential nobody guesses.
fn random_credential() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .context("cannot read /dev/urandom for the demo's credentials")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_are_private_and_the_credentials_random_and_removed_at_the_end() {
        let identity = DemoIdentity::create().unwrap();
        let dir = identity.dir.clone();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        let web = std::fs::read_to_string(identity.token_file("stockweb")).unwrap();
        let data = std::fs::read_to_string(identity.token_file("stockdata")).unwrap();
        assert_eq!(web.len(), 64);
        assert_ne!(web, data);
        assert_eq!(mode(&identity.token_file("stockweb")), 0o600);
        let bootstrap = mesh_controller::identity::credentials::Credentials::bootstrap_file(
            &identity.bootstrap_file(),
        )
        .unwrap();
        let mesh_controller::identity::credentials::Credentials::Bootstrap(known) = bootstrap
        else {
            unreachable!()
        };
        assert_eq!(known[&web], ("demo".to_owned(), "stockweb".to_owned()));
        assert!(identity.trust_anchors().exists());
        drop(identity);
        assert!(!dir.exists());
    }
}
