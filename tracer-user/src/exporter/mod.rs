//! `reapwatch serve`: the Prometheus exporter.
//!
//! It must keep answering while the node is out of PIDs, which is when it is needed, so it
//! makes every task it will ever need at start-up: the main thread runs a current-thread
//! tokio runtime (no blocking pool) that answers HTTP, the probes' address (when asked for)
//! has a thread and runtime of its own, a `bcrypt` thread checks passwords (with a web
//! config), and one sampler thread loads the programs, then samples and reconciles with
//! `/proc`. A full `/proc` scan on a busy node takes long; it never holds up a probe or a
//! scrape, which are served from the last encoded sample. No child process, and nothing
//! after start-up needs a new task.

mod accept;
mod admission;
mod checker;
mod http;
mod ledger;
mod logger;
mod metrics;
mod model;
mod sampler;
mod scrapes;
pub mod settings;
mod webconfig;

use std::{
    sync::{Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{anyhow, Context, Result};
use tokio::{
    net::TcpListener,
    signal::unix::{signal, SignalKind},
    sync::oneshot,
};

use self::{
    http::{Endpoint, Published},
    model::Health,
    sampler::Sampler,
    settings::Settings,
    webconfig::{Authenticator, WebConfigFile},
};
use crate::{
    cli::ServeArgs,
    kernel::preflight::{self, Cleared},
    state::StateEngine,
};

pub fn run(args: &ServeArgs) -> Result<()> {
    let settings = Settings::resolve(args)?;
    // A broken web config stops it here; a later broken version only keeps the last good one.
    let web = settings
        .web_config_file
        .clone()
        .map(WebConfigFile::open)
        .transpose()?;
    logger::init(settings.log_level);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(serve(settings, web))
}

async fn serve(settings: Settings, web: Option<WebConfigFile>) -> Result<()> {
    // What would stop the programs loading is said before anything is served.
    let cleared = preflight::check_all()?;
    // Bind before loading, so a taken port fails fast and touches nothing in the kernel.
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|err| cannot_listen(settings.listen, err))?;
    let health_listener = settings
        .health_listen
        .map(|address| {
            std::net::TcpListener::bind(address)
                .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
                .map_err(|err| cannot_listen(address, err))
        })
        .transpose()?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;

    let published = Arc::new(Published::new(
        settings.sample_interval,
        settings.liveness_timeout,
    ));
    let web = match web {
        Some(web) => Some((web, Arc::new(Authenticator::start()?))),
        None => None,
    };
    let server = tokio::spawn(http::serve(
        listener,
        Endpoint {
            published: published.clone(),
            web,
            health_only: false,
        },
    ));
    log::info!("listening on {}", settings.listen);
    if let Some(listener) = health_listener {
        serve_probes(listener, published.clone())?;
    }

    let stop = Arc::new(Stop::default());
    let (loaded_tx, loaded) = oneshot::channel();
    let sampler = {
        let (published, stop) = (published.clone(), stop.clone());
        thread::Builder::new()
            .name("sampler".to_owned())
            .spawn(move || sample_until_stopped(&cleared, settings, &published, &stop, loaded_tx))
            .context("cannot start the sampler thread")?
    };

    let outcome = tokio::select! {
        loaded = loaded => match loaded {
            Ok(Ok(())) => {
                log::info!("programs attached");
                tokio::select! {
                    _ = terminate.recv() => Ok(()),
                    _ = interrupt.recv() => Ok(()),
                }
            }
            Ok(Err(err)) => Err(err),
            Err(_) => Err(anyhow!("the sampler thread ended")),
        },
        _ = terminate.recv() => Ok(()),
        _ = interrupt.recv() => Ok(()),
    };
    log::info!("shutting down");
    stop.request();
    server.abort();
    // The sampler drops the programs' links and maps as it ends: nothing is left attached.
    if sampler.join().is_err() {
        return Err(anyhow!("the sampler thread panicked"));
    }
    outcome
}

fn cannot_listen(address: std::net::SocketAddr, err: std::io::Error) -> anyhow::Error {
    anyhow!("cannot listen on {address}: {err}")
}

/// The probes' address, on a thread and runtime of its own made now: neither a flood of
/// connections or handshakes on the metrics address nor a slow scrape can hold a probe up.
/// It ends with the process.
fn serve_probes(listener: std::net::TcpListener, published: Arc<Published>) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("cannot start the probes' runtime")?;
    let listener = {
        let _in_runtime = runtime.enter();
        TcpListener::from_std(listener).context("cannot serve the probes' address")?
    };
    let endpoint = Endpoint {
        published,
        web: None,
        health_only: true,
    };
    thread::Builder::new()
        .name("probes".to_owned())
        .spawn(move || runtime.block_on(http::serve(listener, endpoint)))
        .context("cannot start the probes' thread")?;
    Ok(())
}

/// The sampler thread: loads the programs, says how that went, then samples every interval
/// until stopped. A failed sample keeps the last good one served, with the failure counted.
fn sample_until_stopped(
    cleared: &Cleared,
    settings: Settings,
    published: &Published,
    stop: &Stop,
    loaded: oneshot::Sender<Result<()>>,
) {
    // However this thread ends (a panic included), /healthz says so from then on.
    published.sampler_started();
    let interval = settings.sample_interval;
    let engine = StateEngine::load(cleared, settings.map_sizes, settings.cgroup_hierarchy);
    let mut sampler = match engine.and_then(|engine| Sampler::new(engine, settings)) {
        Ok(sampler) => sampler,
        Err(err) => {
            let _ = loaded.send(Err(err));
            return;
        }
    };
    if loaded.send(Ok(())).is_err() {
        return;
    }
    published.progressed();
    let mut health = Health::default();
    let mut last_good = None;
    loop {
        let began = Instant::now();
        let published_now = match sampler.sample(published.scrapes()) {
            Ok(mut model) => {
                health.last_sample_unix_seconds = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                model.health = health;
                let published_now = published.publish(&model, began);
                last_good = Some((model, began));
                published_now
            }
            Err(err) => {
                health.sample_failures += 1;
                log::warn!("sample failed: {err:#}");
                match &mut last_good {
                    Some((model, sampled_at)) => {
                        model.health = health;
                        published.publish(model, *sampled_at)
                    }
                    None => Ok(()),
                }
            }
        };
        if let Err(err) = published_now {
            log::warn!("cannot encode the sample: {err:#}");
        }
        published.progressed();
        if stop.wait(interval.saturating_sub(began.elapsed())) {
            return;
        }
    }
}

/// Asks the sampler thread to end, waking it from its wait between samples.
#[derive(Default)]
struct Stop {
    requested: Mutex<bool>,
    wake: Condvar,
}

impl Stop {
    fn request(&self) {
        *self.requested.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.wake.notify_all();
    }

    /// Waits up to `timeout`; true if stopping was requested.
    fn wait(&self, timeout: Duration) -> bool {
        let requested = self.requested.lock().unwrap_or_else(|e| e.into_inner());
        let (requested, _) = self
            .wake
            .wait_timeout_while(requested, timeout, |requested| !*requested)
            .unwrap_or_else(|e| e.into_inner());
        *requested
    }
}
