//! Checks of `deploy/`, run by `cargo xtask test`: the manifests against the Kubernetes and
//! Prometheus Operator schemas (offline), the DaemonSet's least-privilege shape, the alerts
//! with `promtool` and their unit tests, the Grafana dashboard's structure and PromQL, and that
//! alerts and dashboard use only metrics of the exporter's contract (`deploy/metrics.txt`).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use yaml_rust2::{Yaml, YamlLoader};

use crate::workspace_root;

mod components;

/// The oldest Kubernetes minor still in the clouds' extended support, and the newest that
/// kubernetes-validate ships schemas for.
const KUBERNETES_VERSIONS: &[&str] = &["1.28.0", "1.37.0"];

/// Prometheus Operator and cert-manager CRDs (vendored as data under tests/deploy/crds), by
/// kind.
const CRDS: &[(&str, &str)] = &[
    ("ServiceMonitor", "servicemonitors-crd.json"),
    ("PrometheusRule", "prometheusrules-crd.json"),
    ("Certificate", "certificates-crd.json"),
    ("Issuer", "issuers-crd.json"),
];

const RUNBOOK_URL: &str = "https://github.com/reapwatch/reapwatch/blob/main/docs/runbook.md#";

/// The alerts the issue asks for; more may exist.
const REQUIRED_ALERTS: &[&str] = &[
    "ReapwatchZombieLeak",
    "ReapwatchPidExhaustionSoon",
    "ReapwatchCgroupPidsExhaustionSoon",
    "ReapwatchZombiesOld",
    "ReapwatchDown",
    "ReapwatchEventsLost",
];

/// The only capabilities the tracer may hold, and the host paths it may see (all read-only).
const ALLOWED_CAPABILITIES: &[&str] = &["BPF", "PERFMON", "SYS_RESOURCE"];
const ALLOWED_HOST_PATHS: &[&str] = &[
    "/sys/kernel/btf",
    "/sys/fs/cgroup",
    "/var/log/pods",
    "/var/log/containers",
];

/// kubelet's log directories, where reapwatch reads names. `/var/log/containers` holds the
/// only link from a container id to its name, and its links point into `/var/log/pods` by
/// absolute path: both are mounted, each at its host path.
const KUBELET_LOG_DIRS: &[&str] = &["/var/log/pods", "/var/log/containers"];

/// Series not reapwatch's that rules and dashboard may use besides the contract: Prometheus'
/// own `up`, and kube-state-metrics' `kube_pod_owner` (workloads, where it runs).
const PROMETHEUS_SERIES: &[&str] = &["up", "kube_pod_owner"];

fn deploy_dir() -> PathBuf {
    workspace_root().join("deploy")
}

fn venv() -> PathBuf {
    workspace_root().join("target/deploy-venv")
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Creates the Python environment of the schema validators from the pinned requirements;
/// a stamp of the requirements makes a second run free.
pub fn setup() -> Result<()> {
    let requirements = workspace_root().join("tests/deploy/requirements.txt");
    let wanted = read(&requirements)?;
    let stamp = venv().join("requirements.stamp");
    if fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(());
    }
    let venv = venv();
    let venv = venv.to_str().context("workspace path is not UTF-8")?;
    run("python3", &["-m", "venv", "--clear", venv])?;
    let pip = format!("{venv}/bin/pip");
    let requirements = requirements
        .to_str()
        .context("workspace path is not UTF-8")?;
    run(
        &pip,
        &[
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "-r",
            requirements,
        ],
    )?;
    // --no-deps installs exactly the pins; this fails if one is missing.
    run(&pip, &["check"])?;
    fs::write(stamp, wanted).context("cannot write the venv stamp")
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed ({}):\n{}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Whether `program args` fails, for the checks that the validators do reject bad input.
fn fails(program: &str, args: &[&str]) -> Result<bool> {
    let status = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?
        .status;
    Ok(!status.success())
}

pub fn check() -> Result<()> {
    let root = workspace_root();
    let out = root.join("target/deploy-check");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).context("cannot create target/deploy-check")?;

    let contract = Contract::parse(&read(&deploy_dir().join("metrics.txt"))?)?;
    let resources = kustomize(&deploy_dir())?;
    validate_schemas(&resources, &out)?;
    check_least_privilege(&resources)?;
    components::check(&resources, &contract, &out)?;
    let rules = &find(&resources, "PrometheusRule")?["spec"];
    let recorded = check_rules(rules, &contract, &out)?;
    let dashboard = read(&deploy_dir().join("grafana/reapwatch.json"))?;
    let dashboard: Value =
        serde_json::from_str(&dashboard).context("deploy/grafana/reapwatch.json")?;
    check_dashboard(&dashboard, &contract, &recorded, &out)?;
    eprintln!(
        "xtask: deploy/ checked: {} resources, {} metric families",
        resources.len(),
        contract.families.len()
    );
    Ok(())
}

