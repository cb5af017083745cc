//! Bad input: each kind of bad event in a batch is refused by index with its field named
//! while the good ones are applied; garbage bytes, undecodable protobuf and oversized
//! messages get an error status and the server keeps serving.

mod common;

use std::collections::BTreeMap;

use common::TestServer;
use streamscore::api::client;
use streamscore::api::pb::{self, ingest_client::IngestClient};
use streamscore::time::{DAY_MS, now_ms};
use tokio::io::AsyncWriteExt;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

fn payment(id: &str, card: &str, amount: f64, time: i64) -> pb::Event {
    pb::Event {
        event_id: id.into(),
        event_type: "payment".into(),
        event_time_ms: time,
        entities: BTreeMap::from([("user".into(), "u1".into()), ("card".into(), card.into())]),
        numbers: BTreeMap::from([("amount".into(), amount)]),
        strings: BTreeMap::new(),
    }
}

async fn assert_serving(server: &TestServer) {
    let mut health = HealthClient::new(server.channel().await);
    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(status.status(), ServingStatus::Serving);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_event_is_refused_by_index_and_the_good_ones_kept() {
    let server = TestServer::start(|_| {}).await;
    let now = now_ms();
    let good = |id: &str| payment(id, "c-good", 10.0, now - 1_000);
    let mut cases: Vec<(pb::Event, &str, &str)> = Vec::new();
    let mut bad = |edit: &dyn Fn(&mut pb::Event), field: &'static str, reason: &'static str| {
        let mut event = payment(&format!("bad{}", cases.len()), "c-bad", 5.0, now - 1_000);
        edit(&mut event);
        cases.push((event, field, reason));
    };
    bad(
        &|e| e.event_type = "teleport".into(),
        "event_type",
        "unknown event type",
    );
    bad(&|e| e.event_id.clear(), "event_id", "must not be empty");
    bad(&|e| e.event_id = "x".repeat(200), "event_id", "at most 128");
    bad(&|e| e.event_time_ms = 0, "event_time_ms", "positive");
    bad(
        &|e| e.event_time_ms = now + DAY_MS,
        "event_time_ms",
        "ahead of the server clock",
    );
    bad(
        &|e| {
            e.entities.remove("card");
        },
        "entities.card",
        "required",
    );
    bad(
        &|e| {
            e.entities.insert("card".into(), String::new());
        },
        "entities.card",
        "must not be empty",
    );
    bad(
        &|e| {
            e.entities.insert("card".into(), "c".repeat(300));
        },
        "entities.card",
        "at most 128",
    );
    bad(
        &|e| {
            e.entities.insert("card".into(), "c|1".into());
        },
        "entities.card",
        "must not contain",
    );
    bad(
        &|e| {
            e.entities.insert("planet".into(), "mars".into());
        },
        "entities.planet",
        "not an entity",
    );
    bad(
        &|e| {
            e.numbers.remove("amount");
        },
        "numbers.amount",
        "required",
    );
    bad(
        &|e| {
            e.numbers.insert("amount".into(), f64::NAN);
        },
        "numbers.amount",
        "finite",
    );
    bad(
        &|e| {
            e.numbers.insert("amount".into(), f64::INFINITY);
        },
        "numbers.amount",
        "finite",
    );
    bad(
        &|e| {
            e.numbers.insert("amount".into(), -3.0);
        },
        "numbers.amount",
        ">= 0",
    );
    bad(
        &|e| {
            e.numbers.insert("billing_country".into(), 1.0);
        },
        "numbers.billing_country",
        "send it in strings",
    );
    bad(
        &|e| {
            e.strings.insert("amount".into(), "12".into());
        },
        "strings.amount",
        "send it in numbers",
    );
    bad(
        &|e| {
            e.numbers.insert("colour".into(), 1.0);
        },
        "numbers.colour",
        "not a number field",
    );

    // Good events at even indexes, bad ones at odd.
    let mut events = Vec::new();
    let mut expected = Vec::new();
    for (n, (event, field, reason)) in cases.into_iter().enumerate() {
        events.push(good(&format!("good{n}")));
        expected.push((events.len() as u32, field, reason));
        events.push(event);
    }
    let mut ingest = IngestClient::new(server.channel().await);
    let ack = ingest
        .ingest_batch(pb::IngestRequest {
            batch_id: 9,
            events: events.clone(),
        })
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(ack.batch_id, 9);
    assert_eq!(ack.accepted as usize, expected.len());
    assert_eq!(ack.refused.len(), expected.len());
    for (refusal, (index, field, reason)) in ack.refused.iter().zip(&expected) {
        assert_eq!(refusal.index, *index);
        assert_eq!(refusal.field, *field, "{refusal:?}");
        assert!(
            refusal.reason.contains(reason),
            "expected '{reason}' in {refusal:?}"
        );
        assert_eq!(refusal.kind(), pb::RefusalKind::Invalid);
    }
    let features = client::get_features(server.channel().await, "card", "c-good", None)
        .await
        .unwrap();
    let count = features
        .values
        .iter()
        .find(|v| v.name == "card_payments_1h")
        .unwrap()
        .value;
    assert_eq!(
        count,
        Some(expected.len() as f64),
        "every good event applied once"
    );
    let bad_card = client::get_features(server.channel().await, "card", "c-bad", None)
        .await
        .unwrap();
    assert!(!bad_card.known, "no bad event was applied");

    // A resend is acknowledged as duplicates; an event older than the lateness is late.
    let again = ingest
        .ingest_batch(pb::IngestRequest {
            batch_id: 10,
            events: vec![good("good0")],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.accepted, again.duplicates), (0, 1));
    let late = ingest
        .ingest_batch(pb::IngestRequest {
            batch_id: 11,
            events: vec![payment("old", "c-good", 1.0, now - 2 * 3_600_000)],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(late.refused.len(), 1);
    assert_eq!(late.refused[0].kind(), pb::RefusalKind::Late);
    assert!(
        late.refused[0].reason.contains("lateness"),
        "{:?}",
        late.refused[0]
    );
    assert_eq!(server.store.counters().late, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reads_name_the_field() {
    let server = TestServer::start(|_| {}).await;
    let channel = server.channel().await;
    let cases = [
        ("planet", "x", "entity_type"),
        ("card", "", "entity_id"),
        ("user_product", "u1", "entity_id"),
    ];
    for (entity_type, id, field) in cases {
        let status = client::get_features(channel.clone(), entity_type, id, None)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(field), "{status:?}");
    }
    let mut features = pb::features_client::FeaturesClient::new(channel);
    let status = features
        .get_features(pb::GetFeaturesRequest {
            entity_type: "card".into(),
            entity_id: "c1".into(),
            feature_names: vec!["user_views_1h".into()],
            as_of_ms: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("feature_names") && status.message().contains("user_views_1h"),
        "{status:?}"
    );
    server.stop().await;
}

/// Sends raw bytes as the body of a unary gRPC call.
mod raw {
    use bytes::{Buf, BufMut, Bytes};
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    #[derive(Default)]
    pub struct RawCodec;
    pub struct RawEncoder;
    pub struct RawDecoder;

    impl Codec for RawCodec {
        type Encode = Bytes;
        type Decode = Bytes;
        type Encoder = RawEncoder;
        type Decoder = RawDecoder;
        fn encoder(&mut self) -> RawEncoder {
            RawEncoder
        }
        fn decoder(&mut self) -> RawDecoder {
            RawDecoder
        }
    }

    impl Encoder for RawEncoder {
        type Item = Bytes;
        type Error = tonic::Status;
        fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
            dst.put(item);
            Ok(())
        }
    }

    impl Decoder for RawDecoder {
        type Item = Bytes;
        type Error = tonic::Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
            Ok(Some(src.copy_to_bytes(src.remaining())))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_messages_get_errors_and_the_server_keeps_serving() {
    let server = TestServer::start(|settings| settings.ingest.max_message_bytes = 64 * 1024).await;

    // Garbage straight onto the TCP port.
    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    socket
        .write_all(b"\x00\xffGET / HTTP/1.0\r\n\r\n garbage \x13\x37 that is no HTTP/2 preface")
        .await
        .unwrap();
    let _ = socket.shutdown().await;
    drop(socket);
    assert_serving(&server).await;

    // A well-framed gRPC call whose body is not protobuf.
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/streamscore.v1.Ingest/IngestBatch");
    let status = grpc
        .unary::<bytes::Bytes, bytes::Bytes, _>(
            tonic::Request::new(bytes::Bytes::from_static(&[
                0x12, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01,
            ])),
            path,
            raw::RawCodec,
        )
        .await
        .unwrap_err();
    // Bytes that are not the message are the caller's fault, not the server's.
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().to_lowercase().contains("decode"),
        "{status:?}"
    );
    grpc.ready().await.unwrap();
    let status = grpc
        .unary::<bytes::Bytes, bytes::Bytes, _>(
            tonic::Request::new(bytes::Bytes::from_static(&[0x0a, 0x05, 0x66])),
            http::uri::PathAndQuery::from_static("/streamscore.v1.Scoring/Score"),
            raw::RawCodec,
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_serving(&server).await;

    // A message over the cap.
    let big: Vec<pb::Event> = (0..2_000)
        .map(|i| payment(&format!("big{i}"), "c9", 1.0, now_ms() - 1_000))
        .collect();
    let mut ingest = IngestClient::new(server.channel().await);
    let status = ingest
        .ingest_batch(pb::IngestRequest {
            batch_id: 1,
            events: big,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_serving(&server).await;

    // The same on the stream.
    let big = (0..2_000).map(|i| {
        streamscore::events::RawEvent::from(payment(
            &format!("big{i}"),
            "c9",
            1.0,
            now_ms() - 1_000,
        ))
    });
    let status = client::stream_events(server.channel().await, big, 2_000, 1, |_| {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_serving(&server).await;

    // And ordinary calls still work.
    let ack = ingest
        .ingest_batch(pb::IngestRequest {
            batch_id: 2,
            events: vec![payment("ok", "c9", 1.0, now_ms() - 1_000)],
        })
        .await;
    assert_eq!(ack.unwrap().into_inner().accepted, 1);
    server.stop().await;
}
