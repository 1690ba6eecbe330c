//! The checks, in the order they run; a failure that makes the rest
//! meaningless (no API server) ends the run.

use super::Check;
use crate::install::manifests::{INJECTOR_SECRET, PART_OF, WEBHOOK_CONFIGURATION, injector_names};
use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration,
    authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec},
    core::v1::{Namespace, Pod, Secret},
};
use kube::api::{Api, ListParams, PostParams};
use mesh_controller::inject::{PROXY_CONTAINER, PROXY_VERSION_ANNOTATION};
use std::time::{Duration, SystemTime};

const API: &str = "kubernetes-api";
const PRE: &str = "pre-install";
const CONTROL_PLANE: &str = "control-plane";
const INJECTOR: &str = "injector";
const PROXIES: &str = "data-plane";

/// The oldest Kubernetes with native sidecars on by default.
const NATIVE_SIDECARS_SINCE: (u32, u32) = (1, 29);
/// The oldest Kubernetes the mesh runs on (EndpointSlice v1).
const OLDEST_SUPPORTED: (u32, u32) = (1, 21);
/// Clocks further apart than this make certificates look not yet valid or
/// expired early.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5);
/// A serving certificate closer to its end than this fails the check.
const CERTIFICATE_MARGIN: Duration = Duration::from_secs(60 * 24 * 3600);
/// How long one request to the API server may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs every check; `pre` for the checks before an install.
pub async fn run(pre: bool, namespace: &str) -> Vec<Check> {
    let mut checks = Vec::new();
    let client = match mesh_controller::kubernetes::client().await {
        Ok(client) => client,
        Err(err) => {
            checks.push(Check::error(
                API,
                "api-config",
                format!("cannot find the cluster's configuration: {err}"),
                "set KUBECONFIG to a kubeconfig file (or run in a pod)",
            ));
            return checks;
        }
    };
    if !api(&client, &mut checks).await {
        return checks;
    }
    if pre {
        pre_install(&client, namespace, &mut checks).await;
    } else {
        control_plane(&client, namespace, &mut checks).await;
        injector(&client, namespace, &mut checks).await;
        proxies(&client, &mut checks).await;
    }
    checks
}

async fn timed<T>(request: impl Future<Output = Result<T, kube::Error>>) -> Result<T, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
    }
}

/// Reachable, a supported version, a clock that agrees with ours. False
/// when the API server cannot be reached.
async fn api(client: &kube::Client, checks: &mut Vec<Check>) -> bool {
    let request = http::Request::get("/version")
        .body(kube::client::Body::empty())
        .expect("a valid request");
    let sent = SystemTime::now();
    let response = match timed(client.send(request)).await {
        Ok(response) if response.status().is_success() => response,
        Ok(response) => {
            checks.push(Check::error(
                API,
                "api-reachable",
                format!("the API server answers /version with {}", response.status()),
                "check that KUBECONFIG names the cluster and your credentials are valid",
            ));
            return false;
        }
        Err(err) => {
            checks.push(Check::error(
                API,
                "api-reachable",
                format!("cannot reach the API server: {err}"),
                "check that the cluster runs and KUBECONFIG names it",
            ));
            return false;
        }
    };
    let received = SystemTime::now();
    let date = response
        .headers()
        .get(http::header::DATE)
        .and_then(|d| d.to_str().ok())
        .and_then(|d| httpdate::parse_http_date(d).ok());
    let body = match timed(async {
        use http_body_util::BodyExt as _;
        response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| kube::Error::Service(e.into()))
    })
    .await
    {
        Ok(body) => body,
        Err(err) => {
            checks.push(Check::error(
                API,
                "api-reachable",
                format!("cannot read the API server's version: {err}"),
                "check the API server's health",
            ));
            return false;
        }
    };
    let version: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let git_version = version["gitVersion"]
        .as_str()
        .unwrap_or("(unknown)")
        .to_owned();
    checks.push(Check::ok(
        API,
        "api-reachable",
        format!("can reach the API server ({git_version})"),
    ));

    match major_minor(&version) {
        Some(v) if v >= NATIVE_SIDECARS_SINCE => checks.push(Check::ok(
            API,
            "api-version",
            format!(
                "Kubernetes {}.{} is supported, with native sidecars",
                v.0, v.1
            ),
        )),
        Some(v) if v >= OLDEST_SUPPORTED => checks.push(Check::warning(
            API,
            "api-version",
            format!(
                "Kubernetes {}.{} has no native sidecars (1.29 and later)",
                v.0, v.1
            ),
            "install with `meshctl install --native-sidecar=false`, or upgrade the cluster",
        )),
        Some(v) => checks.push(Check::error(
            API,
            "api-version",
            format!(
                "Kubernetes {}.{} is older than the mesh supports (1.21)",
                v.0, v.1
            ),
            "upgrade the cluster",
        )),
        None => checks.push(Check::warning(
            API,
            "api-version",
            format!("cannot tell the Kubernetes version from {git_version:?}"),
            "check that this is a Kubernetes API server",
        )),
    }

    match date {
        None => checks.push(Check::warning(
            API,
            "clock-skew",
            "the API server sends no Date header: cannot compare clocks",
            "compare the clocks of this machine and the cluster's nodes by hand",
        )),
        Some(date) => {
            // The server's second lies between sending and receiving.
            let skew = if date + Duration::from_secs(1) < sent {
                sent.duration_since(date + Duration::from_secs(1))
                    .unwrap_or_default()
            } else {
                date.duration_since(received).unwrap_or_default()
            };
            if skew <= MAX_CLOCK_SKEW {
                checks.push(Check::ok(
                    API,
                    "clock-skew",
                    "this machine's clock agrees with the API server's",
                ));
            } else {
                checks.push(Check::warning(
                    API,
                    "clock-skew",
                    format!(
                        "this machine's clock is {} s off the API server's",
                        skew.as_secs()
                    ),
                    "synchronise the clocks (NTP): certificates are checked against them",
                ));
            }
        }
    }
    true
}

