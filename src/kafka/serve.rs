//! Starts the Kafka parts `serve` was configured with (the source, the scoring stream)
//! as tasks that stop when draining starts, and gives their metrics and health.

use std::sync::Arc;

use tokio::task::JoinHandle;

use super::scoring::{self, ScoringCounters};
use super::{SourceCounters, source};
use crate::config::Settings;
use crate::registry::Registry;
use crate::store::FeatureStore;

/// The running Kafka parts.
#[derive(Default)]
pub struct Running {
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    pub source: Option<Arc<SourceCounters>>,
    pub scoring: Option<Arc<ScoringCounters>>,
}

impl Running {
    /// Both parts' metrics, Prometheus text.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        if let Some(source) = &self.source {
            out.push_str(&source.prometheus());
        }
        if let Some(scoring) = &self.scoring {
            out.push_str(&scoring.prometheus());
        }
        out
    }

    /// Health per part: (service name, brokers reachable).
    pub fn health(&self) -> Vec<(&'static str, bool)> {
        let mut parts = Vec::new();
        if let Some(source) = &self.source {
            parts.push((SOURCE_SERVICE, source.health.serving()));
        }
        if let Some(scoring) = &self.scoring {
            parts.push((SCORING_SERVICE, scoring.health.serving()));
        }
        parts
    }

    /// While a part sees its brokers unreachable, asks them every [`PROBE_EVERY`]
    /// whether they answer again (a part that receives nothing would not notice).
    pub async fn probe_while_unreachable(&self, settings: crate::config::KafkaSettings) {
        let healths: Vec<Arc<super::Health>> = self
            .source
            .iter()
            .map(|c| Arc::clone(&c.health))
            .chain(self.scoring.iter().map(|c| Arc::clone(&c.health)))
            .collect();
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            for health in &healths {
                if !health.reachable() {
                    let (health, settings) = (Arc::clone(health), settings.clone());
                    let probe = move || health.probe(&settings, PROBE_EVERY);
                    if let Err(error) = tokio::task::spawn_blocking(probe).await {
                        tracing::warn!(%error, "kafka probe failed");
                    }
                }
            }
        }
    }

    /// Waits for both parts to stop (they stop when draining starts).
    pub async fn join(&self) {
        let tasks = std::mem::take(
            &mut *self
                .tasks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for task in tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, "a kafka task panicked");
            }
        }
    }
}

/// How often unreachable brokers are probed.
const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Health service names of the two parts.
pub const SOURCE_SERVICE: &str = "streamscore.kafka.Source";
pub const SCORING_SERVICE: &str = "streamscore.kafka.Scoring";

/// Starts what `settings.kafka` asks for; nothing when no brokers are set.
pub fn start(
    settings: &Settings,
    store: &Arc<FeatureStore>,
    registry: &Arc<Registry>,
    draining: &tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<Running> {
    let kafka = &settings.kafka;
    let mut running = Running::default();
    if kafka.brokers.is_empty() {
        return Ok(running);
    }
    if !kafka.topics.is_empty() {
        let counters = Arc::new(SourceCounters::default());
        let run = source::run(
            Arc::clone(store),
            kafka.clone(),
            // Half the lateness: partitions stay this close in event time, the other
            // half is left for disorder within a partition.
            settings.ingest.allowed_lateness.0 / 2,
            Arc::clone(&counters),
            draining.clone(),
        );
        let health = Arc::clone(&counters.health);
        running
            .tasks
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(tokio::spawn(async move {
                // Said loudly, and in health: ingest from Kafka has stopped while the
                // server goes on (uncommitted records wait for a restart or another member).
                if let Err(error) = run.await {
                    health.fail();
                    tracing::error!(%error, "the kafka source stopped");
                }
            }));
        running.source = Some(counters);
    }
    if !kafka.scoring.input_topic.is_empty() {
        let counters = Arc::new(ScoringCounters::default());
        let stream = scoring::Stream {
            store: Arc::clone(store),
            registry: Arc::clone(registry),
            settings: kafka.clone(),
            transactional_id: format!(
                "{}-{}",
                kafka.scoring.group,
                crate::datadir::instance_id(&settings.data_dir)?
            ),
            counters: Arc::clone(&counters),
        };
        running
            .tasks
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(tokio::spawn(scoring::run(stream, draining.clone())));
        running.scoring = Some(counters);
    }
    Ok(running)
}
