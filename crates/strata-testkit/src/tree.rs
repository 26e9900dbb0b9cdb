//! Whole trees compared in one assertion: [`render`], a stable listing of
//! a directory tree, one line per entry (path, type, mode, owner, size,
//! content hash, link target, device, xattrs, modification time, hard-link
//! group), is the conformance suite's (`strata_snapshot::testsuite::tree`,
//! tested here); this module adds what only Strata's own tests need on
//! top of it (sockets left out, hard-link groups that may split).

use std::collections::HashMap;

pub use strata_snapshot::testsuite::tree::render;

/// A listing without its sockets: layers carry none (a socket is bound by a
/// running process; containerd's and GNU tar's layers skip them too), so a
/// tree that went through a layer is compared with this of its source.
pub fn without_sockets(render: &str) -> String {
    render
        .lines()
        .filter(|l| l.split(' ').nth(1) != Some("Socket"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Asserts that `split` renders the same tree as `whole` except that some
/// of `whole`'s hard-link groups may be split (never joined or invented).
/// Overlay upper directories need this: linking a name to a file that
/// already has several names in a lower layer copies that one name up, and
/// the other names keep the lower inode (overlayfs with `index=off` does
/// the same).
#[track_caller]
pub fn assert_same_but_split_links(split: &str, whole: &str, what: &str) {
    let strip = |r: &str| -> String {
        r.lines()
            .map(|l| l.split(" link=").next().unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        strip(split),
        strip(whole),
        "{what}: the trees differ beyond hard links"
    );
    let groups = |r: &str| -> HashMap<String, String> {
        r.lines()
            .filter_map(|l| {
                let (head, first) = l.split_once(" link=")?;
                Some((head.split(' ').next()?.to_owned(), first.to_owned()))
            })
            .collect()
    };
    let (s, w) = (groups(split), groups(whole));
    for (path, first) in &s {
        let here = w.get(path);
        assert!(
            here.is_some() && here == w.get(first),
            "{what}: {path} shares an inode with {first}, which the whole tree does not link"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_links_and_times_show() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("a"), b"same").unwrap();
        std::fs::hard_link(p.join("a"), p.join("b")).unwrap();
        std::fs::write(p.join("c"), b"same").unwrap();
        let linked = render(p);
        let line = |name: &str| {
            linked
                .lines()
                .find(|l| l.starts_with(&format!("/{name} ")))
                .unwrap()
                .to_owned()
        };
        assert!(line("a").ends_with(" link=/a"), "{linked}");
        assert!(line("b").ends_with(" link=/a"), "{linked}");
        assert!(!line("c").contains("link="), "{linked}");

        // The same bytes without the hard link render differently.
        let copy = tempfile::tempdir().unwrap();
        for name in ["a", "b", "c"] {
            std::fs::write(copy.path().join(name), b"same").unwrap();
        }
        let t = std::fs::File::open(p.join("a"))
            .unwrap()
            .metadata()
            .unwrap()
            .modified()
            .unwrap();
        for name in ["a", "b", "c"] {
            let f = std::fs::File::options()
                .write(true)
                .open(copy.path().join(name))
                .unwrap();
            f.set_modified(t).unwrap();
        }
        let unlinked = render(copy.path());
        assert_ne!(
            linked.lines().skip(1).collect::<Vec<_>>(),
            unlinked.lines().skip(1).collect::<Vec<_>>()
        );

        // A changed mtime shows.
        let f = std::fs::File::options()
            .write(true)
            .open(p.join("c"))
            .unwrap();
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(7))
            .unwrap();
        assert!(render(p).contains(" mtime=7"));
    }
}
