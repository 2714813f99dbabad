//! Types shared by the kernel programs (`tracer-ebpf`) and userspace (`tracer-user`).
//!
//! Everything here is `#[repr(C)]` with explicit padding: the same bytes are written by the
//! kernel side and read by userspace, so there is exactly one definition of each layout.
#![no_std]

/// `SIGCHLD` on every architecture reapwatch builds for (x86_64, aarch64).
pub const SIGCHLD: i32 = 17;
/// `SIG_IGN` as a handler value.
pub const SIG_IGN: u64 = 1;
/// `SA_NOCLDWAIT` in `sa_flags`.
pub const SA_NOCLDWAIT: u64 = 2;

/// Names of the programs' maps and globals in the object file, for userspace to find them.
///
/// The eBPF side cannot spell its declarations with these: aya's `#[map(name = ...)]` takes a
/// string literal only, and a global's symbol is its identifier. Userspace's unit tests check
/// the built object against every name here instead.
pub mod names {
    pub const ZOMBIE_SLOTS: &str = "ZOMBIE_SLOTS";
    pub const ZOMBIES: &str = "ZOMBIES";
    pub const CGROUP_COUNTERS: &str = "CGROUP_COUNTERS";
    pub const WAITS: &str = "WAITS";
    pub const EXITED_GROUPS: &str = "EXITED_GROUPS";
    pub const LIFETIMES: &str = "LIFETIMES";
    pub const LOSSES: &str = "LOSSES";
    pub const EVENTS: &str = "EVENTS";
    /// Global: [`crate::KernelOffsets`].
    pub const OFFSETS: &str = "OFFSETS";
    /// Global: [`crate::ProgramSettings`].
    pub const SETTINGS: &str = "SETTINGS";
}

/// Byte offsets of the kernel struct members the programs read.
///
/// Rust eBPF has no CO-RE relocations, so userspace reads these from the running kernel's BTF
/// and hands them to the programs as a read-only global before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_exit_code: u32,
    pub task_exit_signal: u32,
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_real_parent: u32,
    pub task_group_leader: u32,
    pub task_signal: u32,
    pub task_comm: u32,
    pub task_start_boottime: u32,
    pub task_cgroups: u32,
    pub task_ptrace: u32,
    pub task_sighand: u32,
    /// `sighand_struct::action[SIGCHLD - 1].sa.sa_handler`.
    pub sighand_sigchld_handler: u32,
    /// `sighand_struct::action[SIGCHLD - 1].sa.sa_flags`.
    pub sighand_sigchld_flags: u32,
    /// `signal_struct::live` (an `atomic_t`: its counter is at this offset).
    pub signal_live: u32,
    pub css_set_dfl_cgrp: u32,
    /// `css_set::subsys[pids_cgrp_id]`: the task's css in the v1 `pids` hierarchy.
    pub css_set_pids_css: u32,
    /// `cgroup_subsys_state::cgroup`.
    pub css_cgroup: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
}

/// How the programs behave on this host, set by userspace before load beside the offsets
/// (a read-only global too). `ready == 0` (the zeroed default compiled into the object) makes
/// every program a no-op.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramSettings {
    pub ready: u32,
    /// Which hierarchy cgroup ids (and so every per-cgroup counter) refer to: see
    /// [`CGROUP_UNIFIED`], [`CGROUP_V1_PIDS`].
    pub cgroup_hierarchy: u32,
    /// Nanoseconds per `USER_HZ` tick, to express start times the way `/proc/<pid>/stat` does.
    pub ns_per_user_hz_tick: u32,
    /// Entries of the `ZOMBIE_SLOTS` table (a power of two), or 0 where the kernel has no
    /// BPF compare-and-swap (before 5.12): every zombie then goes to the hash map.
    pub zombie_slots: u32,
    /// Optional helpers the running kernel has ([`HELPER_CURRENT_TASK_BTF`]). The programs
    /// call one only when its bit is set; the verifier drops the other branch as dead code,
    /// so older kernels never see the call.
    pub helpers: u32,
    /// Non-zero for `reapwatch trace` only: other commands emit no events.
    pub trace_events: u32,
    /// Non-zero where `sched_process_exit` passes `group_dead` (6.16+): the one thread that
    /// took the group's live count to zero. Elsewhere the exit hook dedupes the threads that
    /// find it at zero (`EXITED_GROUPS`).
    pub exit_group_dead: u32,
}

/// `bpf_get_current_task_btf` (5.11+): the current task as a typed pointer.
pub const HELPER_CURRENT_TASK_BTF: u32 = 1 << 0;

