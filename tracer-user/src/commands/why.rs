//! `reapwatch why <pid>`: everything that explains one parent's zombies, and what to do.

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tracer_common::{Event, EventKind, SIGCHLD};

use crate::{
    cgroup::{self, CgroupHierarchy},
    cli::{TracerArgs, WhyArgs},
    clock::monotonic_ns,
    escape,
    kernel::{preflight, MapSizes},
    kubelet::{self, PodRanking},
    kubernetes::{self, PodDirectory},
    procfs::{self, ProcStat},
    state::{self, Change, Ending, StateEngine},
    text::{self, human_duration},
};

/// The facts `/proc/<pid>/status` gives about reaping.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReapingFacts {
    pub sigchld_ignored: bool,
    pub sigchld_handled: bool,
    /// The pid in each pid namespace, outermost first (`NSpid:`).
    pub ns_pids: Vec<u32>,
}

impl ReapingFacts {
    /// `status` is raw `/proc/<pid>/status`: its `Name:` line is the process's own choice of
    /// bytes, so it is read lossily.
    pub fn parse(status: &[u8]) -> Self {
        let status = escape::lossy(status);
        let mask = |field: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
                .unwrap_or(0)
        };
        let sigchld = 1u64 << (SIGCHLD - 1);
        Self {
            sigchld_ignored: mask("SigIgn:") & sigchld != 0,
            sigchld_handled: mask("SigCgt:") & sigchld != 0,
            ns_pids: status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .map(|ids| {
                    ids.split_whitespace()
                        .filter_map(|p| p.parse().ok())
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// PID 1 of a nested pid namespace: a container's init.
    pub fn is_namespace_init(&self) -> bool {
        self.ns_pids.len() > 1 && self.ns_pids.last() == Some(&1)
    }
}

/// What a watch with the kernel programs saw.
struct Watched {
    seconds: f64,
    waits: u64,
    /// Seconds before the end of the watch of the last `wait()`.
    last_wait_ago: Option<f64>,
    zombies: u64,
    /// Reaps of its children, those that predate the watch included.
    reaps: u64,
}

/// `exit 7`, `killed by signal 9`, or, where the kernel hides the status from this reader
/// (see `procfs::read_stat`), that it is unknown.
fn how_it_ended(status: Option<i32>) -> String {
    status.map_or_else(
        || "exit code unknown".to_owned(),
        |s| Ending::from_wait_status(s).to_string(),
    )
}

/// The binding pids limit of a process's cgroup in the hierarchy with the pids controller.
fn pids_limit(
    hierarchy: Option<&mut cgroup::CgroupHierarchy>,
    cgroups: &[procfs::CgroupLine],
) -> Option<cgroup::BindingLimit> {
    let hierarchy = hierarchy?;
    let line = hierarchy.line(cgroups)?;
    let path = escape::lossy(&hierarchy.host_path(&line.path));
    hierarchy.binding_limit(&path)
}

/// `7/10 tasks (pids.max of /kubepods/pod1), 3 left`, or `none`.
fn limit_text(limit: Option<&cgroup::BindingLimit>) -> String {
    match limit {
        Some(l) => format!(
            "{}/{} tasks (pids.max of {}), {}",
            l.current,
            l.max,
            escape::for_terminal(l.cgroup.as_bytes()),
            match l.headroom() {
                0 => "FULL: fork() fails".to_owned(),
                left => format!("{left} left"),
            }
        ),
        None => "none (no pids.max on its cgroup or above)".to_owned(),
    }
}

pub fn run(args: &WhyArgs) -> Result<()> {
    let proc_root = Path::new("/proc");
    let asked = procfs::read_stat(proc_root, args.pid)?
        .with_context(|| format!("no process {}", args.pid))?;
    let mut out = String::new();
    // A zombie has nothing to fix: its parent does. Explain, then diagnose the parent.
    let (pid, stat) = if asked.is_unreaped_zombie() {
        let _ = writeln!(
            out,
            "process {} ({}) is a zombie: it exited ({}) and its parent {} has not reaped it. \
             The parent is what to fix:\n",
            asked.pid,
            escape::for_terminal(&asked.comm),
            how_it_ended(asked.exit_status),
            asked.ppid
        );
        let parent = procfs::read_stat(proc_root, asked.ppid)?
            .with_context(|| format!("no process {} (the parent)", asked.ppid))?;
        (asked.ppid, parent)
    } else {
        (args.pid, asked)
    };
    let status = fs::read(proc_root.join(format!("{pid}/status")))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let facts = ReapingFacts::parse(&status);
    let cgroups = procfs::read_cgroups(proc_root, pid)?.unwrap_or_default();
    let mut hierarchy = cgroup::CgroupHierarchy::choose(
        Path::new("/sys/fs/cgroup"),
        args.tracer.hierarchy.cgroup_hierarchy,
    )?;
    let path = cgroup::select_host_path(hierarchy.as_mut(), &cgroups).unwrap_or_default();
    let limit = pids_limit(hierarchy.as_mut(), &cgroups);
    let labels = PodDirectory::new(&args.pods.pod_logs_dir).labels(&kubernetes::parse_path(&path));

    let processes = procfs::scan(proc_root)?.processes;
    let kubelet = kubelet_ranking(proc_root, hierarchy.as_mut(), &path, &processes);
    let mut zombies: Vec<ProcStat> = Vec::new();
    let mut live_children = 0;
    for p in processes.into_iter().filter(|p| p.ppid == pid) {
        if p.is_unreaped_zombie() {
            zombies.push(p);
        } else {
            live_children += 1;
        }
    }
    let watched = if args.watch.is_zero() {
        Err("not watched (--watch 0s)".to_owned())
    } else {
        watch(pid, args.watch, &args.tracer).map_err(|err| format!("not watched: {err:#}"))
    };

    let _ = writeln!(
        out,
        "process {pid} ({}), state {}",
        escape::for_terminal(&stat.comm),
        stat.state as char
    );
    if !labels.pod.is_empty() {
        let _ = writeln!(
            out,
            "  pod {}/{}, container {}",
            escape::for_terminal(labels.namespace.as_bytes()),
            escape::for_terminal(labels.pod.as_bytes()),
            escape::for_terminal(labels.container.as_bytes())
        );
    }
    let _ = writeln!(out, "  cgroup {}", escape::for_terminal(path.as_bytes()));
    let _ = writeln!(out, "  pids limit: {}", limit_text(limit.as_ref()));
    let _ = writeln!(
        out,
        "  children: {} unreaped, {live_children} running",
        zombies.len()
    );
    let shown = &zombies[..zombies.len().min(10)];
    let exited = state::exit_times(proc_root, shown);
    let now = monotonic_ns();
    for z in shown {
        let age = exited.get(&z.pid).map_or("age unknown".into(), |&at| {
            format!(
                "exited {} ago",
                human_duration(now.saturating_sub(at) as f64 / 1e9)
            )
        });
        let _ = writeln!(
            out,
            "    {:>8}  {:<16}  {}, {age}",
            z.pid,
            escape::for_terminal(&z.comm),
            how_it_ended(z.exit_status)
        );
    }
    if zombies.len() > 10 {
        let _ = writeln!(out, "    ... {} more", zombies.len() - 10);
    }
    let _ = writeln!(
        out,
        "  SIGCHLD: {}",
        if facts.sigchld_ignored {
            "ignored (the kernel reaps its children at exit)"
        } else if facts.sigchld_handled {
            "handled (the handler must reap every child, in a loop)"
        } else {
            "default (children stay zombies until it calls wait())"
        }
    );
    if facts.ns_pids.len() > 1 {
        let ids: Vec<String> = facts.ns_pids.iter().map(u32::to_string).collect();
        let _ = writeln!(out, "  pid namespaces: {} (NSpid)", ids.join(" -> "));
    }
    match &watched {
        Ok(w) => {
            let last = w.last_wait_ago.map_or(String::new(), |ago| {
                format!(" (the last {} ago)", human_duration(ago))
            });
            let _ = writeln!(
                out,
                "  watched {}: {} wait() calls{last}, {} zombies created, {} reaped",
                human_duration(w.seconds),
                w.waits,
                w.zombies,
                w.reaps
            );
        }
        Err(why) => {
            let _ = writeln!(out, "  wait() calls: {why}");
        }
    }
    out.push('\n');
    let mut found = findings(&facts, &zombies, watched.as_ref().ok());
    if !zombies.is_empty() {
        found.extend(kubelet);
    }
    for finding in found {
        let _ = writeln!(out, "- {finding}");
    }
    super::emit(&out)
}

/// What the kubelet's PID eviction makes of the pod of the cgroup `path`, with every zombie
/// whose parent is in that pod; None outside a pod.
fn kubelet_ranking(
    proc_root: &Path,
    hierarchy: Option<&mut CgroupHierarchy>,
    path: &str,
    processes: &[ProcStat],
) -> Option<String> {
    let hierarchy = hierarchy?;
    let pod = kubernetes::pod_cgroup(path)?.to_owned();
    let mut by_parent: HashMap<u32, u64> = HashMap::new();
    for z in processes.iter().filter(|p| p.is_unreaped_zombie()) {
        *by_parent.entry(z.ppid).or_default() += 1;
    }
    let mut zombies = 0;
    for (parent, count) in by_parent {
        let cgroups = procfs::read_cgroups(proc_root, parent)
            .ok()
            .flatten()
            .unwrap_or_default();
        let parent_path =
            cgroup::select_host_path(Some(&mut *hierarchy), &cgroups).unwrap_or_default();
        if kubernetes::pod_cgroup(&parent_path) == Some(pod.as_str()) {
            zombies += count;
        }
    }
    let ranking = PodRanking::of(hierarchy, &pod, zombies)?;
    let view = kubelet::discover(proc_root, Path::new("/")).view;
    Some(text::kubelet_ranking(&ranking, &view))
}

/// Watches the parent with the kernel programs' event stream. Its zombies that predate the
/// watch are recorded first, so that their reaps are seen too: from the kernel, or from
/// `/proc` when the kernel's free event does not come.
fn watch(pid: u32, duration: Duration, tracer: &TracerArgs) -> Result<Watched> {
    let sizes = MapSizes {
        event_buffer: 4 << 20,
        ..tracer.maps.sizes()
    };
    let mut engine = StateEngine::load(
        &preflight::check_all()?,
        sizes,
        tracer.hierarchy.cgroup_hierarchy,
    )?;
    engine.record_changes();
    let mut ring = engine.probes_mut().take_events()?;
    engine.reconcile()?;
    // The watch takes a while: say so, and when it starts.
    eprintln!(
        "reapwatch: watching {pid} for {}",
        human_duration(duration.as_secs_f64())
    );
    let started = Instant::now();
    let mut last_wait = None;
    let mut watched = Watched {
        seconds: 0.0,
        waits: 0,
        last_wait_ago: None,
        zombies: 0,
        reaps: 0,
    };
    let mut refreshed = started;
    while started.elapsed() < duration {
        std::thread::sleep(Duration::from_millis(50).min(duration));
        while let Some(item) = ring.next() {
            if item.len() < size_of::<Event>() {
                continue;
            }
            // SAFETY: Event is plain integers; the kernel wrote exactly one.
            let event = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Event) };
            match EventKind::from_u32(event.kind) {
                Some(EventKind::Wait) if event.pid == pid => {
                    watched.waits += 1;
                    last_wait = Some(Instant::now());
                }
                Some(EventKind::Zombie) if event.ppid == pid => watched.zombies += 1,
                Some(EventKind::Reap) if event.ppid == pid => watched.reaps += 1,
                _ => {}
            }
        }
        if refreshed.elapsed() >= Duration::from_millis(500) {
            engine.refresh()?;
            refreshed = Instant::now();
        }
        watched.reaps += engine
            .drain_changes()
            .iter()
            .filter(|c| matches!(c, Change::ReapedLate { zombie, .. } if zombie.parent.tgid == pid))
            .count() as u64;
    }
    watched.seconds = started.elapsed().as_secs_f64();
    watched.last_wait_ago = last_wait.map(|at| at.elapsed().as_secs_f64());
    Ok(watched)
}

/// The diagnosis, most specific first.
fn findings(facts: &ReapingFacts, zombies: &[ProcStat], watched: Option<&Watched>) -> Vec<String> {
    let mut found = Vec::new();
    if zombies.is_empty() && watched.is_none_or(|w| w.zombies == 0) {
        found.push("no unreaped children: nothing to fix here.".to_owned());
        return found;
    }
    if facts.is_namespace_init() {
        found.push(
            "PID 1 of its pid namespace that does not reap: the \"PID 1 in a container without an \
             init\" pattern. Every orphan in the container is reparented to it and stays a zombie. \
             Fix: run a real init as PID 1 (tini, dumb-init, `docker run --init`), or set \
             `shareProcessNamespace: true` in the pod spec so the pause container reaps."
                .to_owned(),
        );
    }
    let odd: Vec<i32> = zombies
        .iter()
        .filter_map(|z| z.exit_signal)
        .filter(|&s| s != SIGCHLD)
        .collect();
    if !odd.is_empty() {
        found.push(format!(
            "{} children exit with signal {} instead of SIGCHLD: wait() and waitpid() without \
             __WALL (or __WCLONE) never see them. Fix: reap with __WALL, or clone with SIGCHLD.",
            odd.len(),
            odd[0]
        ));
    }
    match watched {
        Some(w) if w.waits == 0 => found.push(format!(
            "it did not call wait() once in {}: it never reaps. Fix: reap children \
             (waitpid(-1, WNOHANG) in a loop on SIGCHLD), or run it under an init that does.",
            human_duration(w.seconds)
        )),
        Some(w) if w.reaps == 0 => found.push(format!(
            "it called wait() {} times in {} but reaped nothing: it waits wrong (a specific pid, \
             WNOWAIT, or children with another exit signal).",
            w.waits,
            human_duration(w.seconds)
        )),
        Some(w) if w.zombies > w.reaps => found.push(format!(
            "it reaps ({} in {}) but fewer than exit ({}): it falls behind.",
            w.reaps,
            human_duration(w.seconds),
            w.zombies
        )),
        _ => {}
    }
    if facts.sigchld_handled && !facts.is_namespace_init() {
        found.push(
            "it handles SIGCHLD: a handler that calls wait() once per signal loses children, \
             since signals merge. It must loop on waitpid(-1, WNOHANG)."
                .to_owned(),
        );
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_facts() {
        let status =
            "Name:\tagent\nSigIgn:\t0000000000010000\nSigCgt:\t0000000000000000\nNSpid:\t4242\t1\n";
        let facts = ReapingFacts::parse(status.as_bytes());
        assert!(facts.sigchld_ignored && !facts.sigchld_handled);
        assert_eq!(facts.ns_pids, [4242, 1]);
        assert!(facts.is_namespace_init());

        let host = ReapingFacts::parse(b"SigIgn:\t0\nSigCgt:\t0000000000010000\nNSpid:\t1\n");
        assert!(!host.sigchld_ignored && host.sigchld_handled);
        // The host's own PID 1 is no container init.
        assert!(!host.is_namespace_init());
    }
}

/// Random and hostile `/proc/<pid>/status` contents: never a panic, and the facts come back
/// whatever the process named itself.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn status_never_panics(status in prop::collection::vec(any::<u8>(), 0..1024)) {
            let _ = ReapingFacts::parse(&status);
        }

        #[test]
        fn status_round_trips(
            name in prop::collection::vec(any::<u8>().prop_filter("one line", |b| *b != b'\n'), 0..32),
            ignored in any::<u64>(),
            caught in any::<u64>(),
            ns_pids in prop::collection::vec(any::<u32>(), 1..4),
        ) {
            let mut status = b"Name:\t".to_vec();
            status.extend_from_slice(&name);
            let ids: Vec<String> = ns_pids.iter().map(u32::to_string).collect();
            status.extend_from_slice(
                format!(
                    "\nUmask:\t0022\nState:\tZ (zombie)\nSigIgn:\t{ignored:016x}\nSigCgt:\t{caught:016x}\nNSpid:\t{}\n",
                    ids.join("\t")
                )
                .as_bytes(),
            );
            let sigchld = 1u64 << (SIGCHLD - 1);
            prop_assert_eq!(
                ReapingFacts::parse(&status),
                ReapingFacts {
                    sigchld_ignored: ignored & sigchld != 0,
                    sigchld_handled: caught & sigchld != 0,
                    ns_pids,
                }
            );
        }
    }
}
