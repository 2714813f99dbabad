//! Offsets and settings read from this machine's own kernel BTF (`/sys/kernel/btf/vmlinux`).

use std::{collections::HashMap, path::Path, process::Command};

use reapwatch::{
    cgroup::HierarchyKind,
    kernel::{btf::KernelBtf, preflight},
};
use serde_json::Value;
use tracer_common::{KernelOffsets, CGROUP_UNIFIED, CGROUP_V1_PIDS, HELPER_CURRENT_TASK_BTF};

const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

fn kernel_btf() -> KernelBtf {
    KernelBtf::from_file(Path::new(VMLINUX)).expect("this machine has BTF")
}

/// The kernel's BTF as bpftool (Debian's, which `cargo xtask setup` installs) decodes it: a
/// parser of its own, libbpf's, to check ours against.
struct BpftoolBtf {
    types: HashMap<u64, Value>,
}

impl BpftoolBtf {
    fn load() -> Self {
        let output = Command::new("bpftool")
            .args(["--json", "btf", "dump", "file", VMLINUX, "format", "raw"])
            .output()
            .expect("bpftool (cargo xtask setup installs it)");
        assert!(output.status.success(), "{output:?}");
        let dump: Value = serde_json::from_slice(&output.stdout).unwrap();
        let types = dump["types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["id"].as_u64().unwrap(), t.clone()))
            .collect();
        Self { types }
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.types
            .values()
            .find(|t| t["kind"] == kind && t["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    }

    fn by_id(&self, id: &Value) -> &Value {
        &self.types[&id.as_u64().unwrap()]
    }

    /// `(byte offset, type)` of `member` in struct or union `of`, anonymous members looked
    /// through.
    fn member<'a>(&'a self, of: &'a Value, member: &str) -> Option<(u64, &'a Value)> {
        of["members"].as_array()?.iter().find_map(|m| {
            let at = m["bits_offset"].as_u64().unwrap() / 8;
            let ty = self.by_id(&m["type_id"]);
            if m["name"] == member {
                Some((at, ty))
            } else if m["name"] == "(anon)" {
                self.member(ty, member).map(|(inner, ty)| (at + inner, ty))
            } else {
                None
            }
        })
    }

    /// Offset of a member path (`["action", "sa", "sa_handler"]`) from struct `strukt`,
    /// following each member's type; `index` picks an element of each array on the way.
    fn offset(&self, strukt: &str, path: &[&str], index: u64) -> u32 {
        let mut ty = self.named("STRUCT", strukt);
        let mut offset = 0;
        for member in path {
            let (at, member_type) = self
                .member(ty, member)
                .unwrap_or_else(|| panic!("{strukt}: no {member} in {ty}"));
            offset += at;
            ty = member_type;
            if ty["kind"] == "ARRAY" {
                ty = self.by_id(&ty["type_id"]);
                let stride = match ty["kind"].as_str() {
                    Some("PTR") => std::mem::size_of::<usize>() as u64,
                    _ => ty["size"].as_u64().unwrap(),
                };
                offset += index * stride;
            }
        }
        offset as u32
    }

    fn enum_value(&self, name: &str, value: &str) -> u64 {
        self.named("ENUM", name)["values"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == value)
            .and_then(|v| v["val"].as_u64())
            .unwrap_or_else(|| panic!("enum {name} has no {value}"))
    }
}

/// Every offset handed to the programs, against bpftool's reading of the same BTF.
#[test]
fn offsets_of_the_running_kernel() {
    let btf = kernel_btf();
    let truth = BpftoolBtf::load();
    let task = |member: &str| truth.offset("task_struct", &[member], 0);
    let sigchld = libc::SIGCHLD as u64 - 1;
    let pids = truth.enum_value("cgroup_subsys_id", "pids_cgrp_id");
    let expected = KernelOffsets {
        task_exit_code: task("exit_code"),
        task_exit_signal: task("exit_signal"),
        task_pid: task("pid"),
        task_tgid: task("tgid"),
        task_real_parent: task("real_parent"),
        task_group_leader: task("group_leader"),
        task_signal: task("signal"),
        task_comm: task("comm"),
        task_start_boottime: task("start_boottime"),
        task_cgroups: task("cgroups"),
        task_ptrace: task("ptrace"),
        task_sighand: task("sighand"),
        sighand_sigchld_handler: truth.offset(
            "sighand_struct",
            &["action", "sa", "sa_handler"],
            sigchld,
        ),
        sighand_sigchld_flags: truth.offset(
            "sighand_struct",
            &["action", "sa", "sa_flags"],
            sigchld,
        ),
        signal_live: truth.offset("signal_struct", &["live"], 0),
        css_set_dfl_cgrp: truth.offset("css_set", &["dfl_cgrp"], 0),
        css_set_pids_css: truth.offset("css_set", &["subsys"], pids),
        css_cgroup: truth.offset("cgroup_subsys_state", &["cgroup"], 0),
        cgroup_kn: truth.offset("cgroup", &["kn"], 0),
        kernfs_node_id: truth.offset("kernfs_node", &["id"], 0),
    };
    assert_eq!(btf.kernel_offsets(HierarchyKind::V1Pids).unwrap(), expected);
    // On the unified hierarchy the programs read no pids css.
    assert_eq!(
        btf.kernel_offsets(HierarchyKind::Unified).unwrap(),
        KernelOffsets {
            css_set_pids_css: 0,
            ..expected
        }
    );

    let settings = btf.program_settings(10_000_000, HierarchyKind::V1Pids);
    assert_eq!(settings.ready, 1);
    assert_eq!(settings.cgroup_hierarchy, CGROUP_V1_PIDS);
    // bpf_get_current_task_btf arrived in 5.11.
    let release = preflight::kernel_release().unwrap();
    let has_task_btf = preflight::parse_release(&release).is_some_and(|version| version >= (5, 11));
    assert_eq!(
        settings.helpers,
        if has_task_btf {
            HELPER_CURRENT_TASK_BTF
        } else {
            0
        },
        "{release}"
    );
    let unified = btf.program_settings(10_000_000, HierarchyKind::Unified);
    assert_eq!(unified.cgroup_hierarchy, CGROUP_UNIFIED);
}

#[test]
fn missing_struct_or_member_is_an_error() {
    let btf = kernel_btf();
    assert!(btf.member_offset("task_struct", "no_such_member").is_err());
    assert!(btf.member_offset("no_such_struct_xyz", "pid").is_err());
}

#[test]
fn enum_values() {
    let btf = kernel_btf();
    let truth = BpftoolBtf::load();
    for value in ["pids_cgrp_id", "CGROUP_SUBSYS_COUNT"] {
        assert_eq!(
            u64::from(btf.enum_value("cgroup_subsys_id", value).unwrap()),
            truth.enum_value("cgroup_subsys_id", value),
            "{value}"
        );
    }
    assert!(btf
        .enum_value("cgroup_subsys_id", "no_such_cgrp_id")
        .is_err());
}