/// Cgroup ids are the task's unified (v2) cgroup: hosts that run containers on cgroup v2.
pub const CGROUP_UNIFIED: u32 = 0;
/// Cgroup ids are the task's cgroup in the v1 `pids` hierarchy: cgroup v1 and hybrid hosts,
/// where every process's unified cgroup is the root and would tell containers apart poorly.
pub const CGROUP_V1_PIDS: u32 = 1;

/// Identity of a process that survives pid reuse: the tgid plus its start time in clock ticks
/// since boot (field 22 of `/proc/<pid>/stat`), so userspace can build the same key from `/proc`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessKey {
    pub tgid: u32,
    pub _pad: u32,
    pub start_ticks: u64,
}

impl ProcessKey {
    pub const fn new(tgid: u32, start_ticks: u64) -> Self {
        Self {
            tgid,
            _pad: 0,
            start_ticks,
        }
    }

    /// The key as one word, for [`ZombieSlot::owner`]: never 0 (tgids start at 1). Start
    /// times are kept modulo 2^32 ticks (497 days at 100 Hz): two processes with the same
    /// tgid alive that far apart, both unreaped, is not a case.
    pub const fn owner(&self) -> u64 {
        (self.tgid as u64) << 32 | (self.start_ticks & 0xffff_ffff)
    }

    /// Index of this process's slot in a table of `slots` (a power of two).
    pub const fn slot(&self, slots: u32) -> u32 {
        self.tgid & (slots - 1)
    }
}

/// One entry of the `ZOMBIE_SLOTS` table: the zombies of processes whose tgid maps to this
/// index. Most zombies live here, written and taken with atomic instructions on a memory-mapped
/// array, which costs a fraction of a hash map update. A zombie whose slot is taken goes to the
/// `ZOMBIES` hash map instead.
///
/// Protocol, the same for the programs and for userspace (over the mapping), with `o` the
/// key's [`ProcessKey::owner`]:
/// - claim: compare-and-swap `owner` from 0 to `o`; write `key` and `zombie`; set
///   `published` to `o`.
/// - take (reaped, or proven gone): compare-and-swap `published` from `o` to 0. Only the side
///   that wins counts the reap; it then sets `owner` to 0, freeing the slot. Swapping from
///   `o`, not from "ready", means a slot freed and claimed again by another process in
///   between is never taken by mistake.
/// - rewrite (the parent changed): take, write, set `published` to `o` again.
///
/// A reader uses a slot only while `owner` and `published` both equal its key's owner, before
/// and after copying it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZombieSlot {
    pub owner: u64,
    pub published: u64,
    pub key: ProcessKey,
    pub zombie: Zombie,
}

/// `Zombie::flags`: the exit time is unknown; `exit_ns` is when the zombie was first seen
/// (found in `/proc` rather than by the kernel programs), so its age is a lower bound.
pub const ZOMBIE_SEEN_LATE: u32 = 1;
/// `Zombie::flags`, with [`ZOMBIE_SEEN_LATE`]: `exit_ns` is not when it was first seen but when
/// the scheduler last ran it, which for a zombie is its exit (to the tick): the age is real.
pub const ZOMBIE_EXIT_FROM_SCHEDULER: u32 = 2;
/// `Zombie::flags`: `exit_status` is unknown (found in `/proc` by a reader the kernel would
/// not show it to, which reads 0 there), not a real status.
pub const ZOMBIE_EXIT_STATUS_UNKNOWN: u32 = 4;

/// One process that exited and has not been reaped (value of the `ZOMBIES` map).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Zombie {
    pub parent: ProcessKey,
    /// `CLOCK_MONOTONIC` nanoseconds of the exit, to the kernel tick (see `ZOMBIE_SEEN_LATE`).
    pub exit_ns: u64,
    /// Cgroup id (see `ProgramSettings::cgroup_hierarchy`) of the zombie itself.
    pub cgroup_id: u64,
    /// Cgroup id of its parent when it was created: the cgroup its creation and its reap are
    /// charged to, even after it is reparented.
    pub parent_cgroup_id: u64,
    /// Raw wait status: `(code << 8) | signal`, as `waitpid` would return it.
    pub exit_status: i32,
    /// Signal the parent is sent; anything but SIGCHLD is a leak shape (`wait()` skips it).
    pub exit_signal: i32,
    pub flags: u32,
    pub comm: [u8; 16],
    pub _pad: u32,
}

