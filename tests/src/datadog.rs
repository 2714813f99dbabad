//! The chart's Datadog install as Helm renders it, and the Datadog Agent's own OpenMetrics
//! check run against a live `serve` (`tests/datadog/openmetrics_check.py`, in the venv
//! `cargo xtask setup` makes from `tests/datadog/requirements.txt`).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use serde_json::Value;

/// The pod annotation Autodiscovery reads for the container named `reapwatch`.
pub const ANNOTATION: &str = "ad.datadoghq.com/reapwatch.checks";

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
}

/// A Python program of one of the venvs under `target/`, with a clear message when setup has
/// not made it.
fn python(venv: &str) -> PathBuf {
    let python = workspace_root()
        .join("target")
        .join(venv)
        .join("bin/python");
    assert!(
        python.exists(),
        "{} missing: run `cargo xtask setup`",
        python.display()
    );
    python
}

fn scratch_file(name: &str, text: &str) -> PathBuf {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "reapwatch-datadog-{}-{}-{name}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    fs::write(&path, text).expect("write a scratch file");
    path
}

/// The DaemonSet's `reapwatch` container and its Autodiscovery annotation, as the chart
/// renders them with a values file of `charts/reapwatch/ci/`.
pub struct Install {
    /// Every rendered manifest.
    pub resources: Vec<Value>,
    pub args: Vec<String>,
    /// The annotation's value: `{"openmetrics": {"init_config", "instances": [one]}}`.
    pub checks: Value,
}

