//! The demo's identities, as `meshctl install` sets them up in a cluster,
//! made by the controller itself for this run (`--identity-generate`,
//! `--identity-publish`): a trust anchor and an issuer, and a credential
//! per workload standing in for a ServiceAccount token. All of it lives in
//! a directory only this user can read, removed when the demo stops.

use anyhow::Context as _;
use mesh_controller::identity::provision;
use std::{os::unix::fs::PermissionsExt as _, path::PathBuf};

/// The demo's trust domain and namespace: identities read
/// `spiffe://cluster.local/ns/demo/sa/WORKLOAD`.
pub const TRUST_DOMAIN: &str = "cluster.local";
pub const NAMESPACE: &str = "demo";
/// The workloads that get an identity: the proxies', and the demo's own,
/// which registers the replicas (a Registry admin).
pub const WORKLOADS: &[&str] = &["stockweb", "stockdata", SUPERVISOR];
pub const SUPERVISOR: &str = "meshctl";

/// Where one demo run's identities live.
#[derive(Debug)]
pub struct DemoIdentity {
    dir: PathBuf,
}

impl DemoIdentity {
    /// A new private directory for them.
    pub fn create() -> anyhow::Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("meshctl-demo-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let identity = Self { dir };
        std::fs::set_permissions(&identity.dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", identity.dir.display()))?;
        Ok(identity)
    }

    fn public(&self) -> PathBuf {
        self.dir.join("public")
    }

    fn token_file(&self, workload: &str) -> PathBuf {
        provision::credential_file(&self.public(), NAMESPACE, workload)
    }

    /// The trust anchors every proxy checks its peers against.
    pub fn trust_anchors(&self) -> PathBuf {
        self.public().join("ca.crt")
    }

    /// `spiffe://cluster.local/ns/demo/sa/WORKLOAD`.
    pub fn spiffe_id(workload: &str) -> String {
        stockkube_proto::identity::spiffe_id(TRUST_DOMAIN, NAMESPACE, workload)
    }

    /// The controller's flags: make the authority and the workloads'
    /// credentials for this run, and let the demo register anything.
    pub fn controller_flags(&self) -> Vec<String> {
        let workloads: Vec<String> = WORKLOADS
            .iter()
            .map(|w| format!("{NAMESPACE}/{w}"))
            .collect();
        vec![
            "--identity-dir".into(),
            self.dir.join("authority").display().to_string(),
            "--identity-generate".into(),
            "--identity-publish".into(),
            self.public().display().to_string(),
            "--identity-workload".into(),
            workloads.join(","),
            "--trust-domain".into(),
            TRUST_DOMAIN.into(),
            "--registry-admin".into(),
            Self::spiffe_id(SUPERVISOR),
        ]
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

    /// The demo's own credential, for its Registry writes (once the
    /// controller published it).
    pub fn supervisor_credential(&self) -> anyhow::Result<String> {
        let file = self.token_file(SUPERVISOR);
        std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))
    }

    #[cfg(test)]
    fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

impl Drop for DemoIdentity {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_directory_removed_at_the_end_and_flags_that_agree() {
        let identity = DemoIdentity::create().unwrap();
        let dir = identity.dir().to_owned();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let controller = identity.controller_flags().join(" ");
        assert!(
            controller.contains("--identity-workload demo/stockweb,demo/stockdata,demo/meshctl"),
            "{controller}"
        );
        let proxy = identity.proxy_flags("stockweb").join(" ");
        let token = identity.token_file("stockweb");
        assert!(token.starts_with(identity.public()));
        assert!(proxy.contains(&token.display().to_string()), "{proxy}");
        drop(identity);
        assert!(!dir.exists());
    }
}
