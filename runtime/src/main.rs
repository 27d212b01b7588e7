use std::process::ExitCode;

/// The runtime is a static musl binary, and musl's allocator is slow for the many
/// small allocations of an unpack and serialises its writer threads on one lock:
/// with mimalloc, verify + unpack of the example's dependencies took 229 ms
/// instead of 276 ms (`make bench`, musl build; glibc's: 239 ms), for ~16 MiB more
/// peak memory (28 MiB instead of 13: the fetch container's limit has 128 MiB above
/// what it extracts).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
