//! `deploy/components/<name>/`: kustomize Components a cluster opts into. Each is rendered
//! onto the base as `components: [components/<name>]` would render it, and the result is held
//! to the base's checks (schemas, least privilege) and to the component's own.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use yaml_rust2::YamlLoader;

use super::{
    components_dir,
    contract::Contract,
    kustomize::{find, load_resources, Resource},
    least_privilege, read, schema, yaml,
};

/// The components the issue asks for; each has a check of its own below.
const COMPONENTS: &[&str] = &["datadog", "network-policy", "seccomp", "tls"];

pub(super) fn check(base: &[Resource], contract: &Contract, out: &Path) -> Result<()> {
    let dir = components_dir();
    let mut found = Vec::new();
    for entry in fs::read_dir(&dir).context("deploy/components")? {
        found.push(entry?.file_name().to_string_lossy().into_owned());
    }
    found.sort();
    ensure!(
        found == COMPONENTS,
        "deploy/components holds {found:?}, xtask checks {COMPONENTS:?}"
    );
    for name in COMPONENTS {
        let what = || format!("deploy/components/{name}");
        let dir = dir.join(name);
        let rendered = render(base, &dir).with_context(what)?;
        let out = out.join(name);
        fs::create_dir_all(&out).context("create the component's check directory")?;
        schema::validate(&rendered, &out).with_context(what)?;
        least_privilege::check(&rendered).with_context(what)?;
        match *name {
            "datadog" => check_datadog(&rendered, &dir, contract),
            "network-policy" => check_network_policy(&rendered),
            "seccomp" => check_seccomp(&rendered, &dir),
            _ => check_tls(&rendered),
        }
        .with_context(what)?;
    }
    Ok(())
}

/// The base with the component's resources added and its patches applied. As for the base,
/// only the features used here are rendered and any other is refused: `resources`, and
/// `patches` that are either a strategic merge patch naming its object, or a JSON patch of
/// `add` operations with a `target`.
pub(super) fn render(base: &[Resource], dir: &Path) -> Result<Vec<Resource>> {
    let [component] = &yaml::load(&dir.join("kustomization.yaml"))?[..] else {
        bail!("kustomization.yaml must hold one document");
    };
    ensure!(
        component["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
            && component["kind"] == "Component",
        "kustomization.yaml is not a kustomize Component"
    );
    for key in component.as_object().context("kustomization")?.keys() {
        ensure!(
            matches!(
                key.as_str(),
                "apiVersion" | "kind" | "resources" | "patches"
            ),
            "kustomization.yaml: `{key}` is not rendered by xtask's checks"
        );
    }
    let mut resources = base.to_vec();
    let files = component["resources"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut listed = load_resources(dir, &files, &mut resources)?;
    for patch in component["patches"].as_array().into_iter().flatten() {
        let file = patch["path"].as_str().context("patch path")?;
        listed.insert(file.to_owned());
        let [doc] = &yaml::load(&dir.join(file))?[..] else {
            bail!("{file} must hold one document");
        };
        let target = &patch["target"];
        let (kind, name) = match doc {
            Value::Array(_) => (&target["kind"], &target["name"]),
            _ => {
                ensure!(target.is_null(), "{file}: a target for a merge patch");
                (&doc["kind"], &doc["metadata"]["name"])
            }
        };
        // A patch of an object the base does not have is an error in kustomize too.
        let mut matching = resources
            .iter_mut()
            .filter(|r| r.doc["kind"] == *kind && r.doc["metadata"]["name"] == *name);
        let (Some(resource), None) = (matching.next(), matching.next()) else {
            bail!("{file} patches {kind} {name}, which is not exactly one object of deploy/");
        };
        match doc {
            Value::Array(operations) => json_patch(&mut resource.doc, operations),
            _ => {
                ensure!(
                    doc["apiVersion"] == resource.doc["apiVersion"]
                        && doc["metadata"]["namespace"] == resource.doc["metadata"]["namespace"],
                    "{file}: apiVersion and namespace must be those of {kind} {name}"
                );
                merge(&mut resource.doc, doc);
                Ok(())
            }
        }
        .with_context(|| file.to_owned())?;
        resource.source = format!("{} + {file}", resource.source);
    }
    // A file the component forgets is never applied.
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            ensure!(
                listed.contains(&name),
                "{name} is not in kustomization.yaml"
            );
        }
    }
    Ok(resources)
}

