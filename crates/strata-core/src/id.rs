//! Random identifiers: 128 bits from the OS, written as 25 base-36
//! characters (the form BuildKit's identity ids take), so they are short,
//! lowercase and safe in paths and labels.

/// Length of every id this module makes.
pub const ID_LEN: usize = 25;

const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// A new random id of [`ID_LEN`] lowercase base-36 characters.
///
/// # Panics
/// Panics if the OS random source fails, which on Linux means the process
/// cannot make any safe progress.
pub fn new_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source failed");
    encode(u128::from_le_bytes(bytes))
}

fn encode(mut n: u128) -> String {
    // 36^25 > 2^128, so 25 digits always suffice; leading zeros keep the
    // length fixed.
    let mut out = [b'0'; ID_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 36) as usize];
        n /= 36;
    }
    out.iter().map(|&b| char::from(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_have_fixed_shape_and_differ() {
        let ids: HashSet<String> = (0..1000).map(|_| new_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| {
            id.len() == ID_LEN
                && id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        }));
    }

    #[test]
    fn encoding_extremes() {
        assert_eq!(encode(0), "0".repeat(ID_LEN));
        assert_eq!(encode(u128::MAX), "f5lxx1zz5pnorynqglhzmsp33");
    }
}
