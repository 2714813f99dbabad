//! The state engine: what the kernel maps say, checked against `/proc`.
//!
//! The kernel programs keep the set of unreaped zombies and the per-cgroup counters. This
//! module turns them into per-parent views and keeps them true:
//! - [`StateEngine::refresh`] looks up each recorded zombie in `/proc` (cost grows with the
//!   number of zombies, not of processes): one whose `/proc` entry is gone was released, so
//!   its record is closed and counted reaped here if the kernel's `sched_process_free` did not
//!   do it first (it sometimes never fires); one whose parent changed was reparented (the
//!   kernel moves zombies to a new reaper when a parent dies, and no tracepoint says so).
//! - [`StateEngine::reconcile`] scans all of `/proc` for zombies the programs never saw (they
//!   predate the programs, or a map was full) and adds them, dated by the scheduler where
//!   the kernel tells when they last ran (see [`procfs::last_ran`]), else with their age a
//!   lower bound from the moment they were found. Those the kernel maps have no room for are
//!   kept here and followed the same way: a full map is a counted loss, never a blind spot
//!   for what stays unreaped. A zombie made and reaped between two scans while the map is
//!   full is in neither count: only the loss counter tells that some may have been.
//!
//! Per cgroup, a zombie counts as created when the kernel sees it exit or, if it did not,
//! when it is first seen in `/proc`, and as reaped when its record is closed, whichever side
//! closes it; both are charged to the cgroup its parent was in when it was created. So
//! `created - reaped` is the number still unreaped that the cgroup made. A `/proc` entry that
//! cannot be read is skipped and counted, never an error.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
};

use anyhow::Result;
use serde::Serialize;
use tracer_common::{
    CgroupCounters, Loss, ProcessKey, Zombie, ZOMBIE_EXIT_FROM_SCHEDULER,
    ZOMBIE_EXIT_STATUS_UNKNOWN, ZOMBIE_SEEN_LATE,
};

use crate::{
    cgroup::{self, CgroupHierarchy, HierarchyChoice, HierarchyKind},
    clock::monotonic_ns,
    kernel::{preflight::Cleared, Added, Losses, MapSizes, Probes},
    procfs::{self, CgroupLine, ProcStat},
};

/// How long a zombie record may precede its `Z` in /proc (it is made as the process starts
/// exiting): generous against a loaded machine, short against a wrong record.
const RECORD_LEADS_PROC_NS: u64 = 5_000_000_000;

/// What userspace changed in the kernel's records, since start.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct RepairTotals {
    /// Full `/proc` scans.
    pub reconciles: u64,
    /// Zombies found in `/proc` that the kernel side had no record of.
    pub added: u64,
    /// Reaps noticed in `/proc` because the kernel's free event never came.
    pub reaped_late: u64,
    /// Records `/proc` contradicted (the process is alive, or not reapable) and were dropped.
    pub healed: u64,
    /// Zombies whose parent changed (it died; they moved to a new reaper).
    pub reparented: u64,
    /// Zombies the kernel maps had no room for, followed from `/proc` alone.
    pub overflowed: u64,
    /// `/proc` entries that could not be read or parsed, skipped (an exiting process is not
    /// one of them: it is gone).
    pub skipped: u64,
}

/// Where a zombie's age comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AgeSource {
    /// The programs saw it exit.
    Exit,
    /// It predates them; the scheduler's last run of it, which is its exit, to the tick.
    Scheduler,
    /// Unknown exit (no scheduler debug info): counted from when it was first seen, a lower
    /// bound.
    FirstSeen,
}

/// One unreaped child.
#[derive(Clone, Debug)]
pub struct ChildState {
    pub key: ProcessKey,
    pub zombie: Zombie,
    pub age_ns: u64,
    /// Cgroup of its current parent, which the gauges follow (`zombie.parent_cgroup_id` is
    /// the parent's when it was created, which the counters stay charged to).
    pub parent_cgroup_id: u64,
}

impl ChildState {
    pub fn pid(&self) -> u32 {
        self.key.tgid
    }

