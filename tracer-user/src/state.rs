//! The state engine: what the kernel maps say, checked against `/proc`.
//!
//! The kernel programs keep the set of unreaped zombies and the counters; this module turns
//! them into per-parent views, follows zombies whose parent died (the kernel moves them to a
//! new reaper and no tracepoint says so), and heals the map from `/proc`: zombies that
//! predate the programs or were lost to a full map are added, records `/proc` contradicts
//! twice in a row are dropped.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
};

use anyhow::Result;
use serde::Serialize;
use tracer_common::{CgroupCounters, ProcessKey, Zombie, ZOMBIE_SEEN_LATE};

use crate::{
    cgroup::{self, UnifiedHierarchy},
    kernel::{monotonic_ns, Tracer},
    procfs::{self, ProcStat},
};

/// What reconciliations changed, since start.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ReconcileTotals {
    pub runs: u64,
    /// Zombies found in `/proc` that the kernel side had no record of.
    pub added: u64,
    /// Records dropped because `/proc` showed no such zombie, twice.
    pub healed: u64,
    /// Zombies whose parent changed (it died; they moved to a new reaper).
    pub reparented: u64,
}

/// One unreaped child.
#[derive(Clone, Debug)]
pub struct ChildState {
    pub key: ProcessKey,
    pub zombie: Zombie,
    pub age_ns: u64,
}

impl ChildState {
    pub fn pid(&self) -> u32 {
        self.key.tgid
    }

    pub fn comm(&self) -> &[u8] {
        let comm = &self.zombie.comm;
        &comm[..comm.iter().position(|&b| b == 0).unwrap_or(comm.len())]
    }

    /// True when the exit was not seen, so the age counts from when it was first noticed.
    pub fn age_is_lower_bound(&self) -> bool {
        self.zombie.flags & ZOMBIE_SEEN_LATE != 0
    }

    /// `exit(code)` status, or None if a signal killed it.
    pub fn exit_code(&self) -> Option<i32> {
        let status = self.zombie.exit_status;
        (status & 0x7f == 0).then_some((status >> 8) & 0xff)
    }

    /// Signal that killed it, if one did.
    pub fn killed_by(&self) -> Option<i32> {
        let signal = self.zombie.exit_status & 0x7f;
        (signal != 0).then_some(signal)
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
}

/// Counters of one cgroup.
#[derive(Clone, Debug)]
pub struct CgroupState {
    pub id: u64,
    pub path: Option<String>,
    pub counters: CgroupCounters,
}

pub struct StateEngine {
    tracer: Tracer,
    proc_root: PathBuf,
    cgroups: UnifiedHierarchy,
    /// Records `/proc` contradicted at the previous reconciliation.
    suspects: HashSet<ProcessKey>,
    totals: ReconcileTotals,
}

impl StateEngine {
    pub fn new(tracer: Tracer, proc_root: &Path, sys_fs_cgroup: &Path) -> Self {
        Self {
            tracer,
            proc_root: proc_root.to_path_buf(),
            cgroups: UnifiedHierarchy::discover(sys_fs_cgroup),
            suspects: HashSet::new(),
            totals: ReconcileTotals::default(),
        }
    }

    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }

    pub fn totals(&self) -> ReconcileTotals {
        self.totals
    }

    /// Makes the kernel's zombie set agree with `/proc`. A record `/proc` contradicts is only
    /// dropped the second time in a row: a zombie reaped moments ago leaves `/proc` one RCU
    /// grace period before `sched_process_free` removes it, and removing it here would lose
    /// that reap from the counters.
    pub fn reconcile(&mut self) -> Result<ReconcileTotals> {
        let before = self.totals;
        let now = monotonic_ns();
        let processes = procfs::scan(&self.proc_root)?;
        let by_pid: HashMap<u32, &ProcStat> = processes.iter().map(|p| (p.pid, p)).collect();
        let truth: HashMap<ProcessKey, &ProcStat> = processes
            .iter()
            .filter(|p| p.is_unreaped_zombie())
            .map(|p| (ProcessKey::new(p.pid, p.start_ticks), p))
            .collect();
        let known = self.tracer.zombies()?;

        let mut suspects = HashSet::new();
        for (key, zombie) in &known {
            let Some(stat) = truth.get(key) else {
                if self.suspects.contains(key) {
                    if self.tracer.remove_zombie(key)? {
                        self.totals.healed += 1;
                    }
                } else {
                    suspects.insert(*key);
                }
                continue;
            };
            let parent = parent_key(stat.ppid, &by_pid);
            if parent != zombie.parent {
                self.tracer.update_zombie(*key, Zombie { parent, ..*zombie })?;
                self.totals.reparented += 1;
            }
        }
        self.suspects = suspects;

        let known: HashSet<ProcessKey> = known.iter().map(|(key, _)| *key).collect();
        for (key, stat) in &truth {
            if known.contains(key) {
                continue;
            }
            // Narrow the window in which a zombie reaped since the scan would be re-added.
            let still = procfs::read_stat(&self.proc_root, stat.pid)?;
            if !still.is_some_and(|s| s.start_ticks == stat.start_ticks && s.is_unreaped_zombie()) {
                continue;
            }
            let zombie = self.late_zombie(stat, parent_key(stat.ppid, &by_pid), now)?;
            if self.tracer.add_zombie(*key, zombie)? {
                self.totals.added += 1;
            }
        }
        self.totals.runs += 1;
        Ok(ReconcileTotals {
            runs: 1,
            added: self.totals.added - before.added,
            healed: self.totals.healed - before.healed,
            reparented: self.totals.reparented - before.reparented,
        })
    }

