//! `streamscore ingest` as a new user runs it against a server: JSON lines, CSV with a
//! column mapping and Parquet arrive as the same events; refusals are summed up by
//! reason with their rows and make the exit code 1 unless `--allow-refused`; a run
//! killed midway goes on where it stopped and nothing is applied twice. `simulate`
//! exits 1 on refusals and names `--start-ms` and `ingest.allowed_lateness`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use streamscore::events::RawEvent;
use streamscore::simulate::{SimConfig, Simulator};
use streamscore::time::{HOUR_MS, now_ms};

/// Runs the CLI off the runtime (the server under test runs on it).
async fn run(args: Vec<String>, stdin: Option<Vec<u8>>) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_streamscore"));
        command
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("run the CLI");
        if let Some(mut pipe) = child.stdin.take() {
            use std::io::Write;
            if let Some(bytes) = stdin {
                pipe.write_all(&bytes).expect("write stdin");
            }
        }
        child.wait_with_output().expect("the CLI ends")
    })
    .await
    .expect("joined")
}

fn ingest_args(url: &str, files: &[&Path], extra: &[&str]) -> Vec<String> {
    let mut args = vec!["ingest".to_string(), "--target".into(), url.into()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn history(events: usize, seed: u64, hours: i64) -> Vec<RawEvent> {
    let end = now_ms() - 60_000;
    Simulator::new(SimConfig {
        seed,
        start_ms: end - hours * HOUR_MS,
        users: 5_000,
        ..SimConfig::default()
    })
    .take_while(|event| event.event_time_ms <= end)
    .take(events)
    .collect()
}

/// A user's payment count over 24 hours, from the server.
async fn payments_of(server: &common::TestServer, user: &str) -> f64 {
    let features =
        streamscore::api::client::get_features(server.channel().await, "user", user, None)
            .await
            .expect("features");
    features
        .values
        .iter()
        .find(|v| v.name == "user_payments_24h")
        .and_then(|v| v.value)
        .expect("user_payments_24h")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_csv_and_parquet_arrive_as_the_same_events() {
    let server = common::TestServer::start(|_| {}).await;
    let dir = tempfile::tempdir().expect("dir");
    let events = history(3_000, 1, 3);
    assert_eq!(events.len(), 3_000);

    // JSON lines: every event accepted; a second run sends nothing; --from-start sends
    // all again and the server counts them as duplicates.
    let jsonl = dir.path().join("history.jsonl");
    common::write_jsonl(&jsonl, &events);
    let first = run(ingest_args(&server.url, &[&jsonl], &[]), None).await;
    assert!(first.status.success(), "{}", text(&first));
    assert!(
        text(&first).contains("3000 rows: 3000 accepted, 0 duplicates, 0 refused"),
        "{}",
        text(&first)
    );
    assert_eq!(server.store.counters().applied, 3_000);
    let again = run(ingest_args(&server.url, &[&jsonl], &[]), None).await;
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("going on after row 3000"),
        "{}",
        text(&again)
    );
    assert!(text(&again).contains("0 rows"), "{}", text(&again));
    let whole = run(ingest_args(&server.url, &[&jsonl], &["--from-start"]), None).await;
    assert!(
        text(&whole).contains("3000 rows: 0 accepted, 3000 duplicates"),
        "{}",
        text(&whole)
    );
    assert_eq!(server.store.counters().applied, 3_000);

    // The same payments of three new users as CSV (own column names, no event ids)
    // from stdin, and as Parquet: each user's count is what was sent.
    let at = now_ms() - 30_000;
    let payment = |i: usize, user: &str| RawEvent {
        event_id: String::new(),
        event_type: "payment".into(),
        event_time_ms: at + i as i64,
        entities: BTreeMap::from([
            ("user".into(), user.to_string()),
            ("card".into(), format!("{user}-card")),
        ]),
        numbers: BTreeMap::from([("amount".into(), 10.0 + i as f64)]),
        strings: BTreeMap::from([("ip_country".into(), "DE".into())]),
    };
    let mut csv = String::from("kind,ts,customer,card,amount,ip_country\n");
    for i in 0..7 {
        csv += &format!("payment,{},csv-user,csv-user-card,{},DE\n", at + i, 10 + i);
    }
    let csv_file = dir.path().join("payments.csv");
    std::fs::write(&csv_file, &csv).expect("csv");
    let mapped = [
        "--map",
        "kind=event_type",
        "--map",
        "ts=event_time_ms",
        "--map",
        "customer=user",
    ];
    let from_csv = run(ingest_args(&server.url, &[&csv_file], &mapped), None).await;
    assert!(from_csv.status.success(), "{}", text(&from_csv));
    assert_eq!(payments_of(&server, "csv-user").await, 7.0);
    // The same rows from stdin: their derived ids are the file's, so all duplicates.
    let mut stdin_args = ingest_args(&server.url, &[], &mapped);
    stdin_args.extend(["--format".into(), "csv".into()]);
    let from_stdin = run(stdin_args, Some(csv.into_bytes())).await;
    assert!(
        text(&from_stdin).contains("stdin: 7 rows: 0 accepted, 7 duplicates"),
        "{}",
        text(&from_stdin)
    );
    assert_eq!(payments_of(&server, "csv-user").await, 7.0);

    let parquet_file = dir.path().join("payments.parquet");
    write_parquet(
        &parquet_file,
        &(0..5).map(|i| payment(i, "pq-user")).collect::<Vec<_>>(),
    );
    let from_parquet = run(ingest_args(&server.url, &[&parquet_file], &[]), None).await;
    assert!(from_parquet.status.success(), "{}", text(&from_parquet));
    assert!(
        text(&from_parquet).contains("5 rows: 5 accepted"),
        "{}",
        text(&from_parquet)
    );
    assert_eq!(payments_of(&server, "pq-user").await, 5.0);
    // The timestamps read as the ms they were: the same payments again are duplicates.
    let mut jsonl_again = dir.path().join("payments.jsonl");
    jsonl_again.set_extension("jsonl");
    common::write_jsonl(
        &jsonl_again,
        &(0..5)
            .map(|i| {
                let mut event = payment(i, "pq-user");
                event.event_id = streamscore::events::file::derived_id(&event);
                event
            })
            .collect::<Vec<_>>(),
    );
    let same = run(ingest_args(&server.url, &[&jsonl_again], &[]), None).await;
    assert!(
        text(&same).contains("5 rows: 0 accepted, 5 duplicates"),
        "{}",
        text(&same)
    );
}

/// Payments as a Parquet file, the columns a warehouse export has.
fn write_parquet(path: &Path, events: &[RawEvent]) {
    use arrow_array::{
        ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    };
    let strings = |f: &dyn Fn(&RawEvent) -> String| -> ArrayRef {
        Arc::new(StringArray::from(events.iter().map(f).collect::<Vec<_>>()))
    };
    let batch = RecordBatch::try_from_iter([
        ("event_type", strings(&|e| e.event_type.clone())),
        // As warehouses write times: a timestamp column (microseconds, UTC).
        (
            "event_time_ms",
            Arc::new(
                TimestampMicrosecondArray::from(
                    events
                        .iter()
                        .map(|e| e.event_time_ms * 1_000)
                        .collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ) as ArrayRef,
        ),
        ("user", strings(&|e| e.entities["user"].clone())),
        ("card", strings(&|e| e.entities["card"].clone())),
        (
            "amount",
            Arc::new(Float64Array::from(
                events
                    .iter()
                    .map(|e| e.numbers["amount"])
                    .collect::<Vec<_>>(),
            )) as ArrayRef,
        ),
        ("ip_country", strings(&|e| e.strings["ip_country"].clone())),
    ])
    .expect("record batch");
    let file = std::fs::File::create(path).expect("parquet file");
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).expect("writer");
    writer.write(&batch).expect("write");
    writer.close().expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_summed_up_by_reason_and_fail_the_run_unless_allowed() {
    let server = common::TestServer::start(|_| {}).await;
    let dir = tempfile::tempdir().expect("dir");
    let at = now_ms() - 60_000;
    // Row 2: not a number; rows 4 and 5: two hours older than the rest (late).
    let csv = format!(
        "event_id,event_type,event_time_ms,user,card,amount\n\
         a,payment,{at},u1,c1,10\n\
         b,payment,{at},u1,c1,ten\n\
         c,payment,{at},u1,c1,12\n\
         d,payment,{},u1,c1,13\n\
         e,payment,{},u1,c1,14\n",
        at - 2 * HOUR_MS,
        at - 2 * HOUR_MS - 1
    );
    let file = dir.path().join("bad.csv");
    std::fs::write(&file, csv).expect("csv");
    let refused = run(ingest_args(&server.url, &[&file], &[]), None).await;
    let out = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{out}");
    assert!(
        out.contains("5 rows: 2 accepted, 0 duplicates, 3 refused"),
        "{out}"
    );
    assert!(
        out.contains("1 refused: amount: '…' is not a number")
            && out.contains("('ten' is not a number)"),
        "{out}"
    );
    assert!(out.contains("bad.csv:row 2"), "{out}");
    assert!(
        out.contains("2 refused: event_time_ms: is # ms behind"),
        "{out}"
    );
    assert!(
        out.contains("bad.csv:row 4") && out.contains("bad.csv:row 5"),
        "{out}"
    );
    assert!(out.contains("ingest.allowed_lateness"), "{out}");
    assert!(out.contains("3 of 5 rows refused"), "{out}");

    let allowed = run(
        ingest_args(&server.url, &[&file], &["--from-start", "--allow-refused"]),
        None,
    )
    .await;
    assert!(allowed.status.success(), "{}", text(&allowed));
    assert_eq!(server.store.counters().applied, 2);

    // simulate: a second history older than the first is refused as late, the run
    // fails, and the message names both ways out.
    let simulate = |seed: &str, start: i64| {
        vec![
            "simulate".to_string(),
            "--target".into(),
            server.url.clone(),
            "--events".into(),
            "500".into(),
            "--seed".into(),
            seed.into(),
            "--start-ms".into(),
            start.to_string(),
        ]
    };
    let late = run(simulate("2", at - 30 * HOUR_MS), None).await;
    let out = text(&late);
    assert_eq!(late.status.code(), Some(1), "{out}");
    assert!(out.contains("--start-ms"), "{out}");
    assert!(out.contains("ingest.allowed_lateness"), "{out}");
    assert!(out.contains("500 events refused"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_midway_goes_on_where_it_stopped_and_applies_nothing_twice() {
    let server = common::TestServer::start(|_| {}).await;
    let dir = tempfile::tempdir().expect("dir");
    let events = history(300_000, 3, 20 * 24);
    let total = events.len() as u64;
    assert_eq!(total, 300_000);
    let file = dir.path().join("big.jsonl");
    common::write_jsonl(&file, &events);
    let progress = dir.path().join("big.jsonl.ingest-progress");

    let args = ingest_args(&server.url, &[&file], &["--batch", "500"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_streamscore"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run the CLI");
    // Killed once it noted some progress, before it is done.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let noted = loop {
        let noted: Option<u64> = std::fs::read_to_string(&progress)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["through_row"].as_u64());
        if let Some(row) = noted.filter(|row| *row > 0) {
            break row;
        }
        assert!(std::time::Instant::now() < deadline, "no progress noted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let applied = server.store.counters().applied;
    assert!(
        applied < total,
        "killed before the end ({applied} of {total})"
    );
    assert!(applied >= noted, "{applied} applied, {noted} noted");

    let resumed = run(args, None).await;
    let out = text(&resumed);
    assert!(resumed.status.success(), "{out}");
    assert!(out.contains("going on after row"), "{out}");
    let counters = server.store.counters();
    assert_eq!(counters.applied, total, "{out}");
    // Only the batches in flight at the kill were sent twice.
    assert!(counters.duplicates < 16 * 500, "{counters:?}");
}
