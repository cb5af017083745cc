use super::*;

fn error_of(text: &str) -> (usize, String) {
    match Definitions::from_toml(text) {
        Err(DefinitionsError::Invalid { line, message, .. }) => (line, message),
        other => panic!("expected an invalid-definitions error, got {other:?}"),
    }
}

const MINIMAL: &str = r#"
[entities]
card = {}

[events.payment]
entities = { card = "required" }
fields.amount = { type = "number", required = true, min = 0 }
"#;

#[test]
fn the_shipped_definitions_are_valid_and_rich_enough() {
    let definitions = Definitions::default_shop();
    assert!(
        definitions.features.len() >= 25,
        "only {} features",
        definitions.features.len()
    );
    for name in [
        "card_payments_10m",
        "card_amount_7d",
        "user_amount_mean_30d",
        "device_cards_24h",
        "user_product_views_1h",
    ] {
        assert!(definitions.feature_id(name).is_some(), "missing {name}");
    }
    assert_eq!(
        definitions.entities[definitions.entity_id("user_product").unwrap()]
            .parts
            .len(),
        2
    );
}

#[test]
fn the_fingerprint_follows_the_content() {
    let a = Definitions::from_toml(MINIMAL).unwrap();
    let b = Definitions::from_toml(&MINIMAL.replace("min = 0", "min = 1")).unwrap();
    assert_eq!(
        a.fingerprint,
        Definitions::from_toml(MINIMAL).unwrap().fingerprint
    );
    assert_ne!(a.fingerprint, b.fingerprint);
}

#[test]
fn syntax_errors_name_the_line() {
    let (line, message) = error_of("[entities]\ncard = {}\n\n[events.payment\n");
    assert_eq!(line, 4, "{message}");
}

#[test]
fn unknown_keys_are_refused_with_their_line() {
    let text = format!(
        "{MINIMAL}\n[[features]]\nname = \"x\"\nentity = \"card\"\nevents = [\"payment\"]\naggregation = \"count\"\nwindow = \"1h\"\nwindwo = \"2h\"\n"
    );
    let (line, message) = error_of(&text);
    assert!(message.contains("windwo"), "{message}");
    assert!(line >= 9, "line {line}: {message}");
}

#[test]
fn semantic_errors_name_the_feature_line_and_problem() {
    let cases = [
        (
            "aggregation = \"median\"\nwindow = \"1h\"",
            "unknown aggregation 'median'",
        ),
        (
            "aggregation = \"sum\"\nwindow = \"1h\"",
            "sum needs a 'field'",
        ),
        (
            "aggregation = \"sum\"\nfield = \"nope\"\nwindow = \"1h\"",
            "no number field 'nope'",
        ),
        ("aggregation = \"count\"\nwindow = \"5s\"", "at least"),
        ("aggregation = \"count\"\nwindow = \"1y\"", "unknown unit"),
        ("aggregation = \"count\"", "needs a 'window'"),
        (
            "aggregation = \"distinct_count\"\nfield = \"card\"\nwindow = \"lifetime\"",
            "bounded window",
        ),
        (
            "aggregation = \"time_since_last\"\nwindow = \"1h\"",
            "drop the window",
        ),
    ];
    for (body, expected) in cases {
        let text = format!(
            "{MINIMAL}\n[[features]]\nname = \"f\"\nentity = \"card\"\nevents = [\"payment\"]\n{body}\n"
        );
        let (line, message) = error_of(&text);
        assert!(
            message.contains(expected),
            "expected '{expected}' in '{message}'"
        );
        assert_eq!(line, 9, "{message}");
    }
    let text = format!(
        "{MINIMAL}\n[[features]]\nname = \"f\"\nentity = \"user\"\nevents = [\"payment\"]\naggregation = \"count\"\nwindow = \"1h\"\n"
    );
    assert!(error_of(&text).1.contains("unknown entity 'user'"));
    let text = format!(
        "{MINIMAL}\n[[features]]\nname = \"f\"\nentity = \"card\"\nevents = [\"refund\"]\naggregation = \"count\"\nwindow = \"1h\"\n"
    );
    assert!(error_of(&text).1.contains("unknown event type 'refund'"));
}

#[test]
fn windows_expand_into_named_features() {
    let text = format!(
        "{MINIMAL}\n[[features]]\nname = \"card_payments\"\nentity = \"card\"\nevents = [\"payment\"]\naggregation = \"count\"\nwindows = [\"10m\", \"1h\"]\n"
    );
    let definitions = Definitions::from_toml(&text).unwrap();
    let names: Vec<&str> = definitions
        .features
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(names, ["card_payments_10m", "card_payments_1h"]);
    assert_eq!(definitions.entities[0].ttl_ms, crate::time::HOUR_MS);
}

#[test]
fn recent_lists_need_k_a_text_field_and_a_window_and_stay_out_of_the_model_fingerprint() {
    // An explicit ttl: a list's window would otherwise set the card's default ttl,
    // which rightly changes the fingerprint (expiry changes what every feature reads).
    let base = MINIMAL.replace("card = {}", "card = { ttl = \"1d\" }")
        + "fields.country = { type = \"string\" }\n";
    let feature = |body: &str| {
        format!(
            "{base}[[features]]\nname = \"recent_countries\"\nentity = \"card\"\nevents = [\"payment\"]\n{body}\n"
        )
    };
    let good = "aggregation = \"recent_distinct\"\nfield = \"country\"\nwindow = \"1h\"\nk = 5";
    let with = Definitions::from_toml(&feature(good)).expect("valid");
    let without = Definitions::from_toml(&base).expect("valid");
    assert_eq!(with.features[0].k, Some(5));
    assert_eq!(
        with.fingerprint, without.fingerprint,
        "no model reads a list, so models keep loading"
    );
    assert_ne!(
        with.state_fingerprint, without.state_fingerprint,
        "the engine's state has the list"
    );
    for (body, expected) in [
        (
            "aggregation = \"recent_distinct\"\nfield = \"country\"\nwindow = \"1h\"",
            "needs 'k'",
        ),
        (
            "aggregation = \"recent_distinct\"\nfield = \"country\"\nwindow = \"1h\"\nk = 0",
            "k must be 1 to 100",
        ),
        (
            "aggregation = \"recent_distinct\"\nfield = \"country\"\nwindow = \"lifetime\"\nk = 3",
            "bounded window",
        ),
        (
            "aggregation = \"recent_distinct\"\nfield = \"amount\"\nwindow = \"1h\"\nk = 3",
            "no string field or entity 'amount'",
        ),
        (
            "aggregation = \"count\"\nwindow = \"1h\"\nk = 3",
            "'k' is for recent_distinct",
        ),
    ] {
        let (_, message) = error_of(&feature(body));
        assert!(message.contains(expected), "{message}");
    }
}