    /// A record for a zombie the programs did not see exit: its age counts from now.
    fn late_zombie(&self, stat: &ProcStat, parent: ProcessKey, now: u64) -> Result<Zombie> {
        let mut comm = [0u8; 16];
        let len = stat.comm.len().min(15);
        comm[..len].copy_from_slice(&stat.comm[..len]);
        Ok(Zombie {
            parent,
            exit_ns: now,
            cgroup_id: self.unified_cgroup_id(stat.pid)?.unwrap_or(0),
            parent_cgroup_id: self.unified_cgroup_id(parent.tgid)?.unwrap_or(0),
            exit_status: stat.exit_status.unwrap_or(0),
            exit_signal: stat.exit_signal.unwrap_or(0),
            flags: ZOMBIE_SEEN_LATE,
            comm,
            _pad: 0,
        })
    }

    fn unified_cgroup_id(&self, pid: u32) -> Result<Option<u64>> {
        let Some(lines) = procfs::read_cgroups(&self.proc_root, pid)? else {
            return Ok(None);
        };
        Ok(lines
            .iter()
            .find(|l| l.is_unified())
            .and_then(|l| self.cgroups.id_of(&l.path)))
    }

    /// Every parent with unreaped children, most children first. Reads `/proc` only for
    /// those parents (and for the children of parents that died), never a full scan.
    pub fn parents(&mut self) -> Result<Vec<ParentState>> {
        let now = monotonic_ns();
        let mut parent_stats: HashMap<u32, Option<ProcStat>> = HashMap::new();
        let mut groups: BTreeMap<ProcessKey, Vec<ChildState>> = BTreeMap::new();
        for (key, mut zombie) in self.tracer.zombies()? {
            if !self.is_alive(zombie.parent, &mut parent_stats)? {
                if let Some(parent) = self.current_parent(&key)? {
                    if parent != zombie.parent {
                        zombie.parent = parent;
                        self.tracer.update_zombie(key, zombie)?;
                        self.totals.reparented += 1;
                    }
                }
            }
            groups.entry(zombie.parent).or_default().push(ChildState {
                key,
                age_ns: now.saturating_sub(zombie.exit_ns),
                zombie,
            });
        }

        let mut parents = Vec::with_capacity(groups.len());
        for (key, mut children) in groups {
            children.sort_by(|a, b| b.age_ns.cmp(&a.age_ns).then(a.key.cmp(&b.key)));
            let stat = self.stat_cached(key.tgid, &mut parent_stats)?;
            let comm = stat.map(|s| s.comm).unwrap_or_default();
            let cgroup = procfs::read_cgroups(&self.proc_root, key.tgid)?
                .and_then(|lines| cgroup::select_path(&lines).map(str::to_owned));
            let last_wait_age_ns = self
                .tracer
                .last_wait(&key)?
                .map(|at| now.saturating_sub(at));
            parents.push(ParentState {
                key,
                comm,
                cgroup,
                last_wait_age_ns,
                children,
            });
        }
        parents.sort_by(|a, b| {
            b.children
                .len()
                .cmp(&a.children.len())
                .then_with(|| b.oldest().map(|c| c.age_ns).cmp(&a.oldest().map(|c| c.age_ns)))
                .then(a.key.cmp(&b.key))
        });
        Ok(parents)
    }

    fn stat_cached(
        &self,
        pid: u32,
        cache: &mut HashMap<u32, Option<ProcStat>>,
    ) -> Result<Option<ProcStat>> {
        if let Some(stat) = cache.get(&pid) {
            return Ok(stat.clone());
        }
        let stat = procfs::read_stat(&self.proc_root, pid)?;
        cache.insert(pid, stat.clone());
        Ok(stat)
    }

    fn is_alive(
        &self,
        process: ProcessKey,
        cache: &mut HashMap<u32, Option<ProcStat>>,
    ) -> Result<bool> {
        Ok(self
            .stat_cached(process.tgid, cache)?
            .is_some_and(|s| s.start_ticks == process.start_ticks && !s.is_exited()))
    }

    /// The parent `/proc` shows now for a zombie, if it is still there.
    fn current_parent(&self, child: &ProcessKey) -> Result<Option<ProcessKey>> {
        let Some(stat) = procfs::read_stat(&self.proc_root, child.tgid)? else {
            return Ok(None);
        };
        if stat.start_ticks != child.start_ticks {
            return Ok(None);
        }
        let parent_start = procfs::read_stat(&self.proc_root, stat.ppid)?
            .map(|p| p.start_ticks)
            .unwrap_or(0);
        Ok(Some(ProcessKey::new(stat.ppid, parent_start)))
    }

    /// Counters of every cgroup the programs charged, with the path when it still exists.
    pub fn cgroups(&mut self) -> Result<Vec<CgroupState>> {
        let counters = self.tracer.cgroup_counters()?;
        Ok(counters
            .into_iter()
            .map(|(id, counters)| CgroupState {
                id,
                path: self.cgroups.path_of(id),
                counters,
            })
            .collect())
    }
}

fn parent_key(ppid: u32, by_pid: &HashMap<u32, &ProcStat>) -> ProcessKey {
    ProcessKey::new(ppid, by_pid.get(&ppid).map_or(0, |p| p.start_ticks))
}