impl Install {
    /// Renders the chart with Helm's own engine and `ci/<combination>-values.yaml`.
    pub fn render(combination: &str) -> Self {
        let root = workspace_root();
        let values = root.join(format!("charts/reapwatch/ci/{combination}-values.yaml"));
        let output = Command::new(python("deploy-venv"))
            .arg(root.join("tests/deploy/helm_engine.py"))
            .arg("render")
            .arg(root.join("charts/reapwatch"))
            .arg(&values)
            .args(["reapwatch", "reapwatch"])
            .output()
            .expect("run helm_engine.py");
        assert!(
            output.status.success(),
            "helm render {}: {}",
            values.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        let rendered: Vec<Value> = serde_json::from_slice(&output.stdout).expect("JSON");
        let resources: Vec<Value> = rendered.into_iter().map(|r| r["doc"].clone()).collect();
        let daemonset = resources
            .iter()
            .find(|d| d["kind"] == "DaemonSet")
            .expect("a DaemonSet");
        let template = &daemonset["spec"]["template"];
        let container = &template["spec"]["containers"][0];
        let args = container["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| a.as_str().expect("a string argument").to_owned())
            .collect();
        let annotation = template["metadata"]["annotations"][ANNOTATION]
            .as_str()
            .unwrap_or_else(|| panic!("no {ANNOTATION} annotation with {combination}"));
        let checks = serde_json::from_str(annotation).expect("the annotation is JSON");
        Self {
            resources,
            args,
            checks,
        }
    }

    /// The one instance of the openmetrics check.
    pub fn instance(&self) -> &Value {
        let instances = self.checks["openmetrics"]["instances"]
            .as_array()
            .expect("instances");
        assert_eq!(instances.len(), 1, "one instance");
        &instances[0]
    }

    /// The rendered arguments for a `serve` on this machine: `--listen` is the test's
    /// (`Daemon` sets it), `--health-listen` a loopback port, and each `(flag, value)` of
    /// `replace` (such as the web config's path) the test's.
    pub fn serve_args(&self, health_port: u16, replace: &[(&str, &str)]) -> Vec<String> {
        self.args
            .iter()
            .filter(|a| !a.starts_with("--listen="))
            .map(|a| {
                let (flag, _) = a.split_once('=').unwrap_or((a, ""));
                match (flag, replace.iter().find(|(f, _)| *f == flag)) {
                    ("--health-listen", _) => format!("{flag}=127.0.0.1:{health_port}"),
                    (_, Some((_, value))) => format!("{flag}={value}"),
                    _ => a.clone(),
                }
            })
            .collect()
    }

    /// The annotation as the Agent resolves it on the node: `%%host%%` is the pod's address
    /// (here 127.0.0.1), the port the test's, and each `(key, value)` of `replace` set in the
    /// instance (such as the CA file the Agent mounts, here the test's).
    pub fn resolved(&self, port: u16, replace: &[(&str, Value)]) -> Value {
        let mut checks = self.checks.clone();
        let instance = &mut checks["openmetrics"]["instances"][0];
        let endpoint = instance["openmetrics_endpoint"]
            .as_str()
            .expect("openmetrics_endpoint");
        let (scheme, rest) = endpoint.split_once("://%%host%%:").expect("%%host%%:PORT");
        let (_, path) = rest.split_once('/').expect("a path");
        instance["openmetrics_endpoint"] = format!("{scheme}://127.0.0.1:{port}/{path}").into();
        for (key, value) in replace {
            assert!(instance.get(*key).is_some(), "the instance has no {key}");
            instance[*key] = value.clone();
        }
        checks
    }
}

/// One metric submission the Agent's check made.
#[derive(Debug, Clone)]
pub struct Submission {
    pub name: String,
    /// The aggregator's type: `gauge`, `monotonic_count`, ...
    pub kind: String,
    pub value: f64,
    pub tags: Vec<String>,
}

impl Submission {
    /// The value of tag `name`, if it has one.
    pub fn tag(&self, name: &str) -> Option<&str> {
        self.tags
            .iter()
            .find_map(|t| t.strip_prefix(name)?.strip_prefix(':'))
    }
}

/// What one run of the check sent, and what it said.
#[derive(Debug)]
pub struct Received {
    pub metrics: Vec<Submission>,
    pub warnings: Vec<String>,
    /// The check's error report (a failed run), if any.
    pub error: Option<String>,
    /// Its service check `<namespace>.openmetrics.health`: 0 OK, 2 critical.
    pub health: Option<u64>,
}

impl Received {
    /// The submissions of `name` whose tags include each `name:value` of `tags`.
    pub fn find(&self, name: &str, tags: &[(&str, &str)]) -> Vec<&Submission> {
        self.metrics
            .iter()
            .filter(|m| m.name == name && tags.iter().all(|(k, v)| m.tag(k) == Some(*v)))
            .collect()
    }

    /// The value of the one submission `name` with `tags`; panics unless exactly one.
    pub fn value(&self, name: &str, tags: &[(&str, &str)]) -> f64 {
        match &self.find(name, tags)[..] {
            [one] => one.value,
            other => panic!("{name} {tags:?}: {} submissions: {other:?}", other.len()),
        }
    }
}

/// Runs the Agent's OpenMetrics check once with `checks` (a resolved annotation).
pub fn run_check(checks: &Value) -> Received {
    let config = scratch_file("checks.json", &checks.to_string());
    let output = Command::new(python("datadog-venv"))
        .arg(workspace_root().join("tests/datadog/openmetrics_check.py"))
        .arg(&config)
        .output()
        .expect("run openmetrics_check.py");
    let _ = fs::remove_file(&config);
    assert!(
        output.status.success(),
        "openmetrics_check.py: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| Some(s.as_str()?.to_owned()))
            .collect()
    };
    Received {
        metrics: report["metrics"]
            .as_array()
            .expect("metrics")
            .iter()
            .map(|m| Submission {
                name: m["name"].as_str().expect("name").to_owned(),
                kind: m["type"].as_str().expect("type").to_owned(),
                value: m["value"].as_f64().expect("value"),
                tags: strings(&m["tags"]),
            })
            .collect(),
        warnings: strings(&report["warnings"]),
        error: (!report["error"].is_null()).then(|| report["error"].to_string()),
        health: report["service_checks"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == "reapwatch.openmetrics.health")
            .and_then(|s| s["status"].as_u64()),
    }
}

/// Datadog's names for the family `family` of type `kind`, as the annotation maps it (`metrics`:
/// `{exposed name: datadog name}` entries): gauges as `<namespace>.<name>`, counters (exposed
/// without `_total`) as `.count`, histograms as `.bucket`, `.sum`, `.count`. None if unmapped.
pub fn datadog_names(instance: &Value, family: &str, kind: &str) -> Option<Vec<String>> {
    let namespace = instance["namespace"].as_str().expect("namespace");
    let exposed = match kind {
        "counter" => family.strip_suffix("_total").unwrap_or(family),
        _ => family,
    };
    let name = instance["metrics"]
        .as_array()
        .expect("metrics")
        .iter()
        .find_map(|m| m.get(exposed)?.as_str())?;
    let base = format!("{namespace}.{name}");
    Some(match kind {
        "counter" => vec![format!("{base}.count")],
        "histogram" => ["bucket", "sum", "count"]
            .map(|s| format!("{base}.{s}"))
            .into(),
        _ => vec![base],
    })
}
