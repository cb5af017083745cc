//! The online store against a real 3-master Redis Cluster on loopback: records come
//! back bit for bit and answer reads exactly as the engine's own state does; a stale
//! owner's write never lands over newer state; a killed master fails reads with a
//! clear error, and after its restart every acknowledged record is back.
#![cfg(feature = "cluster")]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::redis::RedisCluster;
use streamscore::definitions::Definitions;
use streamscore::events::{Limits, RawEvent, validate};
use streamscore::features::{Engine, EngineSettings};
use streamscore::online::{
    EntityRecord, OnlineScorer, RedisOnline, Written, entity_key, entity_type_of,
};
use streamscore::registry::Registry;
use streamscore::scoring;

const SETTINGS: EngineSettings = EngineSettings {
    allowed_lateness_ms: 60_000,
    dedup_horizon_ms: 3_600_000,
};
const T0: i64 = 1_790_000_000_000;

/// 3,000 payments over 300 users, 200 cards and 100 devices, one a second.
fn engine() -> (Arc<Definitions>, Engine) {
    let definitions = Arc::new(Definitions::default_shop());
    let limits = Limits {
        max_future_skew_ms: i64::MAX / 4,
        max_id_bytes: 64,
    };
    let mut engine = Engine::new(Arc::clone(&definitions), SETTINGS);
    for i in 0..3_000usize {
        let raw = RawEvent {
            event_id: format!("p{i}"),
            event_type: "payment".into(),
            event_time_ms: T0 + i as i64 * 1_000,
            entities: BTreeMap::from([
                ("user".into(), format!("u{}", i % 300)),
                ("card".into(), format!("c{}", i % 200)),
                ("device".into(), format!("d{}", i % 100)),
            ]),
            numbers: BTreeMap::from([("amount".into(), (i % 97) as f64 * 1.37)]),
            strings: BTreeMap::from([("ip_country".into(), ["DE", "FR", "US"][i % 3].into())]),
        };
        let event = validate(&definitions, &limits, &raw, None).expect("valid payment");
        engine.apply(&event, i as u64 + 1);
    }
    (definitions, engine)
}

