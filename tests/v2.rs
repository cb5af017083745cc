//! The Open Inference Protocol (KServe V2) over gRPC against the real server: every
//! call, typed and raw contents, batches equal to single calls and to native `Score`
//! to the bit, a table model's whole rows, and bad tensors refused with the tensor
//! named.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use streamscore::api::pb;
use streamscore::api::v2pb::{self, grpc_inference_service_client::GrpcInferenceServiceClient};
use streamscore::definitions::Definitions;
use streamscore::events::RawEvent;
use streamscore::simulate::{SimConfig, Simulator};
use tonic::Code;
use v2pb::model_infer_request::InferInputTensor;

type Client = GrpcInferenceServiceClient<streamscore::api::client::Connection>;

/// A server with two hours of simulated history; (server, users, cards, the newest
/// event time).
async fn server_with_history() -> (common::TestServer, Vec<String>, Vec<String>, i64) {
    // At most 1,000 rows (or events) a request.
    let server =
        common::TestServer::start(|settings| settings.ingest.max_batch_events = 1_000).await;
    let events: Vec<RawEvent> = Simulator::new(SimConfig {
        users: 200,
        start_ms: streamscore::time::now_ms() - 2 * 3_600_000,
        ..SimConfig::default()
    })
    .take(3_000)
    .collect();
    let at = events.iter().map(|e| e.event_time_ms).max().unwrap_or(0);
    streamscore::api::client::stream_events(
        server.channel().await,
        events.clone().into_iter(),
        500,
        2,
        |_| {},
    )
    .await
    .expect("history");
    let samples = common::sample_entities(&Definitions::default_shop(), &events, 10);
    let of = |entity: &str| common::ids_of(&samples, entity);
    (server, of("user"), of("card"), at)
}

