//! The backend conformance suite: containerd's snapshotter test cases, the
//! ones containerd lists as unwritten, and a 500-layer chain, run with real
//! mounts against any [`Snapshotter`]. A backend crate instantiates it with
//! [`conformance_suite!`](crate::conformance_suite).
//!
//! Chain cases follow containerd's `checkSnapshots`: each layer is applied
//! through a real mount of a prepared snapshot and committed, and at every
//! depth a mounted view must render exactly like one plain directory to
//! which the same changes were applied in order.
//!
//! The suite brings what it needs itself (the tree listing it compares,
//! [`tree::render`], and named skips, [`require_root`] and [`skip`]), so
//! a backend crate of any workspace can run it with this crate alone (and
//! tokio for the test attribute).

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use strata_core::{Classify, ErrorKind, Filter, Labels};

use crate::mounts::{LocalMount, MountOptions};
use crate::{Info, Kind, Snapshotter};

mod skip;
pub mod tree;

pub use skip::{REQUIRE_PRIVILEGED, SKIP_LOG, require_root, skip};
/// The metadata store a [`Factory`] opens its store on, re-exported so a
/// backend crate names it without depending on strata-metadata.
pub use strata_metadata::MetaDb;
use tree::render;

/// Makes the snapshotter under test for a state root.
pub type Factory = fn(&Path, Arc<MetaDb>) -> Arc<dyn Snapshotter>;

/// A change applied to a mounted tree.
pub type Applier = Box<dyn Fn(&Path) + Send + Sync>;

/// A fresh state root and snapshotter for one case.
#[derive(Debug)]
pub struct Fixture {
    _tmp: tempfile::TempDir,
    /// The snapshotter under test.
    pub sn: Arc<dyn Snapshotter>,
    work: PathBuf,
    /// What must outlive the snapshotter (a file system it lives on).
    _keep: Option<Box<dyn std::fmt::Debug + Send + Sync>>,
}

impl Fixture {
    /// A new root in a temporary directory.
    pub fn new(factory: Factory) -> Fixture {
        Fixture::make(tempfile::tempdir().expect("temp dir"), None, factory)
    }

    /// A new root in a temporary directory under `base`, for a backend that
    /// needs its own file system there; `keep` (that file system) is
    /// dropped after the snapshotter.
    pub fn on(
        base: &Path,
        keep: impl std::fmt::Debug + Send + Sync + 'static,
        factory: Factory,
    ) -> Fixture {
        let tmp = tempfile::tempdir_in(base).expect("temp dir");
        Fixture::make(tmp, Some(Box::new(keep)), factory)
    }

    fn make(
        tmp: tempfile::TempDir,
        keep: Option<Box<dyn std::fmt::Debug + Send + Sync>>,
        factory: Factory,
    ) -> Fixture {
        let root = tmp.path().join("root");
        fs::create_dir(&root).expect("create root");
        let db = Arc::new(MetaDb::open(&root.join("meta.redb")).expect("open metadata"));
        let work = tmp.path().join("work");
        fs::create_dir(&work).expect("create work dir");
        let sn = factory(&root, db);
        Fixture {
            _tmp: tmp,
            sn,
            work,
            _keep: keep,
        }
    }

    fn scratch(&self, name: &str) -> PathBuf {
        let p = self.work.join(name);
        fs::create_dir_all(&p).expect("create scratch dir");
        p
    }

    /// Prepares `key` on `parent`, mounts it, runs `apply` on the mounted
    /// tree, unmounts and commits it as `name`.
    pub async fn layer(
        &self,
        name: &str,
        parent: Option<&str>,
        apply: &(dyn Fn(&Path) + Send + Sync),
    ) {
        let key = format!("{name}-active");
        let mounts = self
            .sn
            .prepare(&key, parent, Labels::new())
            .await
            .expect("prepare");
        let m = LocalMount::mount(
            &mounts,
            &self.work,
            MountOptions {
                force_remount: true,
                temporary: true,
            },
        )
        .expect("mount");
        apply(m.path());
        m.unmount().expect("unmount");
        self.sn
            .commit(name, &key, Labels::new())
            .await
            .expect("commit");
    }

