//! Parsers for the `/proc` files reapwatch reads: the ground truth it reconciles against.

use std::{
    collections::{BTreeMap, HashMap},
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use crate::{clock::monotonic_ns, escape};

/// The fields of `/proc/<pid>/stat` reapwatch uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    /// Raw bytes of the command name: the kernel allows any byte but NUL.
    pub comm: Vec<u8>,
    pub state: u8,
    pub ppid: u32,
    pub num_threads: u32,
    /// Start time in clock ticks since boot: with the pid, an identity that survives pid reuse.
    pub start_ticks: u64,
    /// Signal the parent gets at exit (SIGCHLD normally; anything else escapes plain `wait()`).
    pub exit_signal: Option<i32>,
    /// Wait status of an exited process (field 52; zero while it runs, absent before 3.5).
    pub exit_status: Option<i32>,
    /// The CPU it last ran on (field 39).
    pub processor: Option<u32>,
}

impl ProcStat {
    /// An exited process its parent can reap: `Z` and no thread left but the leader (a leader
    /// that exits while other threads live is shown as `Z` too, but is not reapable).
    pub fn is_unreaped_zombie(&self) -> bool {
        self.state == b'Z' && self.num_threads == 1
    }

    pub fn is_exited(&self) -> bool {
        matches!(self.state, b'Z' | b'X' | b'x')
    }
}

/// Parses `/proc/<pid>/stat`. The comm sits between the first `(` and the *last* `)`,
/// because a comm may itself contain spaces and parentheses.
pub fn parse_stat(text: &[u8]) -> Result<ProcStat> {
    let open = text
        .iter()
        .position(|&b| b == b'(')
        .context("no '(' before comm")?;
    let close = text
        .iter()
        .rposition(|&b| b == b')')
        .context("no ')' after comm")?;
    if close < open {
        bail!("')' before '('");
    }
    let pid = std::str::from_utf8(&text[..open])?
        .trim()
        .parse()
        .context("bad pid")?;
    let comm = text[open + 1..close].to_vec();
    let rest = std::str::from_utf8(&text[close + 1..]).context("stat fields are not text")?;
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // Numbering from proc(5): field 3 (state) is fields[0].
    let field = |n: usize| -> Result<&str> {
        fields
            .get(n - 3)
            .copied()
            .with_context(|| format!("stat has no field {n}"))
    };
    let state = field(3)?.bytes().next().context("empty state")?;
    Ok(ProcStat {
        pid,
        comm,
        state,
        ppid: field(4)?.parse().context("bad ppid")?,
        num_threads: field(20)?.parse().context("bad num_threads")?,
        start_ticks: field(22)?.parse().context("bad starttime")?,
        exit_signal: field(38).ok().and_then(|f| f.parse().ok()),
        exit_status: field(52).ok().and_then(|f| f.parse().ok()),
        processor: field(39).ok().and_then(|f| f.parse().ok()),
    })
}

