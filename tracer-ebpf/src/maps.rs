//! The maps the hooks share. Sizes here are defaults; userspace sets them from flags.

use core::intrinsics::{atomic_cxchg, atomic_xadd, atomic_xchg, AtomicOrdering::SeqCst};

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_NOEXIST},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use tracer_common::{
    lifetime_bucket, CgroupCounters, LifetimeHistogram, Loss, ProcessKey, WaitRecord, Zombie,
    ZombieSlot,
};

use crate::{diagnostics, losses::count_loss, settings::zombie_slots};

const EEXIST: i32 = 17;

/// Unreaped zombies, indexed by tgid (see `ZombieSlot`); userspace maps it to read and close
/// records without a system call each.
#[map]
static ZOMBIE_SLOTS: Array<ZombieSlot> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Unreaped zombies whose slot was taken, by process identity. A plain hash, not LRU: an LRU
/// would evict zombies silently when full, and a full map must be counted instead.
#[map]
static ZOMBIES: HashMap<ProcessKey, Zombie> = HashMap::with_max_entries(65536, 0);

/// Counters per cgroup, one copy for all CPUs: a per-CPU map would cost its size once per
/// possible CPU (about 100 MiB at 16384 cgroups on a 192-vCPU node). Every CPU adds to the
/// same words, atomically.
#[map]
static CGROUP_COUNTERS: HashMap<u64, CgroupCounters> = HashMap::with_max_entries(16384, 0);

/// Last wait per tgid. Userspace drops the entries of processes that are gone: a parent
/// waits many times, but most processes never wait, so the free hook does not look here.
#[map]
static WAITS: HashMap<u32, WaitRecord> = HashMap::with_max_entries(65536, 0);

/// Thread groups whose exit was counted, where `sched_process_exit` has no `group_dead`
/// (before 6.16): every thread that reaches the hook after the group's live count fell to zero
/// finds it zero, and only the first one's insert succeeds. The threads of a group get there
/// within microseconds of each other, so an LRU of a few thousand groups never forgets one
/// whose threads are still on their way.
#[map]
static EXITED_GROUPS: LruHashMap<ProcessKey, u8> = LruHashMap::with_max_entries(4096, 0);

#[map]
static LIFETIMES: PerCpuArray<LifetimeHistogram> = PerCpuArray::with_max_entries(1, 0);

/// A cgroup's counters in map memory that every CPU adds to.
pub struct SharedCounters(*mut CgroupCounters);

impl SharedCounters {
    pub fn fork(&self) {
        add_one(unsafe { &raw mut (*self.0).forks });
    }

    pub fn exit(&self) {
        add_one(unsafe { &raw mut (*self.0).exits });
    }

    pub fn zombie_created(&self) {
        add_one(unsafe { &raw mut (*self.0).zombies_created });
    }

    pub fn zombie_reaped(&self) {
        add_one(unsafe { &raw mut (*self.0).zombies_reaped });
    }
}

/// An atomic add whose result is unused: `BPF_XADD`, which every kernel takes (the fetching
/// forms need 5.12).
fn add_one(word: *mut u64) {
    unsafe { atomic_xadd::<u64, u64, { SeqCst }>(word, 1) };
}

/// Applies `update` to the counters of `cgroup_id`, creating them on first use.
pub fn update_cgroup(cgroup_id: u64, update: impl FnOnce(&SharedCounters)) {
    let counters = match CGROUP_COUNTERS.get_ptr_mut(cgroup_id) {
        Some(counters) => counters,
        None => {
            // Another CPU may create it first: then this insert fails and its entry is used.
            let _ =
                CGROUP_COUNTERS.insert(cgroup_id, CgroupCounters::default(), BPF_NOEXIST as u64);
            match CGROUP_COUNTERS.get_ptr_mut(cgroup_id) {
                Some(counters) => counters,
                None => {
                    count_loss(Loss::CgroupsMapFull);
                    diagnostics::cgroups_map_full(cgroup_id);
                    return;
                }
            }
        }
    };
    update(&SharedCounters(counters));
}

/// Compare-and-swap on a word of map memory (`BPF_CMPXCHG`, 5.12+); whether it swapped, and
/// the word's value before.
fn compare_and_swap(word: *mut u64, expected: u64, new: u64) -> (bool, u64) {
    let (before, swapped) =
        unsafe { atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(word, expected, new) };
    (swapped, before)
}