/// Every (entity type, id) the engine holds from [`engine`].
fn entities() -> Vec<(&'static str, String)> {
    let mut all = Vec::new();
    for (entity, count, prefix) in [("user", 300, "u"), ("card", 200, "c"), ("device", 100, "d")] {
        all.extend((0..count).map(|i| (entity, format!("{prefix}{i}"))));
    }
    all
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn records_of(definitions: &Definitions, engine: &Engine) -> Vec<(String, EntityRecord)> {
    entities()
        .into_iter()
        .map(|(entity, id)| {
            let entity_id = definitions.entity_id(entity).expect("entity type");
            let state = engine.entity_state(entity_id, &id).expect("held");
            let record = EntityRecord {
                seq: state.applied_seq(),
                fingerprint: definitions.state_fingerprint,
                state,
                sealed: Default::default(),
            };
            (
                entity_key(definitions.state_fingerprint, entity, &id),
                record,
            )
        })
        .collect()
}

#[test]
fn records_come_back_bit_for_bit_and_read_as_the_engine_reads() {
    let cluster = RedisCluster::start();
    let (definitions, engine) = engine();
    let records = records_of(&definitions, &engine);
    let runtime = runtime();
    let online = runtime
        .block_on(RedisOnline::connect(&cluster.nodes))
        .expect("connects");
    let retention = |key: &str| {
        let entity = entity_type_of(key).expect("entity in key");
        let id = definitions.entity_id(entity).expect("entity type");
        engine.retention_ms(id).expect("has features") as u64
    };
    let written = runtime
        .block_on(online.write(&records, retention))
        .expect("writes");
    assert!(written.iter().all(|w| *w == Written::Stored));
    for index in 0..3 {
        let keys: u64 = cluster
            .cli(index, &["dbsize"])
            .and_then(|reply| reply.trim().parse().ok())
            .expect("dbsize");
        assert!(keys > 0, "master {index} holds none of the 600 records");
    }

    let keys: Vec<String> = records.iter().map(|(key, _)| key.clone()).collect();
    let fetched = runtime
        .block_on(online.read(&keys, definitions.state_fingerprint))
        .expect("reads");
    let at = engine.watermark_ms();
    let view = engine.view();
    for ((key, record), fetched) in records.iter().zip(&fetched) {
        let fetched = fetched.as_ref().unwrap_or_else(|| panic!("{key} missing"));
        assert_eq!(format!("{fetched:?}"), format!("{record:?}"), "{key}");
        let tagged = key.split_once('{').expect("hash tag").1;
        let (entity, id) = tagged[..tagged.len() - 1].split_once(':').expect("key");
        let (entity_id, features) = engine.resolve(entity, &[]).expect("resolves");
        let own = view
            .read(entity_id, id, &features, at)
            .expect("engine reads");
        let detached = engine
            .read_detached(entity_id, id, Some(&fetched.state), &features, at)
            .expect("reads from the record");
        assert_eq!(
            format!("{:?}", detached.values),
            format!("{:?}", own.values),
            "{key}"
        );
        assert!(own.values.iter().any(|(_, v)| v.is_some_and(|v| v > 0.0)));
    }

    let ttl = runtime
        .block_on(online.ttl_ms(&keys[0]))
        .expect("pttl")
        .expect("a time to live is set");
    let retention = retention(&keys[0]);
    assert!(
        ttl <= retention && ttl + 60_000 > retention,
        "{ttl} of {retention}"
    );
    let absent = runtime
        .block_on(online.read(
            &[entity_key(definitions.state_fingerprint, "user", "nobody")],
            definitions.state_fingerprint,
        ))
        .expect("reads");
    assert_eq!(absent, vec![None]);
    let foreign = runtime.block_on(online.read(&keys[..1], definitions.state_fingerprint ^ 1));
    let message = foreign.expect_err("other definitions").to_string();
    assert!(message.contains("other feature definitions"), "{message}");
}

#[test]
fn a_stale_owner_never_overwrites_newer_state() {
    let cluster = RedisCluster::start();
    let (definitions, engine) = engine();
    let records = records_of(&definitions, &engine);
    let (key, newer) = records[0].clone();
    let older = EntityRecord {
        state: records[1].1.state.clone(),
        ..newer.clone()
    };
    let runtime = runtime();
    let online = runtime
        .block_on(RedisOnline::connect(&cluster.nodes))
        .expect("connects");
    let write = |seq: u64, record: &EntityRecord| {
        let record = EntityRecord {
            seq,
            ..record.clone()
        };
        runtime
            .block_on(online.write(&[(key.clone(), record)], |_| 60_000))
            .expect("writes")[0]
    };
    assert_eq!(write(100, &newer), Written::Stored);
    assert_eq!(write(50, &older), Written::Stale, "an older offset");
    assert_eq!(write(100, &older), Written::Stale, "the same offset");
    let read = |runtime: &tokio::runtime::Runtime| {
        runtime
            .block_on(online.read(std::slice::from_ref(&key), definitions.state_fingerprint))
            .expect("reads")[0]
            .clone()
            .expect("stored")
    };
    let stored = read(&runtime);
    assert_eq!(
        (stored.seq, format!("{:?}", stored.state)),
        (100, format!("{:?}", newer.state))
    );
    assert_eq!(write(101, &older), Written::Stored, "a newer offset");
    let stored = read(&runtime);
    assert_eq!(
        (stored.seq, format!("{:?}", stored.state)),
        (101, format!("{:?}", older.state))
    );
}

#[test]
fn a_killed_master_fails_reads_clearly_and_its_records_are_back_after_restart() {
    let mut cluster = RedisCluster::start();
    let (definitions, engine) = engine();
    let records = records_of(&definitions, &engine);
    let keys: Vec<String> = records.iter().map(|(key, _)| key.clone()).collect();
    let runtime = runtime();
    let online = runtime
        .block_on(RedisOnline::connect(&cluster.nodes))
        .expect("connects");
    runtime
        .block_on(online.write(&records, |_| 3_600_000))
        .expect("writes");

    cluster.kill(1);
    let error = runtime
        .block_on(online.read(&keys, definitions.state_fingerprint))
        .expect_err("a third of the keys live on the killed master");
    let message = error.to_string();
    assert!(
        message.contains("online store (Redis Cluster)"),
        "{message}"
    );
    // The message goes to clients: it names the store, not a node.
    assert!(!message.contains("127.0.0.1"), "{message}");

    cluster.restart(1);
    // The client finds the node again on its own; poll until it does.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let fetched = loop {
        match runtime.block_on(online.read(&keys, definitions.state_fingerprint)) {
            Ok(fetched) => break fetched,
            Err(error) => assert!(
                std::time::Instant::now() < deadline,
                "still failing after the restart: {error}"
            ),
        }
    };
    for ((key, record), fetched) in records.iter().zip(&fetched) {
        let fetched = fetched.as_ref().unwrap_or_else(|| panic!("{key} lost"));
        assert_eq!(format!("{fetched:?}"), format!("{record:?}"), "{key}");
    }
}