/// Reads and parses `/proc/<pid>/stat`; `Ok(None)` when the process is gone.
pub fn read_stat(proc_root: &Path, pid: u32) -> Result<Option<ProcStat>> {
    let dir = proc_root.join(pid.to_string());
    let path = dir.join("stat");
    match fs::read(&path) {
        Ok(text) => {
            let mut stat =
                parse_stat(&text).with_context(|| format!("cannot parse {}", path.display()))?;
            if stat.is_exited() && !may_read_exit_code(&dir) {
                // The kernel prints 0 where the reader may not ptrace: unknown, not success.
                stat.exit_status = None;
            }
            Ok(Some(stat))
        }
        Err(err) if is_gone(&err) => Ok(None),
        Err(err) => Err(err).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Whether the kernel showed this reader the exit code in `stat` (field 52): it does when
/// `ptrace_may_access(PTRACE_MODE_READ_FSCREDS)` allows, which is not "euid 0": root whose
/// capabilities are cut (the DaemonSet's) may not read a zombie whose permitted capabilities
/// exceed its own effective ones, nor another user's without CAP_SYS_PTRACE; LSMs may refuse
/// too. Two views, both required: the commoncap rule read from both sides' `status` (which
/// a zombie keeps), and the kernel's own answer for a namespace link, which makes the same
/// check on 6.x (EACCES when refused) but let readers through on 5.10 where `stat` did not.
/// Unknown whenever either cannot say yes.
fn may_read_exit_code(pid_dir: &Path) -> bool {
    capabilities_allow(pid_dir) && namespace_link_allows(pid_dir)
}

fn namespace_link_allows(pid_dir: &Path) -> bool {
    for link in ["ns/user", "ns/pid"] {
        match fs::read_link(pid_dir.join(link)) {
            Ok(_) => return true,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(_) => return false,
        }
    }
    false
}

/// The commoncap side of `ptrace_may_access`: the same fsuid as the target's uids and its
/// permitted capabilities within this reader's effective ones, or CAP_SYS_PTRACE.
fn capabilities_allow(pid_dir: &Path) -> bool {
    const CAP_SYS_PTRACE: u32 = 19;
    let Some(reader) = *READER.get_or_init(Reader::of_this_process) else {
        return false;
    };
    if reader.effective_caps & (1 << CAP_SYS_PTRACE) != 0 {
        return true;
    }
    let Ok(target) = fs::read_to_string(pid_dir.join("status")) else {
        return false;
    };
    let (Some(target_uids), Some(target_caps)) = (
        status_field(&target, "Uid:"),
        status_field(&target, "CapPrm:"),
    ) else {
        return false;
    };
    let Some(&target_caps) = target_caps.first() else {
        return false;
    };
    // Uid: real, effective, saved, filesystem; the reader's fsuid against all the target's.
    let same_user = target_uids.len() >= 3 && target_uids[..3].iter().all(|&u| u == reader.fsuid);
    same_user && target_caps & !reader.effective_caps == 0
}

/// This process's side of the check. Its credentials never change after start-up, so they
/// are read once, not again for every zombie a scan finds.
#[derive(Clone, Copy)]
struct Reader {
    fsuid: u64,
    effective_caps: u64,
}

static READER: std::sync::OnceLock<Option<Reader>> = std::sync::OnceLock::new();

impl Reader {
    fn of_this_process() -> Option<Self> {
        let status = fs::read_to_string("/proc/self/status").ok()?;
        Some(Self {
            fsuid: *status_field(&status, "Uid:")?.get(3)?,
            effective_caps: *status_field(&status, "CapEff:")?.first()?,
        })
    }
}

/// The numbers of a `/proc/<pid>/status` line (`Uid:` decimal, `Cap*:` hexadecimal).
fn status_field(status: &str, name: &str) -> Option<Vec<u64>> {
    let line = status.lines().find_map(|l| l.strip_prefix(name))?;
    let radix = if name.starts_with("Cap") { 16 } else { 10 };
    line.split_whitespace()
        .map(|w| u64::from_str_radix(w, radix).ok())
        .collect()
}

/// A process that vanished between listing and reading (ENOENT), or was being torn down
/// (ESRCH), is simply not there.
pub fn is_gone(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::NotFound || err.raw_os_error() == Some(libc::ESRCH)
}

/// The pids listed in `proc_root`.
pub fn list_pids(proc_root: &Path) -> Result<Vec<u32>> {
    let entries =
        fs::read_dir(proc_root).with_context(|| format!("cannot list {}", proc_root.display()))?;
    let mut pids = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", proc_root.display()))?;
        if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// Every process of a `/proc` scan, and how many could not be read.
#[derive(Clone, Debug, Default)]
pub struct Scan {
    pub processes: Vec<ProcStat>,
    /// Entries skipped because they could not be read or parsed (a process exiting while it
    /// is read is not one: it is simply gone).
    pub skipped: u64,
}

/// Every process in `proc_root`. One unreadable or malformed entry is skipped and counted,
/// never an error: only a `/proc` that cannot be listed is.
pub fn scan(proc_root: &Path) -> Result<Scan> {
    let mut scan = Scan::default();
    for pid in list_pids(proc_root)? {
        match read_stat(proc_root, pid) {
            Ok(Some(stat)) => scan.processes.push(stat),
            Ok(None) => {}
            Err(err) => {
                log::debug!("skipped: {err:#}");
                scan.skipped += 1;
            }
        }
    }
    Ok(scan)
}

/// One line of `/proc/<pid>/cgroup`: `hierarchy-id:controller-list:path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupLine {
    pub hierarchy_id: u32,
    /// Empty for the unified (v2) hierarchy; `name=systemd` for named v1 hierarchies.
    pub controllers: Vec<String>,
    /// Raw bytes: a cgroup may be named with any byte but `/` and NUL, so the path reaches
    /// the filesystem as is and becomes text (lossily) only to be shown or used as a label.
    pub path: Vec<u8>,
}

impl CgroupLine {
    pub fn is_unified(&self) -> bool {
        self.hierarchy_id == 0 && self.controllers.is_empty()
    }

    pub fn has_controller(&self, name: &str) -> bool {
        self.controllers.iter().any(|c| c == name)
    }
}

/// Parses `/proc/<pid>/cgroup`. The kernel prints paths unescaped, so a cgroup named with a
/// newline splits its line: a line that is not `id:controllers:path` continues the path
/// before it, instead of failing every reader of that process.
pub fn parse_cgroup_file(text: &[u8]) -> Result<Vec<CgroupLine>> {
    let mut lines: Vec<CgroupLine> = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        match parse_cgroup_line(line) {
            Some(parsed) => lines.push(parsed),
            None => match lines.last_mut() {
                Some(previous) => {
                    previous.path.push(b'\n');
                    previous.path.extend_from_slice(line);
                }
                None if line.is_empty() => {}
                None => bail!("malformed cgroup line {:?}", escape::lossy(line)),
            },
        }
    }
    // The file ends with a newline, which is not part of the last path.
    if let Some(last) = lines.last_mut() {
        if text.ends_with(b"\n") {
            last.path.pop();
        }
    }
    Ok(lines)
}

fn parse_cgroup_line(line: &[u8]) -> Option<CgroupLine> {
    let mut parts = line.splitn(3, |&b| b == b':');
    let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
    Some(CgroupLine {
        hierarchy_id: std::str::from_utf8(id).ok()?.parse().ok()?,
        controllers: escape::lossy(controllers)
            .split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect(),
        path: path.to_vec(),
    })
}

/// Reads `/proc/<pid>/cgroup`; `Ok(None)` when the process is gone.
pub fn read_cgroups(proc_root: &Path, pid: u32) -> Result<Option<Vec<CgroupLine>>> {
    let path = proc_root.join(pid.to_string()).join("cgroup");
    match fs::read(&path) {
        Ok(text) => parse_cgroup_file(&text)
            .map(Some)
            .with_context(|| format!("cannot parse {}", path.display())),
        Err(err) if is_gone(&err) => Ok(None),
        Err(err) => Err(err).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// When each process last ran, by the scheduler: for a zombie, when it exited. Returns
/// `CLOCK_MONOTONIC` nanoseconds per pid, for the pids whose CPU and `se.exec_start` (in
/// `/proc/<pid>/sched`, kernels with scheduler debug info) could be read.
///
/// `se.exec_start` is in milliseconds of its CPU's task clock, which leaves out the time the
/// CPU spent in interrupts or stolen by the hypervisor: CPUs' task clocks drift apart by that
/// (hundreds of milliseconds on a busy VM). So each is read against this thread's own, on the
/// same CPU: the thread moves to each CPU in turn (its affinity put back after), where its
/// own `se.exec_start` is that CPU's task clock a moment ago. The result errs short by the
/// interrupt and stolen time since the exit, never long.
pub fn last_ran(proc_root: &Path, processes: &[(u32, u32)]) -> HashMap<u32, u64> {
    let mut by_cpu: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for &(pid, cpu) in processes {
        by_cpu.entry(cpu).or_default().push(pid);
    }
    let mut found = HashMap::new();
    if by_cpu.is_empty() {
        return found;
    }
    let read = |path: PathBuf| parse_exec_start_ms(&fs::read(path).ok()?);
    let Some(affinity) = Affinity::current() else {
        return found;
    };
    for (cpu, pids) in by_cpu {
        if !affinity.pin(cpu) {
            continue;
        }
        let Some(ours) = read(proc_root.join("thread-self/sched")) else {
            continue;
        };
        let at = monotonic_ns();
        for pid in pids {
            if let Some(theirs) = read(proc_root.join(pid.to_string()).join("sched")) {
                let ago_ns = ((ours - theirs).max(0.0) * 1e6) as u64;
                found.insert(pid, at.saturating_sub(ago_ns));
            }
        }
    }
    affinity.restore();
    found
}

/// This thread's CPU affinity, to move it and put it back.
struct Affinity(libc::cpu_set_t);

impl Affinity {
    fn current() -> Option<Self> {
        // SAFETY: a zeroed cpu_set_t is an empty set; the kernel fills it.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::cpu_set_t>();
        (unsafe { libc::sched_getaffinity(0, size, &mut set) } == 0).then_some(Self(set))
    }

    /// Moves this thread to `cpu`; false if it may not run there (a cpuset, or offline).
    fn pin(&self, cpu: u32) -> bool {
        let cpu = cpu as usize;
        if cpu >= libc::CPU_SETSIZE as usize || !unsafe { libc::CPU_ISSET(cpu, &self.0) } {
            return false;
        }
        // SAFETY: as above.
        let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        unsafe { libc::CPU_SET(cpu, &mut one) };
        let size = std::mem::size_of::<libc::cpu_set_t>();
        unsafe { libc::sched_setaffinity(0, size, &one) == 0 }
    }

    fn restore(&self) {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        unsafe { libc::sched_setaffinity(0, size, &self.0) };
    }
}

/// The `se.exec_start` line of a `sched` file, in milliseconds.
pub fn parse_exec_start_ms(text: &[u8]) -> Option<f64> {
    String::from_utf8_lossy(text).lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "se.exec_start")
            .then(|| value.trim().parse().ok())
            .flatten()
            .filter(|ms: &f64| ms.is_finite())
    })
}

