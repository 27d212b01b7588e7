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
        "no start command: package.json has no \"start\" script or \"main\", there is no Procfile with a web: line, and no server.js or index.js"
    )]
    #[diagnostic(
        code(aether::no_entrypoint),
        help("add \"scripts\": {{\"start\": \"node server.js\"}} to package.json")
    )]
    NoEntrypoint,

    #[error("{root} is a workspace root, not an app")]
    #[diagnostic(
        code(aether::workspace_root),
        help("run aether in the package's folder, or pass --workspace NAME (packages: {members})")
    )]
    WorkspaceRoot { root: PathBuf, members: String },

    #[error("{0} declares no workspaces, so --workspace {1} names nothing")]
    #[diagnostic(
        code(aether::not_a_workspace),
        help(
            "run aether at the workspace root (the package.json with \"workspaces\", or pnpm-workspace.yaml), or drop --workspace"
        )
    )]
    NotAWorkspace(PathBuf, String),

    #[error("no workspace package is named {name}")]
    #[diagnostic(
        code(aether::unknown_workspace),
        help("pass a package name or folder: {members}")
    )]
    UnknownWorkspace { name: String, members: String },

    #[error("the start command {command:?} runs {missing}, which is not in the artifact")]
    #[diagnostic(code(aether::start_missing), help("{hint}"))]
    StartMissing {
        command: String,
        missing: String,
        hint: String,
    },

    #[error("the build script failed (exit {code}): {script}\n{output}")]
    #[diagnostic(
        code(aether::build_failed),
        help("run the build locally (`npm run build`) and fix it, or pack without it: --no-build")
    )]
    BuildFailed {
        script: String,
        code: String,
        output: String,
    },

    #[error("could not fetch {tool} from the package registry\n{output}")]
    #[diagnostic(
        code(aether::tool_fetch),
        help(
            "check the registry is reachable (npm's own settings and .npmrc apply), or pin an existing version in package.json \"packageManager\""
        )
    )]
    ToolFetch { tool: String, output: String },

    #[error("Node {major} is not a runtime this cluster serves (it serves {available})")]
    #[diagnostic(
        code(aether::node_version),
        help("set engines.node in package.json, or pass --node, to one of: {available}")
    )]
    UnsupportedNode { major: u32, available: String },

    #[error("cannot derive an app name from '{0}'")]
    #[diagnostic(
        code(aether::bad_app_name),
        help(
            "pass --app NAME: lowercase letters, digits and '-', at most 63 characters, starting with a letter"
        )
    )]
    BadAppName(String),

    #[error("{manager} could not install the dependencies (exit {code})\n{output}")]
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
        help("install Node.js with its bundled npm (Aether fetches yarn and pnpm itself)")
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

    #[error("no usable kubeconfig: {0}")]
    #[diagnostic(
        code(aether::no_kubeconfig),
        help(
            "point KUBECONFIG (or --kubeconfig) at your cluster's kubeconfig, and pick a context with --context"
        )
    )]
    NoKubeconfig(String),

    #[error("you may not {verb} {resource} in namespace {namespace}")]
    #[diagnostic(
        code(aether::forbidden),
        help(
            "ask a cluster admin to bind you to the aether-editor ClusterRole in {namespace} (config/rbac), or use -n for a namespace you can write to"
        )
    )]
    Forbidden {
        verb: String,
        resource: String,
        namespace: String,
    },

    #[error("the Kubernetes API refused {what}: {source}")]
    #[diagnostic(
        code(aether::kube),
        help(
            "check that the cluster is reachable and the Aether CRDs are installed (kubectl get crd aetherartifacts.aether.dev)"
        )
    )]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },

    #[error("uploading {digest} failed: {detail}")]
    #[diagnostic(
        code(aether::upload_failed),
        help(
            "storage may be down or the upload URL expired; run the same command again (finished uploads are not repeated)"
        )
    )]
    UploadFailed { digest: String, detail: String },

    #[error("--storage direct needs bucket credentials: {0}")]
    #[diagnostic(
        code(aether::direct_storage),
        help(
            "set AETHER_S3_BUCKET (and AETHER_S3_ENDPOINT, AETHER_S3_REGION for non-AWS storage) and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or push without --storage direct"
        )
    )]
    DirectStorage(String),

    #[error("artifact {name} is not usable: {reason}: {message}")]
    #[diagnostic(
        code(aether::artifact_failed),
        help("push again; if it persists, `kubectl describe aart {name}` shows the operator's events")
    )]
    ArtifactFailed {
        name: String,
        reason: String,
        message: String,
    },

    #[error("app {app} did not deploy {artifact}: {reason}: {message}")]
    #[diagnostic(code(aether::deploy_failed), help("{hint}"))]
    DeployFailed {
        app: String,
        artifact: String,
        reason: String,
        message: String,
        hint: String,
    },

    #[error("timed out after {seconds}s waiting for {what}")]
    #[diagnostic(
        code(aether::timeout),
        help(
            "is the Aether operator running? `kubectl get pods -n aether-system`; `aether status` shows the app's pods and events; raise --timeout (e.g. --timeout 10m) if the cluster is slow"
        )
    )]
    Timeout { what: String, seconds: u64 },

    #[error("{resource} {name} in {namespace} was deleted while waiting for {what}")]
    #[diagnostic(
        code(aether::deleted),
        help(
            "something deleted it meanwhile: `kubectl get events -n {namespace}` (the operator's retention deletes an artifact whose upload was not completed in time); run the command again"
        )
    )]
    Deleted {
        resource: String,
        name: String,
        namespace: String,
        what: String,
    },

    #[error("no --app, and {0} is not an app's project folder to take its name from")]
    #[diagnostic(
        code(aether::no_app),
        help("pass --app NAME (`aether apps` lists them), or run aether in the app's project folder")
    )]
    NoApp(PathBuf),

    #[error("there is no app {app} in namespace {namespace}")]
    #[diagnostic(
        code(aether::app_not_found),
        help(
            "`aether apps -n {namespace}` lists the apps there; pass --app NAME, or -n for another namespace"
        )
    )]
    AppNotFound { app: String, namespace: String },

    #[error(
        "refusing to delete app {app} in namespace {namespace} without confirmation: stdin is not a terminal"
    )]
    #[diagnostic(
        code(aether::confirmation_required),
        help("pass --yes to delete it without asking")
    )]
    ConfirmationRequired { app: String, namespace: String },

    #[error("app {app} was not deleted: not confirmed")]
    #[diagnostic(code(aether::not_confirmed), help("answer y to delete it, or pass --yes"))]
    NotConfirmed { app: String },

    #[error("app {app} did not reach {replicas} ready pod(s): {reason}: {message}")]
    #[diagnostic(
        code(aether::scale_failed),
        help(
            "`aether status {app} -n {namespace}` and `aether logs --app {app} -n {namespace}` show why the pods fail"
        )
    )]
    ScaleFailed {
        app: String,
        namespace: String,
        replicas: i32,
        reason: String,
        message: String,
    },

    #[error("you may not {verb} Secrets in namespace {namespace}, where secret values are kept")]
    #[diagnostic(
        code(aether::secret_forbidden),
        help(
            "secret values go into the Secret <app>-config with your own rights (the built-in edit role has them; aether-editor alone does not): ask an admin, or set the value without --secret if it is not secret"
        )
    )]
    SecretForbidden { verb: String, namespace: String },

    #[error("app {app} is autoscaled between {min} and {max} pods: its autoscaler sets the count")]
    #[diagnostic(
        code(aether::autoscaled),
        help(
            "change spec.autoscaling (minReplicas, maxReplicas) instead, or remove it to set the count yourself"
        )
    )]
    Autoscaled { app: String, min: i32, max: i32 },

    #[error("Secret {name} in {namespace} exists and is not app {app}'s config Secret")]
    #[diagnostic(
        code(aether::secret_not_ours),
        help(
            "aether keeps secret values only in a Secret it made for the app (label aether.dev/app, owned by the app): rename or remove that Secret, or reference it yourself in spec.envFrom"
        )
    )]
    SecretNotOurs {
        name: String,
        app: String,
        namespace: String,
    },

    #[error(
        "app {app} exists and is not a preview of {of}: a preview push would take it over and have it deleted when the preview expires"
    )]
    #[diagnostic(
        code(aether::not_a_preview),
        help(
            "choose another --preview name (`aether previews` lists the previews), or push to {app} itself with `aether push --app {app}`"
        )
    )]
    NotAPreview { app: String, of: String },

    #[error("cannot roll app {app} back: {reason}")]
    #[diagnostic(
        code(aether::no_rollback),
        help("`aether releases --app {app}` lists its releases; pick one with --to N")
    )]
    NoRollback { app: String, reason: String },

    #[error("app {app}'s fields are managed elsewhere: {owners}")]
    #[diagnostic(
        code(aether::managed_elsewhere),
        help(
            "a change here would be undone by that manager: if it is a GitOps tool, make the change (or revert) in Git instead; to take the fields over anyway, pass --force"
        )
    )]
    ManagedElsewhere { app: String, owners: String },

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
            | Self::WorkspaceRoot { .. }
            | Self::NotAWorkspace(..)
            | Self::UnknownWorkspace { .. }
            | Self::StartMissing { .. }
            | Self::UnsupportedNode { .. }
            | Self::BadAppName(_)
            | Self::NoApp(_) => 3,
            Self::InstallFailed { .. }
            | Self::NoPackageManager { .. }
            | Self::BuildFailed { .. }
            | Self::ToolFetch { .. } => 4,
            Self::NativeMismatch { .. } | Self::Pack(_) => 5,
            Self::Key { .. } | Self::KeyExists(_) => 6,
            Self::NoKubeconfig(_)
            | Self::Forbidden { .. }
            | Self::SecretForbidden { .. }
            | Self::Kube { .. } => 7,
            Self::UploadFailed { .. } | Self::DirectStorage(_) => 8,
            Self::ArtifactFailed { .. } | Self::Deleted { .. } => 9,
            Self::Timeout { .. } => 10,
            Self::DeployFailed { .. } | Self::ScaleFailed { .. } => 11,
            Self::AppNotFound { .. } => 12,
            Self::NoRollback { .. }
            | Self::ManagedElsewhere { .. }
            | Self::NotAPreview { .. }
            | Self::Autoscaled { .. }
            | Self::SecretNotOurs { .. } => 13,
            // Like a missing argument: the command cannot run as given.
            Self::ConfirmationRequired { .. } => 2,
            Self::Io { .. } | Self::NotConfirmed { .. } => 1,
        }
    }

    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}
