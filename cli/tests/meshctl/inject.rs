//! `meshctl inject` / `uninject` on real files, stdin and directories:
//! golden outputs, every workload kind, idempotence, the round trip, schema
//! validation with `kubernetes-validate --strict`, and bad input that must
//! leave stdout empty.

use crate::repo;
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};
use yaml_rust2::{Yaml, YamlEmitter, YamlLoader};

const MESHCTL: &str = env!("CARGO_BIN_EXE_meshctl");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Runs meshctl with `args`, feeding `stdin`.
pub(crate) fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(MESHCTL)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Runs meshctl, expecting success; (stdout, stderr).
pub(crate) fn ok(args: &[&str], stdin: &str) -> (String, String) {
    let output = run(args, stdin);
    let (stdout, stderr) = (
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    );
    assert!(output.status.success(), "{args:?}: {stderr}");
    (stdout, stderr)
}

/// Runs meshctl, expecting failure with nothing on stdout; stderr.
pub(crate) fn fails(args: &[&str], stdin: &str) -> String {
    let output = run(args, stdin);
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(!output.status.success(), "{args:?} succeeded");
    assert!(
        output.stdout.is_empty(),
        "{args:?} wrote to stdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

pub(crate) fn docs(text: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(text).unwrap()
}

pub(crate) fn path<'a>(yaml: &'a Yaml, keys: &[&str]) -> &'a Yaml {
    keys.iter().fold(yaml, |y, k| &y[*k])
}

#[test]
fn golden_files_for_the_sample() {
    for app in ["stockdata", "stockweb"] {
        let input = repo(&format!("k8s/stocks/{app}.yml"));
        let golden = repo(&format!("k8s/stocks/{app}-with-mesh.yml"));
        let (out, err) = ok(&["inject", input.to_str().unwrap()], "");
        let expected = std::fs::read_to_string(&golden).unwrap();
        assert_eq!(
            out, expected,
            "regenerate with: meshctl inject k8s/stocks/{app}.yml > k8s/stocks/{app}-with-mesh.yml"
        );
        assert_eq!(
            err,
            format!("deployment/{app} injected\nservice/{app} skipped\n")
        );
    }
}

#[test]
fn inject_twice_is_inject_once_and_uninject_restores_the_input() {
    for input in [
        repo("k8s/stocks/stockdata.yml"),
        repo("k8s/stocks/stockweb.yml"),
        fixture("workloads.yml"),
    ] {
        let input = input.to_str().unwrap();
        let original = std::fs::read_to_string(input).unwrap();
        for mode in [&["inject"][..], &["inject", "--manual"][..]] {
            let (once, _) = ok(&[mode, &[input]].concat(), "");
            let (twice, reports) = ok(&[mode, &["-"]].concat(), &once);
            assert_eq!(twice, once, "{mode:?} {input}");
            assert!(reports.contains("already injected"), "{reports}");
            assert!(
                reports
                    .lines()
                    .all(|line| !line.ends_with(" injected") || line.ends_with("already injected")),
                "nothing injected twice: {reports}"
            );
            let (back, reports) = ok(&["uninject", "-"], &once);
            assert_eq!(docs(&back), docs(&original), "{mode:?} {input}");
            assert!(reports.contains("uninjected"), "{reports}");
        }
    }
}

#[test]
fn every_workload_kind_gets_its_pod_template_annotated() {
    let input = fixture("workloads.yml");
    let (out, err) = ok(&["inject", input.to_str().unwrap()], "");
    assert_eq!(
        err,
        "configmap/settings skipped\n\
         statefulset/ledger injected\n\
         daemonset/collector injected\n\
         daemonset/node-agent skipped: hostNetwork: true (the sidecar would take over the node's own traffic)\n\
         replicaset/frontend injected\n\
         service/frontend skipped\n\
         job/migrate injected\n\
         cronjob/report injected\n\
         pod/debug injected\n\
         deployment/listed injected\n\
         secret/token skipped\n"
    );
    let out = docs(&out);
    let input_docs = docs(&std::fs::read_to_string(&input).unwrap());
    assert_eq!(out.len(), input_docs.len(), "documents kept in order");
    let annotation = |template: &Yaml| -> Option<String> {
        template["metadata"]["annotations"]["stockkube.io/inject"]
            .as_str()
            .map(str::to_owned)
    };
    let enabled = Some("enabled".to_owned());
    let template = ["spec", "template"];
    assert_eq!(out[0], input_docs[0], "a ConfigMap passes through");
    assert_eq!(annotation(path(&out[1], &template)), enabled);
    assert_eq!(annotation(path(&out[2], &template)), enabled);
    assert_eq!(
        path(
            &out[2],
            &["spec", "template", "metadata", "annotations", "note"]
        )
        .as_str(),
        Some("kept as it is")
    );
    assert_eq!(out[3], input_docs[3], "hostNetwork pods are left alone");
    assert_eq!(annotation(path(&out[4], &template)), enabled);
    assert_eq!(out[5], input_docs[5]);
    assert_eq!(annotation(path(&out[6], &template)), enabled);
    assert_eq!(
        annotation(path(&out[7], &["spec", "jobTemplate", "spec", "template"])),
        enabled
    );
    assert_eq!(annotation(&out[8]), enabled, "a Pod is its own template");
    assert_eq!(
        annotation(path(&out[9]["items"][0], &template)),
        enabled,
        "List items"
    );
    assert_eq!(out[9]["items"][1], input_docs[9]["items"][1]);
}

