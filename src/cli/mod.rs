//! The `streamscore` command line: `serve`, `simulate`, `features`, `train`, `export`,
//! `score`, `models`, `loadtest`, `skew`, `repair`, `mine`, `check-definitions`.

mod ingest;
mod mine;
mod remote;
mod train;

use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::api::client;
use crate::config::Settings;
use crate::definitions::Definitions;
use crate::features::EngineSettings;
use crate::simulate::{SimConfig, Simulator};
use crate::time::{DAY_MS, now_ms};

#[derive(Debug, Parser)]
#[command(
    name = "streamscore",
    version,
    about = "Online ML scoring for e-commerce: events in, features and scores out"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server (embedded feature store, default shop definitions).
    Serve(ServeArgs),
    /// Generate a seeded shop event stream, to a JSON-lines file or a running server.
    Simulate(SimulateArgs),
    /// Send a history (JSON lines, CSV, Parquet or stdin) to a running server: resumable,
    /// refusals summed up by reason, exit 1 when any row was refused.
    Ingest(ingest::IngestArgs),
    /// Print the feature values of one entity from a running server.
    Features(FeaturesArgs),
    /// Train models from event history (JSON lines) or a feature table (CSV), by a
    /// training config (training/*.toml) or flags.
    Train(Box<train::TrainArgs>),
    /// Score one payment on a running server: score, decision, reasons.
    Score(remote::ScoreArgs),
    /// Recommend products for a user on a running server: each with its rule or
    /// popularity.
    Recommend(remote::RecommendArgs),
    /// List, show, load or alias models on a running server.
    Models(remote::ModelsArgs),
    /// Drive Score, ScoreCandidates or IngestBatch against a running server and report
    /// requests/s and latency percentiles.
    Loadtest(LoadtestArgs),
    /// Write the server's event log as JSON lines (safe beside a running server).
    Export(ExportArgs),
    /// Re-compute the newest sampled scores from the event history through the
    /// embedded engine and report every feature that differs (training/serving skew).
    Skew(SkewArgs),
    /// Move damaged parts of a stopped server's event log aside (never deleting them),
    /// record exactly which logged events are lost, and let the server start again.
    Repair(RepairArgs),
    /// Mine the event history for recommendations: association rules.
    Mine(mine::MineArgs),
    /// Check a feature definitions file and list the features it defines.
    CheckDefinitions {
        /// The TOML file.
        path: PathBuf,
    },
}

/// How the client commands reach a server beyond its address.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// PEM CA certificate of the server (for an https:// address; default: public roots).
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
    /// PEM client certificate, for a server that requires one (mTLS); with --key.
    #[arg(long, global = true)]
    pub cert: Option<PathBuf>,
    /// PEM key of the client certificate.
    #[arg(long, global = true)]
    pub key: Option<PathBuf>,
    /// Bearer token, for a server with callers configured (better: the environment, so
    /// it stays out of the process list).
    #[arg(long, env = "STREAMSCORE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