fn major_minor(version: &serde_json::Value) -> Option<(u32, u32)> {
    let number =
        |key: &str| -> Option<u32> { version[key].as_str()?.trim_end_matches('+').parse().ok() };
    Some((number("major")?, number("minor")?))
}

/// May this user create what `meshctl install` prints, and is the
/// namespace free?
async fn pre_install(client: &kube::Client, namespace: &str, checks: &mut Vec<Check>) {
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    for (group, resource, namespaced) in [
        ("", "namespaces", false),
        ("rbac.authorization.k8s.io", "clusterroles", false),
        ("rbac.authorization.k8s.io", "clusterrolebindings", false),
        (
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            false,
        ),
        ("", "serviceaccounts", true),
        ("", "secrets", true),
        ("", "services", true),
        ("apps", "deployments", true),
    ] {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some("create".into()),
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    namespace: namespaced.then(|| namespace.to_owned()),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let id = "pre-rbac";
        match timed(reviews.create(&PostParams::default(), &review)).await {
            Ok(answer) if answer.status.as_ref().is_some_and(|s| s.allowed) => {
                checks.push(Check::ok(PRE, id, format!("can create {resource}")));
            }
            Ok(_) => checks.push(Check::error(
                PRE,
                id,
                format!("cannot create {resource}: forbidden"),
                "install as a user with cluster-admin rights (the mesh's RBAC and webhook are cluster-wide)",
            )),
            Err(err) => checks.push(Check::error(
                PRE,
                id,
                format!("cannot ask whether {resource} may be created: {err}"),
                "check that the API server serves SelfSubjectAccessReviews",
            )),
        }
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    match timed(namespaces.get_opt(namespace)).await {
        Ok(None) => checks.push(Check::ok(
            PRE,
            "pre-namespace",
            format!("namespace {namespace} does not exist yet"),
        )),
        Ok(Some(_)) => checks.push(Check::warning(
            PRE,
            "pre-namespace",
            format!("namespace {namespace} already exists"),
            "the mesh may be installed already: run `meshctl check`",
        )),
        Err(err) => checks.push(Check::error(
            PRE,
            "pre-namespace",
            format!("cannot read namespace {namespace}: {err}"),
            "check your access to namespaces",
        )),
    }
}

fn pod_name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// The namespace, and a ready pod of each component.
async fn control_plane(client: &kube::Client, namespace: &str, checks: &mut Vec<Check>) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    match timed(namespaces.get_opt(namespace)).await {
        Ok(Some(_)) => checks.push(Check::ok(
            CONTROL_PLANE,
            "namespace",
            format!("namespace {namespace} exists"),
        )),
        Ok(None) => {
            checks.push(Check::error(
                CONTROL_PLANE,
                "namespace",
                format!("namespace {namespace} does not exist"),
                "install the mesh: `meshctl install | kubectl apply -f -`",
            ));
            return;
        }
        Err(err) => {
            checks.push(Check::error(
                CONTROL_PLANE,
                "namespace",
                format!("cannot read namespace {namespace}: {err}"),
                "check your access to namespaces",
            ));
            return;
        }
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let listed = timed(
        pods.list(&ListParams::default().labels(&format!("app.kubernetes.io/part-of={PART_OF}"))),
    )
    .await;
    let pods = match listed {
        Ok(list) => list.items,
        Err(err) => {
            checks.push(Check::error(
                CONTROL_PLANE,
                "pods-ready",
                format!("cannot list the control plane's pods: {err}"),
                "check your access to pods",
            ));
            return;
        }
    };
    for component in ["mesh-controller", "mesh-injector", "mesh-dashboard"] {
        let of_component: Vec<&Pod> = pods
            .iter()
            .filter(|p| {
                p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("app.kubernetes.io/name"))
                    .is_some_and(|n| n == component)
            })
            .collect();
        let not_ready: Vec<String> = of_component
            .iter()
            .filter(|p| !pod_ready(p))
            .map(|p| pod_name(p))
            .collect();
        let ready = of_component.len() - not_ready.len();
        if of_component.is_empty() {
            checks.push(Check::error(
                CONTROL_PLANE,
                "pods-ready",
                format!("{component} has no pod"),
                format!("see `kubectl -n {namespace} get deployment {component}` and its events"),
            ));
        } else if not_ready.is_empty() {
            checks.push(Check::ok(
                CONTROL_PLANE,
                "pods-ready",
                format!("{component}: {ready} of {} pods ready", of_component.len()),
            ));
        } else {
            checks.push(Check::error(
                CONTROL_PLANE,
                "pods-ready",
                format!("{component}: {ready} of {} pods ready; not ready: {}", of_component.len(), not_ready.join(", ")),
                format!("see `kubectl -n {namespace} describe pod` and `kubectl -n {namespace} logs` for those pods"),
            ));
        }
    }
}

