//! The processes of a scaled-out deployment (cargo feature `cluster`), started by
//! `serve --role`: an aggregator runs a router and an aggregator (see `scaleout`); a
//! scorer answers `Score` and `GetFeatures` from the online store with the same gRPC
//! face, checks and errors as the embedded server.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::api::auth::{AuthLayer, Callers};
use crate::api::metrics::Metrics;
use crate::api::pb::features_server::FeaturesServer;
use crate::api::pb::models_server::ModelsServer;
use crate::api::pb::scoring_server::ScoringServer;
use crate::api::prometheus::{self, Render};
use crate::api::v2pb::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::api::{Backend, FeaturesService, InferenceService, ModelsService, ScoringService};
use crate::config::Settings;
use crate::events::Limits;
use crate::features::EngineSettings;
use crate::online::{OnlineScorer, Recording, RedisAccess, RedisOnline};
use crate::scaleout::{Pipeline, aggregate, route};
use crate::server::{
    ServerError, bind, grpc_builder, load_definitions, open_registry, open_samples, without_nagle,
};
use crate::time::now_ms;

/// Pauses before a failed router or aggregator starts again, growing to the last.
const BACKOFF: [Duration; 4] = [
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
];

/// A run this long resets the pauses before the next start to the first.
const HEALTHY_RUN: Duration = Duration::from_secs(30);

fn require_redis(settings: &Settings) -> Result<(), ServerError> {
    if settings.cluster.redis.is_empty() {
        return Err(ServerError::Setup(
            "cluster.redis: a scaled-out role needs the Redis Cluster nodes (\"host:port\")".into(),
        ));
    }
    Ok(())
}

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

/// A role's metrics endpoint, when `metrics.listen` asks for one.
struct Scrapes {
    /// Where it answers ("off" without one).
    addr: String,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Serves `render` on `metrics.listen` (when set) until `stopped` turns true.
async fn serve_metrics(
    settings: &Settings,
    render: Render,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> Result<Scrapes, ServerError> {
    let Some(addr) = settings.metrics.listen else {
        return Ok(Scrapes {
            addr: "off".into(),
            task: None,
        });
    };
    let listener = bind(addr).await?;
    let addr = listener.local_addr().unwrap_or(addr).to_string();
    let task = tokio::spawn(prometheus::serve(listener, render, async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    }));
    Ok(Scrapes {
        addr,
        task: Some(task),
    })
}

/// Runs `start()` until it returns `Ok` or `stopped` turns true; after an error, waits
/// (pauses growing over failures in a row, from the first again after a
/// [`HEALTHY_RUN`]) and starts it again.
async fn again<F>(
    name: &'static str,
    mut stopped: tokio::sync::watch::Receiver<bool>,
    start: impl Fn() -> F,
) where
    F: Future<Output = Result<(), crate::scaleout::ScaleOutError>>,
{
    let mut failures = 0usize;
    loop {
        let started = tokio::time::Instant::now();
        match start().await {
            Ok(()) => return,
            Err(error) => {
                // A run that went well for a while starts the pauses over: a failure a
                // day later is not the fifth of a streak.
                if started.elapsed() >= HEALTHY_RUN {
                    failures = 0;
                }
                let wait = BACKOFF[failures.min(BACKOFF.len() - 1)];
                failures += 1;
                tracing::warn!(part = name, %error, ?wait, "failed; starting again");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stopped.changed() => return,
                }
            }
        }
    }
}

/// How a scorer records (`record` on `Score`): to the first of `kafka.topics` when
/// `kafka.brokers` names brokers, answers kept for the routers' dedup horizon; `None`
/// (recorded calls refused, saying why) without them.
fn recording(settings: &Settings) -> Result<Option<Recording>, ServerError> {
    let recorder = crate::kafka::produce::EventRecorder::from_settings(&settings.kafka)
        .map_err(|error| ServerError::Setup(format!("the events topic producer: {error}")))?;
    Ok(recorder.map(|recorder| {
        tracing::info!(
            topic = recorder.topic(),
            "scorer: recorded calls go to the events topic"
        );
        Recording {
            sink: Arc::new(recorder),
            answers_kept_ms: u64::try_from(settings.ingest.dedup_horizon.0).unwrap_or(1),
        }
    }))
}

