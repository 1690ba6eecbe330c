//! `meshctl inject` and `meshctl uninject`: Kubernetes YAML in, the same
//! YAML out with the mesh added to (or removed from) every pod template.
//!
//! - Workloads (Deployment, StatefulSet, DaemonSet, ReplicaSet,
//!   ReplicationController, Job, CronJob's job template, Pod, and the items
//!   of a `List`) get the inject annotation on their pod template, or with
//!   `--manual` the sidecar itself (`mesh_controller::inject`).
//! - Everything else passes through unchanged; documents keep their order.
//! - Keys keep their order and untouched values their meaning (YAML comments
//!   are not kept).
//! - One line per resource on stderr says what was done; nothing reaches
//!   stdout unless every input was read and understood, so a bad file never
//!   leaves half a manifest in a pipe to `kubectl apply -f -`.

use anyhow::Context as _;
use mesh_controller::inject::{
    INIT_CONTAINER, INJECT_ANNOTATION, INJECT_ENABLED, Outcome, PROXY_CONTAINER,
    PROXY_VERSION_ANNOTATION, SidecarConfig, SidecarIdentity, add_sidecar, is_injected,
};
use std::{
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
};
use yaml_rust2::{Yaml, YamlEmitter, YamlLoader, yaml::Hash};

/// `meshctl inject`.
#[derive(Debug, clap::Args)]
pub struct InjectArgs {
    /// Files, directories (every .yml/.yaml under them, in name order) or
    /// `-` for standard input; none means standard input.
    #[arg(value_name = "FILE|DIR|-")]
    inputs: Vec<String>,

    /// Write the whole sidecar (proxy container, init container for traffic
    /// redirection) instead of the annotation the injector acts on; for
    /// clusters without the injector.
    #[arg(long)]
    manual: bool,

    /// The proxy image (with --manual).
    #[arg(long, value_name = "IMAGE")]
    proxy_image: Option<String>,

    /// The init container's image (with --manual).
    #[arg(long, value_name = "IMAGE")]
    init_image: Option<String>,

    /// With --manual: the proxy as a native sidecar (an init container with
    /// `restartPolicy: Always`, Kubernetes 1.29 and later: it starts before
    /// the app, stops after it, and lets Jobs finish), or with `false` as a
    /// regular container that holds the app back until it is ready (older
    /// clusters).
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    native_sidecar: Option<bool>,

    /// With --manual: the mesh's trust anchors (PEM file, e.g. the
    /// `ca.crt` of ConfigMap mesh-identity-trust-anchors): the proxy then
    /// gets its pod's ServiceAccount identity and speaks mTLS, as the
    /// injector's proxies do. Without it, the proxy has no identity.
    #[arg(long, value_name = "FILE")]
    identity_trust_anchors: Option<PathBuf>,
}

/// `meshctl uninject`.
#[derive(Debug, clap::Args)]
pub struct UninjectArgs {
    /// Files, directories or `-`, as for `inject`.
    #[arg(value_name = "FILE|DIR|-")]
    inputs: Vec<String>,
}

/// What to do to each pod template.
#[derive(Debug, Clone)]
pub enum Mode {
    Annotate,
    Manual(Box<SidecarConfig>),
    Uninject,
}

pub fn inject_main(args: InjectArgs) -> anyhow::Result<()> {
    let mode = if args.manual {
        let mut config = SidecarConfig::default();
        if let Some(image) = args.proxy_image {
            config.proxy_image = image;
        }
        if let Some(image) = args.init_image {
            config.init_image = image;
        }
        if let Some(native) = args.native_sidecar {
            config.native = native;
        }
        if let Some(path) = &args.identity_trust_anchors {
            let pem = std::fs::read_to_string(path).with_context(|| {
                format!("cannot read {} (--identity-trust-anchors)", path.display())
            })?;
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                anyhow::bail!(
                    "{} (--identity-trust-anchors) holds no PEM certificate",
                    path.display()
                );
            }
            config.identity = Some(SidecarIdentity {
                trust_domain: "cluster.local".into(),
                trust_anchors_pem: pem,
            });
        }
        Mode::Manual(Box::new(config))
    } else {
        if args.proxy_image.is_some()
            || args.init_image.is_some()
            || args.native_sidecar.is_some()
            || args.identity_trust_anchors.is_some()
        {
            anyhow::bail!(
                "--proxy-image, --init-image, --native-sidecar and --identity-trust-anchors only apply with --manual"
            );
        }
        Mode::Annotate
    };
    run(&args.inputs, &mode)
}