/// Lists that a strategic merge patch merges item by item, by this key (Kubernetes'
/// `patchMergeKey`); every other list is replaced whole, as are all lists of custom resources,
/// which have no merge keys (hence JSON patches for those).
const MERGE_KEYS: &[(&str, &str)] = &[
    ("containers", "name"),
    ("volumes", "name"),
    ("volumeMounts", "mountPath"),
    ("env", "name"),
];

fn merge(target: &mut Value, patch: &Value) {
    let (Value::Object(target), Value::Object(patch)) = (&mut *target, patch) else {
        *target = patch.clone();
        return;
    };
    for (key, value) in patch {
        let merge_key = MERGE_KEYS.iter().find(|(k, _)| k == key).map(|(_, m)| *m);
        match (target.get_mut(key), merge_key, value) {
            (Some(Value::Array(items)), Some(merge_key), Value::Array(patches)) => {
                for patch in patches {
                    match items.iter_mut().find(|i| i[merge_key] == patch[merge_key]) {
                        Some(item) => merge(item, patch),
                        None => items.push(patch.clone()),
                    }
                }
            }
            (Some(existing), _, _) => merge(existing, value),
            (None, _, _) => {
                target.insert(key.clone(), value.clone());
            }
        }
    }
}

/// RFC 6902 `add` operations: into an object, or into an array at an index or at its end (`-`).
fn json_patch(doc: &mut Value, operations: &[Value]) -> Result<()> {
    for operation in operations {
        ensure!(
            operation["op"] == "add",
            "only `add` operations are rendered by xtask's checks"
        );
        let path = operation["path"].as_str().context("path")?;
        let (parent, last) = path.rsplit_once('/').context("a JSON pointer")?;
        let value = operation["value"].clone();
        match doc.pointer_mut(parent) {
            Some(Value::Array(items)) if last == "-" => items.push(value),
            Some(Value::Array(items)) => {
                let index: usize = last.parse().context("array index")?;
                ensure!(index <= items.len(), "{path}: past the array's end");
                items.insert(index, value);
            }
            Some(Value::Object(object)) => {
                object.insert(last.replace("~1", "/").replace("~0", "~"), value);
            }
            _ => bail!("{path}: no object or array at {parent}"),
        }
    }
    Ok(())
}

/// The DaemonSet's pod template and its only container, as rendered.
fn pod_and_container(resources: &[Resource]) -> Result<(&Value, &Value)> {
    let template = &find(resources, "DaemonSet")?["spec"]["template"];
    Ok((template, &template["spec"]["containers"][0]))
}

/// The container port named `metrics`.
fn metrics_port(container: &Value) -> Result<u64> {
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "metrics")
        .and_then(|p| p["containerPort"].as_u64())
        .context("no container port named metrics")
}

/// What Datadog calls the series of a contract family, through the OpenMetrics check's V2:
/// `<namespace>.<name>` for a gauge, `.count` for a counter (a monotonic count), and
/// `.bucket`, `.sum`, `.count` for a histogram.
fn datadog_names(namespace: &str, name: &str, kind: &str) -> Vec<String> {
    let base = format!("{namespace}.{name}");
    match kind {
        "counter" => vec![format!("{base}.count")],
        "histogram" => ["bucket", "sum", "count"]
            .map(|s| format!("{base}.{s}"))
            .into(),
        _ => vec![base],
    }
}

/// The metrics a Datadog monitor query selects: the names right before a `{scope}`.
fn datadog_query_metrics(query: &str) -> Vec<&str> {
    query
        .match_indices('{')
        .filter_map(|(at, _)| {
            let before = &query[..at];
            let start = before
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                .map_or(0, |i| i + 1);
            Some(&before[start..]).filter(|name| !name.is_empty())
        })
        .collect()
}

