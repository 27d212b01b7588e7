//! Is the referenced artifact one this app may run? Pure: the caller has read the
//! artifact and the trusted keys.

use aether_artifact::Digest;
use aether_artifact::signature::{self, Policy, PublicKey, Verdict};
use aether_crds::condition::{READY, app as app_reason, artifact as artifact_reason};
use aether_crds::{AetherApp, AetherArtifact, VerifyMode};
use kube::ResourceExt;

use super::policy::Floor;

/// The trusted public keys for an app, and where they came from (for messages).
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    pub source: String,
    /// Every key as PEM, handed to the fetch container.
    pub pem: String,
    pub keys: Vec<PublicKey>,
}

/// The trusted keys in a ConfigMap's values. What reaches the pod is the keys
/// re-encoded, never the values as written: text around the PEM blocks is dropped,
/// and anything that is not an Ed25519 public key refuses the whole source.
pub fn trusted_keys_from(source: String, texts: &[String]) -> Result<TrustedKeys, Invalid> {
    match signature::public_keys_from_pem_bundle(&texts.join("\n")) {
        Ok(keys) => Ok(TrustedKeys {
            pem: keys.iter().map(PublicKey::to_pem).collect(),
            source,
            keys,
        }),
        // The parser's own words may quote the text (a header, a label), and the
        // source may be a ConfigMap the app's author cannot read: say only what it is.
        Err(_) => Err(Invalid {
            reason: "InvalidTrustedKeys",
            message: format!("{source} holds something other than PEM Ed25519 public keys"),
            waiting: false,
        }),
    }
}

/// An artifact the app may run, with what the pod needs to check it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    pub artifact: String,
    pub digest: Digest,
    /// Canonical manifest JSON: the fetch container recomputes the digest from it.
    pub manifest_json: String,
    /// The layers' digests: the blobs the pods download.
    pub layers: Vec<Digest>,
    /// Their compressed size, together.
    pub layer_bytes: u64,
    /// The compressed size of the `deps` layer.
    pub deps_bytes: u64,
    /// What a dev-hot swap cannot change (see [`base_key`]).
    pub base_key: String,
    /// When the operator last checked the artifact's blobs in storage.
    pub verified_at: Option<k8s_openapi::jiff::Timestamp>,
    pub entrypoint: Vec<String>,
    /// A cluster admin's policy forbids replacing the entrypoint (see
    /// [`super::policy`]): the pod runs it without code-loading variables.
    pub entrypoint_locked: bool,
    /// The working directory relative to the app root (a workspace package).
    pub workdir: Option<String>,
    pub node_major: i32,
    /// The C library its native modules were built against: picks the Node image.
    pub libc: aether_crds::Libc,
    pub verdict: Verdict,
    pub policy: Policy,
    pub signature: Option<(String, String)>,
    pub trusted_pem: String,
}

/// Everything of a release but its app layer, hashed: the dependencies, the Node
/// runtime, the start command and the working directory. Two releases with the same
/// key differ only in code, which a dev-hot pod can swap in without a rollout.
pub fn base_key(manifest: &aether_artifact::Manifest) -> String {
    let deps: Vec<_> = manifest
        .layers
        .iter()
        .filter(|l| l.name != "app")
        .map(|l| &l.digest)
        .collect();
    let key = serde_json::json!([deps, manifest.runtime, manifest.entrypoint, manifest.workdir]);
    Digest::of(key.to_string().as_bytes()).hex()[..16].to_string()
}

/// Why the app cannot run its artifact (yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// CamelCase, for conditions and Events.
    pub reason: &'static str,
    pub message: String,
    /// True while the artifact is still being uploaded: progress, not a failure.
    pub waiting: bool,
}

impl Invalid {
    pub fn stalled(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            waiting: false,
        }
    }
}

pub fn policy(mode: VerifyMode) -> Policy {
    match mode {
        VerifyMode::Enforce => Policy::Enforce,
        VerifyMode::Warn => Policy::Warn,
        VerifyMode::Off => Policy::Off,
    }
}