    /// Renders a read-only view of `name`.
    pub async fn render_view(&self, name: &str) -> String {
        let key = format!("view-{name}-{}", strata_core::id::new_id());
        let mounts = self
            .sn
            .view(&key, Some(name), Labels::new())
            .await
            .expect("view");
        let m = LocalMount::mount(
            &mounts,
            &self.work,
            MountOptions {
                force_remount: true,
                temporary: true,
            },
        )
        .expect("mount view");
        let tree = render(m.path());
        m.unmount().expect("unmount view");
        self.sn.remove(&key).await.expect("remove view");
        tree
    }

    /// Builds a chain from `appliers` and checks every depth (or only the
    /// last when `only_last`) against a flat reference directory.
    pub async fn check_chain(&self, appliers: &[Applier], only_last: bool) {
        let flat = self.scratch("flat");
        let mut parent: Option<String> = None;
        for (i, apply) in appliers.iter().enumerate() {
            let name = format!("layer-{i}");
            self.layer(&name, parent.as_deref(), apply.as_ref()).await;
            apply(&flat);
            if !only_last || i + 1 == appliers.len() {
                assert_eq!(
                    self.render_view(&name).await,
                    render(&flat),
                    "layer {i} differs from the flat reference"
                );
            }
            parent = Some(name);
        }
    }
}

fn write(p: &Path, data: &str) {
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).expect("mkdir -p");
    }
    fs::write(p, data).expect("write");
    pin_time(p);
}

/// Sets `p`'s times (not following a symlink) to one fixed instant: chains
/// write each file twice (into the snapshot and into the flat reference),
/// and the tree render compares modification times.
fn pin_time(p: &Path) {
    let parent = strata_sys::Root::open(p.parent().expect("a parent")).expect("open parent");
    let t = strata_sys::Times {
        sec: 1_700_000_000,
        nsec: 0,
    };
    parent
        .set_times(Path::new(p.file_name().expect("a name")), t, t)
        .expect("set times");
}

fn rm_rf(p: &Path) {
    let root = strata_sys::Root::open(p.parent().expect("a parent")).expect("open parent");
    root.remove_all(Path::new(p.file_name().expect("a name")))
        .expect("remove tree");
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).expect("chown");
}

fn boxed(f: impl Fn(&Path) + Send + Sync + 'static) -> Applier {
    Box::new(f)
}

async fn infos(sn: &dyn Snapshotter, filters: &[&str]) -> Vec<String> {
    let filter = Filter::parse(filters).expect("filter");
    let mut names = Vec::new();
    sn.walk(&filter, &mut |i: Info| {
        names.push(i.name);
        Box::pin(async { Ok(()) })
    })
    .await
    .expect("walk");
    names.sort();
    names
}

/// containerd `Basic`.
pub async fn basic(fx: &Fixture) {
    let sn = fx.sn.as_ref();
    fx.layer("c1", None, &|p| {
        write(&p.join("foo"), "foo\n");
        write(&p.join("a/b/c"), "c");
        fs::create_dir_all(p.join("a/d")).unwrap();
    })
    .await;
    let st = sn.stat("c1").await.unwrap();
    assert_eq!((st.kind, st.parent.as_deref()), (Kind::Committed, None));
    assert_eq!(
        sn.stat("c1-active").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );

    let expected = fx.scratch("expected");
    write(&expected.join("foo"), "foo\n");
    write(&expected.join("a/b/c"), "c");
    fs::create_dir_all(expected.join("a/d")).unwrap();
    assert_eq!(fx.render_view("c1").await, render(&expected));

    fx.layer("c2", Some("c1"), &|p| {
        assert_eq!(
            fs::read_to_string(p.join("foo")).unwrap(),
            "foo\n",
            "the child starts as its parent"
        );
        write(&p.join("foo"), "foo modified\n");
        write(&p.join("bar"), "bar\n");
        rm_rf(&p.join("a/b"));
    })
    .await;
    write(&expected.join("foo"), "foo modified\n");
    write(&expected.join("bar"), "bar\n");
    rm_rf(&expected.join("a/b"));
    assert_eq!(sn.stat("c2").await.unwrap().parent.as_deref(), Some("c1"));
    assert_eq!(infos(sn, &[]).await, ["c1", "c2"]);
    assert_eq!(fx.render_view("c2").await, render(&expected));
}

