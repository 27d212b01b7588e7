//! The one definition of a valid path inside an artifact, used by the packer (to
//! refuse what the unpacker would refuse) and by the unpacker (to refuse hostile
//! archives). Paths are UTF-8, relative, `/`-separated, without `.` or `..`.

use unicode_normalization::UnicodeNormalization;

/// Longest name of a single path component on Linux filesystems.
pub const MAX_COMPONENT_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("empty path")]
    Empty,
    #[error("absolute path")]
    Absolute,
    #[error("path leaves the root through '..'")]
    ParentDir,
    #[error("path contains a backslash")]
    Backslash,
    #[error("path contains a NUL or control character")]
    Control,
    #[error("path component longer than {MAX_COMPONENT_LEN} bytes")]
    ComponentTooLong,
    #[error("path is {depth} levels deep (limit {limit})")]
    TooDeep { depth: usize, limit: usize },
    #[error("path is not valid UTF-8")]
    NotUtf8,
}

/// Split a relative archive path into its components, or say why it is not one.
/// A trailing `/` (directory entries) and `./` components are accepted and dropped.
pub fn components(path: &str, max_depth: usize) -> Result<Vec<&str>, PathError> {
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    if path.chars().any(char::is_control) {
        return Err(PathError::Control);
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => continue,
            ".." => return Err(PathError::ParentDir),
            p if p.len() > MAX_COMPONENT_LEN => return Err(PathError::ComponentTooLong),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(PathError::Empty);
    }
    if parts.len() > max_depth {
        return Err(PathError::TooDeep {
            depth: parts.len(),
            limit: max_depth,
        });
    }
    Ok(parts)
}

/// Two paths that map to the same key would collide on a case-insensitive or
/// normalising filesystem (`A` vs `a`, precomposed vs decomposed `é`).
pub fn collision_key(components: &[&str]) -> String {
    let mut joined = components.join("/");
    if joined.is_ascii() {
        // ASCII is its own NFC and lowercases byte by byte: the same key, without
        // the normaliser (nearly every path in node_modules).
        joined.make_ascii_lowercase();
        return joined;
    }
    joined.nfc().flat_map(char::to_lowercase).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_paths() {
        assert_eq!(components("node_modules/express/index.js", 64).unwrap().len(), 3);
        assert_eq!(components("./src/", 64).unwrap(), ["src"]);
    }

    #[test]
    fn refuses_escapes_and_tricks() {
        assert_eq!(components("../x", 64), Err(PathError::ParentDir));
        assert_eq!(components("a/../../x", 64), Err(PathError::ParentDir));
        assert_eq!(components("/etc/passwd", 64), Err(PathError::Absolute));
        assert_eq!(components("..\\x", 64), Err(PathError::Backslash));
        assert_eq!(components("", 64), Err(PathError::Empty));
        assert_eq!(components("./", 64), Err(PathError::Empty));
        assert_eq!(components("a\0b", 64), Err(PathError::Control));
        assert_eq!(
            components("a/b/c", 2),
            Err(PathError::TooDeep { depth: 3, limit: 2 })
        );
        assert_eq!(components(&"x".repeat(256), 64), Err(PathError::ComponentTooLong));
    }

    #[test]
    fn case_and_normalisation_collide() {
        assert_eq!(collision_key(&["README.md"]), collision_key(&["readme.md"]));
        assert_eq!(collision_key(&["caf\u{e9}"]), collision_key(&["cafe\u{301}"]));
        assert_ne!(collision_key(&["a"]), collision_key(&["b"]));
        // The ASCII shortcut gives what the normaliser gives.
        let ascii: String = (0u8..128).map(char::from).collect();
        let slow: String = ascii.nfc().flat_map(char::to_lowercase).collect();
        assert_eq!(
            collision_key(&[&ascii, "Node_Modules"]),
            format!("{slow}/node_modules")
        );
    }
}
