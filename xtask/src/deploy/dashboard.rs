//! The Grafana dashboard: its structure, and its PromQL through promtool.

use std::{collections::BTreeSet, path::Path};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use super::{
    contract::{check_names, Contract},
    rules::promtool,
    write_json,
};

/// Grafana's interval variables, replaced by a plausible value for checking.
const GRAFANA_INTERVALS: &[&str] = &["$__rate_interval", "$__interval", "$__range"];

/// Replaces Grafana variables to get PromQL: intervals by a duration, dashboard variables
/// (used in regex matchers) by `.*`. Fails on a variable the dashboard does not define.
fn substitute_variables(expr: &str, variables: &BTreeSet<String>) -> Result<String> {
    let mut promql = expr.to_owned();
    for interval in GRAFANA_INTERVALS {
        promql = promql.replace(interval, "5m");
    }
    for variable in variables {
        promql = promql
            .replace(&format!("${{{variable}}}"), ".*")
            .replace(&format!("${variable}"), ".*");
    }
    ensure!(
        !promql.contains('$'),
        "{expr:?} uses a variable the dashboard does not define"
    );
    Ok(promql)
}

/// Checks the dashboard; its queries may use the contract's metrics and those `recorded`.
pub(super) fn check(
    dashboard: &Value,
    contract: &Contract,
    recorded: &BTreeSet<String>,
    out: &Path,
) -> Result<()> {
    for key in ["uid", "title"] {
        ensure!(
            dashboard[key].as_str().is_some_and(|s| !s.is_empty()),
            "dashboard {key}"
        );
    }
    ensure!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "dashboard schemaVersion 36 or newer (Grafana 9+)"
    );
    ensure!(
        dashboard["time"]["from"].is_string(),
        "dashboard time range"
    );

    let mut variables = BTreeSet::new();
    let mut exprs = Vec::new();
    let mut datasource_variable = None;
    for variable in dashboard["templating"]["list"]
        .as_array()
        .context("templating")?
    {
        let name = variable["name"].as_str().context("variable name")?;
        variables.insert(name.to_owned());
        match variable["type"].as_str() {
            Some("datasource") => {
                ensure!(
                    variable["query"] == "prometheus",
                    "datasource variable type"
                );
                datasource_variable = Some(format!("${{{name}}}"));
            }
            Some("query") => {
                let query = variable["query"]["query"]
                    .as_str()
                    .context("variable query")?;
                let inner = query
                    .strip_prefix("label_values(")
                    .and_then(|q| q.rsplit_once(','))
                    .map(|(selector, _)| selector)
                    .with_context(|| format!("variable {name}: label_values(selector, label)"))?;
                exprs.push((format!("variable {name}"), inner.to_owned()));
            }
            other => bail!("variable {name}: unexpected type {other:?}"),
        }
    }
    let datasource_variable = datasource_variable.context("a Prometheus datasource variable")?;

    let mut panels: Vec<&Value> = Vec::new();
    for panel in dashboard["panels"].as_array().context("panels")? {
        panels.push(panel);
        panels.extend(panel["panels"].as_array().into_iter().flatten());
    }
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for panel in &panels {
        let title = panel["title"].as_str().context("panel title")?;
        ensure!(!title.is_empty(), "a panel has no title");
        ensure!(
            ids.insert(panel["id"].as_u64().context("panel id")?),
            "panel {title}: duplicate id"
        );
        let kind = panel["type"].as_str().context("panel type")?;
        ensure!(
            matches!(
                kind,
                "row" | "timeseries" | "stat" | "bargauge" | "gauge" | "table" | "heatmap" | "text"
            ),
            "panel {title}: unknown type {kind}"
        );
        let grid = &panel["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| grid[k].as_u64());
        let (Some(x), Some(y), Some(w), Some(h)) = (x, y, w, h) else {
            bail!("panel {title}: gridPos x, y, w, h");
        };
        ensure!(
            w >= 1 && h >= 1 && x + w <= 24,
            "panel {title}: off the grid"
        );
        for cell_x in x..x + w {
            for cell_y in y..y + h {
                ensure!(
                    cells.insert((cell_x, cell_y)),
                    "panel {title} overlaps another"
                );
            }
        }
        if kind == "row" || kind == "text" {
            continue;
        }
        ensure!(
            panel["datasource"]["uid"] == datasource_variable.as_str(),
            "panel {title}: datasource must be {datasource_variable}"
        );
        let targets = panel["targets"].as_array().context("targets")?;
        ensure!(!targets.is_empty(), "panel {title} has no query");
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            ensure!(
                ref_ids.insert(target["refId"].as_str().context("refId")?),
                "panel {title}: duplicate refId"
            );
            let expr = target["expr"].as_str().context("expr")?;
            exprs.push((format!("panel {title}"), expr.to_owned()));
        }
    }

    let mut rules = Vec::new();
    let mut used = BTreeSet::new();
    for (i, (what, expr)) in exprs.iter().enumerate() {
        let promql = substitute_variables(expr, &variables).context(what.clone())?;
        check_names(&promql, contract, recorded, &mut used, what)?;
        rules.push(json!({ "record": format!("dashboard_expr_{i}"), "expr": promql }));
    }
    // promtool parses PromQL only in rule files: one recording rule per expression.
    let file = write_json(
        out.join("dashboard.rules.yaml"),
        &json!({ "groups": [{ "name": "dashboard", "rules": rules }] }),
    )?;
    promtool("check", &file).context("the dashboard's PromQL")?;
    for family in contract.families.keys() {
        ensure!(
            used.contains(family),
            "the dashboard shows nothing of {family}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_become_promql() {
        let variables = BTreeSet::from(["node".to_owned()]);
        assert_eq!(
            substitute_variables(r#"rate(x{node=~"$node"}[$__rate_interval])"#, &variables)
                .unwrap(),
            r#"rate(x{node=~".*"}[5m])"#
        );
        assert!(substitute_variables(r#"x{pod=~"$pod"}"#, &variables).is_err());
    }
}