#[test]
fn a_scorer_on_the_cluster_scores_as_the_engine_does_to_the_bit() {
    let cluster = RedisCluster::start();
    let (definitions, engine) = engine();
    let records = records_of(&definitions, &engine);
    let runtime = runtime();
    let online = runtime
        .block_on(RedisOnline::connect(&cluster.nodes))
        .expect("connects");
    runtime
        .block_on(online.write(&records, |_| 3_600_000))
        .expect("writes");
    runtime
        .block_on(online.advance_watermark(definitions.state_fingerprint, engine.watermark_ms()))
        .expect("watermark");
    let registry = Registry::new(
        Arc::clone(&definitions),
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models"),
    );
    assert!(registry.scan().expect("models dir").is_empty());
    let fraud = registry.resolve("fraud").expect("shipped fraud model");
    let scorer = OnlineScorer::new(online, Arc::clone(&definitions), SETTINGS);

    let at = engine.watermark_ms();
    let mut known = 0;
    for i in 0..120usize {
        // Known users, cards and devices in new combinations, and every tenth user new.
        let user = if i % 10 == 9 {
            format!("new{i}")
        } else {
            format!("u{}", i * 7 % 300)
        };
        let event = RawEvent {
            event_id: "score".into(),
            event_type: "payment".into(),
            event_time_ms: at - (i as i64 % 5) * 1_000,
            entities: BTreeMap::from([
                ("user".into(), user),
                ("card".into(), format!("c{}", i * 3 % 200)),
                ("device".into(), format!("d{}", i % 100)),
            ]),
            numbers: BTreeMap::from([("amount".into(), 5.0 + i as f64 * 3.3)]),
            strings: BTreeMap::from([("ip_country".into(), ["DE", "BR"][i % 2].into())]),
        };
        let embedded = scoring::score_on(
            &definitions,
            &engine.view(),
            Arc::clone(&fraud),
            &event,
            5,
            true,
        )
        .expect("embedded scores");
        let online = runtime
            .block_on(scorer.score(Arc::clone(&fraud), &event, 5, true))
            .expect("scorer scores");
        assert_eq!(
            online.score.to_bits(),
            embedded.score.to_bits(),
            "payment {i}"
        );
        assert_eq!(online.decision, embedded.decision, "payment {i}");
        assert_eq!(
            format!("{:?}", online.reasons),
            format!("{:?}", embedded.reasons)
        );
        assert_eq!(
            format!("{:?}", online.features),
            format!("{:?}", embedded.features)
        );
        assert_eq!(
            online.unknown_entities, embedded.unknown_entities,
            "payment {i}"
        );
        known += usize::from(embedded.unknown_entities.is_empty());
    }
    assert!(
        known >= 100,
        "most payments name entities with history ({known})"
    );
}

#[test]
fn a_scorer_refuses_bad_requests_as_the_embedded_server_does() {
    let cluster = RedisCluster::start();
    let definitions = Arc::new(Definitions::default_shop());
    let runtime = runtime();
    let online = runtime
        .block_on(RedisOnline::connect(&cluster.nodes))
        .expect("connects");
    let registry = Registry::new(
        Arc::clone(&definitions),
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models"),
    );
    assert!(registry.scan().expect("models dir").is_empty());
    let scorer = OnlineScorer::new(online, Arc::clone(&definitions), SETTINGS);
    let payment = |amount: f64, user: &str| RawEvent {
        event_id: "score".into(),
        event_type: "payment".into(),
        event_time_ms: T0,
        entities: BTreeMap::from([("user".into(), user.into()), ("card".into(), "c1".into())]),
        numbers: BTreeMap::from([("amount".into(), amount)]),
        strings: BTreeMap::new(),
    };
    let input = |model: &str, event: RawEvent, record: bool| scoring::ScoreInput {
        model: model.into(),
        event,
        include_features: false,
        record,
        reasons: 3,
        shadow: Vec::new(),
    };
    let error = |input| {
        runtime
            .block_on(scorer.score_input(&registry, input))
            .expect_err("refused")
            .to_string()
    };
    let nan = error(input("fraud", payment(f64::NAN, "u1"), false));
    assert!(nan.contains("amount"), "{nan}");
    let unknown = error(input("no-such-model", payment(5.0, "u1"), false));
    assert!(unknown.contains("no-such-model"), "{unknown}");
    let empty_id = error(input("fraud", payment(5.0, ""), false));
    assert!(empty_id.contains("user"), "{empty_id}");
    let record = error(input("fraud", payment(5.0, "u1"), true));
    assert!(record.contains("record"), "{record}");
    let read = |entity: &str, names: &[String]| {
        runtime
            .block_on(scorer.read(entity, "x", names, Some(T0)))
            .expect_err("refused")
            .to_string()
    };
    assert!(read("spaceship", &[]).contains("spaceship"));
    assert!(read("user", &["card_payments_10m".into()]).contains("card_payments_10m"));
    // A scorer with no watermark yet answers an unknown entity with its defaults.
    let fresh = runtime
        .block_on(scorer.read("user", "nobody", &[], Some(T0)))
        .expect("reads");
    assert!(!fresh.known);
}

