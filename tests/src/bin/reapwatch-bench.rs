//! Workloads and a resident tracer for `cargo xtask bench`, which times them with the tracer
//! off and on.
//!
//! - `reapwatch-bench storm N`: N fork / `_exit` / `waitpid` round trips.
//! - `reapwatch-bench pingpong N`: N one-byte round trips between two processes over pipes,
//!   both on one CPU, so that every round trip is two context switches.
//!
//!   Both print `wall_ns W cpu_ns C`: elapsed time, and the CPU time (user + system) of the
//!   workload's processes, which other load on the machine barely changes.
//! - `reapwatch-bench hold [stats] [idle] [log]`: loads reapwatch's programs and state engine
//!   and refreshes it every second, as a resident agent would; prints `ready`, answers each
//!   `stats` line on stdin with `run_ns T run_cnt C` (time spent in its programs and their
//!   runs so far: with `stats`, it turns on the kernel's BPF run-time statistics while it
//!   runs), and at end of stdin prints `rss_kib PEAK map_bytes M prog_bytes P
//!   kernel_log_records N` (kernel memory charged to its maps and programs, and the records
//!   the programs logged). With `idle`, the programs are attached unconfigured (each returns
//!   at its first check) and no state engine runs: the baseline of what the statistics
//!   themselves add to a program run. With `log`, it logs at debug level, as `serve
//!   --log-level debug` does, so the programs' rare-event log is attached and forwarded.
//! - `reapwatch-bench probe URL SECONDS`: requests `URL/healthz` and `URL/metrics` one after
//!   the other for SECONDS, each on a new connection with a 2 s timeout (as the kubelet and
//!   Prometheus do), and prints `PATH MS` per answered request, `PATH failed` per other.
//! - `reapwatch-bench crowd SLEEPERS ZOMBIES`: a node in trouble. Forks SLEEPERS processes
//!   that block, and ZOMBIES children that exit and are not reaped; prints `ready`, and at
//!   end of stdin lets the sleepers go and reaps everything.
//! - `reapwatch-bench churn N LIVE RATE`: N cgroups, made RATE a second in the hierarchy
//!   reapwatch counts by, each holding a process that leaves one unreaped child; once LIVE
//!   newer ones exist, the oldest is removed: its process killed, the orphaned zombie reaped
//!   here (a subreaper), the directory removed. Prints `destroyed K` every 1000 removals and
//!   `done` at the end.
//! - `reapwatch-bench cgroup-entries PID`: how many cgroups the per-cgroup counters map of
//!   the reapwatch process PID holds (its only per-CPU hash map).

use std::{
    collections::VecDeque,
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use reapwatch::{
    cgroup::{CgroupHierarchy, HierarchyChoice},
    kernel::{preflight, MapSizes, Probes},
    state::StateEngine,
};

fn fail(message: &str) -> ! {
    eprintln!("reapwatch-bench: {message}");
    std::process::exit(2)
}

fn os_error(what: &str) -> ! {
    fail(&format!("{what}: {}", io::Error::last_os_error()))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count = || -> u64 {
        args.get(1)
            .and_then(|n| n.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| fail("expected a positive round-trip count"))
    };
    match args.first().map(String::as_str) {
        Some("storm") => report(storm, count()),
        Some("pingpong") => report(pingpong, count()),
        Some("probe") => {
            let seconds = args.get(2).and_then(|s| s.parse().ok());
            match (args.get(1), seconds) {
                (Some(url), Some(seconds)) => probe(url, Duration::from_secs(seconds)),
                _ => fail("usage: reapwatch-bench probe URL SECONDS"),
            }
        }
        Some("crowd") => {
            let number = |i: usize| -> usize {
                args.get(i)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| fail("usage: reapwatch-bench crowd SLEEPERS ZOMBIES"))
            };
            crowd(number(1), number(2))
        }
        Some("hold") => {
            let flag = |name: &str| args[1..].iter().any(|a| a == name);
            hold(flag("stats"), flag("idle"), flag("log"))
        }
        Some("cgroup-entries") => {
            let pid = args
                .get(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| fail("expected a pid"));
            println!("{}", cgroup_entries(pid));
        }
        Some("churn") => {
            let positive = |i: usize, what: &str| -> u64 {
                args.get(i)
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .unwrap_or_else(|| fail(&format!("expected a positive {what}")))
            };
            churn(
                count(),
                positive(2, "count of live cgroups") as usize,
                positive(3, "rate"),
            )
        }
        _ => fail(
            "usage: reapwatch-bench storm N | pingpong N | hold [stats] [idle] [log] | probe URL SECONDS \
             | crowd SLEEPERS ZOMBIES | churn N LIVE RATE | cgroup-entries PID",
        ),
    }
}

