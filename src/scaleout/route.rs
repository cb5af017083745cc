//! The router: reads the events topics, admits each event once (validation, dedup,
//! lateness, against its own dedup set and watermark) and sends it to the topic of
//! every entity it names, keyed by the entity's id and stamped with the watermark, in
//! one Kafka transaction with the input offsets: an event is routed to all its entity
//! topics or to none, and exactly once.

use std::sync::Arc;

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::{
    KAFKA_TIMEOUT, Pipeline, ScaleOutError, WATERMARK_HEADER, blocking, next_offsets, receive,
};
use crate::events::validate;
use crate::features::{Admission, Engine};
use crate::kafka::{client_config, consumer_config, decode};
use crate::time::now_ms;

/// Routes until `shutdown` turns true. An error (a transaction that cannot commit)
/// ends the run; the caller starts it again, with a fresh dedup set.
pub async fn route(
    pipeline: Arc<Pipeline>,
    group: String,
    transactional_id: String,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), ScaleOutError> {
    let kafka = &pipeline.kafka;
    let consumer: StreamConsumer = consumer_config(kafka)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()?;
    let topics = pipeline.entity_topics();
    super::check_topics(&consumer, &topics)?;
    let inputs: Vec<&str> = kafka.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&inputs)?;
    let producer: FutureProducer = client_config(kafka)
        .set("transactional.id", &transactional_id)
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .create()?;
    {
        let producer = producer.clone();
        blocking(move || producer.init_transactions(KAFKA_TIMEOUT)).await?;
    }
    tracing::info!(inputs = ?kafka.topics, outputs = ?topics, %transactional_id, "router started");
    // Admission state: the dedup set and the watermark (no entities are applied here).
    let engine = Engine::new(Arc::clone(&pipeline.definitions), pipeline.engine);
    loop {
        let batch = tokio::select! {
            batch = receive(&consumer, kafka.batch_records) => batch,
            _ = shutdown.changed() => return Ok(()),
        };
        if batch.is_empty() {
            continue;
        }
        tracing::debug!(records = batch.len(), "router: batch received");
        transact(&pipeline, &engine, &consumer, &producer, &batch).await?;
        tracing::debug!(records = batch.len(), "router: batch routed");
    }
}

async fn transact(
    pipeline: &Pipeline,
    engine: &Engine,
    consumer: &StreamConsumer,
    producer: &FutureProducer,
    batch: &[OwnedMessage],
) -> Result<(), ScaleOutError> {
    let fail = |error: rdkafka::error::KafkaError| ScaleOutError::Transaction(error.to_string());
    producer.begin_transaction().map_err(fail)?;
    // Admission first, under the engine's writer (no await while it is held), then
    // the sends.
    let mut routed: Vec<(String, String, &[u8], String)> = Vec::new();
    let mut admitted = 0u64;
    {
        let mut writer = engine.writer();
        let now = now_ms();
        for message in batch {
            let payload = message.payload();
            let raw = match decode::event(payload, pipeline.kafka.format) {
                Ok(raw) => raw,
                Err(why) => {
                    tracing::warn!(%why, topic = message.topic(), partition = message.partition(), offset = message.offset(), "router: record skipped");
                    continue;
                }
            };
            let event = match validate(&pipeline.definitions, &pipeline.limits, &raw, Some(now)) {
                Ok(event) => event,
                Err(refusal) => {
                    tracing::debug!(field = %refusal.field, reason = %refusal.reason, "router: event refused");
                    continue;
                }
            };
            if writer.admit(&event) != Admission::Apply {
                continue;
            }
            writer.record_admission(&event);
            admitted += 1;
            let watermark = engine.watermark_ms().to_string();
            for (entity, id) in engine.entities_of(&event) {
                let topic = pipeline.entity_topic(&pipeline.definitions.entities[entity].name);
                routed.push((topic, id, payload.unwrap_or_default(), watermark.clone()));
            }
        }
    }
    let mut deliveries = Vec::with_capacity(routed.len());
    for (topic, id, payload, watermark) in &routed {
        let headers = OwnedHeaders::new().insert(Header {
            key: WATERMARK_HEADER,
            value: Some(watermark.as_bytes()),
        });
        let record = FutureRecord::to(topic)
            .key(id)
            .payload(*payload)
            .headers(headers);
        match producer.send_result(record) {
            Ok(delivery) => deliveries.push(delivery),
            Err((error, _)) => return Err(abort(producer, fail(error)).await),
        }
    }
    for delivery in deliveries {
        let delivered = match delivery.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((error, _))) => Err(fail(error)),
            Err(_cancelled) => Err(ScaleOutError::Transaction(
                "a delivery was cancelled".into(),
            )),
        };
        if let Err(error) = delivered {
            return Err(abort(producer, error).await);
        }
    }
    let offsets = next_offsets(batch).map_err(fail)?;
    let Some(group) = consumer.group_metadata() else {
        return Err(abort(
            producer,
            ScaleOutError::Transaction("no group metadata yet".into()),
        )
        .await);
    };
    let committing = producer.clone();
    let committed = blocking(move || {
        committing.send_offsets_to_transaction(&offsets, &group, KAFKA_TIMEOUT)?;
        committing.commit_transaction(KAFKA_TIMEOUT)
    })
    .await;
    match committed {
        Ok(()) => {
            pipeline
                .counters
                .routed
                .fetch_add(admitted, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
        Err(error) => Err(abort(producer, error).await),
    }
}

/// Aborts the open transaction and passes `error` on.
async fn abort(producer: &FutureProducer, error: ScaleOutError) -> ScaleOutError {
    let aborting = producer.clone();
    if let Err(abort) = blocking(move || aborting.abort_transaction(KAFKA_TIMEOUT)).await {
        tracing::warn!(%abort, "router: abort failed");
    }
    error
}