impl ConnectArgs {
    pub fn options(&self) -> client::ClientOptions {
        client::ClientOptions {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            token: self.token.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Settings file (TOML); STREAMSCORE__... environment variables override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Listen address, e.g. 127.0.0.1:50051.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Directory for the event log and snapshots.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Feature definitions file (default: the built-in shop definitions).
    #[arg(long)]
    pub definitions: Option<PathBuf>,
    /// Allow a non-loopback listen address without TLS and callers (anyone who can
    /// reach the port may then ingest, score and move aliases).
    #[arg(long)]
    pub insecure: bool,
    /// Score candidate models beside the serving version on live traffic (answers not
    /// returned; counted in streamscore_shadow_*): models.shadow = true.
    #[arg(long)]
    pub shadow: bool,
    /// What this process is: everything in one (embedded, the default), an aggregator
    /// or a scorer of a scaled-out deployment (cargo feature `cluster`).
    #[arg(long, value_enum)]
    pub role: Option<crate::config::ServeRole>,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// How many events to generate.
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Users at the start.
    #[arg(long, default_value_t = 5_000)]
    pub users: usize,
    /// Share of payments that are fraudulent.
    #[arg(long, default_value_t = 0.015)]
    pub fraud_rate: f64,
    /// Mean gap between session starts in ms (larger = a longer history for the same
    /// number of events; labels need weeks of history). The default is the traffic the
    /// shipped models were trained on: denser traffic makes every shopper look busier
    /// than any in training (more views and carts a day), and ordinary payments score
    /// as fraud.
    #[arg(long, default_value_t = 60_000.0)]
    pub session_gap_ms: f64,
    /// Chance that a view goes to a product of the same bundle (p0-p3, p4-p7, ...) as
    /// the one viewed before it, so there are association rules to mine (0: none).
    #[arg(long, default_value_t = 0.0)]
    pub affinity: f64,
    /// Event time of the first event, ms since the epoch (default: far enough back that
    /// the stream ends about now).
    #[arg(long)]
    pub start_ms: Option<i64>,
    /// Write JSON lines here ('-' for stdout).
    #[arg(long, conflicts_with = "target")]
    pub out: Option<PathBuf>,
    /// Stream to this server instead, e.g. http://127.0.0.1:50051.
    #[arg(long, conflicts_with = "kafka_brokers")]
    pub target: Option<String>,
    /// Produce to Kafka instead (`host:port,...`; a build with the `kafka` feature),
    /// keyed by user, to `--topic`.
    #[arg(long, conflicts_with = "out")]
    pub kafka_brokers: Option<String>,
    /// The topic for `--kafka-brokers`.
    #[arg(long, default_value = "shop-events", requires = "kafka_brokers")]
    pub topic: String,
    /// Record format for `--kafka-brokers`: json (the `export` shape) or protobuf.
    #[arg(long, value_enum, default_value = "json", requires = "kafka_brokers")]
    pub format: KafkaFormatArg,
    /// Events per batch when streaming.
    #[arg(long, default_value_t = 1_000)]
    pub batch: usize,
}

/// `--format` of `simulate --kafka-brokers`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum KafkaFormatArg {
    Json,
    Protobuf,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The server's data directory.
    #[arg(long, default_value = "streamscore-data")]
    pub data_dir: PathBuf,
    /// Output file ('-' or absent for stdout).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SkewArgs {
    /// The settings file of the server whose scores are checked (its data_dir,
    /// definitions, models directory and [ingest] settings).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The data directory: its `scores/` samples and, without --events, its event log.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// How many of the newest sampled scores to check.
    #[arg(long, default_value_t = 100)]
    pub sample: usize,
    /// The event history as JSON lines in arrival order (an `export`, or a dump of the
    /// events topic) instead of the data directory's log: for scorers, which keep none.
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// Where the samples are (default: <data_dir>/scores).
    #[arg(long)]
    pub samples: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RepairArgs {
    /// The data directory of a stopped server.
    #[arg(long, default_value = "streamscore-data")]
    pub data_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct LoadtestArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The server, e.g. http://127.0.0.1:50051 (https:// for TLS); `--target`, as the
    /// other client commands call it, is the same.
    #[arg(
        long,
        default_value = "http://127.0.0.1:50051",
        visible_alias = "target"
    )]
    pub addr: String,
    /// score, candidates, recommend, ingest, v2 or rest.
    #[arg(long, default_value = "score")]
    pub call: crate::loadtest::Call,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// HTTP/2 connections the requests share.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// How long to run, e.g. 10s or 1m.
    #[arg(long, default_value = "10s")]
    pub duration: String,
    /// Total requests per second (default: as fast as the server answers).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Model to call (default: fraud for score, purchase for candidates, rules for
    /// recommend).
    #[arg(long)]
    pub model: Option<String>,
    /// Candidates per ScoreCandidates call, or events per IngestBatch call.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Seed of the simulated shop the requests come from (match `simulate --seed`).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

#[derive(Debug, Args)]
pub struct FeaturesArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Entity type, e.g. card, user, user_product.
    pub entity_type: String,
    /// Entity id, e.g. c17 (for a composite: u3|p12).
    pub entity_id: String,
    /// Server URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub target: String,
    /// Read as of this time (ms since the epoch) instead of now.
    #[arg(long)]
    pub as_of_ms: Option<i64>,
}

