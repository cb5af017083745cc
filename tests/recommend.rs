//! `Recommend` end to end: rules mined by `streamscore mine rules` from the earlier 70%
//! of a simulated history (products bought in bundles), promoted like a model, served
//! by a server that ingested that history. On the later 30%, for each basket with two
//! or more products, one product is put in the cart and the others are the targets:
//! `Recommend` must hit more of them in its top 10 than the popularity baseline does.
//! Every recommendation carries its rule or says it came from popularity; a user with
//! no history gets popular products; bad input gets clear errors.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use streamscore::api::pb::{self, models_client::ModelsClient, scoring_client::ScoringClient};
use streamscore::api::v2pb::{self, grpc_inference_service_client::GrpcInferenceServiceClient};
use streamscore::events::RawEvent;
use streamscore::simulate::{SimConfig, Simulator};
use streamscore::time::DAY_MS;
use tonic::Code;

const EVENTS: usize = 150_000;
/// Later baskets asked about.
const ASKED: usize = 300;

fn history() -> Vec<RawEvent> {
    Simulator::new(SimConfig {
        users: 3_000,
        products: 200,
        affinity: 0.7,
        seed: 5,
        ..SimConfig::default()
    })
    .take(EVENTS)
    .collect()
}

/// The products of `baskets` by how many baskets hold them, most first, ties by id:
/// the popularity baseline, counted here from the baskets themselves.
fn popularity(baskets: &streamscore::mining::Baskets) -> Vec<String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for basket in &baskets.baskets {
        for item in basket {
            *counts
                .entry(baskets.products[*item as usize].as_str())
                .or_default() += 1;
        }
    }
    let mut ranked: Vec<(&str, usize)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    ranked.into_iter().map(|(p, _)| p.to_string()).collect()
}

