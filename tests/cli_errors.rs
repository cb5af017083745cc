//! The command line as a new user meets it: errors that say what went wrong, and the
//! habits of other command-line tools (an address without `http://`, a pipe to `head`).

mod common;

use std::process::{Command, Stdio};

/// `streamscore models --target <target> <args>` with stdout a pipe nobody reads
/// (closed before the command writes, as `| head -1` is once it has its line).
fn models_into_closed_pipe(target: &str, args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_streamscore"))
        .args(["models", "--target", target])
        .args(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run the CLI")
}

#[test]
fn a_closed_pipe_ends_the_command_quietly_and_an_address_needs_no_scheme() {
    let dir = tempfile::tempdir().expect("dir");
    let (mut server, url) = common::spawn_server(dir.path());
    // As the server prints it, and as a user types it: without http://.
    let bare = url.trim_start_matches("http://").to_string();
    for args in [&["list"][..], &["show", "fraud"][..]] {
        let output = models_into_closed_pipe(&bare, args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        // Before: "error: Broken pipe (os error 32)" and exit 1 (and, without http://,
        // "transport error").
        assert!(output.status.success(), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
    server.kill().ok();
    server.wait().ok();
}

#[test]
fn a_server_that_is_not_there_is_named_with_the_reason() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let output = Command::new(env!("CARGO_BIN_EXE_streamscore"))
        .args(["models", "--target", &format!("127.0.0.1:{port}"), "list"])
        .output()
        .expect("run the CLI");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!("cannot connect to http://127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(stderr.to_lowercase().contains("refused"), "{stderr}");
}

/// A settings file with a typo in a key, in a relative path, and a variable with single
/// underscores: the error names the key as written and the file's absolute path
/// (before: `for key "default.models.watch_intervall" in ../bad.toml TOML file`), and
/// the variable is warned about with its right spelling (before: silently ignored).
#[test]
fn a_settings_typo_names_the_key_and_the_whole_path_and_a_misspelt_variable_is_warned() {
    let dir = tempfile::tempdir().expect("dir");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).expect("work dir");
    std::fs::write(
        dir.path().join("bad.toml"),
        "[models]\nwatch_intervall = \"5s\"\n",
    )
    .expect("config");
    let output = Command::new(env!("CARGO_BIN_EXE_streamscore"))
        .args(["serve", "--config", "../bad.toml", "--data-dir", "data"])
        .current_dir(&work)
        .env("STREAMSCORE_MODELS_SHADOW", "true")
        .output()
        .expect("run the CLI");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let absolute = std::fs::canonicalize(dir.path().join("bad.toml")).expect("path");
    assert!(
        stderr.contains("models.watch_intervall: unknown field"),
        "{stderr}"
    );
    assert!(stderr.contains(&absolute.display().to_string()), "{stderr}");
    assert!(!stderr.contains("default."), "{stderr}");
    assert!(
        stderr.contains("STREAMSCORE_MODELS_SHADOW is not read")
            && stderr.contains("STREAMSCORE__MODELS__SHADOW"),
        "{stderr}"
    );
}

/// A model name with a typo, or a version that does not exist, is answered with what
/// does (before: `no model 'frud' (list the models with ListModels)`).
#[test]
fn a_mistyped_model_gets_a_did_you_mean_and_a_missing_version_the_versions() {
    let dir = tempfile::tempdir().expect("dir");
    let (mut server, url) = common::spawn_server(dir.path());
    let show = |model: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_streamscore"))
            .args(["models", "--target", &url, "show", model])
            .output()
            .expect("run the CLI");
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).to_string()
    };
    let typo = show("frud");
    assert!(typo.contains("did you mean 'fraud'?"), "{typo}");
    // The server's message, then its code, not tonic's debug form.
    assert!(typo.contains("[NOT_FOUND]"), "{typo}");
    assert!(!typo.contains("Some requested entity"), "{typo}");
    let version = show("fraud@9");
    assert!(version.contains("loaded versions: fraud@1"), "{version}");
    // A time is printed in ISO 8601 beside its ms (before: `as of 1796571683411 ms`).
    let output = Command::new(env!("CARGO_BIN_EXE_streamscore"))
        .args(["features", "--target", &url, "--as-of-ms", "1795719516250"])
        .args(["user", "u1"])
        .output()
        .expect("run the CLI");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("as of 2026-11-26T18:58:36.250Z = 1795719516250 ms"),
        "{stdout}"
    );
    server.kill().ok();
    server.wait().ok();
}

