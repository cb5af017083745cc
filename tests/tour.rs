//! The README's quick tour, its first steps as written (read from the README, run with
//! the built binary against a server on free ports): the simulated traffic goes in,
//! the ordinary payment is allowed and the new customer's is reviewed or blocked, with
//! reasons. Before the simulation's default matched the shipped models' training
//! traffic (one session a minute, not every 4 s), the ordinary payment scored 1.0 and
//! was blocked.

mod common;

use std::process::Command;

/// The tour's commands (after `cargo run --release --`) whose first words are `start`.
fn tour_commands(start: &str) -> Vec<Vec<String>> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let tour = readme
        .split("## Quick tour")
        .nth(1)
        .and_then(|rest| rest.split("```sh").nth(1))
        .and_then(|block| block.split("```").next())
        .expect("the quick tour's sh block");
    tour.lines()
        .filter_map(|line| line.trim().strip_prefix("cargo run --release -- "))
        .filter(|command| command.starts_with(start))
        .map(|command| command.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// Runs a tour command against the server at `url` (in place of the default address).
fn run(mut args: Vec<String>, url: &str) -> String {
    match args.iter().position(|arg| arg == "--target") {
        Some(at) => args[at + 1] = url.to_string(),
        None => args.extend(["--target".to_string(), url.to_string()]),
    }
    let output = Command::new(env!("CARGO_BIN_EXE_streamscore"))
        .args(&args)
        .output()
        .expect("run the CLI");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{args:?}: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    text
}

#[test]
fn the_tours_ordinary_payment_is_allowed_and_the_new_customers_is_not() {
    let dir = tempfile::tempdir().expect("dir");
    let (mut server, url) = common::spawn_server(dir.path());
    let simulate = tour_commands("simulate --events 100000");
    assert_eq!(simulate.len(), 1, "{simulate:?}");
    let streamed = run(simulate[0].clone(), &url);
    assert!(streamed.contains("100000 accepted"), "{streamed}");

    let scores = tour_commands("score --user");
    let (ordinary, new_customer) = (&scores[0], &scores[1]);
    assert!(
        ordinary.join(" ").contains("--user u1 --card c2"),
        "{ordinary:?}"
    );
    assert!(
        new_customer.join(" ").contains("--user u-new"),
        "{new_customer:?}"
    );
    let answer = run(ordinary.clone(), &url);
    assert!(answer.contains("-> allow"), "{answer}");
    let answer = run(new_customer.clone(), &url);
    assert!(
        answer.contains("-> review") || answer.contains("-> block"),
        "{answer}"
    );
    // Reasons: one line per feature, "+/-contribution name = value".
    let reasons = answer.lines().filter(|line| line.contains(" = ")).count();
    assert_eq!(reasons, 5, "{answer}");
    server.kill().ok();
    server.wait().ok();
}