pub type CliResult = Result<(), Box<dyn std::error::Error>>;

pub async fn run(cli: Cli) -> CliResult {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Simulate(args) => simulate(args).await,
        Command::Ingest(args) => ingest::ingest(args).await,
        Command::Features(args) => features(args).await,
        Command::Train(args) => train::train(*args),
        Command::Export(args) => export(args),
        Command::Mine(args) => mine::mine(args),
        Command::Skew(args) => skew(args).await,
        Command::Repair(args) => repair(&args.data_dir),
        Command::Loadtest(args) => loadtest(args).await,
        Command::Score(args) => remote::score(args).await,
        Command::Recommend(args) => remote::recommend(args).await,
        Command::Models(args) => remote::models(args).await,
        Command::CheckDefinitions { path } => check_definitions(&path),
    }
}

async fn serve(args: ServeArgs) -> CliResult {
    // Validated once the flags are applied: flags come last.
    let mut settings = Settings::load_unchecked(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        settings.listen = listen;
    }
    if let Some(data_dir) = args.data_dir {
        settings.data_dir = data_dir;
    }
    if let Some(definitions) = args.definitions {
        settings.definitions = Some(definitions);
    }
    settings.insecure |= args.insecure;
    settings.models.shadow |= args.shadow;
    if let Some(role) = args.role {
        settings.cluster.role = role;
    }
    settings.validate()?;
    if settings.insecure && !settings.listen.ip().is_loopback() {
        tracing::warn!(listen = %settings.listen, tls = settings.tls.enabled(), callers = settings.auth.enabled(), "--insecure: serving beyond loopback without both TLS and callers");
    }
    crate::server::serve(settings, crate::server::shutdown_signal()).await?;
    Ok(())
}

#[cfg(feature = "kafka")]
async fn simulate_to_kafka(brokers: &str, args: &SimulateArgs, simulator: Simulator) -> CliResult {
    use crate::config::KafkaFormat;
    let format = match args.format {
        KafkaFormatArg::Json => KafkaFormat::Json,
        KafkaFormatArg::Protobuf => KafkaFormat::Protobuf,
    };
    // Like the gRPC path: nothing stamped in the future (a server would refuse it).
    let now = now_ms();
    let events = simulator
        .take(args.events)
        .take_while(move |e| e.event_time_ms <= now);
    let sent = crate::kafka::produce::produce(brokers, &args.topic, format, events, |sent| {
        eprintln!("  {sent} events produced");
    })
    .await?;
    println!("produced {sent} events to {} at {brokers}", args.topic);
    Ok(())
}

#[cfg(not(feature = "kafka"))]
async fn simulate_to_kafka(_: &str, _: &SimulateArgs, _: Simulator) -> CliResult {
    Err("--kafka-brokers: this build has no Kafka support; build with `--features kafka`".into())
}

