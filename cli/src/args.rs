//! Command-line types, and nothing else: parsing lives here, behaviour in commands/.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "aether",
    version,
    about = "Run Node.js apps on Kubernetes without building images"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parse the process's arguments. Run as `kubectl-aether` (kubectl's plugin
    /// lookup), help and usage show what the user typed: `kubectl aether`.
    pub fn parse_invoked() -> Self {
        let mut command = Self::command();
        if let Some(name) = std::env::args_os().next().as_deref().and_then(plugin_name) {
            command = command.bin_name(name);
        }
        let matches = command.get_matches_mut();
        Self::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut command).exit())
    }
}

/// `kubectl foo-bar` for a program named `kubectl-foo_bar` (kubectl's plugin naming:
/// `-` separates words, `_` stands for `-`); `None` for any other name.
pub fn plugin_name(argv0: &OsStr) -> Option<String> {
    let file = std::path::Path::new(argv0).file_stem()?.to_str()?;
    let words = file.strip_prefix("kubectl-")?;
    Some(format!("kubectl {}", words.replace('-', " ").replace('_', "-")))
}

/// `300` (seconds), or a number with a unit: `300s`, `5m`, `1h`, `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const FORMS: &str = "use seconds (300) or a number with a unit: 300s, 5m, 1h, 1h30m";
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    match text.parse::<jiff::SignedDuration>() {
        Ok(d) if d.is_negative() => Err(format!("a duration cannot be negative: {FORMS}")),
        Ok(d) => Duration::try_from(d).map_err(|e| format!("{e}: {FORMS}")),
        Err(_) => Err(format!("not a duration: {FORMS}")),
    }
}

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Namespace the artifact is signed for and deployed to [default: the kubeconfig
    /// context's namespace, else "default"].
    #[arg(short = 'n', long, global = true, env = "AETHER_NAMESPACE")]
    pub namespace: Option<String>,
    /// Kubeconfig context to use [default: the current context].
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Kubeconfig file [default: $KUBECONFIG, else ~/.kube/config].
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Output format: human-readable messages on stderr, or JSON or YAML on stdout.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputFormat::Human)]
    pub output: OutputFormat,
    /// Hide progress and informational messages.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Human,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pack a Node.js project into a signed, content-addressed artifact.
    Pack(PackArgs),
    /// Pack, upload what storage lacks, deploy, and wait until the new version serves.
    Push(PushArgs),
    /// Push, then serve every save from the running pods (dev-hot mode) until Ctrl-C.
    Dev(DevArgs),
    /// An app's conditions, artifact, pods and recent events, in one view.
    Status(StatusArgs),
    /// List the apps of the namespace: ready or not, artifact, replicas, URL, age.
    Apps,
    /// List the preview environments (`aether push --preview`), with their expiry.
    Previews(PreviewsArgs),
    /// Set an app's number of pods (its scale subresource, as `kubectl scale`) and
    /// wait until they are ready.
    Scale(ScaleArgs),
    /// Print the logs of an app's pods, each line prefixed with its pod; -f follows.
    Logs(LogsArgs),
    /// The app's releases, newest first: version, state, cause, artifact, age.
    Releases(ReleasesArgs),
    /// Go back to the previous release (or --to VERSION): its artifact and its
    /// configuration, then wait until it serves.
    Rollback(RollbackArgs),
    /// The app's environment variables, plain or secret, each change a release.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Delete an app with its Deployment, Service and pods (artifacts stay until
    /// retention removes them).
    Delete(DeleteArgs),
    /// Print a shell completion script, e.g. `aether completions bash > /etc/bash_completion.d/aether`.
    Completions(CompletionsArgs),
    /// Manage signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Clone, Args)]
