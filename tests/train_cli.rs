//! `streamscore train` as a user runs it: flags win over the training config and are
//! recorded, a flag no family takes is refused, and the artifact and the report say
//! what the version was trained on (hyper-parameters after defaults, dates, class
//! counts, operating points, decision rates by segment).

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_streamscore");

/// A separable table a logistic model learns: risk rises with `amount`; customers
/// without history (empty `user_age_seconds`) and requests without ip are both present.
fn write_table(path: &Path) {
    let mut text = String::from("event_id,time_ms,amount,user_age_seconds,req_has_ip,label\n");
    for i in 0..400u32 {
        let amount = f64::from(i % 100);
        // Positives at high amounts, with some noise so the classes overlap.
        let label = u8::from(amount > 80.0 || i % 37 == 0);
        let age = if i % 4 == 0 {
            String::new()
        } else {
            (i * 100).to_string()
        };
        let has_ip = u8::from(i % 5 != 0);
        text += &format!(
            "e{i},{},{amount},{age},{has_ip},{label}\n",
            1_767_225_600_000i64 + i64::from(i) * 60_000
        );
    }
    std::fs::write(path, text).unwrap();
}

fn train(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("train")
        .arg("--table")
        .arg(dir.join("table.csv"))
        .arg("--models-dir")
        .arg(dir.join("models"))
        .arg("--created-at-ms")
        .arg("1767225600000")
        .args(args)
        .output()
        .unwrap()
}

fn artifact(dir: &Path, version: u32) -> serde_json::Value {
    let path = dir.join(format!("models/risk/risk-v{version}.json"));
    let value: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    value.get("body").cloned().unwrap_or(value)
}

#[test]
fn flags_win_over_the_config_and_the_artifact_and_report_say_so() {
    let dir = tempfile::tempdir().unwrap();
    write_table(&dir.path().join("table.csv"));
    let config = dir.path().join("risk.toml");
    std::fs::write(
        &config,
        "name = 'risk'\ntarget = 'fraud'\n[[family]]\nkind = 'logistic'\nl2 = 2.5\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();

    // The config alone: its l2, every other value at its default, no flags recorded.
    let plain = train(dir.path(), &["--config", config]);
    assert!(
        plain.status.success(),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    let v1 = artifact(dir.path(), 1);
    let provenance = &v1["provenance"];
    assert_eq!(provenance["hyperparameters"]["kind"], "logistic");
    assert_eq!(provenance["hyperparameters"]["l2"], 2.5);
    assert_eq!(provenance["hyperparameters"]["max_iterations"], 500);
    assert_eq!(provenance["hyperparameters"]["positive_weight"], 1.0);
    assert_eq!(provenance["flags"], serde_json::json!([]));
    assert_eq!(provenance["holdout"], 0.25);
    assert_eq!(
        (
            provenance["train_rows"].as_u64(),
            provenance["validation_rows"].as_u64()
        ),
        (Some(300), Some(100))
    );
    let train_positives = provenance["train_positives"].as_u64().unwrap();
    let validation_positives = provenance["validation_positives"].as_u64().unwrap();
    assert!(train_positives > 0 && validation_positives > 0);
    assert_eq!(
        v1["trained_from_ms"].as_i64(),
        Some(1_767_225_600_000),
        "the first training row's time"
    );
    assert_eq!(
        provenance["validated_to_ms"].as_i64(),
        Some(1_767_225_600_000 + 399 * 60_000)
    );

    // A flag beside the config wins, is printed and is recorded.
    let flagged = train(
        dir.path(),
        &[
            "--config",
            config,
            "--l2",
            "5",
            "--positive-weight",
            "balanced",
        ],
    );
    assert!(
        flagged.status.success(),
        "{}",
        String::from_utf8_lossy(&flagged.stderr)
    );
    let stderr = String::from_utf8_lossy(&flagged.stderr);
    assert!(
        stderr.contains("flag over config: logistic.l2: 5.0 (flag) over 2.5"),
        "{stderr}"
    );
    let v2 = artifact(dir.path(), 2);
    assert_eq!(v2["provenance"]["hyperparameters"]["l2"], 5.0);
    assert_eq!(
        v2["provenance"]["hyperparameters"]["positive_weight"],
        "balanced"
    );
    let flags: Vec<String> = serde_json::from_value(v2["provenance"]["flags"].clone()).unwrap();
    assert_eq!(flags.len(), 2, "{flags:?}");
    assert!(flags[0].starts_with("logistic.l2: 5.0"), "{flags:?}");
    // A different penalty and weighting give a different model.
    assert_ne!(v1["model"], v2["model"]);

    // The report shows what was decided on.
    let report = std::fs::read_to_string(dir.path().join("models/risk/risk-v2.report.md")).unwrap();
    for expected in [
        "## Data",
        "2026-01-01 00:00:00 UTC",
        &format!("{train_positives} positive"),
        "## Hyper-parameters (after defaults)",
        "| l2 | 5.0 |",
        "| positive_weight | \"balanced\" |",
        "Given as flags",
        "| threshold | score >= | precision | recall | flag rate |",
        "| review |",
        "new user (no history)",
        "no ip in the request",
        // Its plots, linked (they lie beside it).
        "## Plots",
        "![risk-v2.roc.png](risk-v2.roc.png)",
        "![risk-v2.importance.png](risk-v2.importance.png)",
        // Nothing serves in a fresh models directory: said so.
        "Nothing of this name was serving to compare with",
    ] {
        assert!(
            report.contains(expected),
            "the report lacks {expected:?}:\n{report}"
        );
    }
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("models/risk/risk-v2.report.json")).unwrap(),
    )
    .unwrap();
    let segments = json["segments"].as_array().unwrap();
    let all = &segments[0];
    assert_eq!(
        (all["segment"].as_str(), all["rows"].as_u64()),
        (Some("all"), Some(100))
    );
    // Every fourth row has no history: 25 of the 100 validation rows.
    let new = segments
        .iter()
        .find(|s| s["segment"] == "new user (no history)")
        .unwrap();
    assert_eq!(new["rows"].as_u64(), Some(25));
}

