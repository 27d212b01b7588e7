//! Ed25519 signatures over a statement that binds an artifact digest to the app and
//! namespace it may run as, with a domain prefix so the signature means nothing in
//! any other context. Keys are PKCS#8 / SPKI PEM, interoperable with
//! `openssl genpkey -algorithm ed25519`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::digest::Digest;

/// Domain separation: first bytes of every signed statement.
pub const DOMAIN: &str = "aether.dev/artifact-signature/v1";

/// RFC 8410 SubjectPublicKeyInfo prefix for a raw 32-byte Ed25519 key.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("the key file is not an Ed25519 private key in PKCS#8 PEM: {0}")]
    BadPrivateKey(String),
    #[error("the key is not an Ed25519 public key in SPKI PEM: {0}")]
    BadPublicKey(String),
    #[error("the signature is malformed (expected base64 of 64 bytes)")]
    Malformed,
    #[error("signed by key {key_id}, which is not trusted here")]
    UnknownKey { key_id: String },
    #[error("the signature does not match this artifact, app and namespace")]
    Mismatch,
    #[error("could not generate a key: the system random source failed")]
    Random,
}

/// What a signature covers: `DOMAIN \n digest \n namespace \n app`. Digest, namespace
/// and app contain no newline (their schemas forbid it), so the encoding is unambiguous.
pub fn statement(digest: &Digest, namespace: &str, app: &str) -> Vec<u8> {
    format!("{DOMAIN}\n{digest}\n{namespace}\n{app}").into_bytes()
}

/// A public key and its short id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    raw: [u8; 32],
}

impl PublicKey {
    /// First 16 hex digits of the sha256 of the raw key.
    pub fn key_id(&self) -> String {
        Digest::of(&self.raw).hex()[..16].to_string()
    }

    pub fn from_pem(pem_text: &str) -> Result<Self, SignatureError> {
        let p = pem::parse(pem_text).map_err(|e| SignatureError::BadPublicKey(e.to_string()))?;
        let der = p.contents();
        if p.tag() != "PUBLIC KEY" || der.len() != 44 || der[..12] != SPKI_PREFIX {
            return Err(SignatureError::BadPublicKey(format!(
                "unexpected {} block",
                p.tag()
            )));
        }
        let mut raw = [0u8; 32];
        raw.copy_from_slice(&der[12..]);
        Ok(Self { raw })
    }

    pub fn to_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.raw);
        pem::encode(&pem::Pem::new("PUBLIC KEY", der))
    }
}

/// A private signing key.
#[derive(Debug)]
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl SigningKey {
    /// A fresh key, as PKCS#8 PEM (to be written with mode 0600).
    pub fn generate_pem() -> Result<String, SignatureError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| SignatureError::Random)?;
        Ok(pem::encode(&pem::Pem::new("PRIVATE KEY", doc.as_ref().to_vec())))
    }

    pub fn from_pem(pem_text: &str) -> Result<Self, SignatureError> {
        let p = pem::parse(pem_text).map_err(|e| SignatureError::BadPrivateKey(e.to_string()))?;
        if p.tag() != "PRIVATE KEY" {
            return Err(SignatureError::BadPrivateKey(format!(
                "found a {} block",
                p.tag()
            )));
        }
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(p.contents())
            .map_err(|e| SignatureError::BadPrivateKey(e.to_string()))?;
        Ok(Self { pair })
    }

    pub fn public_key(&self) -> PublicKey {
        let mut raw = [0u8; 32];
        raw.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey { raw }
    }

    /// Sign the statement for `digest` running as `app` in `namespace`: base64 signature.
    pub fn sign(&self, digest: &Digest, namespace: &str, app: &str) -> String {
        BASE64.encode(self.pair.sign(&statement(digest, namespace, app)).as_ref())
    }
}

/// Check that `signature` (base64), claimed to be by `key_id`, was made by one of
/// `trusted` over the statement for `digest`, `namespace` and `app`.
pub fn verify(
    trusted: &[PublicKey],
    key_id: &str,
    signature: &str,
    digest: &Digest,
    namespace: &str,
    app: &str,
) -> Result<(), SignatureError> {
    let sig = BASE64
        .decode(signature.trim())
        .map_err(|_| SignatureError::Malformed)?;
    if sig.len() != 64 {
        return Err(SignatureError::Malformed);
    }
    let key = trusted
        .iter()
        .find(|k| k.key_id() == key_id)
        .ok_or_else(|| SignatureError::UnknownKey {
            key_id: key_id.chars().take(64).collect(),
        })?;
    UnparsedPublicKey::new(&ED25519, key.raw)
        .verify(&statement(digest, namespace, app), &sig)
        .map_err(|_| SignatureError::Mismatch)
}

/// Every public key in a text holding any number of PEM blocks (a ConfigMap entry
/// may list several); other block types are refused rather than ignored.
pub fn public_keys_from_pem_bundle(text: &str) -> Result<Vec<PublicKey>, SignatureError> {
    let blocks = pem::parse_many(text).map_err(|e| SignatureError::BadPublicKey(e.to_string()))?;
    blocks
        .iter()
        .map(|p| PublicKey::from_pem(&pem::encode(p)))
        .collect()
}

/// What an app demands of an artifact's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Unsigned or wrongly signed artifacts do not run.
    Enforce,
    /// They run, and the caller warns.
    Warn,
    /// Signatures are not checked (digests still are).
    Off,
}

/// The outcome of [`check`] when the artifact may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Signed by the trusted key with this id.
    Verified { key_id: String },
    /// Runs without a valid signature (policy `Warn`): the reason to warn with.
    Unverified(PolicyRefusal),
    /// Policy `Off`.
    NotChecked,
}

