//! The metric families (names and labels are the public contract, see README "Metrics") and
//! their exposition: Prometheus text 0.0.4, or OpenMetrics 1.0 when the scraper asks.

use prometheus::{
    proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType},
    Encoder, TextEncoder,
};

use super::{
    model::{CgroupLabels, Model},
    settings::CGROUP_LABELS,
};

pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One family under construction.
struct Family(MetricFamily);

impl Family {
    fn new(name: &str, help: &str, kind: MetricType) -> Self {
        let mut family = MetricFamily::default();
        family.set_name(name.to_owned());
        family.set_help(help.to_owned());
        family.set_field_type(kind);
        Self(family)
    }

    fn push(&mut self, labels: Vec<(&str, String)>, value: f64) {
        let mut metric = Metric::default();
        metric.set_label(label_pairs(labels));
        match self.0.get_field_type() {
            MetricType::COUNTER => {
                let mut counter = Counter::default();
                counter.set_value(value);
                metric.set_counter(counter);
            }
            _ => {
                let mut gauge = Gauge::default();
                gauge.set_value(value);
                metric.set_gauge(gauge);
            }
        }
        self.0.mut_metric().push(metric);
    }
}

fn label_pairs(labels: Vec<(&str, String)>) -> Vec<LabelPair> {
    labels
        .into_iter()
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name(name.to_owned());
            pair.set_value(value);
            pair
        })
        .collect()
}

/// The kept per-cgroup labels (dropped ones are empty and not rendered).
fn cgroup_labels(values: &CgroupLabels) -> Vec<(&'static str, String)> {
    CGROUP_LABELS
        .iter()
        .zip(values)
        .filter(|(name, value)| **name == "cgroup" || !value.is_empty())
        .map(|(name, value)| (*name, value.clone()))
        .collect()
}