impl Zombie {
    /// `exit_status`, or None where it is unknown (see [`ZOMBIE_EXIT_STATUS_UNKNOWN`]).
    pub const fn wait_status(&self) -> Option<i32> {
        if self.flags & ZOMBIE_EXIT_STATUS_UNKNOWN == 0 {
            Some(self.exit_status)
        } else {
            None
        }
    }
}

/// Per cgroup event counters (value of the per-CPU `CGROUP_COUNTERS` map, keyed by cgroup id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupCounters {
    /// New processes (not threads) forked by tasks of this cgroup.
    pub forks: u64,
    /// Processes whose last thread exited in this cgroup.
    pub exits: u64,
    /// Zombies whose parent was in this cgroup when they were created.
    pub zombies_created: u64,
    /// Those zombies, reaped.
    pub zombies_reaped: u64,
}

/// Buckets of the exit -> reap lifetime histogram: bucket `i > 0` counts lifetimes in
/// `[2^(i-1), 2^i)` microseconds, bucket 0 those under 1 us, the last one everything longer.
pub const LIFETIME_BUCKETS: usize = 40;

/// Node-wide histogram of zombie lifetimes (the single value of the per-CPU `LIFETIMES` array).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LifetimeHistogram {
    pub buckets: [u64; LIFETIME_BUCKETS],
    pub count: u64,
    pub sum_ns: u64,
}

impl Default for LifetimeHistogram {
    fn default() -> Self {
        Self {
            buckets: [0; LIFETIME_BUCKETS],
            count: 0,
            sum_ns: 0,
        }
    }
}

#[cfg(feature = "user")]
impl LifetimeHistogram {
    /// The finite buckets as a Prometheus histogram has them: upper bound in seconds and the
    /// count of lifetimes at most that long. The last bucket has no bound: it is the count.
    pub fn cumulative_buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        self.buckets[..LIFETIME_BUCKETS - 1]
            .iter()
            .enumerate()
            .scan(0, |cumulative, (i, count)| {
                *cumulative += count;
                Some(((1u64 << i) as f64 / 1e6, *cumulative))
            })
    }
}

/// Bucket index of a lifetime, see [`LIFETIME_BUCKETS`]. Branchy on purpose: the eBPF target
/// has no count-leading-zeros instruction.
#[inline(always)]
pub fn lifetime_bucket(lifetime_ns: u64) -> usize {
    let mut us = lifetime_ns / 1000;
    let mut bucket = 0usize;
    if us >= 1 << 32 {
        us >>= 32;
        bucket += 32;
    }
    if us >= 1 << 16 {
        us >>= 16;
        bucket += 16;
    }
    if us >= 1 << 8 {
        us >>= 8;
        bucket += 8;
    }
    if us >= 1 << 4 {
        us >>= 4;
        bucket += 4;
    }
    if us >= 1 << 2 {
        us >>= 2;
        bucket += 2;
    }
    if us >= 1 << 1 {
        us >>= 1;
        bucket += 1;
    }
    bucket += us as usize;
    if bucket >= LIFETIME_BUCKETS {
        LIFETIME_BUCKETS - 1
    } else {
        bucket
    }
}

/// Last `wait()`-family call of a process (value of the `WAITS` map, keyed by tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WaitRecord {
    pub start_ticks: u64,
    /// `CLOCK_MONOTONIC` of the last wait, to the kernel tick.
    pub last_wait_ns: u64,
}

