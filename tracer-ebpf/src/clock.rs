//! Time, read as rarely as the records allow.
//!
//! `bpf_ktime_get_ns()` costs about 280 ns on some virtual machines (the benchmark's), more
//! than the rest of a hook. Zombie ages, lifetimes and waits matter in milliseconds to days,
//! and a lifetime already ends at `sched_process_free`, an RCU grace period (milliseconds)
//! after the reap; so they take the time of the first read in the current kernel tick on this
//! CPU, which jiffies (a plain read) tell apart.

use aya_ebpf::{
    helpers::{bpf_jiffies64, bpf_ktime_get_ns},
    macros::map,
    maps::PerCpuArray,
};

/// This CPU's clock reading and the tick it was taken in.
#[repr(C)]
struct TickTime {
    jiffies: u64,
    ns: u64,
}

#[map]
static TICK_TIME: PerCpuArray<TickTime> = PerCpuArray::with_max_entries(1, 0);

/// `CLOCK_MONOTONIC`, exact: for trace events.
pub fn now_ns() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

/// `CLOCK_MONOTONIC` at most one tick ago, read once a tick per CPU.
pub fn coarse_now_ns() -> u64 {
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(cached) = TICK_TIME.get_ptr_mut(0) else {
        return now_ns();
    };
    // A hook that interrupts this one (the free hook runs in softirqs) may read the cache
    // between the two stores: `ns` goes first, so a matching `jiffies` always comes with a
    // reading from its tick.
    unsafe {
        if core::ptr::read_volatile(&raw const (*cached).jiffies) != jiffies {
            let ns = now_ns();
            core::ptr::write_volatile(&raw mut (*cached).ns, ns);
            core::ptr::write_volatile(&raw mut (*cached).jiffies, jiffies);
            return ns;
        }
        core::ptr::read_volatile(&raw const (*cached).ns)
    }
}
