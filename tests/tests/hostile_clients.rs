//! A hostile neighbour cannot starve the endpoint: while 96 hostile connections are held
//! (slow request heads, clients of /metrics that never read, idle connections), every
//! /healthz probe (2 s timeout, as the kubelet's) and /metrics scrape answers, and so do a
//! real Prometheus' scrapes.

use std::{
    io::Write,
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use reapwatch_tests::{eventually, Daemon, Prometheus};
use socket2::{Domain, Socket, Type};

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Sends a request head one byte every half second, never ending it.
    SlowHead,
    /// Pipelines many requests for /metrics with a tiny receive buffer, never reads.
    NonReader,
    /// Connects and sends nothing.
    Idle,
}

struct Hostile {
    kind: Kind,
    source: [u8; 4],
    stream: TcpStream,
    sent: usize,
}

const SLOW_HEAD: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: reapwatch\r\nX-Slow: ";

impl Hostile {
    fn connect(kind: Kind, source: [u8; 4], port: u16) -> Self {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        socket
            .bind(&SocketAddr::from((source, 0)).into())
            .expect("bind a loopback source");
        if let Kind::NonReader = kind {
            socket.set_recv_buffer_size(2048).expect("SO_RCVBUF");
        }
        socket
            .connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
            .expect("connect");
        let mut stream: TcpStream = socket.into();
        if let Kind::NonReader = kind {
            let request = b"GET /metrics HTTP/1.1\r\nHost: reapwatch\r\n\r\n".repeat(64);
            // The server may already be gone; a later round reconnects.
            let _ = stream.write_all(&request);
        }
        Self {
            kind,
            source,
            stream,
            sent: 0,
        }
    }

    /// The server closed it (or reset it): it is of no more use to the attacker.
    fn closed(&self) -> bool {
        let mut poll = libc::pollfd {
            fd: self.stream.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        ready != 0 && poll.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
    }

    /// One round: a slow head sends its next byte; a closed connection is made again.
    /// Returns whether it had to reconnect.
    fn round(&mut self, port: u16) -> bool {
        let alive = !self.closed()
            && match self.kind {
                Kind::SlowHead => {
                    let byte = SLOW_HEAD.get(self.sent).copied().unwrap_or(b'a');
                    self.sent += 1;
                    self.stream.write_all(&[byte]).is_ok()
                }
                Kind::NonReader | Kind::Idle => true,
            };
        if !alive {
            *self = Self::connect(self.kind, self.source, port);
        }
        !alive
    }
}

/// A GET from 127.0.0.1 (where the kubelet's probes come from: the node) that must answer
/// 200 within `timeout`.
fn answers(port: u16, path: &str, timeout: Duration) -> Result<(), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into();
    let mut response = agent
        .get(&format!("http://127.0.0.1:{port}{path}"))
        .call()
        .map_err(|err| format!("{path}: {err}"))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .map_err(|err| format!("{path}: body: {err}"))?;
    if status == 200 && (path != "/metrics" || body.contains("reapwatch_node_pid_max")) {
        Ok(())
    } else {
        Err(format!("{path}: {status}"))
    }
}

