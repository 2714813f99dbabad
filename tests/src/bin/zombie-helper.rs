//! Makes zombies (and lookalikes that are not zombies) in every shape the tracer must tell
//! apart. Used by the end-to-end tests:
//!
//! `zombie-helper [--cgroup DIR] SHAPE [N]` moves itself into the cgroup v2 directory DIR,
//! builds the shape, prints `parent PID` (the process whose unreaped children to check) and
//! `ready`. Each `step` line on stdin advances multi-stage shapes and is answered by `ready`.
//! End of stdin ends it.

use std::{
    ffi::CString,
    io::{self, Write},
    ptr,
};

fn die(what: &str) -> ! {
    eprintln!("zombie-helper: {what}: {}", io::Error::last_os_error());
    std::process::exit(1)
}

fn check(ret: libc::c_long, what: &str) -> libc::c_long {
    if ret < 0 {
        die(what)
    }
    ret
}

/// One line to the test, at once. A test that stopped reading needs nothing more: the helper
/// then ends quietly.
fn say(line: &str) {
    let mut out = io::stdout();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}

/// Forks a child that exits at once with `code`.
fn spawn_exiting(code: i32) -> i32 {
    match unsafe { libc::fork() } {
        0 => unsafe { libc::_exit(code) },
        -1 => die("fork"),
        pid => pid,
    }
}

/// Blocks until `pid` has exited, without reaping it (any exit signal).
fn wait_exited(pid: i32) {
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOWAIT | libc::__WALL;
    check(
        unsafe { libc::waitid(libc::P_PID, pid as u32, &mut info, flags) } as libc::c_long,
        "waitid",
    );
}

fn reap(pid: i32) {
    check(
        unsafe { libc::waitpid(pid, ptr::null_mut(), libc::__WALL) } as libc::c_long,
        "waitpid",
    );
}

fn pipe() -> [i32; 2] {
    let mut fds = [0; 2];
    check(
        unsafe { libc::pipe(fds.as_mut_ptr()) } as libc::c_long,
        "pipe",
    );
    fds
}

/// Blocks until the write end of the pipe is closed everywhere.
fn block_on(read_fd: i32) {
    let mut byte = 0u8;
    while unsafe { libc::read(read_fd, (&mut byte as *mut u8).cast(), 1) } > 0 {}
}

