//! `aether completions SHELL`: the shell's completion script, generated from the
//! same clap definitions as the parser, so it never drifts from the flags.

use clap::CommandFactory as _;

use crate::args::{Cli, CompletionsArgs};

pub fn run(args: &CompletionsArgs) {
    let mut command = Cli::command();
    // Completions attach to the `aether` command; `kubectl aether` completes
    // through kubectl's own plugin completion, not these scripts.
    clap_complete::generate(args.shell, &mut command, "aether", &mut std::io::stdout());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_completes_the_day_2_commands() {
        let mut out = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "aether",
            &mut out,
        );
        let script = String::from_utf8(out).unwrap();
        for word in [
            "complete",
            "scale",
            "logs",
            "--follow",
            "--timeout",
            "apps",
            "delete",
        ] {
            assert!(script.contains(word), "bash completion lacks {word}");
        }
    }
}
