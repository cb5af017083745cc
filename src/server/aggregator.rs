//! The aggregator role (cargo feature `cluster`): a router and an aggregator (see
//! `scaleout`) in one process, each started again after a failure, and their metrics.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::ServerError;
use super::open::{load_definitions, require_redis, serve_metrics};
use crate::api::prometheus::Render;
use crate::backoff::Backoff;
use crate::config::Settings;
use crate::scaleout::{Pipeline, aggregate, route};
use crate::time::now_ms;

/// Pauses before a failed router or aggregator starts again, growing to the last.
const BACKOFF: [Duration; 4] = [
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
];

/// Runs the router and the aggregator until `shutdown` resolves, each started again
/// after a failure.
pub async fn run_aggregator(
    settings: &Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    require_redis(settings)?;
    if settings.kafka.brokers.is_empty() {
        return Err(ServerError::Setup(
            "kafka.brokers: an aggregator reads and writes Kafka topics".into(),
        ));
    }
    let cluster = &settings.cluster;
    let pipeline = Arc::new(Pipeline::new(settings, load_definitions(settings)?));
    // The data dir is held while the role runs: its instance id is this process's.
    let _owner = crate::datadir::DataDirLock::acquire(&settings.data_dir)
        .map_err(|error| ServerError::Setup(error.to_string()))?;
    let transactional_id = if cluster.transactional_id.is_empty() {
        let id = crate::datadir::instance_id(&settings.data_dir).map_err(|error| {
            ServerError::Setup(format!(
                "the instance id in {}: {error}",
                settings.data_dir.display()
            ))
        })?;
        format!("{}-{id}", cluster.route_group)
    } else {
        cluster.transactional_id.clone()
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let router = {
        let (pipeline, group, stopped) = (
            Arc::clone(&pipeline),
            cluster.route_group.clone(),
            stopped.clone(),
        );
        tokio::spawn(again("router", stopped.clone(), move || {
            route(
                Arc::clone(&pipeline),
                group.clone(),
                transactional_id.clone(),
                stopped.clone(),
            )
        }))
    };
    let aggregator = {
        let (pipeline, group, stopped) = (
            Arc::clone(&pipeline),
            cluster.aggregate_group.clone(),
            stopped.clone(),
        );
        tokio::spawn(again("aggregator", stopped.clone(), move || {
            aggregate(Arc::clone(&pipeline), group.clone(), stopped.clone())
        }))
    };
    let scrapes = {
        let pipeline = Arc::clone(&pipeline);
        let render: Render = Arc::new(move || pipeline.prometheus(now_ms()));
        serve_metrics(settings, render, stopped.clone()).await?
    };
    // Tools and tests wait for this line; the metrics address is its last field.
    tracing::info!(role = "aggregator", metrics = %scrapes.addr, "streamscore aggregator running");
    shutdown.await;
    let _ = stop.send(true);
    router.await?;
    aggregator.await?;
    if let Some(task) = scrapes.task {
        task.await?;
    }
    Ok(())
}

/// Runs `start()` until it returns `Ok` or `stopped` turns true; after an error, waits
/// (pauses growing over failures in a row, from the first again after a
/// [`crate::backoff::HEALTHY_RUN`]) and starts it again.
async fn again<F>(
    name: &'static str,
    mut stopped: tokio::sync::watch::Receiver<bool>,
    start: impl Fn() -> F,
) where
    F: Future<Output = Result<(), crate::scaleout::ScaleOutError>>,
{
    let mut backoff = Backoff::new(&BACKOFF);
    loop {
        let started = tokio::time::Instant::now();
        match start().await {
            Ok(()) => return,
            Err(error) => {
                let wait = backoff.failed_after(started.elapsed());
                tracing::warn!(part = name, %error, ?wait, "failed; starting again");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stopped.changed() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::HEALTHY_RUN;

    /// The pause before each start after the first, as `again` makes them: each run
    /// fails after its `runs` length.
    async fn pauses(runs: &[Duration]) -> Vec<Duration> {
        let calls = std::sync::Mutex::new(Vec::new());
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        let index = std::sync::atomic::AtomicUsize::new(0);
        again("test", stopped, || async {
            let run = index.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let started = tokio::time::Instant::now();
            let Some(length) = runs.get(run) else {
                return Ok(());
            };
            tokio::time::sleep(*length).await;
            calls
                .lock()
                .expect("calls")
                .push((started, started + *length));
            Err(crate::scaleout::ScaleOutError::Panicked)
        })
        .await;
        let calls = calls.into_inner().expect("calls");
        let next_starts = calls.iter().skip(1).map(|(started, _)| *started);
        calls
            .iter()
            .zip(next_starts)
            .map(|((_, ended), next)| next - *ended)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn pauses_grow_over_failures_in_a_row_and_start_over_after_a_healthy_run() {
        let quick = Duration::from_millis(1);
        let runs = [quick, quick, quick, quick, quick, HEALTHY_RUN, quick, quick];
        let got = pauses(&runs).await;
        // Before the fix the pause after the healthy run was the longest, 5 s.
        let want = [
            BACKOFF[0], BACKOFF[1], BACKOFF[2], BACKOFF[3], BACKOFF[3], BACKOFF[0], BACKOFF[1],
        ];
        assert_eq!(got, want);
    }
}
