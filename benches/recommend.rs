//! `Recommend` latency with a rule set mined from 1M baskets: the baskets are drawn
//! like the simulator's shop (1,000 products in bundles of four, popularity skewed),
//! mined with `training/rules.toml`'s limits at a tenth of its support, and served beside
//! the shipped purchase model by the real server, which holds three hours of simulated
//! traffic. Measured: one call in process (the domain function, no network), one
//! client in a loop over gRPC, and 16 in flight over gRPC; p50 and p99 of each.
//!
//! `cargo bench --bench recommend` (env: SECONDS=10 per gRPC run, BASKETS=1000000).

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use streamscore::config::Settings;
use streamscore::definitions::Definitions;
use streamscore::loadtest::{self, Call, LoadSpec};
use streamscore::mining::Baskets;
use streamscore::mining::config::RulesConfig;
use streamscore::mining::mine::{self, MineOutput};
use streamscore::registry::Registry;
use streamscore::scoring::recommend::{self, RecentFeatures, RecommendInput};
use streamscore::simulate::{BUNDLE, SimConfig, Simulator};
use streamscore::time::{HOUR_MS, MINUTE_MS, now_ms};
use tokio::net::TcpListener;

const PRODUCTS: usize = 1_000;

/// `count` baskets of 1 to 6 products: the first by a skewed popularity (as the
/// simulator picks), each next one of the previous product's bundle half the time.
fn baskets(count: usize) -> Baskets {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let pick = |rng: &mut rand_chacha::ChaCha8Rng| {
        let skew: f64 = rng.random_range(0.0..1.0);
        ((skew * skew * skew) * PRODUCTS as f64) as usize
    };
    let mut out = Baskets {
        products: (0..PRODUCTS).map(|p| format!("p{p}")).collect(),
        ..Baskets::default()
    };
    for _ in 0..count {
        let size = 1 + (0..5).filter(|_| rng.random_bool(0.35)).count();
        let mut basket: Vec<u32> = vec![pick(&mut rng) as u32];
        while basket.len() < size {
            let last = *basket.last().unwrap_or(&0) as usize;
            let next = if rng.random_bool(0.5) {
                last - last % BUNDLE + rng.random_range(0..BUNDLE)
            } else {
                pick(&mut rng)
            };
            basket.push(next.min(PRODUCTS - 1) as u32);
        }
        basket.sort_unstable();
        basket.dedup();
        out.baskets.push(basket);
    }
    out
}

