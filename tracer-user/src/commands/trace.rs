//! `reapwatch trace`: one line per lifecycle event, from the kernel's event ring buffer, plus
//! the changes only userspace sees (reparented zombies, reaps whose free event never came).

use std::{
    collections::{HashMap, HashSet},
    fmt,
    io::{self, BufWriter, Write},
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};
use tracer_common::{Event, EventKind, Loss};

use crate::{
    cgroup::CgroupHierarchy,
    cli::TraceArgs,
    clock::monotonic_ns,
    escape,
    kernel::{preflight, MapSizes},
    kubernetes::{self, PodDirectory},
    state::{Change, Ending, StateEngine},
    text::{human_duration, known, pod_place},
};

/// How often zombies are checked against /proc for reparenting and missed reaps.
const REFRESH: Duration = Duration::from_secs(1);

pub fn run(args: &TraceArgs) -> Result<()> {
    if let Some(warning) = check_filters(args, Path::new("/proc"), Path::new("/sys/fs/cgroup"))? {
        eprintln!("reapwatch: {warning}");
    }
    let sizes = MapSizes {
        event_buffer: args.buffer_mib * 1024 * 1024,
        ..args.tracer.maps.sizes()
    };
    let mut engine = StateEngine::load(
        &preflight::check_all()?,
        sizes,
        args.tracer.hierarchy.cgroup_hierarchy,
    )?;
    engine.record_changes();
    let ring = engine.probes_mut().take_events()?;
    // Zombies that predate the trace are recorded too, so that their reaps are shown.
    engine.reconcile()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("cannot start the runtime")?;
    let mut tracer = Trace {
        args,
        pods: PodDirectory::new(&args.pods.pod_logs_dir),
        paths: HashMap::new(),
        wall_offset_ns: wall_clock_ns().saturating_sub(monotonic_ns()),
        out: BufWriter::new(io::stdout().lock()),
        shown: 0,
        min_age: args.min_age.map(MinAgeFilter::new),
    };
    let lost_before = lost(&engine)?;
    match args.duration {
        Some(duration) => eprintln!(
            "reapwatch: tracing for {}",
            human_duration(duration.as_secs_f64())
        ),
        None => eprintln!("reapwatch: tracing (Ctrl-C to stop)"),
    }
    if !args.json {
        tracer.header()?;
    }
    runtime.block_on(tracer.follow(&mut engine, ring))?;
    let lost = lost(&engine)? - lost_before;
    tracer.finish()?;
    let unfollowed = tracer.min_age.as_ref().map_or(0, |h| h.dropped);
    if unfollowed > 0 {
        eprintln!(
            "reapwatch: {} events shown, {lost} lost, {unfollowed} zombies not followed \
             (more than {HELD_AT_MOST} younger than --min-age at once)",
            tracer.shown
        );
    } else {
        eprintln!("reapwatch: {} events shown, {lost} lost", tracer.shown);
    }
    Ok(())
}

/// Refuses a filter that can match nothing, rather than trace nothing without a word: a
/// process that does not exist, a cgroup in no hierarchy. A container may start later: that
/// is a warning, returned.
fn check_filters(
    args: &TraceArgs,
    proc_root: &Path,
    sys_fs_cgroup: &Path,
) -> Result<Option<String>> {
    if let Some(pid) = args.pid {
        if !proc_root.join(pid.to_string()).exists() {
            bail!("--pid {pid}: no such process");
        }
    }
    if let Some(wanted) = &args.cgroup {
        // Each v1 controller, the hybrid unified mount, or a v2 root at sys_fs_cgroup itself.
        let relative = wanted.trim_start_matches('/');
        let mut roots = std::fs::read_dir(sys_fs_cgroup)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .chain([sys_fs_cgroup.to_path_buf()]);
        if !roots.any(|root| root.join(relative).is_dir()) {
            bail!(
                "--cgroup {}: no such cgroup in any hierarchy under {}",
                escape::for_terminal(wanted.as_bytes()),
                sys_fs_cgroup.display()
            );
        }
    }
    if let Some(wanted) = &args.container {
        let hierarchy =
            CgroupHierarchy::choose(sys_fs_cgroup, args.tracer.hierarchy.cgroup_hierarchy)?;
        let mut pods = PodDirectory::new(&args.pods.pod_logs_dir);
        let found = hierarchy.is_some_and(|hierarchy| {
            hierarchy.walk().iter().any(|(_, path)| {
                let parsed = kubernetes::parse_path(&escape::lossy(path));
                is_container(
                    wanted,
                    &pods.labels(&parsed),
                    parsed.container_id.as_deref(),
                )
            })
        });
        if !found {
            return Ok(Some(format!(
                "--container {} matches no container yet: tracing, in case it starts",
                escape::for_terminal(wanted.as_bytes())
            )));
        }
    }
    Ok(None)
}