/// The Agent's OpenMetrics check names only contract families and forwards all of them; one
/// importable monitor per alert of the PrometheusRule, on only those metrics.
fn check_datadog(resources: &[Resource], dir: &Path, contract: &Contract) -> Result<()> {
    let (template, container) = pod_and_container(resources)?;
    let key = format!(
        "ad.datadoghq.com/{}.checks",
        container["name"].as_str().context("container name")?
    );
    let annotation = template["metadata"]["annotations"][&key]
        .as_str()
        .with_context(|| format!("no pod annotation {key}"))?;
    let checks: Value =
        serde_json::from_str(annotation).with_context(|| format!("{key} is not JSON"))?;
    ensure!(
        checks.as_object().map(|o| o.len()) == Some(1)
            && checks["openmetrics"]["init_config"].is_object(),
        "{key}: only the openmetrics check, with init_config"
    );
    let [instance] = &checks["openmetrics"]["instances"]
        .as_array()
        .context("openmetrics instances")?[..]
    else {
        bail!("{key}: one openmetrics instance");
    };
    let endpoint = format!("http://%%host%%:{}/metrics", metrics_port(container)?);
    ensure!(
        instance["openmetrics_endpoint"] == endpoint.as_str(),
        "{key}: openmetrics_endpoint must be {endpoint}"
    );
    let namespace = instance["namespace"].as_str().context("namespace")?;
    // Datadog metric name -> contract family.
    let mut datadog = BTreeMap::new();
    for mapping in instance["metrics"].as_array().context("metrics")? {
        let Some((raw, name)) = mapping.as_object().and_then(|m| m.iter().next()) else {
            bail!("{key}: metrics entries are {{\"exposed name\": \"datadog name\"}}");
        };
        let name = name.as_str().context("datadog name")?;
        // The check sees a counter's family without its `_total`.
        let (family, kind) = [raw.clone(), format!("{raw}_total")]
            .into_iter()
            .find_map(|f| Some((f.clone(), contract.families.get(&f)?.clone())))
            .with_context(|| format!("{key}: {raw} is not in deploy/metrics.txt"))?;
        ensure!(
            kind != "counter" || raw.as_str() != family,
            "{key}: {raw}: name counters without _total, as the check sees them"
        );
        for series in datadog_names(namespace, name, &kind) {
            ensure!(
                datadog.insert(series.clone(), family.clone()).is_none(),
                "{key}: {series} named twice"
            );
        }
    }
    let forwarded: BTreeSet<&String> = datadog.values().collect();
    for family in contract.families.keys() {
        ensure!(forwarded.contains(family), "{key}: {family} is not sent");
    }

    let monitors = read(&dir.join("monitors.json"))?;
    let monitors: Vec<Value> = serde_json::from_str(&monitors).context("monitors.json")?;
    let rules = &find(resources, "PrometheusRule")?["spec"]["groups"];
    let alerts: Vec<&Value> = rules
        .as_array()
        .context("rule groups")?
        .iter()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .filter(|r| r["alert"].is_string())
        .collect();
    ensure!(
        monitors.len() == alerts.len(),
        "monitors.json: {} monitors for {} alerts",
        monitors.len(),
        alerts.len()
    );
    for alert in alerts {
        let name = alert["alert"].as_str().context("alert")?;
        let prefix = format!("{name}: ");
        let [monitor] = &monitors
            .iter()
            .filter(|m| m["name"].as_str().is_some_and(|n| n.starts_with(&prefix)))
            .collect::<Vec<_>>()[..]
        else {
            bail!("monitors.json: not exactly one monitor named `{prefix}...`");
        };
        ensure!(
            monitor["type"] == "query alert",
            "monitor {name}: type query alert"
        );
        let runbook = alert["annotations"]["runbook_url"]
            .as_str()
            .context("runbook_url")?;
        ensure!(
            monitor["message"]
                .as_str()
                .is_some_and(|m| m.contains(runbook)),
            "monitor {name}: its message must link {runbook}"
        );
        let severity = format!(
            "severity:{}",
            alert["labels"]["severity"].as_str().unwrap_or("?")
        );
        ensure!(
            monitor["tags"]
                .as_array()
                .is_some_and(|t| t.contains(&json!(severity))),
            "monitor {name}: tag {severity}, as the alert"
        );
        let query = monitor["query"].as_str().context("query")?;
        let metrics = datadog_query_metrics(query);
        ensure!(!metrics.is_empty(), "monitor {name}: no metric in {query}");
        for metric in metrics {
            ensure!(
                datadog.contains_key(metric),
                "monitor {name}: {metric} is not a metric the annotation sends"
            );
        }
        // The threshold is the query's, as Datadog's API requires.
        let critical = monitor["options"]["thresholds"]["critical"]
            .as_f64()
            .context("options.thresholds.critical")?;
        let last = query.rsplit(' ').next().unwrap_or_default();
        ensure!(
            last.parse::<f64>().ok() == Some(critical),
            "monitor {name}: the query's threshold {last} is not options.thresholds.critical"
        );
    }
    Ok(())
}

