fn main() {
    let cli = aether_cli::args::Cli::parse_invoked();
    if let Err(err) = aether_cli::run(cli) {
        let code = err.exit_code();
        eprintln!("{:?}", miette::Report::new(err));
        std::process::exit(code);
    }
}
