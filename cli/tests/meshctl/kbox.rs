//! The mesh in a cluster in a box: pods are network namespaces routed
//! through a node namespace, a kube-proxy stand-in gives Services their
//! cluster IPs (a pod per connection, at random), a fake API server serves
//! the Services, EndpointSlices and Pods that describe them, and a small
//! kubelet stand-in runs each pod's containers exactly as the committed
//! manifests (`k8s/stocks/`, `k8s/mesh/controller.yml`) and `meshctl inject
//! --manual` describe them: init containers first, then the others, with
//! their args, env (downward API filled in), user and sysctls. StockWeb and
//! StockData are the real, unchanged binaries; the controller runs on its
//! Kubernetes backend; every sidecar is the real proxy behind the real
//! `mesh-proxy-init`. Needs root (CI runs as root); everything it makes is
//! removed afterwards, also when it fails.

use crate::{Stocks, repo};
use mesh_controller::test_util::FakeApiServer;
use mesh_runtime::netns::{
    ECHO_PORT, ECHO_SERVER, add_node, add_routed_pod, echo_round_trip, serve_in, sh,
};
use serde_json::{Value, json};
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};
use tokio::process::{Child, Command};
use yaml_rust2::{Yaml, YamlLoader};

const STOCKDATA_IP: &str = "10.96.0.10";
const CONTROLLER_IP: &str = "10.96.0.20";
/// The port the fake API server listens on in the node namespace.
const API_PORT: u16 = 6443;

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_meshctl"))
        .parent()
        .expect("meshctl sits in the target directory")
        .to_owned()
}

/// The first document of a manifest file whose kind is `kind`.
fn manifest(text: &str, kind: &str) -> Yaml {
    YamlLoader::load_from_str(text)
        .expect("valid YAML")
        .into_iter()
        .find(|doc| doc["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} in the manifest"))
}

fn injected(path: &str) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(["inject", "--manual", repo(path).to_str().unwrap()])
        .output()
        .expect("meshctl runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 YAML")
}

/// One pod: its network namespace and processes.
struct Pod {
    name: String,
    namespace: String,
    netns: String,
    ip: String,
    /// Container name to its process.
    containers: BTreeMap<String, Child>,
    template: Yaml,
}

/// The node, its pods, the API server; torn down on drop.
struct Cluster {
    tag: String,
    node: String,
    next: u8,
    pods: Vec<Pod>,
    api: FakeApiServer,
    dir: PathBuf,
    /// Service name to (cluster IP, port, target port).
    services: BTreeMap<String, (String, u16, u16)>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for pod in &mut self.pods {
            for child in pod.containers.values_mut() {
                let _ = child.start_kill();
            }
        }
        for netns in self.pods.iter().map(|p| &p.netns).chain([&self.node]) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", netns])
                .status();
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{netns}"));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Cluster {
    async fn new() -> Self {
        let tag = format!("{}", std::process::id() % 100_000);
        let node = format!("kbn{tag}");
        let dir = std::env::temp_dir().join(format!("kbox-{tag}"));
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        add_node(&node);
        // The API server lives in the node namespace, on a thread of its own.
        let api = serve_in(&node, |ready| async move {
            let api = FakeApiServer::start_on(format!("0.0.0.0:{API_PORT}").parse().unwrap()).await;
            let _ = ready.send(api);
            std::future::pending::<()>().await;
        });
        Self {
            tag,
            node,
            next: 1,
            pods: Vec::new(),
            api,
            dir,
            services: BTreeMap::new(),
        }
    }

    /// A Service with a cluster IP, in the API and in the node's rules.
    fn add_service(&mut self, namespace: &str, name: &str, ip: &str, port: u16, target: u16) {
        self.api.apply(json!({
            "kind": "Service",
            "metadata": {"namespace": namespace, "name": name},
            "spec": {
                "clusterIP": ip, "clusterIPs": [ip],
                "ports": [{"name": "grpc", "port": port, "targetPort": target, "protocol": "TCP"}],
            },
        }));
        self.services
            .insert(format!("{namespace}/{name}"), (ip.to_owned(), port, target));
    }

