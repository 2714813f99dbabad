//! Struct member offsets, and the optional helpers, of the running kernel from its BTF, so that
//! nothing about one kernel's layout is baked into the programs. Tracepoint layouts are not
//! needed: every program is `tp_btf`, whose arguments the verifier types from the same BTF.

use std::{
    fs::File,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

use anyhow::{anyhow, bail, Context, Result};
use btf_rs::{Backend, Btf, Type};
use tracer_common::{
    KernelOffsets, ProgramSettings, CGROUP_UNIFIED, CGROUP_V1_PIDS, HELPER_CURRENT_TASK_BTF,
    SIGCHLD,
};

use crate::cgroup::HierarchyKind;

pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    /// Opens BTF with btf-rs's mmap backend, which decodes types on demand: a few MiB, where
    /// decoding all of a kernel's takes about 40 (reapwatch's peak RSS). The kernel lets
    /// `/sys/kernel/btf/*` be mapped only from 6.16 on, so the data is copied to a memfd.
    pub fn from_file(path: &Path) -> Result<Self> {
        let context = || format!("cannot read BTF in {}", path.display());
        let mut source = File::open(path).with_context(context)?;
        // SAFETY: a NUL-terminated name and valid flags.
        let fd = unsafe { libc::memfd_create(c"reapwatch-btf".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("memfd_create");
        }
        // SAFETY: fd is a new descriptor that nothing else owns.
        let mut copy = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        std::io::copy(&mut source, &mut copy).with_context(context)?;
        // The mapping outlives the descriptor.
        let btf = Btf::from_file_with_backend(
            format!("/proc/self/fd/{}", copy.as_raw_fd()),
            Backend::Mmap,
        )
        .map_err(|err| anyhow!("cannot parse BTF in {}: {err}", path.display()))?;
        Ok(Self { btf })
    }

    /// Byte offset of `member` in `struct strukt`, looking through anonymous struct and union
    /// members (kernels nest fields in them, e.g. with randomized layouts).
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32> {
        let Some(Type::Struct(st)) = self
            .btf
            .resolve_types_by_name(strukt)
            .map_err(|err| anyhow!("struct {strukt} not in BTF: {err}"))?
            .into_iter()
            .find(|t| matches!(t, Type::Struct(_)))
        else {
            bail!("struct {strukt} not in BTF");
        };
        let bits = self
            .find_member(&st, member)?
            .with_context(|| format!("struct {strukt} has no member {member}"))?;
        if bits % 8 != 0 {
            bail!("{strukt}.{member} is a bitfield");
        }
        Ok(bits / 8)
    }

    /// Value of `member` in `enum name`.
    pub fn enum_value(&self, name: &str, member: &str) -> Result<u32> {
        for t in self
            .btf
            .resolve_types_by_name(name)
            .map_err(|err| anyhow!("enum {name} not in BTF: {err}"))?
        {
            if let Type::Enum(e) = t {
                for m in &e.members {
                    if self.btf.resolve_name(m).is_ok_and(|n| n == member) {
                        return Ok(m.val());
                    }
                }
            }
        }
        bail!("enum {name} has no {member}")
    }

    /// Size in bytes of `struct strukt`.
    pub fn struct_size(&self, strukt: &str) -> Result<u32> {
        match self
            .btf
            .resolve_types_by_name(strukt)
            .map_err(|err| anyhow!("struct {strukt} not in BTF: {err}"))?
            .into_iter()
            .find(|t| matches!(t, Type::Struct(_)))
        {
            Some(Type::Struct(st)) => Ok(st.size() as u32),
            _ => bail!("struct {strukt} not in BTF"),
        }
    }

    fn find_member(&self, st: &btf_rs::Struct, member: &str) -> Result<Option<u32>> {
        for m in &st.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            if name == member {
                return Ok(Some(m.bit_offset()));
            }
            if name.is_empty() {
                let inner = self.strip_modifiers(
                    self.btf
                        .resolve_chained_type(m)
                        .map_err(|e| anyhow!("{e}"))?,
                )?;
                if let Type::Struct(inner) | Type::Union(inner) = inner {
                    if let Some(bits) = self.find_member(&inner, member)? {
                        return Ok(Some(m.bit_offset() + bits));
                    }
                }
            }
        }
        Ok(None)
    }

    fn strip_modifiers(&self, mut t: Type) -> Result<Type> {
        loop {
            t = match &t {
                Type::Const(_)
                | Type::Volatile(_)
                | Type::Typedef(_)
                | Type::Restrict(_)
                | Type::TypeTag(_) => {
                    let bt = t.as_btf_type().context("modifier without a type")?;
                    self.btf
                        .resolve_chained_type(bt)
                        .map_err(|e| anyhow!("{e}"))?
                }
                _ => return Ok(t),
            };
        }
    }

    /// Every offset the programs need; cgroup ids will refer to `hierarchy`.
    pub fn kernel_offsets(&self, hierarchy: HierarchyKind) -> Result<KernelOffsets> {
        let task = |m: &str| self.member_offset("task_struct", m);
        let sigchld_action = self.member_offset("sighand_struct", "action")?
            + (SIGCHLD as u32 - 1) * self.struct_size("k_sigaction")?
            + self.member_offset("k_sigaction", "sa")?;
        Ok(KernelOffsets {
            task_exit_code: task("exit_code")?,
            task_exit_signal: task("exit_signal")?,
            task_pid: task("pid")?,
            task_tgid: task("tgid")?,
            task_real_parent: task("real_parent")?,
            task_group_leader: task("group_leader")?,
            task_signal: task("signal")?,
            task_comm: task("comm")?,
            task_start_boottime: task("start_boottime")
                .context("kernel too old: task_struct has no start_boottime (needs 5.5+)")?,
            task_cgroups: task("cgroups")?,
            task_ptrace: task("ptrace")?,
            task_sighand: task("sighand")?,
            sighand_sigchld_handler: sigchld_action
                + self.member_offset("sigaction", "sa_handler")?,
            sighand_sigchld_flags: sigchld_action + self.member_offset("sigaction", "sa_flags")?,
            signal_live: self.member_offset("signal_struct", "live")?,
            css_set_dfl_cgrp: self.member_offset("css_set", "dfl_cgrp")?,
            css_set_pids_css: match hierarchy {
                // subsys[] is an array of pointers indexed by the subsystem id.
                HierarchyKind::V1Pids => {
                    self.member_offset("css_set", "subsys")?
                        + 8 * self
                            .enum_value("cgroup_subsys_id", "pids_cgrp_id")
                            .context("the kernel has no pids controller")?
                }
                HierarchyKind::Unified => 0,
            },
            css_cgroup: self.member_offset("cgroup_subsys_state", "cgroup")?,
            cgroup_kn: self.member_offset("cgroup", "kn")?,
            kernfs_node_id: self.member_offset("kernfs_node", "id")?,
        })
    }

    /// The programs' settings for this kernel, ready; cgroup ids will refer to `hierarchy`.
    /// The zombie slots and events stay off: the loader sets them, knowing the map sizes.
    pub fn program_settings(
        &self,
        ns_per_user_hz_tick: u32,
        hierarchy: HierarchyKind,
    ) -> ProgramSettings {
        ProgramSettings {
            ready: 1,
            cgroup_hierarchy: match hierarchy {
                HierarchyKind::Unified => CGROUP_UNIFIED,
                HierarchyKind::V1Pids => CGROUP_V1_PIDS,
            },
            ns_per_user_hz_tick,
            zombie_slots: 0,
            helpers: if self
                .enum_value("bpf_func_id", "BPF_FUNC_get_current_task_btf")
                .is_ok()
            {
                HELPER_CURRENT_TASK_BTF
            } else {
                0
            },
            trace_events: 0,
            exit_group_dead: u32::from(self.tracepoint_arguments("sched_process_exit") == Some(2)),
        }
    }

    /// Arguments of tracepoint `name` as a `tp_btf` program sees them, from the type of its
    /// probe (`btf_trace_<name>`, whose first parameter is the probe's data, not an argument).
    fn tracepoint_arguments(&self, name: &str) -> Option<usize> {
        let typedef = self
            .btf
            .resolve_types_by_name(&format!("btf_trace_{name}"))
            .ok()?
            .into_iter()
            .find(|t| matches!(t, Type::Typedef(_)))?;
        let pointer = self.btf.resolve_chained_type(typedef.as_btf_type()?).ok()?;
        match self.btf.resolve_chained_type(pointer.as_btf_type()?).ok()? {
            Type::FuncProto(proto) => proto.parameters.len().checked_sub(1),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unparsable_btf_is_an_error() {
        let dir = std::env::temp_dir().join(format!("reapwatch-btf-{}", std::process::id()));
        std::fs::write(&dir, b"not btf").unwrap();
        let err = KernelBtf::from_file(&dir).err().unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert!(err.to_string().contains("cannot parse BTF"), "{err}");
    }
}