#[test]
fn probes_and_scrapes_answer_beside_hostile_clients() {
    // Many parents per scrape, so that the body outgrows the socket buffers of a non-reader.
    let daemon = Daemon::start(&["--top-parents", "5000"]);
    let port = daemon.port;
    let prometheus = Prometheus::start_with(port, "2s", "");
    assert!(
        eventually(Duration::from_secs(30), || {
            prometheus.query("up{job=\"reapwatch\"} == 1").len() == 1
        }),
        "prometheus never scraped reapwatch"
    );

    // Three hostile pods: one dribbling heads, one not reading, and idle connections from
    // the node's own address, beside the probes.
    let attack = std::thread::spawn(move || {
        let mut hostile: Vec<Hostile> = (0..64)
            .map(|_| Hostile::connect(Kind::SlowHead, [127, 0, 0, 2], port))
            .chain((0..16).map(|_| Hostile::connect(Kind::NonReader, [127, 0, 0, 3], port)))
            .chain((0..16).map(|_| Hostile::connect(Kind::Idle, [127, 0, 0, 1], port)))
            .collect();
        let until = Instant::now() + Duration::from_secs(26);
        let mut reconnects = 0;
        while Instant::now() < until {
            for connection in &mut hostile {
                reconnects += usize::from(connection.round(port));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        reconnects
    });
    // The hostile connections take their slots first.
    std::thread::sleep(Duration::from_secs(3));

    let attack_began = Instant::now();
    let mut failures = Vec::new();
    let mut probes = 0;
    while attack_began.elapsed() < Duration::from_secs(20) {
        let round = Instant::now();
        probes += 1;
        failures.extend(answers(port, "/healthz", Duration::from_secs(2)).err());
        failures.extend(answers(port, "/readyz", Duration::from_secs(2)).err());
        if probes % 2 == 0 {
            failures.extend(answers(port, "/metrics", Duration::from_secs(5)).err());
        }
        std::thread::sleep(Duration::from_secs(1).saturating_sub(round.elapsed()));
    }
    // Prometheus' view of the same 20 s: every scrape up, and the series queried back.
    let window = attack_began.elapsed().as_secs().saturating_sub(1);
    let min_up = prometheus.query(&format!(
        "min_over_time(up{{job=\"reapwatch\"}}[{window}s])"
    ));
    let scrapes = prometheus.query(&format!(
        "count_over_time(up{{job=\"reapwatch\"}}[{window}s])"
    ));
    let pid_max = prometheus.query("reapwatch_node_pid_max");
    let last_error = prometheus.last_error();
    let reconnects = attack.join().expect("the attacking thread");

    assert!(
        failures.is_empty(),
        "{} failures in {probes} probe rounds during the attack: {failures:?}",
        failures.len()
    );
    assert_eq!(
        min_up.first().map(|(_, v)| *v),
        Some(1.0),
        "prometheus saw reapwatch down during the attack: {last_error}"
    );
    assert!(
        scrapes.first().is_some_and(|(_, n)| *n >= 5.0),
        "too few scrapes in {window}s: {scrapes:?}"
    );
    assert_eq!(pid_max.len(), 1, "{pid_max:?}");
    eprintln!("{probes} probe rounds answered; the attacker reconnected {reconnects} times");
}

/// One GET of /metrics from `source` with basic auth, on a connection of its own: the status
/// and how long the answer took; None when no answer came within `timeout`.
fn login(
    source: [u8; 4],
    port: u16,
    user: &str,
    password: &str,
    timeout: Duration,
) -> Option<(u16, Duration)> {
    use base64::Engine;
    let began = Instant::now();
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).ok()?;
    socket.bind(&SocketAddr::from((source, 0)).into()).ok()?;
    socket
        .connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)).into(), timeout)
        .ok()?;
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(timeout)).ok()?;
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: reapwatch\r\nAuthorization: Basic {credentials}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    std::io::Read::read_exact(&mut stream, &mut head).ok()?;
    let status = std::str::from_utf8(&head[9..12]).ok()?.parse().ok()?;
    // To the end, so that the time is that of the whole answer.
    std::io::copy(&mut stream, &mut std::io::sink()).ok()?;
    Some((status, began.elapsed()))
}

/// The statuses a flood got, by kind.
#[derive(Default)]
struct Tally {
    unauthorized: std::sync::atomic::AtomicUsize,
    throttled: std::sync::atomic::AtomicUsize,
    other: std::sync::atomic::AtomicUsize,
}

/// `sources` addresses each send wrong passwords for a real user from `threads` connections
/// at once, as fast as they are answered, until `stop`.
fn flood(
    sources: u8,
    threads: usize,
    port: u16,
    stop: &std::sync::atomic::AtomicBool,
    tally: &Tally,
) {
    use std::sync::atomic::Ordering::Relaxed;
    std::thread::scope(|scope| {
        for source in 0..sources {
            for _ in 0..threads {
                scope.spawn(move || {
                    while !stop.load(Relaxed) {
                        let counter = match login(
                            [127, 0, 1, source],
                            port,
                            "prometheus0",
                            "wrong",
                            Duration::from_secs(10),
                        ) {
                            Some((401, _)) => &tally.unauthorized,
                            Some((429, _)) => &tally.throttled,
                            _ => &tally.other,
                        };
                        counter.fetch_add(1, Relaxed);
                    }
                });
            }
        }
    });
}

