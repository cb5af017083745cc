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