/// Events the kernel could not deliver: a full ring buffer, or programs skipped.
fn lost(engine: &StateEngine) -> Result<u64> {
    let probes = engine.probes();
    Ok(probes.losses()?[Loss::EventsDropped as usize] + probes.recursion_misses()?)
}

fn wall_clock_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// What a line reports: the kernel's events, and the reparent only userspace sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TraceEvent {
    Fork,
    Exit,
    Zombie,
    Reap,
    Reparent,
    Wait,
}

impl TraceEvent {
    fn name(self) -> &'static str {
        match self {
            Self::Fork => "fork",
            Self::Exit => "exit",
            Self::Zombie => "zombie",
            Self::Reap => "reap",
            Self::Reparent => "reparent",
            Self::Wait => "wait",
        }
    }

    /// What `--zombies-only` keeps.
    fn is_about_zombies(self) -> bool {
        matches!(self, Self::Zombie | Self::Reap | Self::Reparent)
    }
}

impl From<EventKind> for TraceEvent {
    fn from(kind: EventKind) -> Self {
        match kind {
            EventKind::Fork => Self::Fork,
            EventKind::Exit => Self::Exit,
            EventKind::Zombie => Self::Zombie,
            EventKind::Reap => Self::Reap,
            EventKind::Wait => Self::Wait,
        }
    }
}

impl fmt::Display for TraceEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so that the text lines' `{:<8}` lines the names up.
        f.pad(self.name())
    }
}

impl Serialize for TraceEvent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// One output line (`--json`): the stable contract, see README.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    event: TraceEvent,
    pid: u32,
    ppid: u32,
    comm: String,
    cgroup: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signal: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    age_seconds: Option<f64>,
    /// For `reparent`: the parent it left.
    #[serde(skip_serializing_if = "Option::is_none")]
    from_ppid: Option<u32>,
}

struct Trace<'a, W: Write> {
    args: &'a TraceArgs,
    pods: PodDirectory,
    paths: HashMap<u64, CgroupInfo>,
    wall_offset_ns: u64,
    out: W,
    shown: u64,
    min_age: Option<MinAgeFilter>,
}

/// `--min-age`: zombies are held back until they have stayed unreaped that long (checked
/// every second); those reaped sooner are never shown, nor are their reaps.
struct MinAgeFilter {
    min_age_ns: u64,
    /// Zombies not old enough yet, by pid.
    waiting: HashMap<u32, Event>,
    /// Zombies shown: their reap is shown too.
    shown: HashSet<u32>,
    /// Zombies not followed because too many waited at once.
    dropped: u64,
}

/// A storm of short-lived zombies must not grow the held set without bound.
const HELD_AT_MOST: usize = 65536;

impl MinAgeFilter {
    fn new(min_age: Duration) -> Self {
        Self {
            min_age_ns: min_age.as_nanos() as u64,
            waiting: HashMap::new(),
            shown: HashSet::new(),
            dropped: 0,
        }
    }

    /// Whether a reap of `pid`, `age_ns` after its exit, is shown.
    fn shows_reap(&mut self, pid: u32, age_ns: u64) -> bool {
        if self.waiting.remove(&pid).is_some() {
            return false;
        }
        // Shown when it turned old enough, or older than the trace and old enough now.
        self.shown.remove(&pid) || age_ns >= self.min_age_ns
    }

    /// The zombies that have now stayed unreaped long enough, oldest first.
    fn ripe(&mut self, now_ns: u64) -> Vec<Event> {
        let min_age = self.min_age_ns;
        let mut ripe: Vec<Event> = self
            .waiting
            .values()
            .filter(|e| now_ns.saturating_sub(e.time_ns) >= min_age)
            .copied()
            .collect();
        ripe.sort_by_key(|e| e.time_ns);
        for event in &ripe {
            self.waiting.remove(&event.pid);
            self.shown.insert(event.pid);
        }
        ripe
    }
}