pub fn families(model: &Model) -> Vec<MetricFamily> {
    use MetricType::{COUNTER, GAUGE};
    let mut zombies = Family::new(
        "reapwatch_zombies",
        "Unreaped zombies whose parent is in this cgroup.",
        GAUGE,
    );
    let mut created = Family::new(
        "reapwatch_zombies_created_total",
        "Zombies created whose parent was in this cgroup.",
        COUNTER,
    );
    let mut reaped = Family::new(
        "reapwatch_zombies_reaped_total",
        "Zombies counted in reapwatch_zombies_created_total that were reaped.",
        COUNTER,
    );
    let mut oldest = Family::new(
        "reapwatch_zombie_oldest_seconds",
        "Age of the oldest unreaped zombie whose parent is in this cgroup.",
        GAUGE,
    );
    let mut forks = Family::new(
        "reapwatch_process_forks_total",
        "Processes (not threads) forked in this cgroup.",
        COUNTER,
    );
    let mut exits = Family::new(
        "reapwatch_process_exits_total",
        "Processes (not threads) whose last thread exited in this cgroup.",
        COUNTER,
    );
    let mut pids_current = Family::new(
        "reapwatch_cgroup_pids_current",
        "pids.current of limit_cgroup, the cgroup whose pids.max binds this one (see \
         reapwatch_cgroup_pids_max).",
        GAUGE,
    );
    let mut pids_max = Family::new(
        "reapwatch_cgroup_pids_max",
        "The pids.max that stops this cgroup's forks first: of this cgroup or an ancestor \
         (its pod, kubepods, a slice), the one with the least headroom; limit_cgroup names \
         the cgroup that sets it.",
        GAUGE,
    );
    let mut pids_eta = Family::new(
        "reapwatch_cgroup_pids_exhaustion_eta_seconds",
        "Seconds until limit_cgroup's pids.current reaches its pids.max, at its growth over \
         the forecast window (see reapwatch_cgroup_pids_max).",
        GAUGE,
    );
    let mut pids_refused = Family::new(
        "reapwatch_cgroup_pids_fork_failures_total",
        "Forks refused at a pids.max, counted where the kernel counts them (pids.events.local, \
         else pids.events): on v1 and v2 before 6.14 in the cgroup that forked, on v2 from 6.14 \
         in the cgroup whose limit refused (a pod's cgroup has a series of its own for this).",
        COUNTER,
    );
    for series in &model.cgroups {
        let labels = cgroup_labels(&series.labels);
        zombies.push(labels.clone(), series.zombies as f64);
        if let Some(counters) = &series.counters {
            created.push(labels.clone(), counters.zombies_created as f64);
            reaped.push(labels.clone(), counters.zombies_reaped as f64);
            forks.push(labels.clone(), counters.forks as f64);
            exits.push(labels.clone(), counters.exits as f64);
            if series.pids.is_some() || counters.pids_fork_failures > 0 {
                pids_refused.push(labels.clone(), counters.pids_fork_failures as f64);
            }
        }
        if let Some(age) = series.oldest_seconds {
            oldest.push(labels.clone(), age);
        }
        if let Some(pids) = &series.pids {
            let mut labels = labels.clone();
            labels.push(("limit_cgroup", pids.cgroup.clone()));
            pids_current.push(labels.clone(), pids.current as f64);
            pids_max.push(labels.clone(), pids.max as f64);
            if let Some(eta) = pids.eta_seconds {
                pids_eta.push(labels, eta);
            }
        }
    }

    let mut parent_zombies = Family::new(
        "reapwatch_parent_zombies",
        "Unreaped children of this process (top parents only).",
        GAUGE,
    );
    let mut parent_wait = Family::new(
        "reapwatch_parent_wait_age_seconds",
        "Seconds since this process last called wait(); absent if not seen since start.",
        GAUGE,
    );
    for parent in &model.parents {
        let mut labels = cgroup_labels(&parent.labels);
        labels.push(("pid", parent.pid.to_string()));
        labels.push(("comm", parent.comm.clone()));
        parent_zombies.push(labels.clone(), parent.zombies as f64);
        if let Some(age) = parent.wait_age_seconds {
            parent_wait.push(labels, age);
        }
    }

    let node = model.node;
    let gauge = |name: &str, help: &str, value: f64| {
        let mut family = Family::new(name, help, GAUGE);
        family.push(Vec::new(), value);
        family
    };
    let mut node_eta = Family::new(
        "reapwatch_pid_exhaustion_eta_seconds",
        "Seconds until node tasks reach min(pid_max, threads-max) at the growth of the forecast window; absent when not growing.",
        GAUGE,
    );
    if let Some(eta) = node.eta_seconds {
        node_eta.push(Vec::new(), eta);
    }

    let kubelet = node.kubelet;
    let mut kubelet_thresholds = Family::new(
        "reapwatch_kubelet_pid_eviction_threshold",
        "The kubelet's pid.available eviction threshold in PIDs (kind hard or soft); absent when not set or not known (reapwatch_kubelet_eviction_known).",
        GAUGE,
    );
    for (kind, threshold) in [
        ("hard", kubelet.hard_threshold),
        ("soft", kubelet.soft_threshold),
    ] {
        if let Some(threshold) = threshold {
            kubelet_thresholds.push(vec![("kind", kind.to_owned())], threshold as f64);
        }
    }
    let mut kubelet_eta = Family::new(
        "reapwatch_kubelet_pid_pressure_eta_seconds",
        "Seconds until the kubelet's pid.available falls to its first eviction threshold (PIDPressure) at the growth of the forecast window; absent when not growing or no threshold.",
        GAUGE,
    );
    if let Some(eta) = kubelet.pressure_eta_seconds {
        kubelet_eta.push(Vec::new(), eta);
    }

    let mut build = Family::new(
        "reapwatch_build_info",
        "Version and kernel of this tracer.",
        GAUGE,
    );
    build.push(
        vec![
            ("version", model.version.to_owned()),
            ("kernel", model.kernel.clone()),
        ],
        1.0,
    );
    let mut lost = Family::new(
        "reapwatch_events_lost_total",
        "Kernel records lost: full maps, failed reads, programs skipped by recursion.",
        COUNTER,
    );
    lost.push(Vec::new(), model.events_lost as f64);
    let mut entries = Family::new(
        "reapwatch_map_entries",
        "Entries in each kernel map.",
        GAUGE,
    );
    let mut full = Family::new(
        "reapwatch_map_full_total",
        "Records a kernel map had no room for.",
        COUNTER,
    );
    for usage in &model.maps {
        entries.push(vec![("map", usage.map.to_owned())], usage.entries as f64);
        full.push(vec![("map", usage.map.to_owned())], usage.times_full as f64);
    }

    let mut failures = Family::new(
        "reapwatch_sample_failures_total",
        "Samples that failed; the last good one is served meanwhile.",
        COUNTER,
    );
    failures.push(Vec::new(), model.health.sample_failures as f64);
    let mut skipped = Family::new(
        "reapwatch_proc_skipped_total",
        "/proc entries that could not be read or parsed, skipped.",
        COUNTER,
    );
    skipped.push(Vec::new(), model.proc_skipped as f64);

    let families = vec![
        zombies,
        created,
        reaped,
        oldest,
        forks,
        exits,
        pids_current,
        pids_max,
        pids_eta,
        pids_refused,
        parent_zombies,
        parent_wait,
        Family(lifetime_histogram(model)),
        gauge(
            "reapwatch_node_zombies",
            "Unreaped zombies on the node.",
            node.zombies as f64,
        ),
        gauge(
            "reapwatch_node_tasks",
            "Tasks on the node (threads, zombies included).",
            node.tasks as f64,
        ),
        gauge(
            "reapwatch_node_pid_max",
            "kernel.pid_max.",
            node.pid_max as f64,
        ),
        gauge(
            "reapwatch_node_threads_max",
            "kernel.threads-max.",
            node.threads_max as f64,
        ),
        node_eta,
        gauge(
            "reapwatch_kubelet_pid_available",
            "pid.available as the kubelet computes it: min(pid_max, threads-max) less every task, zombies included.",
            node.pid_max.min(node.threads_max).saturating_sub(node.tasks) as f64,
        ),
        gauge(
            "reapwatch_kubelet_eviction_known",
            "1 when the kubelet's eviction settings were read whole (a threshold then absent is not set), 0 when no kubelet was found or its files could not be read.",
            f64::from(u8::from(kubelet.known)),
        ),
        kubelet_thresholds,
        kubelet_eta,
        build,
        lost,
        entries,
        full,
        failures,
        gauge(
            "reapwatch_last_sample_timestamp_seconds",
            "Unix time of the last good sample.",
            model.health.last_sample_unix_seconds,
        ),
        skipped,
    ];
    // A family with no sample is left out: Prometheus has nothing to learn from it.
    families
        .into_iter()
        .map(|f| f.0)
        .filter(|f| !f.get_metric().is_empty())
        .collect()
}

