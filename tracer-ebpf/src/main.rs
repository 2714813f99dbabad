//! reapwatch's kernel programs.
//!
//! Every hook is a `tp_btf` program. Classic tracepoints and kprobes share one per-CPU
//! recursion guard (`bpf_prog_active`): while any other agent's program of that kind runs on a
//! CPU, ours would be skipped silently, which loses `sched_process_free` (RCU softirq) and
//! leaves phantom zombies. `tp_btf` programs only guard against themselves, and the kernel
//! counts those misses per program (`recursion_misses`), which userspace reports.
//!
//! The programs aggregate in the kernel: per-cgroup counters, the set of unreaped zombies and
//! a lifetime histogram live in maps that userspace reads, so a fork storm costs map updates,
//! not one event per process.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Compare-and-swap: core's atomic types offer none on the bpf target.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod clock;
#[cfg(target_arch = "bpf")]
mod diagnostics;
#[cfg(target_arch = "bpf")]
mod events;
#[cfg(target_arch = "bpf")]
mod hooks;
#[cfg(target_arch = "bpf")]
mod losses;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod offsets;
#[cfg(target_arch = "bpf")]
mod settings;
#[cfg(target_arch = "bpf")]
mod task;
#[cfg(target_arch = "bpf")]
mod zombie;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never called.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

/// The object is only meaningful for the bpf target; built for the host (workspace-wide
/// `cargo check`), it is an empty program.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
