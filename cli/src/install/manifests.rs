//! The control plane's Kubernetes objects, as data, and their YAML.

use base64::Engine as _;
use mesh_controller::{
    identity::{IdentityError, issuer::Authority},
    inject::SidecarConfig,
    injector,
    tls::{ServingCertificate, TlsError},
};
use serde_json::{Value, json};
use std::time::Duration;
use stockkube_proto::ports;
use yaml_rust2::YamlEmitter;

/// What `meshctl install` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub namespace: String,
    pub registry: String,
    pub tag: String,
    pub image_pull_policy: String,
    /// Of the controller and the injector.
    pub replicas: u16,
    pub ha: bool,
    pub sidecar: SidecarConfig,
}

/// Made fresh for each install.
#[derive(Debug, Clone)]
pub struct Generated {
    pub certificate: ServingCertificate,
    /// The identity service's trust anchor and issuer.
    pub authority: Authority,
}

/// The injector's certificates last a year; `meshctl check` warns 60 days
/// before the end.
pub const CERTIFICATE_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// The label on every object of the mesh.
pub const PART_OF: &str = "stockkube-mesh";
/// A namespace with this label set to `disabled` is never sent to the
/// injector.
pub const WEBHOOKS_LABEL: &str = "stockkube.io/admission-webhooks";
/// The webhook configuration's name.
pub const WEBHOOK_CONFIGURATION: &str = "stockkube-mesh-injector";
/// The Secret with the injector's serving certificate.
pub const INJECTOR_SECRET: &str = "mesh-injector-tls";
const INJECTOR_TLS_DIR: &str = "/var/run/stockkube/injector-tls";
/// The Secret with the identity service's trust anchor and issuer.
pub const IDENTITY_SECRET: &str = "mesh-identity-issuer";
/// The ConfigMap with the trust anchor alone, and where the injector reads it.
pub const TRUST_ANCHORS_CONFIG_MAP: &str = "mesh-identity-trust-anchors";
const TRUST_ANCHORS_DIR: &str = "/var/run/stockkube/trust-anchors";
/// Where the controller reads it.
pub const IDENTITY_DIR: &str = "/var/run/stockkube/identity";
/// The trust domain of the mesh's identities.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// Why the install's certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("the injector's certificate")]
    Injector(#[from] TlsError),
    #[error("the identity service's authority")]
    Identity(#[from] IdentityError),
}

impl Generated {
    pub fn new(options: &Options) -> Result<Self, GenerateError> {
        Ok(Self {
            certificate: ServingCertificate::generate(
                &format!("{} injector CA", options.namespace),
                &injector_names(&options.namespace),
                CERTIFICATE_LIFETIME,
            )?,
            authority: Authority::generate(TRUST_DOMAIN, CERTIFICATE_LIFETIME)?,
        })
    }
}

/// The names the injector's certificate is valid for; the API server
/// calls it by the first.
pub fn injector_names(namespace: &str) -> Vec<String> {
    vec![
        format!("mesh-injector.{namespace}.svc"),
        format!("mesh-injector.{namespace}.svc.cluster.local"),
        format!("mesh-injector.{namespace}"),
    ]
}

/// One group of documents with the comment that explains it.
struct Section {
    comment: &'static str,
    objects: Vec<Value>,
}

/// Everything `install` prints.
pub fn install(options: &Options, generated: &Generated) -> String {
    let sections = [
        Section {
            comment: "The mesh's own namespace. Its pods are never injected: the injector's\n\
                      webhook skips namespaces labelled as this one is.",
            objects: vec![namespace(options)],
        },
        Section {
            comment: "mesh-controller: the destination API. It watches Services, EndpointSlices\n\
                      and Pods (read-only, the RBAC below) and answers proxies from them; it\n\
                      turns ready once every kind was listed. Its identity service signs\n\
                      proxies' certificates with the issuer in Secret mesh-identity-issuer,\n\
                      once a TokenReview accepts their ServiceAccount token.",
            objects: controller(options),
        },
        Section {
            comment: "mesh-injector: the admission webhook that adds the sidecar to pods created\n\
                      in a namespace or from a template annotated `stockkube.io/inject: enabled`\n\
                      (or `linkerd.io/inject: enabled`). It reads namespaces' annotations and its\n\
                      own certificate's Secret, nothing else.",
            objects: injector(options),
        },
        Section {
            comment: "mesh-dashboard: golden metrics, topology and the Server column, from the\n\
                      proxies the controller knows. It needs no access to the Kubernetes API.",
            objects: dashboard(options),
        },
        Section {
            comment: "Generated for this install: the injector's serving certificate and key,\n\
                      and the webhook configuration whose caBundle is the CA that signed it\n\
                      (its key was discarded); the identity service's trust anchor and the\n\
                      issuer it signed, with the issuer's key (the anchor's was discarded).\n\
                      All are new each time `meshctl install` runs.",
            objects: generated_objects(options, generated),
        },
    ];
    render(&sections)
}

/// What removes the mesh: the webhook first (no pod creation calls the
/// injector any more), the cluster-wide RBAC, then the namespace and
/// everything in it.
pub fn uninstall(namespace: &str) -> String {
    let named = |api_version: &str, kind: &str, name: &str| json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name}});
    let mut objects = vec![named(
        "admissionregistration.k8s.io/v1",
        "MutatingWebhookConfiguration",
        WEBHOOK_CONFIGURATION,
    )];
    for component in ["controller", "injector"] {
        let name = format!("{namespace}-{component}");
        let mut binding = named("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", &name);
        // A binding's role is part of its identity (and its schema).
        binding["roleRef"] =
            json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name});
        objects.push(binding);
        objects.push(named("rbac.authorization.k8s.io/v1", "ClusterRole", &name));
    }
    objects.push(named("v1", "Namespace", namespace));
    render(&[Section {
        comment: "Removes StockKube Mesh: `meshctl uninstall | kubectl delete -f -`.\n\
                  Injected pods keep their sidecar until they are recreated.",
        objects,
    }])
}