#[test]
fn a_flag_no_family_takes_is_refused_not_ignored() {
    let dir = tempfile::tempdir().unwrap();
    write_table(&dir.path().join("table.csv"));
    let config = dir.path().join("risk.toml");
    std::fs::write(
        &config,
        "name = 'risk'\ntarget = 'fraud'\n[[family]]\nkind = 'logistic'\n",
    )
    .unwrap();
    let refused = train(
        dir.path(),
        &["--config", config.to_str().unwrap(), "--max-depth", "3"],
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("--max-depth") && stderr.contains("logistic"),
        "{stderr}"
    );
    // Without a config too: --c means nothing to the default logistic family.
    let refused = train(dir.path(), &["--name", "risk", "--c", "2"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--c"));
    let refused = train(
        dir.path(),
        &["--name", "risk", "--positive-weight", "heavy"],
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("balanced"));
    assert!(
        !dir.path().join("models/risk").exists(),
        "nothing was trained"
    );
}

#[test]
fn retraining_on_the_same_data_and_settings_writes_no_new_version() {
    let dir = tempfile::tempdir().unwrap();
    write_table(&dir.path().join("table.csv"));
    let config = dir.path().join("risk.toml");
    std::fs::write(
        &config,
        "name = 'risk'\ntarget = 'fraud'\n[[family]]\nkind = 'logistic'\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let first = train(dir.path(), &["--config", config]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    // The same run again: said so, and no v2. (Before: an identical risk-v2.json.)
    let again = train(dir.path(), &["--config", config]);
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{stdout}");
    assert!(
        stdout.contains("the same model as risk@1") && stdout.contains("no new version written"),
        "{stdout}"
    );
    assert!(!dir.path().join("models/risk/risk-v2.json").exists());
    // Another setting fits another model: a new version.
    let other = train(dir.path(), &["--config", config, "--l2", "3.5"]);
    assert!(
        other.status.success(),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    assert!(dir.path().join("models/risk/risk-v2.json").exists());
}

/// The band between review and block on the hold-out: `train` prints its size, warns
/// when it is (nearly) empty (the shipped fraud model reviewed 0 of 1,000 payments), and
/// `review_rate` sizes it by workload instead.
#[test]
fn train_reports_the_review_band_and_review_rate_sizes_it() {
    let dir = tempfile::tempdir().unwrap();
    // 8,000 rows, amounts nearly all distinct (so scores seldom tie): positive above 80,
    // and one row in 37 at any amount.
    let mut text = String::from("event_id,time_ms,amount,label\n");
    for i in 0..8000u32 {
        let amount = f64::from((i * 7919) % 10_000) / 100.0;
        let label = u8::from(amount > 80.0 || i % 37 == 0);
        let time = 1_767_225_600_000i64 + i64::from(i) * 60_000;
        text += &format!("e{i},{time},{amount},{label}\n");
    }
    std::fs::write(dir.path().join("table.csv"), text).unwrap();
    let band_rows = |stdout: &str| -> usize {
        let line = stdout
            .lines()
            .find(|l| l.contains("review band:"))
            .unwrap_or_else(|| panic!("no review band line in {stdout}"));
        line.split("review band: ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let by_recall = dir.path().join("recall.toml");
    std::fs::write(
        &by_recall,
        "name = 'risk'\ntarget = 'fraud'\n[thresholds]\nblock_precision = 0.9\nreview_recall = 0.8\n[[family]]\nkind = 'logistic'\n",
    )
    .unwrap();
    let output = train(dir.path(), &["--config", by_recall.to_str().unwrap()]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stderr}");
    // 2,000 hold-out rows: recall 0.8 is reached above block, so review sits just below
    // it and reviews a row or two.
    let rows = band_rows(&stdout);
    assert!(rows < 2, "{stdout}");
    assert!(
        stderr.contains("the review band is (nearly) empty") && stderr.contains("review_rate"),
        "{stderr}"
    );
    let report = std::fs::read_to_string(dir.path().join("models/risk/risk-v1.report.md")).unwrap();
    assert!(
        report.contains("Review band: ") && report.contains("nearly) empty"),
        "{report}"
    );

    let by_rate = dir.path().join("rate.toml");
    std::fs::write(
        &by_rate,
        "name = 'risk'\ntarget = 'fraud'\n[thresholds]\nblock_precision = 0.9\nreview_rate = 0.02\n[[family]]\nkind = 'logistic'\n",
    )
    .unwrap();
    let output = train(dir.path(), &["--config", by_rate.to_str().unwrap()]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stderr}");
    // 2% of 2,000, and ties at the threshold all inside.
    let rows = band_rows(&stdout);
    assert!((40..60).contains(&rows), "{stdout}");
    assert!(!stderr.contains("review band is"), "{stderr}");
    let thresholds = artifact(dir.path(), 2)["thresholds"].clone();
    assert!(
        thresholds["review"].as_f64().unwrap() < thresholds["block"].as_f64().unwrap(),
        "{thresholds}"
    );
}

/// Several families end with one table: each version's metrics side by side. (Before,
/// four versions scrolled past with no overview.)
#[test]
fn several_families_end_with_a_summary_table() {
    let dir = tempfile::tempdir().unwrap();
    write_table(&dir.path().join("table.csv"));
    let config = dir.path().join("risk.toml");
    std::fs::write(
        &config,
        "name = 'risk'\ntarget = 'fraud'\n[[family]]\nkind = 'logistic'\n[[family]]\nkind = 'tree'\nmax_depth = 3\n",
    )
    .unwrap();
    let output = train(dir.path(), &["--config", config.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let table: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("summary: 2 families of risk"))
        .collect();
    assert_eq!(table.len(), 4, "{stdout}");
    assert!(
        table[1].starts_with("family") && table[1].contains("roc_auc"),
        "{stdout}"
    );
    for (line, (family, version)) in table[2..].iter().zip([("logistic", 1), ("tree", 2)]) {
        assert!(line.starts_with(family), "{stdout}");
        assert!(line.contains(&format!("risk@{version}")), "{stdout}");
        assert!(line.ends_with("nothing serving"), "{stdout}");
        // The metric in the table is the one printed above it for that version.
        let auc = artifact(dir.path(), version)["metrics"][0][1]
            .as_f64()
            .unwrap();
        assert!(line.contains(&format!("{auc:.4}")), "{line} {auc}");
    }
}
