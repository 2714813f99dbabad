//! The HTTP endpoints: `/metrics`, `/healthz`, `/readyz`.

use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    net::IpAddr,
    sync::{
        atomic::{AtomicI32, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming, header, server::conn::http1, service::service_fn, Method, Request, Response,
    StatusCode,
};
use hyper_util::rt::TokioIo;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::oneshot,
};

use super::{
    accept::wants_openmetrics,
    admission::{Admission, PER_SECOND},
    metrics,
    model::Model,
    scrapes::ScrapeLog,
    webconfig::{Authenticator, Verdict, WebConfig, WebConfigFile},
};

/// Connections served at once, per address served. When all are taken, a new one evicts the
/// oldest connection of the source that holds the most (of the one whose oldest is oldest,
/// among equals): a neighbour that hoards slots loses its own, and a connection is evicted
/// only after this many newer ones came, which at the metrics address' rate per source
/// takes longer than a scrape.
const MAX_CONNECTIONS: usize = 64;
/// The whole life of a connection: request head read and response written. One request per
/// connection (no keep-alive), so no client, slow, idle or not reading, holds a slot longer.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);

/// The latest sample, encoded once for every scrape, shared between the sampler thread and
/// the connections.
pub struct Published {
    latest: Mutex<Option<Arc<Exposition>>>,
    scrapes: ScrapeLog,
    /// Not ready once the last good sample is older than this.
    stale_after: Duration,
    /// When the sampler thread last finished a turn (a sample, good or failed, or the load).
    last_progress: Mutex<Instant>,
    /// The sampler thread's id (0 until it starts), to ask the kernel whether it still runs:
    /// a thread that panics or is made to exit leaves no other trace.
    sampler_thread: AtomicI32,
    /// Not alive once the sampler has made no progress for this long: far beyond the
    /// slowest full reconcile, which a first sample always is.
    stuck_after: Duration,
}

struct Exposition {
    text: Bytes,
    openmetrics: Bytes,
    sampled_at: Instant,
    sequence: u64,
}

impl Published {
    pub fn new(sample_interval: Duration, liveness_timeout: Duration) -> Self {
        Self {
            latest: Mutex::new(None),
            scrapes: ScrapeLog::default(),
            stale_after: sample_interval.saturating_mul(3),
            last_progress: Mutex::new(Instant::now()),
            sampler_thread: AtomicI32::new(0),
            stuck_after: liveness_timeout,
        }
    }

    /// The sampler thread finished a turn.
    pub fn progressed(&self) {
        *self.last_progress.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// Called by the sampler thread as it starts.
    pub fn sampler_started(&self) {
        self.sampler_thread
            .store(unsafe { libc::gettid() }, Ordering::Relaxed);
    }

    /// Whether the sampler thread still runs: signal 0 to it checks without sending. No task
    /// is made after start-up, so its id cannot come back in this process.
    fn sampler_runs(&self) -> bool {
        match self.sampler_thread.load(Ordering::Relaxed) {
            0 => true,
            tid => {
                let pid = std::process::id() as libc::c_long;
                let sent = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid as libc::c_long, 0) };
                sent == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
            }
        }
    }

    /// Why it is not alive, if it is not: the sampler thread is gone, or stuck.
    fn unhealthy(&self, now: Instant) -> Option<String> {
        if !self.sampler_runs() {
            return Some("the sampler thread ended".to_owned());
        }
        let last = *self.last_progress.lock().unwrap_or_else(|e| e.into_inner());
        let idle = now.saturating_duration_since(last);
        (idle > self.stuck_after).then(|| {
            format!(
                "no progress: the sampler has not finished a sample for {:.1}s",
                idle.as_secs_f64()
            )
        })
    }

    /// Encodes `model`, the sample taken at `sampled_at`, for every scrape until the next.
    pub fn publish(&self, model: &Model, sampled_at: Instant) -> anyhow::Result<()> {
        let families = metrics::families(model);
        let exposition = Exposition {
            text: Bytes::from(metrics::encode_text(&families)?),
            openmetrics: Bytes::from(metrics::encode_openmetrics(&families)),
            sampled_at,
            sequence: model.sequence,
        };
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(exposition));
        Ok(())
    }

    /// Which samples each scraper fetched.
    pub fn scrapes(&self) -> &ScrapeLog {
        &self.scrapes
    }

    fn latest(&self) -> Option<Arc<Exposition>> {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Why it is not ready, if it is not: no sample yet, or none for too long.
    fn unready(&self, now: Instant) -> Option<String> {
        let Some(latest) = self.latest() else {
            return Some("programs loading".to_owned());
        };
        let age = now.saturating_duration_since(latest.sampled_at);
        (age > self.stale_after).then(|| {
            format!(
                "stale: the last good sample is {:.1}s old",
                age.as_secs_f64()
            )
        })
    }
}

