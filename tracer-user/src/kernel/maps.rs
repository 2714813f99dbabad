//! Reading and changing the programs' maps.

use std::collections::{BTreeMap, HashSet};

use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray, RingBuf};
use tracer_common::{
    names, CgroupCounters, LifetimeHistogram, ProcessKey, WaitRecord, Zombie, LIFETIME_BUCKETS,
    LOSS_KINDS,
};

use super::{batch, slots::Claim, Probes};

/// What became of a zombie offered to the kernel maps by [`Probes::add_zombie`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Added {
    Recorded,
    /// The kernel recorded it meanwhile.
    AlreadyKnown,
    /// The maps are full: the caller keeps it.
    NoRoom,
}

/// What the kernel side could not record, by cause (index: `tracer_common::Loss`).
pub type Losses = [u64; LOSS_KINDS as usize];

/// `BPF_NOEXIST` and `BPF_EXIST` update flags.
const BPF_NOEXIST: u64 = 1;
const BPF_EXIST: u64 = 2;

/// The outcome of a map operation, `None` where the entry was not there: the programs remove
/// entries at any time, so a missing one is never an error.
fn unless_missing<T>(result: Result<T, MapError>) -> Result<Option<T>, MapError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(MapError::SyscallError(err)) if err.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

impl Probes {
    fn map(&self, name: &str) -> Result<&Map> {
        self.ebpf
            .map(name)
            .with_context(|| format!("{name} map missing"))
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut Map> {
        self.ebpf
            .map_mut(name)
            .with_context(|| format!("{name} map missing"))
    }

    /// The event ring buffer (events flow only if `MapSizes::event_buffer` was set).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(names::EVENTS)
            .with_context(|| format!("{} map missing", names::EVENTS))?;
        Ok(RingBuf::try_from(map)?)
    }

    fn zombie_map(&self) -> Result<HashMap<&MapData, ProcessKey, Zombie>> {
        Ok(HashMap::try_from(self.map(names::ZOMBIES)?)?)
    }

    fn zombie_map_mut(&mut self) -> Result<HashMap<&mut MapData, ProcessKey, Zombie>> {
        Ok(HashMap::try_from(self.map_mut(names::ZOMBIES)?)?)
    }

    fn wait_map(&self) -> Result<HashMap<&MapData, u32, WaitRecord>> {
        Ok(HashMap::try_from(self.map(names::WAITS)?)?)
    }

    /// Every unreaped zombie the kernel side knows of, each once. Entries reaped during the
    /// walk may be missing or listed although gone; the next read corrects it.
    pub fn zombies(&self) -> Result<Vec<(ProcessKey, Zombie)>> {
        let mut zombies = self
            .slots
            .as_ref()
            .map(|slots| slots.entries())
            .unwrap_or_default();
        zombies.extend(
            batch::entries::<ProcessKey, Zombie>(self.map(names::ZOMBIES)?)
                .context("cannot read the ZOMBIES map")?,
        );
        Ok(zombies)
    }

    /// Adds a zombie the programs did not see (it predates them, or a map was full).
    pub fn add_zombie(&mut self, key: ProcessKey, zombie: Zombie) -> Result<Added> {
        if let Some(slots) = &self.slots {
            // One record per process: not in its slot if the hash map has it already.
            if unless_missing(self.zombie_map()?.get(&key, 0))
                .context("cannot read the ZOMBIES map")?
                .is_some()
            {
                return Ok(Added::AlreadyKnown);
            }
            match slots.claim(&key, &zombie) {
                Claim::Claimed => return Ok(Added::Recorded),
                Claim::AlreadyThere => return Ok(Added::AlreadyKnown),
                Claim::Taken => {}
            }
        }
        match self.zombie_map_mut()?.insert(key, zombie, BPF_NOEXIST) {
            Ok(()) => Ok(Added::Recorded),
            Err(MapError::SyscallError(err)) => match err.io_error.raw_os_error() {
                Some(libc::EEXIST) => Ok(Added::AlreadyKnown),
                // A hash map at max_entries refuses with E2BIG (ENOMEM if preallocation failed).
                Some(libc::E2BIG | libc::ENOMEM) => Ok(Added::NoRoom),
                _ => Err(err).context("cannot add to the ZOMBIES map"),
            },
            Err(err) => Err(err).context("cannot add to the ZOMBIES map"),
        }
    }