pub struct PackArgs {
    /// The project folder (with package.json; the lockfile may be at a workspace root above it).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// At a workspace root: the workspace package to deploy (package name or folder).
    #[arg(short = 'w', long)]
    pub workspace: Option<String>,
    /// Do not run the project's "build" script (by default it runs, with dev
    /// dependencies installed, and what it writes is packed).
    #[arg(long)]
    pub no_build: bool,
    /// Where to write the blobs and artifact.json [default: DIR/.aether/out].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// App name [default: package.json "name", as a DNS label].
    #[arg(long)]
    pub app: Option<String>,
    /// Node.js major version of the runtime: 18, 20, 22 or 24 [default: from engines.node, else this machine's].
    #[arg(long)]
    pub node: Option<u32>,
    /// Target platform of the runtime.
    #[arg(long, default_value = "linux/amd64", value_parser = ["linux/amd64", "linux/arm64"])]
    pub platform: String,
    /// C library of the runtime image.
    #[arg(long, default_value = "glibc", value_parser = ["glibc", "musl"])]
    pub libc: String,
    /// Pack without a lockfile (the artifact is then not reproducible).
    #[arg(long)]
    pub allow_no_lockfile: bool,
    /// Ed25519 private key (PKCS#8 PEM) to sign with [default: the key from `aether keys generate`].
    #[arg(long, env = "AETHER_SIGNING_KEY")]
    pub key: Option<PathBuf>,
    /// Do not sign (an app with `verify.mode: Enforce` will refuse the artifact).
    #[arg(long, conflicts_with = "key")]
    pub no_sign: bool,
    /// Cache of installed dependencies and packed deps layers.
    #[arg(long, env = "AETHER_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    #[command(flatten)]
    pub pack: PackArgs,
    /// Stop once the artifact is uploaded and verified (do not create or update the app).
    #[arg(long)]
    pub no_deploy: bool,
    /// Wait until the new version serves (the default).
    #[arg(long, overrides_with = "no_wait")]
    pub wait: bool,
    /// Return once the app points at the new artifact, without waiting for its pods.
    #[arg(long, overrides_with = "wait")]
    pub no_wait: bool,
    /// Give up waiting for the cluster after this long: 300, 300s, 5m, 1h.
    // `--timeout-seconds N`, the old name, stays a hidden alias: scripts use it, and
    // plain seconds parse alike.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration, alias = "timeout-seconds")]
    pub timeout: Duration,
    /// How blobs reach storage: `presigned` URLs from the operator (only a kubeconfig
    /// needed), or `direct` with your own bucket credentials (AETHER_S3_ENDPOINT,
    /// AETHER_S3_BUCKET, AETHER_S3_REGION, AETHER_S3_PREFIX, AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY).
    #[arg(long, value_enum, default_value_t = StorageMode::Presigned, env = "AETHER_STORAGE")]
    pub storage: StorageMode,
    /// Serve the app at https://NAME/ through the cluster's ingress (repeatable). The
    /// app keeps these hosts until a push names others.
    #[arg(long = "host", value_name = "NAME", value_parser = parse_host)]
    pub hosts: Vec<String>,
    /// The hosts' certificate: a `kubernetes.io/tls` Secret of the namespace [default:
    /// issued by the cluster's issuer, when the admin configured one].
    #[arg(long, value_name = "SECRET", requires = "hosts")]
    pub tls_secret: Option<String>,
    /// Deploy a preview environment instead: a separate app `<app>-<NAME>`, with its
    /// own URL (and, when the app has hosts, `<NAME>-<host>`), deleted with what only
    /// it used once --ttl passes. Pushing it again extends it.
    #[arg(long, value_name = "NAME", value_parser = parse_preview)]
    pub preview: Option<String>,
    /// How long a preview lives from this push: 30m, 24h, 168h.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration, requires = "preview")]
    pub ttl: Duration,
}

/// A preview's name: a short DNS label (it ends the app's name).
fn parse_preview(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 20
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s}: a preview name is up to 20 lowercase letters, digits and '-', e.g. pr-42"
        ))
    }
}

#[derive(Debug, Args)]
pub struct PreviewsArgs {
    /// Only the previews of this app.
    #[arg(long)]
    pub app: Option<String>,
}

/// A host as `spec.hosts` takes it: a lowercase DNS name, no scheme, port or path.
fn parse_host(s: &str) -> Result<String, String> {
    let host = s.trim().trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let ip = host.chars().all(|c| c.is_ascii_digit() || c == '.');
    if host.len() > 253 || ip || !host.split('.').all(label_ok) {
        return Err(format!(
            "{s}: a host is a DNS name such as shop.example.com (no scheme, port, path or wildcard)"
        ));
    }
    Ok(host)
}

