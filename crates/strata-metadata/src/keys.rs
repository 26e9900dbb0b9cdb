//! Composite row keys. Parts are joined with a NUL byte, which no digest,
//! id, key or label can contain, so a prefix of parts selects a contiguous
//! key range.

/// Separator between key parts.
pub const SEP: char = '\0';

/// Joins parts into one key.
pub fn join(parts: &[&str]) -> String {
    parts.join("\0")
}

/// The key prefix that selects every key starting with `parts`.
pub fn prefix(parts: &[&str]) -> String {
    let mut p = join(parts);
    p.push(SEP);
    p
}

/// Splits a composite key into its parts.
pub fn split(key: &str) -> Vec<&str> {
    key.split(SEP).collect()
}

/// True when `part` can be used inside a composite key.
pub fn valid_part(part: &str) -> bool {
    !part.contains(SEP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_split_prefix() {
        let k = join(&["lease", "content", "sha256:x"]);
        assert_eq!(split(&k), ["lease", "content", "sha256:x"]);
        assert!(k.starts_with(&prefix(&["lease"])));
        assert!(!join(&["leasex", "a"]).starts_with(&prefix(&["lease"])));
        assert!(!valid_part("a\0b"));
    }
}