    pub fn comm(&self) -> &[u8] {
        let comm = &self.zombie.comm;
        &comm[..comm.iter().position(|&b| b == 0).unwrap_or(comm.len())]
    }

    /// True when the exit time is unknown, so the age counts from when it was first noticed.
    pub fn age_is_lower_bound(&self) -> bool {
        self.age_source() == AgeSource::FirstSeen
    }

    pub fn age_source(&self) -> AgeSource {
        let flags = self.zombie.flags;
        if flags & ZOMBIE_SEEN_LATE == 0 {
            AgeSource::Exit
        } else if flags & ZOMBIE_EXIT_FROM_SCHEDULER != 0 {
            AgeSource::Scheduler
        } else {
            AgeSource::FirstSeen
        }
    }

    /// How it ended; None where the kernel did not show us.
    pub fn ending(&self) -> Option<Ending> {
        self.zombie.wait_status().map(Ending::from_wait_status)
    }

    /// `exit(code)` status, or None if a signal killed it or it is unknown.
    pub fn exit_code(&self) -> Option<i32> {
        self.ending().and_then(Ending::exit_code)
    }

    /// Signal that killed it, if one did (None too where unknown).
    pub fn killed_by(&self) -> Option<i32> {
        self.ending().and_then(Ending::signal)
    }
}

/// A process with unreaped children.
#[derive(Clone, Debug)]
pub struct ParentState {
    pub key: ProcessKey,
    /// Empty when the parent is gone (its children are about to be reparented).
    pub comm: Vec<u8>,
    pub cgroup: Option<String>,
    /// Time since it last entered `wait()`; None if not seen since the tracer started.
    pub last_wait_age_ns: Option<u64>,
    /// How long `wait()` calls have been watched; None when they are not (no eBPF).
    pub waits_watched_ns: Option<u64>,
    /// Oldest first.
    pub children: Vec<ChildState>,
}

impl ParentState {
    pub fn pid(&self) -> u32 {
        self.key.tgid
    }

    pub fn oldest(&self) -> Option<&ChildState> {
        self.children.first()
    }

    /// Puts the children in the order [`Self::children`] promises: oldest first.
    pub fn order_children(&mut self) {
        self.children
            .sort_by(|a, b| b.age_ns.cmp(&a.age_ns).then(a.key.cmp(&b.key)));
    }
}

/// The order every view ranks parents in: most unreaped children first, then the oldest
/// zombie, then the pid.
pub fn rank_parents(parents: &mut [ParentState]) {
    parents.sort_by(|a, b| {
        b.children
            .len()
            .cmp(&a.children.len())
            .then_with(|| {
                b.oldest()
                    .map(|c| c.age_ns)
                    .cmp(&a.oldest().map(|c| c.age_ns))
            })
            .then(a.key.cmp(&b.key))
    });
}

/// Counters of one cgroup.
#[derive(Clone, Debug)]
pub struct CgroupState {
    pub id: u64,
    pub path: Option<String>,
    pub counters: CgroupCounters,
}

/// A change userspace noticed that no tracepoint reports, for `reapwatch trace`.
#[derive(Clone, Debug)]
pub enum Change {
    /// The zombie's parent died; it now belongs to `zombie.parent`.
    Reparented {
        child: ProcessKey,
        zombie: Zombie,
        from: u32,
    },
    /// The zombie was released, and its free event never came.
    ReapedLate { child: ProcessKey, zombie: Zombie },
}

pub struct StateEngine {
    probes: Probes,
    proc_root: PathBuf,
    /// The hierarchy cgroup ids refer to; None on a host without cgroupfs.
    cgroups: Option<CgroupHierarchy>,
    /// What userspace adds to the kernel's per-cgroup counters: zombies first seen in `/proc`
    /// (created when first seen) and the reaps it closed.
    counted_here: HashMap<u64, CgroupCounters>,
    /// Zombies no kernel map had room for, followed from `/proc` alone.
    overflow: HashMap<ProcessKey, Zombie>,
    /// Cgroup of the current parent of each zombie that was reparented.
    reparented_to: HashMap<ProcessKey, u64>,
    totals: RepairTotals,
    /// Kept only when asked for (`record_changes`), drained by the caller.
    changes: Option<Vec<Change>>,
    /// When the programs were attached: waits are watched since.
    loaded_at_ns: u64,
}

