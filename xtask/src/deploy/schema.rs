//! The manifests against the Kubernetes and CRD schemas, offline, with the venv's validators.

use std::{path::Path, process::Command};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

use super::{
    helm::{find, Resource},
    read, venv, write_json,
};
use crate::process::{self, workspace_root};

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

/// Validates every resource: built-in kinds with kubernetes-validate against each supported
/// Kubernetes version, CRD kinds with check-jsonschema against the vendored CRD.
pub(super) fn validate(resources: &[Resource], out: &Path) -> Result<()> {
    let kubernetes_validate = |version: &str| {
        let mut cmd = Command::new(venv::program("kubernetes-validate"));
        cmd.args(["--strict", "--quiet", "-k", version]);
        cmd
    };
    let check_jsonschema = |schema: &Path, file: &Path| {
        let mut cmd = Command::new(venv::program("check-jsonschema"));
        cmd.args(["--regex-variant=python", "--schemafile"])
            .args([schema, file]);
        cmd
    };

    // Quiet, as the validators print a line per file: their report comes with a failure.
    let mut builtin = Vec::new();
    for (i, resource) in resources.iter().enumerate() {
        let kind = resource.doc["kind"].as_str().context("kind")?;
        let path = write_json(out.join(format!("{i}-{kind}.json")), &resource.doc)?;
        match CRDS.iter().find(|(k, _)| *k == kind) {
            Some((_, file)) => {
                let api_version = resource.doc["apiVersion"].as_str().context("apiVersion")?;
                let schema = write_json(
                    out.join(format!("{kind}.schema.json")),
                    &crd_schema(file, api_version)?,
                )?;
                process::output(&mut check_jsonschema(&schema, &path))
                    .with_context(|| format!("{} ({kind})", resource.source))?;
            }
            None => builtin.push(path),
        }
    }
    for version in KUBERNETES_VERSIONS {
        process::output(kubernetes_validate(version).args(&builtin))
            .with_context(|| format!("manifests against Kubernetes {version}"))?;
    }

    // The validators must reject what the cluster would: a misspelled field in each kind of
    // schema, so that a validator that skips a kind cannot pass silently.
    let mut daemonset = find(resources, "DaemonSet")?.clone();
    daemonset["spec"]["template"]["spec"]["hostPid"] = Value::Bool(true);
    let bad = write_json(out.join("bad-daemonset.json"), &daemonset)?;
    ensure!(
        !process::succeeds(kubernetes_validate(KUBERNETES_VERSIONS[0]).arg(&bad))?,
        "kubernetes-validate accepts a DaemonSet with the unknown field hostPid"
    );
    // Where the combination renders one (a Datadog-only install renders none).
    if let Ok(monitor) = find(resources, "ServiceMonitor") {
        let mut monitor = monitor.clone();
        monitor["spec"]["endpoints"][0]["relabellings"] = json!([]);
        let bad = write_json(out.join("bad-servicemonitor.json"), &monitor)?;
        let schema = out.join("ServiceMonitor.schema.json");
        ensure!(
            !process::succeeds(&mut check_jsonschema(&schema, &bad))?,
            "check-jsonschema accepts a ServiceMonitor with the unknown field relabellings"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