/// Runs `workload` and prints its wall and CPU time.
fn report(workload: fn(u64), n: u64) {
    let (start, cpu_start) = (Instant::now(), cpu_ns());
    workload(n);
    let (wall, cpu) = (start.elapsed().as_nanos(), cpu_ns() - cpu_start);
    println!("wall_ns {wall} cpu_ns {cpu}");
}

/// User and system time of this process and its reaped children.
fn cpu_ns() -> u128 {
    [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN]
        .into_iter()
        .map(|who| {
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            if unsafe { libc::getrusage(who, &mut usage) } != 0 {
                os_error("getrusage");
            }
            [usage.ru_utime, usage.ru_stime]
                .iter()
                .map(|t| t.tv_sec as u128 * 1_000_000_000 + t.tv_usec as u128 * 1000)
                .sum::<u128>()
        })
        .sum()
}

fn storm(n: u64) {
    for _ in 0..n {
        match unsafe { libc::fork() } {
            0 => unsafe { libc::_exit(0) },
            -1 => os_error("fork"),
            pid => {
                if unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) } != pid {
                    os_error("waitpid");
                }
            }
        }
    }
}

fn pipe() -> [i32; 2] {
    let mut fds = [0; 2];
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        os_error("pipe");
    }
    fds
}

fn transfer(read_fd: i32, write_fd: i32) -> bool {
    let mut byte = 0u8;
    let read = unsafe { libc::read(read_fd, (&raw mut byte).cast(), 1) };
    read == 1 && unsafe { libc::write(write_fd, (&raw const byte).cast(), 1) } == 1
}

fn pingpong(n: u64) {
    // Same CPU for both: each round trip is exactly a switch there and a switch back, and
    // no cross-CPU wakeup latency blurs it.
    let cpu = unsafe { libc::sched_getcpu() };
    if cpu >= 0 {
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        unsafe { libc::CPU_SET(cpu as usize, &mut set) };
        unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    }
    let [ping_read, ping_write] = pipe();
    let [pong_read, pong_write] = pipe();
    let child = match unsafe { libc::fork() } {
        0 => {
            // Its own copy of the ping writer would keep it from ever seeing the end.
            unsafe { libc::close(ping_write) };
            while transfer(ping_read, pong_write) {}
            unsafe { libc::_exit(0) }
        }
        -1 => os_error("fork"),
        pid => pid,
    };
    for _ in 0..n {
        let byte = 1u8;
        if unsafe { libc::write(ping_write, (&raw const byte).cast(), 1) } != 1 {
            os_error("write");
        }
        let mut back = 0u8;
        if unsafe { libc::read(pong_read, (&raw mut back).cast(), 1) } != 1 {
            os_error("read");
        }
    }
    // The child's CPU time counts once it is reaped.
    unsafe { libc::close(ping_write) };
    unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
}

