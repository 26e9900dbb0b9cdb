//! Labels: string key/value pairs attached to content, snapshots and leases,
//! validated with containerd's rules (non-empty key; key and value together
//! at most 4096 bytes).

use std::collections::BTreeMap;

/// Labels, ordered by key so listings and encodings are stable.
pub type Labels = BTreeMap<String, String>;

/// Most bytes a key and its value may take together.
pub const MAX_LABEL_SIZE: usize = 4096;

/// A label that breaks the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LabelError {
    /// The key is empty.
    #[error("label key must not be empty")]
    EmptyKey,
    /// Key and value are longer than [`MAX_LABEL_SIZE`] together.
    #[error(
        "label {key_prefix:?}: key and value are {total} bytes, more than the maximum {MAX_LABEL_SIZE}"
    )]
    TooLong {
        /// The key's first 16 characters, enough to find it.
        key_prefix: String,
        /// The key's and the value's lengths together, in bytes.
        total: usize,
    },
    /// A `K=V` argument without `=`.
    #[error("label {0:?} is not of the form KEY=VALUE")]
    Syntax(String),
}

impl crate::Classify for LabelError {
    fn kind(&self) -> crate::ErrorKind {
        crate::ErrorKind::Invalid
    }
}

/// Checks one label.
pub fn validate(key: &str, value: &str) -> Result<(), LabelError> {
    if key.is_empty() {
        return Err(LabelError::EmptyKey);
    }
    let total = key.len() + value.len();
    if total > MAX_LABEL_SIZE {
        let key_prefix = key.chars().take(16).collect();
        return Err(LabelError::TooLong { key_prefix, total });
    }
    Ok(())
}

/// Checks every label of a set.
pub fn validate_all(labels: &Labels) -> Result<(), LabelError> {
    labels.iter().try_for_each(|(k, v)| validate(k, v))
}

/// Applies containerd's label update to `current`: with no field paths, or
/// the path `labels`, the labels become `requested`; `labels.KEY` sets KEY to
/// its value in `requested`, or removes it when that is absent or empty.
/// Empty values never stay. Any other path is refused: the error names it.
pub fn apply_update<S: AsRef<str>>(
    current: &mut Labels,
    requested: &Labels,
    fieldpaths: &[S],
) -> Result<(), String> {
    if fieldpaths.is_empty() {
        current.clone_from(requested);
    }
    for path in fieldpaths {
        let path = path.as_ref();
        if path == "labels" {
            current.clone_from(requested);
        } else if let Some(key) = path.strip_prefix("labels.") {
            match requested.get(key).filter(|v| !v.is_empty()) {
                Some(v) => {
                    current.insert(key.to_owned(), v.clone());
                }
                None => {
                    current.remove(key);
                }
            }
        } else {
            return Err(path.to_owned());
        }
    }
    current.retain(|_, v| !v.is_empty());
    Ok(())
}

/// Parses `KEY=VALUE` (the value may be empty, which callers use to delete).
pub fn parse_assignment(arg: &str) -> Result<(String, String), LabelError> {
    let (k, v) = arg
        .split_once('=')
        .ok_or_else(|| LabelError::Syntax(arg.to_owned()))?;
    validate(k, v)?;
    Ok((k.to_owned(), v.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_rule_is_inclusive() {
        let key = "k".repeat(96);
        assert!(validate(&key, &"v".repeat(4000)).is_ok());
        let err = validate(&key, &"v".repeat(4001)).unwrap_err();
        assert_eq!(
            err,
            LabelError::TooLong {
                key_prefix: "k".repeat(16),
                total: 4097
            }
        );
        assert_eq!(validate("", "v"), Err(LabelError::EmptyKey));
    }

    #[test]
    fn updates() {
        let l = |pairs: &[(&str, &str)]| -> Labels {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let mut cur = l(&[("a", "1"), ("b", "2")]);
        apply_update::<&str>(&mut cur, &l(&[("c", "3"), ("d", "")]), &[]).unwrap();
        assert_eq!(cur, l(&[("c", "3")]));
        apply_update(
            &mut cur,
            &l(&[("a", "9"), ("c", "")]),
            &["labels.a", "labels.c", "labels.z"],
        )
        .unwrap();
        assert_eq!(cur, l(&[("a", "9")]));
        apply_update(&mut cur, &l(&[("x", "y")]), &["labels"]).unwrap();
        assert_eq!(cur, l(&[("x", "y")]));
        assert_eq!(
            apply_update(&mut cur, &Labels::new(), &["name"]),
            Err("name".to_string())
        );
    }

    #[test]
    fn assignments() {
        assert_eq!(
            parse_assignment("a=b=c").unwrap(),
            ("a".into(), "b=c".into())
        );
        assert_eq!(parse_assignment("a=").unwrap(), ("a".into(), String::new()));
        assert!(matches!(parse_assignment("a"), Err(LabelError::Syntax(_))));
    }
}