/// Node-wide task headroom.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeLimits {
    /// All tasks (threads), zombies included: the 4th field of `/proc/loadavg`.
    pub tasks: u64,
    pub pid_max: u64,
    pub threads_max: u64,
}

impl NodeLimits {
    /// The count at which no new task can be created.
    pub fn limit(&self) -> u64 {
        self.pid_max.min(self.threads_max)
    }
}

pub fn read_node_limits(proc_root: &Path) -> Result<NodeLimits> {
    let read = |file: &str| -> Result<String> {
        let path = proc_root.join(file);
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
    };
    let number = |file: &str| -> Result<u64> {
        read(file)?
            .trim()
            .parse()
            .with_context(|| format!("bad number in {}/{file}", proc_root.display()))
    };
    Ok(NodeLimits {
        tasks: parse_loadavg_tasks(&read("loadavg")?)?,
        pid_max: number("sys/kernel/pid_max")?,
        threads_max: number("sys/kernel/threads-max")?,
    })
}

/// `0.52 0.58 0.59 3/1045 12345`: the total after the slash.
pub fn parse_loadavg_tasks(text: &str) -> Result<u64> {
    text.split_ascii_whitespace()
        .nth(3)
        .and_then(|field| field.split_once('/'))
        .and_then(|(_, total)| total.parse().ok())
        .with_context(|| format!("malformed loadavg {text:?}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn loadavg_total_tasks() {
        assert_eq!(
            parse_loadavg_tasks("0.52 0.58 0.59 3/1045 12345\n").unwrap(),
            1045
        );
        assert!(parse_loadavg_tasks("0.52 0.58").is_err());
        assert!(parse_loadavg_tasks("0.52 0.58 0.59 3-1045 1").is_err());
    }

    #[test]
    fn node_limits_of_this_machine() {
        let limits = read_node_limits(Path::new("/proc")).unwrap();
        assert!(limits.tasks > 1 && limits.tasks < limits.limit());
        assert!(limits.pid_max >= 301);
    }

    use super::*;

    const STAT_TAIL: &str = "Z 4242 4242 4242 0 -1 4227084 80 0 0 0 0 0 0 0 20 0 1 0 987654 0 0 \
                             18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 \
                             0 0 0 0 0 0 0 0";

    #[test]
    fn stat_plain() {
        let stat = parse_stat(format!("4243 (sleep) {STAT_TAIL}").as_bytes()).unwrap();
        assert_eq!(stat.pid, 4243);
        assert_eq!(stat.comm, b"sleep");
        assert_eq!(stat.state, b'Z');
        assert_eq!(stat.ppid, 4242);
        assert_eq!(stat.num_threads, 1);
        assert_eq!(stat.start_ticks, 987654);
        assert_eq!(stat.exit_signal, Some(17));
        assert_eq!(stat.exit_status, Some(0));
        assert!(stat.is_unreaped_zombie());
    }

    #[test]
    fn stat_of_old_kernels_lacks_the_exit_status() {
        let tail: Vec<&str> = STAT_TAIL.split(' ').take(30).collect();
        let stat = parse_stat(format!("5 (old) {}", tail.join(" ")).as_bytes()).unwrap();
        assert_eq!(stat.exit_status, None);
        assert_eq!(stat.exit_signal, None);
    }

    #[test]
    fn stat_comm_with_spaces_and_parentheses() {
        let stat = parse_stat(format!("7 (a) b (c)) {STAT_TAIL}").as_bytes()).unwrap();
        assert_eq!(stat.comm, b"a) b (c)");
        assert_eq!(stat.ppid, 4242);
        assert_eq!(stat.start_ticks, 987654);
    }

    #[test]
    fn stat_comm_with_newline_and_non_utf8() {
        let mut text = b"8 (x\n\xff) ".to_vec();
        text.extend_from_slice(STAT_TAIL.as_bytes());
        let stat = parse_stat(&text).unwrap();
        assert_eq!(stat.comm, b"x\n\xff");
    }

    #[test]
    fn leader_with_live_threads_is_not_unreaped() {
        let tail = STAT_TAIL.replacen(" 20 0 1 0 ", " 20 0 2 0 ", 1);
        let stat = parse_stat(format!("9 (worker) {tail}").as_bytes()).unwrap();
        assert_eq!(stat.num_threads, 2);
        assert!(!stat.is_unreaped_zombie());
    }

    #[test]
    fn stat_truncated_is_an_error() {
        assert!(parse_stat(b"1 (init) S 0 1").is_err());
        assert!(parse_stat(b"1 init S").is_err());
        assert!(parse_stat(b"").is_err());
    }

    #[test]
    fn exec_start_of_a_sched_file() {
        let text = b"sleep (4243, #threads: 1)\n---------\nse.exec_start   :   1527567.240351\nse.vruntime : 4.5\n";
        assert_eq!(parse_exec_start_ms(text), Some(1527567.240351));
        assert_eq!(parse_exec_start_ms(b"se.vruntime : 4.5\n"), None);
        assert_eq!(parse_exec_start_ms(b"se.exec_start : NaN\n"), None);
        assert_eq!(parse_exec_start_ms(b"\xff\xfe:"), None);
    }

    /// The CPUs an affinity allows.
    fn allowed(affinity: &Affinity) -> Vec<u32> {
        (0..libc::CPU_SETSIZE as u32)
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu as usize, &affinity.0) })
            .collect()
    }

    /// CPUs' task clocks drift apart (here by a third of a second, stolen time): a last run
    /// read against another CPU's clock is off by that. So the sleeper sleeps on one CPU and
    /// `last_ran` is called from another (where there are two), free to move to the first.
    #[test]
    fn a_sleeping_thread_last_ran_when_it_went_to_sleep() {
        let affinity = Affinity::current().unwrap();
        let cpus = allowed(&affinity);
        let (here, there) = (cpus[0], cpus[cpus.len() - 1]);
        let (sender, receiver) = std::sync::mpsc::channel();
        let sleeper = std::thread::spawn(move || {
            assert!(Affinity::current().unwrap().pin(there));
            let tid = unsafe { libc::gettid() } as u32;
            sender.send((tid, monotonic_ns())).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(300));
        });
        let (tid, asleep_at) = receiver.recv().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        // A thread's own /proc/<tid> exists, unlisted.
        let stat = read_stat(Path::new("/proc"), tid).unwrap().unwrap();
        assert_eq!(stat.processor, Some(there));
        // On `here` now; allowed everywhere again, it stays there until something moves it.
        assert!(affinity.pin(here));
        affinity.restore();
        let found = last_ran(Path::new("/proc"), &[(tid, there)]);
        sleeper.join().unwrap();
        assert_eq!(
            allowed(&Affinity::current().unwrap()),
            cpus,
            "affinity put back"
        );
        if !Path::new("/proc/self/sched").exists() {
            assert!(found.is_empty());
            return;
        }
        // It went to sleep just after it sent the time; read 100 ms later, on its CPU.
        let last = found[&tid];
        assert!(
            last.abs_diff(asleep_at) < 20_000_000,
            "last ran {} ms from when it slept",
            (last as f64 - asleep_at as f64) / 1e6
        );
    }

    #[test]
    fn scan_skips_and_counts_what_it_cannot_parse() {
        let root = std::env::temp_dir().join(format!("reapwatch-proc-{}", std::process::id()));
        for (pid, stat) in [
            ("10", format!("10 (good) {STAT_TAIL}")),
            ("11", "11 (cut short) S".to_owned()),
            ("12", format!("12 (also good) {STAT_TAIL}")),
        ] {
            fs::create_dir_all(root.join(pid)).unwrap();
            fs::write(root.join(pid).join("stat"), stat).unwrap();
        }
        // Listed, then gone before it is read: not a failure.
        fs::create_dir_all(root.join("13")).unwrap();
        let scan = scan(&root).unwrap();
        fs::remove_dir_all(&root).unwrap();
        let mut pids: Vec<u32> = scan.processes.iter().map(|p| p.pid).collect();
        pids.sort_unstable();
        assert_eq!(pids, [10, 12]);
        assert_eq!(scan.skipped, 1);
    }

    #[test]
    fn cgroup_file_hybrid() {
        let text = "12:pids:/system.slice/containerd.service\n\
                    1:name=systemd:/system.slice/containerd.service\n\
                    3:cpu,cpuacct:/\n\
                    0::/system.slice/containerd.service\n";
        let lines = parse_cgroup_file(text.as_bytes()).unwrap();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].has_controller("pids"));
        assert!(lines[1].has_controller("name=systemd"));
        assert_eq!(lines[2].controllers, ["cpu", "cpuacct"]);
        assert!(lines[3].is_unified());
        assert_eq!(lines[3].path, b"/system.slice/containerd.service");
    }

    #[test]
    fn cgroup_path_may_contain_colons() {
        let lines = parse_cgroup_file(b"0::/a:b:c\n").unwrap();
        assert_eq!(lines[0].path, b"/a:b:c");
    }

    #[test]
    fn cgroup_path_may_hold_any_byte() {
        let lines = parse_cgroup_file(b"12:pids:/bad\xffname\n0::/x\ny\n\n").unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].path, b"/bad\xffname");
        assert_eq!(lines[1].path, b"/x\ny\n");
    }

    #[test]
    fn cgroup_file_malformed() {
        assert!(parse_cgroup_file(b"garbage\n").is_err());
        assert!(parse_cgroup_file(b"x::/\n").is_err());
        assert!(parse_cgroup_file(b"").unwrap().is_empty());
    }
}

