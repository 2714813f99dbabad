//! Loading the kernel programs and reading their maps.

pub mod btf;
pub mod preflight;
mod programs;
mod slots;

use std::{collections::BTreeMap, path::Path};

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::BtfTracePoint,
    Ebpf, EbpfLoader,
};
use tracer_common::{
    CgroupCounters, KernelOffsets, LifetimeHistogram, ProcessKey, ProgramSettings, WaitRecord,
    Zombie, LIFETIME_BUCKETS, LOSS_KINDS,
};

use self::{
    btf::KernelBtf,
    slots::{Claim, SlotTable},
};
use crate::cgroup::HierarchyKind;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/reapwatch-ebpf"));

/// Capacity of the kernel maps. A full map loses records, and the loss is counted.
#[derive(Clone, Copy, Debug)]
pub struct MapSizes {
    /// Unreaped zombies tracked at once (node-wide).
    pub zombies: u32,
    /// cgroups with counters.
    pub cgroups: u32,
    /// Processes whose last `wait()` is remembered.
    pub waits: u32,
    /// Bytes of the event ring buffer of `reapwatch trace`; 0 switches events off.
    pub event_buffer: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            zombies: 65536,
            cgroups: 16384,
            waits: 65536,
            event_buffer: 0,
        }
    }
}

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

/// What became of a zombie offered to the kernel maps by [`Tracer::add_zombie`].
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

/// The loaded, attached programs and their maps. Dropping it detaches everything: nothing is
/// pinned, so no link or map outlives the process.
pub struct Tracer {
    ebpf: Ebpf,
    hooks: Vec<Hook>,
    /// The zombie slot table, where the kernel has one (5.12+).
    slots: Option<SlotTable>,
}

impl Tracer {
    /// Loads and attaches the programs; per-cgroup counters will be keyed by cgroup ids of
    /// `hierarchy`.
    pub fn load(sizes: MapSizes, hierarchy: HierarchyKind) -> Result<Self> {
        preflight::check_all()?;
        // Offsets first, from types decoded on demand; aya then decodes all of the kernel's
        // BTF, twice (to load the object, and to find each tracepoint), one at a time.
        let btf = KernelBtf::from_file(Path::new(preflight::VMLINUX_BTF))?;
        let offsets = btf.kernel_offsets(hierarchy)?;
        let release = preflight::kernel_release()?;
        let settings = ProgramSettings {
            zombie_slots: slots::slots_for(
                sizes.zombies,
                preflight::parse_release(&release).unwrap_or_default(),
            ),
            trace_events: u32::from(sizes.event_buffer > 0),
            ..btf.program_settings(nsec_per_tick()?, hierarchy)
        };
        Self::load_with(&offsets, &settings, sizes)
    }

    /// The same programs on the same tracepoints, left unconfigured: each returns at its
    /// first check. The benchmark's baseline for what measuring a program run costs.
    pub fn load_unconfigured() -> Result<Self> {
        preflight::check_all()?;
        Self::load_with(
            &KernelOffsets::default(),
            &ProgramSettings::default(),
            MapSizes::default(),
        )
    }

    fn load_with(
        offsets: &KernelOffsets,
        settings: &ProgramSettings,
        sizes: MapSizes,
    ) -> Result<Self> {
        let hooks = [
            ("sched_process_fork", "sched_process_fork"),
            ("sched_process_exit", "sched_process_exit"),
            ("sched_process_wait", "sched_process_wait"),
            ("sched_process_free", "sched_process_free"),
        ]
        .map(|(program, tracepoint)| Hook {
            program,
            tracepoint,
        });

        // A ring buffer is a power-of-two number of pages.
        let ring_bytes = sizes.event_buffer.max(4096).next_power_of_two();
        let mut ebpf = EbpfLoader::new()
            .override_global("OFFSETS", offsets, true)
            .override_global("SETTINGS", settings, true)
            .map_max_entries("EVENTS", ring_bytes)
            .map_max_entries("ZOMBIE_SLOTS", settings.zombie_slots.max(1))
            .map_max_entries("ZOMBIES", sizes.zombies)
            .map_max_entries("CGROUP_COUNTERS", sizes.cgroups)
            .map_max_entries("WAITS", sizes.waits)
            .load(OBJECT)
            .map_err(|err| anyhow!("cannot load the eBPF object: {}", first_line(&err)))?;
        let btf = aya::Btf::from_sys_fs().context("cannot read kernel BTF")?;
        for hook in &hooks {
            let program: &mut BtfTracePoint = ebpf
                .program_mut(hook.program)
                .with_context(|| format!("program {} missing from the object", hook.program))?
                .try_into()?;
            program.load(hook.tracepoint, &btf).map_err(|err| {
                anyhow!("cannot load program {}: {}", hook.program, first_line(&err))
            })?;
            program.attach().map_err(|err| {
                anyhow!(
                    "cannot attach to tp_btf/{}: {}",
                    hook.tracepoint,
                    first_line(&err)
                )
            })?;
        }
        let slots = match settings.zombie_slots {
            0 => None,
            slots => Some(SlotTable::map(
                ebpf.map("ZOMBIE_SLOTS")
                    .context("ZOMBIE_SLOTS map missing")?,
                slots,
            )?),
        };
        Ok(Self {
            ebpf,
            hooks: hooks.to_vec(),
            slots,
        })
    }

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

