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

/// A models directory holding the shipped purchase model, aliased `purchase`.
fn models_with_purchase() -> tempfile::TempDir {
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
    models
}

/// Rules, then the popular fill; rules by confidence, lift, support; the fill by
/// popularity; the purchase probability only between equals (the README's order).
fn assert_ranked_by_evidence(items: &[pb::Recommendation]) {
    use pb::recommendation::Why;
    let evidence = |item: &pb::Recommendation| match &item.why {
        Some(Why::Rule(rule)) => (0, -rule.confidence, -rule.lift, -rule.support),
        Some(Why::Popular(popular)) => (1, -popular.support, 0.0, 0.0),
        None => panic!("a recommendation without a reason: {item:?}"),
    };
    for pair in items.windows(2) {
        let (a, b) = (evidence(&pair[0]), evidence(&pair[1]));
        assert!(
            a < b || (a == b && pair[0].probability >= pair[1].probability),
            "not in evidence order: {:?} before {:?}",
            pair[0],
            pair[1]
        );
    }
}

/// What ranking by rule confidence alone recommends, computed from the artifact's JSON:
/// each product proposed by a rule whose whole antecedent is in `context` and that is
/// not `excluded`, by its most confident rule (then lift, support, id); the popular
/// products fill up to `k`.
fn by_confidence(
    artifact: &serde_json::Value,
    context: &[String],
    excluded: &[String],
    k: usize,
) -> Vec<String> {
    let family = &artifact["body"]["model"]["family"];
    let number = |value: &serde_json::Value| value.as_f64().expect("a number");
    let names = |value: &serde_json::Value| -> Vec<String> {
        value
            .as_array()
            .expect("a list")
            .iter()
            .map(|p| p.as_str().expect("a product").to_string())
            .collect()
    };
    let mut best: BTreeMap<String, (f64, f64, f64)> = BTreeMap::new();
    for rule in family["rules"].as_array().expect("rules") {
        if !names(&rule["antecedent"])
            .iter()
            .all(|p| context.contains(p))
        {
            continue;
        }
        let strength = (
            number(&rule["confidence"]),
            number(&rule["lift"]),
            number(&rule["support"]),
        );
        for product in names(&rule["consequent"]) {
            if excluded.contains(&product) {
                continue;
            }
            let held = best.entry(product).or_insert(strength);
            if strength > *held {
                *held = strength;
            }
        }
    }
    let mut ranked: Vec<(String, (f64, f64, f64))> = best.into_iter().collect();
    // Strongest first; the BTreeMap gave ids in order, and the sort is stable.
    ranked.sort_by(|a, b| b.1.partial_cmp(&a.1).expect("finite"));
    let mut out: Vec<String> = ranked.into_iter().map(|(p, _)| p).take(k).collect();
    for popular in family["popular"].as_array().expect("popular") {
        if out.len() >= k {
            break;
        }
        let product = popular["product"].as_str().expect("a product").to_string();
        if !excluded.contains(&product) && !out.contains(&product) {
            out.push(product);
        }
    }
    out
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("read")).expect("JSON")
}

fn products(answer: &pb::RecommendResponse) -> Vec<String> {
    answer
        .recommendations
        .iter()
        .map(|r| r.product.clone())
        .collect()
}

/// The baskets of two or more products among `events`, as carted.
fn carts_of_two_or_more(events: &[RawEvent]) -> Vec<streamscore::mining::ClosedCart> {
    let mut carts = Vec::new();
    streamscore::mining::closed_carts(events, DAY_MS, |cart| {
        if cart.carted.len() >= 2 {
            carts.push(cart);
        }
    });
    carts
}