/// The webhook configuration, its CA bundle against the serving
/// certificate, and that certificate's lifetime.
async fn injector(client: &kube::Client, namespace: &str, checks: &mut Vec<Check>) {
    let reinstall = "run `meshctl install | kubectl apply -f -` again: it makes a new certificate and CA bundle";
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let webhook = match timed(webhooks.get_opt(WEBHOOK_CONFIGURATION)).await {
        Ok(Some(webhook)) => {
            checks.push(Check::ok(
                INJECTOR,
                "webhook-configuration",
                format!("MutatingWebhookConfiguration {WEBHOOK_CONFIGURATION} exists"),
            ));
            webhook
        }
        Ok(None) => {
            checks.push(Check::error(INJECTOR, "webhook-configuration", format!("MutatingWebhookConfiguration {WEBHOOK_CONFIGURATION} does not exist: no pod is injected"), reinstall));
            return;
        }
        Err(err) => {
            checks.push(Check::error(
                INJECTOR,
                "webhook-configuration",
                format!("cannot read MutatingWebhookConfiguration {WEBHOOK_CONFIGURATION}: {err}"),
                "check your access to mutatingwebhookconfigurations",
            ));
            return;
        }
    };
    let ca_bundle = webhook
        .webhooks
        .iter()
        .flatten()
        .find_map(|w| w.client_config.ca_bundle.clone())
        .map(|bundle| bundle.0);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let certificate = match timed(secrets.get_opt(INJECTOR_SECRET)).await {
        Ok(Some(secret)) => secret
            .data
            .and_then(|mut data| data.remove("tls.crt"))
            .map(|c| c.0),
        Ok(None) => None,
        Err(err) => {
            checks.push(Check::error(
                INJECTOR,
                "webhook-ca-bundle",
                format!("cannot read Secret {namespace}/{INJECTOR_SECRET}: {err}"),
                "check your access to secrets in the mesh's namespace",
            ));
            return;
        }
    };
    let (Some(ca_bundle), Some(certificate)) = (ca_bundle, certificate) else {
        checks.push(Check::error(
            INJECTOR,
            "webhook-ca-bundle",
            format!("the webhook has no caBundle, or Secret {namespace}/{INJECTOR_SECRET} has no tls.crt"),
            reinstall,
        ));
        return;
    };
    let now = SystemTime::now();
    let name = &injector_names(namespace)[0];
    match mesh_controller::tls::verify_serving(&ca_bundle, &certificate, name, now) {
        Ok(()) => checks.push(Check::ok(
            INJECTOR,
            "webhook-ca-bundle",
            format!("the webhook's caBundle trusts the injector's certificate for {name}"),
        )),
        Err(err) => checks.push(Check::error(
            INJECTOR,
            "webhook-ca-bundle",
            format!("the webhook's caBundle does not verify the injector's certificate: {err}"),
            reinstall,
        )),
    }
    match mesh_controller::tls::not_after(&certificate, "the injector's certificate") {
        Ok(not_after) => {
            let now_secs = now
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs() as i64;
            let left = not_after - now_secs;
            // To the nearest day: a year-long certificate reads "365 days".
            let days = (left + 43_200).div_euclid(86_400);
            if left <= 0 {
                checks.push(Check::error(
                    INJECTOR,
                    "webhook-certificate",
                    "the injector's certificate has expired",
                    reinstall,
                ));
            } else if left < CERTIFICATE_MARGIN.as_secs() as i64 {
                checks.push(Check::error(
                    INJECTOR,
                    "webhook-certificate",
                    format!("the injector's certificate expires in {days} days (less than 60)"),
                    reinstall,
                ));
            } else {
                checks.push(Check::ok(
                    INJECTOR,
                    "webhook-certificate",
                    format!("the injector's certificate is valid for {days} more days"),
                ));
            }
        }
        Err(err) => checks.push(Check::error(
            INJECTOR,
            "webhook-certificate",
            format!("cannot read the injector's certificate: {err}"),
            reinstall,
        )),
    }
}

