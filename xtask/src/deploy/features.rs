//! Each feature of the chart's values, checked on what a combination renders: present and
//! wired when its value turns it on, absent when off.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use yaml_rust2::YamlLoader;

use super::{
    chart_file,
    contract::Contract,
    helm::{find, Resource},
    read, yaml,
};
use crate::process;

/// The image's architectures: as the profile names them, and as scmp_sys_resolver does.
const SECCOMP_ARCHITECTURES: &[(&str, &str)] = &[
    ("SCMP_ARCH_X86_64", "x86_64"),
    ("SCMP_ARCH_AARCH64", "aarch64"),
];

/// System calls x86_64 has and aarch64 does not, and the call musl makes there instead
/// (None: nothing to make up for).
const AARCH64_COUNTERPARTS: &[(&str, Option<&str>)] = &[
    ("arch_prctl", None),
    ("open", Some("openat")),
    ("poll", Some("ppoll")),
    ("stat", Some("newfstatat")),
];

/// The kinds only the Prometheus Operator's CRDs define.
const OPERATOR_KINDS: &[&str] = &["ServiceMonitor", "PrometheusRule"];

/// Checks `resources`, rendered with `values` (the chart's defaults with a combination's
/// overrides).
pub(super) fn check(resources: &[Resource], values: &Value, contract: &Contract) -> Result<()> {
    let on = |pointer: &str| values.pointer(pointer) == Some(&Value::Bool(true));
    check_wiring(resources, values)?;
    check_monitoring(resources, values)?;
    let (template, _) = pod_and_container(resources)?;
    let has_annotation = template["metadata"]["annotations"]
        .as_object()
        .is_some_and(|a| a.keys().any(|k| k.starts_with("ad.datadoghq.com/")));
    if on("/datadog/enabled") {
        check_datadog(resources, values, contract).context("datadog")?;
    } else {
        ensure!(!has_annotation, "Datadog annotations while datadog is off");
    }
    let has = |kind: &str| resources.iter().any(|r| r.doc["kind"] == kind);
    if on("/networkPolicy/enabled") {
        check_network_policy(resources).context("networkPolicy")?;
    } else {
        ensure!(
            !has("NetworkPolicy"),
            "a NetworkPolicy while networkPolicy is off"
        );
    }
    if values["seccomp"]["type"] == "Localhost" {
        check_seccomp(resources).context("seccomp")?;
    }
    if on("/tls/enabled") {
        check_tls(resources).context("tls")?;
    } else {
        ensure!(!has("Certificate"), "a Certificate while tls is off");
    }
    Ok(())
}

/// Ports, probes and flags agree: the kubelet probes the health port, which `--health-listen`
/// serves, and the Service and ServiceMonitor reach the metrics port `--listen` serves.
fn check_wiring(resources: &[Resource], values: &Value) -> Result<()> {
    let (template, container) = pod_and_container(resources)?;
    let args: Vec<&str> = container["args"]
        .as_array()
        .context("args")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let port_of = |name: &str| {
        container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .with_context(|| format!("no container port named {name}"))
    };
    let (metrics, health) = (port_of("metrics")?, port_of("health")?);
    for (flag, port) in [("--listen", metrics), ("--health-listen", health)] {
        let expected = format!("{flag}=0.0.0.0:{port}");
        ensure!(args.contains(&expected.as_str()), "args lack {expected}");
    }
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        ensure!(
            get["port"] == "health" && get["path"] == path && get["scheme"].is_null(),
            "{probe}: plain HTTP {path} on the health port, where no metrics client can starve it"
        );
    }
    // Empty: active for Datadog, whose every series is a billed custom metric.
    let series = match values["cgroupSeries"].as_str().context("cgroupSeries")? {
        "" if values["datadog"]["enabled"] == true => "active",
        "" => "all",
        chosen => chosen,
    };
    let series = format!("--cgroup-series={series}");
    ensure!(args.contains(&series.as_str()), "args lack {series}");
    let pod_labels = &template["metadata"]["labels"];
    let selects = |selector: &Value| {
        selector
            .as_object()
            .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| pod_labels[k] == *v))
    };
    let daemonset = find(resources, "DaemonSet")?;
    ensure!(
        selects(&daemonset["spec"]["selector"]["matchLabels"]),
        "the DaemonSet's selector does not select its pods"
    );
    let service = find(resources, "Service")?;
    ensure!(
        selects(&service["spec"]["selector"]),
        "the Service does not select the tracer's pods"
    );
    ensure!(
        service["spec"]["ports"][0]["targetPort"] == "metrics",
        "the Service reaches the metrics port"
    );
    // The kubelet's files at their host paths, as its command line names them.
    for path in values["kubelet"]["configPaths"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let mounted = container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| {
                m["mountPath"] == *path
                    && m["readOnly"] == true
                    && template["spec"]["volumes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|v| v["name"] == m["name"] && v["hostPath"]["path"] == *path)
            });
        ensure!(
            mounted,
            "kubelet config {path} is not mounted read-only at its host path"
        );
    }
    if values["priorityClass"]["create"] == true {
        let class = find(resources, "PriorityClass")?;
        ensure!(
            template["spec"]["priorityClassName"] == class["metadata"]["name"]
                && class["preemptionPolicy"] == values["priorityClass"]["preemptionPolicy"],
            "the pods use the PriorityClass the chart makes, with the preemption policy asked"
        );
    }
    Ok(())
}