/// `floor`: what the cluster admin's AetherPolicies allow (see [`super::policy`]);
/// `trusted`: the keys it leaves trusted.
pub fn validate(
    app: &AetherApp,
    artifact: Option<&AetherArtifact>,
    trusted: &TrustedKeys,
    floor: &Floor,
) -> Result<Validated, Invalid> {
    floor.admit(app)?;
    // The CRD refuses these since they were reserved; an app applied before may
    // still name one (it would fail to start).
    if aether_crds::pod::RESERVED_PORTS
        .iter()
        .any(|p| i32::from(*p) == app.spec.port)
    {
        return Err(Invalid::stalled(
            "ReservedPort",
            format!(
                "port {} is the Aether runtime's in the pod: set spec.port to another",
                app.spec.port
            ),
        ));
    }
    let name = &app.spec.artifact_ref.name;
    let namespace = app.namespace().unwrap_or_default();
    let Some(artifact) = artifact else {
        return Err(Invalid::stalled(
            app_reason::ARTIFACT_NOT_FOUND,
            format!("AetherArtifact {name} does not exist in {namespace}"),
        ));
    };
    if artifact.spec.app != app.name_any() {
        return Err(Invalid::stalled(
            "ArtifactOfAnotherApp",
            format!(
                "AetherArtifact {name} was built for app {}, not {}",
                artifact.spec.app,
                app.name_any()
            ),
        ));
    }
    let ready = artifact
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY));
    match ready {
        Some(c) if c.status == "True" => {}
        // The app is only validated where the namespace is enabled: the artifact's
        // refusal predates that, and it is looked at again (at once on a push).
        Some(c) if c.reason == artifact_reason::NAMESPACE_NOT_ENABLED => {
            return Err(Invalid {
                reason: app_reason::AWAITING_ARTIFACT,
                message: format!(
                    "waiting for AetherArtifact {name} to be looked at again: it was refused before the namespace was enabled"
                ),
                waiting: true,
            });
        }
        Some(c) if !artifact_reason::in_progress(&c.reason) => {
            return Err(Invalid::stalled(
                app_reason::ARTIFACT_FAILED,
                format!("AetherArtifact {name} is not Ready: {}: {}", c.reason, c.message),
            ));
        }
        _ => {
            return Err(Invalid {
                reason: app_reason::AWAITING_ARTIFACT,
                message: format!("waiting for AetherArtifact {name} to be uploaded and verified"),
                waiting: true,
            });
        }
    }
    let (manifest, digest) = artifact
        .spec
        .verified_manifest()
        .map_err(|e| Invalid::stalled("InvalidArtifact", format!("AetherArtifact {name}: {e}")))?;
    let policy = policy(floor.mode(app.spec.verify.mode));
    let signature = artifact
        .spec
        .signature
        .as_ref()
        .map(|s| (s.key_id.clone(), s.value.clone()));
    let verdict = signature::check(
        policy,
        &trusted.keys,
        signature.as_ref().map(|(k, v)| (k.as_str(), v.as_str())),
        &digest,
        &namespace,
        &app.name_any(),
    )
    .map_err(|refusal| {
        let hint = if trusted.keys.is_empty() {
            format!(" (no trusted keys: {} holds none)", trusted.source)
        } else {
            format!(" (trusted keys from {})", trusted.source)
        };
        let floor = floor
            .raised_by(app.spec.verify.mode)
            .map(|p| format!(" (AetherPolicy {p} sets the namespace's minimum)"))
            .unwrap_or_default();
        Invalid::stalled(
            refusal.reason(),
            format!("verify policy Enforce{floor} refuses AetherArtifact {name}: {refusal}{hint}"),
        )
    })?;
    Ok(Validated {
        artifact: name.clone(),
        digest,
        manifest_json: String::from_utf8_lossy(&manifest.to_canonical_json()).into_owned(),
        layers: manifest.layers.iter().map(|l| l.digest).collect(),
        layer_bytes: manifest.layers.iter().map(|l| l.size).sum(),
        deps_bytes: manifest
            .layers
            .iter()
            .filter(|l| l.name == "deps")
            .map(|l| l.size)
            .sum(),
        base_key: base_key(&manifest),
        verified_at: artifact
            .status
            .as_ref()
            .and_then(|s| s.verified_at.as_ref())
            .map(|t| t.0),
        entrypoint: manifest.entrypoint.clone(),
        entrypoint_locked: floor.locks_entrypoint(),
        workdir: manifest.workdir.clone(),
        node_major: artifact.spec.runtime.node_major,
        libc: artifact.spec.runtime.libc,
        verdict,
        policy,
        signature,
        trusted_pem: trusted.pem.clone(),
    })
}
