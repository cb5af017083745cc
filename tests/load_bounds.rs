//! Bounded work under load, against the real server process (its RSS read from /proc):
//! many callers at once cannot take its memory or its descriptors. Each test here failed
//! on the build before the server-wide budget (issue 25).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::{peak_rss, rss, spawn_server, spawn_server_with_rest};
use streamscore::api::client;
use streamscore::api::pb::{self, ingest_client::IngestClient};
use streamscore::api::v2pb::{self, grpc_inference_service_client::GrpcInferenceServiceClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use v2pb::model_infer_request::InferInputTensor;

const MB: u64 = 1 << 20;

/// A batch of 10,000 events that are all refused, each with a long reason: the ack is
/// about ten times the request.
fn refused_batch(n: u64) -> pb::IngestRequest {
    pb::IngestRequest {
        batch_id: n,
        events: (0..10_000)
            .map(|i| pb::Event {
                event_id: format!("b{n}-{i}"),
                event_type: "no_such_type".into(),
                event_time_ms: 1,
                ..Default::default()
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_streams_that_never_read_their_acks_stay_bounded_and_give_memory_back() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = spawn_server(dir.path());
    let pid = child.id();
    let before_peak = peak_rss(pid);
    let before = rss(pid);
    // The producers run on a runtime of their own: shutting it down closes their
    // connections, as a client process that goes away does.
    let producers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("producers' runtime");
    let mut counts = Vec::new();
    for stream in 0..16u64 {
        let url = url.clone();
        let (count, counted) = tokio::sync::oneshot::channel();
        counts.push(counted);
        producers.spawn(async move {
            let channel = client::connect(&url).await.expect("connect");
            let (requests, outbound) = tokio::sync::mpsc::channel(1);
            // The ack stream is kept, never read.
            let _acks = IngestClient::new(channel)
                .ingest_stream(tokio_stream::wrappers::ReceiverStream::new(outbound))
                .await
                .expect("stream opens");
            let mut sent = 0u64;
            for n in 0..200 {
                // A pipe full for 5 s: the server stopped reading this stream.
                let send = requests.send(refused_batch(stream * 1_000 + n));
                match tokio::time::timeout(Duration::from_secs(5), send).await {
                    Ok(result) => result.expect("stream open"),
                    Err(_) => break,
                }
                sent += 1;
            }
            let _ = count.send(sent);
            std::future::pending::<()>().await;
        });
    }
    let mut sent = Vec::new();
    for count in counts {
        sent.push(count.await.expect("producer counted"));
    }
    let peak = peak_rss(pid);
    // Cancelled: the producers' connections close.
    producers.shutdown_background();
    let mut now = rss(pid);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while now > before + 48 * MB && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        now = rss(pid);
    }
    child.kill().ok();
    child.wait().ok();
    eprintln!(
        "16 streams never reading acks: batches taken {sent:?}; peak RSS {} MB -> {} MB; RSS {} MB before, {} MB after cancel",
        before_peak / MB,
        peak / MB,
        before / MB,
        now / MB
    );
    assert!(
        sent.iter().all(|sent| *sent < 200),
        "the server kept reading a stream whose acks pile up: {sent:?}"
    );
    // The budget counts at most 2 MiB a stream, an ack until the next one is taken
    // (measured: +57 MB; before the budget 16 streams took 2.87 GB).
    assert!(
        peak - before_peak < 128 * MB,
        "peak RSS rose by {} MB",
        (peak - before_peak) / MB
    );
    assert!(
        now <= before + 48 * MB,
        "RSS stayed {} MB above its level before the streams",
        (now - before) / MB
    );
}

fn bytes_input(name: &str, values: Vec<Bytes>) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: "BYTES".into(),
        shape: vec![values.len() as i64],
        contents: Some(v2pb::InferTensorContents {
            bytes_contents: values,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A fraud ModelInfer of `rows` rows, asking `reasons` reasons each, padded with an
/// ignored parameter of `padding` bytes.
fn fraud_infer(rows: usize, reasons: i64, padding: usize) -> v2pb::ModelInferRequest {
    let id = |prefix: &str, i: usize| Bytes::from(format!("{prefix}{i:0>120}"));
    let parameter = |choice| v2pb::InferParameter {
        parameter_choice: Some(choice),
    };
    use v2pb::infer_parameter::ParameterChoice;
    v2pb::ModelInferRequest {
        model_name: "fraud".into(),
        parameters: BTreeMap::from([
            (
                "reasons".to_string(),
                parameter(ParameterChoice::Int64Param(reasons)),
            ),
            (
                "padding".to_string(),
                parameter(ParameterChoice::StringParam("x".repeat(padding))),
            ),
        ]),
        inputs: vec![
            bytes_input("user", (0..rows).map(|i| id("u", i)).collect()),
            bytes_input("card", (0..rows).map(|i| id("c", i)).collect()),
            InferInputTensor {
                name: "amount".into(),
                datatype: "FP64".into(),
                shape: vec![rows as i64],
                contents: Some(v2pb::InferTensorContents {
                    fp64_contents: vec![42.0; rows],
                    ..Default::default()
                }),
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_of_36_mb_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = spawn_server(dir.path());
    let pid = child.id();
    let channel = client::connect(&url).await.expect("connect");
    let mut v2 = GrpcInferenceServiceClient::new(channel).max_decoding_message_size(64 << 20);
    // A small call is answered, reasons and all.
    let small = v2
        .model_infer(fraud_infer(10, 50, 0))
        .await
        .expect("small call");
    assert_eq!(small.get_ref().outputs.len(), 3, "{:?}", small.get_ref());
    let before = peak_rss(pid);
    let refused = v2
        .model_infer(fraud_infer(10_000, 50, 0))
        .await
        .expect_err("a 36 MB answer is refused");
    let after = peak_rss(pid);
    child.kill().ok();
    child.wait().ok();
    eprintln!(
        "10,000 rows x 50 reasons: {:?}; peak RSS {} MB -> {} MB",
        refused.message(),
        before / MB,
        after / MB
    );
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("limits.max_answer_bytes"),
        "{refused:?}"
    );
    // Refused from the shape: no row was scored (the answer alone would be 36 MB).
    assert!(
        after - before < 24 * MB,
        "peak RSS rose by {} MB",
        (after - before) / MB
    );
}

/// An IngestBatch of about 4 MiB: 10,000 page views with ids and strings near the
/// longest allowed.
fn large_batch(n: u64) -> pb::IngestRequest {
    pb::IngestRequest {
        batch_id: n,
        events: (0..10_000)
            .map(|i| pb::Event {
                event_id: format!("{n}-{i:0>118}"),
                event_type: "page_view".into(),
                event_time_ms: streamscore::time::now_ms() - 60_000,
                entities: [("user".to_string(), format!("u{:0>120}", i % 100))].into(),
                strings: [("session_id".to_string(), format!("s{i:0>120}"))].into(),
                ..Default::default()
            })
            .collect(),
    }
}

/// A REST inference body of about 4 MB that is mostly numbers: parsed into a JSON tree
/// before anything is checked, each 4-byte number becomes a 32-byte value.
fn large_rest_body() -> Vec<u8> {
    let numbers = 1_000_000;
    format!(
        r#"{{"inputs":[{{"name":"amount","datatype":"FP64","shape":[{numbers}],"data":[{}]}}]}}"#,
        vec!["0.5"; numbers].join(",")
    )
    .into_bytes()
}

/// One HTTP/1.1 POST on its own connection; the status code. The body's last byte is
/// sent only once every caller sharing `together` has sent the rest, so the server
/// reads all the bodies at once.
async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    body: &[u8],
    together: &tokio::sync::Barrier,
) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let (last, rest) = body.split_last().expect("a body");
    // The server may answer (429) before it reads the body, and close.
    let sent = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(rest).await
    }
    .await;
    together.wait().await;
    if sent.is_ok() {
        let _ = stream.write_all(std::slice::from_ref(last)).await;
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_four_mib_requests_of_each_kind_at_once_stay_under_512_mb() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url, http) = spawn_server_with_rest(
        dir.path(),
        &[("STREAMSCORE__INGEST__MAX_MESSAGE_BYTES", "5000000")],
    );
    let pid = child.id();
    let before = peak_rss(pid);
    let mut report = Vec::new();

    // All three kinds at once: 64 IngestBatch calls of 10,000 events, 64 ModelInfer
    // calls of raw BYTES of one-byte elements (each becomes a 32-byte handle once
    // decoded), 64 REST bodies of a million numbers (a JSON tree before anything is
    // checked), each on its own connection.
    let batch = large_batch(0);
    let batch_size = prost::Message::encoded_len(&batch);
    let mut ingest_calls = Vec::new();
    for n in 0..64u64 {
        let url = url.clone();
        let batch = large_batch(n);
        ingest_calls.push(tokio::spawn(async move {
            let channel = client::connect(&url).await.expect("connect");
            IngestClient::new(channel)
                .ingest_batch(batch)
                .await
                .map(|ack| ack.into_inner().accepted)
        }));
    }
    let elements = 800_000;
    let mut raw = Vec::with_capacity(elements * 5);
    for _ in 0..elements {
        raw.extend_from_slice(&1u32.to_le_bytes());
        raw.push(b'u');
    }
    let infer = v2pb::ModelInferRequest {
        model_name: "fraud".into(),
        inputs: vec![InferInputTensor {
            name: "user".into(),
            datatype: "BYTES".into(),
            shape: vec![elements as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![Bytes::from(raw)],
        ..Default::default()
    };
    let infer_size = prost::Message::encoded_len(&infer);
    let mut infer_calls = Vec::new();
    for _ in 0..64 {
        let url = url.clone();
        let infer = infer.clone();
        infer_calls.push(tokio::spawn(async move {
            let channel = client::connect(&url).await.expect("connect");
            GrpcInferenceServiceClient::new(channel)
                .max_decoding_message_size(64 << 20)
                .model_infer(infer)
                .await
                .map(|answer| answer.into_inner().outputs.len())
        }));
    }
    let body = std::sync::Arc::new(large_rest_body());
    let together = std::sync::Arc::new(tokio::sync::Barrier::new(64));
    let mut rest_calls = Vec::new();
    for _ in 0..64 {
        let body = std::sync::Arc::clone(&body);
        let together = std::sync::Arc::clone(&together);
        rest_calls.push(tokio::spawn(async move {
            post(http, "/v2/models/fraud/infer", &body, &together).await
        }));
    }

    let mut codes = BTreeMap::new();
    for call in ingest_calls {
        let code = match call.await.expect("call") {
            Ok(accepted) => {
                assert_eq!(accepted, 10_000);
                Code::Ok
            }
            Err(status) => {
                assert!(status.message().contains("limits.inflight_"), "{status:?}");
                status.code()
            }
        };
        *codes.entry(format!("{code:?}")).or_insert(0) += 1;
    }
    report.push(format!("IngestBatch of {batch_size} bytes: {codes:?}"));
    assert!(codes.contains_key("Ok"), "{codes:?}");
    assert!(
        codes
            .keys()
            .all(|code| code == "Ok" || code == "ResourceExhausted"),
        "{codes:?}"
    );
    let mut codes = BTreeMap::new();
    for call in infer_calls {
        // Too many rows: refused once decoded (INVALID_ARGUMENT), or refused by the
        // budget before (RESOURCE_EXHAUSTED).
        let status = call.await.expect("call").expect_err("too many rows");
        let code = status.code();
        match code {
            Code::InvalidArgument => {}
            Code::ResourceExhausted => {
                assert!(status.message().contains("limits."), "{status:?}");
            }
            _ => panic!("{status:?}"),
        }
        *codes.entry(format!("{code:?}")).or_insert(0) += 1;
    }
    report.push(format!("ModelInfer of {infer_size} bytes: {codes:?}"));
    assert!(codes.contains_key("InvalidArgument"), "{codes:?}");
    let mut codes = BTreeMap::new();
    for call in rest_calls {
        *codes.entry(call.await.expect("call")).or_insert(0) += 1;
    }
    report.push(format!("REST infer of {} bytes: {codes:?}", body.len()));
    let after = peak_rss(pid);
    child.kill().ok();
    child.wait().ok();
    eprintln!(
        "{}; peak RSS {} MB -> {} MB",
        report.join("; "),
        before / MB,
        after / MB
    );
    // Too many rows (400) once parsed, or refused by the budget up front (429).
    assert!(
        codes.keys().all(|code| *code == 400 || *code == 429),
        "{codes:?}"
    );
    assert!(
        after - before < 512 * MB,
        "peak RSS rose by {} MB",
        (after - before) / MB
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_slow_header_connections_are_closed_and_ingest_keeps_acking() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url, http) = spawn_server_with_rest(
        dir.path(),
        &[
            ("STREAMSCORE__HTTP__HEADER_TIMEOUT", "2s"),
            // Segments rotate often, so the log needs descriptors during the attack.
            ("STREAMSCORE__LOG__SEGMENT_BYTES", "4096"),
        ],
    );
    let pid = child.id();
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), "--nofile=512:"])
        .status()
        .expect("prlimit runs");
    assert!(status.success());

    // 500 connections that start a request and never finish its headers.
    let mut attackers = Vec::new();
    for _ in 0..500 {
        attackers.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(http).await.ok()?;
            stream
                .write_all(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n")
                .await
                .ok()?;
            let mut buf = [0u8; 256];
            // Closed by the server: end of stream (or a reset).
            let closed = tokio::time::timeout(Duration::from_secs(60), stream.read(&mut buf)).await;
            Some(closed.is_ok())
        }));
    }
    // Meanwhile ingest goes on and every batch is acked.
    let channel = client::connect(&url).await.expect("connect");
    let mut ingest = IngestClient::new(channel);
    let mut acked = 0;
    for n in 0..40usize {
        let ack = ingest
            .ingest_batch(common::view_batch(n * 25, 25))
            .await
            .expect("acked during the attack")
            .into_inner();
        acked += ack.accepted;
    }
    let mut closed = 0;
    let mut failed_to_connect = 0;
    for attacker in attackers {
        match attacker.await.expect("attacker") {
            Some(true) => closed += 1,
            Some(false) => {}
            None => failed_to_connect += 1,
        }
    }
    // The REST door answers again.
    let mut stream = tokio::net::TcpStream::connect(http).await.expect("connect");
    stream
        .write_all(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    child.kill().ok();
    child.wait().ok();
    eprintln!(
        "500 slow-header connections: {closed} closed by the server, {failed_to_connect} could not connect; {acked} events acked during the attack"
    );
    assert_eq!(acked, 1_000);
    assert_eq!(closed + failed_to_connect, 500, "some were held open");
    assert_eq!(closed, 500);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_both_content_length_and_transfer_encoding_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _url, http) = spawn_server_with_rest(dir.path(), &[]);
    let ask = |request: &'static [u8]| async move {
        let mut stream = tokio::net::TcpStream::connect(http).await.expect("connect");
        stream.write_all(request).await.expect("write");
        let mut answer = String::new();
        // The server closes the connection after its answer.
        tokio::time::timeout(Duration::from_secs(30), stream.read_to_string(&mut answer))
            .await
            .expect("the connection is closed")
            .expect("read");
        answer
    };
    // A chunked body whose Content-Length would frame it differently: behind a proxy
    // reading the length, the second request would be smuggled.
    let smuggling = ask(b"POST /v2/models/fraud/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n").await;
    // The same request framed one way only is answered.
    let plain = ask(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
    child.kill().ok();
    child.wait().ok();
    assert!(smuggling.starts_with("HTTP/1.1 400"), "{smuggling}");
    assert!(smuggling.contains("not both"), "{smuggling}");
    assert_eq!(
        smuggling.matches("HTTP/1.1 ").count(),
        1,
        "one answer, nothing after it: {smuggling}"
    );
    assert!(plain.starts_with("HTTP/1.1 200"), "{plain}");
}

/// `ingest.cpus` keeps the engine's writer, the log writer and the decoder of large
/// batches on the CPUs it names (read back from /proc), and leaves the request threads
/// on all of them: the setting that keeps `Score` p99 beside heavy ingest near its p99
/// alone (`cargo bench --bench score_load`).
#[tokio::test]
async fn the_ingest_threads_keep_to_the_cpus_they_are_given() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("server.toml");
    std::fs::write(&config, "[ingest]\ncpus = [0]\n").expect("config");
    let data = dir.path().join("data");
    let (mut child, url) = common::spawn_server_configured(&data, &config);
    // Once a batch is acked every ingest thread has started.
    let channel = client::connect(&url).await.expect("connect");
    IngestClient::new(channel)
        .ingest_batch(common::view_batch(0, 1))
        .await
        .expect("acked");
    let allowed = |comm: &str| -> Vec<String> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", child.id())).expect("tasks");
        tasks
            .filter_map(|task| {
                let task = task.ok()?.path();
                let name = std::fs::read_to_string(task.join("comm")).ok()?;
                (name.trim() == comm).then_some(())?;
                let status = std::fs::read_to_string(task.join("status")).ok()?;
                status
                    .lines()
                    .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
                    .map(|list| list.trim().to_string())
            })
            .collect()
    };
    for ingest_thread in ["streamscore-wri", "event-log-write", "streamscore-dec"] {
        assert_eq!(allowed(ingest_thread), ["0"], "{ingest_thread}");
    }
    let workers = allowed("tokio-rt-worker");
    assert!(!workers.is_empty(), "the request threads are found");
    if std::thread::available_parallelism().map_or(1, usize::from) > 1 {
        assert!(workers.iter().all(|list| list != "0"), "{workers:?}");
    }
    child.kill().expect("kill");
    child.wait().expect("wait");
}