/// With a cache, a scorer answers from the state it fetched until it is stale, even
/// when Redis has newer; without, every read sees the newest.
#[test]
fn a_cached_scorer_answers_from_what_it_fetched_until_it_is_stale() {
    let cluster = RedisCluster::start();
    let (definitions, mut engine) = engine();
    let runtime = runtime();
    let online = runtime
        .block_on(RedisOnline::connect(&cluster.nodes))
        .expect("connects");
    runtime
        .block_on(online.write(&records_of(&definitions, &engine), |_| 3_600_000))
        .expect("writes");
    runtime
        .block_on(online.advance_watermark(definitions.state_fingerprint, engine.watermark_ms()))
        .expect("watermark");
    let connect = || {
        runtime
            .block_on(RedisOnline::connect(&cluster.nodes))
            .expect("connects")
    };
    let cached = OnlineScorer::new(connect(), Arc::clone(&definitions), SETTINGS)
        .with_cache(std::time::Duration::from_secs(3_600), 1_000);
    let uncached = OnlineScorer::new(connect(), Arc::clone(&definitions), SETTINGS);
    let at = engine.watermark_ms();
    let read = |scorer: &OnlineScorer| {
        let read = runtime
            .block_on(scorer.read("card", "c1", &[], Some(at)))
            .expect("reads");
        format!("{:?}", read.values)
    };
    let before = read(&cached);
    assert_eq!(read(&uncached), before);

    // A large payment on c1, written to Redis as its owner would.
    let raw = RawEvent {
        event_id: "late-big".into(),
        event_type: "payment".into(),
        event_time_ms: at,
        entities: BTreeMap::from([
            ("user".into(), "u1".into()),
            ("card".into(), "c1".into()),
            ("device".into(), "d1".into()),
        ]),
        numbers: BTreeMap::from([("amount".into(), 9_999.0)]),
        strings: BTreeMap::from([("ip_country".into(), "DE".into())]),
    };
    let limits = Limits {
        max_future_skew_ms: i64::MAX / 4,
        max_id_bytes: 64,
    };
    let event = validate(&definitions, &limits, &raw, None).expect("valid payment");
    engine.apply(&event, 3_001);
    let card = definitions.entity_id("card").expect("card");
    let state = engine.entity_state(card, "c1").expect("held");
    let record = EntityRecord {
        seq: state.applied_seq(),
        fingerprint: definitions.state_fingerprint,
        state,
        sealed: Default::default(),
    };
    let written = runtime
        .block_on(online.write(
            &[(
                entity_key(definitions.state_fingerprint, "card", "c1"),
                record,
            )],
            |_| 3_600_000,
        ))
        .expect("writes");
    assert_eq!(written, vec![Written::Stored]);

    let after = read(&uncached);
    assert_ne!(after, before, "the uncached scorer sees the new payment");
    assert_eq!(
        read(&cached),
        before,
        "the cached scorer answers from its copy"
    );
    let fresh = OnlineScorer::new(connect(), Arc::clone(&definitions), SETTINGS)
        .with_cache(std::time::Duration::from_secs(3_600), 1_000);
    assert_eq!(read(&fresh), after, "a new cache starts from Redis");
}

