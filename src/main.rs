//! The `streamscore` binary: parses the command line, sets up logging, runs the command.

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let cli = streamscore::cli::Cli::parse();
    let serving = matches!(cli.command, streamscore::cli::Command::Serve(_));
    match streamscore::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // `streamscore models list | head -1`: the reader has what it wanted. Quiet, as
        // other command-line tools are; a server never gets here on a client's pipe.
        Err(error) if !serving && broken_pipe(error.as_ref()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", human(error.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error as a person reads it: a server's answer is its message and then its code
/// (`... [NOT_FOUND]`), where tonic would print `code: 'Some requested entity was not
/// found', message: "..."`.
fn human(error: &(dyn std::error::Error + 'static)) -> String {
    match error.downcast_ref::<tonic::Status>() {
        Some(status) if !status.message().is_empty() => {
            format!("{} [{}]", status.message(), code_name(status.code()))
        }
        _ => error.to_string(),
    }
}

/// The gRPC name of `code` (`NOT_FOUND`), as grpcurl and the gRPC docs spell it.
fn code_name(code: tonic::Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// Whether `error`, or an error beneath it, is a write to a closed pipe.
fn broken_pipe(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        {
            return true;
        }
        cause = error.source();
    }
    false
}