fn percentiles(mut micros: Vec<u64>) -> (u64, u64) {
    micros.sort_unstable();
    let at = |q: f64| micros[((micros.len() as f64 * q) as usize).min(micros.len() - 1)];
    (at(0.5), at(0.99))
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let seconds = support::env_usize("SECONDS", 10) as u64;
    let count = support::env_usize("BASKETS", 1_000_000);

    let models = tempfile::tempdir().expect("models dir");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/purchase");
    std::fs::create_dir_all(models.path().join("purchase")).expect("dir");
    std::fs::copy(
        shipped.join("purchase-v1.json"),
        models.path().join("purchase/purchase-v1.json"),
    )
    .expect("copy purchase");
    std::fs::write(
        models.path().join("aliases.json"),
        r#"{"purchase": "purchase@1", "rules": "rules@1"}"#,
    )
    .expect("aliases");
    let drawn = baskets(count);
    let config = RulesConfig {
        name: "rules".into(),
        window: "1d".into(),
        min_support: 0.0002,
        min_confidence: 0.05,
        min_lift: 1.0,
        max_len: 3,
    }
    .check()
    .expect("config");
    let mined = mine::mine(&drawn.baskets, &config).expect("mines");
    let definitions = Definitions::default_shop();
    let outcome = mine::write(
        &drawn,
        &mined,
        &config,
        MineOutput {
            models_dir: models.path(),
            created_at_ms: now_ms(),
            definitions_fingerprint: definitions.fingerprint,
            signing_key: None,
            max_artifact_bytes: streamscore::model::artifact::DEFAULT_MAX_ARTIFACT_BYTES,
        },
    )
    .expect("rules written");
    println!(
        "rule set from {} baskets: {} frequent itemsets, {} rules (FP-growth {:.2} s, rules {:.3} s)\n",
        count,
        mined.itemsets.len(),
        outcome.report.rules,
        mined.itemset_seconds,
        mined.rule_seconds
    );

    let dir = tempfile::tempdir().expect("data dir");
    let mut settings = Settings {
        data_dir: dir.path().to_path_buf(),
        ..Settings::default()
    };
    settings.metrics.listen = None;
    settings.http.listen = None;
    settings.models.dir = models.path().to_path_buf();
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("server runtime");
    let (addr, store, stop) = server_runtime.block_on(async {
        let store = streamscore::server::open_store(&settings)
            .await
            .expect("store opens");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let settings = settings.clone();
        let server_store = Arc::clone(&store);
        tokio::spawn(async move {
            let listeners = streamscore::server::Listeners {
                grpc: listener,
                metrics: None,
                admin: None,
                http: None,
            };
            streamscore::server::run_with(listeners, server_store, &settings, async {
                let _ = stopped.await;
            })
            .await
            .expect("server runs")
        });
        (addr, store, stop)
    });
    let url = format!("http://{addr}");
    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("client runtime");
    let end = now_ms() - MINUTE_MS;
    let sim = SimConfig {
        start_ms: end - 3 * HOUR_MS,
        products: PRODUCTS,
        affinity: 0.7,
        ..SimConfig::default()
    };
    let history: Vec<_> = Simulator::new(sim.clone())
        .take_while(|e| e.event_time_ms <= end)
        .collect();
    let mut users: Vec<String> = history
        .iter()
        .filter_map(|e| e.entities.get("user").cloned())
        .collect();
    users.sort();
    users.dedup();
    client_runtime.block_on(async {
        let channel = streamscore::api::client::connect(&url)
            .await
            .expect("connect");
        let count = history.len();
        streamscore::api::client::stream_events(channel, history.into_iter(), 1_000, 8, |_| {})
            .await
            .expect("history streams");
        println!("server fed {count} simulated events (3 hours of traffic)\n");
    });

    // In process: the domain call the gRPC handler makes, on the server's own store.
    let registry = Registry::new(
        Arc::new(Definitions::default_shop()),
        models.path().to_path_buf(),
    );
    assert!(registry.scan().expect("models dir").is_empty());
    let features = RecentFeatures::default();
    let calls = 20_000;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let mut micros = Vec::with_capacity(calls);
    let mut from_rules = 0usize;
    for _ in 0..calls {
        let input = RecommendInput {
            user: users[rng.random_range(0..users.len())].clone(),
            cart: vec![format!("p{}", rng.random_range(0..PRODUCTS / 4))],
            top_n: 10,
            ..RecommendInput::default()
        };
        let started = Instant::now();
        let answer = recommend::recommend(&store, &registry, &features, input).expect("recommends");
        micros.push(started.elapsed().as_micros() as u64);
        from_rules += answer
            .items
            .iter()
            .filter(|i| matches!(i.why, recommend::Why::Rule(_)))
            .count();
    }
    let (p50, p99) = percentiles(micros);
    println!(
        "{:.1} of 10 recommendations per call came from rules\n",
        from_rules as f64 / calls as f64
    );
    println!("| run | requests/s | p50 | p99 | p99.9 | errors |");
    println!("|---|---|---|---|---|---|");
    println!("| Recommend in process, one at a time | - | {p50} us | {p99} us | - | 0 |");

    client_runtime.block_on(async {
        for (name, concurrency) in [
            ("Recommend over gRPC, 1 client in a loop", 1),
            ("Recommend over gRPC, 16 in flight", 16),
        ] {
            let spec = LoadSpec {
                call: Call::Recommend,
                concurrency,
                connections: 4,
                duration: Duration::from_secs(seconds),
                rate: None,
                model: "rules".into(),
                batch: 1,
                sim: sim.clone(),
            };
            let report = loadtest::run(&url, &Default::default(), &spec)
                .await
                .expect("load runs");
            println!("{}", report.table_row(&[name]));
        }
    });
    let _ = stop.send(());
    drop(server_runtime);
}
