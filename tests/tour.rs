//! The README's quick tour, end to end: every command of its `sh` block read from the
//! README and run as written with the built binary, in order, in a scratch directory
//! holding a copy of `models/` and `training/` (what "from the repository root" gives a
//! user), against a server on free ports. The server is restarted with `--shadow` where
//! the tour says so. Checked on the way: the simulated traffic goes in, the ordinary
//! payment is allowed and the new customer's reviewed or blocked with reasons, the
//! trained version is a candidate, shadow metrics count it, promote and roll back take
//! effect, and the recommendation steps answer.
//!
//! Two liberties, both said where taken: a client command gets `--target` pointed at
//! the test's server, and the closing 10 s load runs are cut to 1 s.
//!
//! Before the simulation's default matched the shipped models' training traffic (one
//! session a minute, not every 4 s), the ordinary payment scored 1.0 and was blocked.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

/// The tour's lines: commands (after `cargo run --release --`, split on whitespace),
/// `curl` lines, and comments, in order.
enum Step {
    Streamscore(Vec<String>),
    Curl(String),
    Comment(String),
}

fn tour() -> Vec<Step> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let block = readme
        .split("## Quick tour")
        .nth(1)
        .and_then(|rest| rest.split("```sh").nth(1))
        .and_then(|block| block.split("```").next())
        .expect("the quick tour's sh block");
    block
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| {
            if let Some(comment) = line.strip_prefix('#') {
                Step::Comment(comment.to_string())
            } else if let Some(command) = line.strip_prefix("cargo run --release -- ") {
                // A trailing `# ...` on a command line is a comment for the reader.
                let command = command.split(" #").next().unwrap_or(command);
                Step::Streamscore(command.split_whitespace().map(str::to_string).collect())
            } else if line.starts_with("curl ") {
                Step::Curl(line.to_string())
            } else {
                panic!("a tour line the test does not know how to run: {line}")
            }
        })
        .collect()
}

/// The server, killed when the test ends however it ends.
struct Server {
    child: Child,
    url: String,
    metrics: String,
    log: Vec<String>,
}

impl Server {
    fn start(scratch: &Path, args: &[&str]) -> Server {
        let models = scratch.join("models").display().to_string();
        let mut markers = vec!["metrics on GET /metrics", "streamscore listening"];
        if args.contains(&"--shadow") {
            markers.push("shadow scoring on");
        }
        let (mut child, log) = common::spawn_server_args_lines(
            &scratch.join("streamscore-data"),
            args,
            &[("STREAMSCORE__MODELS__DIR", &models)],
            &markers,
        );
        let field = |line: &str, after: &str, until: char| {
            line.split(after)
                .nth(1)
                .and_then(|rest| rest.split(until).next())
                .map(str::to_string)
        };
        let metrics = field(&log[0], "addr=Some(", ')');
        let url = field(&log[1], "addr=", ' ').map(|addr| format!("http://{}", addr.trim()));
        match (url, metrics) {
            (Some(url), Some(metrics)) => Server {
                child,
                url,
                metrics,
                log,
            },
            _ => {
                child.kill().ok();
                panic!("no addresses in the server's log: {log:?}")
            }
        }
    }