#[derive(Debug, Args)]
pub struct DevArgs {
    #[command(flatten)]
    pub pack: PackArgs,
    /// Give up waiting for the cluster after this long: 300, 300s, 5m, 1h.
    // `--timeout-seconds N`, the old name, stays a hidden alias: scripts use it, and
    // plain seconds parse alike.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration, alias = "timeout-seconds")]
    pub timeout: Duration,
    /// How blobs reach storage (as for `aether push`).
    #[arg(long, value_enum, default_value_t = StorageMode::Presigned, env = "AETHER_STORAGE")]
    pub storage: StorageMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StorageMode {
    Presigned,
    Direct,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The app [default: the name of the Node.js project in the current folder].
    pub app: Option<String>,
    /// The app, as the other commands take it.
    #[arg(long = "app", value_name = "APP", conflicts_with = "app")]
    pub app_flag: Option<String>,
    /// Recent events shown.
    #[arg(long, default_value_t = 10)]
    pub events: usize,
}

/// The app a day-2 command acts on.
#[derive(Debug, Clone, Args)]
pub struct AppArg {
    /// The app [default: the name of the Node.js project in the current folder].
    #[arg(long)]
    pub app: Option<String>,
}

/// Whether a day-2 command waits for the cluster to get where it asked, and how long.
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// Wait until the change is done: pods ready, or gone (the default).
    #[arg(long, overrides_with = "no_wait")]
    pub wait: bool,
    /// Return once the cluster accepted the change.
    #[arg(long, overrides_with = "wait")]
    pub no_wait: bool,
    /// Give up waiting for the cluster after this long: 300, 300s, 5m, 1h.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
}

impl WaitArgs {
    /// How long to wait, if at all.
    pub fn timeout(&self) -> Option<Duration> {
        (!self.no_wait).then_some(self.timeout)
    }
}

#[derive(Debug, Args)]
pub struct ReleasesArgs {
    #[command(flatten)]
    pub app: AppArg,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub app: AppArg,
    /// The release to go back to [default: the newest older one that did not fail].
    #[arg(long, value_name = "VERSION", value_parser = parse_version)]
    pub to: Option<i64>,
    /// Roll back even where another field manager (a GitOps tool) owns the fields.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `3` or `v3`.
fn parse_version(text: &str) -> Result<i64, String> {
    text.trim_start_matches('v')
        .parse::<i64>()
        .ok()
        .filter(|v| *v >= 1)
        .ok_or_else(|| format!("{text:?} is not a release version (3 or v3; `aether releases` lists them)"))
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Set environment variables (KEY=VALUE...), then wait until the app serves with
    /// them. `--secret` keeps the values in the Secret <app>-config, never in the app.
    Set(ConfigSetArgs),
    /// Remove environment variables (plain or secret).
    Unset(ConfigUnsetArgs),
    /// Show the app's environment: plain values, and where the others come from
    /// (secret values are never shown).
    Get(ConfigGetArgs),
}

#[derive(Debug, Args)]
pub struct ConfigSetArgs {
    /// KEY=VALUE pairs; KEY is an environment variable name.
    #[arg(required = true, value_name = "KEY=VALUE", value_parser = crate::commands::config::parse_pair)]
    pub pairs: Vec<(String, String)>,
    /// Keep the values in the app's Secret (needs the right to write Secrets).
    #[arg(long)]
    pub secret: bool,
    #[command(flatten)]
    pub change: ConfigChangeArgs,
}

/// Which app a config change is for, and how it is made.
#[derive(Debug, Args)]
pub struct ConfigChangeArgs {
    #[command(flatten)]
    pub app: AppArg,
    /// Change them even where another field manager (a GitOps tool) owns the app's env.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct ConfigUnsetArgs {
    /// Names of the variables.
    #[arg(required = true, value_name = "KEY", value_parser = crate::commands::config::check_key)]
    pub keys: Vec<String>,
    #[command(flatten)]
    pub change: ConfigChangeArgs,
}

#[derive(Debug, Args)]
pub struct ConfigGetArgs {
    #[command(flatten)]
    pub app: AppArg,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Number of pods (0 stops the app and keeps it defined).
    #[arg(value_parser = clap::value_parser!(i32).range(0..=1000))]
    pub replicas: i32,
    #[command(flatten)]
    pub app: AppArg,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub app: AppArg,
    /// Keep printing new lines, and those of pods that start later, until Ctrl-C or
    /// until the app is deleted.
    #[arg(short, long)]
    pub follow: bool,
    /// Only lines newer than this: 10m, 1h, 30s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub since: Option<Duration>,
    /// Only the last N lines of each pod.
    #[arg(long, value_name = "N")]
    pub tail: Option<u32>,
    /// The logs of each pod's previous container (the one that crashed).
    #[arg(short, long, conflicts_with = "follow")]
    pub previous: bool,
    /// Which container: the app, or `fetch`, which downloads and verifies the
    /// artifact before the app starts.
    #[arg(short, long, value_enum, default_value_t = LogContainer::App)]
    pub container: LogContainer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogContainer {
    App,
    Fetch,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub app: AppArg,
    /// Do not ask for confirmation (needed when stdin is not a terminal).
    #[arg(short, long)]
    pub yes: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate an Ed25519 signing key pair.
    Generate(KeysGenerateArgs),
    /// Show a key's id and public key (what a cluster admin adds to the trusted keys).
    Show(KeysShowArgs),
}

#[derive(Debug, Args)]
pub struct KeysShowArgs {
    /// Private or public key file [default: ~/.config/aether/signing-key.pem].
    #[arg(long, env = "AETHER_SIGNING_KEY")]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct KeysGenerateArgs {
    /// Private key file [default: ~/.config/aether/signing-key.pem]; the public key
    /// goes next to it as `<name>.pub.pem`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Overwrite an existing key.
    #[arg(long)]
    pub force: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn hosts_are_dns_names_without_scheme_port_or_wildcard() {
        assert_eq!(parse_host("Shop.Example.com."), Ok("shop.example.com".into()));
        assert_eq!(parse_host("localhost"), Ok("localhost".into()));
        for bad in [
            "https://shop.example.com",
            "shop.example.com:443",
            "*.example.com",
            "a..b",
            "-a.com",
            "",
            "10.0.0.1",
        ] {
            assert!(parse_host(bad).is_err(), "{bad} was taken");
        }
    }