    /// The kube-proxy stand-in: each Service's cluster IP to its ready
    /// pods, one chosen at random per connection.
    async fn sync_service(&self, key: &str, pods: &[&str]) {
        let (ip, port, target) = &self.services[key];
        let chain = format!("KBOX-{}", key.replace('/', "-").to_uppercase());
        let chain = &chain[..chain.len().min(28)];
        let mut rules = format!("*nat\n:{chain} - [0:0]\n");
        let existing = output(&[
            "ip",
            "netns",
            "exec",
            &self.node,
            "iptables-save",
            "-t",
            "nat",
        ])
        .await;
        let jump = format!("-A PREROUTING -d {ip}/32 -p tcp -m tcp --dport {port} -j {chain}");
        if !existing.lines().any(|l| l == jump) {
            rules += &format!("-A PREROUTING -d {ip}/32 -p tcp --dport {port} -j {chain}\n");
        }
        let ips: Vec<&str> = pods.iter().map(|name| self.pod(name).ip.as_str()).collect();
        for (k, pod_ip) in ips.iter().enumerate() {
            let left = ips.len() - k;
            let pick = if left > 1 {
                format!(
                    "-m statistic --mode random --probability {:.5} ",
                    1.0 / left as f64
                )
            } else {
                String::new()
            };
            rules +=
                &format!("-A {chain} -p tcp {pick}-j DNAT --to-destination {pod_ip}:{target}\n");
        }
        rules += "COMMIT\n";
        restore(&self.node, &rules).await;
    }

    fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    fn pod_mut(&mut self, name: &str) -> &mut Pod {
        self.pods
            .iter_mut()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// Starts a pod from `template` (a Deployment's pod template) the way
    /// a kubelet would, and tells the API server about it.
    async fn run_pod(
        &mut self,
        namespace: &str,
        name: &str,
        template: &Yaml,
        extra_env: &[(&str, &str)],
    ) {
        let i = self.next;
        self.next += 1;
        let netns = format!("kb{i}p{}", self.tag);
        sh(&["ip", "netns", "add", &netns]);
        self.pods.push(Pod {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            netns: netns.clone(),
            ip: format!("10.213.{i}.2"),
            containers: BTreeMap::new(),
            template: template.clone(),
        });
        let ip = add_routed_pod(&self.node, &netns, "10.213", i, &format!("kb{}v", self.tag));
        // Cluster DNS, as far as these pods need it.
        let hosts = format!(
            "127.0.0.1 localhost\n{STOCKDATA_IP} stockdata stockdata.stocks stockdata.stocks.svc stockdata.stocks.svc.cluster.local\n\
             {CONTROLLER_IP} mesh-controller.stockkube-mesh.svc.cluster.local\n"
        );
        std::fs::create_dir_all(format!("/etc/netns/{netns}")).unwrap();
        std::fs::write(format!("/etc/netns/{netns}/hosts"), hosts).unwrap();

        let spec = &template["spec"];
        if let Some(sysctls) = spec["securityContext"]["sysctls"].as_vec() {
            for sysctl in sysctls {
                let setting = format!(
                    "{}={}",
                    sysctl["name"].as_str().unwrap(),
                    sysctl["value"].as_str().unwrap()
                );
                sh(&["ip", "netns", "exec", &netns, "sysctl", "-qw", &setting]);
            }
        }
        let pod_user = spec["securityContext"]["runAsUser"].as_i64();
        let mut containers = BTreeMap::new();
        for init in spec["initContainers"].as_vec().into_iter().flatten() {
            let mut child = self.start(&netns, namespace, name, init, pod_user, extra_env);
            let container = init["name"].as_str().unwrap();
            if init["restartPolicy"].as_str() == Some("Always") {
                // A native sidecar: it runs beside the app, which starts
                // once its startup probe passes.
                self.wait_started(&netns, name, init).await;
                containers.insert(container.to_owned(), child);
                continue;
            }
            let status = child.wait().await.unwrap();
            assert!(
                status.success(),
                "init container {container} of {name} failed: {}",
                self.log(name, init)
            );
        }
        for container in spec["containers"].as_vec().expect("containers") {
            let child = self.start(&netns, namespace, name, container, pod_user, extra_env);
            containers.insert(container["name"].as_str().unwrap().to_owned(), child);
        }
        self.pod_mut(name).containers = containers;
        let names = |list: &str| -> Vec<Value> {
            spec[list]
                .as_vec()
                .into_iter()
                .flatten()
                .map(|c| json!({"name": c["name"].as_str(), "image": c["image"].as_str()}))
                .collect()
        };
        self.api.apply(json!({
            "kind": "Pod",
            "metadata": {"namespace": namespace, "name": name, "labels": {"app": name.rsplit_once('-').map_or(name, |p| p.0)}},
            "spec": {
                "serviceAccountName": spec["serviceAccountName"].as_str().unwrap_or("default"),
                "nodeName": "kbox",
                "initContainers": names("initContainers"),
                "containers": names("containers"),
            },
            "status": {"podIP": ip},
        }));
    }

    /// Polls a container's HTTP startup probe, as the kubelet does, until
    /// it passes (or, without one, returns at once).
    async fn wait_started(&self, netns: &str, pod: &str, container: &Yaml) {
        let probe = &container["startupProbe"]["httpGet"];
        let Some(port) = probe["port"].as_i64() else {
            return;
        };
        let url = format!(
            "http://127.0.0.1:{port}{}",
            probe["path"].as_str().unwrap_or("/")
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while output_ok(&[
            "ip",
            "netns",
            "exec",
            netns,
            "curl",
            "-fsS",
            "--max-time",
            "1",
            &url,
        ])
        .await
        .is_none()
        {
            assert!(
                Instant::now() < deadline,
                "{pod}: {} never passed its startup probe: {}",
                container["name"].as_str().unwrap(),
                self.log(pod, container)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_path(&self, pod: &str, container: &Yaml) -> PathBuf {
        self.dir
            .join("logs")
            .join(format!("{pod}-{}.log", container["name"].as_str().unwrap()))
    }

    fn log(&self, pod: &str, container: &Yaml) -> String {
        std::fs::read_to_string(self.log_path(pod, container)).unwrap_or_default()
    }

    /// One container's process, as its manifest says to run it.
    fn start(
        &self,
        netns: &str,
        namespace: &str,
        pod: &str,
        container: &Yaml,
        pod_user: Option<i64>,
        extra_env: &[(&str, &str)],
    ) -> Child {
        // The image's entrypoint is its binary (this repository's images), or
        // the container says its `command`.
        let image = container["image"].as_str().expect("an image");
        let mut program: Vec<String> = container["command"]
            .as_vec()
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_str().map(str::to_owned))
            .collect();
        if program.is_empty() {
            let binary = image
                .strip_prefix("stockkube/")
                .and_then(|i| i.split(':').next())
                .unwrap_or_else(|| panic!("an image of this repository: {image}"));
            program.push(bin_dir().join(binary).to_str().unwrap().to_owned());
        }
        let user = container["securityContext"]["runAsUser"]
            .as_i64()
            .or(pod_user)
            .unwrap_or(0)
            .to_string();
        let args: Vec<String> = container["args"]
            .as_vec()
            .into_iter()
            .flatten()
            .map(|a| match a {
                Yaml::String(s) => s.clone(),
                Yaml::Integer(n) => n.to_string(),
                other => panic!("an argument: {other:?}"),
            })
            .collect();
        let log = std::fs::File::create(self.log_path(pod, container)).unwrap();
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", netns, "setpriv"])
            .arg(format!("--reuid={user}"))
            .arg(format!("--regid={user}"))
            .arg("--clear-groups")
            .args(&program)
            .args(&args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true);
        for env in container["env"].as_vec().into_iter().flatten() {
            let name = env["name"].as_str().unwrap();
            let value = match env["value"].as_str() {
                Some(value) => value.to_owned(),
                None => match env["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    Some("metadata.name") => pod.to_owned(),
                    Some("metadata.namespace") => namespace.to_owned(),
                    other => panic!("a downward API field the stand-in fills: {other:?}"),
                },
            };
            command.env(name, value);
        }
        for (name, value) in extra_env {
            command.env(name, value);
        }
        command.spawn().unwrap()
    }

    /// StockData's EndpointSlice: every pod named, with its conditions
    /// (ready, terminating).
    fn publish_stockdata(&self, endpoints: &[(&str, bool, bool)]) {
        self.api.apply(json!({
            "kind": "EndpointSlice",
            "metadata": {
                "namespace": "stocks", "name": "stockdata-kbox",
                "labels": {"kubernetes.io/service-name": "stockdata"},
            },
            "addressType": "IPv4",
            "ports": [{"name": "grpc", "port": 80, "protocol": "TCP"}],
            "endpoints": endpoints.iter().map(|(name, ready, terminating)| json!({
                "addresses": [self.pod(name).ip],
                "conditions": {"ready": ready, "serving": true, "terminating": terminating},
                "nodeName": "kbox",
                "targetRef": {"kind": "Pod", "namespace": "stocks", "name": name},
            })).collect::<Vec<_>>(),
        }));
    }

    /// StockWeb's `/api/stocks` through its pod's address: rows per
    /// server, errors, rows.
    async fn stocks(&self, stockweb: &str) -> Option<Stocks> {
        fetch_stocks(&self.node, &self.pod(stockweb).ip).await
    }

    /// Deletes a pod the way the kubelet stops it: SIGTERM to the app's
    /// containers, and once they exited (or the 30 s grace period passed:
    /// SIGKILL) to its native sidecars, last started first; then the pod is
    /// gone. `meanwhile` runs right after the first SIGTERM (the endpoint
    /// controller's update, which races the kubelet's).
    async fn terminate_pod(&mut self, name: &str, meanwhile: impl FnOnce(&Self)) {
        let template = self.pod(name).template.clone();
        let sidecars: Vec<String> = template["spec"]["initContainers"]
            .as_vec()
            .into_iter()
            .flatten()
            .filter(|c| c["restartPolicy"].as_str() == Some("Always"))
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .rev()
            .collect();
        let apps: Vec<String> = self
            .pod(name)
            .containers
            .keys()
            .filter(|c| !sidecars.contains(c))
            .cloned()
            .collect();
        let mut meanwhile = Some(meanwhile);
        for group in [apps, sidecars] {
            for container in &group {
                let child = &self.pod(name).containers[container];
                if let Some(pid) = child.id() {
                    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a pid");
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                }
            }
            if let Some(meanwhile) = meanwhile.take() {
                meanwhile(self);
            }
            for container in &group {
                let child = self.pod_mut(name).containers.get_mut(container).unwrap();
                if tokio::time::timeout(Duration::from_secs(30), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
        }
        self.delete_pod(name).await;
    }

    /// Waits until a TCP port of `pod` accepts on its loopback.
    async fn wait_listening(&self, pod: &str, port: u16) {
        let netns = self.pod(pod).netns.clone();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let script = format!("exec 3<>/dev/tcp/127.0.0.1/{port}");
            if output_ok(&["ip", "netns", "exec", &netns, "bash", "-c", &script])
                .await
                .is_some()
            {
                return;
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = self
                    .pod(pod)
                    .containers
                    .keys()
                    .map(|c| {
                        let log = std::fs::read_to_string(
                            self.dir.join("logs").join(format!("{pod}-{c}.log")),
                        );
                        format!("{c}: {}", log.unwrap_or_default())
                    })
                    .collect();
                panic!("{pod} never listened on {port}: {logs:#?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn kill(&mut self, pod: &str, container: &str) {
        let child = self
            .pod_mut(pod)
            .containers
            .get_mut(container)
            .expect("a container");
        let _ = child.kill().await;
    }

    async fn restart(&mut self, pod: &str, container: &str, extra_env: &[(&str, &str)]) {
        self.kill(pod, container).await;
        let (netns, namespace, template) = {
            let pod = self.pod(pod);
            (
                pod.netns.clone(),
                pod.namespace.clone(),
                pod.template.clone(),
            )
        };
        let spec = &template["spec"];
        let yaml = spec["containers"]
            .as_vec()
            .into_iter()
            .chain(spec["initContainers"].as_vec())
            .flatten()
            .find(|c| c["name"].as_str() == Some(container))
            .unwrap()
            .clone();
        let child = self.start(
            &netns,
            &namespace,
            pod,
            &yaml,
            spec["securityContext"]["runAsUser"].as_i64(),
            extra_env,
        );
        self.pod_mut(pod)
            .containers
            .insert(container.to_owned(), child);
    }

    /// Removes a pod: its processes and network namespace.
    async fn delete_pod(&mut self, name: &str) {
        let index = self
            .pods
            .iter()
            .position(|p| p.name == name)
            .expect("a pod");
        let mut pod = self.pods.remove(index);
        for child in pod.containers.values_mut() {
            let _ = child.kill().await;
        }
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &pod.netns])
            .status();
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", pod.netns));
        self.api.delete("Pod", &pod.namespace, name);
    }
}

/// StockWeb's `/api/stocks` at `ip`, fetched from the node.
async fn fetch_stocks(node: &str, ip: &str) -> Option<Stocks> {
    let url = format!("http://{ip}:80/api/stocks");
    let body = output_ok(&[
        "ip",
        "netns",
        "exec",
        node,
        "curl",
        "-fsS",
        "--max-time",
        "15",
        &url,
    ])
    .await?;
    crate::parse_stocks(body.as_bytes())
}

/// Loads StockWeb until `stop` turns true; every answer.
fn load_until(
    node: String,
    ip: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Vec<Option<Stocks>>> {
    tokio::spawn(async move {
        let mut answers = Vec::new();
        // Bounded: a rolling update of three pods takes seconds.
        while !*stop.borrow() && answers.len() < 2_000 {
            answers.push(fetch_stocks(&node, &ip).await);
        }
        answers
    })
}

async fn output_ok(args: &[&str]) -> Option<String> {
    let out = Command::new(args[0]).args(&args[1..]).output().await.ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn output(args: &[&str]) -> String {
    output_ok(args)
        .await
        .unwrap_or_else(|| panic!("{args:?} failed"))
}

async fn restore(netns: &str, rules: &str) {
    use tokio::io::AsyncWriteExt as _;
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "iptables-restore", "--noflush"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .await
        .unwrap();
    assert!(child.wait().await.unwrap().success(), "{rules}");
}

/// Loads StockWeb's page `rounds` times at once; every answer's
/// (servers, errors, rows).
async fn load(cluster: &Cluster, stockweb: &str, rounds: usize) -> Vec<Stocks> {
    let mut answers = Vec::new();
    for _ in 0..rounds {
        answers.push(cluster.stocks(stockweb).await.expect("StockWeb answers"));
    }
    answers
}

#[tokio::test]
async fn k8s_the_tutorial_in_a_cluster_in_a_box() {
    let tools = [
        "ip",
        "iptables-restore",
        "curl",
        "python3",
        "setpriv",
        "bash",
    ];
    if !mesh_runtime::netns::prerequisites("the cluster-in-a-box test", &tools) {
        return;
    }
    let mut cluster = Cluster::new().await;
    let kubeconfig = cluster.dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kbox\n  cluster:\n    server: http://10.213.1.1:{API_PORT}\n\
             users:\n- name: kbox\n  user:\n    token: kbox\ncontexts:\n- name: kbox\n  context:\n    cluster: kbox\n    user: kbox\n\
             current-context: kbox\n"
        ),
    )
    .unwrap();
    let kubeconfig = kubeconfig.to_str().unwrap().to_owned();
    // The identity Secret `meshctl install` makes, as the kubelet would
    // mount it.
    let identity = cluster.dir.join("identity");
    mesh_controller::identity::issuer::Authority::generate(
        "cluster.local",
        Duration::from_secs(3600),
    )
    .unwrap()
    .write(&identity)
    .unwrap();
    // A Secret volume's files are the kubelet's, mode 0644 unless the
    // manifest says otherwise; the controller runs as another user.
    for file in ["ca.crt", "issuer.crt", "issuer.key"] {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(identity.join(file), std::fs::Permissions::from_mode(0o644))
            .unwrap();
    }
    let identity = identity.to_str().unwrap().to_owned();
    let controller_env = [
        ("KUBECONFIG", kubeconfig.as_str()),
        ("MESH_CONTROLLER_IDENTITY_DIR", identity.as_str()),
    ];

    // The control plane, as k8s/mesh/controller.yml runs it (pod 1).
    let controller = manifest(
        &std::fs::read_to_string(repo("k8s/mesh/controller.yml")).unwrap(),
        "Deployment",
    );
    cluster.add_service(
        "stockkube-mesh",
        "mesh-controller",
        CONTROLLER_IP,
        8086,
        8086,
    );
    cluster
        .run_pod(
            "stockkube-mesh",
            "mesh-controller-0",
            &controller["spec"]["template"],
            &controller_env,
        )
        .await;
    cluster
        .sync_service("stockkube-mesh/mesh-controller", &["mesh-controller-0"])
        .await;
    cluster.wait_listening("mesh-controller-0", 8086).await;

    // The sample without the mesh: StockWeb's one connection reaches one pod.
    let stockdata_plain = std::fs::read_to_string(repo("k8s/stocks/stockdata.yml")).unwrap();
    let stockweb_plain = std::fs::read_to_string(repo("k8s/stocks/stockweb.yml")).unwrap();
    cluster.add_service("stocks", "stockdata", STOCKDATA_IP, 80, 80);
    let template = manifest(&stockdata_plain, "Deployment")["spec"]["template"].clone();
    for name in ["stockdata-a", "stockdata-b", "stockdata-c"] {
        cluster.run_pod("stocks", name, &template, &[]).await;
        cluster.wait_listening(name, 80).await;
    }
    cluster
        .sync_service(
            "stocks/stockdata",
            &["stockdata-a", "stockdata-b", "stockdata-c"],
        )
        .await;
    cluster.publish_stockdata(&[
        ("stockdata-a", true, false),
        ("stockdata-b", true, false),
        ("stockdata-c", true, false),
    ]);
    let template = manifest(&stockweb_plain, "Deployment")["spec"]["template"].clone();
    cluster
        .run_pod("stocks", "stockweb-plain", &template, &[])
        .await;
    cluster.wait_listening("stockweb-plain", 80).await;
    let (servers, errors, rows) = cluster
        .stocks("stockweb-plain")
        .await
        .expect("StockWeb answers");
    assert_eq!((errors, rows), (0, 100), "{servers:?}");
    assert_eq!(
        servers.len(),
        1,
        "without the mesh, one replica: {servers:?}"
    );
    cluster.delete_pod("stockweb-plain").await;
    for name in ["stockdata-a", "stockdata-b", "stockdata-c"] {
        cluster.delete_pod(name).await;
    }

    // `meshctl inject --manual ... | kubectl apply -f -`: the pods again,
    // with the sidecar.
    let stockdata_meshed = injected("k8s/stocks/stockdata.yml");
    let stockweb_meshed = injected("k8s/stocks/stockweb.yml");
    let template = manifest(&stockdata_meshed, "Deployment")["spec"]["template"].clone();
    for name in ["stockdata-1", "stockdata-2", "stockdata-3"] {
        cluster.run_pod("stocks", name, &template, &[]).await;
        cluster.wait_listening(name, 80).await;
    }
    cluster
        .sync_service(
            "stocks/stockdata",
            &["stockdata-1", "stockdata-2", "stockdata-3"],
        )
        .await;
    cluster.publish_stockdata(&[
        ("stockdata-1", true, false),
        ("stockdata-2", true, false),
        ("stockdata-3", true, false),
    ]);
    let template = manifest(&stockweb_meshed, "Deployment")["spec"]["template"].clone();
    cluster
        .run_pod("stocks", "stockweb-1", &template, &[])
        .await;
    cluster.wait_listening("stockweb-1", 80).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let servers = loop {
        let (servers, errors, rows) = cluster
            .stocks("stockweb-1")
            .await
            .expect("StockWeb answers");
        assert_eq!((errors, rows), (0, 100), "{servers:?}");
        if servers.len() == 3 && servers.values().all(|n| *n >= 15) {
            break servers;
        }
        assert!(
            Instant::now() < deadline,
            "never spread over all 3: {servers:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(servers.values().sum::<u64>(), 100);

    // The controller restarts: traffic goes on, and the next change arrives.
    cluster
        .restart("mesh-controller-0", "controller", &controller_env)
        .await;
    for (servers, errors, rows) in load(&cluster, "stockweb-1", 3).await {
        assert_eq!(
            (errors, rows),
            (0, 100),
            "while the controller restarts: {servers:?}"
        );
    }
    cluster.wait_listening("mesh-controller-0", 8086).await;

    // Scaled to four: the new pod gets requests within 2 s of its endpoint.
    cluster
        .run_pod(
            "stocks",
            "stockdata-4",
            &template_of(&stockdata_meshed),
            &[],
        )
        .await;
    cluster.wait_listening("stockdata-4", 80).await;
    cluster
        .sync_service(
            "stocks/stockdata",
            &["stockdata-1", "stockdata-2", "stockdata-3", "stockdata-4"],
        )
        .await;
    let published = Instant::now();
    cluster.publish_stockdata(&[
        ("stockdata-1", true, false),
        ("stockdata-2", true, false),
        ("stockdata-3", true, false),
        ("stockdata-4", true, false),
    ]);
    loop {
        let (servers, errors, _) = cluster
            .stocks("stockweb-1")
            .await
            .expect("StockWeb answers");
        assert_eq!(errors, 0);
        if servers.contains_key("stockdata-4") {
            break;
        }
        assert!(
            published.elapsed() < Duration::from_secs(2),
            "stockdata-4 unused 2 s after its endpoint: {servers:?}"
        );
    }

    // One is terminating: no new requests, none fails; then it goes.
    cluster.publish_stockdata(&[
        ("stockdata-1", true, false),
        ("stockdata-2", true, false),
        ("stockdata-3", false, true),
        ("stockdata-4", true, false),
    ]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (servers, errors, rows) in load(&cluster, "stockweb-1", 3).await {
        assert_eq!((errors, rows), (0, 100), "{servers:?}");
        assert!(
            !servers.contains_key("stockdata-3"),
            "a terminating endpoint got requests: {servers:?}"
        );
    }
    cluster.publish_stockdata(&[
        ("stockdata-1", true, false),
        ("stockdata-2", true, false),
        ("stockdata-4", true, false),
    ]);
    cluster
        .sync_service(
            "stocks/stockdata",
            &["stockdata-1", "stockdata-2", "stockdata-4"],
        )
        .await;
    cluster.delete_pod("stockdata-3").await;

    // One pod's StockData dies under load: no row fails.
    let pid = cluster.pod("stockdata-2").containers["stockdata"]
        .id()
        .expect("it runs");
    let killing = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pid = rustix::process::Pid::from_raw(pid as i32).expect("a pid");
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill it");
    };
    let (during, ()) = tokio::join!(load(&cluster, "stockweb-1", 4), killing);
    let after = load(&cluster, "stockweb-1", 4).await;
    for (servers, errors, rows) in during.into_iter().chain(after) {
        assert_eq!((errors, rows), (0, 100), "a replica died: {servers:?}");
    }

    // A rolling update under load: each old pod is replaced by a new one,
    // the old one terminated as the kubelet does (the app first, then its
    // sidecar) while its endpoint turns terminating. No row fails.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let loading = load_until(
        cluster.node.clone(),
        cluster.pod("stockweb-1").ip.clone(),
        stopped,
    );
    let mut serving = vec!["stockdata-1", "stockdata-2", "stockdata-4"];
    for (old, new) in [
        ("stockdata-1", "stockdata-5"),
        ("stockdata-2", "stockdata-6"),
        ("stockdata-4", "stockdata-7"),
    ] {
        cluster
            .run_pod("stocks", new, &template_of(&stockdata_meshed), &[])
            .await;
        cluster.wait_listening(new, 80).await;
        serving.push(new);
        cluster.sync_service("stocks/stockdata", &serving).await;
        let endpoints = |serving: &[&'static str], terminating: Option<&str>| {
            serving
                .iter()
                .map(|name| {
                    (
                        *name,
                        Some(*name) != terminating,
                        Some(*name) == terminating,
                    )
                })
                .collect::<Vec<_>>()
        };
        cluster.publish_stockdata(&endpoints(&serving, None));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let terminating = endpoints(&serving, Some(old));
        cluster
            .terminate_pod(old, |cluster| cluster.publish_stockdata(&terminating))
            .await;
        serving.retain(|name| *name != old);
        cluster.publish_stockdata(&endpoints(&serving, None));
        cluster.sync_service("stocks/stockdata", &serving).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send(true).unwrap();
    let answers = loading.await.unwrap();
    assert!(answers.len() >= 5, "the load ran: {} pages", answers.len());
    for answer in &answers {
        let (servers, errors, rows) = answer.clone().expect("StockWeb answers");
        assert_eq!(
            (errors, rows),
            (0, 100),
            "during the rolling update: {servers:?}"
        );
    }
    let (servers, _, _) = answers.last().unwrap().clone().unwrap();
    assert!(
        servers
            .keys()
            .all(|s| ["stockdata-5", "stockdata-6", "stockdata-7"].contains(&s.as_str())),
        "after the update only the new pods answer: {servers:?}"
    );

    // A destination nobody registered passes through the sidecar untouched.
    cluster
        .run_pod("stocks", "echo-1", &echo_template(), &[])
        .await;
    cluster.wait_listening("echo-1", ECHO_PORT).await;
    let echo_ip = cluster.pod("echo-1").ip.clone();
    let stockweb_netns = cluster.pod("stockweb-1").netns.clone();
    echo_round_trip(&stockweb_netns, &echo_ip).await.unwrap();
}

fn template_of(manifest_text: &str) -> Yaml {
    manifest(manifest_text, "Deployment")["spec"]["template"].clone()
}

/// A pod that is no Service's: a TCP echo server (python3), unmeshed.
fn echo_template() -> Yaml {
    // A JSON string is a YAML double-quoted scalar.
    let program = serde_json::to_string(ECHO_SERVER).expect("a string");
    let text = format!(
        "spec:\n  containers:\n    - name: echo\n      image: python\n      command: [python3, -c, {program}]\n"
    );
    YamlLoader::load_from_str(&text).unwrap().remove(0)
}