impl<W: Write> Trace<'_, W> {
    async fn follow(
        &mut self,
        engine: &mut StateEngine,
        ring: aya::maps::RingBuf<aya::maps::MapData>,
    ) -> Result<()> {
        // SAFETY: the ring buffer owns its map fd, open for as long as it lives in the AsyncFd.
        let mut ring = unsafe { AsyncFd::register(ring) }
            .map_err(|err| anyhow::anyhow!("cannot poll the event ring buffer: {err}"))?;
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let deadline = tokio::time::sleep(self.args.duration.unwrap_or(Duration::MAX / 4));
        tokio::pin!(deadline);
        let mut refresh = tokio::time::interval(REFRESH);
        let mut forgotten_at = Instant::now();
        loop {
            tokio::select! {
                ready = ring.readable_mut() => {
                    let mut guard = ready.context("event ring buffer")?;
                    while let Some(item) = guard.get_inner_mut().next() {
                        if let Some(event) = parse(&item) {
                            self.kernel_event(engine, &event)?;
                        }
                    }
                    guard.clear_ready();
                    self.out.flush()?;
                }
                _ = refresh.tick() => {
                    self.show_ripe(engine)?;
                    engine.refresh()?;
                    for change in engine.drain_changes() {
                        self.change(engine, change)?;
                    }
                    self.out.flush()?;
                    if forgotten_at.elapsed() >= super::FORGET_REMOVED_EVERY {
                        self.forget_removed(engine)?;
                        forgotten_at = Instant::now();
                    }
                }
                _ = &mut deadline => break,
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
            }
        }
        // What is still buffered was produced before the stop.
        let ring = ring.get_mut();
        while let Some(item) = ring.next() {
            if let Some(event) = parse(&item) {
                self.kernel_event(engine, &event)?;
            }
        }
        Ok(())
    }

    /// The column titles of the text lines.
    fn header(&mut self) -> Result<()> {
        writeln!(
            self.out,
            "{:<27}  {:<8} {:>7} {:>7}  {:<16}  CONTAINER  DETAIL",
            "TIME", "EVENT", "PID", "PPID", "COMM"
        )?;
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        Ok(self.out.flush()?)
    }

    /// Shows the held zombies that are old enough now, with their age.
    fn show_ripe(&mut self, engine: &mut StateEngine) -> Result<()> {
        let now = monotonic_ns();
        let ripe = self
            .min_age
            .as_mut()
            .map(|h| h.ripe(now))
            .unwrap_or_default();
        for event in ripe {
            let record = Record {
                time_ns: event.time_ns,
                event: TraceEvent::Zombie,
                pid: event.pid,
                ppid: event.ppid,
                comm: &event.comm,
                cgroup_id: event.cgroup_id,
                status: Some(event.exit_status),
                age_ns: Some(now.saturating_sub(event.time_ns)),
                from_ppid: None,
            };
            self.write(engine, record)?;
        }
        Ok(())
    }

    fn kernel_event(&mut self, engine: &mut StateEngine, event: &Event) -> Result<()> {
        let Some(kind) = EventKind::from_u32(event.kind) else {
            return Ok(());
        };
        if let Some(held) = &mut self.min_age {
            match kind {
                EventKind::Zombie if held.waiting.len() >= HELD_AT_MOST => {
                    held.dropped += 1;
                    return Ok(());
                }
                EventKind::Zombie => {
                    held.waiting.insert(event.pid, *event);
                    return Ok(());
                }
                EventKind::Reap if !held.shows_reap(event.pid, event.age_ns) => return Ok(()),
                _ => {}
            }
        }
        let age = (kind == EventKind::Reap).then_some(event.age_ns);
        let status = matches!(kind, EventKind::Exit | EventKind::Zombie | EventKind::Reap)
            .then_some(event.exit_status);
        let record = Record {
            time_ns: event.time_ns,
            event: kind.into(),
            pid: event.pid,
            ppid: event.ppid,
            comm: &event.comm,
            cgroup_id: event.cgroup_id,
            status,
            age_ns: age,
            from_ppid: None,
        };
        self.write(engine, record)
    }

    fn change(&mut self, engine: &mut StateEngine, change: Change) -> Result<()> {
        let now = monotonic_ns();
        let (event, child, zombie, from) = match &change {
            Change::Reparented {
                child,
                zombie,
                from,
            } => (TraceEvent::Reparent, child, zombie, Some(*from)),
            Change::ReapedLate { child, zombie } => (TraceEvent::Reap, child, zombie, None),
        };
        let reaped = event == TraceEvent::Reap;
        if let Some(held) = &mut self.min_age {
            let hidden = if reaped {
                !held.shows_reap(child.tgid, now.saturating_sub(zombie.exit_ns))
            } else {
                held.waiting.contains_key(&child.tgid)
            };
            if hidden {
                return Ok(());
            }
        }
        let record = Record {
            time_ns: now,
            event,
            pid: child.tgid,
            ppid: zombie.parent.tgid,
            comm: &zombie.comm,
            cgroup_id: zombie.cgroup_id,
            status: zombie.wait_status(),
            age_ns: reaped.then(|| now.saturating_sub(zombie.exit_ns)),
            from_ppid: from,
        };
        self.write(engine, record)
    }

    fn write(&mut self, engine: &mut StateEngine, record: Record) -> Result<()> {
        let args = self.args;
        let comm = &record.comm[..record.comm.iter().position(|&b| b == 0).unwrap_or(16)];
        if args.zombies_only && !record.event.is_about_zombies()
            || args
                .pid
                .is_some_and(|pid| pid != record.pid && pid != record.ppid)
            || args.comm.as_ref().is_some_and(|c| c.as_bytes() != comm)
        {
            return Ok(());
        }
        let wall = UNIX_EPOCH + Duration::from_nanos(record.time_ns + self.wall_offset_ns);
        let CgroupInfo {
            path,
            labels,
            container_id,
        } = self.cgroup(engine, record.cgroup_id);
        if args
            .cgroup
            .as_ref()
            .is_some_and(|wanted| !under(&path, wanted))
            || args
                .container
                .as_ref()
                .is_some_and(|wanted| !is_container(wanted, &labels, container_id.as_deref()))
        {
            return Ok(());
        }
        let ending = record.status.map(Ending::from_wait_status);
        let line = Line {
            time: humantime::format_rfc3339_micros(wall).to_string(),
            event: record.event,
            pid: record.pid,
            ppid: record.ppid,
            comm: escape::lossy(comm),
            cgroup: &path,
            namespace: known(labels.namespace.as_str()),
            pod: known(labels.pod.as_str()),
            container: known(labels.container.as_str()),
            exit_code: ending.and_then(Ending::exit_code),
            signal: ending.and_then(Ending::signal),
            age_seconds: record.age_ns.map(|ns| ns as f64 / 1e9),
            from_ppid: record.from_ppid,
        };
        let text = if args.json {
            serde_json::to_string(&line)?
        } else {
            human(&line, comm)
        };
        self.shown += 1;
        writeln!(self.out, "{text}")?;
        Ok(())
    }

    /// Drops cached paths of removed cgroups (ids are not reused) and their counters.
    fn forget_removed(&mut self, engine: &mut StateEngine) -> Result<()> {
        if let Some(hierarchy) = engine.hierarchy() {
            self.paths
                .retain(|&id, info| hierarchy.id_of(info.path.as_bytes()) == Some(id));
        }
        super::forget_removed_cgroups(engine)
    }

    /// What a cgroup id says, cached while the cgroup exists.
    fn cgroup(&mut self, engine: &mut StateEngine, id: u64) -> CgroupInfo {
        if let Some(cached) = self.paths.get(&id) {
            return cached.clone();
        }
        let path = engine.cgroup_path(id).unwrap_or_default();
        let parsed = kubernetes::parse_path(&path);
        let info = CgroupInfo {
            labels: self.pods.labels(&parsed),
            container_id: parsed.container_id,
            path,
        };
        // An unresolved id may resolve later (a cgroup newer than the last walk).
        if !info.path.is_empty() {
            self.paths.insert(id, info.clone());
        }
        info
    }
}

