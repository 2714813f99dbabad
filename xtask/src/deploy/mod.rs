//! Checks of the Helm chart (`charts/reapwatch`), run by `cargo xtask test`: every documented
//! combination of values (`charts/reapwatch/ci/`) rendered and linted by Helm's own engine,
//! the output against the Kubernetes and CRD schemas (offline), the DaemonSet's least-privilege
//! shape, each feature's wiring, the values schema's refusals, kube-prometheus-stack's default
//! selectors, the packaged chart, the alerts with `promtool` and their unit tests, the Grafana
//! dashboard, and that alerts and dashboard use only metrics of the exporter's contract
//! (`charts/reapwatch/files/metrics.txt`). `deploy/reapwatch.yaml`, for clusters without Helm,
//! is generated from the chart (`cargo xtask deploy-render`) and checked to agree.

mod combinations;
mod contract;
mod dashboard;
mod features;
mod helm;
mod least_privilege;
mod promql;
mod rules;
mod schema;
mod selectors;
mod venv;
mod yaml;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

use crate::process::workspace_root;
use contract::Contract;

pub use venv::setup;

pub fn check() -> Result<()> {
    let out = check_dir()?;
    let contract = read_contract()?;
    let combinations = combinations::check(&contract, &out)?;
    let defaults = helm::render(&json!({}), &out)?;
    let rules = &helm::find(&defaults, "PrometheusRule")?["spec"];
    let recorded = rules::check(rules, &contract, &out)?;
    let dashboard = read(&chart_dir().join("files/grafana/reapwatch.json"))?;
    let dashboard: Value = serde_json::from_str(&dashboard).context("the Grafana dashboard")?;
    dashboard::check(&dashboard, &contract, &recorded, &out)?;
    selectors::check(&out)?;
    check_package(&defaults, &out)?;
    check_generated(&out)?;
    eprintln!(
        "xtask: charts/reapwatch checked: {combinations} combinations of values, {} metric \
         families",
        contract.families.len()
    );
    Ok(())
}

/// Writes `deploy/reapwatch.yaml` from the chart.
pub fn render_plain_manifests() -> Result<()> {
    let out = check_dir()?;
    fs::write(plain_manifests(), plain_render(&out)?)
        .context("cannot write deploy/reapwatch.yaml")?;
    eprintln!("xtask: wrote deploy/reapwatch.yaml from charts/reapwatch");
    Ok(())
}

/// The exporter's families and types, as the contract lists them.
pub fn contract() -> Result<BTreeMap<String, String>> {
    Ok(read_contract()?.families)
}

/// The DaemonSet as the chart renders it with `values`, for the image's end-to-end test.
pub fn daemonset(values: &Value) -> Result<Value> {
    let resources = helm::render(values, &check_dir()?)?;
    Ok(helm::find(&resources, "DaemonSet")?.clone())
}

/// A file the chart ships (`files/...`), such as the seccomp profile.
pub fn chart_file(name: &str) -> PathBuf {
    chart_dir().join("files").join(name)
}

fn chart_dir() -> PathBuf {
    workspace_root().join("charts/reapwatch")
}

fn plain_manifests() -> PathBuf {
    workspace_root().join("deploy/reapwatch.yaml")
}

fn check_dir() -> Result<PathBuf> {
    let out = workspace_root().join("target/deploy-check");
    fs::create_dir_all(&out).context("cannot create target/deploy-check")?;
    Ok(out)
}

fn read_contract() -> Result<Contract> {
    Contract::parse(&read(&chart_file("metrics.txt"))?)
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

/// The chart with its defaults and its own Namespace, as one multi-document YAML file: what
/// `helm template reapwatch charts/reapwatch -n reapwatch --set namespace.create=true` prints.
fn plain_render(out: &Path) -> Result<String> {
    let manifests = helm::template(&json!({ "namespace": { "create": true } }), out)?;
    Ok(format!(
        "# Generated from charts/reapwatch by `cargo xtask deploy-render`: do not edit, change the\n\
         # chart. For clusters without Helm: `kubectl apply -f deploy/reapwatch.yaml` (the\n\
         # ServiceMonitor and PrometheusRule need the Prometheus Operator's CRDs).\n{manifests}"
    ))
}

/// The committed plain manifests are the chart's render, to the byte.
fn check_generated(out: &Path) -> Result<()> {
    let committed = read(&plain_manifests())?;
    ensure!(
        committed == plain_render(out)?,
        "deploy/reapwatch.yaml is not the chart's render: run `cargo xtask deploy-render`"
    );
    Ok(())
}

/// `helm package` makes an archive that renders as the chart's directory does, without the
/// combinations under ci/, at the workspace's version.
fn check_package(defaults: &[helm::Resource], out: &Path) -> Result<()> {
    let destination = out.join("package");
    let _ = fs::remove_dir_all(&destination);
    fs::create_dir_all(&destination).context("cannot create the package directory")?;
    let archive = helm::package(&destination)?;
    let expected = format!("reapwatch-{}.tgz", env!("CARGO_PKG_VERSION"));
    ensure!(
        archive.file_name().is_some_and(|n| n == expected.as_str()),
        "helm package made {}, not {expected}",
        archive.display()
    );
    let listing =
        crate::process::output(std::process::Command::new("tar").arg("tzf").arg(&archive))?;
    ensure!(
        listing.lines().any(|l| l == "reapwatch/values.schema.json")
            && !listing.lines().any(|l| l.starts_with("reapwatch/ci/")),
        "the package must hold values.schema.json and not ci/:\n{listing}"
    );
    let from_archive = helm::render_chart(&archive, &json!({}), helm::RELEASE, out)?;
    ensure!(
        from_archive
            .iter()
            .map(|r| &r.doc)
            .eq(defaults.iter().map(|r| &r.doc)),
        "the packaged chart renders differently from charts/reapwatch"
    );
    Ok(())
}
