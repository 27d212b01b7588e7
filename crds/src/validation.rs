//! Shared schema fragments: limits and CEL rules reused by both resources, so a
//! digest or a name is validated the same way everywhere.

/// Kubernetes names that end up as Service/label values must be DNS-1035 labels.
pub const NAME_MAX_LEN: usize = 63;

/// `sha256:` followed by 64 lowercase hex digits.
pub const DIGEST_LEN: usize = 71;

pub const DIGEST_RULE: &str = "self.matches('^sha256:[a-f0-9]{64}$')";
pub const DIGEST_MESSAGE: &str =
    "must be a digest: 'sha256:' followed by 64 lowercase hexadecimal characters";

/// A relative folder inside the artifact: no leading `/`, no `.` or `..` segments.
pub const WORKDIR_RULE: &str =
    "self.matches('^[A-Za-z0-9@_+-][A-Za-z0-9@._+-]*(/[A-Za-z0-9@_+-][A-Za-z0-9@._+-]*)*$')";
pub const WORKDIR_MESSAGE: &str =
    "must be a folder relative to the app root, such as apps/web (no '.' or '..' segments, no leading '/')";

pub const DNS_LABEL_RULE: &str = "self.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')";
pub const DNS_LABEL_MESSAGE: &str = "must be a DNS label: lowercase letters, digits and '-', starting with a letter and ending with a letter or digit";

/// Is `s` a well-formed artifact digest? (Same rule as [`DIGEST_RULE`], for clients.)
pub fn is_digest(s: &str) -> bool {
    s.len() == DIGEST_LEN
        && s.strip_prefix("sha256:")
            .is_some_and(|hex| hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// Is `s` a DNS-1035 label of at most 63 characters? (Same rule as [`DNS_LABEL_RULE`].)
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= NAME_MAX_LEN
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests() {
        assert!(is_digest(&format!("sha256:{}", "a".repeat(64))));
        assert!(!is_digest(&format!("sha256:{}", "A".repeat(64))));
        assert!(!is_digest(&format!("sha512:{}", "a".repeat(64))));
        assert!(!is_digest(&format!("sha256:{}", "a".repeat(63))));
        assert!(!is_digest("sha256:"));
    }

    #[test]
    fn dns_labels() {
        assert!(is_dns_label("web"));
        assert!(is_dns_label("a-1"));
        assert!(!is_dns_label("1abc"));
        assert!(!is_dns_label("abc-"));
        assert!(!is_dns_label("Abc"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_dns_label(&"a".repeat(63)));
    }
}