fn probe(url: &str, window: Duration) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(2)))
        .max_idle_connections(0)
        .build()
        .into();
    let until = Instant::now() + window;
    while Instant::now() < until {
        for path in ["/healthz", "/metrics"] {
            let started = Instant::now();
            let answered = agent
                .get(format!("{url}{path}"))
                .call()
                .ok()
                .filter(|r| r.status() == 200)
                .and_then(|mut r| r.body_mut().read_to_vec().ok());
            match answered {
                Some(_) => println!("{path} {}", started.elapsed().as_secs_f64() * 1000.0),
                None => println!("{path} failed"),
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn crowd(sleepers: usize, zombies: usize) {
    let [read_fd, write_fd] = pipe();
    let mut children = Vec::with_capacity(sleepers + zombies);
    for i in 0..sleepers + zombies {
        match unsafe { libc::fork() } {
            0 => {
                if i < sleepers {
                    unsafe { libc::close(write_fd) };
                    let mut byte = 0u8;
                    // Until the write end closes.
                    unsafe { libc::read(read_fd, (&raw mut byte).cast(), 1) };
                }
                unsafe { libc::_exit(0) }
            }
            -1 => os_error("fork"),
            pid => children.push(pid),
        }
    }
    // Every zombie has exited before the crowd says it is there.
    for &pid in &children[sleepers..] {
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | libc::WNOWAIT;
        if unsafe { libc::waitid(libc::P_PID, pid as u32, &mut info, flags) } != 0 {
            os_error("waitid");
        }
    }
    println!("ready");
    let mut line = String::new();
    while io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {}
    unsafe { libc::close(write_fd) };
    for pid in children {
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    }
}

/// Counts the records the programs log: aya-log gives each their module path as its target,
/// which tells them from the loader's own debug lines.
struct KernelLogCounter(AtomicU64);

impl log::Log for KernelLogCounter {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        if record.target().starts_with("reapwatch_ebpf") {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn flush(&self) {}
}

static KERNEL_LOG: KernelLogCounter = KernelLogCounter(AtomicU64::new(0));

fn hold(stats: bool, idle: bool, kernel_log: bool) {
    // The kernel keeps statistics while this file descriptor is open.
    let _stats_fd = stats.then(enable_bpf_stats);
    if kernel_log {
        // Before loading: the loader attaches the programs' log only at debug level.
        log::set_logger(&KERNEL_LOG).unwrap_or_else(|e| fail(&e.to_string()));
        log::set_max_level(log::LevelFilter::Debug);
    }
    let cleared = preflight::check_all().unwrap_or_else(|e| fail(&format!("{e:#}")));
    let (mut engine, _idle_programs) = if idle {
        (
            None,
            Some(Probes::load_unconfigured(&cleared).unwrap_or_else(|e| fail(&format!("{e:#}")))),
        )
    } else {
        let mut engine = StateEngine::load(&cleared, MapSizes::default(), HierarchyChoice::Auto)
            .unwrap_or_else(|e| fail(&format!("{e:#}")));
        engine
            .reconcile()
            .unwrap_or_else(|e| fail(&format!("{e:#}")));
        (Some(engine), None)
    };
    println!("ready");
    let (done, stop) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        for line in io::stdin().lines().map_while(Result::ok) {
            if line == "stats" {
                let info = bpf_fdinfo();
                let sum = |field: &str| info.iter().map(|i| fdinfo_field(i, field)).sum::<u64>();
                println!("run_ns {} run_cnt {}", sum("run_time_ns:"), sum("run_cnt:"));
            }
        }
        let _ = done.send(());
    });
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(Duration::from_secs(1)) {
        if let Some(engine) = engine.as_mut() {
            engine.refresh().unwrap_or_else(|e| fail(&format!("{e:#}")));
            engine.probes_mut().forward_kernel_log();
        }
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak_rss_kib = fdinfo_field(&status, "VmHWM:");
    let (map_bytes, prog_bytes) = bpf_memlock();
    if let Some(engine) = engine.as_mut() {
        engine.probes_mut().forward_kernel_log();
    }
    let kernel_log_records = KERNEL_LOG.0.load(Ordering::Relaxed);
    println!(
        "rss_kib {peak_rss_kib} map_bytes {map_bytes} prog_bytes {prog_bytes} \
         kernel_log_records {kernel_log_records}"
    );
}

/// `BPF_ENABLE_STATS(BPF_STATS_RUN_TIME)`: per-program run time and count, while the
/// returned descriptor is open.
fn enable_bpf_stats() -> i32 {
    const BPF_ENABLE_STATS: libc::c_long = 32;
    let stats_type: u32 = 0;
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_ENABLE_STATS, &raw const stats_type, 4) };
    if fd < 0 {
        os_error("BPF_ENABLE_STATS");
    }
    fd as i32
}

/// A numeric `name:\tvalue` line of a `/proc` status or fdinfo file; 0 when absent.
fn fdinfo_field(text: &str, field: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The `/proc/self/fdinfo` text of every open file descriptor.
fn bpf_fdinfo() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fdinfo") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .collect()
}

/// Sums the `memlock` the kernel reports for this process's map and program descriptors:
/// what it charges for them.
fn bpf_memlock() -> (u64, u64) {
    let (mut maps, mut progs) = (0, 0);
    for info in bpf_fdinfo() {
        let memlock = fdinfo_field(&info, "memlock:");
        if info.contains("\nmap_type:") {
            maps += memlock;
        } else if info.contains("\nprog_type:") {
            progs += memlock;
        }
    }
    (maps, progs)
}

/// How often `churn` reports progress.
const CHURN_PROGRESS_EVERY: u64 = 1000;

fn churn(total: u64, live: usize, per_second: u64) {
    let hierarchy = CgroupHierarchy::discover(Path::new("/sys/fs/cgroup"))
        .unwrap_or_else(|| fail("no cgroup hierarchy mounted"));
    let base = hierarchy
        .root()
        .join(format!("reapwatch-churn-{}", std::process::id()));
    fs::create_dir(&base)
        .unwrap_or_else(|e| fail(&format!("cannot create {}: {e}", base.display())));
    // Killed parents' zombies come to this process, which reaps them.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) } != 0 {
        os_error("PR_SET_CHILD_SUBREAPER");
    }
    let mut held = VecDeque::with_capacity(live + 1);
    let mut destroyed = 0;
    let mut remove_oldest = |held: &mut VecDeque<Held>| {
        if let Some(oldest) = held.pop_front() {
            oldest.remove();
            destroyed += 1;
            if destroyed % CHURN_PROGRESS_EVERY == 0 || destroyed == total {
                println!("destroyed {destroyed}");
            }
        }
    };
    let start = Instant::now();
    for i in 0..total {
        let due = start + Duration::from_secs(i) / per_second as u32;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        held.push_back(Held::make(base.join(i.to_string())));
        if held.len() > live {
            remove_oldest(&mut held);
        }
    }
    while !held.is_empty() {
        remove_oldest(&mut held);
    }
    remove_cgroup(&base);
    println!("done");
}