/// What one listening address serves.
pub struct Endpoint {
    pub published: Arc<Published>,
    /// TLS and basic auth, and the checker of its passwords; None: plain HTTP without
    /// authentication.
    pub web: Option<(WebConfigFile, Arc<Authenticator>)>,
    /// Only /healthz and /readyz: the probes' own address.
    pub health_only: bool,
}

/// What a connection's requests are answered with: the web config as it was when the
/// connection came (a reload applies to the next ones).
struct Connection {
    published: Arc<Published>,
    peer: IpAddr,
    web: Arc<WebConfig>,
    auth: Option<Arc<Authenticator>>,
    source: IpAddr,
    health_only: bool,
}

/// Where a connection comes from, for fair shares: its IPv4 address, or the /64 network of
/// its IPv6 address (one host gets a whole /64, so single IPv6 addresses cost it nothing).
fn source_of(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
        v4 => v4,
    }
}

pub async fn serve(listener: TcpListener, mut endpoint: Endpoint) {
    let slots = Arc::new(Mutex::new(Slots::default()));
    let plain = Arc::new(WebConfig::plain_http());
    let mut admission = Admission::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let source = source_of(peer.ip());
        // Not on the probes' address, whose connections cost little: the kubelet shares the
        // node's address with hostNetwork pods, which would use up its allowance.
        let over_rate = !endpoint.health_only && !admission.admit(source, Instant::now());
        if over_rate && lock(&slots).crowded() {
            log::debug!("connection from {peer}: over {PER_SECOND} a second while crowded");
            drop(stream);
            continue;
        }
        let (evict, evicted) = oneshot::channel::<()>();
        let held = ConnectionSlot {
            id: lock(&slots).admit(source, evict),
            peer: source,
            slots: slots.clone(),
        };
        let (web, auth) = match endpoint.web.as_mut() {
            Some((file, auth)) => (file.current(), Some(auth.clone())),
            None => (plain.clone(), None),
        };
        let connection = Arc::new(Connection {
            published: endpoint.published.clone(),
            peer: peer.ip(),
            web,
            auth,
            source,
            health_only: endpoint.health_only,
        });
        tokio::spawn(async move {
            tokio::select! {
                served = tokio::time::timeout(CONNECTION_DEADLINE, answer(stream, connection)) => {
                    match served {
                        Ok(Ok(())) => {}
                        Ok(Err(err)) => log::debug!("connection from {peer}: {err:#}"),
                        Err(_) => log::debug!("connection from {peer}: deadline passed"),
                    }
                }
                // The sender is dropped when the slot is given to another connection.
                _ = evicted => log::debug!("connection from {peer}: evicted"),
            }
            drop(held);
        });
    }
}

/// One request on a new connection, after the TLS handshake if the web config asks for TLS.
async fn answer(stream: TcpStream, connection: Arc<Connection>) -> anyhow::Result<()> {
    let tls = connection.web.tls.clone();
    let service = service_fn(move |request| respond(request, connection.clone()));
    let mut http = http1::Builder::new();
    http.keep_alive(false);
    match tls {
        Some(acceptor) => {
            let stream = acceptor
                .accept(stream)
                .await
                .map_err(|err| anyhow::anyhow!("TLS handshake: {err}"))?;
            http.serve_connection(TokioIo::new(stream), service).await?;
        }
        None => http.serve_connection(TokioIo::new(stream), service).await?,
    }
    Ok(())
}

fn lock(slots: &Mutex<Slots>) -> std::sync::MutexGuard<'_, Slots> {
    slots.lock().unwrap_or_else(|e| e.into_inner())
}