/// Random and hostile bytes against the `/proc` parsers: they never panic, and what they
/// parse comes back as it was written.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// A stat line as the kernel prints it: 52 fields, `comm` between parentheses.
    #[allow(clippy::too_many_arguments)]
    fn stat_line(
        pid: u32,
        comm: &[u8],
        state: u8,
        ppid: u32,
        threads: u32,
        start: u64,
        exit_signal: i32,
        exit_status: i32,
    ) -> Vec<u8> {
        let mut fields: Vec<String> = (3..=52).map(|n| (n * 7).to_string()).collect();
        fields[0] = (state as char).to_string();
        fields[1] = ppid.to_string();
        fields[20 - 3] = threads.to_string();
        fields[22 - 3] = start.to_string();
        fields[38 - 3] = exit_signal.to_string();
        fields[52 - 3] = exit_status.to_string();
        let mut line = format!("{pid} (").into_bytes();
        line.extend_from_slice(comm);
        line.extend_from_slice(format!(") {}\n", fields.join(" ")).as_bytes());
        line
    }

    /// One line of a cgroup file: unified, or v1 with a controller list.
    fn cgroup_line() -> impl Strategy<Value = CgroupLine> {
        (
            any::<u32>(),
            prop::collection::vec("[a-z_=]{1,12}", 0..4),
            prop::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(id, controllers, path)| CgroupLine {
                hierarchy_id: if controllers.is_empty() { 0 } else { id },
                controllers,
                path,
            })
    }

    fn cgroup_file(lines: &[CgroupLine]) -> Vec<u8> {
        let mut text = Vec::new();
        for line in lines {
            text.extend_from_slice(
                format!("{}:{}:", line.hierarchy_id, line.controllers.join(",")).as_bytes(),
            );
            text.extend_from_slice(&line.path);
            text.push(b'\n');
        }
        text
    }

    proptest! {
        #[test]
        fn stat_never_panics(text in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_stat(&text);
        }

        #[test]
        fn stat_with_hostile_comm_never_panics(
            comm in prop::collection::vec(any::<u8>(), 0..32),
            tail in prop::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut text = b"42 (".to_vec();
            text.extend_from_slice(&comm);
            text.extend_from_slice(b") ");
            text.extend_from_slice(&tail);
            let _ = parse_stat(&text);
        }

        #[test]
        fn stat_round_trips(
            pid in any::<u32>(),
            comm in prop::collection::vec(any::<u8>(), 0..32),
            state in prop::sample::select(b"RSDZTtXxIPWK".to_vec()),
            ppid in any::<u32>(),
            threads in any::<u32>(),
            start in any::<u64>(),
            exit_signal in any::<i32>(),
            exit_status in any::<i32>(),
        ) {
            let text = stat_line(pid, &comm, state, ppid, threads, start, exit_signal, exit_status);
            let stat = parse_stat(&text).unwrap();
            prop_assert_eq!(stat, ProcStat {
                pid,
                comm,
                state,
                ppid,
                num_threads: threads,
                start_ticks: start,
                exit_signal: Some(exit_signal),
                exit_status: Some(exit_status),
                processor: Some(39 * 7),
            });
        }

        #[test]
        fn cgroup_file_never_panics(text in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_cgroup_file(&text);
        }

        #[test]
        fn cgroup_file_round_trips(lines in prop::collection::vec(cgroup_line(), 1..6)) {
            // A path with a newline followed by something shaped like a line of its own
            // cannot be told from two lines: the kernel does not escape them.
            prop_assume!(lines.iter().all(|l| l
                .path
                .split(|&b| b == b'\n')
                .skip(1)
                .all(|rest| parse_cgroup_line(rest).is_none())));
            prop_assert_eq!(parse_cgroup_file(&cgroup_file(&lines)).unwrap(), lines);
        }

        #[test]
        fn loadavg_never_panics(text in any::<String>()) {
            let _ = parse_loadavg_tasks(&text);
        }
    }
}
