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
    metrics,
    model::Model,
    webconfig::{Authenticator, Verdict, WebConfig, WebConfigFile},
};

/// Connections served at once. When all are taken, a new one evicts the oldest connection
/// of the peer address that holds the most: a neighbour that hoards slots loses its own, and
/// the kubelet's probes (from the node's address) and Prometheus always get one.
const MAX_CONNECTIONS: usize = 32;
/// The whole life of a connection: request head read and response written. One request per
/// connection (no keep-alive), so no client, slow, idle or not reading, holds a slot longer.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);

/// The latest sample, encoded once for every scrape, shared between the sampler thread and
/// the connections.
pub struct Published {
    latest: Mutex<Option<Arc<Exposition>>>,
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
}

impl Published {
    pub fn new(sample_interval: Duration, liveness_timeout: Duration) -> Self {
        Self {
            latest: Mutex::new(None),
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
        };
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(exposition));
        Ok(())
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
    /// TLS and basic auth; None: plain HTTP without authentication.
    pub web: Option<WebConfigFile>,
    /// Only /healthz and /readyz: the probes' own address.
    pub health_only: bool,
}

/// What a connection's requests are answered with: the web config as it was when the
/// connection came (a reload applies to the next ones).
struct Connection {
    published: Arc<Published>,
    web: Arc<WebConfig>,
    auth: Arc<Authenticator>,
    health_only: bool,
}

pub async fn serve(listener: TcpListener, mut endpoint: Endpoint) {
    let slots = Arc::new(Mutex::new(Slots::default()));
    let plain = Arc::new(WebConfig::open());
    let auth = Arc::new(Authenticator::default());
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
        let (evict, evicted) = oneshot::channel::<()>();
        let held = Held {
            id: lock(&slots).admit(peer.ip(), evict),
            peer: peer.ip(),
            slots: slots.clone(),
        };
        let connection = Arc::new(Connection {
            published: endpoint.published.clone(),
            web: endpoint
                .web
                .as_mut()
                .map_or_else(|| plain.clone(), WebConfigFile::current),
            auth: auth.clone(),
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
                .max_by_key(|(_, held)| held.len())
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
struct Held {
    id: u64,
    peer: IpAddr,
    slots: Arc<Mutex<Slots>>,
}

impl Drop for Held {
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
        match connection.auth.check(&connection.web, authorization) {
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

/// Whether any `Accept` value names OpenMetrics. Header values are bytes a scraper chooses
/// (not necessarily text); media types are case-insensitive.
fn wants_openmetrics<'a>(accept: impl IntoIterator<Item = &'a [u8]>) -> bool {
    const OPENMETRICS: &[u8] = b"application/openmetrics-text";
    accept.into_iter().any(|value| {
        value
            .windows(OPENMETRICS.len())
            .any(|w| w.eq_ignore_ascii_case(OPENMETRICS))
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

/// Random and hostile `Accept` headers: never a panic, and OpenMetrics exactly when named.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..128)
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic(values in prop::collection::vec(bytes(), 0..4)) {
            let _ = wants_openmetrics(values.iter().map(Vec::as_slice));
        }

        #[test]
        fn named_anywhere_in_any_value(
            before in prop::collection::vec(bytes(), 0..3),
            prefix in bytes(),
            suffix in bytes(),
            upper in any::<bool>(),
        ) {
            let mut value = prefix;
            let name = "application/openmetrics-text";
            value.extend_from_slice(if upper { name.to_uppercase() } else { name.to_owned() }.as_bytes());
            value.extend_from_slice(&suffix);
            let mut values = before;
            values.push(value);
            prop_assert!(wants_openmetrics(values.iter().map(Vec::as_slice)));
        }

        #[test]
        fn not_named_means_text(values in prop::collection::vec("[^o]{0,64}", 0..4)) {
            prop_assert!(!wants_openmetrics(values.iter().map(String::as_bytes)));
        }
    }

    #[test]
    fn scrapers_accept_headers() {
        let prometheus = b"application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics([prometheus.as_slice()]));
        assert!(!wants_openmetrics([b"text/plain;version=0.0.4".as_slice()]));
        assert!(!wants_openmetrics([]));
        assert!(wants_openmetrics([
            b"\xff".as_slice(),
            b"Application/OpenMetrics-Text; \xfe".as_slice()
        ]));
    }
}