fn read_proc(pid: i32, file: &str) -> String {
    std::fs::read(format!("/proc/{pid}/{file}"))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Polls `/proc` until `done` holds; the kernel gives no other signal for these transitions.
fn poll_until(done: impl Fn() -> bool) {
    for _ in 0..10_000 {
        if done() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    eprintln!("zombie-helper: state not reached in 10 s");
    std::process::exit(1)
}

/// `clone3` with `set_tid`: a child with a chosen pid, to force pid reuse.
fn spawn_with_pid(pid: i32, code: i32) -> Option<i32> {
    #[repr(C)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let tids = [pid];
    let args = CloneArgs {
        flags: 0,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: tids.as_ptr() as u64,
        set_tid_size: 1,
        cgroup: 0,
    };
    let ret = unsafe { libc::syscall(libc::SYS_clone3, &args, size_of::<CloneArgs>()) };
    match ret {
        0 => unsafe { libc::_exit(code) },
        -1 if io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST) => None,
        -1 => die("clone3"),
        child => Some(child as i32),
    }
}

struct Stages {
    lines: io::Lines<io::StdinLock<'static>>,
}

impl Stages {
    fn ready(&self) {
        say("ready");
    }

    /// Waits for the next `step`; false at end of input.
    fn next(&mut self) -> bool {
        matches!(self.lines.next(), Some(Ok(line)) if line.trim() == "step")
    }
}

fn main() {
    // A cgroup directory may be named with any bytes, so arguments are not assumed UTF-8.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == "sleep-forever") {
        loop {
            unsafe { libc::pause() };
        }
    }
    if args.first().is_some_and(|a| a == "--cgroup") {
        let dir = std::path::PathBuf::from(
            args.get(1)
                .cloned()
                .unwrap_or_else(|| die("--cgroup needs a directory")),
        );
        std::fs::write(dir.join("cgroup.procs"), "0").unwrap_or_else(|_| die("join cgroup"));
        args.drain(..2);
    }
    let shape = args
        .first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_else(|| die("no shape given"));
    let n: i32 = args
        .get(1)
        .and_then(|n| n.to_str()?.parse().ok())
        .unwrap_or(1);
    let mut stages = Stages {
        lines: io::stdin().lines(),
    };
    let me = std::process::id() as i32;
    let mut parent = me;

    match shape.as_str() {
        // N children exit and are not waited for; a `step` reaps them all (`leak-trickle`:
        // one every 50 µs, so that reaps go on for a while).
        "leak" | "leak-trickle" => {
            let pids: Vec<i32> = (0..n).map(|_| spawn_exiting(7)).collect();
            pids.iter().copied().for_each(wait_exited);
            stages.ready();
            if stages.next() {
                for pid in pids {
                    reap(pid);
                    if shape == "leak-trickle" {
                        std::thread::sleep(std::time::Duration::from_micros(50));
                    }
                }
            }
        }
        // Parent and child name themselves with quotes, a newline, braces and a terminal
        // escape; the child exits unreaped: every output must escape the name.
        "hostile-comm" => {
            let name = b"a\"b\nc{}\x1b[2J\0";
            unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) };
            wait_exited(spawn_exiting(0));
        }
        // The parent names itself with a right-to-left override, a zero-width space and an
        // invalid UTF-8 byte (its /proc/PID/status is then not UTF-8), and leaves N children
        // with that name unreaped: terminals must show all of it, visibly.
        "invisible-comm" => {
            let name = b"a\xe2\x80\xaeb\xe2\x80\x8bc\xff\0";
            unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) };
            let pids: Vec<i32> = (0..n).map(|_| spawn_exiting(0)).collect();
            pids.into_iter().for_each(wait_exited);
        }
        // SIGCHLD ignored: the kernel reaps at exit.
        "ignore" => {
            unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
            (0..n).for_each(|_| {
                spawn_exiting(0);
            });
            // With SIGCHLD ignored, wait blocks until every child is gone, then fails.
            unsafe { libc::wait(ptr::null_mut()) };
        }
        // SA_NOCLDWAIT: same effect, handler left at default.
        "nocldwait" => {
            let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
            action.sa_sigaction = libc::SIG_DFL;
            action.sa_flags = libc::SA_NOCLDWAIT;
            check(
                unsafe { libc::sigaction(libc::SIGCHLD, &action, ptr::null_mut()) } as libc::c_long,
                "sigaction",
            );
            (0..n).for_each(|_| {
                spawn_exiting(0);
            });
            unsafe { libc::wait(ptr::null_mut()) };
        }
        // Threads that exit are released at once.
        "threads" => {
            let threads: Vec<_> = (0..n).map(|_| std::thread::spawn(|| ())).collect();
            threads
                .into_iter()
                .for_each(|t| t.join().unwrap_or_else(|_| die("join")));
        }
        // Exit signal 0 (not SIGCHLD): never autoreaped, and plain wait() does not see it.
        "exit-signal" => {
            let pids: Vec<i32> = (0..n)
                .map(|_| {
                    // Raw clone with no stack behaves like fork; the low byte of the flags is
                    // the exit signal, here 0.
                    match unsafe { libc::syscall(libc::SYS_clone, 0, 0, 0, 0, 0) } {
                        0 => unsafe { libc::_exit(3) },
                        -1 => die("clone"),
                        pid => pid as i32,
                    }
                })
                .collect();
            pids.iter().copied().for_each(wait_exited);
            let ret = unsafe { libc::wait(ptr::null_mut()) };
            if ret != -1 {
                eprintln!("zombie-helper: plain wait() reaped {ret}");
                std::process::exit(1);
            }
        }
        // The leader exits alone while a thread lives on: `Z` in /proc but not reapable.
        // Step: the thread exits, and the process becomes a real zombie.
        "leader-exit" => {
            let [read_fd, write_fd] = pipe();
            let child = match unsafe { libc::fork() } {
                0 => {
                    unsafe { libc::close(write_fd) };
                    std::thread::spawn(move || block_on(read_fd));
                    unsafe { libc::syscall(libc::SYS_exit, 0) };
                    unreachable!("SYS_exit returned");
                }
                -1 => die("fork"),
                pid => pid,
            };
            unsafe { libc::close(read_fd) };
            poll_until(|| {
                let stat = read_proc(child, "stat");
                stat.contains(") Z ") && read_proc(child, "status").contains("Threads:\t2")
            });
            stages.ready();
            if stages.next() {
                unsafe { libc::close(write_fd) };
                wait_exited(child);
            }
        }
        // A non-leader thread execs: the old leader is released, the process lives on.
        // Step: kill it, and it becomes a zombie.
        "exec-thread" => {
            let child = match unsafe { libc::fork() } {
                0 => {
                    std::thread::spawn(|| {
                        let exe = CString::new("/proc/self/exe").unwrap_or_else(|_| die("path"));
                        let argv0 = CString::new("zombie-helper").unwrap_or_else(|_| die("arg"));
                        let arg1 = CString::new("sleep-forever").unwrap_or_else(|_| die("arg"));
                        let argv = [argv0.as_ptr(), arg1.as_ptr(), ptr::null()];
                        unsafe { libc::execv(exe.as_ptr(), argv.as_ptr()) };
                        die("execv")
                    });
                    loop {
                        unsafe { libc::pause() };
                    }
                }
                -1 => die("fork"),
                pid => pid,
            };
            poll_until(|| {
                read_proc(child, "cmdline").contains("sleep-forever")
                    && read_proc(child, "status").contains("Threads:\t1")
            });
            stages.ready();
            if stages.next() {
                unsafe { libc::kill(child, libc::SIGKILL) };
                wait_exited(child);
            }
        }
        // A child dies leaving N zombies and N live children: all move to us, a subreaper.
        // Step: the orphans exit, as zombies of ours.
        "orphans" => {
            check(
                unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } as libc::c_long,
                "prctl",
            );
            let [read_fd, write_fd] = pipe();
            let middle = match unsafe { libc::fork() } {
                0 => {
                    let dead: Vec<i32> = (0..n).map(|_| spawn_exiting(5)).collect();
                    for _ in 0..n {
                        if unsafe { libc::fork() } == 0 {
                            unsafe { libc::close(write_fd) };
                            block_on(read_fd);
                            unsafe { libc::_exit(6) };
                        }
                    }
                    dead.into_iter().for_each(wait_exited);
                    unsafe { libc::_exit(0) };
                }
                -1 => die("fork"),
                pid => pid,
            };
            unsafe { libc::close(read_fd) };
            wait_exited(middle);
            stages.ready();
            if stages.next() {
                unsafe { libc::close(write_fd) };
                poll_until(|| count_zombie_children(me) == 2 * n as usize + 1);
            }
        }
        // A child in another cgroup (the directory after N) makes N zombies and dies: they
        // move to us, a subreaper in our cgroup. Step: we reap them.
        "orphans-from" => {
            let elsewhere = args
                .get(2)
                .cloned()
                .unwrap_or_else(|| die("orphans-from needs a cgroup directory"));
            check(
                unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } as libc::c_long,
                "prctl",
            );
            let middle = match unsafe { libc::fork() } {
                0 => {
                    std::fs::write(std::path::Path::new(&elsewhere).join("cgroup.procs"), "0")
                        .unwrap_or_else(|_| die("join the other cgroup"));
                    let dead: Vec<i32> = (0..n).map(|_| spawn_exiting(5)).collect();
                    dead.into_iter().for_each(wait_exited);
                    unsafe { libc::_exit(0) };
                }
                -1 => die("fork"),
                pid => pid,
            };
            reap(middle);
            poll_until(|| count_zombie_children(me) == n as usize);
            stages.ready();
            if stages.next() {
                (0..n).for_each(|_| reap(-1));
            }
        }
        // PID 1 of a new pid namespace that never waits: N children and an orphaned grandchild
        // pile up under it (the datadog-agent shape).
        "pidns-init" => {
            check(
                unsafe { libc::unshare(libc::CLONE_NEWPID) } as libc::c_long,
                "unshare",
            );
            let [read_fd, write_fd] = pipe();
            let init = match unsafe { libc::fork() } {
                0 => {
                    unsafe { libc::close(write_fd) };
                    let dead: Vec<i32> = (0..n).map(|_| spawn_exiting(1)).collect();
                    let middle = match unsafe { libc::fork() } {
                        0 => {
                            wait_exited(spawn_exiting(2));
                            unsafe { libc::_exit(0) }
                        }
                        -1 => die("fork"),
                        pid => pid,
                    };
                    dead.into_iter().for_each(wait_exited);
                    wait_exited(middle);
                    block_on(read_fd);
                    unsafe { libc::_exit(0) };
                }
                -1 => die("fork"),
                pid => pid,
            };
            unsafe { libc::close(read_fd) };
            parent = init;
            poll_until(|| count_zombie_children(init) == n as usize + 2);
            say(&format!("parent {parent}"));
            stages.ready();
            while stages.next() {
                stages.ready();
            }
            unsafe { libc::close(write_fd) };
            return;
        }
        // Children exit unreaped until the cgroup's pids.max has refused N forks: one burst
        // that fills the cgroup.
        "leak-to-limit" => {
            let mut refused = 0;
            for _ in 0..10_000 {
                match unsafe { libc::fork() } {
                    0 => unsafe { libc::_exit(7) },
                    -1 => refused += 1,
                    pid => wait_exited(pid),
                }
                if refused == n {
                    break;
                }
            }
            if refused < n {
                die("no pids.max refused a fork");
            }
        }
        // N processes of 16 threads, 15 of them spinning, all released at once to exit
        // through exit_group(), then reaped: every thread of a group dies concurrently.
        "spinning-groups" => {
            let [release_read, release_write] = pipe();
            let [started_read, started_write] = pipe();
            let pids: Vec<i32> = (0..n)
                .map(|_| match unsafe { libc::fork() } {
                    0 => {
                        unsafe { libc::close(release_write) };
                        for _ in 0..15 {
                            std::thread::spawn(|| loop {
                                std::hint::spin_loop();
                            });
                        }
                        unsafe { libc::write(started_write, [0u8].as_ptr().cast(), 1) };
                        block_on(release_read);
                        unsafe { libc::syscall(libc::SYS_exit_group, 0) };
                        unreachable!("exit_group returned")
                    }
                    -1 => die("fork"),
                    pid => pid,
                })
                .collect();
            unsafe { libc::close(started_write) };
            for _ in 0..n {
                let mut byte = 0u8;
                if unsafe { libc::read(started_read, (&mut byte as *mut u8).cast(), 1) } != 1 {
                    die("a group never started");
                }
            }
            unsafe { libc::close(release_write) };
            pids.into_iter().for_each(reap);
        }
        // N zombies, and a parent that keeps calling waitid(WNOWAIT): it waits, reaps nothing.
        "wait-wrong" => {
            let pids: Vec<i32> = (0..n).map(|_| spawn_exiting(4)).collect();
            pids.into_iter().for_each(wait_exited);
            say(&format!("parent {parent}"));
            stages.ready();
            let mut stdin_poll = libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            };
            loop {
                let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
                unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
                // Until stdin closes, every 50 ms.
                if unsafe { libc::poll(&mut stdin_poll, 1, 50) } > 0 && !stages.next() {
                    return;
                }
            }
        }
        // A busy container: a child that exits and is reaped every N ms, until stdin closes.
        "busy" => {
            say(&format!("parent {parent}"));
            stages.ready();
            let mut stdin_poll = libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            };
            loop {
                reap(spawn_exiting(0));
                if unsafe { libc::poll(&mut stdin_poll, 1, n) } > 0 && !stages.next() {
                    return;
                }
            }
        }
        // fork + exit + wait, N times.
        "storm" => {
            for _ in 0..n {
                reap(spawn_exiting(0));
            }
        }
        // A pid reused after a reap: the same pid, two processes.
        "reuse" => {
            let pid_max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(32768);
            let mut candidate = (me + 7919) % pid_max;
            let (pid, first) = loop {
                candidate = (candidate + 1) % pid_max;
                if candidate < 300 || std::path::Path::new(&format!("/proc/{candidate}")).exists() {
                    continue;
                }
                if let Some(pid) = spawn_with_pid(candidate, 11) {
                    break (candidate, pid);
                }
            };
            wait_exited(first);
            say(&format!("child {pid}"));
            stages.ready();
            if stages.next() {
                reap(first);
                // /proc tells processes apart by pid and start tick (10 ms): start the second
                // one in a later tick, as any real reuse is.
                std::thread::sleep(std::time::Duration::from_millis(30));
                let second = spawn_with_pid(pid, 22).unwrap_or_else(|| die("pid taken"));
                wait_exited(second);
            }
        }
        other => die(&format!("unknown shape {other}")),
    }
    say(&format!("parent {parent}"));
    stages.ready();
    while stages.next() {
        stages.ready();
    }
}

fn count_zombie_children(ppid: i32) -> usize {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|&pid| {
                    let stat = read_proc(pid, "stat");
                    let Some(tail) = stat.rsplit(')').next() else {
                        return false;
                    };
                    let fields: Vec<&str> = tail.split_whitespace().collect();
                    fields.first() == Some(&"Z")
                        && fields.get(1) == Some(&ppid.to_string().as_str())
                        && fields.get(17) == Some(&"1")
                })
                .count()
        })
        .unwrap_or(0)
}
