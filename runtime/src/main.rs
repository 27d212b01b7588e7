use std::process::ExitCode;

use aether_runtime::fetch::BIN_DIR;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "aether-runtime", version, about = "Aether's in-pod runtime")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Download, verify and extract an artifact (the fetch container).
    Fetch(Box<aether_runtime::fetch::FetchArgs>),
    /// Copy this binary to INTO/bin, for the app container (the fetch container's
    /// postStart hook: the kubelet starts the next container only after it).
    Install {
        #[arg(long, default_value = "/aether")]
        into: std::path::PathBuf,
    },
    /// Run the app, forwarding signals; exits with its code (the main container).
    Supervise {
        /// The volume the fetch container fills: start the app only once it marked
        /// the code there ready.
        #[arg(long)]
        code: Option<std::path::PathBuf>,
        /// Run the app in this directory (once the code is there: it is in the tree
        /// the fetch container extracts).
        #[arg(long, requires = "code")]
        workdir: Option<std::path::PathBuf>,
        #[command(flatten)]
        health: aether_runtime::health::HealthArgs,
        /// The app's argv, e.g. `node server.js`.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        argv: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Fetch(args) => aether_runtime::fetch::main(*args).await,
        Command::Install { into } => match aether_runtime::fetch::install_self(&into.join(BIN_DIR)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("aether-runtime: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Supervise {
            code,
            workdir,
            health,
            argv,
        } => aether_runtime::supervise::run(code.as_deref(), workdir.as_deref(), &health, &argv).await,
    }
}
