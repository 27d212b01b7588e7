//! Command-line types, and nothing else: parsing lives here, behaviour in commands/.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    /// Output format: human-readable messages on stderr, or JSON on stdout.
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
    /// Give up waiting for the cluster after this long.
    #[arg(long, default_value_t = 300)]
    pub timeout_seconds: u64,
    /// How blobs reach storage: `presigned` URLs from the operator (only a kubeconfig
    /// needed), or `direct` with your own bucket credentials (AETHER_S3_ENDPOINT,
    /// AETHER_S3_BUCKET, AETHER_S3_REGION, AETHER_S3_PREFIX, AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY).
    #[arg(long, value_enum, default_value_t = StorageMode::Presigned, env = "AETHER_STORAGE")]
    pub storage: StorageMode,
}

#[derive(Debug, Args)]
pub struct DevArgs {
    #[command(flatten)]
    pub pack: PackArgs,
    /// Give up waiting for the cluster after this long.
    #[arg(long, default_value_t = 300)]
    pub timeout_seconds: u64,
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
    /// Recent events shown.
    #[arg(long, default_value_t = 10)]
    pub events: usize,
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
