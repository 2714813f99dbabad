//! `reapwatch serve`: the Prometheus exporter.
//!
//! It must keep answering while the node is out of PIDs, which is when it is needed: all its
//! work runs on one thread, in a current-thread tokio runtime built at start-up, with no
//! blocking pool and no child process. Nothing after start-up needs a new task.

mod http;
mod logger;
mod metrics;
mod model;
mod sampler;
pub mod settings;

use std::{path::Path, sync::Arc};

use anyhow::{anyhow, Context, Result};
use tokio::{
    net::TcpListener,
    signal::unix::{signal, SignalKind},
};

use self::{http::Published, sampler::Sampler, settings::Settings};
use crate::{cli::ServeArgs, state::StateEngine};

pub fn run(args: &ServeArgs) -> Result<()> {
    let settings = Settings::resolve(args)?;
    logger::init(settings.log_level);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(serve(settings))
}

async fn serve(settings: Settings) -> Result<()> {
    // Bind before loading, so a taken port fails fast and touches nothing in the kernel.
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|err| anyhow!("cannot listen on {}: {err}", settings.listen))?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;

    let published = Arc::new(Published::default());
    let server = tokio::spawn(http::serve(listener, published.clone()));
    log::info!("listening on {}", settings.listen);

    let engine = StateEngine::load(
        settings.map_sizes,
        Path::new("/proc"),
        Path::new("/sys/fs/cgroup"),
        settings.cgroup_hierarchy,
    )?;
    let mut sampler = Sampler::new(engine, settings)?;
    let mut ticks = tokio::time::interval(sampler.sample_interval());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    log::info!("programs attached");
    loop {
        tokio::select! {
            _ = ticks.tick() => match sampler.sample() {
                Ok(model) => published.publish(model),
                // A failed sample keeps serving the previous one.
                Err(err) => log::warn!("sample failed: {err:#}"),
            },
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    log::info!("shutting down");
    server.abort();
    // Dropping the sampler drops the programs' links and maps: nothing is left attached.
    drop(sampler);
    Ok(())
}
