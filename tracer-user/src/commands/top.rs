//! `reapwatch top`: a live table of the parents that do not reap, refreshed every interval.
//! Full-screen on a terminal; plain tables, one per refresh, when stdout is a pipe or a file.

mod view;

use std::{
    collections::BTreeMap,
    io::{self, IsTerminal},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Result};
use ratatui::{
    backend::CrosstermBackend,
    crossterm::{
        cursor,
        event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
        execute,
        terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
    },
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::Paragraph,
    Terminal,
};

use self::view::{Display, Eta, FullCgroup, LimitRow, ParentRow, TopSample};
use crate::{
    cli::TopArgs,
    escape,
    kernel::preflight,
    kubelet::{self, KubeletView, PodRanking},
    kubernetes::{self, PodDirectory},
    procfs::NodeLimits,
    state::{ParentState, StateEngine},
    text::{self, known, pod_place},
    watch::Watch,
};

/// Window of the node exhaustion forecast: shorter than `serve`'s 15m default, because a
/// person watching wants an answer within minutes (it shows from half the window on).
const ETA_WINDOW: Duration = Duration::from_secs(300);
/// How often all of `/proc` is scanned for zombies the programs did not see (as `serve`).
const RECONCILE_EVERY: Duration = Duration::from_secs(60);
/// The longest a key or a signal waits to be noticed.
const POLL_SLICE: Duration = Duration::from_millis(100);

/// Set by SIGINT, SIGTERM and SIGHUP: the loops stop and the terminal is restored.
static STOP: AtomicBool = AtomicBool::new(false);

pub fn run(args: &TopArgs) -> Result<()> {
    let engine = StateEngine::load(
        &preflight::check_all()?,
        args.tracer.maps.sizes(),
        args.tracer.hierarchy.cgroup_hierarchy,
    )?;
    let mut collector = Collector::new(engine, &args.pods.pod_logs_dir)?;
    handle_stop_signals()?;
    if io::stdout().is_terminal() {
        full_screen(&mut collector, args)
    } else {
        plain(&mut collector, args)
    }
}