/// A cgroup as the filters and the lines see it.
#[derive(Clone)]
struct CgroupInfo {
    /// Empty while the id is not resolved.
    path: String,
    labels: kubernetes::PodLabels,
    /// What `--container` also matches, by prefix.
    container_id: Option<String>,
}

struct Record<'a> {
    time_ns: u64,
    event: TraceEvent,
    pid: u32,
    ppid: u32,
    comm: &'a [u8; 16],
    cgroup_id: u64,
    status: Option<i32>,
    age_ns: Option<u64>,
    from_ppid: Option<u32>,
}

fn parse(item: &[u8]) -> Option<Event> {
    (item.len() >= size_of::<Event>())
        // SAFETY: Event is plain integers; the kernel wrote exactly one (read unaligned).
        .then(|| unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Event) })
}

fn under(path: &str, wanted: &str) -> bool {
    let wanted = wanted.trim_end_matches('/');
    path == wanted
        || path.starts_with(wanted) && path[wanted.len()..].starts_with('/')
        || wanted.is_empty()
}

/// `--container`: its name, or a prefix of its ID.
fn is_container(wanted: &str, labels: &kubernetes::PodLabels, id: Option<&str>) -> bool {
    labels.container == wanted || id.is_some_and(|id| id.starts_with(wanted))
}