#[test]
fn a_cluster_that_requires_auth_is_used_with_the_password_file_and_refuses_without() {
    use streamscore::online::RedisAccess;
    const PASSWORD: &str = "correct horse battery staple";
    let cluster = RedisCluster::start_with_password(PASSWORD);
    let (definitions, engine) = engine();
    let records = records_of(&definitions, &engine);
    let keys: Vec<String> = records.iter().map(|(key, _)| key.clone()).collect();
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("dir");

    // Without a password, or with a wrong one: refused, saying why, naming no node.
    let wrong = dir.path().join("wrong.pass");
    std::fs::write(&wrong, "guess\n").expect("password file");
    for access in [
        RedisAccess::open(&cluster.nodes),
        RedisAccess {
            password_file: Some(wrong),
            ..RedisAccess::open(&cluster.nodes)
        },
    ] {
        let refused = match runtime.block_on(RedisOnline::connect_with(&access)) {
            Ok(online) => runtime
                .block_on(online.read(&keys, definitions.state_fingerprint))
                .map(|_| ())
                .expect_err("no reads without the password"),
            Err(refused) => refused,
        };
        let message = refused.to_string();
        assert!(message.contains("authentication refused"), "{message}");
        assert!(!message.contains("127.0.0.1"), "{message}");
    }

    // With it (as an operator's editor saves it, with a newline), reads and writes go.
    let right = dir.path().join("redis.pass");
    std::fs::write(&right, format!("{PASSWORD}\n")).expect("password file");
    let online = runtime
        .block_on(RedisOnline::connect_with(&RedisAccess {
            password_file: Some(right),
            ..RedisAccess::open(&cluster.nodes)
        }))
        .expect("connects with the password");
    runtime
        .block_on(online.write(&records, |_| 3_600_000))
        .expect("writes");
    let fetched = runtime
        .block_on(online.read(&keys, definitions.state_fingerprint))
        .expect("reads");
    assert!(fetched.iter().all(Option::is_some), "every record back");

    // A password file that cannot be read is named, and says no more.
    let missing = RedisAccess {
        password_file: Some(dir.path().join("missing.pass")),
        ..RedisAccess::open(&cluster.nodes)
    };
    let refused = runtime
        .block_on(RedisOnline::connect_with(&missing))
        .err()
        .expect("refused")
        .to_string();
    assert!(refused.contains("missing.pass"), "{refused}");
}