/// Stores with a full barrier (`BPF_XCHG`): what was written before is seen first.
fn publish(word: *mut u64, value: u64) {
    unsafe { atomic_xchg::<u64, { SeqCst }>(word, value) };
}

/// This process's slot, where the program may use the table and the kernel has it. Without
/// `SLOTS` the compare-and-swap code is not compiled into the program at all.
#[inline(always)]
fn slot_of<const SLOTS: bool>(key: &ProcessKey) -> Option<*mut ZombieSlot> {
    let slots = zombie_slots();
    if !SLOTS || slots == 0 {
        return None;
    }
    ZOMBIE_SLOTS.get_ptr_mut(key.slot(slots))
}

/// Records a new zombie unless the kernel already told us about it (several threads of a
/// group may each observe the moment it became reapable). Returns whether it was new.
/// `SLOTS`: the program may use the slot table (see `hooks`).
#[inline(always)]
pub fn insert_zombie<const SLOTS: bool>(key: &ProcessKey, zombie: &Zombie) -> bool {
    if let Some(slot) = slot_of::<SLOTS>(key) {
        let owner = key.owner();
        match compare_and_swap(unsafe { &raw mut (*slot).owner }, 0, owner) {
            (true, _) => {
                unsafe {
                    (*slot).key = *key;
                    (*slot).zombie = *zombie;
                }
                publish(unsafe { &raw mut (*slot).published }, owner);
                return true;
            }
            (false, current) if current == owner => return false,
            (false, _) => diagnostics::zombie_slot_taken(key.tgid),
        }
    }
    match ZOMBIES.insert(key, zombie, BPF_NOEXIST as u64) {
        Ok(()) => true,
        Err(err) if err == -EEXIST => false,
        Err(_) => {
            count_loss(Loss::ZombiesMapFull);
            diagnostics::zombies_map_full(key.tgid);
            false
        }
    }
}

/// Forgets a reaped process; returns its zombie record if it was one. `SLOTS`: as for
/// [`insert_zombie`].
#[inline(always)]
pub fn take_zombie<const SLOTS: bool>(key: &ProcessKey) -> Option<Zombie> {
    if let Some(slot) = slot_of::<SLOTS>(key) {
        let owner = key.owner();
        if unsafe { core::ptr::read_volatile(&raw const (*slot).owner) } == owner {
            // Only the side that takes it accounts for it: userspace may close the same
            // record concurrently. A record being rewritten is not published: userspace
            // closes it later.
            if !compare_and_swap(unsafe { &raw mut (*slot).published }, owner, 0).0 {
                return None;
            }
            let zombie = unsafe { core::ptr::read_volatile(&raw const (*slot).zombie) };
            publish(unsafe { &raw mut (*slot).owner }, 0);
            return Some(zombie);
        }
    }
    let zombie = unsafe { *ZOMBIES.get(key)? };
    // Only the remover accounts for it: userspace may close the same record concurrently.
    ZOMBIES.remove(key).ok()?;
    Some(zombie)
}

/// Whether this thread is the first to claim the exit of group `key`. A map that cannot take
/// the claim (no memory) lets it through: a rare double count rather than a lost exit.
pub fn claim_group_exit(key: &ProcessKey) -> bool {
    match EXITED_GROUPS.insert(key, 0, BPF_NOEXIST as u64) {
        Ok(()) => true,
        Err(err) => err != -EEXIST,
    }
}

pub fn record_lifetime(lifetime_ns: u64) {
    if let Some(histogram) = LIFETIMES.get_ptr_mut(0) {
        let histogram = unsafe { &mut *histogram };
        let bucket = lifetime_bucket(lifetime_ns);
        if let Some(slot) = histogram.buckets.get_mut(bucket) {
            *slot += 1;
        }
        histogram.count += 1;
        histogram.sum_ns += lifetime_ns;
    }
}

/// Notes that `process` waited at `now_ns`.
pub fn record_wait(process: &ProcessKey, now_ns: u64) {
    // A parent usually waits again and again: its own record is updated in place, which
    // spares the hash map's locked update.
    if let Some(record) = WAITS.get_ptr_mut(process.tgid) {
        let record = unsafe { &mut *record };
        if record.start_ticks == process.start_ticks {
            record.last_wait_ns = now_ns;
            return;
        }
    }
    let record = WaitRecord {
        start_ticks: process.start_ticks,
        last_wait_ns: now_ns,
    };
    if WAITS.insert(process.tgid, record, 0).is_err() {
        count_loss(Loss::WaitsMapFull);
        diagnostics::waits_map_full(process.tgid);
    }
}