/// bcrypt at cost 10 (the default of htpasswd and exporter-toolkit's examples): a password
/// flood from 4, then 16 addresses cannot keep out a right password never verified before
/// (as after a restart or a rotation): it gets in within 2 s, every time. A quiet client with
/// a wrong password is told 401, not 429; an unknown user costs as much as a known one.
#[test]
fn a_first_login_gets_in_under_a_password_flood() {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    const USERS: usize = 10;
    let hash = bcrypt::hash("right", 10).expect("bcrypt");
    let dir = std::env::temp_dir().join(format!("reapwatch-flood-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("web.yml");
    let users: String = (0..USERS)
        .map(|n| format!("  prometheus{n}: '{hash}'\n"))
        .collect();
    std::fs::write(&config, format!("basic_auth_users:\n{users}")).expect("web config");
    let daemon = Daemon::start(&["--web-config-file", &config.display().to_string()]);
    let port = daemon.port;

    // Unknown and known users, from a quiet address (one check at a time, taking turns so
    // that both see the same load): the same status, and as long at the least.
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        for (user, tries) in [("prometheus0", &mut known), ("nobody", &mut unknown)] {
            tries.push(login(
                [127, 0, 2, 1],
                port,
                user,
                "wrong",
                Duration::from_secs(10),
            ));
        }
    }
    eprintln!("wrong passwords: known user {known:?}, unknown user {unknown:?}");
    let least = |tries: &[Option<(u16, Duration)>]| {
        tries
            .iter()
            .map(|answer| match answer {
                Some((401, took)) => *took,
                _ => panic!("known user {known:?}, unknown user {unknown:?}: not all 401"),
            })
            .min()
            .expect("tries")
    };
    let (known, unknown) = (least(&known), least(&unknown));
    assert!(
        unknown * 2 > known && known * 2 > unknown,
        "known user {known:?}, unknown user {unknown:?}: user names can be told apart"
    );

    let mut next_user = 1;
    for sources in [4, 16] {
        let stop = AtomicBool::new(false);
        let tally = Tally::default();
        let outcome = std::thread::scope(|scope| {
            scope.spawn(|| flood(sources, 4, port, &stop, &tally));
            std::thread::sleep(Duration::from_secs(2));
            let mut logins = Vec::new();
            for _ in 0..4 {
                let round = Instant::now();
                let user = format!("prometheus{next_user}");
                next_user += 1;
                logins.push(login(
                    [127, 0, 0, 1],
                    port,
                    &user,
                    "right",
                    Duration::from_secs(5),
                ));
                std::thread::sleep(Duration::from_secs(1).saturating_sub(round.elapsed()));
            }
            let quiet = login(
                [127, 0, 2, 2],
                port,
                "prometheus0",
                "wrong",
                Duration::from_secs(5),
            );
            stop.store(true, Relaxed);
            (logins, quiet)
        });
        let (logins, quiet) = outcome;
        let (unauthorized, throttled, other) = (
            tally.unauthorized.load(Relaxed),
            tally.throttled.load(Relaxed),
            tally.other.load(Relaxed),
        );
        eprintln!(
            "{sources} flooding sources: first logins {logins:?}; quiet wrong password {quiet:?}; \
             the flood got {unauthorized} 401, {throttled} 429, {other} other"
        );
        for login in &logins {
            assert!(
                login.is_some_and(|(status, took)| status == 200 && took < Duration::from_secs(2)),
                "{sources} sources: first logins {logins:?}"
            );
        }
        assert_eq!(
            quiet.map(|(status, _)| status),
            Some(401),
            "{sources} sources"
        );
        // (Its own checks may all be cut short: its connections evict each other.)
        assert!(throttled > 0, "{sources} sources: the flood was not slowed");
    }
    std::fs::remove_dir_all(&dir).expect("clean up");
}