pub fn uninject_main(args: UninjectArgs) -> anyhow::Result<()> {
    run(&args.inputs, &Mode::Uninject)
}

fn run(inputs: &[String], mode: &Mode) -> anyhow::Result<()> {
    let sources = read_inputs(inputs)?;
    let output = transform(&sources, mode)?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(output.yaml.as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot write to standard output")?;
    let mut stderr = std::io::stderr().lock();
    for line in &output.reports {
        let _ = writeln!(stderr, "{line}");
    }
    Ok(())
}

/// One input's name (for messages) and text.
#[derive(Debug)]
pub struct Source {
    pub name: String,
    pub text: String,
}

/// Reads every input before anything is written.
fn read_inputs(inputs: &[String]) -> anyhow::Result<Vec<Source>> {
    let stdin = ["-".to_owned()];
    let inputs = if inputs.is_empty() {
        &stdin[..]
    } else {
        inputs
    };
    let mut sources = Vec::new();
    for input in inputs {
        if input == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("<stdin>: cannot read")?;
            sources.push(Source {
                name: "<stdin>".into(),
                text,
            });
            continue;
        }
        let path = Path::new(input);
        let files = if path.is_dir() {
            let mut files = Vec::new();
            yaml_files(path, &mut files)?;
            if files.is_empty() {
                anyhow::bail!("{input}: no .yml or .yaml files in this directory");
            }
            files
        } else {
            vec![path.to_owned()]
        };
        for file in files {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("{}: cannot read", file.display()))?;
            sources.push(Source {
                name: file.display().to_string(),
                text,
            });
        }
    }
    Ok(sources)
}

/// The YAML files under `dir`, depth first, in name order.
fn yaml_files(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot read", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: cannot read", dir.display()))?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, files)?;
        } else if path
            .extension()
            .is_some_and(|ext| ext == "yml" || ext == "yaml")
        {
            files.push(path);
        }
    }
    Ok(())
}

/// A document that cannot be handled, located as precisely as known.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: document {document} (line {line}): {message}")]
pub struct DocumentError {
    pub source_name: String,
    /// 1-based, counting the documents with any content.
    pub document: usize,
    /// 1-based, in the whole input.
    pub line: usize,
    pub message: String,
}

/// The transformed YAML and the report lines.
#[derive(Debug)]
pub struct Output {
    pub yaml: String,
    pub reports: Vec<String>,
}

/// Applies `mode` to every document of every source.
pub fn transform(sources: &[Source], mode: &Mode) -> Result<Output, DocumentError> {
    let mut documents = Vec::new();
    let mut reports = Vec::new();
    for source in sources {
        for (index, (first_line, text)) in split_documents(&source.text).into_iter().enumerate() {
            let fail = |line: usize, message: String| DocumentError {
                source_name: source.name.clone(),
                document: index + 1,
                line,
                message,
            };
            let mut parsed = YamlLoader::load_from_str(text).map_err(|err| {
                fail(
                    first_line + err.marker().line().saturating_sub(1),
                    err.to_string(),
                )
            })?;
            let mut document = match parsed.len() {
                1 => parsed.remove(0),
                // A document of comments only has nothing to say.
                0 => continue,
                n => unreachable!("split_documents gives one document per chunk, got {n}"),
            };
            let at = first_line + content_line(text);
            process_object(&mut document, mode, &mut reports)
                .map_err(|message| fail(at, message))?;
            documents.push(document);
        }
    }
    let mut yaml = String::new();
    for document in &documents {
        let mut emitter = YamlEmitter::new(&mut yaml);
        emitter.multiline_strings(true);
        emitter
            .dump(document)
            .expect("a parsed document can be written back");
        yaml.push('\n');
    }
    Ok(Output { yaml, reports })
}