/// containerd `StatActive`.
pub async fn stat_active(fx: &Fixture) {
    let sn = fx.sn.as_ref();
    fx.layer("base", None, &|p| write(&p.join("f"), "x")).await;
    sn.prepare("active", Some("base"), Labels::new())
        .await
        .unwrap();
    let st = sn.stat("active").await.unwrap();
    assert_eq!(
        (st.name.as_str(), st.kind, st.parent.as_deref()),
        ("active", Kind::Active, Some("base"))
    );
}

/// containerd `StatComitted`.
pub async fn stat_committed(fx: &Fixture) {
    let sn = fx.sn.as_ref();
    fx.layer("base", None, &|p| write(&p.join("f"), "x")).await;
    sn.prepare("k", Some("base"), Labels::new()).await.unwrap();
    sn.commit("done", "k", Labels::new()).await.unwrap();
    let st = sn.stat("done").await.unwrap();
    assert_eq!(
        (st.kind, st.parent.as_deref()),
        (Kind::Committed, Some("base"))
    );
}

/// containerd `TransitivityTest`.
pub async fn transitivity(fx: &Fixture) {
    let sn = fx.sn.as_ref();
    fx.layer("a", None, &|p| write(&p.join("a"), "a")).await;
    fx.layer("b", Some("a"), &|p| write(&p.join("b"), "b"))
        .await;
    fx.layer("c", Some("b"), &|p| write(&p.join("c"), "c"))
        .await;
    assert_eq!(sn.stat("c").await.unwrap().parent.as_deref(), Some("b"));
    assert_eq!(sn.stat("b").await.unwrap().parent.as_deref(), Some("a"));
    assert_eq!(sn.stat("a").await.unwrap().parent, None);
}

/// containerd `PreareViewFailingtest`: keys are one namespace.
pub async fn prepare_view_clash(fx: &Fixture) {
    let sn = fx.sn.as_ref();
    fx.layer("base", None, &|p| write(&p.join("f"), "x")).await;
    sn.prepare("k", Some("base"), Labels::new()).await.unwrap();
    for r in [
        sn.view("k", Some("base"), Labels::new()).await,
        sn.prepare("k", Some("base"), Labels::new()).await,
    ] {
        assert_eq!(r.unwrap_err().kind(), ErrorKind::AlreadyExists);
    }
    sn.view("v", Some("base"), Labels::new()).await.unwrap();
    assert_eq!(
        sn.view("v", Some("base"), Labels::new())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        sn.prepare("v", None, Labels::new())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        sn.commit("base", "k", Labels::new())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        sn.stat("k").await.unwrap().kind,
        Kind::Active,
        "a failed commit leaves the active key"
    );
    assert_eq!(
        sn.prepare("x", Some("missing"), Labels::new())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        sn.prepare("x", Some("k"), Labels::new())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::FailedPrecondition
    );
    assert_eq!(
        sn.commit("y", "v", Labels::new()).await.unwrap_err().kind(),
        ErrorKind::FailedPrecondition
    );
    assert_eq!(
        sn.mounts("base").await.unwrap_err().kind(),
        ErrorKind::FailedPrecondition
    );
}

