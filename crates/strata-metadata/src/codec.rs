//! Versioned record encoding: one version byte, then the record in postcard
//! (a compact, schema-less binary serde format). A record type names its
//! current version; bytes of an older version are upgraded on read by the
//! type's [`Record::upgrade`], bytes of a newer version are refused.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A type stored as a row value.
pub trait Record: Serialize + DeserializeOwned {
    /// Name of the table that holds records of this type.
    const TABLE: &'static str;
    /// Current encoding version, written as the first byte.
    const VERSION: u8;

    /// Keys this record puts in secondary indexes when stored at `key`:
    /// (index table, index key). The transaction keeps them in step with
    /// every put and delete. The default puts none.
    fn index_keys(&self, key: &str) -> Vec<(&'static str, String)> {
        let _ = key;
        Vec::new()
    }

    /// True when [`Record::index_keys`] can return any (writes then read
    /// the old record first).
    const INDEXED: bool = false;

    /// Decodes the payload of an older `version`. The default knows none.
    fn upgrade(version: u8, payload: &[u8]) -> Result<Self, String> {
        let _ = payload;
        Err(format!("no upgrade from record version {version}"))
    }
}

/// Encodes a record with its version byte.
pub fn encode<R: Record>(record: &R) -> Vec<u8> {
    let mut out = vec![R::VERSION];
    // Serializing plain data into a Vec cannot fail.
    out.extend(postcard::to_stdvec(record).expect("postcard serialisation into memory"));
    out
}

/// Decodes a record, upgrading older versions.
pub fn decode<R: Record>(bytes: &[u8]) -> Result<R, String> {
    let (&version, payload) = bytes.split_first().ok_or("empty record")?;
    match version.cmp(&R::VERSION) {
        std::cmp::Ordering::Equal => postcard::from_bytes(payload).map_err(|e| e.to_string()),
        std::cmp::Ordering::Less => R::upgrade(version, payload),
        std::cmp::Ordering::Greater => Err(format!(
            "record version {version} is newer than the supported {}",
            R::VERSION
        )),
    }
}