/// `ScoreCandidates` and `Recommend` on a scorer answer as the embedded server does: an
/// embedded store holds a simulated history, its entity states are written to the
/// cluster as aggregators would, and rules are mined from the same history by
/// `streamscore mine rules`. For users with history, each answer (products, order,
/// probabilities to the bit, reasons, context, exclusions) equals the embedded one.
#[test]
fn a_scorer_ranks_candidates_and_recommends_as_the_embedded_server_does() {
    use streamscore::config::Settings;
    use streamscore::log::FsyncPolicy;
    use streamscore::scoring::CandidateInput;
    use streamscore::scoring::recommend::{RecentFeatures, RecommendInput};
    use streamscore::simulate::{SimConfig, Simulator};
    use streamscore::store::FeatureStore;
    use streamscore::time::{HOUR_MS, MINUTE_MS, now_ms};

    let cluster = RedisCluster::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = Settings {
        data_dir: dir.path().join("data"),
        ..Settings::default()
    };
    settings.log.fsync = FsyncPolicy::Never;
    let definitions = Arc::new(Definitions::default_shop());
    let (store, _) = FeatureStore::open(&settings, Arc::clone(&definitions)).expect("store");
    let end = now_ms() - MINUTE_MS;
    let history: Vec<RawEvent> = Simulator::new(SimConfig {
        start_ms: end - 6 * HOUR_MS,
        users: 400,
        products: 60,
        affinity: 0.8,
        seed: 17,
        ..SimConfig::default()
    })
    .take_while(|event| event.event_time_ms <= end)
    .take(60_000)
    .collect();
    let runtime = runtime();
    for batch in history.chunks(2_000) {
        runtime
            .block_on(store.ingest(batch))
            .expect("history applies");
    }

    // Every entity the history names (composites such as user x product included), as
    // an aggregator would write it.
    let mut named: Vec<(usize, String)> = history
        .iter()
        .flat_map(|event| {
            (0..definitions.entities.len()).filter_map(|entity| {
                streamscore::features::vector::entity_id(&definitions, entity, event)
                    .map(|id| (entity, id.into_owned()))
            })
        })
        .collect();
    named.sort();
    named.dedup();
    let records: Vec<(String, EntityRecord)> = named
        .iter()
        .filter_map(|(entity, id)| {
            let state = store.entity_state(*entity, id)?;
            let record = EntityRecord {
                seq: state.applied_seq(),
                fingerprint: definitions.state_fingerprint,
                state,
                sealed: Default::default(),
            };
            let key = entity_key(
                definitions.state_fingerprint,
                &definitions.entities[*entity].name,
                id,
            );
            Some((key, record))
        })
        .collect();
    assert!(records.len() > 500, "{} entities", records.len());
    let online = runtime
        .block_on(RedisOnline::connect(&cluster.nodes))
        .expect("connects");
    for chunk in records.chunks(500) {
        runtime
            .block_on(online.write(chunk, |_| 3_600_000))
            .expect("writes");
    }
    runtime
        .block_on(online.advance_watermark(definitions.state_fingerprint, store.watermark_ms()))
        .expect("watermark");

    // The shipped purchase model and rules mined from the history, both promoted.
    let models = dir.path().join("models");
    std::fs::create_dir_all(models.join("purchase")).expect("models dir");
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/purchase/purchase-v1.json"),
        models.join("purchase/purchase-v1.json"),
    )
    .expect("copy the purchase model");
    let history_file = dir.path().join("history.jsonl");
    common::write_jsonl(&history_file, &history);
    common::mine_rules(&history_file, &models);
    std::fs::write(
        models.join("aliases.json"),
        r#"{"purchase": "purchase@1", "rules": "rules@1"}"#,
    )
    .expect("aliases");
    let registry = Registry::new(Arc::clone(&definitions), models);
    registry.scan().expect("models load");
    let scorer = OnlineScorer::new(
        online,
        Arc::clone(&definitions),
        EngineSettings::from(&settings.ingest),
    )
    .with_limits(Limits::from(&settings.ingest));

    // Users who viewed or carted lately, newest first.
    let mut users: Vec<&str> = Vec::new();
    let mut products: Vec<&str> = Vec::new();
    for event in history.iter().rev() {
        let (Some(user), Some(product)) =
            (event.entities.get("user"), event.entities.get("product"))
        else {
            continue;
        };
        if users.len() < 40 && !users.contains(&user.as_str()) {
            users.push(user);
        }
        if !products.contains(&product.as_str()) {
            products.push(product);
        }
    }
    assert_eq!(users.len(), 40, "users with recent views");
    let candidates: Vec<CandidateInput> = products
        .iter()
        .take(20)
        .chain(["never-seen-product"].iter())
        .map(|product| CandidateInput {
            product: product.to_string(),
            numbers: BTreeMap::new(),
        })
        .collect();
    let (mut with_rules, mut with_context) = (0, 0);
    for (i, user) in users.iter().enumerate() {
        let mut context = RawEvent {
            event_type: "page_view".into(),
            event_time_ms: end,
            ..RawEvent::default()
        };
        context.entities.insert("user".into(), user.to_string());
        let embedded = scoring::score_candidates(
            &store,
            &registry,
            "purchase",
            context.clone(),
            &candidates,
            10,
        )
        .expect("embedded ranks");
        let online = runtime
            .block_on(scorer.score_candidates(&registry, "purchase", context, &candidates, 10))
            .expect("scorer ranks");
        let ranked = |ranking: &scoring::Ranking| -> Vec<(String, u64)> {
            ranking
                .candidates
                .iter()
                .map(|c| (c.product.clone(), c.score.to_bits()))
                .collect()
        };
        assert_eq!(ranked(&online), ranked(&embedded), "{user}");
        assert_eq!(online.unknown_entities, embedded.unknown_entities, "{user}");
        assert_eq!(online.unknown_products, embedded.unknown_products, "{user}");
        assert_eq!(embedded.unknown_products, ["never-seen-product"]);

        let input = RecommendInput {
            user: user.to_string(),
            cart: if i % 2 == 0 {
                vec![products[i % products.len()].to_string()]
            } else {
                Vec::new()
            },
            event_time_ms: end,
            ..RecommendInput::default()
        };
        let features = RecentFeatures::default();
        let embedded = scoring::recommend::recommend(&store, &registry, &features, input.clone())
            .expect("embedded recommends");
        let online = runtime
            .block_on(scorer.recommend(&registry, &features, input))
            .expect("scorer recommends");
        let items = |answer: &scoring::recommend::Recommended| -> Vec<String> {
            answer
                .items
                .iter()
                .map(|item| {
                    format!(
                        "{} {} {:?}",
                        item.product,
                        item.probability.to_bits(),
                        item.why
                    )
                })
                .collect()
        };
        assert_eq!(items(&online), items(&embedded), "{user}");
        assert_eq!(online.context, embedded.context, "{user}");
        assert_eq!(online.excluded, embedded.excluded, "{user}");
        with_rules += usize::from(
            embedded
                .items
                .iter()
                .any(|item| matches!(item.why, scoring::recommend::Why::Rule(_))),
        );
        with_context += usize::from(embedded.context.len() > 1);
    }
    // Not vacuous: the answers came from the users' lists and the mined rules.
    assert!(with_rules >= 10, "{with_rules} answers with a rule");
    assert!(with_context >= 10, "{with_context} answers with a history");
}