extern "C" fn request_stop(_signal: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn handle_stop_signals() -> Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is valid, and the handler only stores to an atomic,
        // which is async-signal-safe. SA_RESTART keeps /proc reads from failing with EINTR.
        let installed = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = request_stop as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if installed != 0 {
            bail!(
                "cannot handle signal {signal}: {}",
                io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Sleeps for `duration` unless a stop signal comes first; false if one did.
fn sleep_unless_stopped(duration: Duration) -> bool {
    let until = Instant::now() + duration;
    while !STOP.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(POLL_SLICE));
    }
    false
}

/// Turns each tick of the watch into a [`TopSample`].
struct Collector {
    watch: Watch,
    pods: PodDirectory,
    last_forget: Instant,
    /// Cgroups with a numeric `pids.max` (found by a walk every [`LIMITED_WALK_EVERY`]),
    /// with their refused forks when first seen.
    limited: BTreeMap<String, u64>,
    limited_walk: Option<Instant>,
    /// The kubelet's lines, looked up every [`LIMITED_WALK_EVERY`].
    kubelet: Vec<String>,
    kubelet_at: Option<Instant>,
}

/// How often the hierarchy is walked for cgroups with a `pids.max`.
const LIMITED_WALK_EVERY: Duration = Duration::from_secs(10);

impl Collector {
    fn new(engine: StateEngine, pod_logs_dir: &Path) -> Result<Self> {
        let mut watch = Watch::new(engine, RECONCILE_EVERY, ETA_WINDOW);
        // The first scan is the long one on a busy node: done before the screen is taken.
        watch.reconcile()?;
        Ok(Self {
            watch,
            pods: PodDirectory::new(pod_logs_dir),
            last_forget: Instant::now(),
            limited: BTreeMap::new(),
            limited_walk: None,
            kubelet: Vec::new(),
            kubelet_at: None,
        })
    }

    /// Cgroups at their `pids.max`, or that refused forks since `top` started: where fork()
    /// fails now, whether or not zombies fill them.
    fn full_cgroups(&mut self) -> Vec<FullCgroup> {
        let Some(hierarchy) = self.watch.engine().hierarchy() else {
            return Vec::new();
        };
        if self
            .limited_walk
            .is_none_or(|at| at.elapsed() >= LIMITED_WALK_EVERY)
        {
            self.limited_walk = Some(Instant::now());
            let mut limited = BTreeMap::new();
            for (_, path) in hierarchy.walk() {
                if let Some((_, Some(_))) = hierarchy.pids(&path) {
                    let text = escape::lossy(&path);
                    let before = self.limited.get(&text).copied();
                    let refused = before.or_else(|| hierarchy.fork_failures(&path));
                    limited.insert(text, refused.unwrap_or(0));
                }
            }
            self.limited = limited;
        }
        let mut full = Vec::new();
        for (path, &refused_before) in &self.limited {
            let Some((current, Some(max))) = hierarchy.pids(path) else {
                continue;
            };
            let refused = hierarchy.fork_failures(path).unwrap_or(0);
            if current >= max || refused > refused_before {
                full.push((path.clone(), current, max, refused));
            }
        }
        full.into_iter()
            .map(|(path, current, max, refused)| FullCgroup {
                place: self.container(Some(&path)),
                current,
                max,
                refused,
            })
            .collect()
    }

    /// The kubelet's PID eviction on this node, and what it makes of the pod that holds the
    /// most zombies.
    fn kubelet_lines(&mut self, node: &NodeLimits, parents: &[ParentState]) -> Vec<String> {
        if self
            .kubelet_at
            .is_some_and(|at| at.elapsed() < LIMITED_WALK_EVERY)
        {
            return self.kubelet.clone();
        }
        self.kubelet_at = Some(Instant::now());
        let view = kubelet::discover(Path::new("/proc"), Path::new("/")).view;
        let mut lines = Vec::new();
        let mut by_pod: BTreeMap<&str, u64> = BTreeMap::new();
        for parent in parents {
            if let Some(pod) = parent.cgroup.as_deref().and_then(kubernetes::pod_cgroup) {
                *by_pod.entry(pod).or_default() += parent.children.len() as u64;
            }
        }
        // Said where it matters: a node with a kubelet, or a pod holding zombies.
        if view != KubeletView::NotFound || !by_pod.is_empty() {
            lines.push(text::kubelet_line(&view.report(node)));
        }
        let most = by_pod
            .into_iter()
            .max_by_key(|&(pod, zombies)| (zombies, std::cmp::Reverse(pod)));
        if let (Some((pod, zombies)), Some(hierarchy)) = (most, self.watch.engine().hierarchy()) {
            if let Some(ranking) = PodRanking::of(hierarchy, pod, zombies) {
                let words = text::kubelet_ranking(&ranking, &view);
                lines.push(format!("{}: {words}", self.container(Some(pod))));
            }
        }
        self.kubelet = lines;
        self.kubelet.clone()
    }

    fn collect(&mut self) -> Result<TopSample> {
        let tick = self.watch.tick()?;
        if self.last_forget.elapsed() >= super::FORGET_REMOVED_EVERY {
            super::forget_removed_cgroups(self.watch.engine_mut())?;
            self.last_forget = Instant::now();
        }
        let kubelet = self.kubelet_lines(&tick.node, &tick.parents);
        let mut parents = Vec::new();
        let limits = self.binding_limits(tick.parents.iter().filter_map(|p| p.cgroup.as_deref()));
        for parent in tick.parents {
            let oldest = parent.oldest();
            parents.push(ParentRow {
                pid: parent.pid(),
                comm: if parent.comm.is_empty() {
                    "(exited)".to_owned()
                } else {
                    escape::for_terminal(&parent.comm)
                },
                container: self.container(parent.cgroup.as_deref()),
                unreaped: parent.children.len(),
                per_minute: per_minute(
                    parent
                        .children
                        .iter()
                        .map(|c| (c.age_ns, c.age_is_lower_bound())),
                    tick.elapsed,
                ),
                oldest_seconds: oldest.map_or(0.0, |c| c.age_ns as f64 / 1e9),
                oldest_is_lower_bound: oldest.is_some_and(|c| c.age_is_lower_bound()),
                last_wait_seconds: parent.last_wait_age_ns.map(|ns| ns as f64 / 1e9),
                waits_watched_seconds: parent.waits_watched_ns.map(|ns| ns as f64 / 1e9),
            });
        }
        let eta = match tick.forecast_measuring {
            Some(left) => Eta::Measuring(left),
            None => tick.node_eta_seconds.map_or(Eta::NotGrowing, Eta::Seconds),
        };

        Ok(TopSample {
            taken: SystemTime::now(),
            node: tick.node,
            eta,
            parents,
            full: self.full_cgroups(),
            kubelet,
            limits,
        })
    }

    /// The binding pids limits of `cgroups`, each once, least headroom first.
    fn binding_limits<'a>(&self, cgroups: impl Iterator<Item = &'a str>) -> Vec<LimitRow> {
        let Some(hierarchy) = self.watch.engine().hierarchy() else {
            return Vec::new();
        };
        let mut limits: Vec<_> = cgroups.filter_map(|c| hierarchy.binding_limit(c)).collect();
        limits.sort_by(|a, b| {
            a.headroom()
                .cmp(&b.headroom())
                .then(a.cgroup.cmp(&b.cgroup))
        });
        limits.dedup_by(|a, b| a.cgroup == b.cgroup);
        limits
            .into_iter()
            .map(|l| LimitRow {
                cgroup: escape::for_terminal(l.cgroup.as_bytes()),
                current: l.current,
                max: l.max,
            })
            .collect()
    }

    /// `namespace/pod/container` when kubelet's logs name it, else the cgroup path; escaped.
    fn container(&mut self, cgroup: Option<&str>) -> String {
        let Some(path) = cgroup else {
            return "-".to_owned();
        };
        let pod = self.pods.labels(&kubernetes::parse_path(path));
        let name = pod_place(
            known(pod.namespace.as_str()),
            known(pod.pod.as_str()),
            known(pod.container.as_str()),
        )
        .unwrap_or_else(|| path.to_owned());
        escape::for_terminal(name.as_bytes())
    }
}

