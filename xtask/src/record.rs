//! `cargo xtask record-alert-series`: the series the alert tests replay, recorded from a live
//! `reapwatch serve` rather than written by hand.
//!
//! A pod-shaped cgroup tree (`kubepods/burstable/pod<uid>/<container id>`, named by a kubelet
//! log tree as the kubelet writes it) with `podPidsLimit` on the pod's cgroup alone; a leak in
//! the container of 2 zombies and their parent each second; `serve` scraped once a second.
//! Prints the container's pids series in promtool's `input_series` form, with the labels
//! Prometheus adds (`job`, `instance`, and the `node` the ServiceMonitor relabels in).

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{field::Serve, process};

const UID: &str = "4a1f2c9e-6b0d-4e2f-9a3c-5d7e8f901a2b";
const CONTAINER_ID: &str = "0c3e5b7a9d1f2e4c6b8a0d2f4e6c8b0a1c3e5d7f9b2a4c6e8d0f1a3b5c7e9d2f";
const POD_PIDS_LIMIT: &str = "400";
const RECORDED: &[&str] = &[
    "reapwatch_cgroup_pids_current",
    "reapwatch_cgroup_pids_max",
    "reapwatch_cgroup_pids_exhaustion_eta_seconds",
];
/// Labels Prometheus adds to every scraped series, as in the hand-written tests.
const TARGET_LABELS: &str = r#"job="reapwatch", instance="10.0.3.7:9750", node="node-a""#;

pub fn run(samples: usize) -> Result<()> {
    let release = process::release_binaries()?;
    let tree = PodTree::create()?;
    let serve = Serve::start(
        &release,
        &[
            "--pod-logs-dir",
            &tree.logs.join("pods").display().to_string(),
            "--eta-window",
            "20s",
        ],
    )?;
    let container = format!("cgroup=\"{}\"", tree.host_path(&tree.container));
    let mut leaks = Vec::new();
    let mut series: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
    let started = Instant::now();
    for i in 0..samples {
        leaks.push(Leak::start(&release, &tree.container)?);
        let text = serve.scrape()?;
        for line in text.lines() {
            let Some((name_labels, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Some((name, labels)) = name_labels.split_once('{') else {
                continue;
            };
            if !RECORDED.contains(&name) || !labels.contains(&container) {
                continue;
            }
            let key = format!("{name}{{{TARGET_LABELS}, {}", labels.replace("\",", "\", "));
            series.entry(key).or_insert_with(|| vec![None; samples])[i] = Some(value.to_owned());
        }
        let next = Duration::from_secs(i as u64 + 1);
        std::thread::sleep(next.saturating_sub(started.elapsed()));
    }
    println!(
        "      # Recorded by `cargo xtask record-alert-series --samples {samples}`: one scrape a \
         second, replayed one a minute."
    );
    for (key, values) in series {
        let values: Vec<String> = values
            .into_iter()
            .map(|v| v.unwrap_or_else(|| "_".to_owned()))
            .collect();
        println!("      - series: '{key}'");
        println!("        values: '{}'", values.join(" "));
    }
    drop(leaks);
    Ok(())
}

/// The pod's cgroups in the hierarchy with the pids controller, and its kubelet log tree.
struct PodTree {
    root: PathBuf,
    base: PathBuf,
    container: PathBuf,
    logs: PathBuf,
}

impl PodTree {
    fn create() -> Result<Self> {
        let v1 = Path::new("/sys/fs/cgroup/pids");
        let root = if v1.join("tasks").exists() {
            v1.to_path_buf()
        } else {
            PathBuf::from("/sys/fs/cgroup")
        };
        let base = root.join("reapwatch-record");
        let pod = base.join(format!("kubepods/burstable/pod{UID}"));
        let container = pod.join(CONTAINER_ID);
        fs::create_dir_all(&container)
            .with_context(|| format!("cannot create {}", container.display()))?;
        // On cgroup v2 each parent enables the controller for its children.
        for dir in container.ancestors().skip(1) {
            if !dir.starts_with(&root) {
                break;
            }
            if dir.join("cgroup.subtree_control").exists() {
                let _ = fs::write(dir.join("cgroup.subtree_control"), "+pids");
            }
        }
        fs::write(pod.join("pids.max"), POD_PIDS_LIMIT).context("set the pod's pids.max")?;
        let logs = std::env::temp_dir().join(format!("reapwatch-record-{}", std::process::id()));
        fs::create_dir_all(logs.join(format!("pods/datadog_datadog-agent-7x2kq_{UID}/agent")))?;
        fs::create_dir_all(logs.join("containers"))?;
        fs::write(
            logs.join(format!(
                "containers/datadog-agent-7x2kq_datadog_agent-{CONTAINER_ID}.log"
            )),
            "",
        )?;
        Ok(Self {
            root,
            base,
            container,
            logs,
        })
    }

    fn host_path(&self, dir: &Path) -> String {
        format!("/{}", dir.strip_prefix(&self.root).unwrap_or(dir).display())
    }
}

impl Drop for PodTree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.logs);
        // Innermost first; the leaks' processes are gone by now.
        for _ in 0..100 {
            let mut dirs: Vec<PathBuf> = self
                .container
                .ancestors()
                .take_while(|d| d.starts_with(&self.base))
                .map(Path::to_path_buf)
                .collect();
            dirs.retain(|d| fs::remove_dir(d).is_err() && d.exists());
            if dirs.is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A zombie-helper leaking 2 children in the container; it ends, and its zombies go, when
/// dropped (its stdin closes).
struct Leak(Child);

impl Leak {
    fn start(release: &Path, cgroup: &Path) -> Result<Self> {
        let child = Command::new(release.join("zombie-helper"))
            .arg("--cgroup")
            .arg(cgroup)
            .args(["leak", "2"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start zombie-helper")?;
        Ok(Self(child))
    }
}

impl Drop for Leak {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}