/// Why an artifact's signature is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyRefusal {
    #[error("the artifact is not signed")]
    Unsigned,
    #[error("{0}")]
    Invalid(String),
}

impl PolicyRefusal {
    /// CamelCase reason for conditions, Events and termination messages.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unsigned => "ArtifactUnsigned",
            Self::Invalid(_) => "SignatureRejected",
        }
    }
}

/// Apply `policy` to an artifact's optional `(key_id, signature)`. The operator (before
/// rolling out) and the in-pod runtime (before extracting) both call this, so they
/// cannot disagree.
pub fn check(
    policy: Policy,
    trusted: &[PublicKey],
    signature: Option<(&str, &str)>,
    digest: &Digest,
    namespace: &str,
    app: &str,
) -> Result<Verdict, PolicyRefusal> {
    if policy == Policy::Off {
        return Ok(Verdict::NotChecked);
    }
    let result = match signature {
        None => Err(PolicyRefusal::Unsigned),
        Some((key_id, value)) => verify(trusted, key_id, value, digest, namespace, app)
            .map(|()| key_id.to_string())
            .map_err(|e| PolicyRefusal::Invalid(e.to_string())),
    };
    match (result, policy) {
        (Ok(key_id), _) => Ok(Verdict::Verified { key_id }),
        (Err(refusal), Policy::Warn) => Ok(Verdict::Unverified(refusal)),
        (Err(refusal), _) => Err(refusal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify_and_refuse_replays() {
        let key = SigningKey::from_pem(&SigningKey::generate_pem().unwrap()).unwrap();
        let public = PublicKey::from_pem(&key.public_key().to_pem()).unwrap();
        assert_eq!(public, key.public_key());
        let id = public.key_id();
        let d = Digest::of(b"artifact");
        let sig = key.sign(&d, "team-a", "web");
        let trusted = [public];
        verify(&trusted, &id, &sig, &d, "team-a", "web").unwrap();

        // Replays into another namespace, app or artifact are refused.
        assert!(matches!(
            verify(&trusted, &id, &sig, &d, "team-b", "web"),
            Err(SignatureError::Mismatch)
        ));
        assert!(matches!(
            verify(&trusted, &id, &sig, &d, "team-a", "api"),
            Err(SignatureError::Mismatch)
        ));
        let other = Digest::of(b"other");
        assert!(matches!(
            verify(&trusted, &id, &sig, &other, "team-a", "web"),
            Err(SignatureError::Mismatch)
        ));
        // Unknown (or rotated-out) keys and malformed signatures.
        let stranger = SigningKey::from_pem(&SigningKey::generate_pem().unwrap()).unwrap();
        let sig2 = stranger.sign(&d, "team-a", "web");
        assert!(matches!(
            verify(
                &trusted,
                &stranger.public_key().key_id(),
                &sig2,
                &d,
                "team-a",
                "web"
            ),
            Err(SignatureError::UnknownKey { .. })
        ));
        assert!(matches!(
            verify(&trusted, &id, "not base64!", &d, "team-a", "web"),
            Err(SignatureError::Malformed)
        ));
        assert!(matches!(
            verify(&trusted, &id, "AAAA", &d, "team-a", "web"),
            Err(SignatureError::Malformed)
        ));
    }

    #[test]
    fn reads_openssl_keys() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        let ok = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(&key)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            panic!("openssl genpkey failed: openssl is a test dependency (hack/deps.sh installs it)");
        }
        let pub_pem = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .output()
            .unwrap();
        let signing = SigningKey::from_pem(&std::fs::read_to_string(&key).unwrap()).unwrap();
        let public = PublicKey::from_pem(&String::from_utf8(pub_pem.stdout).unwrap()).unwrap();
        assert_eq!(signing.public_key(), public);
    }

    #[test]
    fn policy_decides_what_runs() {
        let key = SigningKey::from_pem(&SigningKey::generate_pem().unwrap()).unwrap();
        let trusted = public_keys_from_pem_bundle(&format!(
            "{}\n{}",
            key.public_key().to_pem(),
            SigningKey::from_pem(&SigningKey::generate_pem().unwrap())
                .unwrap()
                .public_key()
                .to_pem()
        ))
        .unwrap();
        assert_eq!(trusted.len(), 2);
        let d = Digest::of(b"artifact");
        let id = key.public_key().key_id();
        let sig = key.sign(&d, "ns", "web");
        let good = Some((id.as_str(), sig.as_str()));

        assert_eq!(
            check(Policy::Enforce, &trusted, good, &d, "ns", "web"),
            Ok(Verdict::Verified { key_id: id.clone() })
        );
        assert_eq!(
            check(Policy::Enforce, &trusted, None, &d, "ns", "web"),
            Err(PolicyRefusal::Unsigned)
        );
        let replayed = check(Policy::Enforce, &trusted, good, &d, "ns", "api").unwrap_err();
        assert_eq!(replayed.reason(), "SignatureRejected");
        assert!(matches!(
            check(Policy::Warn, &trusted, None, &d, "ns", "web"),
            Ok(Verdict::Unverified(PolicyRefusal::Unsigned))
        ));
        assert_eq!(
            check(Policy::Off, &[], None, &d, "ns", "web"),
            Ok(Verdict::NotChecked)
        );
        // An untrusted key is refused by name.
        let refusal = check(Policy::Enforce, &trusted[1..], good, &d, "ns", "web").unwrap_err();
        assert!(refusal.to_string().contains(&id), "{refusal}");
        assert!(
            public_keys_from_pem_bundle("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .is_err()
        );
    }
}
