//! The DaemonSet's least-privilege shape.

use anyhow::{bail, ensure, Context, Result};
use serde_json::json;

use super::helm::{find, Resource};

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

/// Where the kubelet keeps credentials and every pod's volumes: no mount of its configuration
/// may reach them.
const KUBELET_SECRETS: &[&str] = &[
    "/var/lib/kubelet/pods",
    "/var/lib/kubelet/pki",
    "/etc/kubernetes/pki",
];

/// A mount of the kubelet's configuration: an absolute path that neither holds nor lies in
/// the kubelet's secrets.
fn check_kubelet_config_path(path: &str) -> Result<()> {
    ensure!(
        path.starts_with('/') && !path.split('/').any(|s| s == ".." || s == "."),
        "kubelet config path {path} must be absolute and plain"
    );
    for secret in KUBELET_SECRETS {
        let within = |outer: &str, inner: &str| {
            inner.starts_with(&format!("{}/", outer.trim_end_matches('/')))
        };
        ensure!(
            path != *secret && !within(path, secret) && !within(secret, path),
            "kubelet config path {path} reaches {secret}, which holds credentials or pod volumes"
        );
    }
    Ok(())
}

/// The DaemonSet's privileges are the design, not an accident: checks each of them.
pub(super) fn check(resources: &[Resource]) -> Result<()> {
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
    // A class of the chart's own or an existing one: never none, or a node under pressure
    // evicts the tracer first.
    ensure!(
        pod["priorityClassName"]
            .as_str()
            .is_some_and(|name| !name.is_empty()),
        "a priority class"
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
        if volume["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("kubelet-config-"))
        {
            check_kubelet_config_path(path)?;
            continue;
        }
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
    // A digest pins whatever the user pushed; a tag must be this version.
    ensure!(
        image.ends_with(&tag) || image.contains("@sha256:"),
        "image {image} is not this version ({tag}), which `cargo xtask image` builds"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_config_paths_keep_out_of_its_secrets() {
        assert!(check_kubelet_config_path("/var/lib/kubelet/config.yaml").is_ok());
        assert!(check_kubelet_config_path("/etc/kubernetes/kubelet/config.json.d").is_ok());
        for bad in [
            "/var/lib/kubelet",
            "/",
            "/etc",
            "/var/lib/kubelet/pods/x/volumes",
            "etc/x",
            "/a/../var/lib/kubelet",
        ] {
            assert!(check_kubelet_config_path(bad).is_err(), "{bad}");
        }
    }
}