/// A cgroup with a process in it that has one unreaped child.
struct Held {
    dir: PathBuf,
    parent: i32,
    zombie: i32,
}

impl Held {
    fn make(dir: PathBuf) -> Self {
        fs::create_dir(&dir)
            .unwrap_or_else(|e| fail(&format!("cannot create {}: {e}", dir.display())));
        let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
            .unwrap_or_else(|_| fail("cgroup path with a NUL byte"));
        let [read_fd, write_fd] = pipe();
        match unsafe { libc::fork() } {
            0 => unsafe {
                // Only system calls between fork and _exit: "0" moves the writer itself.
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, c"0".as_ptr().cast(), 1) != 1 {
                    libc::_exit(1);
                }
                libc::close(fd);
                let zombie = libc::fork();
                if zombie == 0 {
                    libc::_exit(0);
                }
                // Exited, not reaped: the zombie exists before its pid is told.
                let mut info: libc::siginfo_t = std::mem::zeroed();
                let flags = libc::WEXITED | libc::WNOWAIT;
                if zombie < 0 || libc::waitid(libc::P_PID, zombie as u32, &mut info, flags) != 0 {
                    libc::_exit(1);
                }
                libc::write(write_fd, (&raw const zombie).cast(), size_of::<i32>());
                loop {
                    libc::pause();
                }
            },
            -1 => os_error("fork"),
            parent => {
                unsafe { libc::close(write_fd) };
                let mut zombie = 0i32;
                let read =
                    unsafe { libc::read(read_fd, (&raw mut zombie).cast(), size_of::<i32>()) };
                unsafe { libc::close(read_fd) };
                if read != size_of::<i32>() as isize {
                    fail(&format!("the process in {} failed", dir.display()));
                }
                Self {
                    dir,
                    parent,
                    zombie,
                }
            }
        }
    }

    /// Kills the parent; its zombie, orphaned to this subreaper, is reaped here.
    fn remove(self) {
        unsafe { libc::kill(self.parent, libc::SIGKILL) };
        for pid in [self.parent, self.zombie] {
            if unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) } != pid {
                os_error("waitpid");
            }
        }
        remove_cgroup(&self.dir);
    }
}

/// Removes an empty cgroup; the kernel may take a moment to let go of its last tasks.
fn remove_cgroup(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(err) = fs::remove_dir(dir) {
        if Instant::now() > deadline {
            fail(&format!("cannot remove {}: {err}", dir.display()));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Keys in the per-cgroup counters map of process `pid`, found by its fdinfo.
fn cgroup_entries(pid: u32) -> u64 {
    const BPF_MAP_TYPE_PERCPU_HASH: u64 = 5;
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
    #[repr(C)]
    struct GetFdById {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }
    #[repr(C)]
    struct NextKey {
        map_fd: u32,
        _pad: u32,
        key: u64,
        next_key: u64,
        flags: u64,
    }
    let info = fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap_or_else(|e| fail(&format!("cannot read the fds of {pid}: {e}")))
        .filter_map(Result::ok)
        .filter_map(|entry| fs::read_to_string(entry.path()).ok())
        .find(|info| fdinfo_field(info, "map_type:") == BPF_MAP_TYPE_PERCPU_HASH)
        .unwrap_or_else(|| fail(&format!("{pid} holds no per-CPU hash map")));
    let (map_id, max_entries) = (
        fdinfo_field(&info, "map_id:") as u32,
        fdinfo_field(&info, "max_entries:"),
    );
    let by_id = GetFdById {
        id: map_id,
        next_id: 0,
        open_flags: 0,
    };
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_GET_FD_BY_ID,
            &raw const by_id,
            size_of::<GetFdById>(),
        )
    };
    if fd < 0 {
        os_error("BPF_MAP_GET_FD_BY_ID");
    }
    let mut key: u64;
    let mut next = 0u64;
    let mut count = 0;
    let mut attr = NextKey {
        map_fd: fd as u32,
        _pad: 0,
        // NULL: the first key.
        key: 0,
        next_key: (&raw mut next) as u64,
        flags: 0,
    };
    while unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_GET_NEXT_KEY,
            &raw const attr,
            size_of::<NextKey>(),
        )
    } == 0
        // A key deleted meanwhile restarts the walk: never count past the map's size.
        && count < max_entries
    {
        count += 1;
        key = next;
        attr.key = (&raw const key) as u64;
    }
    unsafe { libc::close(fd as i32) };
    count
}
