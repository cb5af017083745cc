//! Kafka test support: a mock cluster, producing events, following a group's committed
//! offsets and reading a topic as `read_committed`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};
use streamscore::events::RawEvent;

/// Client settings for servers under test: a killed member's partitions move in
/// seconds, not the default 45 s.
pub const FAST_GROUP: &str = r#"
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
"max.poll.interval.ms" = "7000"
"#;

/// Writes a server config with `kafka` (the TOML body of `[kafka]`, without the
/// header) and the fast-group client settings, after `top` (other sections); returns
/// its path.
pub fn write_config(dir: &Path, top: &str, kafka: &str) -> std::path::PathBuf {
    let path = dir.join("streamscore.toml");
    let text = format!("{top}\n[kafka]\n{kafka}\n[kafka.consumer]\n{FAST_GROUP}");
    std::fs::write(&path, text).expect("write the config");
    path
}

/// Produces `events` as JSON to `topic` the way `simulate --kafka-brokers` does
/// (keyed by user, compressed: the mock broker keeps about 5 MB per partition), and
/// waits until all are stored.
pub async fn produce(brokers: &str, topic: &str, events: &[RawEvent]) {
    let sent = streamscore::kafka::produce::produce(
        brokers,
        topic,
        streamscore::config::KafkaFormat::Json,
        events.iter().cloned(),
        |_| {},
    )
    .await
    .expect("produce");
    assert_eq!(sent, events.len() as u64);
}

/// Follows `group`'s committed offsets on a topic (one client, so each look is one
/// round trip).
pub struct Committed {
    probe: BaseConsumer,
    partitions: TopicPartitionList,
}

impl Committed {
    pub fn new(brokers: &str, group: &str, topic: &str, partitions: i32) -> Committed {
        let probe: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .create()
            .expect("probe consumer");
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition(topic, partition);
        }
        Committed {
            probe,
            partitions: list,
        }
    }

    /// The sum of the committed offsets (records committed, for a topic written once).
    pub fn total(&self) -> i64 {
        let committed = self
            .probe
            .committed_offsets(self.partitions.clone(), Duration::from_secs(10))
            .expect("committed offsets");
        committed
            .elements()
            .iter()
            .map(|e| e.offset().to_raw().unwrap_or(0).max(0))
            .sum()
    }
}

/// Counts the distinct keys of a topic visible to a `read_committed` reader, as they
/// come.
pub struct DistinctKeys {
    reader: BaseConsumer,
    keys: std::cell::RefCell<std::collections::HashSet<Vec<u8>>>,
}

impl DistinctKeys {
    pub fn new(brokers: &str, topic: &str, partitions: i32) -> DistinctKeys {
        DistinctKeys {
            reader: reader(brokers, topic, partitions),
            keys: Default::default(),
        }
    }

    pub fn count(&self) -> i64 {
        let mut keys = self.keys.borrow_mut();
        while let Some(polled) = self.reader.poll(Duration::from_millis(1)) {
            match polled {
                Ok(message) => {
                    keys.insert(message.key().unwrap_or_default().to_vec());
                }
                Err(rdkafka::error::KafkaError::PartitionEOF(_)) => {}
                Err(error) => panic!("counting: {error}"),
            }
        }
        keys.len() as i64
    }
}

fn reader(brokers: &str, topic: &str, partitions: i32) -> BaseConsumer {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{}", rand::random::<u64>()))
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .expect("reader");
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition_offset(topic, partition, rdkafka::Offset::Beginning)
            .expect("partition");
    }
    reader.assign(&list).expect("assign");
    reader
}

/// Every record of `topic` now visible to a `read_committed` reader: (key, value).
pub fn read_committed(brokers: &str, topic: &str, partitions: i32) -> Vec<(String, Vec<u8>)> {
    let reader = reader(brokers, topic, partitions);
    let mut ended = BTreeMap::new();
    let mut records = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ended.len() < partitions as usize {
        assert!(
            std::time::Instant::now() < deadline,
            "{topic} not read to its end in 30 s"
        );
        match reader.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => records.push((
                String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                message.payload().unwrap_or_default().to_vec(),
            )),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(partition))) => {
                ended.insert(partition, ());
            }
            Some(Err(error)) => panic!("reading {topic}: {error}"),
            None => {}
        }
    }
    records
}

/// Polls `progress` until it reaches `target` (90 s at most): progress read from the
/// broker, not a guess of time.
pub fn wait_for(what: &str, target: i64, progress: &impl Fn() -> i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let now = progress();
        if now >= target {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {now} of {target} within 90 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}