/// A cluster that speaks only TLS, requires client certificates and AUTH: used with its
/// CA, our certificate and the password; refused (saying why, naming no node and no
/// secret) over plain TCP, with the system's roots instead of its CA, without our
/// certificate, or without the password.
#[test]
fn a_cluster_over_tls_with_auth_is_used_with_its_ca_and_refused_otherwise() {
    use common::pki::Pki;
    use common::redis::Security;
    use streamscore::online::{RedisAccess, RedisTls};
    const PASSWORD: &str = "tls and a password";
    let pki = Pki::new(&["127.0.0.1"]);
    let cluster = RedisCluster::start_secured(Security {
        password: Some(PASSWORD.into()),
        tls: Some(pki.dir().to_path_buf()),
        client_certificates: true,
    });
    let (definitions, engine) = engine();
    let records = records_of(&definitions, &engine);
    let keys: Vec<String> = records.iter().map(|(key, _)| key.clone()).collect();
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("dir");
    let password = dir.path().join("redis.pass");
    std::fs::write(&password, format!("{PASSWORD}\n")).expect("password file");
    let secured = RedisAccess {
        password_file: Some(password.clone()),
        tls: Some(RedisTls {
            ca_file: Some(pki.path("ca.pem")),
            client: Some((pki.path("client.pem"), pki.path("client.key"))),
        }),
        ..RedisAccess::open(&cluster.nodes)
    };

    let online = runtime
        .block_on(RedisOnline::connect_with(&secured))
        .expect("connects over TLS with the password");
    runtime
        .block_on(online.write(&records, |_| 3_600_000))
        .expect("writes");
    let fetched = runtime
        .block_on(online.read(&keys, definitions.state_fingerprint))
        .expect("reads");
    assert!(fetched.iter().all(Option::is_some), "every record back");

    for (what, access, why) in [
        (
            "plain TCP",
            RedisAccess {
                tls: None,
                ..secured.clone()
            },
            "unreachable",
        ),
        (
            "the system's roots",
            RedisAccess {
                tls: Some(RedisTls::default()),
                ..secured.clone()
            },
            "certificate",
        ),
        (
            "no client certificate",
            RedisAccess {
                tls: Some(RedisTls {
                    ca_file: Some(pki.path("ca.pem")),
                    client: None,
                }),
                ..secured.clone()
            },
            "TLS refused",
        ),
        (
            "no password",
            RedisAccess {
                password_file: None,
                ..secured.clone()
            },
            "authentication refused",
        ),
    ] {
        let refused = match runtime.block_on(RedisOnline::connect_with(&access)) {
            Ok(online) => runtime
                .block_on(online.read(&keys, definitions.state_fingerprint))
                .map(|_| ())
                .expect_err(what),
            Err(refused) => refused,
        };
        let message = refused.to_string();
        eprintln!("{what}: {message}");
        assert!(message.contains(why), "{what}: {message}");
        assert!(!message.contains("127.0.0.1"), "{what}: {message}");
        assert!(!message.contains(PASSWORD), "{what}: {message}");
    }
}