    fn scrape(&self) -> String {
        tokio::runtime::Runtime::new()
            .expect("a runtime")
            .block_on(common::scrape(&self.metrics))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// Client commands talk to a server: they get `--target` (the README's, replaced, or
/// the default's, added).
fn is_client(args: &[String]) -> bool {
    match args[0].as_str() {
        "simulate" => args.iter().any(|a| a == "--target"),
        "features" | "score" | "models" | "loadtest" | "recommend" => true,
        _ => false,
    }
}

/// Runs one tour command in `scratch`; returns its stdout and stderr.
fn run(mut args: Vec<String>, scratch: &Path, url: &str) -> (String, String) {
    if is_client(&args) {
        match args.iter().position(|arg| arg == "--target") {
            Some(at) => args[at + 1] = url.to_string(),
            None => args.extend(["--target".to_string(), url.to_string()]),
        }
    }
    if args[0] == "loadtest"
        && let Some(at) = args.iter().position(|arg| arg == "--duration")
        && args[at + 1] == "10s"
    {
        args[at + 1] = "1s".to_string();
    }
    let output = Command::new(env!("CARGO_BIN_EXE_streamscore"))
        .args(&args)
        .current_dir(scratch)
        .output()
        .expect("run the CLI");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    assert!(output.status.success(), "{args:?}: {stdout}{stderr}");
    (stdout, stderr)
}

/// The value of the first series of `scrape` that starts with `series`.
fn metric(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[test]
fn the_quick_tour_runs_as_written() {
    let scratch = tempfile::tempdir().expect("dir");
    let scratch = scratch.path();
    let repository = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    common::copy_dir(&repository.join("models"), &scratch.join("models"));
    common::copy_dir(&repository.join("training"), &scratch.join("training"));
    let mut server = Server::start(scratch, &[]);
    let mut checked = Vec::new();
    let mut scores = 0;
    let mut promotions = 0;
    for step in tour() {
        let args = match step {
            Step::Comment(comment) => {
                if comment.contains("-- serve --shadow") {
                    drop(server);
                    server = Server::start(scratch, &["--shadow"]);
                    // The start-up log says shadow is on, and for which candidate.
                    let shadow = &server.log[2];
                    assert!(shadow.contains("fraud@2"), "{shadow}");
                    checked.push("restarted with --shadow");
                }
                continue;
            }
            Step::Curl(line) => {
                let scrape = server.scrape();
                let wanted = line.split("grep ").nth(1).unwrap_or_default();
                if let Some(series) = wanted.strip_prefix("shadow_scores_total") {
                    assert!(series.is_empty(), "{line}");
                    let counted = metric(
                        &scrape,
                        "streamscore_shadow_scores_total{model=\"fraud\",candidate=\"2\"}",
                    );
                    assert!(counted.is_some_and(|n| n > 0.0), "{scrape}");
                    checked.push("shadow metrics");
                } else {
                    assert!(scrape.contains("streamscore_"), "{line}: {scrape}");
                }
                continue;
            }
            Step::Streamscore(args) => args,
        };
        let command = args.join(" ");
        let (stdout, stderr) = run(args, scratch, &server.url);
        match command.as_str() {
            c if c.starts_with("simulate --events 100000") => {
                assert!(stdout.contains("100000 accepted"), "{stdout}");
            }
            c if c.starts_with("score --user u1 --card c2 --amount 120 --billing") => {
                assert!(stdout.contains("-> allow"), "{command}: {stdout}");
                scores += 1;
                checked.push("ordinary payment allowed");
            }
            c if c.starts_with("score --user u-new") => {
                assert!(
                    stdout.contains("-> review") || stdout.contains("-> block"),
                    "{stdout}"
                );
                // Reasons: one line per feature, "+/-contribution name = value".
                let reasons = stdout.lines().filter(|line| line.contains(" = ")).count();
                assert_eq!(reasons, 5, "{stdout}");
                scores += 1;
                checked.push("new customer reviewed or blocked with reasons");
            }
            c if c.contains("--record") => {
                assert!(stdout.contains("recorded: 1 accepted"), "{stdout}");
            }
            c if c.starts_with("train ") => {
                assert!(
                    stdout.contains("fraud@2 is a candidate"),
                    "{stdout}{stderr}"
                );
                assert!(stdout.contains("review band:"), "{stdout}");
                assert!(!stderr.contains("review band is"), "{stderr}");
                // The report compares it with the version serving, and links its plots.
                let report =
                    std::fs::read_to_string(scratch.join("models/fraud/fraud-v2.report.md"))
                        .expect("the report");
                assert!(
                    report.contains("## Against the serving version")
                        && report.contains("fraud@1")
                        && report.contains("](fraud-v2.pr.png)"),
                    "{report}"
                );
                // The watcher loads the new file within its interval (2 s): wait for
                // it as a user reading `models list` would.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
                loop {
                    let (list, _) = run(vec!["models".into(), "list".into()], scratch, &server.url);
                    if list.lines().any(|l| l.starts_with("fraud@2 ")) {
                        break;
                    }
                    assert!(std::time::Instant::now() < deadline, "{list}");
                }
            }
            c if c.starts_with("models list") => {
                let serving = stdout
                    .lines()
                    .find(|l| l.starts_with("fraud@1 "))
                    .unwrap_or_else(|| panic!("{stdout}"));
                assert!(
                    serving.contains("serving") && serving.contains("roc_auc"),
                    "{stdout}"
                );
                if let Some(candidate) = stdout.lines().find(|l| l.starts_with("fraud@2 ")) {
                    assert!(candidate.contains("candidate"), "{stdout}");
                    checked.push("the trained version listed as a candidate");
                }
            }
            c if c.starts_with("models promote fraud@") => {
                let version = c.trim_start_matches("models promote fraud@");
                assert!(
                    stdout.contains(&format!("fraud@{version} now serves as fraud")),
                    "{stdout}"
                );
                // The next score is answered by the version promoted.
                let (answer, _) = run(
                    "score --user u1 --card c2 --amount 120"
                        .split(' ')
                        .map(str::to_string)
                        .collect(),
                    scratch,
                    &server.url,
                );
                assert!(answer.contains(&format!("(fraud@{version})")), "{answer}");
                promotions += 1;
                checked.push(if promotions == 1 {
                    "promoted"
                } else {
                    "rolled back"
                });
            }
            c if c.starts_with("recommend ") => {
                assert!(stdout.contains("p"), "{stdout}");
                checked.push("recommend");
            }
            _ => {}
        }
    }
    assert_eq!(scores, 2);
    for wanted in [
        "ordinary payment allowed",
        "new customer reviewed or blocked with reasons",
        "the trained version listed as a candidate",
        "restarted with --shadow",
        "shadow metrics",
        "promoted",
        "rolled back",
        "recommend",
    ] {
        assert!(
            checked.contains(&wanted),
            "{wanted} not checked: {checked:?}"
        );
    }
}