/// `2026-11-27T04:40:12.123456Z  zombie    4243  4242  worker  /kubepods/...  exit=7`
fn human(line: &Line, comm: &[u8]) -> String {
    let mut detail = Vec::new();
    if let Some(code) = line.exit_code {
        detail.push(format!("exit={code}"));
    } else if line.signal.is_none() && line.event.is_about_zombies() {
        // Found in /proc by a reader the kernel does not show the status to.
        detail.push("exit=unknown".to_owned());
    }
    if let Some(signal) = line.signal {
        detail.push(format!("signal={signal}"));
    }
    if let Some(age) = line.age_seconds {
        detail.push(format!("age={}", human_duration(age)));
    }
    if let Some(from) = line.from_ppid {
        detail.push(format!("from={from}"));
    }
    let place = pod_place(line.namespace, line.pod, line.container)
        .unwrap_or_else(|| line.cgroup.to_owned());
    format!(
        "{}  {:<8} {:>7} {:>7}  {:<16}  {}  {}",
        line.time,
        line.event,
        line.pid,
        line.ppid,
        escape::for_terminal(comm),
        escape::for_terminal(place.as_bytes()),
        detail.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use std::fs;

    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn trace_args(argv: &[&str]) -> TraceArgs {
        let mut full = vec!["reapwatch", "trace"];
        full.extend(argv);
        match Cli::try_parse_from(full).unwrap().command {
            Command::Trace(args) => args,
            _ => unreachable!(),
        }
    }

    #[test]
    fn filters_that_match_nothing_are_refused_or_warned() {
        let root = std::env::temp_dir().join(format!("reapwatch-filters-{}", std::process::id()));
        let (proc_root, cgroups) = (root.join("proc"), root.join("cgroup"));
        let id = "ab".repeat(32);
        fs::create_dir_all(proc_root.join("42")).unwrap();
        fs::create_dir_all(cgroups.join(format!("pids/kubepods/podx/{id}"))).unwrap();
        fs::write(cgroups.join("pids/tasks"), "").unwrap();
        fs::create_dir_all(cgroups.join("unified/system.slice")).unwrap();
        let check = |argv: &[&str]| {
            check_filters(&trace_args(argv), &proc_root, &cgroups).map_err(|e| format!("{e:#}"))
        };
        assert_eq!(check(&["--pid", "42"]), Ok(None));
        assert_eq!(
            check(&["--pid", "43"]),
            Err("--pid 43: no such process".into())
        );
        assert_eq!(check(&["--cgroup", "/kubepods/podx"]), Ok(None));
        assert_eq!(check(&["--cgroup", "/system.slice/"]), Ok(None));
        assert!(check(&["--cgroup", "/nonexistent\x1b"])
            .is_err_and(|e| e.starts_with("--cgroup /nonexistent\\x1b: no such cgroup")));
        assert_eq!(check(&["--container", "abab"]), Ok(None));
        assert_eq!(
            check(&["--container", "nope"]),
            Ok(Some(
                "--container nope matches no container yet: tracing, in case it starts".into()
            ))
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn event_names_fill_the_text_column_and_are_json_strings() {
        assert_eq!(format!("{:<8}|", TraceEvent::Reap), "reap    |");
        assert_eq!(
            serde_json::to_string(&TraceEvent::Reparent).unwrap(),
            "\"reparent\""
        );
    }

    #[test]
    fn cgroup_filter_matches_whole_components() {
        assert!(under("/kubepods/pod1/abc", "/kubepods"));
        assert!(under("/kubepods", "/kubepods/"));
        assert!(!under("/kubepods2/x", "/kubepods"));
        assert!(under("/anything", ""));
    }
}
