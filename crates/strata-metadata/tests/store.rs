//! Scenario tests of the metadata store on real redb files: atomic
//! transactions, prefix scans, the integrity check, and property tests of
//! the versioned record encoding.

use std::collections::BTreeMap;

use proptest::prelude::*;
use strata_metadata::keys;
use strata_metadata::records::*;
use strata_metadata::{MetaDb, Reader, decode, encode};

fn open() -> (tempfile::TempDir, MetaDb) {
    let dir = tempfile::tempdir().unwrap();
    let db = MetaDb::open(&dir.path().join("meta.redb")).unwrap();
    (dir, db)
}

fn snapshot(id: u64, kind: SnapshotKind, parent: Option<&str>) -> SnapshotRecord {
    SnapshotRecord {
        id: id.to_string(),
        kind,
        parent: parent.map(str::to_owned),
        labels: Default::default(),
        created: 1,
        updated: 2,
        usage: None,
        lazy: false,
    }
}

#[test]
fn uncommitted_transaction_changes_nothing() {
    let (_d, db) = open();
    let tx = db.write().unwrap();
    tx.put(
        "k",
        &LeaseRecord {
            created: 1,
            labels: Default::default(),
        },
    )
    .unwrap();
    assert!(tx.get::<LeaseRecord>("k").unwrap().is_some());
    drop(tx);
    assert!(
        db.read()
            .unwrap()
            .get::<LeaseRecord>("k")
            .unwrap()
            .is_none()
    );
}

#[test]
fn data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    {
        let db = MetaDb::open(&path).unwrap();
        let tx = db.write().unwrap();
        tx.put("a", &snapshot(1, SnapshotKind::Committed, None))
            .unwrap();
        assert_eq!(tx.next_sequence("snapshot").unwrap(), 1);
        assert_eq!(tx.next_sequence("snapshot").unwrap(), 2);
        tx.commit().unwrap();
    }
    let db = MetaDb::open(&path).unwrap();
    let r = db.read().unwrap();
    assert_eq!(r.get::<SnapshotRecord>("a").unwrap().unwrap().id, "1");
    assert_eq!(r.meta("snapshot").unwrap(), Some(2));
}

/// A deferred commit is seen at once and made durable by the next durable
/// one.
#[test]
fn deferred_writes_are_visible_and_ride_on_the_next_durable_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    {
        let db = MetaDb::open(&path).unwrap();
        let tx = db.write_deferred().unwrap();
        tx.put("deferred", &snapshot(1, SnapshotKind::Committed, None))
            .unwrap();
        tx.commit().unwrap();
        assert!(
            db.read()
                .unwrap()
                .get::<SnapshotRecord>("deferred")
                .unwrap()
                .is_some()
        );
        let tx = db.write().unwrap();
        tx.put("durable", &snapshot(2, SnapshotKind::Committed, None))
            .unwrap();
        tx.commit().unwrap();
    }
    let db = MetaDb::open(&path).unwrap();
    let r = db.read().unwrap();
    assert_eq!(
        r.get::<SnapshotRecord>("deferred").unwrap().unwrap().id,
        "1"
    );
    assert_eq!(r.get::<SnapshotRecord>("durable").unwrap().unwrap().id, "2");
}

#[test]
fn a_second_open_in_the_same_process_is_refused() {
    use strata_core::{Classify, ErrorKind};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    let _db = MetaDb::open(&path).unwrap();
    let err = MetaDb::open(&path).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Locked, "{err}");
}

#[test]
fn prefix_scan_and_delete() {
    let (_d, db) = open();
    let tx = db.write().unwrap();
    for (lease, kind, id) in [
        ("l1", "content", "sha256:a"),
        ("l1", "snapshots/overlay", "k"),
        ("l10", "content", "x"),
        ("l2", "ingests", "r"),
    ] {
        tx.put(&keys::join(&[lease, kind, id]), &LeaseResourceRecord {})
            .unwrap();
    }
    let l1 = tx
        .scan::<LeaseResourceRecord>(&keys::prefix(&["l1"]))
        .unwrap();
    assert_eq!(l1.len(), 2, "l10 must not match the l1 prefix");
    assert_eq!(
        tx.delete_prefix::<LeaseResourceRecord>(&keys::prefix(&["l1"]))
            .unwrap(),
        2
    );
    assert_eq!(tx.scan::<LeaseResourceRecord>("").unwrap().len(), 2);
    assert!(
        tx.delete::<LeaseResourceRecord>(&keys::join(&["l2", "ingests", "r"]))
            .unwrap()
    );
    assert!(
        !tx.delete::<LeaseResourceRecord>(&keys::join(&["l2", "ingests", "r"]))
            .unwrap()
    );
    tx.commit().unwrap();
}

