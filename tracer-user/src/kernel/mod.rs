//! The kernel side: loading the programs ([`loader`]) and reading and changing their maps
//! ([`maps`]).

mod batch;
pub mod btf;
mod loader;
mod maps;
pub mod preflight;
mod programs;
mod slots;

use anyhow::{Context, Result};
use aya::Ebpf;
use aya_log::EbpfLogger;
use tracer_common::{ProgramSettings, CGROUP_V1_PIDS, HELPER_CURRENT_TASK_BTF};

use self::slots::SlotTable;
pub use self::{
    loader::MapSizes,
    maps::{Added, Losses},
};

/// One attached program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    pub program: &'static str,
    pub tracepoint: &'static str,
}

/// Which of the programs' kernel-dependent paths this kernel takes; the VM matrix reports
/// them per kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KernelPaths {
    /// `slots+hash`: the lock-free slot table first (BPF compare-and-swap, 5.12+), the hash
    /// map for collisions; `hash`: the hash map alone.
    pub zombie_store: &'static str,
    /// `task_btf`: `bpf_get_current_task_btf` (5.11+); `probe_read`: `bpf_get_current_task`
    /// and reads through `bpf_probe_read_kernel`.
    pub current_task: &'static str,
    /// The hierarchy whose cgroup ids key the per-cgroup counters: `unified` or `v1_pids`.
    pub cgroup_ids: &'static str,
    /// How one exit per process is told: `group_dead` (the tracepoint's argument, 6.16+) or
    /// `first_claim` (the first thread to find the group's live count at zero).
    pub group_exit: &'static str,
}

impl KernelPaths {
    fn of(settings: &ProgramSettings) -> Self {
        Self {
            zombie_store: if settings.zombie_slots > 0 {
                "slots+hash"
            } else {
                "hash"
            },
            current_task: if settings.helpers & HELPER_CURRENT_TASK_BTF != 0 {
                "task_btf"
            } else {
                "probe_read"
            },
            cgroup_ids: if settings.cgroup_hierarchy == CGROUP_V1_PIDS {
                "v1_pids"
            } else {
                "unified"
            },
            group_exit: if settings.exit_group_dead != 0 {
                "group_dead"
            } else {
                "first_claim"
            },
        }
    }
}

/// A program and how often the kernel skipped it.
#[derive(Clone, Debug)]
pub struct HookStats {
    pub hook: Hook,
    pub recursion_misses: u64,
}

/// reapwatch's programs, loaded and attached, and their maps. Dropping it detaches
/// everything: nothing is pinned, so no link or map outlives the process.
pub struct Probes {
    ebpf: Ebpf,
    hooks: Vec<Hook>,
    /// The zombie slot table, where the kernel has one (5.12+).
    slots: Option<SlotTable>,
    paths: KernelPaths,
    /// The programs' rare-event records, when the log shows debug lines.
    kernel_log: Option<EbpfLogger<&'static dyn log::Log>>,
}

impl Probes {
    pub fn hooks(&self) -> &[Hook] {
        &self.hooks
    }

    pub fn paths(&self) -> KernelPaths {
        self.paths
    }

    pub fn hook_stats(&self) -> Result<Vec<HookStats>> {
        self.hooks
            .iter()
            .map(|hook| {
                let program = self
                    .ebpf
                    .program(hook.program)
                    .context("program vanished")?;
                Ok(HookStats {
                    hook: hook.clone(),
                    recursion_misses: programs::recursion_misses(program.fd()?)?,
                })
            })
            .collect()
    }

    /// Runs of the programs the kernel skipped (one already running on the CPU), all hooks.
    pub fn recursion_misses(&self) -> Result<u64> {
        Ok(self.hook_stats()?.iter().map(|h| h.recursion_misses).sum())
    }

    /// Writes the records the programs logged since the last call to the process's log, at
    /// debug level. Called from the thread that owns the programs: reading the log's ring
    /// buffer when it is empty costs two loads, and no task exists only for it.
    pub fn forward_kernel_log(&mut self) {
        if let Some(kernel_log) = &mut self.kernel_log {
            kernel_log.flush();
        }
    }
}