fn bytes_input(name: &str, values: &[String]) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: "BYTES".into(),
        shape: vec![values.len() as i64],
        contents: Some(v2pb::InferTensorContents {
            bytes_contents: values.iter().map(|v| Bytes::from(v.clone())).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn fp64_input(name: &str, values: &[f64]) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: "FP64".into(),
        shape: vec![values.len() as i64],
        contents: Some(v2pb::InferTensorContents {
            fp64_contents: values.to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn int_parameter(value: i64) -> v2pb::InferParameter {
    v2pb::InferParameter {
        parameter_choice: Some(v2pb::infer_parameter::ParameterChoice::Int64Param(value)),
    }
}

/// A fraud request for rows of (user, card, amount) as of `at`.
fn fraud_request(rows: &[(String, String, f64)], at: i64) -> v2pb::ModelInferRequest {
    let users: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let cards: Vec<String> = rows.iter().map(|r| r.1.clone()).collect();
    let amounts: Vec<f64> = rows.iter().map(|r| r.2).collect();
    v2pb::ModelInferRequest {
        model_name: "fraud".into(),
        id: "req-1".into(),
        parameters: BTreeMap::from([("event_time_ms".to_string(), int_parameter(at))]),
        inputs: vec![
            bytes_input("user", &users),
            bytes_input("card", &cards),
            fp64_input("amount", &amounts),
        ],
        ..Default::default()
    }
}

/// The same rows as raw contents.
fn raw(mut request: v2pb::ModelInferRequest) -> v2pb::ModelInferRequest {
    for input in &mut request.inputs {
        let contents = input.contents.take().unwrap_or_default();
        let mut raw = Vec::new();
        for value in &contents.fp64_contents {
            raw.extend_from_slice(&value.to_le_bytes());
        }
        for value in &contents.bytes_contents {
            raw.extend_from_slice(&(value.len() as u32).to_le_bytes());
            raw.extend_from_slice(value);
        }
        request.raw_input_contents.push(Bytes::from(raw));
    }
    request
}

fn output<'a>(
    response: &'a v2pb::ModelInferResponse,
    name: &str,
) -> &'a v2pb::model_infer_response::InferOutputTensor {
    response
        .outputs
        .iter()
        .find(|o| o.name == name)
        .unwrap_or_else(|| panic!("no output {name}: {response:?}"))
}

fn probabilities(response: &v2pb::ModelInferResponse) -> Vec<f64> {
    let index = response
        .outputs
        .iter()
        .position(|o| o.name == "probability")
        .expect("probability");
    match response.raw_output_contents.get(index) {
        Some(raw) => raw
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
        None => response.outputs[index]
            .contents
            .as_ref()
            .expect("typed")
            .fp64_contents
            .clone(),
    }
}

async fn native(
    server: &common::TestServer,
    user: &str,
    card: &str,
    amount: f64,
    at: i64,
) -> pb::ScoreResponse {
    let mut request = common::fraud_payment(amount);
    let event = request.event.as_mut().expect("event");
    event.event_time_ms = at;
    event.entities = [("user", user), ("card", card)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    pb::scoring_client::ScoringClient::new(server.channel().await)
        .score(request)
        .await
        .expect("native score")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_calls_describe_the_server_and_its_models() {
    let server = common::TestServer::start(|_| {}).await;
    let mut client = Client::new(server.channel().await);
    assert!(
        client
            .server_live(v2pb::ServerLiveRequest {})
            .await
            .expect("live")
            .into_inner()
            .live
    );
    assert!(
        client
            .server_ready(v2pb::ServerReadyRequest {})
            .await
            .expect("ready")
            .into_inner()
            .ready
    );
    let metadata = client
        .server_metadata(v2pb::ServerMetadataRequest {})
        .await
        .expect("metadata")
        .into_inner();
    assert_eq!(metadata.name, "streamscore");
    assert_eq!(metadata.version, env!("CARGO_PKG_VERSION"));
    let ready = |name: &str, version: &str| v2pb::ModelReadyRequest {
        name: name.into(),
        version: version.into(),
    };
    for (name, version, expected) in [
        ("fraud", "", true),
        ("fraud", "1", true),
        ("fraud", "99", false),
        ("nope", "", false),
    ] {
        let answer = client
            .model_ready(ready(name, version))
            .await
            .expect("model ready answers")
            .into_inner();
        assert_eq!(answer.ready, expected, "{name}@{version}");
    }

    let fraud = client
        .model_metadata(v2pb::ModelMetadataRequest {
            name: "fraud".into(),
            version: String::new(),
        })
        .await
        .expect("fraud metadata")
        .into_inner();
    assert_eq!(fraud.name, "fraud");
    assert_eq!(fraud.versions, vec!["1".to_string()]);
    // Exactly the fields of a payment: its entity types, its numbers, its strings.
    let definitions = Definitions::default_shop();
    let payment = definitions
        .event_types
        .iter()
        .find(|e| e.name == "payment")
        .expect("payment");
    let mut expected: Vec<(String, &str)> = payment
        .entities
        .iter()
        .map(|slot| (definitions.entities[slot.entity].name.clone(), "BYTES"))
        .collect();
    expected.extend(payment.numbers.iter().map(|f| (f.name.clone(), "FP64")));
    expected.extend(payment.strings.iter().map(|f| (f.name.clone(), "BYTES")));
    let inputs: Vec<(String, &str)> = fraud
        .inputs
        .iter()
        .map(|i| {
            assert_eq!(i.shape, vec![-1], "{i:?}");
            (
                i.name.clone(),
                if i.datatype == "FP64" {
                    "FP64"
                } else {
                    "BYTES"
                },
            )
        })
        .collect();
    assert_eq!(inputs, expected);
    assert!(
        fraud
            .inputs
            .iter()
            .all(|i| ["FP64", "BYTES"].contains(&i.datatype.as_str()))
    );
    let outputs: Vec<(&str, &str)> = fraud
        .outputs
        .iter()
        .map(|o| (o.name.as_str(), o.datatype.as_str()))
        .collect();
    assert_eq!(
        outputs,
        vec![
            ("probability", "FP64"),
            ("decision", "BYTES"),
            ("reasons", "BYTES")
        ]
    );
    let status = client
        .model_metadata(v2pb::ModelMetadataRequest {
            name: "nope".into(),
            version: String::new(),
        })
        .await
        .expect_err("unknown model");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // Every service answers health, Models and the V2 service among them.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    for service in ["streamscore.v1.Models", "inference.GRPCInferenceService"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_equals_native_score_in_batches_typed_and_raw() {
    let (server, users, cards, at) = server_with_history().await;
    let mut client = Client::new(server.channel().await);
    let rows: Vec<(String, String, f64)> = (0..12)
        .map(|i| {
            (
                users[i % users.len()].clone(),
                cards[(i * 5) % cards.len()].clone(),
                7.5 + i as f64 * 31.0,
            )
        })
        .collect();

    let typed = client
        .model_infer(fraud_request(&rows, at))
        .await
        .expect("typed")
        .into_inner();
    assert_eq!(typed.model_name, "fraud");
    assert_eq!(typed.model_version, "1");
    assert_eq!(typed.id, "req-1");
    assert!(typed.raw_output_contents.is_empty());
    assert_eq!(output(&typed, "probability").shape, vec![rows.len() as i64]);
    let batch = probabilities(&typed);
    let decisions = output(&typed, "decision")
        .contents
        .as_ref()
        .expect("typed")
        .bytes_contents
        .clone();
    assert!(
        typed.outputs.iter().all(|o| o.name != "reasons"),
        "reasons only when asked"
    );

    let raw_response = client
        .model_infer(raw(fraud_request(&rows, at)))
        .await
        .expect("raw")
        .into_inner();
    assert_eq!(
        raw_response.raw_output_contents.len(),
        raw_response.outputs.len()
    );
    assert!(raw_response.outputs.iter().all(|o| o.contents.is_none()));
    let from_raw = probabilities(&raw_response);

    for (i, (user, card, amount)) in rows.iter().enumerate() {
        let single = client
            .model_infer(fraud_request(&rows[i..=i], at))
            .await
            .expect("single")
            .into_inner();
        let expected = native(&server, user, card, *amount, at).await;
        assert_eq!(batch[i].to_bits(), expected.score.to_bits(), "row {i}");
        assert_eq!(
            from_raw[i].to_bits(),
            expected.score.to_bits(),
            "row {i} raw"
        );
        assert_eq!(
            probabilities(&single)[0].to_bits(),
            expected.score.to_bits(),
            "row {i} alone"
        );
        let decision = match pb::Decision::try_from(expected.decision).expect("decision") {
            pb::Decision::Allow => "allow",
            pb::Decision::Review => "review",
            pb::Decision::Block => "block",
            other => panic!("{other:?}"),
        };
        assert_eq!(decisions[i], Bytes::from(decision), "row {i}");
    }

    // Reasons by parameter, as JSON per row; a requested output alone.
    let mut request = fraud_request(&rows[..2], at);
    request
        .parameters
        .insert("reasons".into(), int_parameter(4));
    let with_reasons = client
        .model_infer(request)
        .await
        .expect("reasons")
        .into_inner();
    let reasons = &output(&with_reasons, "reasons")
        .contents
        .as_ref()
        .expect("typed")
        .bytes_contents;
    let parsed: Vec<serde_json::Value> = serde_json::from_slice(&reasons[0]).expect("json");
    assert_eq!(parsed.len(), 4);
    assert!(parsed[0]["feature"].is_string() && parsed[0]["contribution"].is_number());
    let mut request = fraud_request(&rows[..2], at);
    request.outputs = vec![v2pb::model_infer_request::InferRequestedOutputTensor {
        name: "decision".into(),
        ..Default::default()
    }];
    let only = client
        .model_infer(request)
        .await
        .expect("one output")
        .into_inner();
    let names: Vec<&str> = only.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, vec!["decision"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tensors_are_refused_naming_the_tensor() {
    let (server, users, cards, at) = server_with_history().await;
    let mut client = Client::new(server.channel().await);
    let rows = vec![
        (users[0].clone(), cards[0].clone(), 12.0),
        (users[1].clone(), cards[1].clone(), 30.0),
    ];
    let refused = |mut request: v2pb::ModelInferRequest,
                   change: &dyn Fn(&mut v2pb::ModelInferRequest)| {
        change(&mut request);
        request
    };
    let cases: Vec<(&str, v2pb::ModelInferRequest, Code, &str)> = vec![
        (
            "wrong datatype",
            refused(fraud_request(&rows, at), &|r| {
                r.inputs[2] = bytes_input("amount", &["12".into(), "30".into()])
            }),
            Code::InvalidArgument,
            "amount: datatype BYTES, expected FP64 or FP32",
        ),
        (
            "wrong shape",
            refused(fraud_request(&rows, at), &|r| {
                r.inputs[2].shape = vec![1, 2]
            }),
            Code::InvalidArgument,
            "amount: shape [1, 2], expected [N]",
        ),
        (
            "shape and contents disagree",
            refused(fraud_request(&rows, at), &|r| r.inputs[2].shape = vec![3]),
            Code::InvalidArgument,
            "amount: shape [3] says 3 elements, the contents hold 2",
        ),
        (
            "rows disagree",
            refused(fraud_request(&rows, at), &|r| {
                r.inputs[2] = fp64_input("amount", &[1.0, 2.0, 3.0])
            }),
            Code::InvalidArgument,
            "amount: 3 rows, but user has 2",
        ),
        (
            "unknown input",
            refused(fraud_request(&rows, at), &|r| {
                r.inputs.push(fp64_input("zip", &[1.0, 2.0]))
            }),
            Code::InvalidArgument,
            "zip: not an input of this model",
        ),
        (
            "NaN",
            refused(fraud_request(&rows, at), &|r| {
                r.inputs[2] = fp64_input("amount", &[12.0, f64::NAN]);
            }),
            Code::InvalidArgument,
            "amount[1]:",
        ),
        (
            "raw and inputs disagree",
            refused(raw(fraud_request(&rows, at)), &|r| {
                r.raw_input_contents.pop();
            }),
            Code::InvalidArgument,
            "raw_input_contents: 2 entries for 3 inputs",
        ),
        (
            "raw length not whole",
            refused(raw(fraud_request(&rows, at)), &|r| {
                r.raw_input_contents[2] = Bytes::from_static(&[0; 12]);
            }),
            Code::InvalidArgument,
            "amount: raw contents of 12 bytes are not whole FP64 elements of 8 bytes",
        ),
        (
            "unknown output",
            refused(fraud_request(&rows, at), &|r| {
                r.outputs = vec![v2pb::model_infer_request::InferRequestedOutputTensor {
                    name: "price".into(),
                    ..Default::default()
                }];
            }),
            Code::InvalidArgument,
            "outputs.price: not an output of this model",
        ),
        (
            "unknown model",
            refused(fraud_request(&rows, at), &|r| r.model_name = "nope".into()),
            Code::NotFound,
            "nope",
        ),
        (
            "too many rows",
            {
                let many: Vec<(String, String, f64)> = (0..1_001)
                    .map(|i| (format!("u{i}"), "c".into(), 1.0))
                    .collect();
                fraud_request(&many, at)
            },
            Code::InvalidArgument,
            "1001 rows, more than the 1000 one request may score",
        ),
    ];
    for (what, request, code, message) in cases {
        let Err(status) = client.model_infer(request).await else {
            panic!("{what}: answered");
        };
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(
            status.message().contains(message),
            "{what}: {:?}",
            status.message()
        );
    }
    server.stop().await;
}

/// One HTTP/1.1 request on its own connection: (status, JSON body).
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("send head");
    stream.write_all(body).await.expect("send body");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let text = String::from_utf8_lossy(&response);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status: {text}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

fn json_request(rows: &[(String, String, f64)], at: i64) -> serde_json::Value {
    serde_json::json!({
        "id": "rest-1",
        "parameters": { "event_time_ms": at },
        "inputs": [
            { "name": "user", "datatype": "BYTES", "shape": [rows.len()], "data": rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>() },
            { "name": "card", "datatype": "BYTES", "shape": [rows.len()], "data": rows.iter().map(|r| r.1.clone()).collect::<Vec<_>>() },
            { "name": "amount", "datatype": "FP64", "shape": [rows.len()], "data": rows.iter().map(|r| r.2).collect::<Vec<_>>() },
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_answers_as_grpc_does_in_json_and_binary() {
    let (server, users, cards, at) = server_with_history().await;
    let addr = server.http_addr;
    let get = |path: &'static str| http(addr, "GET", path, &[], b"");
    assert_eq!(
        get("/v2/health/live").await,
        (200, serde_json::json!({ "live": true }))
    );
    assert_eq!(
        get("/v2/health/ready").await,
        (200, serde_json::json!({ "ready": true }))
    );
    let (status, metadata) = get("/v2").await;
    assert_eq!(
        (status, metadata["name"].as_str()),
        (200, Some("streamscore"))
    );
    let (status, fraud) = get("/v2/models/fraud").await;
    assert_eq!(status, 200, "{fraud}");
    let mut client = Client::new(server.channel().await);
    let over_grpc = client
        .model_metadata(v2pb::ModelMetadataRequest {
            name: "fraud".into(),
            version: String::new(),
        })
        .await
        .expect("metadata")
        .into_inner();
    let rest_inputs: Vec<(String, String)> = fraud["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap_or("").to_string(),
                i["datatype"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let grpc_inputs: Vec<(String, String)> = over_grpc
        .inputs
        .iter()
        .map(|i| (i.name.clone(), i.datatype.clone()))
        .collect();
    assert_eq!(rest_inputs, grpc_inputs);
    assert_eq!(get("/v2/models/fraud/versions/1").await.0, 200);
    assert_eq!(get("/v2/models/fraud/ready").await.0, 200);
    assert_eq!(get("/v2/models/fraud/versions/7/ready").await.0, 503);
    assert_eq!(get("/v2/models/nope").await.0, 404);

    let rows: Vec<(String, String, f64)> = (0..6)
        .map(|i| {
            (
                users[i % users.len()].clone(),
                cards[(i * 3) % cards.len()].clone(),
                19.0 + i as f64 * 17.0,
            )
        })
        .collect();
    let body = json_request(&rows, at).to_string();
    let (status, answer) = http(addr, "POST", "/v2/models/fraud/infer", &[], body.as_bytes()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["id"], "rest-1");
    assert_eq!(answer["model_version"], "1");
    let probability = answer["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .find(|o| o["name"] == "probability")
        .expect("probability")["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect::<Vec<f64>>();
    let expected = probabilities(
        &client
            .model_infer(fraud_request(&rows, at))
            .await
            .expect("grpc")
            .into_inner(),
    );
    assert_eq!(
        probability.iter().map(|p| p.to_bits()).collect::<Vec<_>>(),
        expected.iter().map(|p| p.to_bits()).collect::<Vec<_>>()
    );

    // The binary tensor extension, as tritonclient sends it by default.
    let mut header = json_request(&rows, at);
    let mut binary = Vec::new();
    for input in header["inputs"].as_array_mut().expect("inputs") {
        let mut raw = Vec::new();
        for value in input["data"].as_array().expect("data") {
            match value {
                serde_json::Value::String(text) => {
                    raw.extend_from_slice(&(text.len() as u32).to_le_bytes());
                    raw.extend_from_slice(text.as_bytes());
                }
                number => raw.extend_from_slice(&number.as_f64().expect("number").to_le_bytes()),
            }
        }
        input.as_object_mut().expect("object").remove("data");
        input["parameters"] = serde_json::json!({ "binary_data_size": raw.len() });
        binary.extend(raw);
    }
    let header = header.to_string();
    let mut body = header.clone().into_bytes();
    body.extend(&binary);
    let (status, answer) = http(
        addr,
        "POST",
        "/v2/models/fraud/versions/1/infer",
        &[("inference-header-content-length", header.len().to_string())],
        &body,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let binary_probability: Vec<f64> = answer["outputs"][0]["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect();
    assert_eq!(binary_probability, probability);

    // Bad requests: a clear error naming what is wrong.
    let mut wrong = json_request(&rows, at);
    wrong["inputs"][2]["datatype"] = "BYTES".into();
    let (status, error) = http(
        addr,
        "POST",
        "/v2/models/fraud/infer",
        &[],
        wrong.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        error["error"]
            .as_str()
            .unwrap_or("")
            .contains("amount: element 0 is not a string"),
        "{error}"
    );
    let (status, error) = http(addr, "POST", "/v2/models/fraud/infer", &[], b"{not json").await;
    assert_eq!(status, 400);
    assert!(
        error["error"]
            .as_str()
            .unwrap_or("")
            .starts_with("body: not a JSON inference request"),
        "{error}"
    );
    let (status, _) = http(
        addr,
        "POST",
        "/v2/models/nope/infer",
        &[],
        body_of(&rows, at).as_bytes(),
    )
    .await;
    assert_eq!(status, 404);
    server.stop().await;
}

fn body_of(rows: &[(String, String, f64)], at: i64) -> String {
    json_request(rows, at).to_string()
}
