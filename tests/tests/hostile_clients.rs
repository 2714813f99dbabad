//! A hostile neighbour cannot starve the endpoint: while hostile connections are held (slow
//! request heads, clients of /metrics that never read, idle connections) and new ones and
//! TLS handshakes come fast, from a few addresses or from a crowd of them and the node's
//! own, every probe (2 s timeout, as the kubelet's) and /metrics scrape answers, and so do a
//! real Prometheus' scrapes. A password flood cannot keep a first login out.

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
    port: u16,
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
            port,
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
    fn round(&mut self) -> bool {
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
            *self = Self::connect(self.kind, self.source, self.port);
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
    let health_port = reapwatch_tests::free_port();
    let daemon = Daemon::start(&[
        "--top-parents",
        "5000",
        "--health-listen",
        &format!("127.0.0.1:{health_port}"),
    ]);
    let port = daemon.port;
    let prometheus = Prometheus::start_with(port, "2s", "");
    assert!(
        eventually(Duration::from_secs(30), || {
            prometheus.query("up{job=\"reapwatch\"} == 1").len() == 1
        }),
        "prometheus never scraped reapwatch"
    );

    // Three hostile pods: one dribbling heads, one not reading, one idle (Prometheus, the
    // probes and the scrapes below come from 127.0.0.1).
    let attack = std::thread::spawn(move || {
        let mut hostile: Vec<Hostile> = (0..64)
            .map(|_| Hostile::connect(Kind::SlowHead, [127, 0, 0, 2], port))
            .chain((0..16).map(|_| Hostile::connect(Kind::NonReader, [127, 0, 0, 3], port)))
            .chain((0..16).map(|_| Hostile::connect(Kind::Idle, [127, 0, 0, 4], port)))
            .collect();
        let until = Instant::now() + Duration::from_secs(26);
        let mut reconnects = 0;
        while Instant::now() < until {
            for connection in &mut hostile {
                reconnects += usize::from(connection.round());
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
        failures.extend(answers(health_port, "/healthz", Duration::from_secs(2)).err());
        failures.extend(answers(health_port, "/readyz", Duration::from_secs(2)).err());
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

/// Completes a TLS handshake from `source` and goes, as a handshake flood does: the work is
/// the server's. Whether the handshake was completed.
fn handshake(source: [u8; 4], port: u16, config: &std::sync::Arc<rustls::ClientConfig>) -> bool {
    let complete = || -> Option<()> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).ok()?;
        socket.bind(&SocketAddr::from((source, 0)).into()).ok()?;
        socket
            .connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], port)).into(),
                Duration::from_secs(2),
            )
            .ok()?;
        let mut stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let name = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let mut client = rustls::ClientConnection::new(config.clone(), name).ok()?;
        while client.is_handshaking() {
            client.complete_io(&mut stream).ok()?;
        }
        Some(())
    };
    complete().is_some()
}

/// A TLS client config that trusts the test CA.
fn tls_client(ca: &str) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA certificate")).expect("CA");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Hostile pods, each with an address of its own, that hold one slot on each address of
/// the exporter: as many as it has slots, so that each holds as few as a scraper.
const HOLDERS: u8 = 32;
/// Hostile pods that open new connections as fast as [`CHURN_PER_SECOND`]: TLS handshakes
/// completed on the metrics address, and connections to the probes' address.
const CHURNERS: u8 = 12;
const CHURN_PER_SECOND: u32 = 20;

