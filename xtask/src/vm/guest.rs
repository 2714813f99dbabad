//! What a guest's serial log says: the kernel, the hooks reapwatch attached, and each test
//! executable's outcome.

use std::{collections::BTreeMap, path::Path, time::Duration};

use serde_json::Value;

const MARK: &str = "reapwatch-vm:";

/// What the serial log says about one boot.
#[derive(Debug, Default)]
pub struct GuestRun {
    kernel: Option<String>,
    /// The layout `/init` mounted, and the cgroup mounts it saw.
    cgroups: Option<String>,
    /// The programs' kernel-dependent paths, from `reapwatch snapshot --json`.
    paths: Option<String>,
    /// `(program, attach point)` that `reapwatch snapshot --json` reported.
    hooks: Vec<(String, String)>,
    snapshot_error: Option<String>,
    /// Per test executable: exit code (None: never ended), `test result:` line, tests.
    executables: BTreeMap<String, Executable>,
    finished: bool,
    /// The kernel's first `Oops:` line, if it had one.
    oops: Option<String>,
}

#[derive(Debug, Default)]
struct Executable {
    exit: Option<i32>,
    result: Option<String>,
    tests: Vec<(String, String)>,
}

/// `line` without terminal escape sequences: the test harness colours its results when the
/// guest's console looks like a terminal.
fn without_escapes(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        match chars.next() {
            // CSI: parameters, then one final byte in @..=~.
            Some('[') => {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            // A character set designation: one more character.
            Some('(' | ')') => {
                chars.next();
            }
            _ => {}
        }
    }
    out
}

impl GuestRun {
    pub fn parse(log: &str) -> Self {
        let mut run = Self::default();
        let mut current: Option<String> = None;
        for line in log
            .lines()
            .map(|l| without_escapes(l.trim_end_matches('\r')))
        {
            let line = line.as_str();
            if let Some(at) = line.find("Oops: ") {
                run.oops.get_or_insert_with(|| line[at..].to_owned());
            }
            if let Some(rest) = line.strip_prefix(MARK).map(str::trim) {
                if let Some(kernel) = rest.strip_prefix("kernel ") {
                    run.kernel = Some(kernel.to_owned());
                } else if let Some(cgroups) = rest.strip_prefix("cgroups ") {
                    run.cgroups = Some(cgroups.trim().to_owned());
                } else if let Some(json) = rest.strip_prefix("snapshot ") {
                    run.read_snapshot(json);
                } else if let Some(name) = rest.strip_prefix("begin ") {
                    run.executables.entry(name.to_owned()).or_default();
                    current = Some(name.to_owned());
                } else if let Some(end) = rest.strip_prefix("end ") {
                    if let Some((name, rc)) = end.rsplit_once(" rc=") {
                        run.executables.entry(name.to_owned()).or_default().exit = rc.parse().ok();
                    }
                    current = None;
                } else if rest == "all done" {
                    run.finished = true;
                }
                continue;
            }
            let Some(exe) = current.as_ref().and_then(|c| run.executables.get_mut(c)) else {
                continue;
            };
            if line.starts_with("test result: ") {
                exe.result = Some(line.to_owned());
            } else if let Some(test) = line.strip_prefix("test ") {
                if let Some((name, outcome)) = test.rsplit_once(" ... ") {
                    exe.tests.push((name.to_owned(), outcome.to_owned()));
                }
            }
        }
        run
    }

    fn read_snapshot(&mut self, json: &str) {
        let Ok(report) = serde_json::from_str::<Value>(json) else {
            self.snapshot_error = Some(json.chars().take(300).collect());
            return;
        };
        if let Some(paths) = report["tracer"]["paths"].as_object() {
            let paths: Vec<String> = paths
                .iter()
                .map(|(what, path)| format!("{what}={}", path.as_str().unwrap_or("?")))
                .collect();
            self.paths = Some(paths.join(" "));
        }
        for hook in report["tracer"]["hooks"].as_array().into_iter().flatten() {
            self.hooks.push((
                hook["program"].as_str().unwrap_or("?").to_owned(),
                hook["attach"].as_str().unwrap_or("?").to_owned(),
            ));
        }
    }

    fn executable_passed(exe: &Executable) -> bool {
        exe.exit == Some(0)
            && exe
                .result
                .as_deref()
                .is_some_and(|r| r.starts_with("test result: ok."))
    }

    pub fn passed(&self) -> bool {
        self.finished
            && self.snapshot_error.is_none()
            && !self.hooks.is_empty()
            && !self.executables.is_empty()
            && self.executables.values().all(Self::executable_passed)
    }

    /// The kernel stopped on a breakpoint it did not place: x86 patches a tracepoint's call
    /// site (as programs attach and detach) through a temporary int3, and under software
    /// emulation another vCPU can still run the int3 after the kernel has finished and no
    /// longer claims it. An emulator's race, not the guest's: the one failure worth a
    /// second boot.
    pub fn hit_the_emulated_text_patching_race(&self) -> bool {
        self.oops
            .as_deref()
            .is_some_and(|oops| oops.starts_with("Oops: int3"))
    }

