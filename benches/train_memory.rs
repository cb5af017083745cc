//! Training memory: `streamscore train --events` on a simulated history of EVENTS events
//! (default 10M), as a user runs it, measuring the training process's peak RSS (from
//! getrusage of the waited child) and wall time. Target: under 2 GiB at 10M events.
//!
//! `cargo bench --bench train_memory` (env: EVENTS=10000000, USERS=120000). The history
//! is written to a temp dir first (about 2 GB at 10M events).

use std::io::Write;
use std::process::Command;
use std::time::Instant;

use streamscore::simulate::{SimConfig, Simulator};

/// The largest resident set of any waited-for child so far, in MiB.
fn children_peak_rss_mib() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let status = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    if status != 0 {
        return f64::NAN;
    }
    usage.ru_maxrss as f64 / 1024.0
}

mod support;

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let var = support::env_usize;
    let events = var("EVENTS", 10_000_000);
    let users = var("USERS", 120_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let history = dir.path().join("history.jsonl");
    let started = Instant::now();
    {
        let file = std::fs::File::create(&history).expect("history file");
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        for event in Simulator::new(SimConfig {
            seed: 42,
            users,
            start_ms: 1_735_689_600_000,
            mean_session_gap_ms: 60_000.0,
            ..SimConfig::default()
        })
        .take(events)
        {
            serde_json::to_writer(&mut out, &event).expect("write event");
            out.write_all(b"\n").expect("write event");
        }
        out.flush().expect("flush history");
    }
    let bytes = std::fs::metadata(&history).map(|m| m.len()).unwrap_or(0);
    println!(
        "history: {events} events, {:.0} MiB, written in {:.0} s",
        bytes as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/training/fraud.toml");
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_streamscore"))
        .arg("train")
        .arg("--events")
        .arg(&history)
        .args(["--config", config, "--family", "logistic", "--models-dir"])
        .arg(dir.path().join("models"))
        .output()
        .expect("run train");
    let seconds = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let trained = stdout.lines().next().unwrap_or_default();
    println!("{trained}");
    println!(
        "train_memory: {events} events -> peak RSS {:.0} MiB (target < 2048 MiB), {seconds:.0} s",
        children_peak_rss_mib()
    );
}