/// Splits a YAML stream at its `---` document markers: each chunk with the
/// 1-based line it starts at. Chunks with no content are dropped.
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut chunks = Vec::new();
    let mut start = (1, 0);
    let mut offset = 0;
    for (number, line) in text.split_inclusive('\n').enumerate() {
        let marker = line.starts_with("---") && line[3..].starts_with([' ', '\t', '\n', '\r'])
            || line.trim_end() == "---";
        if marker && offset > 0 {
            chunks.push((start.0, &text[start.1..offset]));
            start = (number + 1, offset);
        }
        offset += line.len();
    }
    chunks.push((start.0, &text[start.1..]));
    chunks.retain(|(_, chunk)| has_content(chunk));
    chunks
}

fn has_content(chunk: &str) -> bool {
    chunk.lines().any(|line| {
        let line = line.trim();
        !line.is_empty() && !line.starts_with('#') && line != "---" && line != "..."
    })
}

/// Offset (0-based) of a chunk's first line with content.
fn content_line(chunk: &str) -> usize {
    chunk
        .lines()
        .position(|line| {
            let line = line.trim();
            !line.is_empty() && !line.starts_with('#') && !line.starts_with("---")
        })
        .unwrap_or(0)
}

fn key(name: &str) -> Yaml {
    Yaml::String(name.to_owned())
}

fn get<'a>(yaml: &'a Yaml, name: &str) -> Option<&'a Yaml> {
    match yaml {
        Yaml::Hash(hash) => hash.get(&key(name)),
        _ => None,
    }
}

fn get_mut<'a>(yaml: &'a mut Yaml, name: &str) -> Option<&'a mut Yaml> {
    match yaml {
        Yaml::Hash(hash) => hash.get_mut(&key(name)),
        _ => None,
    }
}

/// The mapping at `name`, added (empty, at the end) if absent.
fn mapping<'a>(yaml: &'a mut Yaml, name: &str) -> Result<&'a mut Hash, String> {
    let Yaml::Hash(hash) = yaml else {
        return Err("expected a mapping".into());
    };
    // Only absent keys are inserted: the map's entry API and inserting an
    // existing key both move the key to the end, which would reorder it.
    let name_key = key(name);
    if !hash.contains_key(&name_key) {
        hash.insert(name_key.clone(), Yaml::Hash(Hash::new()));
    }
    let entry = hash.get_mut(&name_key).expect("just ensured");
    if let Yaml::Null = entry {
        *entry = Yaml::Hash(Hash::new());
    }
    match entry {
        Yaml::Hash(hash) => Ok(hash),
        _ => Err(format!("`{name}` is not a mapping")),
    }
}

/// What happened to one resource.
enum Done {
    Injected(Outcome),
    Uninjected,
    NotInjected,
}