/// Admits the metrics port of the tracer's pods to Prometheus only; no egress.
fn check_network_policy(resources: &[Resource]) -> Result<()> {
    let (template, container) = pod_and_container(resources)?;
    let policy = &find(resources, "NetworkPolicy")?["spec"];
    for (label, value) in policy["podSelector"]["matchLabels"]
        .as_object()
        .context("podSelector.matchLabels")?
    {
        ensure!(
            template["metadata"]["labels"][label] == *value,
            "the policy does not select the tracer's pods ({label})"
        );
    }
    ensure!(
        policy["policyTypes"] == json!(["Ingress", "Egress"]) && policy["egress"] == json!([]),
        "ingress and egress both restricted, no egress at all"
    );
    let [rule] = &policy["ingress"].as_array().context("ingress")?[..] else {
        bail!("one ingress rule");
    };
    let port = metrics_port(container)?;
    ensure!(
        rule["ports"]
            .as_array()
            .is_some_and(|p| p.len() == 1 && (p[0]["port"] == "metrics" || p[0]["port"] == port)),
        "the metrics port only"
    );
    ensure!(
        rule["from"].as_array().is_some_and(|from| from
            .iter()
            .all(|f| f["namespaceSelector"].is_object() && f["podSelector"].is_object())),
        "each peer names both Prometheus' namespace and its pods"
    );
    Ok(())
}

