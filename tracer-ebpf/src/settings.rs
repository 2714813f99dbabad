//! The `SETTINGS` global: how userspace configured the programs for this host.

use tracer_common::{ProgramSettings, CGROUP_V1_PIDS};

/// Patched by userspace before load (`EbpfLoader::override_global`); all zero means "not
/// configured", and every hook then returns at once.
#[unsafe(no_mangle)]
static SETTINGS: ProgramSettings = ProgramSettings {
    ready: 0,
    cgroup_hierarchy: 0,
    ns_per_user_hz_tick: 0,
    zombie_slots: 0,
    helpers: 0,
    trace_events: 0,
    exit_group_dead: 0,
};

/// One setting. The volatile read keeps the compiler from folding the zeroed default.
macro_rules! setting {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&raw const SETTINGS.$field) }
    };
}

pub fn configured() -> bool {
    setting!(ready) != 0
}

/// Whether `reapwatch trace` asked for events.
pub fn tracing() -> bool {
    setting!(trace_events) != 0
}

/// Entries of the zombie slot table; 0 when the kernel cannot use it.
pub fn zombie_slots() -> u32 {
    setting!(zombie_slots)
}

/// Whether `sched_process_exit` has its `group_dead` argument (6.16+).
pub fn exit_has_group_dead() -> bool {
    setting!(exit_group_dead) != 0
}

pub fn has_helper(bit: u32) -> bool {
    setting!(helpers) & bit != 0
}

pub fn ns_per_user_hz_tick() -> u64 {
    setting!(ns_per_user_hz_tick) as u64
}

/// Whether cgroup ids are taken in the v1 `pids` hierarchy rather than the unified one.
pub fn cgroups_from_v1_pids() -> bool {
    setting!(cgroup_hierarchy) == CGROUP_V1_PIDS
}
