//! The `mesh-controller` binary: flags, logging, bind, serve until SIGINT or SIGTERM.

use anyhow::Context as _;
use clap::Parser as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    mesh_runtime::exit("mesh-controller", serve())
}

#[tokio::main]
async fn serve() -> anyhow::Result<()> {
    let args = mesh_controller::Args::parse();
    // kube's client logs every failed request as an error, several a second
    // while the API server is away; the watchers say it once per outage.
    mesh_runtime::init_tracing_with("mesh_controller", &["kube_client::client::builder=off"]);
    let shutdown = mesh_runtime::shutdown_signal()?;
    let client = match args.backend {
        mesh_controller::BackendKind::Local => None,
        mesh_controller::BackendKind::Kubernetes => Some(
            mesh_controller::kubernetes::client()
                .await
                .context("cannot configure a Kubernetes client (--backend kubernetes): no in-cluster configuration and no usable KUBECONFIG")?,
        ),
    };
    let identity = identity(&args, client.clone())?;
    // Bound once the identity files exist: whoever waits for the port to
    // open may read them then.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (--listen / MESH_CONTROLLER_LISTEN)",
                args.listen
            )
        })?;
    let (backend, watchers) = match client {
        None => {
            anyhow::ensure!(
                !args.registration_lease.is_zero(),
                "--registration-lease (MESH_CONTROLLER_REGISTRATION_LEASE) must be more than zero"
            );
            let registry = mesh_controller::Registry::with_lease(args.registration_lease);
            (registry.into(), Vec::new())
        }
        Some(client) => mesh_controller::kubernetes_backend(
            client,
            &args.cluster_domain,
            &args.default_namespace,
            identity.is_some().then_some(args.trust_domain.as_str()),
        ),
    };
    let served = mesh_controller::run_with(backend, identity, listener, shutdown).await;
    for watcher in watchers {
        watcher.abort();
    }
    served?;
    Ok(())
}

/// The Identity service, when `--identity-dir` is given.
fn identity(
    args: &mesh_controller::Args,
    client: Option<kube::Client>,
) -> anyhow::Result<Option<mesh_controller::identity::IdentityService>> {
    use mesh_controller::identity::{credentials::Credentials, issuer, provision};
    let Some(dir) = &args.identity_dir else {
        if args.identity_bootstrap.is_some() {
            anyhow::bail!("--identity-bootstrap needs --identity-dir");
        }
        return Ok(None);
    };
    let authority = if args.identity_generate {
        provision::ensure_authority(dir, &args.trust_domain)?
    } else {
        issuer::Authority::read(dir)?
    };
    let issuer = issuer::Issuer::new(&authority, args.certificate_lifetime)?;
    let local = args.identity_bootstrap.is_some() || args.identity_publish.is_some();
    let credentials = match client {
        Some(_) if local => anyhow::bail!(
            "--identity-bootstrap and --identity-publish are for the local backend; the Kubernetes backend checks ServiceAccount tokens"
        ),
        Some(client) => Credentials::Kubernetes {
            client,
            audience: mesh_controller::identity::credentials::TOKEN_AUDIENCE.into(),
        },
        None if !local => anyhow::bail!(
            "--identity-dir with the local backend needs --identity-bootstrap or --identity-publish (the workloads' credentials)"
        ),
        None => {
            let mut known = match &args.identity_bootstrap {
                Some(file) => Credentials::read_bootstrap(file)?,
                None => Default::default(),
            };
            if let Some(public) = &args.identity_publish {
                known.extend(provision::publish(
                    public,
                    &authority,
                    &args.identity_workload,
                )?);
            }
            Credentials::Bootstrap(known)
        }
    };
    for admin in &args.registry_admin {
        if stockkube_proto::identity::parse(admin).is_none() {
            anyhow::bail!(
                "--registry-admin {admin:?}: expected spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/ACCOUNT"
            );
        }
    }
    Ok(Some(
        mesh_controller::identity::IdentityService::new(&args.trust_domain, issuer, credentials)
            .with_registry_admins(args.registry_admin.clone()),
    ))
}