/// The ServiceMonitor and PrometheusRule exist exactly when enabled, with the release label
/// and extra labels asked; a Datadog-only install renders no Prometheus Operator kind.
fn check_monitoring(resources: &[Resource], values: &Value) -> Result<()> {
    for (kind, key) in [
        ("ServiceMonitor", "serviceMonitor"),
        ("PrometheusRule", "prometheusRule"),
    ] {
        let found: Vec<&Value> = resources
            .iter()
            .map(|r| &r.doc)
            .filter(|d| d["kind"] == kind)
            .collect();
        if values[key]["enabled"] != true {
            ensure!(found.is_empty(), "a {kind} while {key}.enabled is false");
            continue;
        }
        let [object] = found[..] else {
            bail!("one {kind} while {key}.enabled is true");
        };
        let labels = &object["metadata"]["labels"];
        match values["prometheusRelease"].as_str().unwrap_or_default() {
            "" => ensure!(labels.get("release").is_none(), "{kind}: a release label"),
            release => ensure!(
                labels["release"] == release,
                "{kind}: label release={release}"
            ),
        }
        for (label, value) in values[key]["labels"].as_object().into_iter().flatten() {
            ensure!(labels[label] == *value, "{kind}: label {label}={value}");
        }
    }
    ensure!(
        resources.iter().all(|r| {
            let kind = r.doc["kind"].as_str().unwrap_or_default();
            !OPERATOR_KINDS.contains(&kind)
                || r.doc["apiVersion"]
                    .as_str()
                    .is_some_and(|v| v.starts_with("monitoring.coreos.com/"))
        }),
        "Prometheus Operator kinds in monitoring.coreos.com"
    );
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

/// Tag names Datadog reserves for unified service tagging and host identity
/// (`datadog_checks.base.utils.tagging.GENERIC_TAGS`): a label of that name must be renamed.
const DATADOG_RESERVED_TAGS: &[&str] = &[
    "cluster_name",
    "clustername",
    "cluster",
    "clusterid",
    "cluster_id",
    "env",
    "host_name",
    "hostname",
    "host",
    "service",
    "version",
];

/// The labels of the exporter's contract (README, "Metrics") that Datadog reserves.
const RESERVED_EXPORTED_LABELS: &[&str] = &["version"];

/// What one node can serve at most, by the exporter's own limits: series whatever the node
/// runs (the lifetime histogram's 40 buckets with +Inf, sum and count; four node gauges and the
/// node's forecast; the kubelet's pid.available, whether its settings are known, its two
/// thresholds and its forecast; build_info, events_lost, three map_entries, three map_full,
/// sample_failures, last_sample_timestamp, proc_skipped), series per exported cgroup at most,
/// and per exported parent. tests/tests/datadog.rs counts them on a live exposition.
const NODE_SERIES: u64 = 63;
const SERIES_PER_CGROUP: u64 = 10;
const SERIES_PER_PARENT: u64 = 2;

/// The integer value of `flag` among `args` (`--flag=N`).
fn numeric_arg(args: &[&str], flag: &str) -> Result<u64> {
    let prefix = format!("{flag}=");
    args.iter()
        .find_map(|a| a.strip_prefix(&prefix))
        .with_context(|| format!("args lack {flag}"))?
        .parse()
        .with_context(|| format!("{flag} is not a number"))
}

/// The tags a Datadog monitor query groups by: the names inside `by {...}`.
fn datadog_query_groups(query: &str) -> Vec<&str> {
    query
        .match_indices("by {")
        .filter_map(|(at, by)| {
            let rest = &query[at + by.len()..];
            Some(rest[..rest.find('}')?].split(',').map(str::trim))
        })
        .flatten()
        .collect()
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

/// The Agent's OpenMetrics check names only contract families and forwards all of them,
/// under tags Datadog does not reserve, up to the bound the exporter's flags give; over HTTPS
/// it verifies the certificate against the CA the Agent mounts. One importable monitor per
/// alert of the rule file, on only those metrics and tags.
fn check_datadog(resources: &[Resource], values: &Value, contract: &Contract) -> Result<()> {
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
    let scheme = match resources.iter().any(|r| r.doc["kind"] == "Certificate") {
        true => "https",
        false => "http",
    };
    let endpoint = format!("{scheme}://%%host%%:{}/metrics", metrics_port(container)?);
    ensure!(
        instance["openmetrics_endpoint"] == endpoint.as_str(),
        "{key}: openmetrics_endpoint must be {endpoint}"
    );
    check_datadog_bound(container, instance, &key)?;
    let renamed = &instance["rename_labels"];
    for label in RESERVED_EXPORTED_LABELS {
        let tag = renamed[label].as_str().unwrap_or(label);
        ensure!(
            !DATADOG_RESERVED_TAGS.contains(&tag),
            "{key}: label {label} becomes tag {tag}, which Datadog reserves: rename_labels"
        );
    }
    check_datadog_tls(resources, values, instance, &key)?;
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
            .with_context(|| format!("{key}: {raw} is not in the metric contract"))?;
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

    let monitors = read(&chart_file("datadog/monitors.json"))?;
    let monitors: Vec<Value> = serde_json::from_str(&monitors).context("monitors.json")?;
    let [rules] = &yaml::load(&chart_file("reapwatch.rules.yaml"))?[..] else {
        bail!("reapwatch.rules.yaml must hold one document");
    };
    let alerts: Vec<&Value> = rules["groups"]
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
        for tag in datadog_query_groups(query) {
            ensure!(
                tag == "host" || !DATADOG_RESERVED_TAGS.contains(&tag),
                "monitor {name}: groups by {tag}, a tag the check never sends (renamed)"
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

/// The exporter runs bounded (`--top-cgroups`, `--top-parents`), and the check's
/// max_returned_metrics is that bound: the check never drops a series, whatever the node runs.
fn check_datadog_bound(container: &Value, instance: &Value, key: &str) -> Result<()> {
    let args: Vec<&str> = container["args"]
        .as_array()
        .context("args")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let bound = NODE_SERIES
        + SERIES_PER_CGROUP * numeric_arg(&args, "--top-cgroups")?
        + SERIES_PER_PARENT * numeric_arg(&args, "--top-parents")?;
    ensure!(
        instance["max_returned_metrics"].as_u64() == Some(bound),
        "{key}: max_returned_metrics must be {bound}, the bound of the exporter's flags"
    );
    Ok(())
}

/// With the chart's TLS the check scrapes HTTPS and verifies the certificate: against the CA
/// file the values name (which the Agent mounts), for the name the certificate carries (sent
/// as Host); never `tls_verify: false`.
fn check_datadog_tls(
    resources: &[Resource],
    values: &Value,
    instance: &Value,
    key: &str,
) -> Result<()> {
    ensure!(
        instance["tls_verify"] != false && instance["tls_validate_hostname"] != false,
        "{key}: the check must verify the certificate and its name"
    );
    let Some(certificate) = resources
        .iter()
        .map(|r| &r.doc)
        .find(|d| d["kind"] == "Certificate" && d["spec"]["isCA"] != true)
    else {
        ensure!(
            instance.get("tls_ca_cert").is_none(),
            "{key}: tls_ca_cert without TLS"
        );
        return Ok(());
    };
    let names = certificate["spec"]["dnsNames"]
        .as_array()
        .context("dnsNames")?;
    ensure!(
        instance["tls_ca_cert"] == values["datadog"]["caFile"]
            && instance["tls_use_host_header"] == true
            && names.contains(&instance["extra_headers"]["Host"]),
        "{key}: HTTPS needs tls_ca_cert {}, tls_use_host_header and a Host among {names:?}",
        values["datadog"]["caFile"]
    );
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

/// The profile the DaemonSet asks for is the chart's, in the OCI seccomp format, denying what
/// it does not list, for both architectures of the image.
fn check_seccomp(resources: &[Resource]) -> Result<()> {
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
    let profile: Value = serde_json::from_str(&read(&chart_file(&format!("seccomp/{name}")))?)
        .context(name.to_owned())?;
    for (arch, _) in SECCOMP_ARCHITECTURES {
        ensure!(
            profile["architectures"]
                .as_array()
                .is_some_and(|a| a.contains(&json!(arch))),
            "{name}: the image runs on {arch} too"
        );
    }
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
    check_seccomp_architectures(name, &allowed)
}

/// Every name is a system call of one of the architectures (runtimes skip the names an
/// architecture lacks), and what the recording made on x86_64 that aarch64 lacks has its
/// aarch64 counterpart listed, by libseccomp's own tables (scmp_sys_resolver).
fn check_seccomp_architectures(profile: &str, allowed: &BTreeSet<&str>) -> Result<()> {
    let number = |arch: &str, call: &str| -> Result<i64> {
        let out = process::output(Command::new("scmp_sys_resolver").args(["-a", arch, call]))?;
        out.trim()
            .parse()
            .with_context(|| format!("scmp_sys_resolver -a {arch} {call}: {out}"))
    };
    for call in allowed {
        let mut known_on = Vec::new();
        for (_, arch) in SECCOMP_ARCHITECTURES {
            if number(arch, call)? >= 0 {
                known_on.push(*arch);
            }
        }
        ensure!(!known_on.is_empty(), "{profile}: {call} is no system call");
        if known_on == ["x86_64"] {
            let Some((_, counterpart)) = AARCH64_COUNTERPARTS.iter().find(|(c, _)| c == call)
            else {
                bail!(
                    "{profile}: {call} does not exist on aarch64 and has no known counterpart \
                     there: record the profile on arm64"
                );
            };
            if let Some(counterpart) = counterpart {
                ensure!(
                    allowed.contains(counterpart),
                    "{profile}: {call} on x86_64 is {counterpart} on aarch64, which is not allowed"
                );
            }
        }
    }
    Ok(())
}

/// The web config's files are the cert-manager Secret's, mounted; Prometheus scrapes with
/// HTTPS and checks that certificate's CA and name.
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
    // Without a ServiceMonitor (Datadog only), the Agent's side is check_datadog's.
    let Ok(monitor) = find(resources, "ServiceMonitor") else {
        return Ok(());
    };
    let endpoint = &monitor["spec"]["endpoints"][0];
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
        assert_eq!(
            datadog_query_groups("max(last_1h):max:r.e{*} by {host, pod}.as_count() < 1"),
            ["host", "pod"]
        );
        assert_eq!(
            numeric_arg(&["--top-cgroups=50", "--top-parents=20"], "--top-parents").unwrap(),
            20
        );
        assert!(numeric_arg(&["--top-parents"], "--top-parents").is_err());
    }
}
