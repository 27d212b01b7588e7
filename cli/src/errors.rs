//! Every error a user can see, with the hint that fixes it and a distinct exit code.

use std::path::PathBuf;

use miette::Diagnostic;

#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum CliError {
    #[error("{0} is not a Node.js project: it has no package.json")]
    #[diagnostic(
        code(aether::not_node_project),
        help("run aether in the folder that holds package.json, or pass it as DIR")
    )]
    NotNodeProject(PathBuf),

    #[error("package.json is not valid JSON: {0}")]
    #[diagnostic(code(aether::bad_package_json))]
    BadPackageJson(String),

    #[error("no lockfile in {0}: the dependencies would not be reproducible")]
    #[diagnostic(
        code(aether::no_lockfile),
        help("run `npm install` (or yarn/pnpm) and commit the lockfile, or pass --allow-no-lockfile")
    )]
    NoLockfile(PathBuf),

    #[error(
        "no entrypoint: package.json has no \"start\": \"node ...\" script or \"main\", and there is no server.js or index.js"
    )]
    #[diagnostic(
        code(aether::no_entrypoint),
        help("add \"scripts\": {{\"start\": \"node server.js\"}} to package.json")
    )]
    NoEntrypoint,

    #[error("cannot derive an app name from '{0}'")]
    #[diagnostic(
        code(aether::bad_app_name),
        help(
            "pass --app NAME: lowercase letters, digits and '-', at most 63 characters, starting with a letter"
        )
    )]
    BadAppName(String),

    #[error("{manager} could not install the production dependencies (exit {code})\n{output}")]
    #[diagnostic(
        code(aether::install_failed),
        help(
            "if the lockfile is out of sync with package.json, run `{manager} install` and commit the lockfile"
        )
    )]
    InstallFailed {
        manager: String,
        code: String,
        output: String,
    },

    #[error("{manager} is not installed")]
    #[diagnostic(
        code(aether::no_package_manager),
        help("install {manager} (e.g. `corepack enable`) or commit a package-lock.json for npm")
    )]
    NoPackageManager { manager: String },

    #[error("native module {module} is built for {found}, but the runtime is {wanted}")]
    #[diagnostic(
        code(aether::native_mismatch),
        help("pack on a machine matching the runtime, or pass --platform/--libc to match the image you run")
    )]
    NativeMismatch {
        module: String,
        found: String,
        wanted: String,
    },

    #[error(transparent)]
    #[diagnostic(
        code(aether::pack_failed),
        help("fix or ignore the file named above (.aetherignore), then pack again")
    )]
    Pack(#[from] aether_artifact::PackError),

    #[error("signing key {path}: {source}")]
    #[diagnostic(
        code(aether::bad_key),
        help("generate one with `aether keys generate`, or pass --no-sign")
    )]
    Key {
        path: PathBuf,
        #[source]
        source: aether_artifact::signature::SignatureError,
    },

    #[error("{0} already exists")]
    #[diagnostic(
        code(aether::key_exists),
        help(
            "pass --force to replace it (artifacts signed with the old key will no longer verify once it is rotated out)"
        )
    )]
    KeyExists(PathBuf),

    #[error("{context}: {source}")]
    #[diagnostic(code(aether::io))]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl CliError {
    /// Distinct exit codes per kind of failure (2 is clap's usage error).
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::NotNodeProject(_)
            | Self::BadPackageJson(_)
            | Self::NoLockfile(_)
            | Self::NoEntrypoint
            | Self::BadAppName(_) => 3,
            Self::InstallFailed { .. } | Self::NoPackageManager { .. } => 4,
            Self::NativeMismatch { .. } | Self::Pack(_) => 5,
            Self::Key { .. } | Self::KeyExists(_) => 6,
            Self::Io { .. } => 1,
        }
    }

    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}