async fn simulate(args: SimulateArgs) -> CliResult {
    let mut config = SimConfig {
        seed: args.seed,
        start_ms: 0,
        users: args.users,
        fraud_rate: args.fraud_rate,
        mean_session_gap_ms: args.session_gap_ms,
        affinity: args.affinity,
        ..SimConfig::default()
    };
    config.start_ms = match args.start_ms {
        Some(start_ms) => start_ms,
        // Times are offsets from the start: a dry run from 0 measures the span, so
        // the stream ends about now (nothing is cut off for being in the future).
        None => {
            let span = Simulator::new(config.clone())
                .take(args.events)
                .last()
                .map_or(0, |event| event.event_time_ms);
            now_ms() - span.clamp(0, 365 * DAY_MS) - 1_000
        }
    };
    let simulator = Simulator::new(config);
    if let Some(brokers) = &args.kafka_brokers {
        return simulate_to_kafka(brokers, &args, simulator).await;
    }
    match (&args.target, &args.out) {
        (Some(target), _) => {
            let channel = client::connect_with(target, &args.connect.options()).await?;
            // A server refuses events stamped in its future; stop at the present.
            let now = now_ms();
            let events = simulator
                .take(args.events)
                .take_while(move |e| e.event_time_ms <= now);
            let mut sent = 0u64;
            let mut refusals = ingest::Refusals::default();
            let batch = args.batch.max(1) as u64;
            let summary = client::stream_events(channel, events, args.batch, 16, |ack| {
                sent += u64::from(ack.accepted + ack.duplicates) + ack.refused.len() as u64;
                if ack.batch_id % 100 == 0 {
                    eprintln!("  {sent} events acknowledged");
                }
                for refusal in &ack.refused {
                    let event = (ack.batch_id - 1) * batch + u64::from(refusal.index) + 1;
                    refusals.add(&refusal.field, &refusal.reason, format!("event {event}"));
                }
            })
            .await?;
            println!(
                "streamed {} batches: {} accepted, {} duplicates, {} refused",
                summary.batches,
                summary.accepted,
                summary.duplicates,
                summary.refused.len()
            );
            if refusals.total() > 0 {
                refusals.print();
                if refusals.late() {
                    println!("{}", ingest::late_hint());
                    println!(
                        "  simulate: --start-ms sets where the simulated history begins; give one after the server's newest event time minus ingest.allowed_lateness, or a fresh data dir"
                    );
                }
                return Err(format!(
                    "{} of {sent} events refused (listed above)",
                    refusals.total()
                )
                .into());
            }
        }
        (None, out) => {
            let mut sink = open_sink(out.as_ref())?;
            let mut simulator = simulator;
            for event in simulator.by_ref().take(args.events) {
                serde_json::to_writer(&mut sink, &event)?;
                sink.write_all(b"\n")?;
            }
            sink.flush()?;
            let stats = simulator.stats();
            eprintln!(
                "wrote {} events: {} payments, {} fraudulent, {} chargebacks scheduled",
                stats.events, stats.payments, stats.fraud_payments, stats.chargebacks
            );
        }
    }
    Ok(())
}

fn repair(data_dir: &std::path::Path) -> CliResult {
    let segments = crate::log::segments_dir(data_dir);
    if !segments.exists() {
        return Err(format!(
            "no event log under {} (is it a streamscore data dir?)",
            data_dir.display()
        )
        .into());
    }
    // Never beside a running server: it may be appending to the segment being repaired.
    let _lock = crate::datadir::DataDirLock::acquire(data_dir)?;
    // Only the sequence number it covers matters here, not the state.
    let snapshot_seq =
        crate::log::load_newest_snapshot(&crate::log::snapshots_dir(data_dir), |_| Ok(()))?
            .map_or(0, |(seq, ())| seq);
    let report = crate::log::repair::repair(&segments, snapshot_seq)?;
    println!(
        "checked {} segments: {} valid records kept",
        report.segments, report.records
    );
    for (path, bytes) in &report.moved {
        println!("moved {bytes} damaged bytes aside to {}", path.display());
    }
    for loss in &report.losses {
        println!(
            "lost {} logged events, sequence {}..{}: {}",
            loss.to - loss.from,
            loss.from,
            loss.to - 1,
            loss.note
        );
    }
    if let Some((path, from, bytes)) = &report.unknown_tail {
        println!(
            "the damaged tail of {} ({bytes} bytes, from sequence {from} on) had no valid record after it: \
             how many records it held cannot be told from its bytes; any that were acknowledged are lost",
            path.display()
        );
    }
    if report.out_of_sequence > 0 {
        println!(
            "{} records numbered out of sequence (written by a second writer on this data dir) were moved aside, not replayed; their events are in the files above",
            report.out_of_sequence
        );
    }
    if report.moved.is_empty() && report.losses.is_empty() {
        println!("nothing to repair");
    } else {
        println!(
            "{} acknowledged events are recorded as lost in {}; the server will start",
            report.lost(),
            segments.join("losses.txt").display()
        );
    }
    Ok(())
}