/// The profile the DaemonSet asks for exists in the component, in the OCI seccomp format,
/// denying what it does not list.
fn check_seccomp(resources: &[Resource], dir: &Path) -> Result<()> {
    let (_, container) = pod_and_container(resources)?;
    let profile = &container["securityContext"]["seccompProfile"];
    ensure!(
        profile["type"] == "Localhost",
        "a Localhost seccomp profile"
    );
    let file = profile["localhostProfile"]
        .as_str()
        .context("localhostProfile")?;
    let name = file.rsplit('/').next().unwrap_or(file);
    let profile: Value = serde_json::from_str(&read(&dir.join(name))?).context(name.to_owned())?;
    ensure!(
        profile["defaultAction"]
            .as_str()
            .is_some_and(|a| a.starts_with("SCMP_ACT_ERRNO") || a.starts_with("SCMP_ACT_KILL")),
        "{name}: defaultAction must deny"
    );
    let allowed: BTreeSet<&str> = profile["syscalls"]
        .as_array()
        .context("syscalls")?
        .iter()
        .filter(|s| s["action"] == "SCMP_ACT_ALLOW")
        .flat_map(|s| s["names"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    for needed in ["bpf", "execve", "exit_group"] {
        ensure!(allowed.contains(needed), "{name}: {needed} must be allowed");
    }
    Ok(())
}

/// The web config's files are the cert-manager Secret's, mounted; Prometheus scrapes with
/// HTTPS and checks that certificate's CA and name; the kubelet probes with HTTPS.
fn check_tls(resources: &[Resource]) -> Result<()> {
    let (template, container) = pod_and_container(resources)?;
    let certificate = resources
        .iter()
        .map(|r| &r.doc)
        .find(|d| d["kind"] == "Certificate" && d["spec"]["isCA"] != true)
        .context("no serving Certificate")?;
    let secret = certificate["spec"]["secretName"]
        .as_str()
        .context("secretName")?;
    let volumes = template["spec"]["volumes"].as_array().context("volumes")?;
    // Where the container sees a volume: (mount path, volume).
    let mounted: Vec<(&str, &Value)> = container["volumeMounts"]
        .as_array()
        .context("volumeMounts")?
        .iter()
        .filter_map(|m| {
            let volume = volumes.iter().find(|v| v["name"] == m["name"])?;
            Some((m["mountPath"].as_str()?, volume))
        })
        .collect();
    // The volume and key a file of the container comes from.
    let source = |file: &str| {
        let (dir, key) = file.rsplit_once('/')?;
        let (_, volume) = mounted.iter().find(|(path, _)| *path == dir)?;
        Some((*volume, key.to_owned()))
    };
    let flag = container["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix("--web-config-file="))
        .context("no --web-config-file argument")?;
    let (volume, key) = source(flag).with_context(|| format!("{flag} is not mounted"))?;
    let config_map = volume["configMap"]["name"]
        .as_str()
        .with_context(|| format!("{flag} is not from a ConfigMap"))?;
    let web_config = resources
        .iter()
        .map(|r| &r.doc)
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == config_map)
        .and_then(|d| d["data"][&key].as_str())
        .with_context(|| format!("ConfigMap {config_map} has no {key}"))?;
    let [web_config] = &YamlLoader::load_from_str(web_config).context("web config")?[..] else {
        bail!("the web config must hold one document");
    };
    let tls = &yaml::to_json(web_config)?["tls_server_config"];
    for (field, key) in [("cert_file", "tls.crt"), ("key_file", "tls.key")] {
        let file = tls[field].as_str().context(field)?;
        let (volume, found) = source(file).with_context(|| format!("{file} is not mounted"))?;
        ensure!(
            volume["secret"]["secretName"] == secret && found == key,
            "{field} {file} must be {key} of the certificate's Secret {secret}"
        );
    }
    for probe in ["livenessProbe", "readinessProbe"] {
        ensure!(
            container[probe]["httpGet"]["scheme"] == "HTTPS",
            "{probe}: scheme HTTPS"
        );
    }
    let endpoint = &find(resources, "ServiceMonitor")?["spec"]["endpoints"][0];
    let names = certificate["spec"]["dnsNames"]
        .as_array()
        .context("dnsNames")?;
    ensure!(
        endpoint["scheme"] == "https"
            && endpoint["tlsConfig"]["ca"]["secret"]["name"] == secret
            && endpoint["tlsConfig"]["ca"]["secret"]["key"] == "ca.crt"
            && names.contains(&endpoint["tlsConfig"]["serverName"]),
        "the ServiceMonitor must scrape with https, {secret}'s ca.crt and one of {names:?}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patches_lists_by_key_and_replaces_others() {
        let mut doc = json!({ "spec": { "containers": [
            { "name": "a", "args": ["x"], "volumeMounts": [{ "mountPath": "/p", "readOnly": true }] },
            { "name": "b" }
        ] } });
        merge(
            &mut doc,
            &json!({ "spec": { "containers": [
                { "name": "a", "args": ["y"], "volumeMounts": [{ "mountPath": "/q" }] }
            ] } }),
        );
        assert_eq!(
            doc,
            json!({ "spec": { "containers": [
                { "name": "a", "args": ["y"],
                  "volumeMounts": [{ "mountPath": "/p", "readOnly": true }, { "mountPath": "/q" }] },
                { "name": "b" }
            ] } })
        );
    }

    #[test]
    fn json_patch_adds_only() {
        let mut doc = json!({ "a": [1, 2], "o": {} });
        json_patch(
            &mut doc,
            &[
                json!({ "op": "add", "path": "/a/-", "value": 3 }),
                json!({ "op": "add", "path": "/a/0", "value": 0 }),
                json!({ "op": "add", "path": "/o/k~1v", "value": true }),
            ],
        )
        .unwrap();
        assert_eq!(doc, json!({ "a": [0, 1, 2, 3], "o": { "k/v": true } }));
        assert!(json_patch(&mut doc, &[json!({ "op": "remove", "path": "/a/0" })]).is_err());
        assert!(json_patch(
            &mut doc,
            &[json!({ "op": "add", "path": "/x/y", "value": 1 })]
        )
        .is_err());
    }

    #[test]
    fn datadog_names_and_queries() {
        assert_eq!(datadog_names("r", "lost", "counter"), ["r.lost.count"]);
        assert_eq!(datadog_names("r", "zombies", "gauge"), ["r.zombies"]);
        assert_eq!(
            datadog_names("r", "life", "histogram"),
            ["r.life.bucket", "r.life.sum", "r.life.count"]
        );
        assert_eq!(
            datadog_query_metrics("sum(last_5m):sum:r.lost.count{*} by {host,map}.as_count() > 0"),
            ["r.lost.count"]
        );
        assert_eq!(
            datadog_query_metrics("change(min(last_5m),last_30m):min:r.z{env:a} by {host} >= 5"),
            ["r.z"]
        );
    }
}