    #[test]
    fn durations_take_seconds_or_a_unit() {
        let secs = |t: &str| parse_duration(t).map(|d| d.as_secs());
        assert_eq!(secs("300"), Ok(300));
        assert_eq!(secs("300s"), Ok(300));
        assert_eq!(secs("5m"), Ok(300));
        assert_eq!(secs("1h"), Ok(3600));
        assert_eq!(secs("1h30m"), Ok(5400));
        assert_eq!(secs(" 90s "), Ok(90));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        for bad in ["", "5x", "m5", "-5m", "five minutes", "5 m s"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("300s, 5m, 1h"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn timeout_seconds_still_works_for_scripts() {
        let cli = Cli::try_parse_from(["aether", "push", "--timeout-seconds", "240"]).unwrap();
        let Command::Push(push) = cli.command else {
            panic!()
        };
        assert_eq!(push.timeout, Duration::from_secs(240));
        let cli = Cli::try_parse_from(["aether", "dev", "--timeout", "2m"]).unwrap();
        let Command::Dev(dev) = cli.command else { panic!() };
        assert_eq!(dev.timeout, Duration::from_secs(120));
        let cli = Cli::try_parse_from(["aether", "scale", "3"]).unwrap();
        let Command::Scale(scale) = cli.command else {
            panic!()
        };
        assert_eq!(scale.wait.timeout, Duration::from_secs(300));
        // The old name is not advertised.
        let help = Cli::command()
            .find_subcommand_mut("push")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(
            help.contains("--timeout <DURATION>") && !help.contains("timeout-seconds"),
            "{help}"
        );
    }

    #[test]
    fn a_bad_duration_is_a_usage_error_naming_the_forms() {
        let err = Cli::try_parse_from(["aether", "delete", "--timeout", "soon"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("use seconds (300)"), "{err}");
    }

    #[test]
    fn status_takes_the_app_as_argument_or_flag() {
        for argv in [
            &["aether", "status", "web"][..],
            &["aether", "status", "--app", "web"],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap();
            let Command::Status(status) = cli.command else {
                panic!()
            };
            assert_eq!(status.app.or(status.app_flag).as_deref(), Some("web"));
        }
        assert!(Cli::try_parse_from(["aether", "status", "a", "--app", "b"]).is_err());
    }

    #[test]
    fn run_as_a_kubectl_plugin_usage_says_kubectl_aether() {
        assert_eq!(
            plugin_name(OsStr::new("/home/me/.local/bin/kubectl-aether")).as_deref(),
            Some("kubectl aether")
        );
        assert_eq!(
            plugin_name(OsStr::new("kubectl-aether_x-y")).as_deref(),
            Some("kubectl aether-x y")
        );
        assert_eq!(plugin_name(OsStr::new("/usr/bin/aether")), None);
        let mut command = Cli::command().bin_name("kubectl aether");
        let usage = command.render_usage().to_string();
        assert!(usage.contains("kubectl aether [OPTIONS] <COMMAND>"), "{usage}");
        let mut command = Cli::command().bin_name("kubectl aether");
        command.build();
        let scale = command
            .find_subcommand_mut("scale")
            .unwrap()
            .render_usage()
            .to_string();
        assert!(scale.contains("kubectl aether scale"), "{scale}");
    }
}