/// Serves `Score` and `GetFeatures` from the online store on `listener` until
/// `shutdown` resolves.
pub async fn run_scorer(
    listener: TcpListener,
    settings: &Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    require_redis(settings)?;
    let definitions = load_definitions(settings)?;
    let online = RedisOnline::connect_with(&RedisAccess::from(&settings.cluster))
        .await
        .map_err(|e| ServerError::Setup(e.to_string()))?;
    let mut scorer = OnlineScorer::new(online, Arc::clone(&definitions), EngineSettings::from(&settings.ingest))
        .with_limits(Limits::from(&settings.ingest))
        .with_cache(
            settings.cluster.scorer_cache.as_duration(),
            settings.cluster.scorer_cache_entries,
        );
    if let Some(recording) = recording(settings)? {
        scorer = scorer.with_recording(recording);
    }
    let scorer = Arc::new(scorer);
    let registry = open_registry(settings, definitions).await?;
    let watcher = tokio::spawn(crate::registry::watch(
        Arc::clone(&registry),
        settings.models.watch_interval.as_duration(),
    ));
    let (health, health_service) = tonic_health::server::health_reporter();
    // Scoring is NOT_SERVING until a model is loaded, as on the embedded server.
    health
        .set_not_serving::<ScoringServer<ScoringService>>()
        .await;
    let scoring_health = tokio::spawn(crate::server::report_scoring_health(
        health.clone(),
        Arc::clone(&registry),
        settings.models.watch_interval.as_duration(),
    ));
    health
        .set_serving::<FeaturesServer<FeaturesService>>()
        .await;
    health.set_serving::<ModelsServer<ModelsService>>().await;
    health
        .set_serving::<GrpcInferenceServiceServer<InferenceService>>()
        .await;
    let (reflection, reflection_v1alpha) = crate::server::reflection_services()?;
    let metrics = Arc::new(Metrics::default());
    let callers = Callers::from_settings(&settings.auth).map_err(ServerError::Setup)?;
    let max_message = settings.ingest.max_message_bytes;
    let (stop_scrapes, scrapes_stopped) = tokio::sync::watch::channel(false);
    let budget = Arc::new(crate::api::budget::Budget::from_settings(&settings.limits));
    let (admin_serving, main_auth) = crate::server::serve_admin(
        crate::server::bind_admin(settings).await?,
        settings,
        &metrics,
        AuthLayer::new(callers),
        &budget,
        &registry,
        health_service.clone(),
        scrapes_stopped.clone(),
    )?;
    let scrapes = {
        let (metrics, scorer, registry) = (
            Arc::clone(&metrics),
            Arc::clone(&scorer),
            Arc::clone(&registry),
        );
        let render: Render = Arc::new(move || {
            let mut text = metrics.render(&[(
                "streamscore_models_loaded",
                "model versions in the registry",
                registry.catalog().models().len() as f64,
            )]);
            scorer.read_ages().render(
                &mut text,
                "streamscore_scorer_read_age_seconds",
                "how old the data behind each read was: now - the newest event time written by the aggregators",
            );
            text
        });
        serve_metrics(settings, render, scrapes_stopped).await?
    };
    let addr = listener.local_addr().unwrap_or(settings.listen);
    // Same words as the embedded server's line, the address last: tools wait for it.
    tracing::info!(role = "scorer", metrics = %scrapes.addr, addr = %addr, "streamscore listening");
    let scorer_for_v2 = Arc::clone(&scorer);
    let backend = Backend::Online(scorer);
    let served = grpc_builder(settings, &metrics, main_auth, &budget)?
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(
            ScoringServer::new(
                ScoringService::on(backend.clone(), Arc::clone(&registry))
                    .with_samples(open_samples(settings)?)
                    .with_drift(settings.drift, Arc::clone(&metrics)),
            )
            .max_decoding_message_size(max_message),
        )
        .add_service(
            FeaturesServer::new(FeaturesService::on(backend))
                .max_decoding_message_size(max_message),
        )
        .add_service(ModelsServer::new(ModelsService::new(Arc::clone(&registry))))
        .add_service(
            GrpcInferenceServiceServer::new(InferenceService::new(
                Backend::Online(Arc::clone(&scorer_for_v2)),
                registry,
                settings.ingest.max_batch_events,
            ))
            .max_decoding_message_size(max_message),
        )
        .serve_with_incoming_shutdown(without_nagle(listener), shutdown)
        .await;
    watcher.abort();
    scoring_health.abort();
    if let Some(admin) = admin_serving {
        admin.abort();
    }
    let _ = stop_scrapes.send(true);
    if let Some(task) = scrapes.task {
        task.await?;
    }
    Ok(served?)
}

#[cfg(test)]
mod tests {
    use super::*;

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
