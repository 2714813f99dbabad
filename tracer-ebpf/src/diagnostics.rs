//! Rare events a person debugging a node wants to read: a full map, a slot collision, a failed
//! kernel read, a record that contradicts what the programs expect. They are written with
//! aya-log, and userspace forwards them into its own log at debug level.
//!
//! Free when nothing unusual happens: each is a call on a path taken only then, and out of
//! line, so the hooks' usual path is compiled as it would be without them. Unless userspace
//! logs at debug level it sets aya-log's level global to off, a read-only value the verifier
//! folds, and the statements never write.

use aya_log_ebpf::debug;

// aya-log's macros take the program's context but do not use it; these run deep in helpers
// that have none, so the unit value stands in.
//
// Not `#[cold]`: that moves them to `.text.unlikely`, where the first starts at address 0 like
// the first function of `.text`, and aya 0.14 links subprograms by address alone, so a call to
// one would run the other.

#[inline(never)]
pub fn zombies_map_full(tgid: u32) {
    debug!(&(), "ZOMBIES map full: zombie {} not recorded", tgid);
}

#[inline(never)]
pub fn zombie_slot_taken(tgid: u32) {
    debug!(
        &(),
        "zombie {}: its slot holds another process's, recorded in the ZOMBIES map", tgid
    );
}

#[inline(never)]
pub fn cgroups_map_full(cgroup_id: u64) {
    debug!(
        &(),
        "CGROUP_COUNTERS map full: cgroup {} not counted", cgroup_id
    );
}

#[inline(never)]
pub fn waits_map_full(tgid: u32) {
    debug!(&(), "WAITS map full: wait of {} not recorded", tgid);
}

#[inline(never)]
pub fn kernel_read_failed(error: i64) {
    debug!(&(), "bpf_probe_read_kernel failed: {}", error);
}

#[inline(never)]
pub fn null_kernel_pointer(offset: usize) {
    debug!(&(), "null kernel pointer at offset {}", offset);
}

#[inline(never)]
pub fn freed_before_exit(tgid: u32, early_ns: u64) {
    debug!(
        &(),
        "zombie {} freed {} ns before the exit it recorded", tgid, early_ns
    );
}
