//! The `aether` CLI. `main.rs` only parses and maps errors to exit codes; each
//! command lives in `commands/`, the pack pipeline in `pack`.

pub mod args;
pub mod cluster;
pub mod commands;
pub mod errors;
pub mod install;
pub mod pack;
pub mod printer;
pub mod project;
pub mod sbom;
pub mod tools;
pub mod upload;

use args::{Cli, Command, ConfigCommand, KeysCommand};
use errors::CliError;
use printer::Printer;

pub fn run(cli: Cli) -> Result<(), CliError> {
    let printer = Printer::new(cli.global.output, cli.global.quiet);
    match &cli.command {
        Command::Pack(args) => commands::pack::run(args, &cli.global, &printer).map(|_| ()),
        Command::Push(args) => block_on(commands::push::run(args, &cli.global, &printer)).map(|_| ()),
        Command::Dev(args) => block_on(commands::dev::run(args, &cli.global, &printer)),
        Command::Status(args) => block_on(commands::status::run(args, &cli.global, &printer)),
        Command::Apps => block_on(commands::apps::run(&cli.global, &printer)),
        Command::Previews(args) => block_on(commands::previews::run(args, &cli.global, &printer)),
        Command::Scale(args) => block_on(commands::scale::run(args, &cli.global, &printer)),
        Command::Logs(args) => block_on(commands::logs::run(args, &cli.global, &printer)),
        Command::Releases(args) => block_on(commands::releases::list(args, &cli.global, &printer)),
        Command::Rollback(args) => block_on(commands::releases::rollback(args, &cli.global, &printer)),
        Command::Config(ConfigCommand::Set(args)) => {
            block_on(commands::config::set(args, &cli.global, &printer))
        }
        Command::Config(ConfigCommand::Unset(args)) => {
            block_on(commands::config::unset(args, &cli.global, &printer))
        }
        Command::Config(ConfigCommand::Get(args)) => {
            block_on(commands::config::get(args, &cli.global, &printer))
        }
        Command::Delete(args) => block_on(commands::delete::run(args, &cli.global, &printer)),
        Command::Completions(args) => {
            commands::completions::run(args);
            Ok(())
        }
        Command::Keys(KeysCommand::Generate(args)) => commands::keys::generate(args, &printer),
        Command::Keys(KeysCommand::Show(args)) => commands::keys::show(args, &printer),
    }
}

fn block_on<T>(future: impl Future<Output = Result<T, CliError>>) -> Result<T, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::io("starting the async runtime"))?
        .block_on(future)
}