/// A country written out is refused by name, at `score` and at ingest alike. Before,
/// `--billing-country Germany` was accepted and counted as a country that matched no
/// ip: a mismatch that raised the payment's risk.
#[test]
fn a_country_that_is_not_a_two_letter_code_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("dir");
    let (mut server, url) = common::spawn_server(dir.path());
    let score = |country: &str| {
        Command::new(env!("CARGO_BIN_EXE_streamscore"))
            .args(["score", "--target", &url, "--user", "u1", "--card", "c1"])
            .args(["--amount", "20", "--ip-country", "DE"])
            .args(["--billing-country", country])
            .output()
            .expect("run the CLI")
    };
    let refused = score("Germany");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains(
            "strings.billing_country: 'GERMANY' is not a two-letter ISO 3166-1 country code (e.g. DE, US, GB)"
        ) && stderr.contains("[INVALID_ARGUMENT]"),
        "{stderr}"
    );
    for accepted in ["de", " DE"] {
        let output = score(accepted);
        assert!(
            output.status.success(),
            "{accepted:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let history = dir.path().join("countries.csv");
    std::fs::write(
        &history,
        "event_id,event_type,event_time_ms,user,card,amount,billing_country,ip_country\n\
         p1,payment,1796000000000,u1,c1,20,DE,DE\n\
         p2,payment,1796000000001,u1,c1,20,DEU,DE\n",
    )
    .expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_streamscore"))
        .args(["ingest", "--target", &url])
        .arg(&history)
        .output()
        .expect("run the CLI");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stdout}{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains(
            "1 refused: strings.billing_country: '…' is not a two-letter ISO 3166-1 country code"
        ),
        "{stdout}{stderr}"
    );
    server.kill().ok();
    server.wait().ok();
}

/// A rule set bigger than a server loads (`models.max_artifact_bytes`) is refused with
/// its size before anything is written. Before, it was written without a word and the
/// server refused it at load.
#[test]
fn a_rule_set_over_the_load_limit_is_refused_with_its_size_before_writing() {
    let dir = tempfile::tempdir().expect("dir");
    let baskets = dir.path().join("baskets.txt");
    let lines: String = (0..200)
        .map(|i| format!("p{} p{} p{}\n", i % 20, (i + 1) % 20, (i + 7) % 20))
        .collect();
    std::fs::write(&baskets, lines).expect("baskets");
    let models = dir.path().join("models");
    let mine = |limit: &str| {
        Command::new(env!("CARGO_BIN_EXE_streamscore"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["mine", "rules", "--config", "training/rules.toml"])
            .arg("--baskets")
            .arg(&baskets)
            .arg("--models-dir")
            .arg(&models)
            .args(["--max-artifact-bytes", limit])
            .output()
            .expect("run the CLI")
    };
    let refused = mine("4096");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("more than the 4096 a server loads (models.max_artifact_bytes"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was written"), "{stderr}");
    assert!(!models.join("rules").exists(), "nothing was written");
    // The same within the default limit: written, and the size that was refused is
    // the size on disk.
    let written = mine("67108864");
    assert!(
        written.status.success(),
        "{}",
        String::from_utf8_lossy(&written.stderr)
    );
    let size = std::fs::metadata(models.join("rules/rules-v1.json"))
        .expect("the artifact")
        .len();
    assert!(
        stderr.contains(&format!("would be {size} bytes")),
        "{size}: {stderr}"
    );
}