/// The exporter's metric families, from `deploy/metrics.txt`: name -> Prometheus type.
struct Contract {
    families: BTreeMap<String, String>,
}

impl Contract {
    fn parse(text: &str) -> Result<Self> {
        let mut families = BTreeMap::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let [name, kind] = words[..] else {
                bail!("metrics.txt: {line:?} is not `name type`");
            };
            ensure!(
                name.starts_with("reapwatch_") && is_metric_name(name),
                "metrics.txt: {name:?} is not a reapwatch metric name"
            );
            ensure!(
                matches!(kind, "counter" | "gauge" | "histogram"),
                "metrics.txt: {name} has unknown type {kind:?}"
            );
            ensure!(
                (kind == "counter") == name.ends_with("_total"),
                "metrics.txt: {name}: counters, and only counters, end in _total"
            );
            ensure!(
                families.insert(name.to_owned(), kind.to_owned()).is_none(),
                "metrics.txt: {name} listed twice"
            );
        }
        ensure!(!families.is_empty(), "metrics.txt lists no family");
        Ok(Self { families })
    }

    /// The family a series name belongs to: itself, or a histogram's `_bucket/_sum/_count`.
    fn family_of<'a>(&self, series: &'a str) -> Option<&'a str> {
        if self.families.contains_key(series) {
            return Some(series);
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = series.strip_suffix(suffix)?;
            (self.families.get(base)? == "histogram").then_some(base)
        })
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// The metric names a PromQL expression selects: identifiers that are not functions,
/// keywords, label names (in `{}` or after `by`/`on`/...) or durations.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Binary operators, and aggregations, which may be followed by `by (...)` before `(`.
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "atan2",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Skips from an opening bracket to its match, over quoted strings.
    let skip_group = |mut i: usize, open: char, close: char| {
        let mut depth = 0;
        while i < chars.len() {
            match chars[i] {
                '"' | '\'' | '`' => i = skip_string(&chars, i),
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        i
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i) + 1;
        } else if c == '{' {
            i = skip_group(i, '{', '}');
        } else if c == '[' {
            i = skip_group(i, '[', ']');
        } else if c.is_ascii_digit() || c == '.' {
            // Numbers and durations (`30m`, `1e6`, `0x1f`).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let ident: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let call = chars.get(next) == Some(&'(');
            if call && LABEL_LISTS.contains(&ident.as_str()) {
                i = skip_group(next, '(', ')');
            } else if !call && !KEYWORDS.contains(&ident.to_ascii_lowercase().as_str()) {
                names.insert(ident);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The index of the closing quote of the string opening at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' && quote != '`' {
            i += 1;
        }
        i += 1;
    }
    i
}

/// Checks that every metric an expression selects is exported, recorded or Prometheus' own.
fn check_names(
    expr: &str,
    contract: &Contract,
    recorded: &BTreeSet<String>,
    used: &mut BTreeSet<String>,
    what: &str,
) -> Result<()> {
    for name in metric_names(expr) {
        if let Some(family) = contract.family_of(&name) {
            used.insert(family.to_owned());
        } else if !recorded.contains(&name) && !PROMETHEUS_SERIES.contains(&name.as_str()) {
            bail!("{what}: {name} is not in deploy/metrics.txt, the exporter's contract");
        }
    }
    Ok(())
}

/// A manifest: where it came from, as JSON.
#[derive(Clone)]
struct Resource {
    source: String,
    doc: Value,
}

fn yaml_to_json(yaml: &Yaml) -> Result<Value> {
    Ok(match yaml {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => json!(i),
        Yaml::Real(r) => json!(r
            .parse::<f64>()
            .with_context(|| format!("bad number {r}"))?),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(items) => Value::Array(items.iter().map(yaml_to_json).collect::<Result<_>>()?),
        Yaml::Hash(map) => {
            let mut object = serde_json::Map::new();
            for (key, value) in map {
                let Yaml::String(key) = key else {
                    bail!("non-string key {key:?}");
                };
                object.insert(key.clone(), yaml_to_json(value)?);
            }
            Value::Object(object)
        }
        Yaml::Alias(_) | Yaml::BadValue => bail!("unsupported YAML node {yaml:?}"),
    })
}

fn load_yaml(path: &Path) -> Result<Vec<Value>> {
    let docs = YamlLoader::load_from_str(&read(path)?)
        .with_context(|| format!("{} is not YAML", path.display()))?;
    docs.iter()
        .map(yaml_to_json)
        .collect::<Result<_>>()
        .with_context(|| path.display().to_string())
}

/// Loads a kustomization's `resources` list from `dir` into `into`; returns the file names.
fn load_resources(
    dir: &Path,
    files: &[Value],
    into: &mut Vec<Resource>,
) -> Result<BTreeSet<String>> {
    let mut listed = BTreeSet::new();
    for file in files {
        let file = file.as_str().context("resource path")?;
        listed.insert(file.to_owned());
        for doc in load_yaml(&dir.join(file))? {
            into.push(Resource {
                source: file.to_owned(),
                doc,
            });
        }
    }
    Ok(listed)
}

/// What `kubectl apply -k deploy/` applies. Only the kustomization features deploy/ uses are
/// rendered, and any other one is refused, so that this cannot drift from kustomize.
fn kustomize(dir: &Path) -> Result<Vec<Resource>> {
    let [kustomization] = &load_yaml(&dir.join("kustomization.yaml"))?[..] else {
        bail!("kustomization.yaml must hold one document");
    };
    for key in kustomization.as_object().context("kustomization")?.keys() {
        ensure!(
            matches!(
                key.as_str(),
                "apiVersion" | "kind" | "resources" | "configMapGenerator"
            ),
            "kustomization.yaml: `{key}` is not rendered by xtask's checks"
        );
    }
    let mut resources = Vec::new();
    let listed = load_resources(
        dir,
        kustomization["resources"]
            .as_array()
            .context("kustomization resources")?,
        &mut resources,
    )?;
    // A manifest in deploy/ that the kustomization forgets is never applied.
    for entry in fs::read_dir(dir).context("deploy/")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            ensure!(
                listed.contains(&name),
                "deploy/{name} is not in kustomization.yaml"
            );
        }
    }
    for generator in kustomization["configMapGenerator"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let options = &generator["options"];
        ensure!(
            options["disableNameSuffixHash"] == true,
            "configMapGenerator: the name hash suffix is not rendered by xtask's checks"
        );
        let mut data = serde_json::Map::new();
        for file in generator["files"].as_array().context("generator files")? {
            let file = file.as_str().context("generator file")?;
            let key = Path::new(file).file_name().context("file name")?;
            data.insert(
                key.to_string_lossy().into_owned(),
                Value::String(read(&dir.join(file))?),
            );
        }
        resources.push(Resource {
            source: "kustomization.yaml configMapGenerator".into(),
            doc: json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": generator["name"],
                    "namespace": generator["namespace"],
                    "labels": options["labels"],
                },
                "data": data,
            }),
        });
    }
    Ok(resources)
}

fn find<'a>(resources: &'a [Resource], kind: &str) -> Result<&'a Value> {
    let mut found = resources.iter().filter(|r| r.doc["kind"] == kind);
    match (found.next(), found.next()) {
        (Some(r), None) => Ok(&r.doc),
        _ => bail!("deploy/ must hold exactly one {kind}"),
    }
}

/// The exporter's families and types, as `deploy/metrics.txt` lists them.
pub fn contract() -> Result<BTreeMap<String, String>> {
    Ok(Contract::parse(&read(&deploy_dir().join("metrics.txt"))?)?.families)
}

/// The DaemonSet as `kubectl apply -k deploy/` creates it, for the image's end-to-end test;
/// with `component`, as an overlay with that one of deploy/components creates it.
pub fn daemonset(component: Option<&str>) -> Result<Value> {
    let mut resources = kustomize(&deploy_dir())?;
    if let Some(component) = component {
        resources = components::render(&resources, &components_dir().join(component))?;
    }
    Ok(find(&resources, "DaemonSet")?.clone())
}

pub fn components_dir() -> PathBuf {
    deploy_dir().join("components")
}

fn write_json(path: &Path, value: &Value) -> Result<String> {
    fs::write(path, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    path.to_str()
        .map(str::to_owned)
        .context("workspace path is not UTF-8")
}

/// Kubernetes rejects (or, with strict field validation, refuses) fields a CRD does not
/// declare; JSON schema allows them unless told. Closes every object schema that lists its
/// properties and does not opt out.
fn close_objects(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    if object.contains_key("properties")
        && !object.contains_key("additionalProperties")
        && !object.contains_key("x-kubernetes-preserve-unknown-fields")
    {
        object.insert("additionalProperties".into(), Value::Bool(false));
    }
    for (key, value) in object.iter_mut() {
        match key.as_str() {
            "properties" => value
                .as_object_mut()
                .into_iter()
                .flat_map(|p| p.values_mut())
                .for_each(close_objects),
            "items" | "additionalProperties" => close_objects(value),
            "anyOf" | "allOf" | "oneOf" => value
                .as_array_mut()
                .into_iter()
                .flatten()
                .for_each(close_objects),
            _ => {}
        }
    }
}

/// Kubernetes checks `pattern` with Go's RE2, where an inline `(?i)` after `^` applies to the
/// rest; Python's `re` only takes it first. Moves it there, which means the same.
fn python_patterns(schema: &mut Value) {
    match schema {
        Value::Object(object) => {
            if let Some(Value::String(pattern)) = object.get_mut("pattern") {
                if let Some(rest) = pattern.strip_prefix("^(?i)") {
                    *pattern = format!("(?i)^{rest}");
                }
            }
            object.values_mut().for_each(python_patterns);
        }
        Value::Array(items) => items.iter_mut().for_each(python_patterns),
        _ => {}
    }
}

/// The OpenAPI schema of a vendored CRD's version, closed, patterns in Python's dialect.
fn crd_schema(file: &str, api_version: &str) -> Result<Value> {
    let path = workspace_root().join("tests/deploy/crds").join(file);
    let crd: Value = serde_json::from_str(&read(&path)?)?;
    let version = api_version.rsplit('/').next().unwrap_or_default();
    let mut schema = crd["spec"]["versions"]
        .as_array()
        .context("CRD versions")?
        .iter()
        .find(|v| v["name"] == version)
        .with_context(|| format!("{file} has no version {version}"))?["schema"]["openAPIV3Schema"]
        .clone();
    close_objects(&mut schema);
    python_patterns(&mut schema);
    Ok(schema)
}

fn validate_schemas(resources: &[Resource], out: &Path) -> Result<()> {
    const REGEX: &str = "--regex-variant=python";
    let bin = venv().join("bin");
    let kubernetes_validate = bin.join("kubernetes-validate");
    let kubernetes_validate = kubernetes_validate.to_str().context("venv path")?;
    let check_jsonschema = bin.join("check-jsonschema");
    let check_jsonschema = check_jsonschema.to_str().context("venv path")?;

    let mut builtin = Vec::new();
    for (i, resource) in resources.iter().enumerate() {
        let kind = resource.doc["kind"].as_str().context("kind")?;
        let path = write_json(&out.join(format!("{i}-{kind}.json")), &resource.doc)?;
        match CRDS.iter().find(|(k, _)| *k == kind) {
            Some((_, file)) => {
                let api_version = resource.doc["apiVersion"].as_str().context("apiVersion")?;
                let schema = write_json(
                    &out.join(format!("{kind}.schema.json")),
                    &crd_schema(file, api_version)?,
                )?;
                run(check_jsonschema, &[REGEX, "--schemafile", &schema, &path])
                    .with_context(|| format!("{} ({kind})", resource.source))?;
            }
            None => builtin.push(path),
        }
    }
    for version in KUBERNETES_VERSIONS {
        let mut args = vec!["--strict", "--quiet", "-k", version];
        args.extend(builtin.iter().map(String::as_str));
        run(kubernetes_validate, &args)
            .with_context(|| format!("manifests against Kubernetes {version}"))?;
    }

    // The validators must reject what the cluster would: a misspelled field in each kind of
    // schema, so that a validator that skips a kind cannot pass silently.
    let mut daemonset = find(resources, "DaemonSet")?.clone();
    daemonset["spec"]["template"]["spec"]["hostPid"] = Value::Bool(true);
    let bad = write_json(&out.join("bad-daemonset.json"), &daemonset)?;
    ensure!(
        fails(
            kubernetes_validate,
            &["--strict", "--quiet", "-k", KUBERNETES_VERSIONS[0], &bad]
        )?,
        "kubernetes-validate accepts a DaemonSet with the unknown field hostPid"
    );
    let mut monitor = find(resources, "ServiceMonitor")?.clone();
    monitor["spec"]["endpoints"][0]["relabellings"] = json!([]);
    let bad = write_json(&out.join("bad-servicemonitor.json"), &monitor)?;
    let schema = out.join("ServiceMonitor.schema.json");
    ensure!(
        fails(
            check_jsonschema,
            &[
                REGEX,
                "--schemafile",
                schema.to_str().context("path")?,
                &bad
            ]
        )?,
        "check-jsonschema accepts a ServiceMonitor with the unknown field relabellings"
    );
    Ok(())
}

/// The DaemonSet's privileges are the design, not an accident: checks each of them.
fn check_least_privilege(resources: &[Resource]) -> Result<()> {
    let daemonset = find(resources, "DaemonSet")?;
    let pod = &daemonset["spec"]["template"]["spec"];
    ensure!(pod["hostPID"] == true, "the tracer needs hostPID");
    ensure!(
        pod["hostNetwork"] != true && pod["hostIPC"] != true,
        "no host network or IPC namespace"
    );
    ensure!(
        pod["automountServiceAccountToken"] == false,
        "reapwatch never calls the API server: no token"
    );
    ensure!(
        daemonset["spec"]["updateStrategy"]["type"] == "RollingUpdate",
        "rolling updates"
    );
    let priority = pod["priorityClassName"]
        .as_str()
        .context("priorityClassName")?;
    ensure!(
        find(resources, "PriorityClass")?["metadata"]["name"] == priority,
        "the priority class {priority} is not in deploy/"
    );
    ensure!(
        pod["tolerations"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none()),
        "tolerate every taint, to run on every node"
    );
    let [container] = &pod["containers"].as_array().context("containers")?[..] else {
        bail!("one container: reapwatch is the pod's only process");
    };
    let security = &container["securityContext"];
    ensure!(security["privileged"] != true, "not privileged");
    ensure!(
        security["allowPrivilegeEscalation"] == false,
        "no privilege escalation"
    );
    ensure!(
        security["readOnlyRootFilesystem"] == true,
        "read-only root filesystem"
    );
    ensure!(
        security["capabilities"]["drop"] == json!(["ALL"]),
        "drop all capabilities"
    );
    let added = security["capabilities"]["add"]
        .as_array()
        .context("added capabilities")?;
    for cap in added {
        ensure!(
            ALLOWED_CAPABILITIES.contains(&cap.as_str().context("capability")?),
            "capability {cap} is more than the tracer needs"
        );
    }
    ensure!(
        ["BPF", "PERFMON"].iter().all(|c| added.contains(&json!(c))),
        "the tracer needs BPF and PERFMON"
    );
    let volumes = pod["volumes"].as_array().context("volumes")?;
    for volume in volumes {
        // Besides the host's, only the pod's own configuration (components' TLS files).
        if volume["secret"].is_object() || volume["configMap"].is_object() {
            continue;
        }
        let path = volume["hostPath"]["path"]
            .as_str()
            .with_context(|| format!("volume {} is not a hostPath", volume["name"]))?;
        ensure!(
            ALLOWED_HOST_PATHS.contains(&path),
            "host path {path} is more than the tracer needs"
        );
    }
    let mounts = container["volumeMounts"]
        .as_array()
        .context("volumeMounts")?;
    for mount in mounts {
        ensure!(
            mount["readOnly"] == true,
            "mount {} must be read-only",
            mount["mountPath"]
        );
    }
    for dir in KUBELET_LOG_DIRS {
        let volume = volumes
            .iter()
            .find(|v| v["hostPath"]["path"] == *dir)
            .with_context(|| format!("no volume of {dir}: container names need it"))?;
        ensure!(
            mounts
                .iter()
                .any(|m| m["name"] == volume["name"] && m["mountPath"] == *dir),
            "{dir} must be mounted at {dir}, its path on the host"
        );
    }
    let resources = &container["resources"];
    ensure!(
        resources["limits"].get("cpu").is_none(),
        "no CPU limit: a throttled tracer loses data"
    );
    ensure!(
        resources["limits"]["memory"].is_string()
            && resources["requests"]["memory"].is_string()
            && resources["requests"]["cpu"].is_string(),
        "requests and a memory limit"
    );
    ensure!(
        container["env"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["name"] == "NODE_NAME"
                && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"),
        "NODE_NAME from the downward API"
    );
    ensure!(
        container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            && container["readinessProbe"]["httpGet"]["path"] == "/readyz",
        "liveness on /healthz, readiness on /readyz"
    );
    let image = container["image"].as_str().context("image")?;
    let tag = format!(":{}", env!("CARGO_PKG_VERSION"));
    ensure!(
        image.ends_with(&tag),
        "image {image} is not this version ({tag}), which `cargo xtask image` builds"
    );
    Ok(())
}

fn promtool(args: &[&str]) -> Result<()> {
    run("promtool", args)
}

/// Checks the rules; returns the names they record, which the dashboard may use.
fn check_rules(spec: &Value, contract: &Contract, out: &Path) -> Result<BTreeSet<String>> {
    let rules_file = write_json(&out.join("reapwatch.rules.yaml"), spec)?;
    promtool(&["check", "rules", &rules_file])?;
    // The unit tests name the extracted rule file, which is written beside them.
    let tests = workspace_root().join("tests/deploy/alerts.test.yaml");
    let tests_copy = out.join("alerts.test.yaml");
    fs::copy(&tests, &tests_copy).context("copy alerts.test.yaml")?;
    promtool(&["test", "rules", tests_copy.to_str().context("path")?])?;

    let rules: Vec<&Value> = spec["groups"]
        .as_array()
        .context("rule groups")?
        .iter()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    let recorded: BTreeSet<String> = rules
        .iter()
        .filter_map(|r| r["record"].as_str().map(str::to_owned))
        .collect();
    let runbook = read(&workspace_root().join("docs/runbook.md"))?;
    let mut alerts = BTreeSet::new();
    for rule in &rules {
        let expr = rule["expr"].as_str().context("rule expr")?;
        let name = rule["alert"].as_str().or(rule["record"].as_str());
        let what = format!("rule {}", name.unwrap_or("?"));
        check_names(expr, contract, &recorded, &mut BTreeSet::new(), &what)?;
        let Some(alert) = rule["alert"].as_str() else {
            continue;
        };
        alerts.insert(alert.to_owned());
        ensure!(
            matches!(
                rule["labels"]["severity"].as_str(),
                Some("critical" | "warning" | "info")
            ),
            "{alert}: severity critical, warning or info"
        );
        let annotations = &rule["annotations"];
        ensure!(
            annotations["summary"].is_string() && annotations["description"].is_string(),
            "{alert}: summary and description"
        );
        let anchor = alert.to_ascii_lowercase();
        ensure!(
            annotations["runbook_url"] == format!("{RUNBOOK_URL}{anchor}"),
            "{alert}: runbook_url must be {RUNBOOK_URL}{anchor}"
        );
        ensure!(
            runbook.lines().any(|l| l == format!("## {alert}")),
            "docs/runbook.md has no section `## {alert}`"
        );
    }
    for required in REQUIRED_ALERTS {
        ensure!(alerts.contains(*required), "alert {required} is missing");
    }
    // Every alert is shown firing by a unit test, not only staying quiet.
    let [tests] = &load_yaml(&tests)?[..] else {
        bail!("alerts.test.yaml must hold one document");
    };
    let fired: BTreeSet<&str> = tests["tests"]
        .as_array()
        .context("tests")?
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().into_iter().flatten())
        .filter(|t| t["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()))
        .filter_map(|t| t["alertname"].as_str())
        .collect();
    for alert in &alerts {
        ensure!(
            fired.contains(alert.as_str()),
            "no unit test in alerts.test.yaml shows {alert} firing"
        );
    }
    // Every recorded series is checked by a unit test too: queried, or behind an alert that
    // one shows firing.
    let checked: Vec<&str> = tests["tests"]
        .as_array()
        .context("tests")?
        .iter()
        .flat_map(|t| t["promql_expr_test"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .chain(
            rules
                .iter()
                .filter(|r| r["alert"].is_string())
                .filter_map(|r| r["expr"].as_str()),
        )
        .collect();
    for record in &recorded {
        ensure!(
            checked
                .iter()
                .any(|expr| metric_names(expr).contains(record)),
            "no unit test in alerts.test.yaml queries {record}, nor an alert that uses it"
        );
    }
    Ok(recorded)
}

/// Grafana's interval variables, replaced by a plausible value for checking.
const GRAFANA_INTERVALS: &[&str] = &["$__rate_interval", "$__interval", "$__range"];

/// Replaces Grafana variables to get PromQL: intervals by a duration, dashboard variables
/// (used in regex matchers) by `.*`. Fails on a variable the dashboard does not define.
fn substitute_variables(expr: &str, variables: &BTreeSet<String>) -> Result<String> {
    let mut promql = expr.to_owned();
    for interval in GRAFANA_INTERVALS {
        promql = promql.replace(interval, "5m");
    }
    for variable in variables {
        promql = promql
            .replace(&format!("${{{variable}}}"), ".*")
            .replace(&format!("${variable}"), ".*");
    }
    ensure!(
        !promql.contains('$'),
        "{expr:?} uses a variable the dashboard does not define"
    );
    Ok(promql)
}

fn check_dashboard(
    dashboard: &Value,
    contract: &Contract,
    recorded: &BTreeSet<String>,
    out: &Path,
) -> Result<()> {
    for key in ["uid", "title"] {
        ensure!(
            dashboard[key].as_str().is_some_and(|s| !s.is_empty()),
            "dashboard {key}"
        );
    }
    ensure!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "dashboard schemaVersion 36 or newer (Grafana 9+)"
    );
    ensure!(
        dashboard["time"]["from"].is_string(),
        "dashboard time range"
    );

    let mut variables = BTreeSet::new();
    let mut exprs = Vec::new();
    let mut datasource_variable = None;
    for variable in dashboard["templating"]["list"]
        .as_array()
        .context("templating")?
    {
        let name = variable["name"].as_str().context("variable name")?;
        variables.insert(name.to_owned());
        match variable["type"].as_str() {
            Some("datasource") => {
                ensure!(
                    variable["query"] == "prometheus",
                    "datasource variable type"
                );
                datasource_variable = Some(format!("${{{name}}}"));
            }
            Some("query") => {
                let query = variable["query"]["query"]
                    .as_str()
                    .context("variable query")?;
                let inner = query
                    .strip_prefix("label_values(")
                    .and_then(|q| q.rsplit_once(','))
                    .map(|(selector, _)| selector)
                    .with_context(|| format!("variable {name}: label_values(selector, label)"))?;
                exprs.push((format!("variable {name}"), inner.to_owned()));
            }
            other => bail!("variable {name}: unexpected type {other:?}"),
        }
    }
    let datasource_variable = datasource_variable.context("a Prometheus datasource variable")?;

    let mut panels: Vec<&Value> = Vec::new();
    for panel in dashboard["panels"].as_array().context("panels")? {
        panels.push(panel);
        panels.extend(panel["panels"].as_array().into_iter().flatten());
    }
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for panel in &panels {
        let title = panel["title"].as_str().context("panel title")?;
        ensure!(!title.is_empty(), "a panel has no title");
        ensure!(
            ids.insert(panel["id"].as_u64().context("panel id")?),
            "panel {title}: duplicate id"
        );
        let kind = panel["type"].as_str().context("panel type")?;
        ensure!(
            matches!(
                kind,
                "row" | "timeseries" | "stat" | "bargauge" | "gauge" | "table" | "heatmap" | "text"
            ),
            "panel {title}: unknown type {kind}"
        );
        let grid = &panel["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| grid[k].as_u64());
        let (Some(x), Some(y), Some(w), Some(h)) = (x, y, w, h) else {
            bail!("panel {title}: gridPos x, y, w, h");
        };
        ensure!(
            w >= 1 && h >= 1 && x + w <= 24,
            "panel {title}: off the grid"
        );
        for cell_x in x..x + w {
            for cell_y in y..y + h {
                ensure!(
                    cells.insert((cell_x, cell_y)),
                    "panel {title} overlaps another"
                );
            }
        }
        if kind == "row" || kind == "text" {
            continue;
        }
        ensure!(
            panel["datasource"]["uid"] == datasource_variable.as_str(),
            "panel {title}: datasource must be {datasource_variable}"
        );
        let targets = panel["targets"].as_array().context("targets")?;
        ensure!(!targets.is_empty(), "panel {title} has no query");
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            ensure!(
                ref_ids.insert(target["refId"].as_str().context("refId")?),
                "panel {title}: duplicate refId"
            );
            let expr = target["expr"].as_str().context("expr")?;
            exprs.push((format!("panel {title}"), expr.to_owned()));
        }
    }

    let mut rules = Vec::new();
    let mut used = BTreeSet::new();
    for (i, (what, expr)) in exprs.iter().enumerate() {
        let promql = substitute_variables(expr, &variables).context(what.clone())?;
        check_names(&promql, contract, recorded, &mut used, what)?;
        rules.push(json!({ "record": format!("dashboard_expr_{i}"), "expr": promql }));
    }
    // promtool parses PromQL only in rule files: one recording rule per expression.
    let file = write_json(
        &out.join("dashboard.rules.yaml"),
        &json!({ "groups": [{ "name": "dashboard", "rules": rules }] }),
    )?;
    promtool(&["check", "rules", &file]).context("the dashboard's PromQL")?;
    for family in contract.families.keys() {
        ensure!(
            used.contains(family),
            "the dashboard shows nothing of {family}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        metric_names(expr).into_iter().collect()
    }

    #[test]
    fn metric_names_skip_functions_labels_and_durations() {
        assert_eq!(
            names(r#"sum by (node, le) (rate(a_bucket{node=~"x|y", le!="+Inf"}[5m] offset 1h))"#),
            ["a_bucket"]
        );
        assert_eq!(
            names("a - a offset 30m >= 5 and on (instance) group_left(pid) b:rec > bool 1e6"),
            ["a", "b:rec"]
        );
        assert_eq!(
            names(r#"min_over_time(deriv(x[10m])[30m:1m]) or absent(up{job="a}b"}) unless c"#),
            ["c", "up", "x"]
        );
        assert_eq!(
            names(r#"label_replace(m, "dst", "$1", "src", "(.*)") / ignoring(a) n"#),
            ["m", "n"]
        );
    }

    const CONTRACT: &str =
        "# comment\nreapwatch_s histogram\nreapwatch_x_total counter\n\nreapwatch_g gauge\n";

    #[test]
    fn contract_families_and_histogram_series() {
        let contract = Contract::parse(CONTRACT).unwrap();
        assert_eq!(contract.families.len(), 3);
        assert_eq!(
            contract.family_of("reapwatch_s_bucket"),
            Some("reapwatch_s")
        );
        assert_eq!(contract.family_of("reapwatch_s_count"), Some("reapwatch_s"));
        assert_eq!(contract.family_of("reapwatch_g"), Some("reapwatch_g"));
        // Only histograms have bucket series.
        assert_eq!(contract.family_of("reapwatch_g_count"), None);
        assert_eq!(contract.family_of("reapwatch_x"), None);
    }

    #[test]
    fn contract_rejects_bad_lines() {
        for bad in [
            "reapwatch_x gauge\nreapwatch_x gauge",
            "reapwatch_x",
            "reapwatch_x summary-ish",
            "reapwatch_x_total gauge",
            "reapwatch_x counter",
            "other_x gauge",
        ] {
            assert!(Contract::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_outside_the_contract_fail() {
        let contract = Contract::parse("reapwatch_zombies gauge\n").unwrap();
        let recorded = BTreeSet::from(["r:x".to_owned()]);
        let mut used = BTreeSet::new();
        check_names(
            "reapwatch_zombies + r:x",
            &contract,
            &recorded,
            &mut used,
            "t",
        )
        .unwrap();
        check_names("up == 0", &contract, &recorded, &mut used, "t").unwrap();
        assert!(check_names("reapwatch_zombie", &contract, &recorded, &mut used, "t").is_err());
        assert_eq!(used, BTreeSet::from(["reapwatch_zombies".to_owned()]));
    }

    #[test]
    fn variables_become_promql() {
        let variables = BTreeSet::from(["node".to_owned()]);
        assert_eq!(
            substitute_variables(r#"rate(x{node=~"$node"}[$__rate_interval])"#, &variables)
                .unwrap(),
            r#"rate(x{node=~".*"}[5m])"#
        );
        assert!(substitute_variables(r#"x{pod=~"$pod"}"#, &variables).is_err());
    }

    #[test]
    fn crd_objects_are_closed_unless_they_opt_out() {
        let mut schema = json!({
            "type": "object",
            "properties": {
                "spec": { "type": "object", "properties": { "a": { "type": "string" } } },
                "free": { "type": "object", "x-kubernetes-preserve-unknown-fields": true,
                          "properties": { "b": {} } },
                "list": { "type": "array", "items": { "properties": { "c": {} } } }
            }
        });
        close_objects(&mut schema);
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(schema["properties"]["spec"]["additionalProperties"], false);
        assert!(schema["properties"]["free"]
            .get("additionalProperties")
            .is_none());
        assert_eq!(
            schema["properties"]["list"]["items"]["additionalProperties"],
            false
        );
    }

    #[test]
    fn go_inline_flags_move_first() {
        let mut schema = json!({ "properties": { "s": { "pattern": "^(?i)(abort|warn)?$" } } });
        python_patterns(&mut schema);
        assert_eq!(schema["properties"]["s"]["pattern"], "(?i)^(abort|warn)?$");
    }

    #[test]
    fn yaml_maps_to_json() {
        let docs = YamlLoader::load_from_str("a: [1, 2.5, x, true, null]\nb: {c: '10%'}").unwrap();
        assert_eq!(
            yaml_to_json(&docs[0]).unwrap(),
            json!({ "a": [1, 2.5, "x", true, null], "b": { "c": "10%" } })
        );
    }
}