/// A shopper back a month after their last visit (most real shoppers): every window
/// the purchase model reads is empty, so it gives every candidate the same
/// probability. Recommend must then rank its candidates exactly as their rules'
/// confidence does (before, the ties went by product id, and the hit rate fell).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_signal_recommend_ranks_exactly_by_rule_confidence() {
    let events = history();
    let split = events.len() * 7 / 10;
    let (earlier, later) = events.split_at(split);
    let last = events.last().expect("events").event_time_ms;
    assert!(
        last < streamscore::time::now_ms() - 31 * DAY_MS,
        "the history must end a month before now"
    );
    let models = models_with_purchase();
    let history_file = models.path().join("history.jsonl");
    common::write_jsonl(&history_file, earlier);
    common::mine_rules(&history_file, models.path());
    let artifact = read_json(&models.path().join("rules/rules-v1.json"));
    let server = common::TestServer::start_promoted(models.path(), "rules", "rules@1").await;
    let mut scoring = ScoringClient::new(server.channel().await);
    streamscore::api::client::stream_events(
        server.channel().await,
        events.clone().into_iter(),
        500,
        2,
        |_| {},
    )
    .await
    .expect("ingests the history");

    let (mut asked, mut hits, mut reference_hits, mut from_rules) = (0, 0, 0, 0);
    for cart in carts_of_two_or_more(later).iter().take(ASKED) {
        let carted = cart.carted[0].1.clone();
        let hidden: Vec<&str> = cart.carted[1..].iter().map(|(_, p)| p.as_str()).collect();
        // Now: a month and more after the user's last event.
        let answer = scoring
            .recommend(request(&cart.user, &[&carted], 0))
            .await
            .expect("recommends")
            .into_inner();
        assert_eq!(
            answer.context,
            std::slice::from_ref(&carted),
            "nothing seen lately"
        );
        let first = answer.recommendations.first().map(|r| r.probability);
        assert!(
            answer
                .recommendations
                .iter()
                .all(|r| Some(r.probability) == first),
            "the model has no signal now: {:?}",
            answer.recommendations
        );
        let expected = by_confidence(&artifact, &answer.context, &answer.excluded, 10);
        let got = products(&answer);
        assert_eq!(got, expected, "{} with {carted} in the cart", cart.user);
        let hit = |list: &[String]| usize::from(list.iter().any(|p| hidden.contains(&p.as_str())));
        hits += hit(&got);
        reference_hits += hit(&expected);
        from_rules += answer
            .recommendations
            .iter()
            .filter(|r| matches!(r.why, Some(pb::recommendation::Why::Rule(_))))
            .count();
        asked += 1;
    }
    assert!(asked >= 100, "only {asked} later baskets of two or more");
    assert!(
        from_rules >= asked,
        "rules proposed too little: {from_rules}"
    );
    assert_eq!(hits, reference_hits);
    eprintln!(
        "hit rate at 10 with no signal: {:.3} over {asked} queries, the same as by confidence",
        hits as f64 / asked as f64
    );
    server.stop().await;
}

