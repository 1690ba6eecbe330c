//! The Prometheus scrape job and the Grafana dashboard in k8s/observability/:
//! `promtool` (Prometheus's own checker) accepts the configuration and every
//! panel's PromQL, and the panels read only metrics the sidecar exports.

use crate::repo;
use std::process::Command;
use stockkube_proto::metrics::{
    REFUSED_TOTAL, REQUESTS_TOTAL, RESPONSE_LATENCY_BUCKET, RESPONSES_TOTAL, RETRIES_TOTAL,
    ROUTE_REQUESTS_TOTAL, ROUTE_RESPONSE_LATENCY_BUCKET, ROUTE_RESPONSES_TOTAL,
};

/// promtool, or `None` (SKIPPED) when missing and not under CI.
fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool").arg("--version").output().is_ok();
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but promtool is missing: scripts/test.sh installs it (Debian's prometheus)"
        );
        eprintln!("SKIPPED: promtool is missing; scripts/test.sh installs it");
        return None;
    }
    Some("promtool")
}

fn check(promtool: &str, what: &str, file: &std::path::Path) {
    let out = Command::new(promtool)
        .args(["check", what])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check {what} {}: {}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_scrape_job_and_the_grafana_dashboard_are_valid_and_read_real_metrics() {
    let Some(promtool) = promtool() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("stockkube-observability-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // Debian's promtool is built without Kubernetes discovery: the same job
    // with file discovery in its place checks everything else (the relabel
    // rules, the job), and the discovery block is checked for its shape.
    let config = std::fs::read_to_string(repo("k8s/observability/prometheus.yml")).unwrap();
    assert!(
        config.contains("    kubernetes_sd_configs:\n      - role: pod\n"),
        "{config}"
    );
    assert!(
        config.contains("regex: mesh-proxy;mesh-admin"),
        "the injector's container and port names"
    );
    let checkable = config.replace(
        "    kubernetes_sd_configs:\n      - role: pod\n",
        "    file_sd_configs:\n      - files: [targets/*.json]\n",
    );
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, checkable).unwrap();
    check(promtool, "config", &path);

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("k8s/observability/grafana-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let exprs: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap())
        .collect();
    assert!(exprs.len() >= 8, "{exprs:?}");
    // Every PromQL expression parses: as recording rules, with the
    // dashboard's variable as Grafana fills it for "All".
    let rules = serde_json::json!({"groups": [{"name": "dashboard", "rules": exprs.iter().enumerate().map(|(i, e)| serde_json::json!({"record": format!("panel_{i}"), "expr": e.replace("$workload", ".*")})).collect::<Vec<_>>()}]});
    let path = dir.join("rules.yml");
    std::fs::write(&path, rules.to_string()).unwrap();
    check(promtool, "rules", &path);
    // And reads only what the sidecar exports.
    let exported = [
        REQUESTS_TOTAL,
        RESPONSES_TOTAL,
        RESPONSE_LATENCY_BUCKET,
        REFUSED_TOTAL,
        RETRIES_TOTAL,
        ROUTE_REQUESTS_TOTAL,
        ROUTE_RESPONSES_TOTAL,
        ROUTE_RESPONSE_LATENCY_BUCKET,
    ];
    for expr in &exprs {
        for name in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if name.starts_with("mesh_") {
                assert!(exported.contains(&name), "{name} in {expr}");
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
