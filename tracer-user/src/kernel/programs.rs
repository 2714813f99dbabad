//! Per-program statistics the kernel keeps but aya 0.14 does not expose.

use std::os::fd::{AsFd, AsRawFd};

use anyhow::{bail, Result};
use aya::programs::ProgramFd;
use aya_obj::generated::bpf_prog_info;

#[repr(C)]
struct InfoByFdAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// Times the kernel skipped this program because it was already running on that CPU
/// (kernels before 5.12 do not count them and report zero).
pub fn recursion_misses(fd: &ProgramFd) -> Result<u64> {
    // SAFETY: bpf_prog_info is plain integers; all-zero is its documented initial state.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoByFdAttr {
        bpf_fd: fd.as_fd().as_raw_fd() as u32,
        info_len: size_of::<bpf_prog_info>() as u32,
        info: &mut info as *mut bpf_prog_info as u64,
    };
    // SAFETY: attr and info outlive the call; the kernel writes at most info_len bytes.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut InfoByFdAttr,
            size_of::<InfoByFdAttr>(),
        )
    };
    if ret != 0 {
        bail!(
            "BPF_OBJ_GET_INFO_BY_FD: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(info.recursion_misses)
}
