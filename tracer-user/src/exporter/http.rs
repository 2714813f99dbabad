//! The HTTP endpoints: `/metrics`, `/healthz`, `/readyz`.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming, header, server::conn::http1, service::service_fn, Method, Request, Response,
    StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

use super::{metrics, model::Model};

/// Connections served at once; more wait in the kernel's accept queue. Bounds the memory and
/// file descriptors a scrape storm can take.
const MAX_CONNECTIONS: usize = 32;
/// A client that sends no complete request head in this time is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The latest sample, encoded once for every scrape, shared between the sampler thread and
/// the connections.
pub struct Published {
    latest: Mutex<Option<Arc<Exposition>>>,
    /// Not ready once the last good sample is older than this.
    stale_after: Duration,
}

struct Exposition {
    text: Bytes,
    openmetrics: Bytes,
    sampled_at: Instant,
}

impl Published {
    pub fn new(sample_interval: Duration) -> Self {
        Self {
            latest: Mutex::new(None),
            stale_after: sample_interval * 3,
        }
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

pub async fn serve(listener: TcpListener, published: Arc<Published>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let published = published.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| respond(request, published.clone()));
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(err) = connection.await {
                log::debug!("connection: {err}");
            }
            drop(slot);
        });
    }
}

async fn respond(
    request: Request<Incoming>,
    published: Arc<Published>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n"));
    }
    Ok(match request.uri().path() {
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
        "/healthz" => plain(StatusCode::OK, "ok\n"),
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