/// Zombies created per minute by one parent: its unreaped children that exited within the
/// last minute. A zombie reaped meanwhile is not counted (the parent did its job). Exit times
/// are known from the start (seen by the programs, or from the scheduler for zombies older
/// than reapwatch), so a whole minute counts at once. Where one is unknown (a kernel without
/// scheduler debug info), the rate is None, measuring, until reapwatch has run a minute; the
/// unknown ones are left out after that.
fn per_minute(children: impl Iterator<Item = (u64, bool)>, elapsed: Duration) -> Option<f64> {
    const WINDOW: Duration = Duration::from_secs(60);
    let (mut recent, mut unknown) = (0, false);
    for (age_ns, lower_bound) in children {
        if lower_bound {
            unknown = true;
        } else if age_ns < WINDOW.as_nanos() as u64 {
            recent += 1;
        }
    }
    (!unknown || elapsed >= WINDOW).then_some(f64::from(recent))
}

fn plain(collector: &mut Collector, args: &TopArgs) -> Result<()> {
    let display = Display::default();
    let mut refreshes = 0;
    loop {
        super::emit(&view::plain(&collector.collect()?, &display, args.interval))?;
        refreshes += 1;
        if args.iterations.is_some_and(|n| refreshes >= n) || !sleep_unless_stopped(args.interval) {
            return Ok(());
        }
    }
}

/// Raw mode and the alternate screen for as long as it lives: dropped on every way out
/// (q, a signal, an error), it gives the shell its screen and line discipline back.
struct TerminalGuard;