#[test]
fn check_is_clean_on_consistent_data() {
    let (_d, db) = open();
    let tx = db.write().unwrap();
    let digest = strata_core::Digest::of_bytes(strata_core::Algorithm::Sha256, b"x").to_string();
    tx.put(
        &digest,
        &ContentRecord {
            size: 1,
            created: 1,
            updated: 1,
            labels: Default::default(),
        },
    )
    .unwrap();
    tx.put("base", &snapshot(1, SnapshotKind::Committed, None))
        .unwrap();
    tx.put("child", &snapshot(2, SnapshotKind::Active, Some("base")))
        .unwrap();
    tx.put(
        &keys::join(&["default", "lease"]),
        &LeaseRecord {
            created: 1,
            labels: Default::default(),
        },
    )
    .unwrap();
    tx.put(
        &keys::join(&["default", "lease", "snapshots/overlay", "missing-ok"]),
        &LeaseResourceRecord {},
    )
    .unwrap();
    tx.put(
        &keys::join(&["", &digest]),
        &ImportByBlobRecord {
            snapshot: "base".into(),
        },
    )
    .unwrap();
    tx.put(&keys::join(&["base", &digest]), &SnapshotContentRecord {})
        .unwrap();
    let values = BTreeMap::from([(
        "blob".to_string(),
        RefValue {
            index: Some("blob:x".into()),
            value: b"1".to_vec(),
        },
    )]);
    tx.put(
        "ref1",
        &RefRecord {
            snapshot: "base".into(),
            values,
        },
    )
    .unwrap();
    tx.put(&keys::join(&["blob:x", "ref1"]), &RefIndexRecord {})
        .unwrap();
    tx.commit().unwrap();
    assert_eq!(db.check().unwrap(), []);
}

#[test]
fn check_reports_every_violation() {
    let (_d, db) = open();
    let tx = db.write().unwrap();
    tx.put("active", &snapshot(1, SnapshotKind::Active, None))
        .unwrap();
    tx.put(
        "orphan",
        &snapshot(2, SnapshotKind::Committed, Some("gone")),
    )
    .unwrap();
    tx.put(
        "on-active",
        &snapshot(3, SnapshotKind::Committed, Some("active")),
    )
    .unwrap();
    tx.put("dup-id", &snapshot(3, SnapshotKind::Committed, None))
        .unwrap();
    let lazy = |id, kind, parent| SnapshotRecord {
        lazy: true,
        ..snapshot(id, kind, parent)
    };
    tx.put("lazy", &lazy(4, SnapshotKind::Committed, None))
        .unwrap();
    tx.put("lazy-active", &lazy(5, SnapshotKind::Active, Some("lazy")))
        .unwrap();
    // A snapshot made on a lazy one while its layer was attached.
    tx.put(
        "on-lazy",
        &snapshot(6, SnapshotKind::Committed, Some("lazy")),
    )
    .unwrap();
    tx.put(
        "lazy-on-lazy",
        &lazy(7, SnapshotKind::Committed, Some("lazy")),
    )
    .unwrap();
    tx.put(
        &keys::join(&["default", "no-lease", "content", "x"]),
        &LeaseResourceRecord {},
    )
    .unwrap();
    tx.put(
        "ref",
        &RefRecord {
            snapshot: "nope".into(),
            values: BTreeMap::new(),
        },
    )
    .unwrap();
    tx.put(&keys::join(&["idx", "ref"]), &RefIndexRecord {})
        .unwrap();
    tx.put(
        &keys::join(&["gone", "sha256:x"]),
        &ImportByDiffRecord {
            snapshot: "missing".into(),
        },
    )
    .unwrap();
    tx.put(
        &keys::join(&["active", "sha256:y"]),
        &SnapshotContentRecord {},
    )
    .unwrap();
    tx.put(
        "not-a-digest",
        &ContentRecord {
            size: 1,
            created: 1,
            updated: 1,
            labels: Default::default(),
        },
    )
    .unwrap();
    tx.commit().unwrap();
    let found: Vec<String> = db
        .check()
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    let expect = [
        "content \"not-a-digest\": invalid digest",
        "snapshots \"orphan\": parent \"gone\" does not exist",
        "snapshots \"on-active\": parent \"active\" is not committed",
        "is also used by",
        "snapshots \"lazy-active\": lazy, but not committed",
        "lease_resources \"default/no-lease/content/x\": lease \"no-lease\" of namespace \"default\" does not exist",
        "refs \"ref\": snapshot \"nope\" does not exist",
        "ref_index \"idx/ref\": ref \"ref\" has no value indexed \"idx\"",
        "import_by_diff \"gone/sha256:x\": parent snapshot \"gone\" does not exist",
        "import_by_diff \"gone/sha256:x\": snapshot \"missing\" does not exist",
        "snapshot_content \"active/sha256:y\": content \"sha256:y\" does not exist",
    ];
    for e in expect {
        assert!(
            found.iter().any(|f| f.contains(e)),
            "missing {e:?} in {found:#?}"
        );
    }
    assert_eq!(found.len(), expect.len(), "{found:#?}");
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map(".{0,20}", ".{0,40}", 0..5)
}

