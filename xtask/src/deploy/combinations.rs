//! The documented combinations of values (`charts/reapwatch/ci/*-values.yaml`, the layout
//! chart-testing reads too): each linted and rendered by Helm, the output held to the schemas,
//! to least privilege and to each feature's checks. And the values the schema must refuse.

use std::{fs, path::Path};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use super::{chart_dir, contract::Contract, features, helm, least_privilege, schema, yaml};

/// Combinations the README documents; more may exist.
const REQUIRED: &[&str] = &[
    "default",
    "datadog-only",
    "kube-prometheus-stack",
    "network-policy",
    "seccomp",
    "tls",
    "tls-own-issuer",
    "everything",
];

/// Values the schema (or the templates' own checks) must refuse, and what the refusal must
/// name: the key, so that the user knows what to fix.
fn refused() -> Vec<(Value, &'static str)> {
    vec![
        (json!({ "cgroupSeries": "sometimes" }), "/cgroupSeries"),
        (
            json!({ "serviceMonitor": { "enable": true } }),
            "'enable' not allowed",
        ),
        (
            json!({ "resources": { "limits": { "cpu": "1", "memory": "1Gi" } } }),
            "'cpu' not allowed",
        ),
        (
            json!({ "resources": { "limits": { "memory": "lots" } } }),
            "/resources/limits/memory",
        ),
        (
            json!({ "ports": { "health": 9750 } }),
            "ports.metrics and ports.health must differ",
        ),
        (json!({ "ports": { "metrics": 70000 } }), "/ports/metrics"),
        (
            json!({ "seccomp": { "type": "localhost" } }),
            "/seccomp/type",
        ),
        (
            json!({ "priorityClass": { "preemptionPolicy": "Sometimes" } }),
            "/priorityClass/preemptionPolicy",
        ),
        (
            json!({ "tls": { "issuer": { "name": "corp-ca" } } }),
            "/tls/issuer/kind",
        ),
        (json!({ "image": { "digest": "latest" } }), "/image/digest"),
        (json!({ "image": { "tag": 5 } }), "/image/tag"),
        (json!({ "extraArgs": ["-v"] }), "/extraArgs/0"),
        (
            json!({ "networkPolicy": { "enabled": true, "from": [] } }),
            "/networkPolicy/from",
        ),
        (
            json!({ "serviceMonitor": { "interval": "30" } }),
            "/serviceMonitor/interval",
        ),
        (json!({ "podLabels": { "bad label": "x" } }), "'bad label'"),
        (
            json!({ "kubelet": { "configPaths": ["/var/lib/kubelet"] } }),
            "/var/lib/kubelet reaches /var/lib/kubelet/pods",
        ),
        (
            json!({ "kubelet": { "configPaths": ["/etc/kubernetes"] } }),
            "/etc/kubernetes reaches /etc/kubernetes/pki",
        ),
        (
            json!({ "kubelet": { "configPaths": ["kubelet.yaml"] } }),
            "/kubelet/configPaths/0",
        ),
    ]
}

/// Checks every combination; returns how many.
pub(super) fn check(contract: &Contract, out: &Path) -> Result<usize> {
    let [defaults] = &yaml::load(&chart_dir().join("values.yaml"))?[..] else {
        bail!("values.yaml must hold one document");
    };
    let mut names = Vec::new();
    for entry in fs::read_dir(chart_dir().join("ci")).context("charts/reapwatch/ci")? {
        let path = entry?.path();
        let file = path.file_name().unwrap_or_default().to_string_lossy();
        let Some(name) = file.strip_suffix("-values.yaml") else {
            bail!("charts/reapwatch/ci/{file}: combinations are named NAME-values.yaml");
        };
        let name = name.to_owned();
        let overrides = match &yaml::load(&path)?[..] {
            [] | [Value::Null] => json!({}),
            [values] => values.clone(),
            _ => bail!("ci/{file} must hold one document"),
        };
        let out = out.join(format!("ci-{name}"));
        let _ = fs::remove_dir_all(&out);
        fs::create_dir_all(&out).context("create the combination's check directory")?;
        let what = || format!("charts/reapwatch/ci/{file}");
        helm::lint(&overrides, &out).with_context(what)?;
        let resources = helm::render(&overrides, &out).with_context(what)?;
        schema::validate(&resources, &out).with_context(what)?;
        least_privilege::check(&resources).with_context(what)?;
        let mut values = defaults.clone();
        coalesce(&mut values, &overrides);
        features::check(&resources, &values, contract).with_context(what)?;
        names.push(name);
    }
    for required in REQUIRED {
        ensure!(
            names.iter().any(|n| n == required),
            "charts/reapwatch/ci/{required}-values.yaml, a documented combination, is missing"
        );
    }
    for (values, names_key) in refused() {
        let message = helm::refusal(&values, out)?;
        ensure!(
            message.contains(names_key) && !message.contains('\n'),
            "values {values} are refused with {message:?}, which does not say {names_key:?} \
             on one line"
        );
    }
    Ok(names.len())
}

/// Helm's coalescing of a values file over the chart's defaults: maps merge key by key, and
/// anything else replaces.
fn coalesce(values: &mut Value, overrides: &Value) {
    match (values, overrides) {
        (Value::Object(values), Value::Object(overrides)) => {
            for (key, value) in overrides {
                match values.get_mut(key) {
                    Some(existing) => coalesce(existing, value),
                    None => {
                        values.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (values, overrides) => *values = overrides.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_merge_maps_and_replace_the_rest() {
        let mut values = json!({ "a": { "b": 1, "c": [1, 2] }, "d": "x" });
        coalesce(&mut values, &json!({ "a": { "c": [3] }, "e": true }));
        assert_eq!(
            values,
            json!({ "a": { "b": 1, "c": [3] }, "d": "x", "e": true })
        );
    }
}