fn export(args: ExportArgs) -> CliResult {
    let segments = crate::log::segments_dir(&args.data_dir);
    if !segments.exists() {
        return Err(format!(
            "no event log under {} (is it a streamscore data dir?)",
            args.data_dir.display()
        )
        .into());
    }
    let mut sink = open_sink(args.out.as_ref())?;
    let mut failure = None;
    // On a terminal, a spinner with the count (a large log takes a while); hidden in
    // pipes and logs.
    let spinner = crate::train::progress::TrainingBar::spinner("export", "events written");
    let mut written = 0u64;
    let stats = crate::log::replay(&segments, 0, crate::log::TailDamage::Stop, |_, event| {
        written += 1;
        if written.is_multiple_of(65_536) {
            spinner.message(format!("{written} events written"));
        }
        if failure.is_none()
            && let Err(error) = serde_json::to_writer(&mut sink, &event)
                .map_err(std::io::Error::from)
                .and_then(|()| sink.write_all(b"\n"))
        {
            failure = Some(error);
        }
    })?;
    spinner.finish();
    if let Some(error) = failure {
        return Err(error.into());
    }
    sink.flush()?;
    eprintln!(
        "exported {} events (log sequence 1..={})",
        stats.replayed, stats.last_seq
    );
    Ok(())
}

async fn skew(args: SkewArgs) -> CliResult {
    use crate::scoring::samples::{newest_samples, samples_dir};
    use crate::scoring::skew::SkewCheck;
    let mut settings = Settings::load(args.config.as_deref())?;
    if let Some(dir) = args.data_dir {
        settings.data_dir = dir;
    }
    if args.sample == 0 {
        return Err("--sample: must be at least 1".into());
    }
    let definitions = crate::server::load_definitions(&settings)?;
    let registry =
        crate::server::open_registry(&settings, std::sync::Arc::clone(&definitions)).await?;
    let dir = args
        .samples
        .unwrap_or_else(|| samples_dir(&settings.data_dir));
    let (samples, unreadable) = newest_samples(&dir, args.sample)?;
    if samples.is_empty() {
        return Err(format!(
            "no score samples under {} (the server writes one Score in [samples] every; has it scored?)",
            dir.display()
        )
        .into());
    }
    if unreadable > 0 {
        eprintln!("{unreadable} unreadable sample lines skipped");
    }
    let sampled = samples.len();
    let mut check = SkewCheck::new(
        definitions,
        EngineSettings::from(&settings.ingest),
        &registry,
        samples,
        args.events.is_some(),
    );
    // A long log replays for a while: a spinner with the count on a terminal (a large
    // history was silent for as long as the replay took).
    let bar = crate::train::progress::TrainingBar::spinner(
        "skew",
        &format!("replaying the history for {sampled} samples"),
    );
    let mut replayed = 0u64;
    let mut tick = |bar: &crate::train::progress::TrainingBar| {
        replayed += 1;
        if replayed.is_multiple_of(50_000) {
            bar.message(format!("replayed {replayed} events for {sampled} samples"));
        }
    };
    match &args.events {
        Some(path) => {
            let file = std::fs::File::open(path)
                .map_err(|e| format!("--events {}: {e}", path.display()))?;
            for (index, line) in std::io::BufRead::lines(std::io::BufReader::new(file)).enumerate()
            {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                let raw: crate::events::RawEvent = serde_json::from_str(&line)
                    .map_err(|e| format!("--events {} line {}: {e}", path.display(), index + 1))?;
                check.event(index as u64 + 1, &raw);
                tick(&bar);
            }
        }
        None => {
            let segments = crate::log::segments_dir(&settings.data_dir);
            if !segments.exists() {
                return Err(format!(
                    "no event log under {} (a scorer keeps none: pass --events)",
                    settings.data_dir.display()
                )
                .into());
            }
            crate::log::replay(&segments, 0, crate::log::TailDamage::Stop, |seq, raw| {
                check.event(seq, &raw);
                tick(&bar);
            })?;
        }
    }
    bar.finish();
    let report = check.finish();
    print!("{report}");
    if report.differing > 0 {
        return Err(format!(
            "{} of {} sampled scores differ from the replay",
            report.differing, report.checked
        )
        .into());
    }
    if report.checked == 0 {
        return Err("no sampled score could be checked (see above)".into());
    }
    Ok(())
}

