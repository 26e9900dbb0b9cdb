//! The labels leases and the collector understand (containerd's names).

use std::time::SystemTime;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Pins an object: it is a root of the collection.
pub const GC_ROOT: &str = "containerd.io/gc.root";
/// RFC 3339 time: a lease expires then; a non-lease object is a root until
/// then.
pub const GC_EXPIRE: &str = "containerd.io/gc.expire";
/// A flat lease holds what it names and those snapshots' parents, not what
/// their labels reference.
pub const GC_FLAT: &str = "containerd.io/gc.flat";
/// Prefix of labels that reference content (value: a digest).
pub const GC_REF_CONTENT: &str = "containerd.io/gc.ref.content";
/// Prefix of labels that reference snapshots (`...snapshot.<backend>`,
/// value: a key).
pub const GC_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot.";
/// Marks a short-lived lease; a root's leases with it are removed at open.
pub const TEMPORARY: &str = "buildkit/lease.temporary";

/// Formats a time as RFC 3339 (UTC, nanoseconds).
pub fn format_time(t: SystemTime) -> String {
    OffsetDateTime::from(t)
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// Parses an RFC 3339 time with any offset.
pub fn parse_time(s: &str) -> Option<SystemTime> {
    OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// True when `labels` carry a `gc.expire` that is not after `now`. A value
/// that does not parse does not expire anything.
pub fn expired(labels: &strata_core::Labels, now: SystemTime) -> bool {
    labels
        .get(GC_EXPIRE)
        .and_then(|v| parse_time(v))
        .is_some_and(|t| t <= now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_round_trip_and_offsets_parse() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(parse_time(&format_time(t)), Some(t));
        assert_eq!(
            parse_time("2027-01-15T09:00:00+01:00"),
            parse_time("2027-01-15T08:00:00Z")
        );
        assert_eq!(parse_time("tomorrow"), None);
    }

    #[test]
    fn expiry() {
        let now = SystemTime::now();
        let at = |d: i64| {
            let t = if d >= 0 {
                now + Duration::from_secs(d as u64)
            } else {
                now - Duration::from_secs((-d) as u64)
            };
            strata_core::Labels::from([(GC_EXPIRE.to_string(), format_time(t))])
        };
        assert!(expired(&at(-10), now));
        assert!(!expired(&at(3600), now));
        assert!(!expired(&strata_core::Labels::new(), now));
    }
}
