//! The kernel side: loading the programs ([`loader`]), reading and changing their maps
//! ([`maps`]), and the clocks their records use ([`clock`]).

pub mod btf;
pub mod clock;
mod loader;
mod maps;
pub mod preflight;
mod programs;
mod slots;

use anyhow::{Context, Result};
use aya::Ebpf;
use aya_log::EbpfLogger;

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
    /// The programs' rare-event records, when the log shows debug lines.
    kernel_log: Option<EbpfLogger<&'static dyn log::Log>>,
}

impl Probes {
    pub fn hooks(&self) -> &[Hook] {
        &self.hooks
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

    /// Writes the records the programs logged since the last call to the process's log, at
    /// debug level. Called from the thread that owns the programs: reading the log's ring
    /// buffer when it is empty costs two loads, and no task exists only for it.
    pub fn forward_kernel_log(&mut self) {
        if let Some(kernel_log) = &mut self.kernel_log {
            kernel_log.flush();
        }
    }
}