fn kind() -> impl Strategy<Value = SnapshotKind> {
    prop_oneof![
        Just(SnapshotKind::Active),
        Just(SnapshotKind::View),
        Just(SnapshotKind::Committed)
    ]
}

proptest! {
    #[test]
    fn content_records_round_trip(size in any::<u64>(), created in any::<i64>(), updated in any::<i64>(), labels in labels()) {
        let r = ContentRecord { size, created, updated, labels };
        prop_assert_eq!(decode::<ContentRecord>(&encode(&r)).unwrap(), r);
    }

    #[test]
    fn snapshot_records_round_trip(
        id in "[a-z0-9]{25}", kind in kind(), parent in proptest::option::of(".{0,30}"),
        labels in labels(), usage in proptest::option::of((any::<u64>(), any::<u64>())),
    ) {
        let r = SnapshotRecord {
            id, kind, parent, labels, created: -5, updated: i64::MAX,
            usage: usage.map(|(size, inodes)| UsageRecord { size, inodes }),
            lazy: false,
        };
        prop_assert_eq!(decode::<SnapshotRecord>(&encode(&r)).unwrap(), r);
    }

    #[test]
    fn ingest_and_ref_records_round_trip(
        id in "[a-z0-9]{25}", expected_size in proptest::option::of(any::<u64>()),
        expected in proptest::option::of(".{0,70}"),
        values in proptest::collection::btree_map(".{0,10}", (proptest::option::of(".{0,10}"), proptest::collection::vec(any::<u8>(), 0..32)), 0..4),
    ) {
        let ingest = IngestRecord { id, expected_size, expected, started: 1, updated: 2 };
        prop_assert_eq!(decode::<IngestRecord>(&encode(&ingest)).unwrap(), ingest);
        let r = RefRecord {
            snapshot: "s".into(),
            values: values.into_iter().map(|(k, (index, value))| (k, RefValue { index, value })).collect(),
        };
        prop_assert_eq!(decode::<RefRecord>(&encode(&r)).unwrap(), r);
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode::<SnapshotRecord>(&bytes);
        let _ = decode::<ContentRecord>(&bytes);
    }
}

#[test]
fn newer_and_empty_records_are_refused() {
    let mut bytes = encode(&GcRecord::default());
    bytes[0] = 9;
    let err = decode::<GcRecord>(&bytes).unwrap_err();
    assert!(err.contains("record version 9 is newer"), "{err}");
    assert!(decode::<GcRecord>(&[]).unwrap_err().contains("empty"));
    bytes[0] = 0;
    assert!(
        decode::<GcRecord>(&bytes)
            .unwrap_err()
            .contains("no upgrade from record version 0")
    );
}
