//! Shared pieces of the end-to-end tests: the zombie-making helper, throwaway cgroups, and
//! `/proc` ground truth.

use std::{
    collections::BTreeMap,
    ffi::{OsStr, OsString},
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

pub mod datadog;
mod pki;

pub use pki::Pki;

use reapwatch::{
    cgroup::{CgroupHierarchy, HierarchyChoice},
    kernel::{preflight, MapSizes},
    procfs,
    state::StateEngine,
};

/// How much earlier than the event the programs may date it: they read the clock once a
/// kernel tick (10 ms at the lowest HZ), so an age can read up to that much more than the
/// time the test measured around it.
pub const KERNEL_TICK_SECONDS: f64 = 0.01;

/// The tracer with maps of `sizes`, loaded on the host's /proc and cgroups, never reconciled:
/// everything it reports, its programs saw.
pub fn load_engine(sizes: MapSizes) -> StateEngine {
    StateEngine::load(
        &preflight::check_all().expect("preflight (run as root)"),
        sizes,
        HierarchyChoice::Auto,
    )
    .expect("load the tracer (run as root)")
}

/// A cgroup of its own, in the hierarchy reapwatch counts by (unified on v2 hosts, v1 `pids`
/// on hybrid ones), so that per-cgroup counters count only one test's work.
pub struct TestCgroup {
    pub path: PathBuf,
    root: PathBuf,
}

impl TestCgroup {
    pub fn new(name: &str) -> Self {
        Self::in_hierarchy(HierarchyChoice::Auto, name)
    }

    /// A cgroup named with any bytes a directory name can hold, as tenants may name theirs.
    pub fn with_raw_name(name: &OsStr) -> Self {
        Self::create(HierarchyChoice::Auto, name)
    }

    /// A cgroup in the hierarchy `choice` names (to test attribution by each).
    pub fn in_hierarchy(choice: HierarchyChoice, name: &str) -> Self {
        Self::create(choice, name.as_ref())
    }

    fn create(choice: HierarchyChoice, name: &OsStr) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let hierarchy = hierarchy(choice);
        let root = hierarchy.root().join("reapwatch-tests");
        fs::create_dir_all(&root).expect("create the tests' cgroup");
        let mut unique = OsString::from(name);
        unique.push(format!(
            "-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let path = root.join(unique);
        fs::create_dir(&path).expect("create a test cgroup");
        enable_pids_below(hierarchy.root(), &path);
        Self {
            path,
            root: hierarchy.root().to_path_buf(),
        }
    }

    /// A cgroup nested at `relative` below this one (such as a kubelet-shaped path).
    pub fn nested(&self, relative: &str) -> Self {
        let path = self.path.join(relative);
        fs::create_dir_all(&path).expect("create a nested test cgroup");
        enable_pids_below(&self.root, &path);
        Self {
            path,
            root: self.root.clone(),
        }
    }

    /// The path as `/proc/<pid>/cgroup` shows it, decoded lossily (U+FFFD for invalid bytes),
    /// as reapwatch shows and labels it.
    pub fn host_path(&self) -> String {
        let relative = self.path.strip_prefix(&self.root).expect("under the root");
        format!("/{}", relative.display())
    }

    /// The cgroup id the kernel programs key counters by.
    pub fn id(&self) -> u64 {
        fs::metadata(&self.path).expect("cgroup exists").ino()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The helper's last processes may still be on their way out. Nested directories
        // created on the way are removed too, innermost first.
        for dir in self
            .path
            .ancestors()
            .take_while(|d| d.file_name() != Some("reapwatch-tests".as_ref()))
        {
            // A sibling still lives below: the last one to go removes the shared ancestors.
            if dir != self.path && has_child_cgroups(dir) {
                break;
            }
            // Up to 10 s: under emulation (vm-test) exiting tasks leave slowly.
            for _ in 0..500 {
                if fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn has_child_cgroups(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|entries| entries.flatten().any(|e| e.path().is_dir()))
}

/// On cgroup v2 a child has `pids.max` only where every ancestor enables the controller for
/// its children: enable it from `root` down to `leaf`'s parent, where the hierarchy has it
/// (pure v2; a hybrid host's unified hierarchy has no controllers).
fn enable_pids_below(root: &Path, leaf: &Path) {
    let mut dirs: Vec<&Path> = leaf
        .ancestors()
        .skip(1)
        .take_while(|dir| dir.starts_with(root))
        .collect();
    dirs.reverse();
    for dir in dirs {
        let controllers = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        if controllers.split_whitespace().any(|c| c == "pids") {
            fs::write(dir.join("cgroup.subtree_control"), "+pids")
                .expect("enable the pids controller for children");
        }
    }
}

/// The hierarchies this host mounts that attribution can key by: v1 `pids` and the unified
/// one, each where mounted.
pub fn mounted_hierarchies() -> Vec<HierarchyChoice> {
    [HierarchyChoice::Pids, HierarchyChoice::Unified]
        .into_iter()
        .filter(|&choice| {
            CgroupHierarchy::choose(Path::new("/sys/fs/cgroup"), choice).is_ok_and(|h| h.is_some())
        })
        .collect()
}

fn hierarchy(choice: HierarchyChoice) -> CgroupHierarchy {
    CgroupHierarchy::choose(Path::new("/sys/fs/cgroup"), choice)
        .expect("the hierarchy is mounted")
        .expect("tests need cgroupfs")
}

/// A running `zombie-helper`.
pub struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// The process whose unreaped children the shape makes.
    pub parent: u32,
    /// Pids the helper announced with `child PID`.
    pub children: Vec<u32>,
}

impl Helper {
    pub fn start(shape: &str, n: u32, cgroup: &TestCgroup) -> Self {
        Self::start_with(shape, n, &[], cgroup)
    }

    /// A shape that takes arguments after N.
    pub fn start_with(shape: &str, n: u32, args: &[&str], cgroup: &TestCgroup) -> Self {
        Self::start_wrapped(&[], shape, n, args, cgroup)
    }

    /// A shape run under `wrapper` (a command that execs its arguments, such as
    /// [`DAEMONSET_CAPABILITIES`]): the helper and its zombies carry what it leaves them.
    pub fn start_wrapped(
        wrapper: &[&str],
        shape: &str,
        n: u32,
        args: &[&str],
        cgroup: &TestCgroup,
    ) -> Self {
        let mut child = wrapped(wrapper, &workspace_binary("zombie-helper"))
            .arg("--cgroup")
            .arg(&cgroup.path)
            .arg(shape)
            .arg(n.to_string())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn zombie-helper");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let parent = child.id();
        let mut helper = Self {
            child,
            stdin,
            stdout,
            parent,
            children: Vec::new(),
        };
        helper.until_ready();
        helper
    }

    fn until_ready(&mut self) {
        loop {
            let mut line = String::new();
            let read = self
                .stdout
                .read_line(&mut line)
                .expect("read helper output");
            assert!(
                read > 0,
                "zombie-helper ended early: {:?}",
                self.child.try_wait()
            );
            let mut words = line.split_whitespace();
            match (words.next(), words.next().and_then(|w| w.parse().ok())) {
                (Some("ready"), _) => return,
                (Some("parent"), Some(pid)) => self.parent = pid,
                (Some("child"), Some(pid)) => self.children.push(pid),
                _ => panic!("unexpected helper output {line:?}"),
            }
        }
    }

    /// Advances a multi-stage shape.
    pub fn step(&mut self) {
        let stdin = self.stdin.as_mut().expect("helper stdin open");
        writeln!(stdin, "step").expect("write to helper");
        self.until_ready();
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Root with exactly the DaemonSet's capabilities (deploy/daemonset.yaml drops ALL and adds
/// these): a wrapper for [`Daemon::start_wrapped`], [`Helper::start_wrapped`], [`wrapped`].
pub const DAEMONSET_CAPABILITIES: &[&str] = &[
    "setpriv",
    "--bounding-set=-all,+bpf,+perfmon,+sys_resource",
    "--",
];

/// `program` run under `wrapper` (empty: as is).
pub fn wrapped(wrapper: &[&str], program: &Path) -> Command {
    match wrapper.split_first() {
        Some((first, args)) => {
            let mut command = Command::new(first);
            command.args(args).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// Starts `reapwatch trace --json ARGS` under `wrapper` (empty: as is) and returns once the
/// programs are attached: its first line on stderr says so.
pub fn start_trace(wrapper: &[&str], args: &[&str]) -> Child {
    let mut child = wrapped(wrapper, &workspace_binary("reapwatch"))
        .args(["trace", "--json"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn reapwatch trace");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    stderr.read_line(&mut line).expect("trace stderr");
    assert!(line.contains("tracing"), "trace did not start: {line}");
    child.stderr = Some(stderr.into_inner());
    child
}

/// A binary of the workspace (`reapwatch`, `zombie-helper`): cargo puts test executables in
/// `target/<profile>/deps` and the workspace's binaries one level up.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let binary = dir.join(name);
    assert!(
        binary.exists(),
        "{} missing: build the workspace's binaries",
        binary.display()
    );
    binary
}

/// Ground truth: the unreaped children of `ppid` according to `/proc` (pid -> stat).
pub fn proc_unreaped_children(ppid: u32) -> BTreeMap<u32, procfs::ProcStat> {
    procfs::scan(Path::new("/proc"))
        .expect("scan /proc")
        .processes
        .into_iter()
        .filter(|p| p.ppid == ppid && p.is_unreaped_zombie())
        .map(|p| (p.pid, p))
        .collect()
}

/// The thread of `pid` named `name`.
pub fn thread_named(pid: u32, name: &str) -> Option<i32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .find(|task| {
            fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.trim() == name)
        })
        .and_then(|task| task.file_name().to_str()?.parse().ok())
}

/// Stops one thread of another process (ptrace stops threads one by one) until dropped.
pub struct StoppedThread(i32);

impl StoppedThread {
    pub fn stop(tid: i32) -> Self {
        let null = std::ptr::null_mut::<libc::c_void>();
        assert_eq!(
            unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, null, null) },
            0,
            "seize"
        );
        assert_eq!(
            unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, null, null) },
            0,
            "interrupt"
        );
        let mut status = 0;
        assert_eq!(
            unsafe { libc::waitpid(tid, &mut status, libc::__WALL) },
            tid,
            "wait for the stop"
        );
        Self(tid)
    }
}

impl Drop for StoppedThread {
    fn drop(&mut self) {
        let null = std::ptr::null_mut::<libc::c_void>();
        unsafe { libc::ptrace(libc::PTRACE_DETACH, self.0, null, null) };
    }
}

/// Ends one thread of another process, not the process: seized and stopped where it waits in
/// a system call (the sampler between samples), its registers are set to make the
/// instruction before, `syscall`, an `exit(0)` of that thread alone. x86_64 only.
#[cfg(target_arch = "x86_64")]
pub fn end_thread(tid: i32) {
    let null = std::ptr::null_mut::<libc::c_void>();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stopped = StoppedThread::stop(tid);
        let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        let got = unsafe { libc::ptrace(libc::PTRACE_GETREGS, tid, null, &raw mut regs) };
        assert_eq!(got, 0, "registers of {tid}");
        // Stopped inside a system call, the instruction pointer is just after `syscall`
        // (0f 05) and orig_rax names the call; elsewhere, let it run and try again.
        let before = regs.rip - 2;
        let word = unsafe { libc::ptrace(libc::PTRACE_PEEKTEXT, tid, before, null) };
        if regs.orig_rax as i64 >= 0 && word & 0xffff == 0x050f {
            regs.rip = before;
            regs.rax = libc::SYS_exit as u64;
            regs.orig_rax = u64::MAX;
            regs.rdi = 0;
            let set = unsafe { libc::ptrace(libc::PTRACE_SETREGS, tid, null, &raw const regs) };
            assert_eq!(set, 0, "set the registers of {tid}");
            drop(stopped);
            // A thread other than the leader is released as it exits: its /proc entry goes.
            let gone = eventually(Duration::from_secs(5), || {
                !Path::new(&format!("/proc/{tid}")).exists()
            });
            assert!(gone, "thread {tid} did not end");
            return;
        }
        drop(stopped);
        assert!(
            Instant::now() < deadline,
            "thread {tid} never waited in a call"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `condition` every 10 ms for up to `timeout`; the kernel's notifications (the RCU
/// grace period before `sched_process_free`) are asynchronous.
pub fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running `reapwatch serve` on a free loopback port.
pub struct Daemon {
    child: Child,
    pub port: u16,
}

impl Daemon {
    /// Starts it and waits until `/readyz` answers 200.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_wrapped(&[], extra)
    }

    /// Starts it under `wrapper` (a command that execs its arguments, such as `unshare -m`),
    /// and waits until `/readyz` answers 200: seconds here, up to a minute in an emulated
    /// arm64 guest on a busy machine.
    pub fn start_wrapped(wrapper: &[&str], extra: &[&str]) -> Self {
        let mut daemon = Self::spawn(wrapper, extra);
        let ready = eventually(Duration::from_secs(90), || {
            daemon.assert_running();
            daemon
                .get("/readyz")
                .is_some_and(|(status, _)| status == 200)
        });
        assert!(ready, "reapwatch serve never became ready");
        daemon
    }

    /// Starts it under `wrapper` without waiting for anything (for endpoints that plain HTTP
    /// cannot ask, such as TLS), sampling fast unless `extra` sets its own intervals.
    pub fn spawn(wrapper: &[&str], extra: &[&str]) -> Self {
        let mut args = Vec::new();
        for (flag, value) in [
            ("--sample-interval", "200ms"),
            ("--reconcile-interval", "1s"),
            ("--log-level", "warn"),
        ] {
            if !extra.contains(&flag) {
                args.extend([flag, value]);
            }
        }
        args.extend(extra);
        Self::spawn_with(wrapper, &args)
    }

    /// Starts it under `wrapper` with `args` alone after `--listen`: a deployment's sampling
    /// intervals and log level unless `args` name them.
    pub fn spawn_with(wrapper: &[&str], args: &[&str]) -> Self {
        let port = free_port();
        let child = wrapped(wrapper, &workspace_binary("reapwatch"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .spawn()
            .expect("spawn reapwatch serve");
        Self { child, port }
    }

    /// Panics if it has exited.
    pub fn assert_running(&mut self) {
        assert!(
            self.child.try_wait().expect("wait").is_none(),
            "reapwatch serve exited"
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `(status, body)` of a GET, None if the connection failed.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        get(&format!("http://127.0.0.1:{}{path}", self.port), &[])
    }

    pub fn scrape(&self) -> String {
        let (status, body) = self.get("/metrics").expect("scrape");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("reapwatch serve ignored SIGTERM");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(status, body)` of an HTTP GET with extra headers; None if the connection failed.
pub fn get(url: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut request = agent.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request.call().ok()?;
    let status = response.status().as_u16();
    Some((status, response.body_mut().read_to_string().ok()?))
}

/// The value of the one sample `name` whose labels include every `(label, value)` of `wanted`,
/// in Prometheus text exposition. Panics, showing the exposition, when two series match: a
/// duplicate series is a bug a test must not read past.
pub fn sample_value(exposition: &str, name: &str, wanted: &[(&str, &str)]) -> Option<f64> {
    let mut matching = exposition.lines().filter_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, labels) = match series.split_once('{') {
            Some((metric, rest)) => (metric, parse_labels(rest.strip_suffix('}')?)?),
            None => (series, Vec::new()),
        };
        let matches = metric == name
            && wanted
                .iter()
                .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v));
        matches.then(|| (line, value.parse::<f64>().ok()))
    });
    let (first, value) = matching.next()?;
    if let Some((second, _)) = matching.next() {
        panic!(
            "{name} {wanted:?} matches more than one series:\n{first}\n{second}\nin\n{exposition}"
        );
    }
    value
}

/// One sample of a text exposition.
#[derive(Clone, Debug)]
pub struct ExposedSample {
    /// Its family and the family's type, as `# TYPE` says.
    pub family: String,
    pub kind: String,
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Every sample of a Prometheus text exposition, in order.
pub fn exposed_samples(exposition: &str) -> Vec<ExposedSample> {
    let (mut family, mut kind) = (String::new(), String::new());
    let mut samples = Vec::new();
    for line in exposition.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let (name, declared_kind) = declared.split_once(' ').expect("# TYPE NAME KIND");
            (family, kind) = (name.to_owned(), declared_kind.to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample and its value");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (
                name,
                parse_labels(rest.strip_suffix('}').expect("closed labels")).expect("labels"),
            ),
            None => (series, Vec::new()),
        };
        samples.push(ExposedSample {
            family: family.clone(),
            kind: kind.clone(),
            name: name.to_owned(),
            labels,
            value: value.parse().expect("a sample value"),
        });
    }
    samples
}

/// `a="x",b="y\"z"` into pairs, undoing the exposition's escapes.
fn parse_labels(text: &str) -> Option<Vec<(String, String)>> {
    let mut labels = Vec::new();
    let mut chars = text.chars().peekable();
    while chars.peek().is_some() {
        let name: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        }
        labels.push((name, value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    Some(labels)
}

/// Runs `promtool check metrics` on an exposition; returns its complaints, if any.
pub fn promtool_check_metrics(exposition: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("feed promtool");
    let output = child.wait_with_output().expect("promtool");
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// A kubelet-like log tree naming one pod and its container, for attribution tests.
pub struct FakeKubelet {
    pub root: PathBuf,
}

impl FakeKubelet {
    pub fn new(namespace: &str, pod: &str, uid: &str, container: &str, container_id: &str) -> Self {
        let root = std::env::temp_dir().join(format!("reapwatch-kubelet-{uid}"));
        fs::create_dir_all(root.join(format!("pods/{namespace}_{pod}_{uid}/{container}")))
            .expect("pod log dir");
        fs::create_dir_all(root.join("containers")).expect("containers dir");
        fs::write(
            root.join(format!(
                "containers/{pod}_{namespace}_{container}-{container_id}.log"
            )),
            "",
        )
        .expect("container log");
        Self { root }
    }

    pub fn pods_dir(&self) -> String {
        self.root.join("pods").display().to_string()
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// The JSON document a successful `reapwatch ARGS` prints (`snapshot --json`, `scan --json`).
pub fn reapwatch_json(args: &[&str]) -> serde_json::Value {
    let output = Command::new(workspace_binary("reapwatch"))
        .args(args)
        .output()
        .expect("run reapwatch");
    assert!(
        output.status.success(),
        "reapwatch {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("one JSON document")
}

/// The entry of `pid` in a report's `parents` array (`snapshot --json`, `scan --json`).
pub fn parent_entry(report: &serde_json::Value, pid: u32) -> &serde_json::Value {
    report["parents"]
        .as_array()
        .expect("a parents array")
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("parent {pid} not listed in {report}"))
}

/// The `age_source` of a zombie found in `/proc` rather than seen exiting: its exit time comes
/// from the scheduler where the kernel has scheduler debug info, else it is a lower bound.
pub fn found_age_source() -> &'static str {
    if Path::new("/proc/self/sched").exists() {
        "scheduler"
    } else {
        "first_seen"
    }
}

/// A real Prometheus server (Debian's `prometheus`) on a free loopback port, scraping
/// reapwatch as job `reapwatch`.
pub struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    /// Scrapes `127.0.0.1:target_port` over plain HTTP every second.
    pub fn start(target_port: u16) -> Self {
        Self::start_with(target_port, "1s", "")
    }

    /// Scrapes `127.0.0.1:target_port` every `interval`, with `extra` YAML lines (indented
    /// as keys of the scrape config, such as `scheme` and `tls_config`).
    pub fn start_with(target_port: u16, interval: &str, extra: &str) -> Self {
        Self::launch(target_port, interval, extra, None)
    }

    /// Scrapes every second and evaluates `rules` (a Prometheus rule file) every second.
    pub fn start_with_rules(target_port: u16, rules: &str) -> Self {
        Self::launch(target_port, "1s", "", Some(rules))
    }

    fn launch(target_port: u16, interval: &str, extra: &str, rules: Option<&str>) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "reapwatch-prometheus-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).expect("prometheus dir");
        let config = dir.join("prometheus.yml");
        let rule_files = match rules {
            Some(rules) => {
                let file = dir.join("rules.yml");
                fs::write(&file, rules).expect("prometheus rules");
                format!("rule_files: ['{}']\n", file.display())
            }
            None => String::new(),
        };
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: {interval}\n  evaluation_interval: 1s\n{rule_files}scrape_configs:\n  - job_name: reapwatch\n{extra}    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .expect("prometheus config");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package prometheus)");
        Self { child, port, dir }
    }

    /// The instant vector of a PromQL query: `(labels, value)` pairs.
    pub fn query(&self, promql: &str) -> Vec<(serde_json::Value, f64)> {
        let mut url = format!("http://127.0.0.1:{}/api/v1/query?query=", self.port);
        for byte in promql.bytes() {
            if byte.is_ascii_alphanumeric() {
                url.push(byte as char);
            } else {
                url.push_str(&format!("%{byte:02X}"));
            }
        }
        let Some((200, body)) = get(&url, &[]) else {
            return Vec::new();
        };
        let response: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        response["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|r| {
                (
                    r["metric"].clone(),
                    r["value"][1]
                        .as_str()
                        .and_then(|v| v.parse().ok())
                        .expect("a sample value"),
                )
            })
            .collect()
    }

    /// The reason Prometheus gives for the last failed scrape of reapwatch, if any.
    pub fn last_error(&self) -> String {
        get(
            &format!("http://127.0.0.1:{}/api/v1/targets", self.port),
            &[],
        )
        .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
        .map(|v| v["data"]["activeTargets"][0]["lastError"].to_string())
        .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[cfg(test)]
mod tests {
    use super::sample_value;

    const EXPOSITION: &str = "# TYPE reapwatch_zombies gauge\n\
        reapwatch_zombies{cgroup=\"/a\",pod=\"\"} 3\n\
        reapwatch_zombies{cgroup=\"/b\",pod=\"\"} 1\n\
        reapwatch_node_zombies 4\n";

    #[test]
    fn one_series_matches() {
        assert_eq!(
            sample_value(EXPOSITION, "reapwatch_zombies", &[("cgroup", "/a")]),
            Some(3.0)
        );
        assert_eq!(
            sample_value(EXPOSITION, "reapwatch_node_zombies", &[]),
            Some(4.0)
        );
        assert_eq!(
            sample_value(EXPOSITION, "reapwatch_zombies", &[("cgroup", "/c")]),
            None
        );
    }

    #[test]
    #[should_panic(expected = "matches more than one series")]
    fn labels_that_match_two_series_are_refused() {
        sample_value(EXPOSITION, "reapwatch_zombies", &[("pod", "")]);
    }

    #[test]
    #[should_panic(expected = "matches more than one series")]
    fn a_duplicate_series_is_refused() {
        let duplicated = format!("{EXPOSITION}reapwatch_zombies{{cgroup=\"/a\",pod=\"\"}} 3\n");
        sample_value(&duplicated, "reapwatch_zombies", &[("cgroup", "/a")]);
    }
}
