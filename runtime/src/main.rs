use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "aether-runtime", version, about = "Aether's in-pod runtime")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Download, verify and extract an artifact (the init container).
    Fetch(Box<aether_runtime::fetch::FetchArgs>),
    /// Run the app, forwarding signals; exits with its code (the main container).
    Supervise {
        /// The app's argv, e.g. `node server.js`.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        argv: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Fetch(args) => aether_runtime::fetch::main(*args).await,
        Command::Supervise { argv } => aether_runtime::supervise::run(&argv).await,
    }
}