#[test]
fn manual_injection_adds_the_intercepting_sidecar() {
    let input = repo("k8s/stocks/stockdata.yml");
    let (out, _) = ok(&["inject", "--manual", input.to_str().unwrap()], "");
    let out = docs(&out);
    let spec = path(&out[0], &["spec", "template", "spec"]);
    let names = |list: &str| -> Vec<&str> {
        spec[list]
            .as_vec()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect()
    };
    assert_eq!(names("containers"), ["stockdata"]);
    assert_eq!(names("initContainers"), ["mesh-init", "mesh-proxy"]);
    let proxy = &spec["initContainers"][1];
    assert_eq!(
        proxy["restartPolicy"].as_str(),
        Some("Always"),
        "a native sidecar"
    );
    let env: Vec<_> = proxy["env"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap(),
                e["value"].as_str().unwrap_or("(from the pod)"),
            )
        })
        .collect();
    for expected in [
        ("MESH_PROXY_INBOUND", "0.0.0.0:4143"),
        ("MESH_PROXY_OUTBOUND_TRANSPARENT", "127.0.0.1:4140"),
        (
            "MESH_PROXY_DESTINATION",
            "http://mesh-controller.stockkube-mesh.svc.cluster.local:8086",
        ),
        ("MESH_PROXY_NAMESPACE", "(from the pod)"),
    ] {
        assert!(env.contains(&expected), "{expected:?} in {env:?}");
    }
    assert!(
        !env.iter()
            .any(|(name, _)| *name == "MESH_PROXY_APP" || *name == "MESH_PROXY_OUTBOUND"),
        "no app address, no per-service listeners: {env:?}"
    );
    let init = &spec["initContainers"][0];
    assert_eq!(init["name"].as_str(), Some("mesh-init"));
    let args: Vec<_> = init["args"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(
        args.windows(2).any(|w| w == ["--outbound-port", "4140"]),
        "{args:?}"
    );
    let annotations = path(&out[0], &["spec", "template", "metadata", "annotations"]);
    assert_eq!(
        annotations.as_hash().unwrap().len(),
        1,
        "manual injection needs no inject annotation, only the version: {annotations:?}"
    );
    assert_eq!(
        annotations["stockkube.io/proxy-version"].as_str(),
        Some(env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn native_sidecar_false_makes_the_proxy_a_regular_container_that_goes_first() {
    let input = repo("k8s/stocks/stockdata.yml");
    let input = input.to_str().unwrap();
    let (out, _) = ok(&["inject", "--manual", "--native-sidecar=false", input], "");
    let out = docs(&out);
    let spec = path(&out[0], &["spec", "template", "spec"]);
    assert_eq!(spec["containers"][0]["name"].as_str(), Some("mesh-proxy"));
    assert_eq!(spec["containers"][1]["name"].as_str(), Some("stockdata"));
    assert_eq!(spec["initContainers"].as_vec().unwrap().len(), 1);
    let hook = &spec["containers"][0]["lifecycle"]["postStart"]["exec"]["command"];
    assert_eq!(hook[0].as_str(), Some("/usr/bin/mesh-probe"));
    // `--native-sidecar` alone and `=true` are the default.
    let (default, _) = ok(&["inject", "--manual", input], "");
    let (explicit, _) = ok(&["inject", "--manual", "--native-sidecar", input], "");
    assert_eq!(default, explicit);
    let err = fails(&["inject", "--native-sidecar=false", input], "");
    assert!(err.contains("only apply with --manual"), "{err}");
}

fn trust_anchor() -> String {
    mesh_controller::identity::issuer::Authority::generate(
        "cluster.local",
        std::time::Duration::from_secs(3600),
    )
    .unwrap()
    .trust_anchor_pem
}

#[test]
fn with_trust_anchors_the_manual_proxy_gets_its_pods_identity() {
    let dir = std::env::temp_dir().join(format!("meshctl-anchors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let anchors = dir.join("ca.crt");
    let pem = trust_anchor();
    std::fs::write(&anchors, &pem).unwrap();
    let input = repo("k8s/stocks/stockdata.yml");
    let input = input.to_str().unwrap();
    let anchors = anchors.to_str().unwrap();
    let (out, _) = ok(
        &[
            "inject",
            "--manual",
            "--identity-trust-anchors",
            anchors,
            input,
        ],
        "",
    );
    let out = docs(&out);
    let spec = path(&out[0], &["spec", "template", "spec"]);
    let proxy = &spec["initContainers"][1];
    let env = |name: &str| {
        proxy["env"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|e| e["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("{name}"))
            .clone()
    };
    assert_eq!(
        env("MESH_PROXY_IDENTITY")["value"].as_str(),
        Some("spiffe://cluster.local/ns/$(MESH_PROXY_NAMESPACE)/sa/$(MESH_POD_SERVICE_ACCOUNT)")
    );
    assert_eq!(
        env("MESH_PROXY_IDENTITY_TRUST_ANCHORS_PEM")["value"].as_str(),
        Some(pem.as_str())
    );
    let volume = &spec["volumes"][0];
    assert_eq!(
        volume["projected"]["sources"][0]["serviceAccountToken"]["audience"].as_str(),
        Some("identity.stockkube.io")
    );

    std::fs::write(dir.join("empty"), "").unwrap();
    let empty = dir.join("empty");
    let err = fails(
        &[
            "inject",
            "--manual",
            "--identity-trust-anchors",
            empty.to_str().unwrap(),
            input,
        ],
        "",
    );
    assert!(err.contains("no PEM certificate"), "{err}");
    let err = fails(&["inject", "--identity-trust-anchors", anchors, input], "");
    assert!(err.contains("only apply with --manual"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A Job's pod finishes when its app does: with native sidecars the proxy is
/// no regular container, so nothing keeps the pod running afterwards.
#[test]
fn a_jobs_pod_gets_the_proxy_among_its_init_containers() {
    let input = fixture("workloads.yml");
    let (out, _) = ok(&["inject", "--manual", input.to_str().unwrap()], "");
    let out = docs(&out);
    let job = out
        .iter()
        .find(|d| d["kind"].as_str() == Some("Job"))
        .unwrap();
    let spec = path(job, &["spec", "template", "spec"]);
    assert!(
        spec["containers"]
            .as_vec()
            .unwrap()
            .iter()
            .all(|c| c["name"].as_str() != Some("mesh-proxy"))
    );
    let proxy = spec["initContainers"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str() == Some("mesh-proxy"))
        .expect("the proxy among init containers");
    assert_eq!(proxy["restartPolicy"].as_str(), Some("Always"));
}

#[test]
fn stdin_and_directories_give_the_same_output_as_files() {
    let files = [
        // In name order, as a directory is read ('-' sorts before '.').
        repo("k8s/stocks/namespace.yml"),
        repo("k8s/stocks/stockdata-with-mesh.yml"),
        repo("k8s/stocks/stockdata.yml"),
        repo("k8s/stocks/stockweb-with-mesh.yml"),
        repo("k8s/stocks/stockweb.yml"),
    ];
    let names: Vec<&str> = files.iter().map(|f| f.to_str().unwrap()).collect();
    let (from_files, file_reports) = ok(&[&["inject"][..], &names].concat(), "");
    let dir = repo("k8s/stocks");
    let (from_dir, dir_reports) = ok(&["inject", dir.to_str().unwrap()], "");
    assert_eq!(
        from_dir, from_files,
        "a directory is its files in name order"
    );
    assert_eq!(dir_reports, file_reports);

    let text: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect::<Vec<_>>()
        .join("---\n");
    let (from_stdin, _) = ok(&["inject"], &text);
    assert_eq!(from_stdin, from_files, "no argument reads stdin");
    let (from_dash, _) = ok(&["inject", "-"], &text);
    assert_eq!(from_dash, from_files);
}

#[test]
fn bad_input_names_the_file_and_document_and_writes_nothing() {
    let dir = std::env::temp_dir().join(format!("meshctl-inject-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = repo("k8s/stocks/stockdata.yml");
    let good = good.to_str().unwrap();
    let write = |name: &str, text: &str| {
        let file = dir.join(name);
        std::fs::write(&file, text).unwrap();
        file.to_str().unwrap().to_owned()
    };

    let broken = write(
        "broken.yml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\napiVersion: v1\nkind: [Service\nmetadata: {}\n",
    );
    // A good file first: its output must not appear either.
    let err = fails(&["inject", good, &broken], "");
    assert!(
        err.contains(&format!("{broken}: document 2 (line ")),
        "{err}"
    );
    let line: usize = err
        .split("(line ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    assert!((7..=9).contains(&line), "line {line}: {err}");

    let not_object = write("list.yml", "- just\n- a list\n");
    let err = fails(&["inject", &not_object], "");
    assert!(
        err.contains(&format!(
            "{not_object}: document 1 (line 1): not a Kubernetes object"
        )),
        "{err}"
    );
    let no_kind = write("nokind.yml", "# settings\nname: x\nvalue: 3\n");
    let err = fails(&["inject", &no_kind], "");
    assert!(
        err.contains(&format!("{no_kind}: document 1 (line 2): not a Kubernetes object: it needs `apiVersion` and `kind`")),
        "{err}"
    );
    let err = fails(
        &["uninject", "-"],
        "kind: Deployment\napiVersion: apps/v1\nspec: 3\n",
    );
    assert!(err.contains("<stdin>: document 1"), "{err}");
    assert!(
        err.contains("deployment/<unnamed> has no pod template"),
        "{err}"
    );

    let missing = dir.join("missing.yml");
    let missing = missing.to_str().unwrap();
    let err = fails(&["inject", good, missing], "");
    assert!(err.contains(&format!("{missing}: cannot read")), "{err}");
    assert!(err.contains("No such file"), "{err}");

    let empty_dir = dir.join("empty");
    std::fs::create_dir_all(&empty_dir).unwrap();
    let err = fails(&["inject", empty_dir.to_str().unwrap()], "");
    assert!(err.contains("no .yml or .yaml files"), "{err}");

    let err = fails(&["inject", "--frobnicate", good], "");
    assert!(err.contains("--frobnicate"), "{err}");
    let err = fails(&["inject", "--proxy-image", "x", good], "");
    assert!(err.contains("only apply with --manual"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `kubernetes-validate`, from the test venv that `scripts/test.sh` makes.
pub(crate) fn kubernetes_validate() -> Option<PathBuf> {
    let candidate = std::env::var_os("STOCKKUBE_K8S_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo("target/interop-venv/bin/kubernetes-validate"));
    if candidate.is_file() {
        return Some(candidate);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "kubernetes-validate is required with CI=true: run scripts/test.sh, which installs it \
         (looked for {})",
        candidate.display()
    );
    None
}

/// Writes `text`'s documents to a file for kubernetes-validate, with each
/// `List`'s items as documents of their own (it has no schema for `List`).
fn validation_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let mut out = String::new();
    for doc in docs(text) {
        let items = if doc["kind"].as_str() == Some("List") {
            doc["items"].as_vec().unwrap().clone()
        } else {
            vec![doc]
        };
        for item in items {
            YamlEmitter::new(&mut out).dump(&item).unwrap();
            out.push('\n');
        }
    }
    let file = dir.join(name);
    std::fs::write(&file, out).unwrap();
    file
}

#[test]
fn every_manifest_and_every_output_validates_strictly() {
    let Some(validate) = kubernetes_validate() else {
        eprintln!("SKIPPED: kubernetes-validate is not installed (scripts/test.sh installs it)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("meshctl-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    // Every committed manifest (kind-config.yml configures kind, not the API).
    for sub in ["k8s/stocks", "k8s/mesh"] {
        for entry in std::fs::read_dir(repo(sub)).unwrap() {
            let file = entry.unwrap().path();
            if file.extension().is_some_and(|e| e == "yml") {
                files.push(file);
            }
        }
    }
    // And what inject writes, three ways, for the sample and every kind.
    let anchors = dir.join("ca.crt");
    std::fs::write(&anchors, trust_anchor()).unwrap();
    let anchors = anchors.to_str().unwrap();
    for (index, input) in [repo("k8s/stocks"), fixture("workloads.yml")]
        .iter()
        .enumerate()
    {
        let input = input.to_str().unwrap();
        for (mode, args) in [
            ("annotated", &["inject", input][..]),
            ("manual", &["inject", "--manual", input][..]),
            (
                "identity",
                &[
                    "inject",
                    "--manual",
                    "--identity-trust-anchors",
                    anchors,
                    input,
                ][..],
            ),
        ] {
            let (out, _) = ok(args, "");
            files.push(validation_file(&dir, &format!("{index}-{mode}.yml"), &out));
        }
    }
    assert_valid(&validate, &files);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs `kubernetes-validate --strict` on `files`; fails on any warning.
pub(crate) fn assert_valid(validate: &Path, files: &[PathBuf]) {
    let output = Command::new(validate)
        .arg("--strict")
        .arg("--quiet")
        .args(files)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{report}");
    assert!(
        !report.contains("WARN") && !report.contains("ERROR"),
        "{report}"
    );
}
