//! Security at the door, with real TLS handshakes (certificates made by rcgen): a
//! plaintext client cannot talk to a TLS port; the client library and the CLI with
//! `--ca` can; with `tls.client_ca` a client without a certificate is refused and one
//! with a mapped certificate is a caller. Roles: no token -> UNAUTHENTICATED, a
//! `score` token calling SetAlias or LoadModel -> PERMISSION_DENIED with nothing
//! changed, `admin` succeeds; `record` needs `ingest`, records only the model's event
//! type, and cannot squat the id of a real event. `serve` refuses a public address
//! without TLS and callers.

mod common;

use std::path::Path;
use std::time::Duration;

use common::TestServer;
use common::pki::Pki;
use streamscore::api::client::{self, ClientOptions, Connection};
use streamscore::api::pb::{
    self, ingest_client::IngestClient, models_client::ModelsClient, scoring_client::ScoringClient,
};
use streamscore::config::{CertificateCaller, Role, Settings, TokenCaller};
use streamscore::loadtest::{self, Call, LoadSpec};
use streamscore::simulate::SimConfig;
use streamscore::time::now_ms;
use tonic::Code;

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const CHECKOUT: &str = "checkout-token-0123456789";
const SHOP: &str = "shop-token-0123456789";
const OPS: &str = "ops-token-0123456789";

fn token_callers(settings: &mut Settings) {
    for (name, token, roles) in [
        ("checkout", CHECKOUT, vec![Role::Score]),
        ("shop", SHOP, vec![Role::Ingest, Role::Score]),
        ("ops", OPS, vec![Role::Admin, Role::Read]),
    ] {
        settings.auth.tokens.push(TokenCaller {
            name: name.into(),
            sha256: sha256_hex(token.as_bytes()),
            roles,
        });
    }
}

fn tls(settings: &mut Settings, pki: &Pki) {
    settings.tls.cert = Some(pki.path("server.pem"));
    settings.tls.key = Some(pki.path("server.key"));
}

fn https(server: &TestServer) -> String {
    format!("https://localhost:{}", server.addr.port())
}

async fn connect(
    url: &str,
    pki: &Pki,
    token: Option<&str>,
    client_cert: bool,
) -> Result<Connection, client::ConnectError> {
    let options = ClientOptions {
        ca: Some(pki.path("ca.pem")),
        cert: client_cert.then(|| pki.path("client.pem")),
        key: client_cert.then(|| pki.path("client.key")),
        token: token.map(str::to_string),
    };
    client::connect_with(url, &options).await
}