/// What a scorer does with the tier's cut, on records written as aggregators write
/// them (each event tagged with its input position): the events past the cut are left
/// out of every entity, which then reads as an engine that never saw them; a record
/// that sealed an event past the cut into its tiles is refused by name (UNAVAILABLE),
/// never read mixed; once the cut covers it, it reads whole.
#[test]
fn a_scorer_reads_at_the_cut_and_refuses_a_record_sealed_past_it() {
    use streamscore::features::{DetachedReads, EntityReads};
    use streamscore::online::{ScorerError, Sealed, cut};
    let cluster = RedisCluster::start();
    let definitions = Arc::new(Definitions::default_shop());
    let fingerprint = definitions.state_fingerprint;
    let limits = Limits {
        max_future_skew_ms: i64::MAX / 4,
        max_id_bytes: 64,
    };
    let lane = cut::lane(0, 0).expect("a lane");
    // Ten payments of one shopper: `tagged` applies them as an aggregator does, `before`
    // is an engine fed only the first six (the reference).
    let tagged = Engine::new(Arc::clone(&definitions), SETTINGS);
    let mut before = Engine::new(Arc::clone(&definitions), SETTINGS);
    for i in 0..10i64 {
        let raw = RawEvent {
            event_id: format!("p{i}"),
            event_type: "payment".into(),
            event_time_ms: T0 + i * 1_000,
            entities: BTreeMap::from([("user".into(), "u1".into()), ("card".into(), "c1".into())]),
            numbers: BTreeMap::from([("amount".into(), 10.0 + i as f64)]),
            strings: BTreeMap::new(),
        };
        let event = validate(&definitions, &limits, &raw, None).expect("valid payment");
        tagged.advance_watermark(event.time_ms);
        for (entity, id) in tagged.entities_of(&event) {
            let tag = cut::tag(lane, i).expect("fits");
            tagged
                .writer()
                .apply_to_entity_tagged(&event, entity, &id, i as u64 + 1, tag);
        }
        if i < 6 {
            before.apply(&event, i as u64 + 1);
        }
    }
    before.advance_watermark(tagged.watermark_ms());
    let at = tagged.watermark_ms();
    let runtime = runtime();
    let online = runtime
        .block_on(RedisOnline::connect(&cluster.nodes))
        .expect("connects");
    let ids: Vec<_> = ["card", "user"]
        .into_iter()
        .map(|name| {
            let (entity, features) = tagged.resolve(name, &[]).expect("resolves");
            (name, entity, features, format!("{}1", &name[..1]))
        })
        .collect();
    let write = |sealed: Sealed| {
        let records: Vec<(String, EntityRecord)> = ids
            .iter()
            .map(|(name, entity, _, id)| {
                let state = tagged.entity_state(*entity, id).expect("held");
                let record = EntityRecord {
                    seq: state.applied_seq(),
                    fingerprint,
                    state,
                    sealed: sealed.clone(),
                };
                (entity_key(fingerprint, name, id), record)
            })
            .collect();
        runtime
            .block_on(online.write(&records, |_| 3_600_000))
            .expect("writes");
    };
    let publish = |through: u64| {
        runtime
            .block_on(online.publish_progress(
                fingerprint,
                at,
                1,
                [("x/0".to_string(), lane, through)],
            ))
            .expect("publishes");
    };
    let scorer = OnlineScorer::new(online.clone(), Arc::clone(&definitions), SETTINGS);
    let wanted: Vec<_> = ids.iter().map(|(_, e, _, id)| (*e, id.clone())).collect();
    let reads_as = |reference: &dyn EntityReads| {
        let states = runtime.block_on(scorer.fetch(&wanted)).expect("fetches");
        let reads = DetachedReads {
            engine: &tagged,
            states: &states,
        };
        for (name, entity, features, id) in &ids {
            let got = reads.read_entity(*entity, id, features, at).expect("reads");
            let want = reference
                .read_entity(*entity, id, features, at)
                .expect("reads");
            assert_eq!(format!("{got:?}"), format!("{want:?}"), "{name} {id}");
        }
    };

    // Nothing sealed; the cut is through the sixth payment: both read as before the
    // last four.
    write(Sealed::default());
    publish(6);
    reads_as(&before.view());

    // The card sealed the eighth payment (past the cut): refused by name.
    let mut sealed = Sealed::default();
    sealed.add(cut::tag(lane, 7).expect("fits"), T0 + 7_000);
    write(Sealed::default());
    let card_key = entity_key(fingerprint, "card", "c1");
    let mut card = runtime
        .block_on(online.read(std::slice::from_ref(&card_key), fingerprint))
        .expect("reads")
        .remove(0)
        .expect("stored");
    card.seq += 1;
    card.sealed = sealed;
    runtime
        .block_on(online.write(&[(card_key, card)], |_| 3_600_000))
        .expect("writes");
    match runtime.block_on(scorer.fetch(&wanted)) {
        Err(error @ ScorerError::Behind { .. }) => {
            let status = tonic::Status::from(error);
            assert_eq!(status.code(), tonic::Code::Unavailable);
            assert!(status.message().contains("card 'c1'"), "{status:?}");
        }
        other => panic!("read past a sealed event: {:?}", other.map(|s| s.len())),
    }

    // The cut covers all ten: both read whole.
    publish(10);
    reads_as(&tagged.view());
}