/// Every pod with the proxy: its proxy ready, of this version.
async fn proxies(client: &kube::Client, checks: &mut Vec<Check>) {
    let pods: Api<Pod> = Api::all(client.clone());
    let pods = match timed(pods.list(&ListParams::default())).await {
        Ok(list) => list.items,
        Err(err) => {
            checks.push(Check::error(
                PROXIES,
                "proxies-ready",
                format!("cannot list pods: {err}"),
                "check your access to pods in every namespace",
            ));
            return;
        }
    };
    let meshed: Vec<&Pod> = pods
        .iter()
        .filter(|pod| {
            pod.spec.as_ref().is_some_and(|spec| {
                spec.containers
                    .iter()
                    .chain(spec.init_containers.iter().flatten())
                    .any(|c| c.name == PROXY_CONTAINER)
            })
        })
        .collect();
    if meshed.is_empty() {
        checks.push(Check::ok(PROXIES, "proxies-ready", "no meshed pods yet"));
        return;
    }
    let proxy_ready = |pod: &Pod| {
        pod.status.as_ref().is_some_and(|status| {
            status
                .container_statuses
                .iter()
                .flatten()
                .chain(status.init_container_statuses.iter().flatten())
                .any(|c| c.name == PROXY_CONTAINER && c.ready)
        })
    };
    let not_ready: Vec<String> = meshed
        .iter()
        .filter(|p| !proxy_ready(p))
        .map(|p| pod_name(p))
        .collect();
    if not_ready.is_empty() {
        checks.push(Check::ok(
            PROXIES,
            "proxies-ready",
            format!("the proxies of all {} meshed pods are ready", meshed.len()),
        ));
    } else {
        checks.push(Check::error(
            PROXIES,
            "proxies-ready",
            format!(
                "{} of {} meshed pods have a proxy that is not ready: {}",
                not_ready.len(),
                meshed.len(),
                not_ready.join(", ")
            ),
            "see `kubectl logs POD -c mesh-proxy` and the proxy's /ready on port 4191",
        ));
    }
    let version = env!("CARGO_PKG_VERSION");
    let other: Vec<String> = meshed
        .iter()
        .filter(|pod| {
            pod.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(PROXY_VERSION_ANNOTATION))
                .is_none_or(|v| v != version)
        })
        .map(|p| pod_name(p))
        .collect();
    if other.is_empty() {
        checks.push(Check::ok(
            PROXIES,
            "proxies-version",
            format!("every proxy is of this version ({version})"),
        ));
    } else {
        checks.push(Check::warning(
            PROXIES,
            "proxies-version",
            format!(
                "{} pods run a proxy of another version than {version}: {}",
                other.len(),
                other.join(", ")
            ),
            "restart their workloads (`kubectl rollout restart`) to inject the current proxy",
        ));
    }
}