/// Declares [`Loss`] with its variants numbered from 0 in order, and [`Loss::ALL`] listing
/// them, so the size of the `LOSSES` array follows from the enum.
macro_rules! loss_kinds {
    ($($(#[$attr:meta])* $variant:ident,)*) => {
        /// Index into the per-CPU `LOSSES` array: what the kernel side could not record.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Loss {
            $($(#[$attr])* $variant,)*
        }

        impl Loss {
            /// Every kind, in index order.
            pub const ALL: [Loss; [$(Loss::$variant),*].len()] = [$(Loss::$variant),*];
        }
    };
}

loss_kinds! {
    ZombiesMapFull,
    CgroupsMapFull,
    WaitsMapFull,
    /// A kernel pointer the programs follow was null, or a `bpf_probe_read_kernel` failed.
    KernelRead,
    /// `reapwatch trace` fell behind: the event ring buffer was full.
    EventsDropped,
}

/// Entries of the `LOSSES` array.
pub const LOSS_KINDS: u32 = Loss::ALL.len() as u32;

/// What an [`Event`] reports.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A new process (`pid`) forked by `ppid`.
    Fork = 0,
    /// The last thread of process `pid` started exiting.
    Exit = 1,
    /// Process `pid` became an unreaped child of `ppid`.
    Zombie = 2,
    /// Zombie `pid` was reaped, `age_ns` after it exited.
    Reap = 3,
    /// Process `pid` entered `wait()`.
    Wait = 4,
}

impl EventKind {
    pub fn from_u32(kind: u32) -> Option<Self> {
        Some(match kind {
            0 => Self::Fork,
            1 => Self::Exit,
            2 => Self::Zombie,
            3 => Self::Reap,
            4 => Self::Wait,
            _ => return None,
        })
    }
}

/// One lifecycle event for `reapwatch trace`, written to the `EVENTS` ring buffer only while
/// tracing is switched on (`ProgramSettings::trace_events`), so other commands pay one load
/// for it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `CLOCK_MONOTONIC` nanoseconds.
    pub time_ns: u64,
    /// Exit to reap, for `Reap`.
    pub age_ns: u64,
    pub cgroup_id: u64,
    pub kind: u32,
    pub pid: u32,
    pub ppid: u32,
    /// Raw wait status, for `Exit`, `Zombie` and `Reap`.
    pub exit_status: i32,
    pub comm: [u8; 16],
}

// The ABI, checked at compile time on both sides: no implicit padding anywhere (every field
// counted), and loss kinds numbered as `LOSSES` is indexed.
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<ProcessKey>() == 16);
    assert!(size_of::<Zombie>() == 16 + 8 * 3 + 4 * 3 + 16 + 4);
    assert!(size_of::<ZombieSlot>() == 8 + 8 + 16 + size_of::<Zombie>());
    assert!(size_of::<KernelOffsets>() == 20 * 4);
    assert!(size_of::<ProgramSettings>() == 7 * 4);
    assert!(size_of::<CgroupCounters>() == 4 * 8);
    assert!(size_of::<LifetimeHistogram>() == (LIFETIME_BUCKETS + 2) * 8);
    assert!(size_of::<WaitRecord>() == 2 * 8);
    assert!(size_of::<Event>() == 3 * 8 + 4 * 4 + 16);
    let mut i = 0;
    while i < Loss::ALL.len() {
        assert!(Loss::ALL[i] as usize == i);
        i += 1;
    }
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]` plain integers with explicit padding fields.
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::ProgramSettings {}
    unsafe impl aya::Pod for super::ProcessKey {}
    unsafe impl aya::Pod for super::Zombie {}
    unsafe impl aya::Pod for super::ZombieSlot {}
    unsafe impl aya::Pod for super::CgroupCounters {}
    unsafe impl aya::Pod for super::LifetimeHistogram {}
    unsafe impl aya::Pod for super::WaitRecord {}
    unsafe impl aya::Pod for super::Event {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "user")]
    #[test]
    fn cumulative_buckets_leave_the_overflow_to_the_count() {
        let mut histogram = LifetimeHistogram::default();
        histogram.buckets[0] = 1;
        histogram.buckets[3] = 2;
        histogram.buckets[LIFETIME_BUCKETS - 1] = 5;
        assert_eq!(histogram.cumulative_buckets().count(), LIFETIME_BUCKETS - 1);
        let mut buckets = [(0.0, 0); LIFETIME_BUCKETS - 1];
        for (slot, bucket) in buckets.iter_mut().zip(histogram.cumulative_buckets()) {
            *slot = bucket;
        }
        assert_eq!(buckets[0], (1e-6, 1));
        assert_eq!(buckets[2], (4e-6, 1));
        assert_eq!(buckets[3], (8e-6, 3));
        assert_eq!(buckets[LIFETIME_BUCKETS - 2].1, 3);
    }

    #[test]
    fn lifetime_buckets_are_log2_microseconds() {
        assert_eq!(lifetime_bucket(0), 0);
        assert_eq!(lifetime_bucket(999), 0);
        assert_eq!(lifetime_bucket(1_000), 1);
        assert_eq!(lifetime_bucket(1_999), 1);
        assert_eq!(lifetime_bucket(2_000), 2);
        assert_eq!(lifetime_bucket(3_999), 2);
        assert_eq!(lifetime_bucket(4_000), 3);
        // 1 s = 1e6 us lies in [2^19, 2^20)
        assert_eq!(lifetime_bucket(1_000_000_000), 20);
        assert_eq!(lifetime_bucket(u64::MAX), LIFETIME_BUCKETS - 1);
    }
}