/// containerd `Update`.
pub async fn update(fx: &Fixture) {
    let sn = fx.sn.as_ref();
    let t0 = SystemTime::now();
    let labels = Labels::from([
        ("l1".to_string(), "v1".to_string()),
        ("l2".into(), "v2".into()),
    ]);
    sn.prepare("k", None, labels.clone()).await.unwrap();
    let t1 = SystemTime::now();
    let mut info = sn.stat("k").await.unwrap();
    assert_eq!(info.labels, labels);
    assert!(info.created >= t0 && info.created <= t1 && info.updated == info.created);

    info.labels = Labels::from([
        ("l1".to_string(), "new".to_string()),
        ("l3".into(), "v3".into()),
    ]);
    let u0 = SystemTime::now();
    let got = sn.update(info.clone(), &[]).await.unwrap();
    assert_eq!(got.labels, info.labels);
    assert!(got.updated >= u0 && got.created == info.created);

    info.labels = Labels::from([("l2".to_string(), "back".to_string())]);
    let got = sn
        .update(info.clone(), &["labels.l2".into(), "labels.l3".into()])
        .await
        .unwrap();
    assert_eq!(
        got.labels,
        Labels::from([
            ("l1".to_string(), "new".to_string()),
            ("l2".into(), "back".into())
        ])
    );
    let got = sn.update(info.clone(), &["labels".into()]).await.unwrap();
    assert_eq!(got.labels, info.labels);
    for immutable in ["name", "parent", "kind", "created"] {
        let err = sn
            .update(info.clone(), &[immutable.into()])
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "{immutable}");
    }
    let mut missing = info.clone();
    missing.name = "missing".into();
    assert_eq!(
        sn.update(missing, &[]).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

/// containerd `Remove`: keys and names can be reused after removal.
pub async fn remove(fx: &Fixture) {
    let sn = fx.sn.as_ref();
    fx.layer("base", None, &|p| write(&p.join("f"), "x")).await;
    sn.prepare("k", Some("base"), Labels::new()).await.unwrap();
    sn.remove("k").await.unwrap();
    sn.view("k", Some("base"), Labels::new()).await.unwrap();
    sn.remove("k").await.unwrap();
    sn.prepare("k", Some("base"), Labels::new()).await.unwrap();
    sn.commit("name", "k", Labels::new()).await.unwrap();
    sn.remove("name").await.unwrap();
    sn.prepare("k2", Some("base"), Labels::new()).await.unwrap();
    sn.commit("name", "k2", Labels::new()).await.unwrap();
    assert_eq!(
        sn.remove("nothing").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

/// containerd `Walk`: the filter language.
pub async fn walk(fx: &Fixture) {
    let sn = fx.sn.as_ref();
    let l = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Labels>()
    };
    sn.prepare("a-active", None, l(&[("containerd.io/gc.root", "x")]))
        .await
        .unwrap();
    sn.commit(
        "a",
        "a-active",
        l(&[("containerd.io/gc.root", "x"), ("l", "1")]),
    )
    .await
    .unwrap();
    sn.prepare("b", Some("a"), l(&[("l", "2")])).await.unwrap();
    sn.view("v", Some("a"), Labels::new()).await.unwrap();
    sn.prepare("c", None, Labels::new()).await.unwrap();
    assert_eq!(
        infos(sn, &[r#"labels."containerd.io/gc.root"==x"#]).await,
        ["a"]
    );
    assert_eq!(infos(sn, &["kind==active"]).await, ["b", "c"]);
    assert_eq!(infos(sn, &["kind==view"]).await, ["v"]);
    assert_eq!(infos(sn, &["kind==committed"]).await, ["a"]);
    assert_eq!(infos(sn, &["name==b"]).await, ["b"]);
    assert_eq!(infos(sn, &["parent==a"]).await, ["b", "v"]);
    assert_eq!(infos(sn, &[r#"parent!="""#]).await, ["b", "v"]);
    assert_eq!(infos(sn, &["labels.l"]).await, ["a", "b"]);
    assert_eq!(infos(sn, &["labels.l==2"]).await, ["b"]);
    assert_eq!(infos(sn, &["name==c", "kind==view"]).await, ["c", "v"]);
    assert_eq!(infos(sn, &["kind==active,labels.l==2"]).await, ["b"]);
}

/// containerd `LayerFileupdate` (docker#21555).
pub async fn layer_file_update(fx: &Fixture) {
    fx.check_chain(
        &[
            boxed(|p| {
                write(&p.join("etc/hosts"), "mydomain 10.0.0.1");
                write(&p.join("etc/profile"), "PATH=/usr/bin");
            }),
            boxed(|p| write(&p.join("etc/hosts"), "mydomain 10.0.0.120")),
            boxed(|p| write(&p.join("etc/hosts"), "mydomain 10.0.0.2\n")),
        ],
        false,
    )
    .await;
}

/// containerd `RemoveDirectoryInLowerLayer` (docker#25244).
pub async fn remove_directory_in_lower_layer(fx: &Fixture) {
    fx.check_chain(
        &[
            boxed(|p| {
                write(&p.join("lib/modules/a"), "a");
                write(&p.join("lib/modules/b"), "b");
                fs::create_dir_all(p.join("lib/empty")).unwrap();
            }),
            boxed(|p| rm_rf(&p.join("lib"))),
            boxed(|p| write(&p.join("lib/modules/c"), "c")),
        ],
        false,
    )
    .await;
}

/// containerd `Chown` (docker#20240, #24913, #28391).
pub async fn chown_lower(fx: &Fixture) {
    fx.check_chain(
        &[
            boxed(|p| {
                write(&p.join("opt/a/file"), "f");
                fs::create_dir_all(p.join("opt/b")).unwrap();
            }),
            boxed(|p| {
                chown(&p.join("opt"), 1, 2);
                chown(&p.join("opt/a"), 3, 4);
                chown(&p.join("opt/a/file"), 5, 6);
            }),
            boxed(|p| chown(&p.join("opt/b"), 7, 8)),
        ],
        false,
    )
    .await;
}

/// containerd `DirectoryPermissionOnCommit` (docker#27298).
pub async fn directory_permission_on_commit(fx: &Fixture) {
    fx.check_chain(
        &[
            boxed(|p| {
                fs::create_dir_all(p.join("dir1")).unwrap();
                chown(&p.join("dir1"), 1, 1);
                write(&p.join("dir2/file"), "x");
                chown(&p.join("dir2"), 2, 2);
            }),
            boxed(|p| {
                rm_rf(&p.join("dir1"));
                fs::create_dir(p.join("dir1")).unwrap();
                chown(&p.join("dir1"), 3, 3);
                chmod(&p.join("dir2"), 0o700);
            }),
            boxed(|p| {
                write(&p.join("dir1/file"), "y");
                chown(&p.join("dir1/file"), 4, 4);
                chmod(&p.join("dir1"), 0o750);
            }),
        ],
        false,
    )
    .await;
}

/// containerd `RemoveIntermediateSnapshot`.
pub async fn remove_intermediate_snapshot(fx: &Fixture) {
    let sn = fx.sn.as_ref();
    fx.layer("base", None, &|p| write(&p.join("f"), "x")).await;
    fx.layer("mid", Some("base"), &|p| write(&p.join("g"), "y"))
        .await;
    sn.prepare("top", Some("mid"), Labels::new()).await.unwrap();
    for parent in ["mid", "base"] {
        let err = sn.remove(parent).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{parent}: {err}");
        assert!(err.to_string().contains("children"), "{err}");
    }
    sn.remove("top").await.unwrap();
    sn.remove("mid").await.unwrap();
    sn.remove("base").await.unwrap();
    assert!(infos(sn, &[]).await.is_empty());
}

/// containerd `DeletedFilesInChildSnapshot`.
pub async fn deleted_files_in_child_snapshot(fx: &Fixture) {
    fx.check_chain(
        &[
            boxed(|p| {
                write(&p.join("a/f1"), "1");
                write(&p.join("a/f2"), "2");
                write(&p.join("b"), "b");
            }),
            boxed(|p| {
                fs::remove_file(p.join("a/f1")).unwrap();
                fs::remove_file(p.join("b")).unwrap();
            }),
            boxed(|p| write(&p.join("a/f3"), "3")),
            boxed(|p| write(&p.join("c"), "c")),
        ],
        false,
    )
    .await;
}

/// containerd `MoveFileFromLowerLayer`.
pub async fn move_file_from_lower_layer(fx: &Fixture) {
    fx.check_chain(
        &[
            boxed(|p| {
                write(&p.join("dir1/f"), "moving");
                fs::create_dir_all(p.join("dir2")).unwrap();
            }),
            boxed(|p| fs::rename(p.join("dir1/f"), p.join("dir2/f")).unwrap()),
        ],
        false,
    )
    .await;
}

/// containerd `ViewReadonly`: a view's mount refuses writes.
pub async fn view_readonly(fx: &Fixture) {
    let sn = fx.sn.as_ref();
    fx.layer("base", None, &|p| write(&p.join("f"), "x")).await;
    fx.layer("second", Some("base"), &|p| write(&p.join("g"), "y"))
        .await;
    for parent in ["base", "second"] {
        let key = format!("view-{parent}");
        let mounts = sn.view(&key, Some(parent), Labels::new()).await.unwrap();
        let m = LocalMount::mount(
            &mounts,
            &fx.work,
            MountOptions {
                force_remount: true,
                temporary: true,
            },
        )
        .unwrap();
        let err = fs::write(m.path().join("new"), "z").unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(30),
            "expected EROFS on a view of {parent}: {err}"
        );
        m.unmount().unwrap();
    }
}

/// containerd `StatInWalk`: the walk callback can call the snapshotter.
pub async fn stat_in_walk(fx: &Fixture) {
    let sn = fx.sn.as_ref();
    for k in ["a", "b", "c"] {
        sn.prepare(k, None, Labels::new()).await.unwrap();
    }
    let mut seen = 0;
    sn.walk(&Filter::default(), &mut |i: Info| {
        seen += 1;
        Box::pin(async move {
            let st = sn.stat(&i.name).await?;
            assert_eq!(st, i);
            Ok(())
        })
    })
    .await
    .unwrap();
    assert_eq!(seen, 3);
}

/// containerd's unwritten `RemoveInWalk`: removing from the callback.
pub async fn remove_in_walk(fx: &Fixture) {
    let sn = fx.sn.as_ref();
    for k in ["a", "b", "c"] {
        sn.prepare(k, None, Labels::new()).await.unwrap();
    }
    sn.walk(&Filter::default(), &mut |i: Info| {
        Box::pin(async move { sn.remove(&i.name).await })
    })
    .await
    .unwrap();
    assert!(infos(sn, &[]).await.is_empty());
}

/// containerd `CloseTwice`.
pub async fn close_twice(fx: &Fixture) {
    // A key that exists, so a refusal after close cannot be "not found".
    fx.sn.prepare("x", None, Labels::new()).await.unwrap();
    assert_eq!(fx.sn.stat("x").await.unwrap().name, "x");
    fx.sn.close().await.unwrap();
    fx.sn.close().await.unwrap();
    let err = fx.sn.stat("x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    assert!(err.to_string().contains("closed"), "{err}");
}

/// containerd `RootPermission`: a new empty snapshot's root is 0755.
pub async fn root_permission(fx: &Fixture) {
    let mounts = fx.sn.prepare("k", None, Labels::new()).await.unwrap();
    let m = LocalMount::mount(
        &mounts,
        &fx.work,
        MountOptions {
            force_remount: true,
            temporary: true,
        },
    )
    .unwrap();
    let mode = fs::metadata(m.path()).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o755);
}

/// containerd `Rename` (docker#25409): files renamed over lower files;
/// directories too where the backend can (`dir_renames`).
pub async fn rename(fx: &Fixture, dir_renames: bool) {
    let mut appliers = vec![
        boxed(|p| {
            write(&p.join("dir1/f1"), "f1");
            write(&p.join("dir2/f2"), "f2");
            write(&p.join("somefile"), "some");
        }),
        boxed(|p| {
            fs::rename(p.join("somefile"), p.join("dir1/f1")).unwrap();
            fs::rename(p.join("dir2/f2"), p.join("renamed")).unwrap();
        }),
    ];
    if dir_renames {
        appliers.push(boxed(|p| {
            fs::rename(p.join("dir1"), p.join("dir3")).unwrap()
        }));
    }
    fx.check_chain(&appliers, false).await;
}

/// containerd `128LayersMount`, and the same at 500 layers (checked at the
/// top only): long chains mount and equal a flat reference.
pub async fn deep_chain(fx: &Fixture, layers: usize, every_depth: bool) {
    let appliers: Vec<Applier> = (0..layers)
        .map(|i| {
            boxed(move |p: &Path| {
                write(&p.join(format!("layer-{i:03}")), &i.to_string());
                write(&p.join("shared"), &format!("written by layer {i}"));
                if i % 3 == 2 {
                    fs::remove_file(p.join(format!("layer-{:03}", i - 1))).unwrap();
                }
            })
        })
        .collect();
    fx.check_chain(&appliers, !every_depth).await;
}

/// containerd's unwritten `RemoveAfterCommit`: the active key is gone after
/// commit, and the committed name can be removed.
pub async fn remove_after_commit(fx: &Fixture) {
    let sn = fx.sn.as_ref();
    sn.prepare("k", None, Labels::new()).await.unwrap();
    sn.commit("c", "k", Labels::new()).await.unwrap();
    assert_eq!(
        sn.remove("k").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        sn.mounts("k").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    sn.remove("c").await.unwrap();
    assert_eq!(sn.stat("c").await.unwrap_err().kind(), ErrorKind::NotFound);
}

/// containerd's unwritten `UnixDomainSockets`: sockets survive commits.
pub async fn unix_domain_sockets(fx: &Fixture) {
    fx.check_chain(
        &[
            boxed(|p| {
                let l = std::os::unix::net::UnixListener::bind(p.join("sock")).unwrap();
                drop(l);
                pin_time(&p.join("sock"));
            }),
            boxed(|p| write(&p.join("other"), "x")),
        ],
        false,
    )
    .await;
    let tree = fx.render_view("layer-1").await;
    assert!(tree.contains("/sock Socket"), "{tree}");
}

/// containerd's unwritten `DirectoryInodeStability`: a directory keeps its
/// inode number across two mounts of the same view.
pub async fn directory_inode_stability(fx: &Fixture) {
    use std::os::unix::fs::MetadataExt;
    fx.layer("base", None, &|p| {
        fs::create_dir_all(p.join("d/e")).unwrap()
    })
    .await;
    fx.layer("top", Some("base"), &|p| write(&p.join("d/f"), "x"))
        .await;
    let mounts = fx.sn.view("v", Some("top"), Labels::new()).await.unwrap();
    let mut inodes = Vec::new();
    for _ in 0..2 {
        let m = LocalMount::mount(
            &mounts,
            &fx.work,
            MountOptions {
                force_remount: true,
                temporary: true,
            },
        )
        .unwrap();
        inodes.push((
            fs::metadata(m.path().join("d")).unwrap().ino(),
            fs::metadata(m.path().join("d/e")).unwrap().ino(),
        ));
        m.unmount().unwrap();
    }
    assert_eq!(inodes[0], inodes[1]);
}

/// containerd's unwritten `Chmod`: mode changes of lower files, setuid,
/// setgid and sticky bits included.
pub async fn chmod_lower(fx: &Fixture) {
    fx.check_chain(
        &[
            boxed(|p| {
                write(&p.join("bin/tool"), "#!/bin/sh\n");
                fs::create_dir_all(p.join("tmp")).unwrap();
                symlink("bin/tool", p.join("link")).unwrap();
                pin_time(&p.join("link"));
            }),
            boxed(|p| {
                chmod(&p.join("bin/tool"), 0o4755);
                chmod(&p.join("tmp"), 0o1777);
                chmod(&p.join("bin"), 0o2750);
            }),
        ],
        false,
    )
    .await;
}

/// Instantiates the conformance suite for a backend: one `#[tokio::test]`
/// per case. The cases that mount need root and report themselves skipped
/// by name without it; the cases that never mount sit in a module
/// `without_root` and run for anyone (`cargo xtask test`, as root, runs
/// them once more as `nobody`). `$factory` names a function of the calling
/// module.
#[macro_export]
macro_rules! conformance_suite {
    ($backend:literal, $factory:ident, dir_renames = $dir_renames:expr) => {
        $crate::conformance_suite!(@cases $backend, $factory;
            basic, stat_active, stat_committed, transitivity, prepare_view_clash, remove,
            layer_file_update, remove_directory_in_lower_layer, chown_lower, directory_permission_on_commit,
            remove_intermediate_snapshot, deleted_files_in_child_snapshot, move_file_from_lower_layer,
            view_readonly, root_permission, unix_domain_sockets, directory_inode_stability, chmod_lower);
        $crate::conformance_suite!(@one $backend, $factory, rename, |fx| $crate::testsuite::rename(fx, $dir_renames));
        $crate::conformance_suite!(@one $backend, $factory, layers_128, |fx| $crate::testsuite::deep_chain(fx, 128, true));
        $crate::conformance_suite!(@one $backend, $factory, layers_500, |fx| $crate::testsuite::deep_chain(fx, 500, false));
        mod without_root {
            $crate::conformance_suite!(@plain super::$factory;
                update, walk, stat_in_walk, remove_in_walk, close_twice, remove_after_commit);
        }
    };
    (@cases $backend:literal, $factory:ident; $($case:ident),*) => {
        $( $crate::conformance_suite!(@one $backend, $factory, $case, |fx| $crate::testsuite::$case(fx)); )*
    };
    (@one $backend:literal, $factory:ident, $name:ident, |$fx:ident| $body:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            if !$crate::testsuite::require_root(concat!($backend, " conformance::", stringify!($name))) {
                return;
            }
            let fixture = $crate::testsuite::Fixture::new($factory);
            let $fx = &fixture;
            $body.await;
        }
    };
    (@plain $factory:path; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture = $crate::testsuite::Fixture::new($factory);
                $crate::testsuite::$case(&fixture).await;
            }
        )*
    };
}
