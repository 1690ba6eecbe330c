use super::*;
use serde_json::json;

fn template() -> Value {
    json!({
        "metadata": {"labels": {"run": "stockdata"}},
        "spec": {
            "initContainers": [{"name": "migrate", "image": "migrate"}],
            "containers": [{"name": "stockdata", "image": "stockkube/stockdata:dev"}],
        },
    })
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

fn env(container: &Value, name: &str) -> Value {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("{name}"))
        .clone()
}

#[test]
fn native_sidecar_runs_among_init_containers_after_the_redirection() {
    let mut pod = template();
    let config = SidecarConfig::default();
    assert!(config.native, "native sidecars are the default");
    assert_eq!(add_sidecar(&mut pod, &config), Ok(Outcome::Injected));
    let spec = &pod["spec"];
    assert_eq!(
        names(&spec["initContainers"]),
        ["mesh-init", "mesh-proxy", "migrate"]
    );
    assert_eq!(names(&spec["containers"]), ["stockdata"]);
    let proxy = &spec["initContainers"][1];
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["startupProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(proxy["startupProbe"]["httpGet"]["port"], 4191);
    assert!(proxy.get("lifecycle").is_none());
    assert_eq!(
        pod["metadata"]["annotations"][PROXY_VERSION_ANNOTATION],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(pod["metadata"]["labels"]["run"], "stockdata", "kept");
}

#[test]
fn regular_sidecar_comes_first_and_holds_the_app_until_ready() {
    let mut pod = template();
    let config = SidecarConfig {
        native: false,
        ..SidecarConfig::default()
    };
    assert_eq!(add_sidecar(&mut pod, &config), Ok(Outcome::Injected));
    let spec = &pod["spec"];
    assert_eq!(names(&spec["initContainers"]), ["mesh-init", "migrate"]);
    assert_eq!(names(&spec["containers"]), ["mesh-proxy", "stockdata"]);
    let proxy = &spec["containers"][0];
    assert!(proxy.get("restartPolicy").is_none());
    let post_start = proxy["lifecycle"]["postStart"]["exec"]["command"]
        .as_array()
        .unwrap();
    assert_eq!(post_start[0], "/usr/bin/mesh-probe");
    assert_eq!(post_start[1], "--wait");
    assert_eq!(post_start[3], "http://127.0.0.1:4191/ready");
    assert_eq!(
        proxy["lifecycle"]["preStop"]["exec"]["command"][1],
        "--sleep"
    );
}

#[test]
fn injecting_twice_is_injecting_once_and_host_network_is_skipped() {
    let mut pod = template();
    let config = SidecarConfig::default();
    add_sidecar(&mut pod, &config).unwrap();
    let once = pod.clone();
    assert_eq!(add_sidecar(&mut pod, &config), Ok(Outcome::AlreadyInjected));
    assert_eq!(pod, once);

    let mut host = json!({"spec": {"hostNetwork": true, "containers": [{"name": "a"}]}});
    let before = host.clone();
    assert!(
        matches!(add_sidecar(&mut host, &config), Ok(Outcome::Skipped(why)) if why.contains("hostNetwork"))
    );
    assert_eq!(host, before);
}

#[test]
fn malformed_templates_are_errors_not_panics() {
    let config = SidecarConfig::default();
    for mut bad in [
        json!({}),
        json!({"spec": {"containers": "x"}}),
        json!({"spec": {"containers": [], "initContainers": 3}}),
        json!({"metadata": [], "spec": {"containers": []}}),
        json!({"metadata": {"annotations": "x"}, "spec": {"containers": []}}),
    ] {
        assert!(add_sidecar(&mut bad, &config).is_err(), "{bad}");
    }
}

#[test]
fn annotations_ask_ours_first_then_linkerds() {
    assert_eq!(
        requested(&json!({"stockkube.io/inject": "enabled"})),
        Some(true)
    );
    assert_eq!(
        requested(&json!({"linkerd.io/inject": "enabled"})),
        Some(true)
    );
    assert_eq!(
        requested(&json!({"linkerd.io/inject": "disabled"})),
        Some(false)
    );
    assert_eq!(
        requested(&json!({"stockkube.io/inject": "disabled", "linkerd.io/inject": "enabled"})),
        Some(false)
    );
    assert_eq!(requested(&json!({"linkerd.io/inject": "ingress"})), None);
    assert_eq!(requested(&json!({})), None);
    assert_eq!(requested(&Value::Null), None);
}

#[test]
fn the_proxy_intercepts_both_ways_and_is_probed_on_admin() {
    let config = SidecarConfig::for_install("registry.example/mesh", "v9", "mesh-system");
    let proxy = proxy_container(&config, Vec::new());
    assert_eq!(proxy["image"], "registry.example/mesh/mesh-proxy:v9");
    assert_eq!(
        env(&proxy, "MESH_PROXY_OUTBOUND_TRANSPARENT")["value"],
        "127.0.0.1:4140"
    );
    assert_eq!(
        env(&proxy, "MESH_PROXY_DESTINATION")["value"],
        "http://mesh-controller.mesh-system.svc.cluster.local:8086"
    );
    assert_eq!(
        env(&proxy, "MESH_PROXY_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(proxy["readinessProbe"]["httpGet"]["port"], 4191);
    assert_eq!(proxy["securityContext"]["runAsUser"], 2102);
    assert_eq!(proxy["securityContext"]["runAsNonRoot"], true);
    assert_eq!(proxy["resources"]["limits"]["memory"], "64Mi");
}

#[test]
fn the_init_container_skips_the_proxy_ports_and_its_user() {
    let init = init_container(&SidecarConfig::default());
    let args: Vec<_> = init["args"].as_array().unwrap().iter().collect();
    let pair = |flag: &str, value: &str| args.windows(2).any(|w| w[0] == flag && w[1] == value);
    assert!(pair("--ignore-inbound-ports", "4191,4143"));
    assert!(pair("--outbound-port", "4140"));
    assert!(pair("--proxy-uid", "2102"));
    assert_eq!(init["securityContext"]["runAsNonRoot"], false);
}

fn with_identity() -> SidecarConfig {
    SidecarConfig {
        identity: Some(SidecarIdentity {
            trust_domain: "cluster.local".into(),
            trust_anchors_pem: "-----BEGIN CERTIFICATE-----\n...".into(),
        }),
        ..SidecarConfig::default()
    }
}

#[test]
fn with_identities_the_proxy_asks_for_its_service_accounts_with_a_projected_token() {
    let mut pod = template();
    pod["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    assert_eq!(
        add_sidecar(&mut pod, &with_identity()),
        Ok(Outcome::Injected)
    );
    let proxy = &pod["spec"]["initContainers"][1];
    assert_eq!(
        env(proxy, "MESH_PROXY_IDENTITY")["value"],
        "spiffe://cluster.local/ns/$(MESH_PROXY_NAMESPACE)/sa/$(MESH_POD_SERVICE_ACCOUNT)"
    );
    // Kubernetes expands $(VAR) only from variables defined before it.
    let order: Vec<&str> = proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    let at = |name: &str| order.iter().position(|n| *n == name).unwrap();
    assert!(at("MESH_PROXY_NAMESPACE") < at("MESH_PROXY_IDENTITY"));
    assert!(at("MESH_POD_SERVICE_ACCOUNT") < at("MESH_PROXY_IDENTITY"));
    assert_eq!(
        env(proxy, "MESH_POD_SERVICE_ACCOUNT")["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.serviceAccountName"
    );
    assert_eq!(
        env(proxy, "MESH_PROXY_IDENTITY_TOKEN_FILE")["value"],
        format!("{IDENTITY_TOKEN_DIR}/token")
    );
    assert!(
        env(proxy, "MESH_PROXY_IDENTITY_TRUST_ANCHORS_PEM")["value"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    assert_eq!(proxy["volumeMounts"][0]["name"], IDENTITY_TOKEN_VOLUME);
    assert_eq!(proxy["volumeMounts"][0]["readOnly"], true);
    assert_eq!(
        names(&pod["spec"]["volumes"]),
        ["data", IDENTITY_TOKEN_VOLUME]
    );
    let token = &pod["spec"]["volumes"][1]["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(token["audience"], "identity.stockkube.io");
    assert!(
        token["expirationSeconds"].as_u64().unwrap() >= 600,
        "the API's minimum"
    );

    let mut plain = template();
    add_sidecar(&mut plain, &SidecarConfig::default()).unwrap();
    let proxy = &plain["spec"]["initContainers"][1];
    assert!(proxy.get("volumeMounts").is_none(), "{proxy}");
    assert!(plain["spec"].get("volumes").is_none());
}

#[test]
fn policy_annotations_become_the_proxys_policy_or_refuse_the_injection() {
    let annotated = |annotations: Value| {
        let mut pod = template();
        pod["metadata"]["annotations"] = annotations;
        pod
    };
    let mut pod = annotated(json!({
        "config.stockkube.io/default-inbound-policy": "all-authenticated",
        "config.stockkube.io/inbound-port-policies": "9090=all-unauthenticated;5001=spiffe://cluster.local/ns/stocks/sa/stockweb",
    }));
    assert_eq!(
        add_sidecar(&mut pod, &with_identity()),
        Ok(Outcome::Injected)
    );
    let proxy = &pod["spec"]["initContainers"][1];
    assert_eq!(
        env(proxy, "MESH_PROXY_INBOUND_POLICY")["value"],
        "all-authenticated"
    );
    assert_eq!(
        env(proxy, "MESH_PROXY_INBOUND_PORT_POLICY")["value"],
        "9090=all-unauthenticated;5001=spiffe://cluster.local/ns/stocks/sa/stockweb"
    );

    let mut opaque = annotated(json!({"config.stockkube.io/opaque-ports": "3306, 6379"}));
    assert_eq!(
        add_sidecar(&mut opaque, &SidecarConfig::default()),
        Ok(Outcome::Injected)
    );
    assert_eq!(
        env(
            &opaque["spec"]["initContainers"][1],
            "MESH_PROXY_OPAQUE_PORTS"
        )["value"],
        "3306,6379"
    );
    let mut bad = annotated(json!({"config.stockkube.io/opaque-ports": "3306,redis"}));
    let err = add_sidecar(&mut bad, &SidecarConfig::default()).unwrap_err();
    assert!(
        err.starts_with("config.stockkube.io/opaque-ports: \"redis\" is not a port"),
        "{err}"
    );

    let mut bad = annotated(json!({"config.stockkube.io/default-inbound-policy": "friends"}));
    let err = add_sidecar(&mut bad, &with_identity()).unwrap_err();
    assert!(
        err.starts_with("config.stockkube.io/default-inbound-policy"),
        "{err}"
    );
    let mut bad = annotated(json!({"config.stockkube.io/inbound-port-policies": "0=deny"}));
    let err = add_sidecar(&mut bad, &with_identity()).unwrap_err();
    assert!(err.contains("not a port"), "{err}");

    let mut needs =
        annotated(json!({"config.stockkube.io/default-inbound-policy": "cluster-authenticated"}));
    let err = add_sidecar(&mut needs, &SidecarConfig::default()).unwrap_err();
    assert!(err.contains("issues no identities"), "{err}");
    let mut open = annotated(json!({"config.stockkube.io/default-inbound-policy": "deny"}));
    assert_eq!(
        add_sidecar(&mut open, &SidecarConfig::default()),
        Ok(Outcome::Injected)
    );
}
