//! Loading the programs into the kernel, configured for this host, and attaching them.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use aya::{programs::BtfTracePoint, Ebpf, EbpfLoader};
use aya_log::EbpfLogger;
use tracer_common::{names, KernelOffsets, ProgramSettings};

use super::{
    btf::KernelBtf,
    preflight::{self, Cleared},
    slots, Hook, KernelPaths, Probes,
};
use crate::cgroup::HierarchyKind;
use crate::clock::ns_per_user_hz_tick;

pub(super) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/reapwatch-ebpf"));

/// aya-log's ring buffer in the object (aya-log does not export the name).
const AYA_LOGS: &str = "AYA_LOGS";

/// The programs to attach, and their tracepoints. Kernels before 5.12 refuse a program
/// holding BPF compare-and-swap, even on a path it never takes: there the exit and free hooks
/// are the builds without the slot table.
fn hooks(settings: &ProgramSettings) -> [Hook; 4] {
    let (exit, free) = if settings.zombie_slots > 0 {
        ("sched_process_exit", "sched_process_free")
    } else {
        ("sched_process_exit_hash", "sched_process_free_hash")
    };
    [
        ("sched_process_fork", "sched_process_fork"),
        (exit, "sched_process_exit"),
        ("sched_process_wait", "sched_process_wait"),
        (free, "sched_process_free"),
    ]
    .map(|(program, tracepoint)| Hook {
        program,
        tracepoint,
    })
}

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

impl Probes {
    /// Loads and attaches the programs; per-cgroup counters will be keyed by cgroup ids of
    /// `hierarchy`. If the process logs at debug level, the programs' rare-event records go
    /// to its log (see [`Probes::forward_kernel_log`]); otherwise they write none.
    pub fn load(_: &Cleared, sizes: MapSizes, hierarchy: HierarchyKind) -> Result<Self> {
        // Offsets first, from types decoded on demand; aya then decodes all of the kernel's
        // BTF, twice (to load the object, and to find each tracepoint), one at a time.
        let btf = KernelBtf::from_file(Path::new(preflight::VMLINUX_BTF))?;
        let offsets = btf.kernel_offsets(hierarchy)?;
        let release = preflight::kernel_release()?;
        let detected = btf.program_settings(ns_per_user_hz_tick()?, hierarchy);
        let zombie_slots = slots::slots_for(
            sizes.zombies,
            preflight::parse_release(&release).unwrap_or_default(),
        );
        let settings = ProgramSettings {
            zombie_slots,
            trace_events: u32::from(sizes.event_buffer > 0),
            // Only the programs with the slot table read `group_dead` (see the exit hook).
            exit_group_dead: if zombie_slots > 0 {
                detected.exit_group_dead
            } else {
                0
            },
            ..detected
        };
        let kernel_log = log::log_enabled!(log::Level::Debug);
        Self::load_with(&offsets, &settings, sizes, kernel_log)
    }

    /// The same programs on the same tracepoints, left unconfigured: each returns at its
    /// first check. The benchmark's baseline for what measuring a program run costs.
    pub fn load_unconfigured(_: &Cleared) -> Result<Self> {
        Self::load_with(
            &KernelOffsets::default(),
            &ProgramSettings::default(),
            MapSizes::default(),
            false,
        )
    }

    fn load_with(
        offsets: &KernelOffsets,
        settings: &ProgramSettings,
        sizes: MapSizes,
        kernel_log: bool,
    ) -> Result<Self> {
        // A ring buffer is a power-of-two number of pages.
        let ring_bytes = sizes.event_buffer.max(4096).next_power_of_two();
        // Off, the programs' log statements return before writing anything (the verifier drops
        // them), and their ring buffer shrinks from 128 KiB to a page.
        let (log_level, log_bytes) = if kernel_log {
            (aya_log::Level::Debug as u8, 128 << 10)
        } else {
            (0, 4096)
        };
        let mut ebpf = EbpfLoader::new()
            .override_global(names::OFFSETS, offsets, true)
            .override_global(names::SETTINGS, settings, true)
            .override_global(aya_log::LEVEL, &log_level, true)
            .map_max_entries(names::EVENTS, ring_bytes)
            .map_max_entries(AYA_LOGS, log_bytes)
            .map_max_entries(names::ZOMBIE_SLOTS, settings.zombie_slots.max(1))
            .map_max_entries(names::ZOMBIES, sizes.zombies)
            .map_max_entries(names::CGROUP_COUNTERS, sizes.cgroups)
            .map_max_entries(names::WAITS, sizes.waits)
            .load(OBJECT)
            .map_err(|err| anyhow!("cannot load the eBPF object: {}", first_line(&err)))?;
        let kernel_log = kernel_log
            .then(|| EbpfLogger::init(&mut ebpf))
            .transpose()
            .context("cannot read the programs' log")?;
        let hooks = hooks(settings);
        attach(&mut ebpf, &hooks)?;
        let slots = match settings.zombie_slots {
            0 => None,
            slots => Some(slots::SlotTable::map(
                ebpf.map(names::ZOMBIE_SLOTS)
                    .with_context(|| format!("{} map missing", names::ZOMBIE_SLOTS))?,
                slots,
            )?),
        };
        Ok(Self {
            ebpf,
            hooks: hooks.to_vec(),
            slots,
            paths: KernelPaths::of(settings),
            kernel_log,
        })
    }
}