    /// Rewrites a known zombie (its parent changed). No-op if it was reaped meanwhile.
    pub fn update_zombie(&mut self, key: ProcessKey, zombie: Zombie) -> Result<()> {
        if self
            .slots
            .as_ref()
            .is_some_and(|slots| slots.rewrite(&key, &zombie))
        {
            return Ok(());
        }
        unless_missing(self.zombie_map_mut()?.insert(key, zombie, BPF_EXIST))
            .context("cannot update the ZOMBIES map")?;
        Ok(())
    }

    /// Drops a record that `/proc` proves wrong. Returns whether it was still there.
    pub fn remove_zombie(&mut self, key: &ProcessKey) -> Result<bool> {
        if let Some(taken) = self.slots.as_ref().and_then(|slots| slots.take(key)) {
            return Ok(taken);
        }
        let removed = unless_missing(self.zombie_map_mut()?.remove(key))
            .context("cannot remove from the ZOMBIES map")?;
        Ok(removed.is_some())
    }

    /// Counters per cgroup id.
    pub fn cgroup_counters(&self) -> Result<BTreeMap<u64, CgroupCounters>> {
        Ok(
            batch::entries::<u64, CgroupCounters>(self.map(names::CGROUP_COUNTERS)?)
                .context("cannot read the CGROUP_COUNTERS map")?
                .into_iter()
                .collect(),
        )
    }

    /// Drops the counters of a cgroup (it was removed; its series have expired).
    pub fn forget_cgroup(&mut self, id: u64) -> Result<()> {
        let mut map: HashMap<_, u64, CgroupCounters> =
            HashMap::try_from(self.map_mut(names::CGROUP_COUNTERS)?)?;
        unless_missing(map.remove(&id)).context("cannot clean the CGROUP_COUNTERS map")?;
        Ok(())
    }

    /// Entries in the WAITS map (a walk: call it rarely).
    pub fn wait_entries(&self) -> Result<usize> {
        Ok(self.wait_map()?.keys().filter(Result::is_ok).count())
    }

    /// The exit -> reap lifetime histogram, summed over CPUs.
    pub fn lifetimes(&self) -> Result<LifetimeHistogram> {
        let array: PerCpuArray<_, LifetimeHistogram> =
            PerCpuArray::try_from(self.map(names::LIFETIMES)?)?;
        let mut total = LifetimeHistogram::default();
        for cpu in array.get(&0, 0)?.iter() {
            for bucket in 0..LIFETIME_BUCKETS {
                total.buckets[bucket] += cpu.buckets[bucket];
            }
            total.count += cpu.count;
            total.sum_ns += cpu.sum_ns;
        }
        Ok(total)
    }

    pub fn losses(&self) -> Result<Losses> {
        let array: PerCpuArray<_, u64> = PerCpuArray::try_from(self.map(names::LOSSES)?)?;
        let mut losses = [0; LOSS_KINDS as usize];
        for (kind, slot) in losses.iter_mut().enumerate() {
            *slot = array.get(&(kind as u32), 0)?.iter().sum();
        }
        Ok(losses)
    }

    /// Drops remembered waits of processes not in `alive` (their free event may never come).
    pub fn forget_waits_except(&mut self, alive: &HashSet<ProcessKey>) -> Result<()> {
        let mut map: HashMap<_, u32, WaitRecord> = HashMap::try_from(self.map_mut(names::WAITS)?)?;
        let gone: Vec<u32> = map
            .iter()
            .filter_map(Result::ok)
            .filter(|(tgid, record)| !alive.contains(&ProcessKey::new(*tgid, record.start_ticks)))
            .map(|(tgid, _)| tgid)
            .collect();
        for tgid in gone {
            unless_missing(map.remove(&tgid)).context("cannot clean the WAITS map")?;
        }
        Ok(())
    }

    /// When the process `key` last entered `wait()`, if the kernel saw it.
    pub fn last_wait(&self, key: &ProcessKey) -> Result<Option<u64>> {
        let record = unless_missing(self.wait_map()?.get(&key.tgid, 0))
            .context("cannot read the WAITS map")?;
        Ok(record
            .filter(|record| record.start_ticks == key.start_ticks)
            .map(|record| record.last_wait_ns))
    }
}