/// A `/proc/<pid>/stat` read that failed is not a process that is gone.
enum Proc {
    Stat(ProcStat),
    Gone,
    Unreadable,
}

impl StateEngine {
    /// Picks the cgroup hierarchy to count by, then loads and attaches the programs. The
    /// programs see the whole node, so the engine reads the node's `/proc` and cgroupfs.
    pub fn load(cleared: &Cleared, sizes: MapSizes, hierarchy: HierarchyChoice) -> Result<Self> {
        let cgroups = CgroupHierarchy::choose(Path::new("/sys/fs/cgroup"), hierarchy)?;
        let kind = cgroups
            .as_ref()
            .map_or(HierarchyKind::Unified, CgroupHierarchy::kind);
        Ok(Self {
            probes: Probes::load(cleared, sizes, kind)?,
            proc_root: PathBuf::from("/proc"),
            cgroups,
            counted_here: HashMap::new(),
            overflow: HashMap::new(),
            reparented_to: HashMap::new(),
            totals: RepairTotals::default(),
            changes: None,
            loaded_at_ns: monotonic_ns(),
        })
    }

    pub fn probes_mut(&mut self) -> &mut Probes {
        &mut self.probes
    }

    /// Starts keeping [`Change`]s for [`StateEngine::drain_changes`].
    pub fn record_changes(&mut self) {
        self.changes.get_or_insert_with(Vec::new);
    }