/// Handles one Kubernetes object (a `List`'s items one by one).
fn process_object(object: &mut Yaml, mode: &Mode, reports: &mut Vec<String>) -> Result<(), String> {
    let Yaml::Hash(_) = object else {
        return Err(format!(
            "not a Kubernetes object: {} at the top, not a mapping",
            describe(object)
        ));
    };
    let kind = match (get(object, "apiVersion"), get(object, "kind")) {
        (Some(Yaml::String(_)), Some(Yaml::String(kind))) => kind.clone(),
        _ => return Err("not a Kubernetes object: it needs `apiVersion` and `kind`".into()),
    };
    if kind == "List" || kind.ends_with("List") && get(object, "items").is_some() {
        let items = match get_mut(object, "items") {
            Some(Yaml::Array(items)) => items,
            Some(Yaml::Null) | None => return Ok(()),
            Some(_) => return Err("`items` of a List is not a sequence".into()),
        };
        for (index, item) in items.iter_mut().enumerate() {
            process_object(item, mode, reports).map_err(|e| format!("item {index}: {e}"))?;
        }
        return Ok(());
    }
    let name = match get(get(object, "metadata").unwrap_or(&Yaml::Null), "name") {
        Some(Yaml::String(name)) => name.clone(),
        _ => "<unnamed>".into(),
    };
    let resource = format!("{}/{name}", kind.to_ascii_lowercase());
    let template: Option<&mut Yaml> = match kind.as_str() {
        "Pod" => Some(object),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => get_mut(object, "spec").and_then(|spec| get_mut(spec, "template")),
        "CronJob" => get_mut(object, "spec")
            .and_then(|spec| get_mut(spec, "jobTemplate"))
            .and_then(|job| get_mut(job, "spec"))
            .and_then(|spec| get_mut(spec, "template")),
        _ => {
            reports.push(format!("{resource} skipped"));
            return Ok(());
        }
    };
    let Some(template) = template else {
        return Err(format!("{resource} has no pod template"));
    };
    let done = match mode {
        Mode::Annotate => annotate(template).map(Done::Injected),
        Mode::Manual(config) => manual(template, config).map(Done::Injected),
        Mode::Uninject => uninject(template),
    }
    .map_err(|e| format!("{resource}: {e}"))?;
    reports.push(match done {
        Done::Injected(Outcome::Injected) => format!("{resource} injected"),
        Done::Injected(Outcome::AlreadyInjected) => format!("{resource} already injected"),
        Done::Injected(Outcome::Skipped(why)) => format!("{resource} skipped: {why}"),
        Done::Uninjected => format!("{resource} uninjected"),
        Done::NotInjected => format!("{resource} skipped: not injected"),
    });
    Ok(())
}

fn describe(yaml: &Yaml) -> &'static str {
    match yaml {
        Yaml::Array(_) => "a sequence",
        Yaml::String(_) => "a string",
        Yaml::Integer(_) | Yaml::Real(_) => "a number",
        Yaml::Boolean(_) => "a boolean",
        Yaml::Null => "nothing",
        _ => "a value",
    }
}

fn annotate(template: &mut Yaml) -> Result<Outcome, String> {
    let spec = to_json(get(template, "spec").unwrap_or(&Yaml::Null))?;
    if let Some(why) = mesh_controller::inject::unmeshable(&spec) {
        return Ok(Outcome::Skipped(why));
    }
    if is_injected(&spec) {
        return Ok(Outcome::AlreadyInjected);
    }
    let annotations = mapping(mapping_yaml(template, "metadata")?, "annotations")?;
    let enabled = Yaml::String(INJECT_ENABLED.into());
    match annotations.get_mut(&key(INJECT_ANNOTATION)) {
        Some(value) if *value == enabled => return Ok(Outcome::AlreadyInjected),
        // Asked for explicitly, over an earlier `disabled`.
        Some(value) => *value = enabled,
        None => {
            annotations.insert(key(INJECT_ANNOTATION), enabled);
        }
    }
    Ok(Outcome::Injected)
}

/// The mapping at `name` as a `Yaml`, added if absent.
fn mapping_yaml<'a>(yaml: &'a mut Yaml, name: &str) -> Result<&'a mut Yaml, String> {
    mapping(yaml, name)?;
    Ok(get_mut(yaml, name).expect("just ensured"))
}

/// The sidecar itself, as the injector would add it: the template goes
/// through JSON (keeping its key order) and the one function both use.
fn manual(template: &mut Yaml, config: &SidecarConfig) -> Result<Outcome, String> {
    let mut json = to_json(template)?;
    let outcome = add_sidecar(&mut json, config)?;
    if outcome == Outcome::Injected {
        *template = to_yaml(&json);
    }
    Ok(outcome)
}

