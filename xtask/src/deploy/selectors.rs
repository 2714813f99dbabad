//! Whether kube-prometheus-stack's Prometheus, as installed by default, loads the chart's
//! ServiceMonitor and PrometheusRule: its default selectors (a pinned snippet of its values,
//! `tests/deploy/kube-prometheus-stack/prometheus-selectors.yaml`) evaluated as the stack's
//! chart and the Prometheus Operator evaluate them, against the rendered objects.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Map, Value};

use super::{helm, yaml};
use crate::process::workspace_root;

/// The stack's selectors for one kind: (objects, namespaces).
struct Selectors {
    objects: Value,
    namespaces: Value,
}

/// What the stack's chart puts in the Prometheus object for `kind` ("serviceMonitor" or
/// "rule"), installed under the release name `release`.
fn stack_selectors(spec: &Value, kind: &str, release: &str) -> Selectors {
    let set = &spec[format!("{kind}Selector")];
    let objects = if set.as_object().is_some_and(|s| !s.is_empty()) {
        set.clone()
    } else if spec[format!("{kind}SelectorNilUsesHelmValues")] == true {
        json!({ "matchLabels": { "release": release } })
    } else {
        json!({})
    };
    Selectors {
        objects,
        namespaces: spec[format!("{kind}NamespaceSelector")].clone(),
    }
}

/// A Kubernetes label selector against `labels`: every matchLabels pair and every
/// matchExpressions requirement must hold; the empty selector matches everything.
fn matches(selector: &Value, labels: &Map<String, Value>) -> Result<bool> {
    for (key, value) in selector["matchLabels"].as_object().into_iter().flatten() {
        if labels.get(key) != Some(value) {
            return Ok(false);
        }
    }
    for requirement in selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let key = requirement["key"]
            .as_str()
            .context("matchExpressions key")?;
        let values = requirement["values"].as_array();
        let label = labels.get(key);
        let holds = match requirement["operator"].as_str() {
            Some("In") => label.is_some_and(|l| values.is_some_and(|v| v.contains(l))),
            Some("NotIn") => !label.is_some_and(|l| values.is_some_and(|v| v.contains(l))),
            Some("Exists") => label.is_some(),
            Some("DoesNotExist") => label.is_none(),
            other => bail!("unknown selector operator {other:?}"),
        };
        if !holds {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether `object` is loaded by a Prometheus whose selectors are `selectors`; namespaces
/// carry the label Kubernetes gives every one, `kubernetes.io/metadata.name`.
fn selected(selectors: &Selectors, object: &Value) -> Result<bool> {
    let labels = object["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .context("namespace")?;
    let namespace_labels =
        Map::from_iter([("kubernetes.io/metadata.name".to_owned(), json!(namespace))]);
    // The operator reads a missing namespace selector as its own namespace only; the stack
    // always sets one.
    ensure!(
        selectors.namespaces.is_object(),
        "the stack's snippet names no namespace selector"
    );
    Ok(matches(&selectors.namespaces, &namespace_labels)? && matches(&selectors.objects, &labels)?)
}

/// Whether the stack installed as `release` loads the ServiceMonitor and the PrometheusRule
/// the chart renders with `values`.
fn loads(stack: &Value, release: &str, values: &Value, out: &Path) -> Result<(bool, bool)> {
    let spec = &stack["prometheus"]["prometheusSpec"];
    let resources = helm::render(values, out)?;
    Ok((
        selected(
            &stack_selectors(spec, "serviceMonitor", release),
            helm::find(&resources, "ServiceMonitor")?,
        )?,
        selected(
            &stack_selectors(spec, "rule", release),
            helm::find(&resources, "PrometheusRule")?,
        )?,
    ))
}

pub(super) fn check(out: &Path) -> Result<()> {
    let file =
        workspace_root().join("tests/deploy/kube-prometheus-stack/prometheus-selectors.yaml");
    let [stack] = &yaml::load(&file)?[..] else {
        bail!("{} must hold one document", file.display());
    };
    let default_release = stack["release"].as_str().context("release")?;
    // The chart's defaults are picked up by the stack's defaults.
    ensure!(
        loads(stack, default_release, &json!({}), out)? == (true, true),
        "kube-prometheus-stack installed as {default_release} does not load the chart's \
         ServiceMonitor and PrometheusRule"
    );
    // Another release name is followed by the documented value, and only by it.
    let values = json!({ "prometheusRelease": "prom" });
    ensure!(
        loads(stack, "prom", &values, out)? == (true, true),
        "with prometheusRelease=prom, a stack released as prom must load both"
    );
    ensure!(
        loads(stack, default_release, &values, out)? == (false, false),
        "with prometheusRelease=prom, a stack released as {default_release} must load neither"
    );
    // Without the label nothing is loaded: the silent failure the value exists for.
    ensure!(
        loads(
            stack,
            default_release,
            &json!({ "prometheusRelease": "" }),
            out
        )? == (false, false),
        "without the release label the stack's default selectors must load nothing"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn label_selectors() {
        let l = labels(json!({ "release": "prom", "team": "sre" }));
        assert!(matches(&json!({}), &l).unwrap());
        assert!(matches(&json!({ "matchLabels": { "release": "prom" } }), &l).unwrap());
        assert!(!matches(&json!({ "matchLabels": { "release": "kps" } }), &l).unwrap());
        let expression = |op: &str, values: Value| json!({ "matchExpressions": [{ "key": "team", "operator": op, "values": values }] });
        assert!(matches(&expression("In", json!(["sre", "dev"])), &l).unwrap());
        assert!(!matches(&expression("NotIn", json!(["sre"])), &l).unwrap());
        assert!(matches(&expression("Exists", Value::Null), &l).unwrap());
        assert!(!matches(&expression("DoesNotExist", Value::Null), &l).unwrap());
        assert!(matches(&expression("Gt", json!([])), &l).is_err());
    }

    #[test]
    fn nil_uses_helm_values_becomes_the_release_label() {
        let spec = json!({
            "ruleSelectorNilUsesHelmValues": true, "ruleSelector": {},
            "serviceMonitorSelectorNilUsesHelmValues": false, "serviceMonitorSelector": {},
        });
        assert_eq!(
            stack_selectors(&spec, "rule", "kps").objects,
            json!({ "matchLabels": { "release": "kps" } })
        );
        assert_eq!(
            stack_selectors(&spec, "serviceMonitor", "kps").objects,
            json!({})
        );
        let set = json!({ "ruleSelector": { "matchLabels": { "a": "b" } },
                          "ruleSelectorNilUsesHelmValues": true });
        assert_eq!(
            stack_selectors(&set, "rule", "kps").objects,
            json!({ "matchLabels": { "a": "b" } })
        );
    }
}