fn lifetime_histogram(model: &Model) -> MetricFamily {
    let histogram = &model.lifetimes;
    let buckets = histogram
        .cumulative_buckets()
        .map(|(upper_bound, cumulative)| {
            let mut bucket = Bucket::default();
            bucket.set_upper_bound(upper_bound);
            bucket.set_cumulative_count(cumulative);
            bucket
        })
        .collect();
    let mut value = Histogram::default();
    value.set_bucket(buckets);
    value.set_sample_count(histogram.count);
    value.set_sample_sum(histogram.sum_ns as f64 / 1e9);
    let mut metric = Metric::default();
    metric.set_histogram(value);
    let mut family = MetricFamily::default();
    family.set_name("reapwatch_zombie_lifetime_seconds".to_owned());
    family.set_help(
        "Time from exit to release (the reap, then an RCU grace period) of the zombies the kernel saw created, to the kernel tick.".to_owned(),
    );
    family.set_field_type(MetricType::HISTOGRAM);
    family.set_metric(vec![metric]);
    family
}

/// Prometheus text format 0.0.4.
pub fn encode_text(families: &[MetricFamily]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    TextEncoder::new().encode(families, &mut out)?;
    Ok(out)
}

/// OpenMetrics 1.0 text: counters are declared without their `_total` suffix, histogram
/// bounds are floats, and the exposition ends with `# EOF`.
pub fn encode_openmetrics(families: &[MetricFamily]) -> Vec<u8> {
    let mut out = String::new();
    for family in families {
        let name = family.name();
        let (kind, declared) = match family.get_field_type() {
            MetricType::COUNTER => ("counter", name.strip_suffix("_total").unwrap_or(name)),
            MetricType::HISTOGRAM => ("histogram", name),
            _ => ("gauge", name),
        };
        out.push_str(&format!(
            "# TYPE {declared} {kind}\n# HELP {declared} {}\n",
            escape_help(family.help())
        ));
        for metric in family.get_metric() {
            let labels: Vec<(String, String)> = metric
                .get_label()
                .iter()
                .map(|l| (l.name().to_owned(), l.value().to_owned()))
                .collect();
            match family.get_field_type() {
                MetricType::COUNTER => {
                    sample(&mut out, name, &labels, metric.get_counter().get_value())
                }
                MetricType::HISTOGRAM => {
                    let histogram = metric.get_histogram();
                    for bucket in histogram.get_bucket() {
                        let mut with_le = labels.clone();
                        with_le.push(("le".into(), format!("{:?}", bucket.upper_bound())));
                        sample(
                            &mut out,
                            &format!("{name}_bucket"),
                            &with_le,
                            bucket.cumulative_count() as f64,
                        );
                    }
                    let mut with_inf = labels.clone();
                    with_inf.push(("le".into(), "+Inf".into()));
                    let count = histogram.get_sample_count() as f64;
                    sample(&mut out, &format!("{name}_bucket"), &with_inf, count);
                    sample(
                        &mut out,
                        &format!("{name}_sum"),
                        &labels,
                        histogram.get_sample_sum(),
                    );
                    sample(&mut out, &format!("{name}_count"), &labels, count);
                }
                _ => sample(&mut out, name, &labels, metric.get_gauge().get_value()),
            }
        }
    }
    out.push_str("# EOF\n");
    out.into_bytes()
}

