//! The exporter's metric contract (`charts/reapwatch/files/metrics.txt`), and the check that queries use
//! only its metrics.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, ensure, Result};

use super::promql::metric_names;

/// Series not reapwatch's that rules and dashboard may use besides the contract: Prometheus'
/// own `up`, and kube-state-metrics' `kube_pod_owner` (workloads, where it runs).
const PROMETHEUS_SERIES: &[&str] = &["up", "kube_pod_owner"];

/// The exporter's metric families, from `charts/reapwatch/files/metrics.txt`: name -> Prometheus type.
pub(super) struct Contract {
    pub(super) families: BTreeMap<String, String>,
}

impl Contract {
    pub(super) fn parse(text: &str) -> Result<Self> {
        let mut families = BTreeMap::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let [name, kind] = words[..] else {
                bail!("metrics.txt: {line:?} is not `name type`");
            };
            ensure!(
                name.starts_with("reapwatch_") && is_metric_name(name),
                "metrics.txt: {name:?} is not a reapwatch metric name"
            );
            ensure!(
                matches!(kind, "counter" | "gauge" | "histogram"),
                "metrics.txt: {name} has unknown type {kind:?}"
            );
            ensure!(
                (kind == "counter") == name.ends_with("_total"),
                "metrics.txt: {name}: counters, and only counters, end in _total"
            );
            ensure!(
                families.insert(name.to_owned(), kind.to_owned()).is_none(),
                "metrics.txt: {name} listed twice"
            );
        }
        ensure!(!families.is_empty(), "metrics.txt lists no family");
        Ok(Self { families })
    }

    /// The family a series name belongs to: itself, or a histogram's `_bucket/_sum/_count`.
    pub(super) fn family_of<'a>(&self, series: &'a str) -> Option<&'a str> {
        if self.families.contains_key(series) {
            return Some(series);
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = series.strip_suffix(suffix)?;
            (self.families.get(base)? == "histogram").then_some(base)
        })
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Checks that every metric an expression selects is exported, recorded or Prometheus' own.
pub(super) fn check_names(
    expr: &str,
    contract: &Contract,
    recorded: &BTreeSet<String>,
    used: &mut BTreeSet<String>,
    what: &str,
) -> Result<()> {
    for name in metric_names(expr) {
        if let Some(family) = contract.family_of(&name) {
            used.insert(family.to_owned());
        } else if !recorded.contains(&name) && !PROMETHEUS_SERIES.contains(&name.as_str()) {
            bail!("{what}: {name} is not in charts/reapwatch/files/metrics.txt, the exporter's contract");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTRACT: &str =
        "# comment\nreapwatch_s histogram\nreapwatch_x_total counter\n\nreapwatch_g gauge\n";

    #[test]
    fn contract_families_and_histogram_series() {
        let contract = Contract::parse(CONTRACT).unwrap();
        assert_eq!(contract.families.len(), 3);
        assert_eq!(
            contract.family_of("reapwatch_s_bucket"),
            Some("reapwatch_s")
        );
        assert_eq!(contract.family_of("reapwatch_s_count"), Some("reapwatch_s"));
        assert_eq!(contract.family_of("reapwatch_g"), Some("reapwatch_g"));
        // Only histograms have bucket series.
        assert_eq!(contract.family_of("reapwatch_g_count"), None);
        assert_eq!(contract.family_of("reapwatch_x"), None);
    }

    #[test]
    fn contract_rejects_bad_lines() {
        for bad in [
            "reapwatch_x gauge\nreapwatch_x gauge",
            "reapwatch_x",
            "reapwatch_x summary-ish",
            "reapwatch_x_total gauge",
            "reapwatch_x counter",
            "other_x gauge",
        ] {
            assert!(Contract::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_outside_the_contract_fail() {
        let contract = Contract::parse("reapwatch_zombies gauge\n").unwrap();
        let recorded = BTreeSet::from(["r:x".to_owned()]);
        let mut used = BTreeSet::new();
        check_names(
            "reapwatch_zombies + r:x",
            &contract,
            &recorded,
            &mut used,
            "t",
        )
        .unwrap();
        check_names("up == 0", &contract, &recorded, &mut used, "t").unwrap();
        assert!(check_names("reapwatch_zombie", &contract, &recorded, &mut used, "t").is_err());
        assert_eq!(used, BTreeSet::from(["reapwatch_zombies".to_owned()]));
    }
}