fn uninject(template: &mut Yaml) -> Result<Done, String> {
    let mut changed = false;
    if let Some(metadata) = get_mut(template, "metadata") {
        if let Some(Yaml::Hash(annotations)) = get_mut(metadata, "annotations") {
            for name in [INJECT_ANNOTATION, PROXY_VERSION_ANNOTATION] {
                changed |= annotations.remove(&key(name)).is_some();
            }
        }
        remove_if_empty(metadata, "annotations");
    }
    remove_if_empty(template, "metadata");
    if let Some(Yaml::Hash(spec)) = get_mut(template, "spec") {
        for list in ["containers", "initContainers"] {
            if let Some(Yaml::Array(containers)) = spec.get_mut(&key(list)) {
                let before = containers.len();
                containers.retain(|c| {
                    get(c, "name") != Some(&key(PROXY_CONTAINER))
                        && get(c, "name") != Some(&key(INIT_CONTAINER))
                });
                changed |= containers.len() != before;
            }
        }
        if matches!(spec.get(&key("initContainers")), Some(Yaml::Array(list)) if list.is_empty()) {
            spec.remove(&key("initContainers"));
        }
    }
    Ok(if changed {
        Done::Uninjected
    } else {
        Done::NotInjected
    })
}

fn remove_if_empty(yaml: &mut Yaml, name: &str) {
    if let Yaml::Hash(hash) = yaml
        && matches!(hash.get(&key(name)), Some(Yaml::Hash(inner)) if inner.is_empty())
    {
        hash.remove(&key(name));
    }
}

/// YAML as JSON, keeping key order; what JSON cannot say is an error.
fn to_json(yaml: &Yaml) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    Ok(match yaml {
        Yaml::Null | Yaml::BadValue => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(text) => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("{text} is not a number JSON can hold"))?,
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(items) => Value::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        Yaml::Hash(hash) => {
            let mut map = serde_json::Map::new();
            for (k, v) in hash {
                let Yaml::String(k) = k else {
                    return Err(format!("a key that is {}, not a string", describe(k)));
                };
                map.insert(k.clone(), to_json(v)?);
            }
            Value::Object(map)
        }
        Yaml::Alias(_) => return Err("an unresolved alias".into()),
    })
}

/// JSON (the sidecar's description) as YAML, keeping key order.
pub(crate) fn to_yaml(value: &serde_json::Value) -> Yaml {
    use serde_json::Value;
    match value {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => Yaml::Real(n.to_string()),
        },
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(items) => Yaml::Array(items.iter().map(to_yaml).collect()),
        Value::Object(map) => Yaml::Hash(
            map.iter()
                .map(|(k, v)| (Yaml::String(k.clone()), to_yaml(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_split_at_markers_with_their_lines() {
        let text = "---\na: 1\n---\n# just a comment\n--- # named\nb: 2\n...\n";
        let chunks = split_documents(text);
        assert_eq!(
            chunks,
            [(1, "---\na: 1\n"), (5, "--- # named\nb: 2\n...\n")]
        );
        assert_eq!(split_documents("a: 1\n"), [(1, "a: 1\n")]);
        // A marker-like line inside a block scalar is indented, so it stays.
        assert_eq!(split_documents("a: |\n  ---\n").len(), 1);
    }

    #[test]
    fn json_becomes_yaml_in_the_same_order() {
        let value = serde_json::json!({"name": "x", "args": ["1"], "port": 80, "on": true});
        let mut out = String::new();
        YamlEmitter::new(&mut out).dump(&to_yaml(&value)).unwrap();
        assert_eq!(
            out,
            "---\nname: x\nargs:\n  - \"1\"\nport: 80\n\"on\": true"
        );
    }
}