fn request(user: &str, cart: &[&str], at: i64) -> pb::RecommendRequest {
    pb::RecommendRequest {
        user: user.into(),
        cart: cart.iter().map(|p| p.to_string()).collect(),
        top_n: 10,
        event_time_ms: at,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recommend_beats_popularity_and_says_why() {
    let events = history();
    let split = events.len() * 7 / 10;
    let (earlier, later) = events.split_at(split);
    let at = earlier.last().expect("events").event_time_ms;

    // Mined from the earlier history into a models dir beside the shipped purchase model.
    let models = tempfile::tempdir().expect("models dir");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/purchase");
    std::fs::create_dir_all(models.path().join("purchase")).expect("dir");
    std::fs::copy(
        shipped.join("purchase-v1.json"),
        models.path().join("purchase/purchase-v1.json"),
    )
    .expect("copy purchase model");
    std::fs::write(
        models.path().join("aliases.json"),
        r#"{"purchase": "purchase@1"}"#,
    )
    .expect("aliases");
    let history_file = models.path().join("history.jsonl");
    common::write_jsonl(&history_file, earlier);
    common::mine_rules(&history_file, models.path());
    assert!(models.path().join("rules/rules-v1.rules.png").exists());

    let models_dir = models.path().to_path_buf();
    let server = common::TestServer::start(|settings| settings.models.dir = models_dir).await;
    let mut scoring = ScoringClient::new(server.channel().await);
    let mut registry = ModelsClient::new(server.channel().await);

    // A new rule set is a candidate like any model version: nothing serves until promoted.
    let refused = scoring
        .recommend(request("u1", &[], at))
        .await
        .expect_err("not promoted yet");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    registry
        .set_alias(pb::SetAliasRequest {
            alias: "rules".into(),
            target: "rules@1".into(),
        })
        .await
        .expect("promote rules@1");

    // Owned: the stream sends from its own task.
    let batch: Vec<RawEvent> = earlier.to_vec();
    streamscore::api::client::stream_events(
        server.channel().await,
        batch.into_iter(),
        500,
        2,
        |_| {},
    )
    .await
    .expect("ingests the earlier history");

    let earlier_baskets = streamscore::mining::baskets(earlier, DAY_MS);
    let popular = popularity(&earlier_baskets);
    let later_baskets = streamscore::mining::baskets(later, DAY_MS);
    let (mut ours, mut baseline, mut asked, mut from_rules) = (0, 0, 0, 0);
    for (basket, user) in later_baskets
        .baskets
        .iter()
        .zip(&later_baskets.users)
        .filter(|(b, _)| b.len() >= 2)
        .take(ASKED)
    {
        let products: Vec<&str> = basket
            .iter()
            .map(|i| later_baskets.products[*i as usize].as_str())
            .collect();
        let (carted, targets) = (products[0], &products[1..]);
        let answer = scoring
            .recommend(request(user, &[carted], at))
            .await
            .expect("recommends")
            .into_inner();
        assert_eq!(answer.rules, "rules@1");
        assert_eq!(answer.model, "purchase@1");
        assert!(answer.recommendations.len() <= 10);
        assert!(answer.context.iter().any(|p| p == carted));
        let mut previous = f64::INFINITY;
        for item in &answer.recommendations {
            assert_ne!(item.product, carted, "the cart is never recommended back");
            assert!(item.probability <= previous, "ranked by probability");
            previous = item.probability;
            match &item.why {
                Some(pb::recommendation::Why::Rule(rule)) => {
                    from_rules += 1;
                    assert!(rule.consequent.contains(&item.product), "{item:?}");
                    assert!(
                        rule.antecedent.iter().all(|p| answer.context.contains(p)),
                        "the rule's antecedent was seen: {item:?} {:?}",
                        answer.context
                    );
                    assert!(rule.confidence > 0.0 && rule.lift > 0.0);
                }
                Some(pb::recommendation::Why::Popular(popular)) => {
                    assert!(popular.support > 0.0)
                }
                None => panic!("a recommendation without a reason: {item:?}"),
            }
        }
        let recommended: HashSet<&str> = answer
            .recommendations
            .iter()
            .map(|r| r.product.as_str())
            .collect();
        ours += usize::from(targets.iter().any(|t| recommended.contains(t)));
        let top: Vec<&str> = popular
            .iter()
            .map(String::as_str)
            .filter(|p| *p != carted)
            .take(10)
            .collect();
        baseline += usize::from(targets.iter().any(|t| top.contains(t)));
        asked += 1;
    }
    assert!(asked >= 100, "only {asked} later baskets of two or more");
    assert!(from_rules > 0, "no recommendation came from a rule");
    let (hit_rate, baseline_rate) = (ours as f64 / asked as f64, baseline as f64 / asked as f64);
    eprintln!(
        "hit rate at 10 over {asked} later baskets: Recommend {hit_rate:.3}, popularity {baseline_rate:.3}"
    );
    assert!(
        hit_rate > baseline_rate,
        "Recommend {hit_rate:.3} does not beat popularity {baseline_rate:.3}"
    );

    // Nobody: no history, no cart: the popular products, each saying so.
    let answer = scoring
        .recommend(request("nobody-at-all", &[], at))
        .await
        .expect("recommends")
        .into_inner();
    assert_eq!(answer.recommendations.len(), 10);
    let got: HashSet<&str> = answer
        .recommendations
        .iter()
        .map(|r| r.product.as_str())
        .collect();
    let expected: HashSet<&str> = popular.iter().take(10).map(String::as_str).collect();
    assert_eq!(got, expected);
    assert!(
        answer
            .recommendations
            .iter()
            .all(|r| matches!(r.why, Some(pb::recommendation::Why::Popular(_))))
    );

    // Bad input, each named.
    let cases: Vec<(pb::RecommendRequest, Code, &str)> = vec![
        (
            pb::RecommendRequest {
                rules: "no-such-rules".into(),
                ..request("u1", &[], at)
            },
            Code::NotFound,
            "no-such-rules",
        ),
        (
            pb::RecommendRequest {
                top_n: 101,
                ..request("u1", &[], at)
            },
            Code::InvalidArgument,
            "top_n",
        ),
        (
            pb::RecommendRequest {
                rules: "purchase".into(),
                ..request("u1", &[], at)
            },
            Code::InvalidArgument,
            "not an association rule set",
        ),
        (
            pb::RecommendRequest {
                model: "rules".into(),
                ..request("u1", &[], at)
            },
            Code::InvalidArgument,
            "use it with Recommend",
        ),
        (request("", &[], at), Code::InvalidArgument, "user"),
        (
            request("u1", &vec!["p1"; 101], at),
            Code::InvalidArgument,
            "cart",
        ),
        (
            request("u1", &["p1", &"x".repeat(300)], at),
            Code::InvalidArgument,
            "cart[1]",
        ),
    ];
    for (bad, code, named) in cases {
        let error = scoring.recommend(bad).await.expect_err("refused");
        assert_eq!(error.code(), code, "{error:?}");
        assert!(error.message().contains(named), "{error:?}");
    }
    // A rule set is not a scoring model.
    let mut score = common::fraud_payment(10.0);
    score.model = "rules".into();
    let error = scoring
        .score(score)
        .await
        .expect_err("a rule set does not score");
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(error.message().contains("rule set"), "{error:?}");

    // The same call as a V2 model: the rule set over the Open Inference Protocol.
    let (user, carted) = (
        later_baskets.users[0].clone(),
        later_baskets.products[0].clone(),
    );
    let native = scoring
        .recommend(request(&user, &[&carted], at))
        .await
        .expect("recommends")
        .into_inner();
    let bytes = |name: &str, values: &[&str]| v2pb::model_infer_request::InferInputTensor {
        name: name.into(),
        datatype: "BYTES".into(),
        shape: vec![values.len() as i64],
        contents: Some(v2pb::InferTensorContents {
            bytes_contents: values
                .iter()
                .map(|v| bytes::Bytes::copy_from_slice(v.as_bytes()))
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let parameters = |time: i64| {
        [("event_time_ms", time), ("top_n", 10)]
            .into_iter()
            .map(|(name, value)| {
                (
                    name.to_string(),
                    v2pb::InferParameter {
                        parameter_choice: Some(v2pb::infer_parameter::ParameterChoice::Int64Param(
                            value,
                        )),
                    },
                )
            })
            .collect()
    };
    let mut inference = GrpcInferenceServiceClient::new(server.channel().await);
    let answer = inference
        .model_infer(v2pb::ModelInferRequest {
            model_name: "rules".into(),
            inputs: vec![bytes("user", &[&user]), bytes("cart", &[&carted])],
            parameters: parameters(at),
            ..Default::default()
        })
        .await
        .expect("V2 recommends")
        .into_inner();
    let output = |name: &str| {
        answer
            .outputs
            .iter()
            .find(|o| o.name == name)
            .and_then(|o| o.contents.clone())
            .unwrap_or_else(|| panic!("output {name}"))
    };
    let products: Vec<String> = output("product")
        .bytes_contents
        .iter()
        .map(|b| String::from_utf8_lossy(b).to_string())
        .collect();
    let native_products: Vec<String> = native
        .recommendations
        .iter()
        .map(|r| r.product.clone())
        .collect();
    assert_eq!(products, native_products);
    let native_probabilities: Vec<f64> = native
        .recommendations
        .iter()
        .map(|r| r.probability)
        .collect();
    assert_eq!(output("probability").fp64_contents, native_probabilities);
    assert_eq!(output("reasons").bytes_contents.len(), products.len());
    let refused = inference
        .model_infer(v2pb::ModelInferRequest {
            model_name: "rules".into(),
            inputs: vec![bytes("cart", &[&carted])],
            ..Default::default()
        })
        .await
        .expect_err("no user");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("user"), "{refused:?}");

    // The artifact is a model version like the others.
    let list = registry
        .list_models(pb::ListModelsRequest {})
        .await
        .expect("lists")
        .into_inner();
    let rules = list
        .models
        .iter()
        .find(|m| m.name == "rules")
        .expect("rules listed");
    assert_eq!(rules.family, "association_rules");
    assert!(rules.serving);
    server.stop().await;
}
