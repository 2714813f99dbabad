//! The PrometheusRule's alerts and recording rules: promtool's checks and unit tests,
//! runbooks, and that every rule is tested.

use std::{collections::BTreeSet, fs, path::Path, process::Command};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use super::{
    contract::{check_names, Contract},
    promql::metric_names,
    read, write_json, yaml,
};
use crate::process::{self, workspace_root};

const RUNBOOK_URL: &str = "https://github.com/reapwatch/reapwatch/blob/main/docs/runbook.md#";

/// The alerts the issue asks for; more may exist.
const REQUIRED_ALERTS: &[&str] = &[
    "ReapwatchZombieLeak",
    "ReapwatchPidExhaustionSoon",
    "ReapwatchCgroupPidsExhaustionSoon",
    "ReapwatchZombiesOld",
    "ReapwatchDown",
    "ReapwatchEventsLost",
];

/// `promtool VERB rules FILE`, quietly: its report comes with a failure.
pub(super) fn promtool(verb: &str, rule_file: &Path) -> Result<()> {
    process::output(
        Command::new("promtool")
            .args([verb, "rules"])
            .arg(rule_file),
    )
    .map(drop)
}

/// Checks the rules; returns the names they record, which the dashboard may use.
pub(super) fn check(spec: &Value, contract: &Contract, out: &Path) -> Result<BTreeSet<String>> {
    let rules_file = write_json(out.join("reapwatch.rules.yaml"), spec)?;
    promtool("check", &rules_file)?;
    // The unit tests name the extracted rule file, which is written beside them.
    let tests = workspace_root().join("tests/deploy/alerts.test.yaml");
    let tests_copy = out.join("alerts.test.yaml");
    fs::copy(&tests, &tests_copy).context("copy alerts.test.yaml")?;
    promtool("test", &tests_copy)?;

    let rules: Vec<&Value> = spec["groups"]
        .as_array()
        .context("rule groups")?
        .iter()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    let recorded: BTreeSet<String> = rules
        .iter()
        .filter_map(|r| r["record"].as_str().map(str::to_owned))
        .collect();
    let runbook = read(&workspace_root().join("docs/runbook.md"))?;
    let mut alerts = BTreeSet::new();
    for rule in &rules {
        let expr = rule["expr"].as_str().context("rule expr")?;
        let name = rule["alert"].as_str().or(rule["record"].as_str());
        let what = format!("rule {}", name.unwrap_or("?"));
        check_names(expr, contract, &recorded, &mut BTreeSet::new(), &what)?;
        let Some(alert) = rule["alert"].as_str() else {
            continue;
        };
        alerts.insert(alert.to_owned());
        ensure!(
            matches!(
                rule["labels"]["severity"].as_str(),
                Some("critical" | "warning" | "info")
            ),
            "{alert}: severity critical, warning or info"
        );
        let annotations = &rule["annotations"];
        ensure!(
            annotations["summary"].is_string() && annotations["description"].is_string(),
            "{alert}: summary and description"
        );
        let anchor = alert.to_ascii_lowercase();
        ensure!(
            annotations["runbook_url"] == format!("{RUNBOOK_URL}{anchor}"),
            "{alert}: runbook_url must be {RUNBOOK_URL}{anchor}"
        );
        ensure!(
            runbook.lines().any(|l| l == format!("## {alert}")),
            "docs/runbook.md has no section `## {alert}`"
        );
    }
    for required in REQUIRED_ALERTS {
        ensure!(alerts.contains(*required), "alert {required} is missing");
    }
    // Every alert is shown firing by a unit test, not only staying quiet.
    let [tests] = &yaml::load(&tests)?[..] else {
        bail!("alerts.test.yaml must hold one document");
    };
    let fired: BTreeSet<&str> = tests["tests"]
        .as_array()
        .context("tests")?
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().into_iter().flatten())
        .filter(|t| t["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()))
        .filter_map(|t| t["alertname"].as_str())
        .collect();
    for alert in &alerts {
        ensure!(
            fired.contains(alert.as_str()),
            "no unit test in alerts.test.yaml shows {alert} firing"
        );
    }
    // Every recorded series is checked by a unit test too: queried, or behind an alert that
    // one shows firing.
    let checked: Vec<&str> = tests["tests"]
        .as_array()
        .context("tests")?
        .iter()
        .flat_map(|t| t["promql_expr_test"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .chain(
            rules
                .iter()
                .filter(|r| r["alert"].is_string())
                .filter_map(|r| r["expr"].as_str()),
        )
        .collect();
    for record in &recorded {
        ensure!(
            checked
                .iter()
                .any(|expr| metric_names(expr).contains(record)),
            "no unit test in alerts.test.yaml queries {record}, nor an alert that uses it"
        );
    }
    Ok(recorded)
}