fn render(sections: &[Section]) -> String {
    let mut out = String::new();
    for section in sections {
        for line in section.comment.lines() {
            out.push_str("# ");
            out.push_str(line.trim_start());
            out.push('\n');
        }
        for object in &section.objects {
            let mut emitter = YamlEmitter::new(&mut out);
            emitter.multiline_strings(true);
            emitter
                .dump(&crate::inject::to_yaml(object))
                .expect("an object can be written as YAML");
            out.push('\n');
        }
    }
    out
}

fn metadata(options: &Options, name: &str) -> Value {
    json!({
        "name": name,
        "namespace": options.namespace,
        "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": PART_OF},
    })
}

fn cluster_metadata(name: &str) -> Value {
    json!({"name": name, "labels": {"app.kubernetes.io/part-of": PART_OF}})
}

fn image(options: &Options, name: &str) -> String {
    format!("{}/{name}:{}", options.registry, options.tag)
}

fn namespace(options: &Options) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": options.namespace,
            "labels": {"app.kubernetes.io/part-of": PART_OF, WEBHOOKS_LABEL: "disabled"},
        },
    })
}

fn service_account(options: &Options, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata(options, name)})
}

/// A ClusterRole with `rules` and its binding to the ServiceAccount
/// `account`.
fn cluster_role(options: &Options, component: &str, account: &str, rules: Value) -> [Value; 2] {
    let name = format!("{}-{component}", options.namespace);
    [
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": cluster_metadata(&name),
            "rules": rules,
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": cluster_metadata(&name),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": options.namespace}],
        }),
    ]
}

fn hardened_container() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
    })
}

fn pod_security() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

fn resources() -> Value {
    json!({
        "requests": {"cpu": "50m", "memory": "32Mi"},
        "limits": {"cpu": "500m", "memory": "128Mi"},
    })
}

/// A Deployment of one container; `pod` is merged into the pod spec.
fn deployment(options: &Options, name: &str, replicas: u16, container: Value, pod: Value) -> Value {
    let mut spec = json!({"securityContext": pod_security()});
    for (key, value) in pod.as_object().into_iter().flatten() {
        spec[key] = value.clone();
    }
    if options.ha && replicas > 1 {
        // Replicas on different nodes where there are enough.
        spec["affinity"] = json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100,
            "podAffinityTerm": {
                "topologyKey": "kubernetes.io/hostname",
                "labelSelector": {"matchLabels": {"app.kubernetes.io/name": name}},
            },
        }]}});
    }
    spec["containers"] = json!([container]);
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(options, name),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": PART_OF}},
                "spec": spec,
            },
        },
    })
}

/// A component with `options.replicas` replicas: its Deployment and, with
/// `--ha`, its PodDisruptionBudget.
fn replicated(options: &Options, name: &str, container: Value, pod: Value) -> Vec<Value> {
    let mut objects = vec![deployment(options, name, options.replicas, container, pod)];
    if options.ha {
        objects.push(disruption_budget(options, name));
    }
    objects
}

fn disruption_budget(options: &Options, name: &str) -> Value {
    json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(options, name),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
        },
    })
}