    pub fn drain_changes(&mut self) -> Vec<Change> {
        self.changes
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn note(&mut self, change: Change) {
        if let Some(changes) = &mut self.changes {
            changes.push(change);
        }
    }

    pub fn hierarchy(&self) -> Option<&CgroupHierarchy> {
        self.cgroups.as_ref()
    }

    pub fn probes(&self) -> &Probes {
        &self.probes
    }

    pub fn totals(&self) -> RepairTotals {
        self.totals
    }

    /// What could not be recorded, by cause: the kernel's losses, plus the zombies userspace
    /// found no room for in the kernel maps.
    pub fn losses(&self) -> Result<Losses> {
        let mut losses = self.probes.losses()?;
        losses[Loss::ZombiesMapFull as usize] += self.totals.overflowed;
        Ok(losses)
    }

    /// Zombies followed from `/proc` alone because the kernel maps were full.
    pub fn overflowed_zombies(&self) -> usize {
        self.overflow.len()
    }

    fn read_stat(&mut self, pid: u32) -> Proc {
        match procfs::read_stat(&self.proc_root, pid) {
            Ok(Some(stat)) => Proc::Stat(stat),
            Ok(None) => Proc::Gone,
            Err(err) => {
                log::debug!("skipped: {err:#}");
                self.totals.skipped += 1;
                Proc::Unreadable
            }
        }
    }

    /// Checks every recorded zombie against `/proc` and returns those still unreaped, with
    /// their current parent.
    pub fn refresh(&mut self) -> Result<Vec<(ProcessKey, Zombie)>> {
        let now = monotonic_ns();
        let mut live = Vec::new();
        let mut parent_starts: HashMap<u32, Option<u64>> = HashMap::new();
        let in_kernel = self
            .probes
            .zombies()?
            .into_iter()
            .map(|(k, z)| (k, z, true));
        let overflow: Vec<_> = self.overflow.iter().map(|(&k, &z)| (k, z, false)).collect();
        for (key, mut zombie, kernel) in in_kernel.chain(overflow) {
            let stat = match self.read_stat(key.tgid) {
                Proc::Stat(stat) if stat.start_ticks == key.start_ticks => stat,
                // Unreadable this time: kept as it was.
                Proc::Unreadable => {
                    live.push((key, zombie));
                    continue;
                }
                Proc::Stat(_) | Proc::Gone => {
                    // Released: reaped while nobody closed the record.
                    if self.close(&key, &zombie, kernel)? {
                        self.totals.reaped_late += 1;
                        self.note(Change::ReapedLate { child: key, zombie });
                    }
                    continue;
                }
            };
            if !stat.is_unreaped_zombie() {
                // The programs record a zombie as its last thread starts exiting, moments
                // before /proc shows it: a young record leads /proc, an old one is wrong.
                if now.saturating_sub(zombie.exit_ns) < RECORD_LEADS_PROC_NS {
                    live.push((key, zombie));
                } else if self.close(&key, &zombie, kernel)? {
                    self.totals.healed += 1;
                }
                continue;
            }
            let parent_now = match parent_starts.get(&stat.ppid) {
                Some(&start) => start,
                None => {
                    let start = match self.read_stat(stat.ppid) {
                        Proc::Stat(parent) => Some(parent.start_ticks),
                        Proc::Gone => Some(0),
                        Proc::Unreadable => None,
                    };
                    parent_starts.insert(stat.ppid, start);
                    start
                }
            };
            // A parent that cannot be read is not taken for a new one.
            let Some(parent_start) = parent_now else {
                live.push((key, zombie));
                continue;
            };
            if stat.ppid != zombie.parent.tgid || parent_start != zombie.parent.start_ticks {
                let from = zombie.parent.tgid;
                zombie.parent = ProcessKey::new(stat.ppid, parent_start);
                // The counters stay charged where it was created; the gauges follow it.
                if let Some(id) = self.cgroup_id(stat.ppid) {
                    self.reparented_to.insert(key, id);
                }
                if kernel {
                    self.probes.update_zombie(key, zombie)?;
                } else {
                    self.overflow.insert(key, zombie);
                }
                self.totals.reparented += 1;
                self.note(Change::Reparented {
                    child: key,
                    zombie,
                    from,
                });
            }
            live.push((key, zombie));
        }
        if !self.reparented_to.is_empty() {
            let keys: HashSet<ProcessKey> = live.iter().map(|(k, _)| *k).collect();
            self.reparented_to.retain(|k, _| keys.contains(k));
        }
        Ok(live)
    }

    /// Drops a record and, if this side won it (the kernel may close it concurrently),
    /// counts it reaped where it was created.
    fn close(&mut self, key: &ProcessKey, zombie: &Zombie, in_kernel: bool) -> Result<bool> {
        let won = if in_kernel {
            self.probes.remove_zombie(key)?
        } else {
            self.overflow.remove(key).is_some()
        };
        if won {
            self.counted_here
                .entry(zombie.parent_cgroup_id)
                .or_default()
                .zombies_reaped += 1;
        }
        Ok(won)
    }

    /// Scans all of `/proc` and records the unreaped zombies the kernel side does not know;
    /// each counts as created when first seen. Returns how many it added.
    pub fn reconcile(&mut self) -> Result<u64> {
        let now = monotonic_ns();
        let scan = procfs::scan(&self.proc_root)?;
        self.totals.skipped += scan.skipped;
        let processes = scan.processes;
        let by_pid: HashMap<u32, &ProcStat> = processes.iter().map(|p| (p.pid, p)).collect();
        let mut known: HashSet<ProcessKey> =
            self.probes.zombies()?.into_iter().map(|(k, _)| k).collect();
        known.extend(self.overflow.keys());
        let unknown: Vec<&ProcStat> = processes
            .iter()
            .filter(|p| {
                p.is_unreaped_zombie() && !known.contains(&ProcessKey::new(p.pid, p.start_ticks))
            })
            .collect();
        let exited = exit_times(&self.proc_root, unknown.iter().copied());
        let mut parent_cgroups: HashMap<u32, u64> = HashMap::new();
        let mut added = 0;
        for stat in unknown {
            let key = ProcessKey::new(stat.pid, stat.start_ticks);
            // Narrow the window in which a zombie reaped since the scan would be re-added
            // (refresh drops such a record anyway).
            match self.read_stat(stat.pid) {
                Proc::Stat(s) if s.start_ticks == stat.start_ticks && s.is_unreaped_zombie() => {}
                _ => continue,
            }
            let parent = ProcessKey::new(
                stat.ppid,
                by_pid.get(&stat.ppid).map_or(0, |p| p.start_ticks),
            );
            // A leaking parent has thousands of zombies: its cgroup is read once.
            let parent_cgroup_id = match parent_cgroups.get(&parent.tgid) {
                Some(&id) => id,
                None => {
                    let id = self.cgroup_id(parent.tgid).unwrap_or(0);
                    parent_cgroups.insert(parent.tgid, id);
                    id
                }
            };
            let zombie = Zombie {
                cgroup_id: self.cgroup_id(stat.pid).unwrap_or(0),
                parent_cgroup_id,
                ..found_in_proc(stat, parent, now, exited.get(&stat.pid).copied())
            };
            match self.probes.add_zombie(key, zombie)? {
                Added::Recorded => {}
                Added::AlreadyKnown => continue,
                Added::NoRoom => {
                    self.overflow.insert(key, zombie);
                    self.totals.overflowed += 1;
                }
            }
            self.counted_here
                .entry(zombie.parent_cgroup_id)
                .or_default()
                .zombies_created += 1;
            added += 1;
        }
        let alive: HashSet<ProcessKey> = processes
            .iter()
            .map(|p| ProcessKey::new(p.pid, p.start_ticks))
            .collect();
        self.probes.forget_waits_except(&alive)?;
        self.totals.added += added;
        self.totals.reconciles += 1;
        Ok(added)
    }

    /// The `/proc/<pid>/cgroup` lines of a process; None when it is gone or unreadable (then
    /// counted as skipped).
    fn read_cgroups(&mut self, pid: u32) -> Option<Vec<CgroupLine>> {
        procfs::read_cgroups(&self.proc_root, pid)
            .map_err(|err| {
                log::debug!("skipped: {err:#}");
                self.totals.skipped += 1;
            })
            .ok()
            .flatten()
    }

    /// The id of a process's cgroup in the counted hierarchy, as the programs would read it.
    pub fn cgroup_id(&mut self, pid: u32) -> Option<u64> {
        let lines = self.read_cgroups(pid)?;
        let hierarchy = self.cgroups.as_mut()?;
        let line = hierarchy.line(&lines)?;
        let path = hierarchy.host_path(&line.path);
        hierarchy.id_of(&path)
    }

    /// Every parent with unreaped children, most children first.
    pub fn parents(&mut self) -> Result<Vec<ParentState>> {
        let now = monotonic_ns();
        let mut groups: BTreeMap<ProcessKey, Vec<ChildState>> = BTreeMap::new();
        for (key, zombie) in self.refresh()? {
            groups.entry(zombie.parent).or_default().push(ChildState {
                key,
                age_ns: now.saturating_sub(zombie.exit_ns),
                parent_cgroup_id: self
                    .reparented_to
                    .get(&key)
                    .copied()
                    .unwrap_or(zombie.parent_cgroup_id),
                zombie,
            });
        }
        let mut parents = Vec::with_capacity(groups.len());
        for (key, children) in groups {
            let comm = match self.read_stat(key.tgid) {
                Proc::Stat(s) if s.start_ticks == key.start_ticks => s.comm,
                _ => Vec::new(),
            };
            let cgroup = self
                .read_cgroups(key.tgid)
                .and_then(|lines| cgroup::select_host_path(self.cgroups.as_mut(), &lines));
            let last_wait_age_ns = self
                .probes
                .last_wait(&key)?
                .map(|at| now.saturating_sub(at));
            let mut parent = ParentState {
                key,
                comm,
                cgroup,
                last_wait_age_ns,
                waits_watched_ns: Some(now.saturating_sub(self.loaded_at_ns)),
                children,
            };
            parent.order_children();
            parents.push(parent);
        }
        rank_parents(&mut parents);
        Ok(parents)
    }

    /// The path of a cgroup id while the cgroup exists.
    pub fn cgroup_path(&mut self, id: u64) -> Option<String> {
        self.cgroups.as_mut().and_then(|h| h.path_of(id))
    }

    /// Forgets a removed cgroup's counters, in the kernel and here.
    pub fn forget_cgroup(&mut self, id: u64) -> Result<()> {
        self.counted_here.remove(&id);
        self.probes.forget_cgroup(id)
    }

    /// Counters of every cgroup the programs charged (plus what userspace counted), with
    /// the path while the cgroup exists.
    pub fn cgroups(&mut self) -> Result<Vec<CgroupState>> {
        let mut counters = self.probes.cgroup_counters()?;
        for (&id, here) in &self.counted_here {
            let total = counters.entry(id).or_default();
            total.zombies_created += here.zombies_created;
            total.zombies_reaped += here.zombies_reaped;
        }
        Ok(counters
            .into_iter()
            .map(|(id, counters)| CgroupState {
                id,
                path: self.cgroups.as_mut().and_then(|h| h.path_of(id)),
                counters,
            })
            .collect())
    }
}

/// A record of a zombie found in `/proc` at `now` (monotonic ns), cgroups unset: its exit
/// time from the scheduler where the kernel tells it (`exited`, see `procfs::last_ran`), else
/// `now`, a lower bound of its age.
pub fn found_in_proc(stat: &ProcStat, parent: ProcessKey, now: u64, exited: Option<u64>) -> Zombie {
    let mut comm = [0u8; 16];
    let len = stat.comm.len().min(15);
    comm[..len].copy_from_slice(&stat.comm[..len]);
    let (exit_ns, mut flags) = match exited {
        Some(at) => (at.min(now), ZOMBIE_SEEN_LATE | ZOMBIE_EXIT_FROM_SCHEDULER),
        None => (now, ZOMBIE_SEEN_LATE),
    };
    if stat.exit_status.is_none() {
        flags |= ZOMBIE_EXIT_STATUS_UNKNOWN;
    }
    Zombie {
        parent,
        exit_ns,
        exit_status: stat.exit_status.unwrap_or(0),
        exit_signal: stat.exit_signal.unwrap_or(0),
        flags,
        comm,
        ..Zombie::default()
    }
}

/// When each zombie of `zombies` exited, where the scheduler tells (see `procfs::last_ran`).
pub fn exit_times<'a>(
    proc_root: &Path,
    zombies: impl IntoIterator<Item = &'a ProcStat>,
) -> HashMap<u32, u64> {
    let on_cpus: Vec<(u32, u32)> = zombies
        .into_iter()
        .filter_map(|z| Some((z.pid, z.processor?)))
        .collect();
    procfs::last_ran(proc_root, &on_cpus)
}

/// How a process ended, from its wait status (the kernel's `exit_code`, `/proc`'s field 52).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    Exited(i32),
    Killed(i32),
}

impl Ending {
    pub fn from_wait_status(status: i32) -> Self {
        match status & 0x7f {
            0 => Self::Exited((status >> 8) & 0xff),
            signal => Self::Killed(signal),
        }
    }

    /// `exit(code)`'s code, or None if a signal killed it.
    pub fn exit_code(self) -> Option<i32> {
        match self {
            Self::Exited(code) => Some(code),
            Self::Killed(_) => None,
        }
    }

    /// The signal that killed it, if one did.
    pub fn signal(self) -> Option<i32> {
        match self {
            Self::Exited(_) => None,
            Self::Killed(signal) => Some(signal),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Ending;

    #[test]
    fn wait_statuses() {
        assert_eq!(Ending::from_wait_status(7 << 8), Ending::Exited(7));
        assert_eq!(Ending::from_wait_status(9), Ending::Killed(9));
        // A core dump's flag is not part of the signal.
        assert_eq!(Ending::from_wait_status(0x80 | 11), Ending::Killed(11));
        assert_eq!(Ending::Killed(9).exit_code(), None);
        assert_eq!(Ending::Exited(0).signal(), None);
    }
}