    /// The event ring buffer (events flow only if `MapSizes::event_buffer` was set).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map("EVENTS").context("EVENTS map missing")?;
        Ok(RingBuf::try_from(map)?)
    }

    fn zombie_map(&self) -> Result<HashMap<&MapData, ProcessKey, Zombie>> {
        Ok(HashMap::try_from(
            self.ebpf.map("ZOMBIES").context("ZOMBIES map missing")?,
        )?)
    }

    fn zombie_map_mut(&mut self) -> Result<HashMap<&mut MapData, ProcessKey, Zombie>> {
        Ok(HashMap::try_from(
            self.ebpf
                .map_mut("ZOMBIES")
                .context("ZOMBIES map missing")?,
        )?)
    }

    /// Every unreaped zombie the kernel side knows of. Entries reaped during the walk may be
    /// missing or (rarely) listed although gone; the next read corrects it.
    pub fn zombies(&self) -> Result<Vec<(ProcessKey, Zombie)>> {
        let map = self.zombie_map()?;
        let mut zombies = self
            .slots
            .as_ref()
            .map(SlotTable::entries)
            .unwrap_or_default();
        for entry in map.iter() {
            match entry {
                Ok(entry) => zombies.push(entry),
                // The key was deleted between get_next_key and lookup.
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(err) => return Err(err).context("cannot read the ZOMBIES map"),
            }
        }
        Ok(zombies)
    }

    /// Adds a zombie the programs did not see (it predates them, or a map was full).
    pub fn add_zombie(&mut self, key: ProcessKey, zombie: Zombie) -> Result<Added> {
        const BPF_NOEXIST: u64 = 1;
        if let Some(slots) = &self.slots {
            // One record per process: not in its slot if the hash map has it already.
            match self.zombie_map()?.get(&key, 0) {
                Ok(_) => return Ok(Added::AlreadyKnown),
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(err) => return Err(err).context("cannot read the ZOMBIES map"),
            }
            match slots.claim(&key, &zombie) {
                Claim::Claimed => return Ok(Added::Recorded),
                Claim::AlreadyThere => return Ok(Added::AlreadyKnown),
                Claim::Taken => {}
            }
        }
        match self.zombie_map_mut()?.insert(key, zombie, BPF_NOEXIST) {
            Ok(()) => Ok(Added::Recorded),
            Err(aya::maps::MapError::SyscallError(err)) => match err.io_error.raw_os_error() {
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
        const BPF_EXIST: u64 = 2;
        if self
            .slots
            .as_ref()
            .is_some_and(|slots| slots.rewrite(&key, &zombie))
        {
            return Ok(());
        }
        match self.zombie_map_mut()?.insert(key, zombie, BPF_EXIST) {
            Ok(()) => Ok(()),
            Err(aya::maps::MapError::SyscallError(err))
                if err.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(err) => Err(err).context("cannot update the ZOMBIES map"),
        }
    }

    /// Drops a record that `/proc` proves wrong. Returns whether it was still there.
    pub fn remove_zombie(&mut self, key: &ProcessKey) -> Result<bool> {
        if let Some(taken) = self.slots.as_ref().and_then(|slots| slots.take(key)) {
            return Ok(taken);
        }
        match self.zombie_map_mut()?.remove(key) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(aya::maps::MapError::SyscallError(err))
                if err.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(false)
            }
            Err(err) => Err(err).context("cannot remove from the ZOMBIES map"),
        }
    }

    /// Counters per cgroup id, summed over CPUs.
    pub fn cgroup_counters(&self) -> Result<BTreeMap<u64, CgroupCounters>> {
        let map: PerCpuHashMap<_, u64, CgroupCounters> = PerCpuHashMap::try_from(
            self.ebpf
                .map("CGROUP_COUNTERS")
                .context("CGROUP_COUNTERS map missing")?,
        )?;
        let mut totals = BTreeMap::new();
        for entry in map.iter() {
            let (id, per_cpu) = match entry {
                Ok(entry) => entry,
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(err) => return Err(err).context("cannot read the CGROUP_COUNTERS map"),
            };
            let total: &mut CgroupCounters = totals.entry(id).or_default();
            for cpu in per_cpu.iter() {
                total.forks += cpu.forks;
                total.exits += cpu.exits;
                total.zombies_created += cpu.zombies_created;
                total.zombies_reaped += cpu.zombies_reaped;
            }
        }
        Ok(totals)
    }

    /// Drops the counters of a cgroup (it was removed; its series have expired).
    pub fn forget_cgroup(&mut self, id: u64) -> Result<()> {
        let mut map: PerCpuHashMap<_, u64, CgroupCounters> = PerCpuHashMap::try_from(
            self.ebpf
                .map_mut("CGROUP_COUNTERS")
                .context("CGROUP_COUNTERS map missing")?,
        )?;
        match map.remove(&id) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(err))
                if err.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(err) => Err(err).context("cannot clean the CGROUP_COUNTERS map"),
        }
    }

    /// Entries in the WAITS map (a walk: call it rarely).
    pub fn wait_entries(&self) -> Result<usize> {
        let map: HashMap<_, u32, WaitRecord> =
            HashMap::try_from(self.ebpf.map("WAITS").context("WAITS map missing")?)?;
        Ok(map.keys().filter(Result::is_ok).count())
    }

    /// The exit -> reap lifetime histogram, summed over CPUs.
    pub fn lifetimes(&self) -> Result<LifetimeHistogram> {
        let array: PerCpuArray<_, LifetimeHistogram> = PerCpuArray::try_from(
            self.ebpf
                .map("LIFETIMES")
                .context("LIFETIMES map missing")?,
        )?;
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
        let array: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map("LOSSES").context("LOSSES map missing")?)?;
        let mut losses = [0; LOSS_KINDS as usize];
        for (kind, slot) in losses.iter_mut().enumerate() {
            *slot = array.get(&(kind as u32), 0)?.iter().sum();
        }
        Ok(losses)
    }

    /// Drops remembered waits of processes not in `alive` (their free event may never come).
    pub fn forget_waits_except(
        &mut self,
        alive: &std::collections::HashSet<ProcessKey>,
    ) -> Result<()> {
        let mut map: HashMap<_, u32, WaitRecord> =
            HashMap::try_from(self.ebpf.map_mut("WAITS").context("WAITS map missing")?)?;
        let gone: Vec<u32> = map
            .iter()
            .filter_map(Result::ok)
            .filter(|(tgid, record)| !alive.contains(&ProcessKey::new(*tgid, record.start_ticks)))
            .map(|(tgid, _)| tgid)
            .collect();
        for tgid in gone {
            match map.remove(&tgid) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(aya::maps::MapError::SyscallError(err))
                    if err.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(err) => return Err(err).context("cannot clean the WAITS map"),
            }
        }
        Ok(())
    }

    /// When the process `key` last entered `wait()`, if the kernel saw it.
    pub fn last_wait(&self, key: &ProcessKey) -> Result<Option<u64>> {
        let map: HashMap<_, u32, WaitRecord> =
            HashMap::try_from(self.ebpf.map("WAITS").context("WAITS map missing")?)?;
        match map.get(&key.tgid, 0) {
            Ok(record) if record.start_ticks == key.start_ticks => Ok(Some(record.last_wait_ns)),
            Ok(_) | Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(err) => Err(err).context("cannot read the WAITS map"),
        }
    }
}

/// Verifier logs and loader errors span many lines; a user gets the first.
fn first_line(err: &dyn std::fmt::Display) -> String {
    err.to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// `/proc` states start times in `USER_HZ` ticks.
pub fn nsec_per_tick() -> Result<u32> {
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return Err(anyhow!("sysconf(_SC_CLK_TCK) failed"));
    }
    Ok((1_000_000_000 / hz) as u32)
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