impl TerminalGuard {
    fn enter() -> Result<Self> {
        terminal::enable_raw_mode()?;
        let guard = Self;
        execute!(io::stdout(), EnterAlternateScreen, cursor::Hide)?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        let _ = execute!(io::stdout(), cursor::Show, LeaveAlternateScreen);
        let _ = terminal::disable_raw_mode();
    }
}

fn full_screen(collector: &mut Collector, args: &TopArgs) -> Result<()> {
    let _guard = TerminalGuard::enter()?;
    let mut terminal = Terminal::new(CrosstermBackend::new(io::stdout()))?;
    let mut display = Display::default();
    let mut sample = collector.collect()?;
    let mut refreshes = 1;
    let mut next = Instant::now() + args.interval;
    let mut redraw = true;
    loop {
        if redraw {
            terminal.draw(|frame| draw(frame, &sample, &display, args.interval))?;
            redraw = false;
        }
        if STOP.load(Ordering::Relaxed) {
            return Ok(());
        }
        let now = Instant::now();
        if now >= next {
            if args.iterations.is_some_and(|n| refreshes >= n) {
                return Ok(());
            }
            sample = collector.collect()?;
            refreshes += 1;
            next = now + args.interval;
            redraw = true;
            continue;
        }
        let ready = match event::poll((next - now).min(POLL_SLICE)) {
            // A signal arrived: the next turn looks at STOP.
            Err(err) if err.kind() == io::ErrorKind::Interrupted => false,
            other => other?,
        };
        if !ready {
            continue;
        }
        match event::read()? {
            Event::Key(key) if key.kind != KeyEventKind::Release => match key.code {
                // Raw mode turns Ctrl-C into a key, not a SIGINT.
                KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                    return Ok(())
                }
                KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                KeyCode::Char('s') => {
                    display.sort = display.sort.next();
                    redraw = true;
                }
                KeyCode::Char('c') => {
                    display.grouping = display.grouping.toggle();
                    redraw = true;
                }
                _ => {}
            },
            Event::Resize(..) => redraw = true,
            _ => {}
        }
    }
}

fn draw(frame: &mut ratatui::Frame, sample: &TopSample, display: &Display, interval: Duration) {
    let summary = view::summary(sample, display, interval);
    let [top, table, keys] = Layout::vertical([
        Constraint::Length(summary.len() as u16),
        Constraint::Min(2),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(
        Paragraph::new(summary.into_iter().map(Line::from).collect::<Vec<_>>()),
        top,
    );

    let (heading, rows) = view::table(sample, display, Some(frame.area().width as usize));
    let room = table.height.saturating_sub(1) as usize;
    let mut lines = vec![Line::styled(
        heading,
        Style::new().add_modifier(Modifier::REVERSED),
    )];
    if rows.is_empty() {
        lines.push(Line::from("no unreaped children"));
    } else if rows.len() > room {
        let shown = room.saturating_sub(1);
        lines.extend(rows[..shown].iter().cloned().map(Line::from));
        lines.push(Line::from(format!("… {} more", rows.len() - shown)));
    } else {
        lines.extend(rows.into_iter().map(Line::from));
    }
    frame.render_widget(Paragraph::new(lines), table);
    frame.render_widget(
        Paragraph::new(Line::styled(
            view::keys(display),
            Style::new().add_modifier(Modifier::DIM),
        )),
        keys,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn rate_counts_the_last_minute_of_known_exits() {
        let children = [(5 * S, false), (30 * S, false), (90 * S, false)];
        assert_eq!(
            per_minute(children.into_iter(), Duration::from_secs(1)),
            Some(2.0)
        );
        // An exit time unknown: measuring for the first minute, then left out.
        let unknown = children.into_iter().chain([(S, true)]);
        assert_eq!(per_minute(unknown.clone(), Duration::from_secs(20)), None);
        assert_eq!(per_minute(unknown, Duration::from_secs(60)), Some(2.0));
    }
}