/// The connections being served, oldest first per peer address, each with the sender whose
/// drop ends it.
#[derive(Default)]
struct Slots {
    next_id: u64,
    held: usize,
    by_peer: HashMap<IpAddr, VecDeque<(u64, oneshot::Sender<()>)>>,
}

impl Slots {
    /// Gives a slot to a new connection from `peer`, evicting the oldest connection of the
    /// peer that holds the most when all are taken. Returns the connection's id.
    fn admit(&mut self, peer: IpAddr, evict: oneshot::Sender<()>) -> u64 {
        if self.held >= MAX_CONNECTIONS {
            let greediest = self
                .by_peer
                .iter()
                .max_by_key(|(_, held)| (held.len(), held.front().map(|(id, _)| u64::MAX - id)))
                .map(|(address, _)| *address);
            if let Some((address, id)) = greediest.and_then(|address| {
                let oldest = self.by_peer.get(&address)?.front()?.0;
                Some((address, oldest))
            }) {
                self.release(address, id);
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.by_peer.entry(peer).or_default().push_back((id, evict));
        self.held += 1;
        id
    }

    /// More than half the slots are taken: new connections are rationed per source.
    fn crowded(&self) -> bool {
        self.held >= MAX_CONNECTIONS / 2
    }

    /// Frees the slot of connection `id` (and so ends it, if it is still served).
    fn release(&mut self, peer: IpAddr, id: u64) {
        let Some(held) = self.by_peer.get_mut(&peer) else {
            return;
        };
        if let Some(index) = held.iter().position(|(held_id, _)| *held_id == id) {
            held.remove(index);
            self.held -= 1;
        }
        if held.is_empty() {
            self.by_peer.remove(&peer);
        }
    }
}

/// A connection's slot, freed when the connection ends, whichever way.
struct ConnectionSlot {
    id: u64,
    peer: IpAddr,
    slots: Arc<Mutex<Slots>>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        lock(&self.slots).release(self.peer, self.id);
    }
}

async fn respond(
    request: Request<Incoming>,
    connection: Arc<Connection>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n"));
    }
    let path = request.uri().path();
    // Probes need no password: the kubelet's cannot send one, and they tell nothing.
    if !matches!(path, "/healthz" | "/readyz") {
        if connection.health_only {
            return Ok(plain(
                StatusCode::NOT_FOUND,
                "this address serves /healthz and /readyz only\n",
            ));
        }
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .map(|value| value.as_bytes());
        let verdict = match &connection.auth {
            Some(auth) => {
                auth.check(&connection.web, authorization, connection.source)
                    .await
            }
            None => Verdict::Allowed,
        };
        match verdict {
            Verdict::Allowed => {}
            Verdict::Denied => {
                let mut response = plain(StatusCode::UNAUTHORIZED, "unauthorized\n");
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Basic realm=\"reapwatch\""),
                );
                return Ok(response);
            }
            Verdict::Throttled => {
                return Ok(plain(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many password checks, try again\n",
                ))
            }
        }
    }
    let published = &connection.published;
    Ok(match path {
        "/metrics" => match published.latest() {
            Some(exposition) => {
                if request.method() == Method::GET {
                    let agent = request.headers().get(header::USER_AGENT);
                    published.scrapes.fetched(
                        connection.peer,
                        agent.map_or(&[][..], |agent| agent.as_bytes()),
                        exposition.sequence,
                        Instant::now(),
                    );
                }
                let accept = request.headers().get_all(header::ACCEPT);
                metrics_response(
                    &exposition,
                    wants_openmetrics(accept.iter().map(|v| v.as_bytes())),
                )
            }
            None => plain(StatusCode::SERVICE_UNAVAILABLE, "no sample yet\n"),
        },
        "/healthz" => match published.unhealthy(Instant::now()) {
            None => plain(StatusCode::OK, "ok\n"),
            Some(why) => plain(StatusCode::SERVICE_UNAVAILABLE, &format!("{why}\n")),
        },
        "/readyz" => match published.unready(Instant::now()) {
            None => plain(StatusCode::OK, "ready\n"),
            Some(why) => plain(StatusCode::SERVICE_UNAVAILABLE, &format!("{why}\n")),
        },
        _ => plain(StatusCode::NOT_FOUND, "try /metrics, /healthz or /readyz\n"),
    })
}

