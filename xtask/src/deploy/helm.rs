//! The chart as Helm itself renders, lints and packages it: Helm v4's library, through the
//! helm-python-sdk wheel in the validators' venv (`tests/deploy/helm_engine.py`).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use serde_json::Value;

use super::{chart_dir, venv, write_json};
use crate::process::{self, workspace_root};

/// A rendered manifest: the template it came from, as JSON.
#[derive(Clone, Deserialize)]
pub(super) struct Resource {
    pub(super) source: String,
    pub(super) doc: Value,
}

/// The release the checks install: its name is the chart's, so objects are named `reapwatch`.
pub(super) const RELEASE: &str = "reapwatch";
pub(super) const NAMESPACE: &str = "reapwatch";

/// The engine's `verb` on `chart` for `release`, with `values` written to `file`.
fn release_command(
    verb: &str,
    chart: &Path,
    values: &Value,
    release: &str,
    file: PathBuf,
) -> Result<Command> {
    let file = write_json(file, values)?;
    let mut cmd = engine(verb, chart);
    cmd.arg(file).args([release, NAMESPACE]);
    Ok(cmd)
}

fn engine(verb: &str, chart: &Path) -> Command {
    let mut cmd = Command::new(venv::program("python"));
    cmd.arg(workspace_root().join("tests/deploy/helm_engine.py"))
        .arg(verb)
        .arg(chart);
    cmd
}

/// `helm template` of `chart` (a directory or a packaged archive) with `values`, whose file is
/// written into `out`.
pub(super) fn render_chart(
    chart: &Path,
    values: &Value,
    release: &str,
    out: &Path,
) -> Result<Vec<Resource>> {
    let mut cmd = release_command("render", chart, values, release, out.join("values.json"))?;
    serde_json::from_str(&process::output(&mut cmd)?).context("the Helm engine's render")
}

/// `helm template`'s text of the chart with `values`.
pub(super) fn template(values: &Value, out: &Path) -> Result<String> {
    let file = out.join("template-values.json");
    let mut cmd = release_command("template", &chart_dir(), values, RELEASE, file)?;
    serde_json::from_str(&process::output(&mut cmd)?).context("the Helm engine's template")
}

pub(super) fn render(values: &Value, out: &Path) -> Result<Vec<Resource>> {
    render_chart(&chart_dir(), values, RELEASE, out)
}

/// Helm's message when it refuses `values`; an error if it renders them.
pub(super) fn refusal(values: &Value, out: &Path) -> Result<String> {
    let file = out.join("refused-values.json");
    let output = process::capture(&mut release_command(
        "render",
        &chart_dir(),
        values,
        RELEASE,
        file,
    )?)?;
    ensure!(
        !output.status.success(),
        "the chart renders values it must refuse: {values}"
    );
    Ok(String::from_utf8_lossy(&output.stderr).trim().to_owned())
}

/// `helm lint --strict` against the oldest Kubernetes the chart supports: no error, and no
/// warning (its only finding may be an info, such as the missing icon).
pub(super) fn lint(values: &Value, out: &Path) -> Result<()> {
    let file = write_json(out.join("lint-values.json"), values)?;
    let report: Value = serde_json::from_str(&process::output(
        engine("lint", &chart_dir()).arg(file).arg(NAMESPACE),
    )?)
    .context("the Helm engine's lint report")?;
    let findings: Vec<&Value> = report["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["severity"].as_u64() != Some(1))
        .collect();
    let errors = report["errors"].as_array().map_or(0, Vec::len);
    if !findings.is_empty() || errors > 0 {
        bail!("helm lint: {report}");
    }
    Ok(())
}

/// `helm package` into `destination`; returns the archive.
pub(super) fn package(destination: &Path) -> Result<PathBuf> {
    let path = process::output(engine("package", &chart_dir()).arg(destination))?;
    let path: String = serde_json::from_str(&path).context("the Helm engine's package path")?;
    Ok(PathBuf::from(path))
}

/// The one resource of `kind`.
pub(super) fn find<'a>(resources: &'a [Resource], kind: &str) -> Result<&'a Value> {
    let mut found = resources.iter().filter(|r| r.doc["kind"] == kind);
    match (found.next(), found.next()) {
        (Some(r), None) => Ok(&r.doc),
        _ => bail!("the chart must render exactly one {kind}"),
    }
}