/// Probes no tenant can starve: 32 addresses each hold one slot of each address of the
/// exporter (idle on the metrics address, which is then crowded; a slow head, an idle or a
/// non-reading connection on the probes' address), 12 more each complete 20 TLS handshakes
/// a second on the metrics address and open 20 connections a second to the probes' address,
/// and the node's own address (the kubelet's, shared with hostNetwork pods) holds 32
/// connections to the probes' address and opens 20 more a second. Every probe answers
/// within 2 s, and a real Prometheus with credentials scrapes every time.
#[test]
fn probes_and_scrapes_answer_beside_a_crowd_of_hostile_sources() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    let pki = reapwatch_tests::Pki::new("crowd", "IP:127.0.0.1");
    let config = pki.dir.join("web.yml");
    std::fs::write(
        &config,
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  prometheus: '{}'\n",
            bcrypt::hash("scrape-me", 10).expect("bcrypt")
        ),
    )
    .expect("web config");
    let health_port = reapwatch_tests::free_port();
    let mut daemon = Daemon::spawn(
        &[],
        &[
            "--web-config-file",
            &config.display().to_string(),
            "--health-listen",
            &format!("127.0.0.1:{health_port}"),
            "--top-parents",
            "5000",
        ],
    );
    let port = daemon.port;
    // As long as Daemon::start waits: a busy node's first sample takes long.
    assert!(
        eventually(Duration::from_secs(90), || {
            daemon.assert_running();
            answers(health_port, "/readyz", Duration::from_secs(2)).is_ok()
        }),
        "never ready"
    );
    let ca = pki.path("ca.crt");
    let prometheus = Prometheus::start_with(
        port,
        "2s",
        &format!(
            "    scheme: https\n    tls_config:\n      ca_file: {ca}\n    basic_auth:\n      username: prometheus\n      password: scrape-me\n"
        ),
    );
    assert!(
        eventually(Duration::from_secs(30), || {
            prometheus.query("up{job=\"reapwatch\"} == 1").len() == 1
        }),
        "prometheus never scraped reapwatch: {}",
        prometheus.last_error()
    );

    let tls = tls_client(&ca);
    let stop = AtomicBool::new(false);
    let (handshakes, attempts) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let (failures, probes, window) = std::thread::scope(|scope| {
        let stop = &stop;
        for n in 0..HOLDERS {
            scope.spawn(move || {
                let source = [127, 0, 3, 10 + n];
                // Over TLS a request head is garbage to the handshake: idle connections hold
                // a slot longest there.
                let kind = [Kind::SlowHead, Kind::Idle, Kind::NonReader][usize::from(n) % 3];
                let mut held = [
                    Hostile::connect(Kind::Idle, source, port),
                    Hostile::connect(kind, source, health_port),
                ];
                while !stop.load(Relaxed) {
                    for connection in &mut held {
                        connection.round();
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            });
        }
        let tick = Duration::from_secs(1) / CHURN_PER_SECOND;
        for n in 0..CHURNERS {
            let (tls, handshakes, attempts) = (&tls, &handshakes, &attempts);
            scope.spawn(move || {
                let source = [127, 0, 4, 10 + n];
                while !stop.load(Relaxed) {
                    let began = Instant::now();
                    attempts.fetch_add(1, Relaxed);
                    if handshake(source, port, tls) {
                        handshakes.fetch_add(1, Relaxed);
                    }
                    drop(Hostile::connect(Kind::SlowHead, source, health_port));
                    std::thread::sleep(tick.saturating_sub(began.elapsed()));
                }
            });
        }
        scope.spawn(move || {
            let mut node: Vec<Hostile> = (0..16)
                .map(|_| Hostile::connect(Kind::SlowHead, [127, 0, 0, 1], health_port))
                .chain((0..16).map(|_| Hostile::connect(Kind::Idle, [127, 0, 0, 1], health_port)))
                .collect();
            let mut ticks = 0u32;
            while !stop.load(Relaxed) {
                let began = Instant::now();
                drop(Hostile::connect(
                    Kind::SlowHead,
                    [127, 0, 0, 1],
                    health_port,
                ));
                ticks += 1;
                if ticks.is_multiple_of(CHURN_PER_SECOND / 2) {
                    for connection in &mut node {
                        connection.round();
                    }
                }
                std::thread::sleep(tick.saturating_sub(began.elapsed()));
            }
        });
        // The hostile connections take their slots first.
        std::thread::sleep(Duration::from_secs(3));
        let attack_began = Instant::now();
        let mut failures = Vec::new();
        let mut probes = 0;
        while attack_began.elapsed() < Duration::from_secs(20) {
            let round = Instant::now();
            probes += 1;
            for path in ["/healthz", "/readyz"] {
                failures.extend(answers(health_port, path, Duration::from_secs(2)).err());
            }
            std::thread::sleep(Duration::from_secs(1).saturating_sub(round.elapsed()));
        }
        let window = attack_began.elapsed().as_secs().saturating_sub(1);
        stop.store(true, Relaxed);
        (failures, probes, window)
    });
    let min_up = prometheus.query(&format!(
        "min_over_time(up{{job=\"reapwatch\"}}[{window}s])"
    ));
    let scrapes = prometheus.query(&format!(
        "count_over_time(up{{job=\"reapwatch\"}}[{window}s])"
    ));
    let last_error = prometheus.last_error();
    eprintln!(
        "{probes} probe rounds, {} failed; {} of {} TLS handshakes completed; prometheus: \
         min up {min_up:?}, scrapes {scrapes:?}: {last_error}",
        failures.len(),
        handshakes.load(Relaxed),
        attempts.load(Relaxed),
    );
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
        scrapes
            .first()
            .is_some_and(|(_, n)| *n as u64 >= window / 2 - 1),
        "too few scrapes in {window}s: {scrapes:?}"
    );
}