/// `mine evaluate` replays the history and asks the live call's code at each later
/// basket; the running server, fed the same history and asked the same queries at the
/// same moments, must answer exactly the same lists, so the evaluation's figures are
/// the live call's. Here the model has signal (a query is asked while the user shops):
/// Recommend's hit rate at 10 is at least that of its candidates by rule confidence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mine_evaluate_scores_what_the_live_call_answers() {
    use streamscore::mining::evaluate::{Answered, Hide};
    let events = history();
    let models = models_with_purchase();
    let history_file = models.path().join("history.jsonl");
    common::write_jsonl(&history_file, &events);
    let (queries_file, report_file) = (
        models.path().join("queries.jsonl"),
        models.path().join("report.json"),
    );
    let evaluated = std::process::Command::new(env!("CARGO_BIN_EXE_streamscore"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "mine",
            "evaluate",
            "--config",
            "training/rules.toml",
            "--save-rules",
        ])
        .arg("--events")
        .arg(&history_file)
        .arg("--models-dir")
        .arg(models.path())
        .arg("--queries")
        .arg(&queries_file)
        .arg("--report")
        .arg(&report_file)
        .output()
        .expect("runs mine evaluate");
    let stdout = String::from_utf8_lossy(&evaluated.stdout);
    assert!(
        evaluated.status.success(),
        "{}",
        String::from_utf8_lossy(&evaluated.stderr)
    );
    assert!(stdout.contains("| served (Recommend) |"), "{stdout}");
    let queries: Vec<Answered> = std::fs::read_to_string(&queries_file)
        .expect("queries")
        .lines()
        .map(|line| serde_json::from_str(line).expect("a query"))
        .collect();
    let report = read_json(&report_file);
    let artifact = read_json(&models.path().join("rules/rules-v1.json"));

    let server = common::TestServer::start_promoted(models.path(), "rules", "rules@1").await;
    let mut scoring = ScoringClient::new(server.channel().await);

    // Replayed as the evaluation does: each query once every event up to its moment is
    // acknowledged, before any later one is sent.
    let mut live: Vec<LiveAnswer> = Vec::new();
    let (mut next, mut sent, mut with_signal) = (0, 0, 0);
    while next < queries.len() || sent < events.len() {
        let until = queries.get(next).map_or(i64::MAX, |q| q.case.at_ms);
        let upto = sent + events[sent..].partition_point(|e| e.event_time_ms <= until);
        if upto > sent {
            streamscore::api::client::stream_events(
                server.channel().await,
                // Owned: the stream sends from its own task.
                Vec::from(&events[sent..upto]).into_iter(),
                500,
                2,
                |_| {},
            )
            .await
            .expect("ingests");
            sent = upto;
        }
        while let Some(query) = queries.get(next).filter(|q| q.case.at_ms == until) {
            let cart: Vec<&str> = query.case.cart.iter().map(String::as_str).collect();
            let answer = scoring
                .recommend(request(&query.case.user, &cart, query.case.at_ms))
                .await
                .expect("recommends")
                .into_inner();
            let got = products(&answer);
            assert_eq!(
                got, query.served,
                "query {next}: {} at {} with {:?}",
                query.case.user, query.case.at_ms, query.case.cart
            );
            let first = answer.recommendations.first().map(|r| r.probability);
            with_signal += usize::from(
                answer
                    .recommendations
                    .iter()
                    .any(|r| Some(r.probability) != first),
            );
            live.push(LiveAnswer {
                by_confidence: by_confidence(&artifact, &answer.context, &answer.excluded, 10),
                served: got,
            });
            next += 1;
        }
    }
    assert!(queries.len() >= 200, "only {} queries", queries.len());
    assert!(
        with_signal * 2 > queries.len(),
        "the model had signal in only {with_signal} of {} answers",
        queries.len()
    );
    // The evaluation's hit rates are the live answers' (computed here, not by it), and
    // as served they are at least those of the same candidates by rule confidence.
    for (at, mode) in report["modes"]
        .as_array()
        .expect("modes")
        .iter()
        .enumerate()
    {
        let hide = [Hide::Rest, Hide::Last][at];
        let cases: Vec<usize> = (0..queries.len())
            .filter(|i| queries[*i].case.hide == hide)
            .collect();
        let rate = |pick: fn(&LiveAnswer) -> &[String]| {
            let hits = cases
                .iter()
                .filter(|i| {
                    pick(&live[**i])
                        .iter()
                        .take(10)
                        .any(|p| queries[**i].case.hidden.contains(p))
                })
                .count();
            hits as f64 / cases.len() as f64
        };
        let (served, confidence) = (rate(|l| &l.served), rate(|l| &l.by_confidence));
        let reported = number_at(mode, &["served", "hit_rate", "10"]);
        assert!(
            (served - reported).abs() < 1e-12,
            "{hide:?}: live {served} against the evaluation's {reported}"
        );
        let reported_confidence = number_at(mode, &["by_confidence", "hit_rate", "10"]);
        assert!(
            (confidence - reported_confidence).abs() < 1e-12,
            "{hide:?}: by confidence {confidence} against the evaluation's {reported_confidence}"
        );
        assert!(
            served >= confidence,
            "{hide:?}: served {served} below rule confidence {confidence}"
        );
        eprintln!("{hide:?}: hit rate at 10 served {served:.4}, by confidence {confidence:.4}");
    }
    server.stop().await;
}

/// What the server answered a query, and its candidates by rule confidence.
struct LiveAnswer {
    served: Vec<String>,
    by_confidence: Vec<String>,
}

fn number_at(value: &serde_json::Value, path: &[&str]) -> f64 {
    path.iter()
        .fold(value, |value, key| &value[*key])
        .as_f64()
        .unwrap_or_else(|| panic!("{path:?} in {value}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recommend_beats_popularity_and_says_why() {
    let events = history();
    let split = events.len() * 7 / 10;
    let (earlier, later) = events.split_at(split);
    let at = earlier.last().expect("events").event_time_ms;

    // Mined from the earlier history into a models dir beside the shipped purchase model.
    let models = models_with_purchase();
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
        assert_ranked_by_evidence(&answer.recommendations);
        for item in &answer.recommendations {
            assert_ne!(item.product, carted, "the cart is never recommended back");
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
    let unknown: Vec<String> = output("unknown_products")
        .bytes_contents
        .iter()
        .map(|b| String::from_utf8_lossy(b).to_string())
        .collect();
    assert_eq!(unknown, native.unknown_products);
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