fn service(options: &Options, name: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["selector"] = json!({"app.kubernetes.io/name": name});
    json!({"apiVersion": "v1", "kind": "Service", "metadata": metadata(options, name), "spec": spec})
}

fn controller(options: &Options) -> Vec<Value> {
    let name = "mesh-controller";
    let container = json!({
        "name": "controller",
        "image": image(options, name),
        "imagePullPolicy": options.image_pull_policy,
        "env": [
            {"name": "MESH_CONTROLLER_LISTEN", "value": format!("0.0.0.0:{}", ports::CONTROLLER)},
            {"name": "MESH_CONTROLLER_BACKEND", "value": "kubernetes"},
            {"name": "MESH_CONTROLLER_IDENTITY_DIR", "value": IDENTITY_DIR},
            {"name": "MESH_CONTROLLER_TRUST_DOMAIN", "value": TRUST_DOMAIN},
        ],
        "volumeMounts": [{"name": "identity", "mountPath": IDENTITY_DIR, "readOnly": true}],
        "ports": [{"name": "grpc", "containerPort": ports::CONTROLLER, "protocol": "TCP"}],
        "readinessProbe": {"grpc": {"port": ports::CONTROLLER, "service": "stockkube.mesh.v1.Destination"}, "periodSeconds": 5},
        "livenessProbe": {"grpc": {"port": ports::CONTROLLER}, "periodSeconds": 10},
        "resources": resources(),
        "securityContext": hardened_container(),
    });
    let mut objects = vec![service_account(options, name)];
    objects.extend(cluster_role(
        options,
        "controller",
        name,
        json!([
            // Discovery: which pods stand behind a Service, and on which ports.
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["services", "pods"], "verbs": ["get", "list", "watch"]},
            // Identity: whether a proxy's ServiceAccount token is valid.
            {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        ]),
    ));
    objects.extend(replicated(
        options,
        name,
        container,
        json!({
            "serviceAccountName": name,
            "volumes": [{"name": "identity", "secret": {"secretName": IDENTITY_SECRET}}],
        }),
    ));
    objects.push(service(
        options,
        name,
        json!({"ports": [{
            "name": "grpc", "port": ports::CONTROLLER, "targetPort": "grpc",
            "protocol": "TCP", "appProtocol": "kubernetes.io/h2c",
        }]}),
    ));
    objects
}

fn injector(options: &Options) -> Vec<Value> {
    let name = "mesh-injector";
    let sidecar = &options.sidecar;
    let env = [
        (
            "MESH_INJECTOR_LISTEN",
            format!("0.0.0.0:{}", injector::PORT),
        ),
        ("MESH_INJECTOR_TLS_DIR", INJECTOR_TLS_DIR.into()),
        (
            "MESH_INJECTOR_TLS_SECRET",
            format!("{}/{INJECTOR_SECRET}", options.namespace),
        ),
        (
            "MESH_INJECTOR_CONTROL_PLANE_NAMESPACE",
            options.namespace.clone(),
        ),
        ("MESH_INJECTOR_PROXY_IMAGE", sidecar.proxy_image.clone()),
        ("MESH_INJECTOR_INIT_IMAGE", sidecar.init_image.clone()),
        (
            "MESH_INJECTOR_IMAGE_PULL_POLICY",
            sidecar.image_pull_policy.clone(),
        ),
        ("MESH_INJECTOR_DESTINATION", sidecar.controller.clone()),
        ("MESH_INJECTOR_NATIVE_SIDECAR", sidecar.native.to_string()),
        (
            "MESH_INJECTOR_PROXY_CPU_REQUEST",
            sidecar.resources.cpu_request.clone(),
        ),
        (
            "MESH_INJECTOR_PROXY_CPU_LIMIT",
            sidecar.resources.cpu_limit.clone(),
        ),
        (
            "MESH_INJECTOR_PROXY_MEMORY_REQUEST",
            sidecar.resources.memory_request.clone(),
        ),
        (
            "MESH_INJECTOR_PROXY_MEMORY_LIMIT",
            sidecar.resources.memory_limit.clone(),
        ),
        // Injected proxies get their pods' identities and trust these.
        (
            "MESH_INJECTOR_IDENTITY_TRUST_ANCHORS",
            format!("{TRUST_ANCHORS_DIR}/ca.crt"),
        ),
    ]
    .map(|(name, value)| json!({"name": name, "value": value}));
    let probe = |path: &str, period: u32| json!({"httpGet": {"scheme": "HTTPS", "path": path, "port": "https"}, "periodSeconds": period});
    let container = json!({
        "name": "injector",
        "image": image(options, name),
        "imagePullPolicy": options.image_pull_policy,
        "env": env,
        "ports": [{"name": "https", "containerPort": injector::PORT, "protocol": "TCP"}],
        "readinessProbe": probe("/ready", 5),
        "livenessProbe": probe("/live", 10),
        "volumeMounts": [
            {"name": "tls", "mountPath": INJECTOR_TLS_DIR, "readOnly": true},
            {"name": "trust-anchors", "mountPath": TRUST_ANCHORS_DIR, "readOnly": true},
        ],
        "resources": resources(),
        "securityContext": hardened_container(),
    });
    let mut objects = vec![service_account(options, name)];
    objects.extend(cluster_role(
        options,
        "injector",
        name,
        // A pod may be injected because of its namespace's annotation.
        json!([{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]}]),
    ));
    // Its own certificate's Secret, and no other: watched, so that a new
    // install's certificate is served before the kubelet updates the files.
    objects.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": metadata(options, name),
        "rules": [{
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": [INJECTOR_SECRET],
            "verbs": ["get", "list", "watch"],
        }],
    }));
    objects.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": metadata(options, name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": options.namespace}],
    }));
    objects.extend(replicated(
        options,
        name,
        container,
        json!({
            "serviceAccountName": name,
            "volumes": [
                {"name": "tls", "secret": {"secretName": INJECTOR_SECRET}},
                {"name": "trust-anchors", "configMap": {"name": TRUST_ANCHORS_CONFIG_MAP}},
            ],
        }),
    ));
    objects.push(service(
        options,
        name,
        json!({"ports": [{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}]}),
    ));
    objects
}