fn open_sink(out: Option<&PathBuf>) -> Result<BufWriter<Box<dyn Write>>, std::io::Error> {
    let sink: Box<dyn Write> = match out {
        Some(path) if path.as_os_str() != "-" => Box::new(std::fs::File::create(path)?),
        _ => Box::new(std::io::stdout().lock()),
    };
    Ok(BufWriter::new(sink))
}

async fn features(args: FeaturesArgs) -> CliResult {
    let channel = client::connect_with(&args.target, &args.connect.options()).await?;
    let response =
        client::get_features(channel, &args.entity_type, &args.entity_id, args.as_of_ms).await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} {} (known: {}, as of {} = {} ms)",
        args.entity_type,
        args.entity_id,
        response.known,
        crate::time::format_iso(response.as_of_ms),
        response.as_of_ms
    )?;
    for value in response.values {
        match value.value {
            Some(_) if !value.items.is_empty() => {
                writeln!(out, "  {:<36} {}", value.name, value.items.join(", "))?
            }
            Some(number) => writeln!(out, "  {:<36} {number}", value.name)?,
            None => writeln!(out, "  {:<36} -", value.name)?,
        }
    }
    Ok(())
}

fn check_definitions(path: &std::path::Path) -> CliResult {
    let definitions = Definitions::load(path)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}: {} entities, {} event types, {} features (fingerprint {:016x})",
        path.display(),
        definitions.entities.len(),
        definitions.event_types.len(),
        definitions.features.len(),
        definitions.fingerprint
    )?;
    for feature in &definitions.features {
        writeln!(
            out,
            "  {:<36} {} {} {}",
            feature.name,
            definitions.entities[feature.entity].name,
            feature.aggregation.name(),
            feature.window.label()
        )?;
    }
    Ok(())
}

async fn loadtest(args: LoadtestArgs) -> CliResult {
    use crate::loadtest::{Call, LoadSpec};
    let duration =
        crate::time::parse_duration_ms(&args.duration).map_err(|e| format!("--duration: {e}"))?;
    if args.concurrency == 0 || args.batch == 0 {
        return Err("--concurrency and --batch must be at least 1".into());
    }
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return Err("--rate must be a positive number of requests per second".into());
    }
    let spec = LoadSpec {
        call: args.call,
        concurrency: args.concurrency,
        connections: args.connections,
        duration: std::time::Duration::from_millis(duration.max(1) as u64),
        rate: args.rate,
        model: args.model.unwrap_or_else(|| {
            match args.call {
                Call::Candidates => "purchase",
                Call::Recommend => "rules",
                _ => "fraud",
            }
            .into()
        }),
        batch: args.batch,
        sim: SimConfig {
            seed: args.seed,
            ..SimConfig::default()
        },
    };
    eprintln!(
        "{:?} against {} for {}, {} in flight{}...",
        spec.call,
        args.addr,
        args.duration,
        spec.concurrency,
        spec.rate.map(|r| format!(", {r}/s")).unwrap_or_default()
    );
    let report = crate::loadtest::run(&args.addr, &args.connect.options(), &spec).await?;
    println!("{report}");
    if report.errors > 0 {
        return Err(format!("{} requests failed", report.errors).into());
    }
    Ok(())
}