fn metrics_response(exposition: &Exposition, openmetrics: bool) -> Response<Full<Bytes>> {
    let (body, content_type) = if openmetrics {
        (&exposition.openmetrics, metrics::OPENMETRICS_CONTENT_TYPE)
    } else {
        (&exposition.text, metrics::TEXT_CONTENT_TYPE)
    };
    let mut response = Response::new(Full::new(body.clone()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::copy_from_slice(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod slots {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    /// Fills every slot from `peers` in turn; returns the receivers that say a connection
    /// was evicted, by admission order.
    fn fill(slots: &mut Slots, peers: &[IpAddr]) -> Vec<(IpAddr, oneshot::Receiver<()>)> {
        (0..MAX_CONNECTIONS)
            .map(|n| {
                let peer = peers[n % peers.len()];
                let (evict, evicted) = oneshot::channel();
                slots.admit(peer, evict);
                (peer, evicted)
            })
            .collect()
    }

    fn evicted(receivers: &mut [(IpAddr, oneshot::Receiver<()>)]) -> Vec<(usize, IpAddr)> {
        receivers
            .iter_mut()
            .enumerate()
            .filter_map(|(n, (peer, rx))| {
                let closed = rx
                    .try_recv()
                    .is_err_and(|e| e == oneshot::error::TryRecvError::Closed);
                closed.then_some((n, *peer))
            })
            .collect()
    }

    #[test]
    fn a_newcomer_evicts_the_oldest_of_the_greediest_peer() {
        let mut slots = Slots::default();
        // The hoarder holds 3 of every 4 slots, the other peer 1.
        let mut receivers = fill(&mut slots, &[ip(1), ip(1), ip(2), ip(1)]);
        assert!(evicted(&mut receivers).is_empty());
        let (evict, _kept) = oneshot::channel();
        slots.admit(ip(3), evict);
        assert_eq!(evicted(&mut receivers), vec![(0, ip(1))]);
        assert_eq!(slots.held, MAX_CONNECTIONS);
    }

    #[test]
    fn among_equals_the_longest_held_is_evicted() {
        let mut slots = Slots::default();
        // Every peer holds one slot, a scraper's the newest.
        let peers: Vec<IpAddr> = (0..MAX_CONNECTIONS as u8).map(ip).collect();
        let mut receivers = fill(&mut slots, &peers);
        for newcomer in 0..MAX_CONNECTIONS - 1 {
            let (evict, _kept) = oneshot::channel();
            slots.admit(IpAddr::from([10, 1, 0, newcomer as u8]), evict);
            assert_eq!(
                evicted(&mut receivers).last().map(|(n, _)| *n),
                Some(newcomer),
                "the oldest goes first"
            );
        }
    }

    #[test]
    fn an_ipv6_host_is_one_source() {
        let host: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let neighbour: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(source_of(host), source_of(neighbour));
        assert_ne!(
            source_of(host),
            source_of("2001:db8:1:3::1".parse().unwrap())
        );
        assert_eq!(
            source_of("::ffff:10.0.0.7".parse().unwrap()),
            IpAddr::from([10, 0, 0, 7])
        );
        assert_eq!(source_of(ip(7)), ip(7));
    }

    #[test]
    fn a_hoarder_evicts_its_own() {
        let mut slots = Slots::default();
        let mut receivers = fill(&mut slots, &[ip(1), ip(1), ip(1), ip(2)]);
        let (evict, _kept) = oneshot::channel();
        slots.admit(ip(1), evict);
        assert_eq!(evicted(&mut receivers), vec![(0, ip(1))]);
    }

    #[test]
    fn released_slots_are_reused_without_eviction() {
        let mut slots = Slots::default();
        let (evict, _first) = oneshot::channel();
        let first = slots.admit(ip(1), evict);
        slots.release(ip(1), first);
        slots.release(ip(1), first);
        assert_eq!(slots.held, 0);
        assert!(slots.by_peer.is_empty());
        let mut receivers = fill(&mut slots, &[ip(2)]);
        assert!(evicted(&mut receivers).is_empty());
    }
}