fn dashboard(options: &Options) -> Vec<Value> {
    let name = "mesh-dashboard";
    // The dashboard answers only its own host names (DNS rebinding); the
    // kubelet would otherwise send the pod's IP as the Host.
    let probe = |period: u32| json!({"httpGet": {"path": "/", "port": "http", "httpHeaders": [{"name": "Host", "value": "localhost"}]}, "periodSeconds": period});
    let container = json!({
        "name": "dashboard",
        "image": image(options, name),
        "imagePullPolicy": options.image_pull_policy,
        "env": [
            {"name": "MESH_DASHBOARD_LISTEN", "value": format!("0.0.0.0:{}", ports::DASHBOARD)},
            {"name": "MESH_DASHBOARD_CONTROLLER", "value": format!(
                "http://mesh-controller.{}.svc.cluster.local:{}", options.namespace, ports::CONTROLLER
            )},
        ],
        "ports": [{"name": "http", "containerPort": ports::DASHBOARD, "protocol": "TCP"}],
        "readinessProbe": probe(5),
        "livenessProbe": probe(10),
        "resources": resources(),
        "securityContext": hardened_container(),
    });
    vec![
        deployment(
            options,
            name,
            1,
            container,
            json!({"automountServiceAccountToken": false}),
        ),
        service(
            options,
            name,
            json!({"ports": [{"name": "http", "port": ports::DASHBOARD, "targetPort": "http", "protocol": "TCP"}]}),
        ),
    ]
}

fn generated_objects(options: &Options, generated: &Generated) -> Vec<Value> {
    let base64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let certificate = &generated.certificate;
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(options, INJECTOR_SECRET),
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": base64(&certificate.cert_pem), "tls.key": base64(&certificate.key_pem)},
    });
    let webhook = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": cluster_metadata(WEBHOOK_CONFIGURATION),
        "webhooks": [{
            "name": "inject.stockkube.io",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            // The injector only adds; while it is away pods are created
            // without the sidecar rather than not at all.
            "failurePolicy": "Ignore",
            "timeoutSeconds": 10,
            "clientConfig": {
                "service": {"name": "mesh-injector", "namespace": options.namespace, "path": injector::PATH, "port": 443},
                "caBundle": base64(&certificate.ca_pem),
            },
            "rules": [{
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }],
            "namespaceSelector": {"matchExpressions": [
                {"key": WEBHOOKS_LABEL, "operator": "NotIn", "values": ["disabled"]},
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "kube-public", "kube-node-lease"]},
            ]},
        }],
    });
    let authority = &generated.authority;
    let identity = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(options, IDENTITY_SECRET),
        "type": "Opaque",
        "data": {
            "ca.crt": base64(&authority.trust_anchor_pem),
            "issuer.crt": base64(&authority.issuer_pem),
            "issuer.key": base64(&authority.issuer_key_pem),
        },
    });
    // The anchor alone, public, for whoever checks proxies' certificates.
    let anchors = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(options, TRUST_ANCHORS_CONFIG_MAP),
        "data": {"ca.crt": authority.trust_anchor_pem},
    });
    vec![secret, identity, anchors, webhook]
}
