//! `meshctl install` and `meshctl uninstall`: the mesh's control plane as
//! YAML for `kubectl apply -f -` (and what removes it, for `kubectl delete
//! -f -`), as `linkerd install` and `linkerd uninstall` do.
//!
//! The manifests are built here, as data, from the options; the injector's
//! serving certificate and the CA the API server trusts it by are made
//! fresh for each install (`mesh_controller::tls`), printed once (the key
//! only in the Secret) and forgotten. `k8s/mesh/` holds what `install`
//! prints with its defaults, without those two generated documents (a test
//! keeps them equal).

pub mod manifests;

use anyhow::Context as _;
use mesh_controller::inject::{ProxyResources, SidecarConfig};
use std::io::Write as _;

pub use manifests::{Generated, Options};

/// `meshctl install`.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// The namespace of the control plane.
    #[arg(long, default_value = "stockkube-mesh")]
    namespace: String,
    /// Where the images are: REGISTRY/mesh-controller:TAG and so on.
    #[arg(long, default_value = "stockkube")]
    registry: String,
    /// The images' tag.
    #[arg(long, default_value = "dev")]
    tag: String,
    /// `imagePullPolicy` of every container, the sidecars' included.
    #[arg(long, default_value = "IfNotPresent", value_parser = ["Always", "IfNotPresent", "Never"])]
    image_pull_policy: String,
    /// Replicas of the controller and of the injector (default 1; 3 with --ha).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    replicas: Option<u16>,
    /// High availability: 3 replicas of the controller and the injector,
    /// spread over nodes, each with a PodDisruptionBudget.
    #[arg(long)]
    ha: bool,
    /// Inject the proxy as a native sidecar (Kubernetes 1.29 and later);
    /// `--native-sidecar=false` for older clusters.
    #[arg(
        long,
        value_name = "BOOL",
        default_value_t = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    native_sidecar: bool,
    /// The proxy's CPU request.
    #[arg(long, default_value = "10m", value_parser = quantity)]
    proxy_cpu_request: String,
    /// The proxy's CPU limit.
    #[arg(long, default_value = "500m", value_parser = quantity)]
    proxy_cpu_limit: String,
    /// The proxy's memory request.
    #[arg(long, default_value = "16Mi", value_parser = quantity)]
    proxy_memory_request: String,
    /// The proxy's memory limit.
    #[arg(long, default_value = "64Mi", value_parser = quantity)]
    proxy_memory_limit: String,
}

/// A Kubernetes quantity as people write them: a decimal number and an
/// optional suffix (`500m`, `64Mi`, `1.5`, `2G`).
fn quantity(value: &str) -> Result<String, String> {
    const SUFFIXES: [&str; 14] = [
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(split);
    if number.parse::<f64>().is_ok_and(|n| n > 0.0) && SUFFIXES.contains(&suffix) {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "{value:?} is not a quantity like 500m, 1, 64Mi or 1Gi"
        ))
    }
}

/// `meshctl uninstall`.
#[derive(Debug, clap::Args)]
pub struct UninstallArgs {
    /// The namespace of the control plane.
    #[arg(long, default_value = "stockkube-mesh")]
    namespace: String,
}

impl InstallArgs {
    fn options(&self) -> anyhow::Result<Options> {
        let mut sidecar = SidecarConfig::for_install(&self.registry, &self.tag, &self.namespace);
        sidecar.image_pull_policy = self.image_pull_policy.clone();
        sidecar.native = self.native_sidecar;
        sidecar.resources = ProxyResources {
            cpu_request: self.proxy_cpu_request.clone(),
            cpu_limit: self.proxy_cpu_limit.clone(),
            memory_request: self.proxy_memory_request.clone(),
            memory_limit: self.proxy_memory_limit.clone(),
        };
        for (flag, value) in [
            ("--namespace", &self.namespace),
            ("--registry", &self.registry),
            ("--tag", &self.tag),
        ] {
            if value.is_empty() || value.chars().any(char::is_whitespace) {
                anyhow::bail!("{flag} {value:?}: must be non-empty, without spaces");
            }
        }
        Ok(Options {
            namespace: self.namespace.clone(),
            registry: self.registry.clone(),
            tag: self.tag.clone(),
            image_pull_policy: self.image_pull_policy.clone(),
            replicas: self.replicas.unwrap_or(if self.ha { 3 } else { 1 }),
            ha: self.ha,
            sidecar,
        })
    }
}

pub fn install_main(args: InstallArgs) -> anyhow::Result<()> {
    let options = args.options()?;
    let generated =
        Generated::new(&options).context("cannot generate the injector's certificate")?;
    print(&manifests::install(&options, &generated))
}

pub fn uninstall_main(args: UninstallArgs) -> anyhow::Result<()> {
    print(&manifests::uninstall(&args.namespace))
}

fn print(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot write to standard output")
}

#[cfg(test)]
mod tests {
    use super::quantity;

    #[test]
    fn quantities_are_numbers_with_a_known_suffix() {
        for good in ["10m", "500m", "1", "1.5", "64Mi", "2G", "1Gi"] {
            assert_eq!(quantity(good).as_deref(), Ok(good));
        }
        for bad in ["", "m", "64 Mi", "64MB", "-1", "0", "1..5", "lots"] {
            assert!(quantity(bad).is_err(), "{bad:?}");
        }
    }
}