    pub fn summary(&self, machine: &str, why: &str, took: Duration, log: &Path) -> String {
        let mut out = format!(
            "\n== {machine}: {} in {:.0} s (kernel {}, serial log {})\n   {why}\n",
            if self.passed() { "PASS" } else { "FAIL" },
            took.as_secs_f64(),
            self.kernel.as_deref().unwrap_or("did not report"),
            log.display()
        );
        if let Some(cgroups) = &self.cgroups {
            out.push_str(&format!("   cgroups {cgroups}\n"));
        }
        if let Some(paths) = &self.paths {
            out.push_str(&format!("   paths {paths}\n"));
        }
        if let Some(error) = &self.snapshot_error {
            out.push_str(&format!("   reapwatch snapshot failed: {error}\n"));
        }
        for (program, attach) in &self.hooks {
            out.push_str(&format!("   hook {program:<26} {attach}\n"));
        }
        for (name, exe) in &self.executables {
            out.push_str(&format!(
                "   {name}: {} (exit {})\n",
                exe.result.as_deref().unwrap_or("no test result"),
                exe.exit.map_or("none".to_owned(), |c| c.to_string())
            ));
            for (test, outcome) in &exe.tests {
                out.push_str(&format!("      {outcome:<7} {test}\n"));
            }
        }
        if let Some(oops) = &self.oops {
            out.push_str(&format!("   kernel {oops}\n"));
        }
        if !self.finished {
            out.push_str("   the guest never reached the end of /init (hang, oops or timeout)\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
[    0.000000] Linux version 6.1.0\r
reapwatch-vm: kernel 6.1.0-56-cloud-amd64\r
reapwatch-vm: cgroups v2: /sys/fs/cgroup cgroup2 \r
reapwatch-vm: snapshot {\"tracer\": {\"paths\": {\"zombie_store\": \"hash\"}, \"hooks\": [{\"program\": \"sched_process_free\", \"attach\": \"tp_btf/sched_process_free\"}]}}\r
reapwatch-vm: begin storm-0123\r
running 1 test\r
test fork_storm_counts_exactly ... ok\r
\r
test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 9.1s\r
reapwatch-vm: end storm-0123 rc=0\r
reapwatch-vm: all done\r
";

    #[test]
    fn a_complete_log_passes() {
        let run = GuestRun::parse(LOG);
        assert!(run.passed(), "{run:?}");
        assert_eq!(run.kernel.as_deref(), Some("6.1.0-56-cloud-amd64"));
        assert_eq!(
            run.hooks,
            [(
                "sched_process_free".to_owned(),
                "tp_btf/sched_process_free".to_owned()
            )]
        );
        assert_eq!(run.paths.as_deref(), Some("zombie_store=hash"));
        assert!(run
            .summary("m", "why", Duration::from_secs(1), Path::new("l"))
            .contains("   cgroups v2: /sys/fs/cgroup cgroup2\n"));
        let storm = &run.executables["storm-0123"];
        assert_eq!(
            storm.tests,
            [("fork_storm_counts_exactly".to_owned(), "ok".to_owned())]
        );
    }

    #[test]
    fn coloured_results_are_read_as_plain() {
        let log = LOG
            .replace("test result: ok.", "test result: \x1b[32mok\x1b(B\x1b[m.")
            .replace(" ... ok", " ... \x1b[32mok\x1b(B\x1b[m");
        let run = GuestRun::parse(&log);
        assert!(run.passed(), "{run:?}");
        assert_eq!(
            run.executables["storm-0123"].tests,
            [("fork_storm_counts_exactly".to_owned(), "ok".to_owned())]
        );
    }

    #[test]
    fn a_hung_guest_fails() {
        let cut = &LOG[..LOG.find("reapwatch-vm: end").unwrap()];
        let run = GuestRun::parse(cut);
        assert!(!run.passed());
        assert!(run
            .summary("k", "why", Duration::ZERO, Path::new("l"))
            .contains("never reached the end"));
    }

    #[test]
    fn a_failed_test_fails() {
        let log = LOG
            .replace("test result: ok.", "test result: FAILED.")
            .replace("rc=0", "rc=101");
        assert!(!GuestRun::parse(&log).passed());
        // A non-zero exit alone fails too (e.g. a crash after the summary line).
        assert!(!GuestRun::parse(&LOG.replace("rc=0", "rc=139")).passed());
    }

    #[test]
    fn an_int3_oops_is_the_emulators_race_and_no_other_is() {
        let cut = &LOG[..LOG.find("reapwatch-vm: end").unwrap()];
        let int3 = format!("{cut}[  237.274526] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\r\n");
        let run = GuestRun::parse(&int3);
        assert!(!run.passed());
        assert!(run.hit_the_emulated_text_patching_race());
        assert!(run
            .summary("k", "why", Duration::ZERO, Path::new("l"))
            .contains("kernel Oops: int3"));
        let fault = int3.replace("Oops: int3", "Oops: general protection fault");
        assert!(!GuestRun::parse(&fault).hit_the_emulated_text_patching_race());
        assert!(!GuestRun::parse(LOG).hit_the_emulated_text_patching_race());
    }

    #[test]
    fn a_failed_snapshot_fails() {
        let log = LOG.replace(
            "snapshot {\"tracer\": {\"paths\": {\"zombie_store\": \"hash\"}, \"hooks\": [{\"program\": \"sched_process_free\", \"attach\": \"tp_btf/sched_process_free\"}]}}",
            "snapshot reapwatch: cannot load the eBPF object: invalid argument",
        );
        let run = GuestRun::parse(&log);
        assert!(!run.passed());
        assert!(run.snapshot_error.unwrap().contains("cannot load"));
    }
}