fn payment(id: &str) -> pb::Event {
    pb::Event {
        event_id: id.into(),
        event_type: "payment".into(),
        event_time_ms: now_ms() - 1_000,
        entities: [("user", "u1"), ("card", "c1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        numbers: [("amount".to_string(), 20.0)].into(),
        ..Default::default()
    }
}

fn score(event: pb::Event, record: bool) -> pb::ScoreRequest {
    pb::ScoreRequest {
        model: "fraud".into(),
        event: Some(event),
        record,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_needs_tls_and_the_clients_with_ca_get_through() {
    let pki = Pki::new(&["localhost"]);
    let server = TestServer::start(|settings| {
        tls(settings, &pki);
        token_callers(settings);
    })
    .await;

    // Plaintext against the TLS port: no gRPC gets through.
    let plaintext = match client::connect(&server.url).await {
        Err(_) => true,
        Ok(channel) => ScoringClient::new(channel)
            .score(score(payment(""), false))
            .await
            .is_err(),
    };
    assert!(plaintext, "a plaintext client talked to the TLS port");
    // TLS without our CA: the server's certificate is not trusted.
    let untrusted = client::connect_with(&https(&server), &ClientOptions::default()).await;
    let untrusted = match untrusted {
        Err(_) => true,
        Ok(channel) => ScoringClient::new(channel)
            .score(score(payment(""), false))
            .await
            .is_err(),
    };
    assert!(
        untrusted,
        "a client trusted a certificate outside its roots"
    );

    let channel = connect(&https(&server), &pki, Some(CHECKOUT), false)
        .await
        .unwrap();
    let scored = ScoringClient::new(channel)
        .score(score(payment(""), false))
        .await
        .unwrap();
    assert_eq!(scored.into_inner().model, "fraud");

    // The load generator with --ca and a token.
    let report = loadtest::run(
        &https(&server),
        &ClientOptions {
            ca: Some(pki.path("ca.pem")),
            token: Some(CHECKOUT.into()),
            ..Default::default()
        },
        &LoadSpec {
            call: Call::Score,
            concurrency: 2,
            connections: 1,
            duration: Duration::from_millis(300),
            rate: None,
            model: "fraud".into(),
            batch: 1,
            sim: SimConfig {
                users: 50,
                ..SimConfig::default()
            },
        },
    )
    .await
    .unwrap();
    assert!(report.requests > 0 && report.errors == 0, "{report}");

    // The CLI binary with --ca, the token from the environment.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_streamscore"))
        .args(["models", "--target", &https(&server), "--ca"])
        .arg(pki.path("ca.pem"))
        .arg("list")
        .env("STREAMSCORE_TOKEN", OPS)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("fraud"), "{stdout}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_clients_without_a_certificate() {
    let pki = Pki::new(&["localhost"]);
    let fingerprint = sha256_hex(&pki.client_der);
    let server = TestServer::start(|settings| {
        tls(settings, &pki);
        settings.tls.client_ca = Some(pki.path("ca.pem"));
        settings.auth.certificates.push(CertificateCaller {
            name: "checkout-cert".into(),
            sha256: fingerprint,
            roles: vec![Role::Score],
        });
    })
    .await;
    let without = match connect(&https(&server), &pki, None, false).await {
        Err(_) => true,
        Ok(channel) => ScoringClient::new(channel)
            .score(score(payment(""), false))
            .await
            .is_err(),
    };
    assert!(without, "a client without a certificate got through mTLS");

    let channel = connect(&https(&server), &pki, None, true).await.unwrap();
    ScoringClient::new(channel.clone())
        .score(score(payment(""), false))
        .await
        .unwrap();
    // The certificate's caller has the score role only.
    let status = ModelsClient::new(channel)
        .set_alias(pb::SetAliasRequest {
            alias: "fraud".into(),
            target: "fraud@1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("checkout-cert"), "{status:?}");
    server.stop().await;
}

/// A temp models dir with copies of the shipped v1 of `names` and `fraud` pinned to it.
fn shipped_models(names: &[&str]) -> tempfile::TempDir {
    let models = tempfile::tempdir().unwrap();
    for name in names {
        let file = format!("{name}/{name}-v1.json");
        std::fs::create_dir_all(models.path().join(name)).unwrap();
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("models")
                .join(&file),
            models.path().join(&file),
        )
        .unwrap();
    }
    std::fs::write(
        models.path().join("aliases.json"),
        r#"{"fraud": "fraud@1"}"#,
    )
    .unwrap();
    models
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_decide_who_may_do_what() {
    let models = shipped_models(&["fraud", "order_value"]);
    let models_dir = models.path().to_path_buf();
    let server = TestServer::start(move |settings| {
        token_callers(settings);
        settings.models.dir = models_dir;
    })
    .await;
    let as_caller = |token: Option<&'static str>| {
        let url = server.url.clone();
        async move {
            client::connect_with(
                &url,
                &ClientOptions {
                    token: token.map(str::to_string),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
        }
    };
    let alias = || pb::SetAliasRequest {
        alias: "checkout".into(),
        target: "fraud@1".into(),
    };

    // No token, or an unknown one: UNAUTHENTICATED. Health stays open.
    for token in [None, Some("not-a-known-token")] {
        let channel = as_caller(token).await;
        let status = ScoringClient::new(channel.clone())
            .score(score(payment(""), false))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{token:?}: {status:?}"
        );
        let status = ModelsClient::new(channel.clone())
            .set_alias(alias())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
    }

    // A score token: scores, but may not move aliases, load models, ingest or record.
    let checkout = as_caller(Some(CHECKOUT)).await;
    ScoringClient::new(checkout.clone())
        .score(score(payment(""), false))
        .await
        .unwrap();
    let mut models_as_checkout = ModelsClient::new(checkout.clone());
    let status = models_as_checkout.set_alias(alias()).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("admin"), "{status:?}");
    let status = models_as_checkout
        .load_model(pb::LoadModelRequest {
            path: "fraud/fraud-v1.json".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = models_as_checkout
        .retire_model(pb::RetireModelRequest {
            model: "fraud@1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("admin"), "{status:?}");
    let status = ScoringClient::new(checkout.clone())
        .score(score(payment("p1"), true))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("ingest"), "{status:?}");
    let status = IngestClient::new(checkout)
        .ingest_batch(pb::IngestRequest {
            batch_id: 1,
            events: vec![payment("p0")],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    let ops = as_caller(Some(OPS)).await;
    let mut models_as_ops = ModelsClient::new(ops.clone());
    let listed = models_as_ops
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.aliases.iter().all(|a| a.alias != "checkout"),
        "nothing changed: {:?}",
        listed.aliases
    );
    models_as_ops.set_alias(alias()).await.unwrap();
    models_as_ops
        .load_model(pb::LoadModelRequest {
            path: "fraud/fraud-v1.json".into(),
        })
        .await
        .unwrap();
    let listed = models_as_ops
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.aliases.iter().any(|a| a.alias == "checkout"),
        "{listed:?}"
    );

    // Record: ingest + score; only payments for fraud; ids in the caller's namespace,
    // so the shop's real event with the same id is still applied later.
    let shop = as_caller(Some(SHOP)).await;
    let recorded = ScoringClient::new(shop.clone())
        .score(score(payment("p1"), true))
        .await
        .unwrap();
    assert_eq!(recorded.into_inner().recorded.unwrap().accepted, 1);
    let mut order = payment("o1");
    order.event_type = "order".into();
    let status = ScoringClient::new(shop.clone())
        .score(score(order, true))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("records only payment"),
        "{status:?}"
    );
    let ack = IngestClient::new(shop)
        .ingest_batch(pb::IngestRequest {
            batch_id: 2,
            events: vec![payment("p1")],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (ack.accepted, ack.duplicates),
        (1, 0),
        "the real p1 was applied"
    );

    // The caller names the request metric.
    let metrics = server.scrape().await;
    assert!(
        metrics.contains("method=\"SetAlias\",status=\"PERMISSION_DENIED\",caller=\"checkout\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("method=\"Score\",status=\"UNAUTHENTICATED\",caller=\"unauthenticated\""),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_listener_takes_the_admin_calls_off_the_main_port() {
    // A copy of the shipped models: SetAlias writes aliases.json.
    let models = shipped_models(&["fraud"]);
    let models_dir = models.path().to_path_buf();
    let server = TestServer::start(move |settings| {
        settings.admin.listen = Some("127.0.0.1:0".parse().unwrap());
        settings.models.dir = models_dir;
    })
    .await;
    let alias = || pb::SetAliasRequest {
        alias: "checkout".into(),
        target: "fraud@1".into(),
    };
    let status = ModelsClient::new(server.channel().await)
        .set_alias(alias())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("admin listener"), "{status:?}");
    let admin_url = server.admin_url.clone().unwrap();
    let mut admin = ModelsClient::new(client::connect(&admin_url).await.unwrap());
    admin.set_alias(alias()).await.unwrap();
    // The main port still reads the registry, and sees the change.
    let listed = ModelsClient::new(server.channel().await)
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.aliases.iter().any(|a| a.alias == "checkout"),
        "{listed:?}"
    );
    // Scoring is not served on the admin listener.
    let status = ScoringClient::new(client::connect(&admin_url).await.unwrap())
        .score(score(payment(""), false))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    server.stop().await;
}

#[test]
fn serve_refuses_a_public_address_without_tls_and_callers() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_streamscore"))
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env("STREAMSCORE__DATA_DIR", tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0 without TLS and callers"),
        "{stderr}"
    );
    assert!(stderr.contains("--insecure"), "{stderr}");
}