fn sample(out: &mut String, name: &str, labels: &[(String, String)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        let rendered: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
            .collect();
        out.push('{');
        out.push_str(&rendered.join(","));
        out.push('}');
    }
    out.push(' ');
    out.push_str(&format_value(value));
    out.push('\n');
}

fn format_value(value: f64) -> String {
    if value.is_infinite() {
        if value > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{value}")
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exporter::model::{CgroupSeries, KubeletSeries, MapUsage, NodeSeries, ParentSeries};
    use tracer_common::LifetimeHistogram;

    fn model() -> Model {
        let mut lifetimes = LifetimeHistogram::default();
        lifetimes.buckets[3] = 2;
        lifetimes.count = 2;
        lifetimes.sum_ns = 10_000;
        Model {
            cgroups: vec![CgroupSeries {
                labels: ["/kubepods/x".into(), "ns".into(), "pod".into(), "c".into()],
                zombies: 3,
                oldest_seconds: Some(12.5),
                counters: Some(crate::exporter::model::SeriesCounters {
                    zombies_created: 5,
                    zombies_reaped: 2,
                    forks: 9,
                    exits: 8,
                    pids_fork_failures: 0,
                }),
                pids: None,
            }],
            parents: vec![ParentSeries {
                labels: ["/kubepods/x".into(), "ns".into(), "pod".into(), "c".into()],
                pid: 42,
                comm: "a\"b\nc{}\\".into(),
                zombies: 3,
                wait_age_seconds: None,
            }],
            node: NodeSeries {
                zombies: 3,
                tasks: 300,
                pid_max: 32768,
                threads_max: 90000,
                eta_seconds: None,
                kubelet: Default::default(),
            },
            lifetimes,
            version: "0.1.0",
            kernel: "6.1.0".into(),
            events_lost: 0,
            maps: vec![MapUsage {
                map: "zombies",
                entries: 3,
                times_full: 0,
            }],
            proc_skipped: 0,
            health: Default::default(),
            sequence: 1,
        }
    }

    #[test]
    fn text_exposition_escapes_hostile_labels() {
        let text = String::from_utf8(encode_text(&families(&model())).unwrap()).unwrap();
        assert!(text.contains(r#"comm="a\"b\nc{}\\""#), "{text}");
        assert!(text.contains(r#"reapwatch_zombies{cgroup="/kubepods/x",namespace="ns",pod="pod",container="c"} 3"#), "{text}");
        assert!(text.contains("reapwatch_zombies_created_total{"));
        assert!(
            text.contains(r#"reapwatch_zombie_lifetime_seconds_bucket{le="0.000008"} 2"#),
            "{text}"
        );
        // Absent when unknown: no ETA, no wait age.
        assert!(!text.contains("reapwatch_pid_exhaustion_eta_seconds"));
        assert!(!text.contains("reapwatch_parent_wait_age_seconds"));
    }

    #[test]
    fn openmetrics_exposition() {
        let text = String::from_utf8(encode_openmetrics(&families(&model()))).unwrap();
        assert!(text.ends_with("# EOF\n"));
        assert!(text.contains("# TYPE reapwatch_zombies_created counter\n"));
        assert!(text.contains("reapwatch_zombies_created_total{cgroup=\"/kubepods/x\""));
        assert!(text.contains(r#"reapwatch_zombie_lifetime_seconds_bucket{le="+Inf"} 2"#));
        assert!(text.contains(r#"comm="a\"b\nc{}\\""#));
    }

    #[test]
    fn the_kubelet_view_says_what_is_known() {
        // Unknown: pid.available all the same, no threshold, known 0.
        let text = String::from_utf8(encode_text(&families(&model())).unwrap()).unwrap();
        assert!(
            text.contains("reapwatch_kubelet_pid_available 32468\n"),
            "{text}"
        );
        assert!(
            text.contains("reapwatch_kubelet_eviction_known 0\n"),
            "{text}"
        );
        assert!(!text.contains("reapwatch_kubelet_pid_eviction_threshold"));
        let mut m = model();
        m.node.kubelet = KubeletSeries {
            known: true,
            hard_threshold: Some(3277),
            soft_threshold: None,
            pressure_eta_seconds: Some(600.0),
        };
        let text = String::from_utf8(encode_text(&families(&m)).unwrap()).unwrap();
        assert!(
            text.contains("reapwatch_kubelet_eviction_known 1\n"),
            "{text}"
        );
        assert!(
            text.contains("reapwatch_kubelet_pid_eviction_threshold{kind=\"hard\"} 3277\n"),
            "{text}"
        );
        assert!(!text.contains("kind=\"soft\""));
        assert!(
            text.contains("reapwatch_kubelet_pid_pressure_eta_seconds 600\n"),
            "{text}"
        );
    }

    #[test]
    fn dropped_labels_are_not_rendered() {
        let mut m = model();
        m.cgroups[0].labels = ["".into(), "ns".into(), String::new(), String::new()];
        let text = String::from_utf8(encode_text(&families(&m)).unwrap()).unwrap();
        assert!(
            text.contains(r#"reapwatch_zombies{cgroup="",namespace="ns"} 3"#),
            "{text}"
        );
    }
}