fn attach(ebpf: &mut Ebpf, hooks: &[Hook]) -> Result<()> {
    let btf = aya::Btf::from_sys_fs().context("cannot read kernel BTF")?;
    for hook in hooks {
        let program: &mut BtfTracePoint = ebpf
            .program_mut(hook.program)
            .with_context(|| format!("program {} missing from the object", hook.program))?
            .try_into()?;
        program
            .load(hook.tracepoint, &btf)
            .map_err(|err| anyhow!("cannot load program {}: {}", hook.program, first_line(&err)))?;
        program.attach().map_err(|err| {
            anyhow!(
                "cannot attach to tp_btf/{}: {}",
                hook.tracepoint,
                first_line(&err)
            )
        })?;
    }
    Ok(())
}

/// Verifier logs and loader errors span many lines; a user gets the first.
fn first_line(err: &dyn std::fmt::Display) -> String {
    err.to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tracer_common::{names, KernelOffsets, ProgramSettings};

    use super::*;

    /// The programs cannot declare their maps and globals with the shared names (aya's
    /// `#[map]` takes a literal, a global's symbol is its identifier): the built object must
    /// have each under its name, and each global the size of its shared type.
    #[test]
    fn object_uses_the_shared_names() {
        let mut object = aya_obj::Object::parse(OBJECT).expect("parse the object");
        for map in [
            names::ZOMBIE_SLOTS,
            names::ZOMBIES,
            names::CGROUP_COUNTERS,
            names::WAITS,
            names::EXITED_GROUPS,
            names::LIFETIMES,
            names::LOSSES,
            names::EVENTS,
            AYA_LOGS,
        ] {
            assert!(object.maps.contains_key(map), "no map {map} in the object");
        }
        let offsets = [0; size_of::<KernelOffsets>()];
        let settings = [0; size_of::<ProgramSettings>()];
        for (global, bytes) in [
            (names::OFFSETS, &offsets[..]),
            (names::SETTINGS, &settings[..]),
            (aya_log::LEVEL, &[0][..]),
        ] {
            object
                .patch_map_data(HashMap::from([(global, (bytes, true))]))
                .unwrap_or_else(|err| panic!("global {global}: {err}"));
        }
    }

    /// aya 0.14 links a program's subprograms by address alone, whatever their section: two
    /// at the same address would each run the other's code (see the eBPF `diagnostics`).
    #[test]
    fn subprograms_have_distinct_addresses() {
        let object = aya_obj::Object::parse(OBJECT).expect("parse the object");
        let mut seen = HashMap::new();
        for function in object.functions.values() {
            if object.programs.contains_key(&function.name) {
                continue;
            }
            if let Some(other) = seen.insert(function.address, &function.name) {
                panic!(
                    "{other} and {} share address {}",
                    function.name, function.address
                );
            }
        }
    }

    #[test]
    fn every_program_is_in_the_object() {
        let object = aya_obj::Object::parse(OBJECT).expect("parse the object");
        let with_slots = ProgramSettings {
            zombie_slots: 1,
            ..ProgramSettings::default()
        };
        for hook in hooks(&with_slots)
            .iter()
            .chain(&hooks(&ProgramSettings::default()))
        {
            assert!(object.programs.contains_key(hook.program), "{hook:?}");
        }
    }
}
