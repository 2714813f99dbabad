//! Checks of `deploy/`, run by `cargo xtask test`: the manifests against the Kubernetes and
//! Prometheus Operator schemas (offline), the DaemonSet's least-privilege shape, the alerts
//! with `promtool` and their unit tests, the Grafana dashboard's structure and PromQL, and that
//! alerts and dashboard use only metrics of the exporter's contract (`deploy/metrics.txt`).

mod components;
mod contract;
mod dashboard;
mod kustomize;
mod least_privilege;
mod promql;
mod rules;
mod schema;
mod venv;
mod yaml;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::workspace_root;
use contract::Contract;

pub use venv::setup;

pub fn check() -> Result<()> {
    let out = workspace_root().join("target/deploy-check");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).context("cannot create target/deploy-check")?;

    let contract = read_contract()?;
    let resources = kustomize::render(&deploy_dir())?;
    schema::validate(&resources, &out)?;
    least_privilege::check(&resources)?;
    components::check(&resources, &contract, &out)?;
    let rules = &kustomize::find(&resources, "PrometheusRule")?["spec"];
    let recorded = rules::check(rules, &contract, &out)?;
    let dashboard = read(&deploy_dir().join("grafana/reapwatch.json"))?;
    let dashboard: Value =
        serde_json::from_str(&dashboard).context("deploy/grafana/reapwatch.json")?;
    dashboard::check(&dashboard, &contract, &recorded, &out)?;
    eprintln!(
        "xtask: deploy/ checked: {} resources, {} metric families",
        resources.len(),
        contract.families.len()
    );
    Ok(())
}

/// The exporter's families and types, as `deploy/metrics.txt` lists them.
pub fn contract() -> Result<BTreeMap<String, String>> {
    Ok(read_contract()?.families)
}

/// The DaemonSet as `kubectl apply -k deploy/` creates it, for the image's end-to-end test;
/// with `component`, as an overlay with that one of deploy/components creates it.
pub fn daemonset(component: Option<&str>) -> Result<Value> {
    let mut resources = kustomize::render(&deploy_dir())?;
    if let Some(component) = component {
        resources = components::render(&resources, &components_dir().join(component))?;
    }
    Ok(kustomize::find(&resources, "DaemonSet")?.clone())
}

pub fn components_dir() -> PathBuf {
    deploy_dir().join("components")
}

fn deploy_dir() -> PathBuf {
    workspace_root().join("deploy")
}

fn read_contract() -> Result<Contract> {
    Contract::parse(&read(&deploy_dir().join("metrics.txt"))?)
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Writes `value` at `path` for a validator to read; returns the path, its argument.
fn write_json(path: PathBuf, value: &Value) -> Result<PathBuf> {
    fs::write(&path, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}
