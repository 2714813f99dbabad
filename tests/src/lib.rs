//! Shared pieces of the end-to-end tests: the zombie-making helper, throwaway cgroups, and
//! `/proc` ground truth.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use reapwatch::{cgroup::CgroupHierarchy, procfs};

/// A cgroup of its own, in the hierarchy reapwatch counts by (unified on v2 hosts, v1 `pids`
/// on hybrid ones), so that per-cgroup counters count only one test's work.
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn new(name: &str) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let root = hierarchy().root().join("reapwatch-tests");
        fs::create_dir_all(&root).expect("create the tests' cgroup");
        let path = root.join(format!(
            "{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&path).expect("create a test cgroup");
        Self { path }
    }

    /// The path as `/proc/<pid>/cgroup` shows it.
    pub fn host_path(&self) -> String {
        let hierarchy = hierarchy();
        let relative = self
            .path
            .strip_prefix(hierarchy.root())
            .expect("under the root");
        format!("/{}", relative.display())
    }

    /// The cgroup id the kernel programs key counters by.
    pub fn id(&self) -> u64 {
        fs::metadata(&self.path).expect("cgroup exists").ino()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The helper's last processes may still be on their way out.
        for _ in 0..100 {
            if fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn hierarchy() -> CgroupHierarchy {
    CgroupHierarchy::discover(Path::new("/sys/fs/cgroup")).expect("tests need cgroupfs")
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
        let mut child = Command::new(workspace_binary("zombie-helper"))
            .arg("--cgroup")
            .arg(&cgroup.path)
            .arg(shape)
            .arg(n.to_string())
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
        .into_iter()
        .filter(|p| p.ppid == ppid && p.is_unreaped_zombie())
        .map(|p| (p.pid, p))
        .collect()
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
