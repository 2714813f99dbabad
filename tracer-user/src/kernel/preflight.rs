//! Checks that turn "the kernel said EPERM" into a sentence a person can act on.

use std::{fs, path::Path};

use anyhow::{bail, Context, Result};

/// Oldest kernel the programs load on: `tp_btf`, `bpf_probe_read_kernel` and
/// `task_struct::start_boottime` arrived in 5.5, but the event ring buffer, a map of the
/// programs' object, only in 5.8: on 5.5 to 5.7 the load itself would fail.
pub const MIN_KERNEL: (u32, u32) = (5, 8);

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Proof that [`check_all`] passed: loading the programs takes one, so the checks run once,
/// and before anything reaches the kernel.
#[derive(Debug)]
pub struct Cleared(());

pub fn check_all() -> Result<Cleared> {
    check_kernel_version(&kernel_release()?)?;
    check_privileges(
        &fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?,
    )?;
    check_btf(Path::new(VMLINUX_BTF))?;
    raise_memlock_limit();
    Ok(Cleared(()))
}

pub fn kernel_release() -> Result<String> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("cannot read /proc/sys/kernel/osrelease")?;
    Ok(release.trim().to_owned())
}

/// `(major, minor)` of a release string such as `6.1.0-28-cloud-amd64`.
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

pub fn check_kernel_version(release: &str) -> Result<()> {
    let Some(version) = parse_release(release) else {
        bail!("cannot tell the kernel version from {release:?}");
    };
    if version < MIN_KERNEL {
        bail!(
            "kernel {release} is too old: reapwatch needs {}.{} or newer (BTF tracepoints and the BPF ring buffer)",
            MIN_KERNEL.0,
            MIN_KERNEL.1
        );
    }
    Ok(())
}

/// Loading tracing programs needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN before 5.8).
pub fn check_privileges(self_status: &str) -> Result<()> {
    let effective = self_status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .context("cannot read CapEff from /proc/self/status")?;
    let has = |cap: u32| effective & (1 << cap) != 0;
    if !(has(CAP_SYS_ADMIN) || has(CAP_BPF) && has(CAP_PERFMON)) {
        let uid = unsafe { libc::geteuid() };
        bail!("permission denied: reapwatch must run as root or with CAP_BPF and CAP_PERFMON (running as uid {uid})");
    }
    Ok(())
}

pub fn check_btf(vmlinux: &Path) -> Result<()> {
    if !vmlinux.exists() {
        bail!(
            "no BTF: {} is missing (the kernel needs CONFIG_DEBUG_INFO_BTF=y)",
            vmlinux.display()
        );
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; later ones to the memory cgroup
/// and ignore it, so a failure here is harmless.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases() {
        assert_eq!(parse_release("6.18.44-fc-v595"), Some((6, 18)));
        assert_eq!(
            parse_release("5.10.228-219.884.amzn2.x86_64"),
            Some((5, 10))
        );
        assert_eq!(parse_release("6.1.0-28-cloud-amd64"), Some((6, 1)));
        assert_eq!(parse_release("garbage"), None);
    }

    #[test]
    fn old_kernels_are_refused() {
        assert!(check_kernel_version("5.4.0-200-generic").is_err());
        assert!(check_kernel_version("4.19.0").is_err());
        // 5.5 to 5.7 have BTF tracepoints but no ring buffer: the load would fail.
        assert!(check_kernel_version("5.5.0").is_err());
        let err = check_kernel_version("5.7.19").unwrap_err().to_string();
        assert_eq!(
            err,
            "kernel 5.7.19 is too old: reapwatch needs 5.8 or newer \
             (BTF tracepoints and the BPF ring buffer)"
        );
        assert!(check_kernel_version("5.8.0").is_ok());
        assert!(check_kernel_version("5.10.228-219.884.amzn2.x86_64").is_ok());
        assert!(check_kernel_version("6.1.0-28-cloud-amd64").is_ok());
    }

    #[test]
    fn capabilities() {
        let status = |capeff: &str| format!("Name:\tx\nCapInh:\t0\nCapEff:\t{capeff}\n");
        assert!(check_privileges(&status("000001ffffffffff")).is_ok());
        // CAP_BPF | CAP_PERFMON only.
        assert!(check_privileges(&status("000000c000000000")).is_ok());
        // CAP_BPF alone is not enough for tracing programs.
        assert!(check_privileges(&status("0000008000000000")).is_err());
        let err = check_privileges(&status("0000000000000000"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("root or with CAP_BPF"), "{err}");
    }

    #[test]
    fn missing_btf() {
        let err = check_btf(Path::new("/nonexistent/vmlinux"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("no BTF"), "{err}");
    }
}
