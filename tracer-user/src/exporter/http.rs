//! The HTTP endpoints: `/metrics`, `/healthz`, `/readyz`.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
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

/// The latest sample, shared between the sampler and the connections.
#[derive(Default)]
pub struct Published {
    model: Mutex<Option<Arc<Model>>>,
}

impl Published {
    pub fn publish(&self, model: Model) {
        *self.model.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(model));
    }

    fn latest(&self) -> Option<Arc<Model>> {
        self.model.lock().unwrap_or_else(|e| e.into_inner()).clone()
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
            Some(model) => metrics_response(&model, wants_openmetrics(&request)),
            None => plain(StatusCode::SERVICE_UNAVAILABLE, "no sample yet\n"),
        },
        "/healthz" => plain(StatusCode::OK, "ok\n"),
        "/readyz" => match published.latest() {
            Some(_) => plain(StatusCode::OK, "ready\n"),
            None => plain(StatusCode::SERVICE_UNAVAILABLE, "programs loading\n"),
        },
        _ => plain(StatusCode::NOT_FOUND, "try /metrics, /healthz or /readyz\n"),
    })
}

fn wants_openmetrics(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"))
}

fn metrics_response(model: &Model, openmetrics: bool) -> Response<Full<Bytes>> {
    let families = metrics::families(model);
    let (body, content_type) = if openmetrics {
        (
            metrics::encode_openmetrics(&families),
            metrics::OPENMETRICS_CONTENT_TYPE,
        )
    } else {
        match metrics::encode_text(&families) {
            Ok(body) => (body, metrics::TEXT_CONTENT_TYPE),
            Err(err) => {
                return plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("encoding failed: {err}\n"),
                )
            }
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
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
