//! The long help every command carries beyond its options: notes, examples
//! and, for commands that print data, the shape of their `--json` output.
//! One page per command path, attached to clap's command tree at start-up;
//! `docs/cli.md` is rendered from the same tree (see the `docs` test), and
//! the end-to-end tests check each JSON shape against what the binary
//! prints.
//!
//! A JSON shape is written `{field, field: SHAPE, ...}` for an object with
//! exactly those fields, `[SHAPE]` for a list, and a word (`string`,
//! `number`, `map`, ...) for any value.

use clap::Command;

/// What `strata PATH --help` says after the options.
pub struct Page {
    /// The command's words after `strata` (empty for `strata` itself).
    pub path: &'static str,
    /// Prose a user needs beyond the options.
    pub notes: &'static str,
    /// Command lines, each optionally followed by `  # what it does`.
    pub examples: &'static [&'static str],
    /// The `--json` output's shape; `None` for commands that print no data.
    pub json: Option<&'static str>,
}

/// `image pull --help`'s notes: how registries are reached and what
/// `--lazy-cache` takes, in builds with registries; that there are none,
/// in the others.
#[cfg(feature = "registry")]
const PULL_NOTES: &str = "Registries on loopback hosts and those named with --insecure-registry \
are reached over plain HTTP, the rest over HTTPS. Credentials come from $DOCKER_CONFIG/config.json \
(else ~/.docker/config.json): the host's credHelpers entry, else credsStore, else its auths entry. \
An identity token (identitytoken, or a helper's answer for the user <token>) goes only to the \
registry's token service, which exchanges it for tokens, as docker does. A refused login exits 4; a blob that does not match its digest exits 5 and nothing is kept. With \
--lazy-cache, the layer blobs that `strata lazy mount` or `strata image mount` kept in that cache \
(whole, or the ranges it fetched) are taken first: only what they lack is fetched, by range, and each is checked whole \
before the root stores it; kept bytes that do not hash to their blob are removed and said so, and \
that blob is fetched as usual. lazy_cache is {blobs, kept_bytes, fetched_bytes} then, else null. \
With --lazy, only the manifest, the config and the layers below the first eStargz layer are \
fetched, and the TOC of each eStargz layer above, by range, checked against its annotation before \
anything is recorded (another TOC exits 5); that layer and every one above it are recorded as lazy \
refs (lazy counts them). \
`strata image mount` mounts the image at once, reading them through FUSE as they are used, and \
`strata image attach` serves them on their own snapshots, so that refs, mounts and views stack on \
them while it runs (see their help); nothing else reads them (a mount, view, diff, or export that \
makes a new image of them exits 4) until `strata image unlazy` fetches them; the image itself can be pushed and exported as \
stored (see image export). An image without eStargz layers is pulled whole, and so are layers the root has \
already (lazy counts neither); a note says when none was left lazy.";
#[cfg(not(feature = "registry"))]
const PULL_NOTES: &str = "This build has no registries (it was built without the registry \
feature): a pull fails and says so.";

#[cfg(feature = "registry")]
const PULL_EXAMPLES: &[&str] = &[
    "strata image pull registry.example.com/team/app:1.0",
    "strata image pull 127.0.0.1:5000/app@sha256:3b7c... --name app:pinned",
    "strata image pull registry.example/app:estargz --lazy-cache /var/cache/strata-lazy  # after a lazy mount",
    "strata image pull registry.example/app:estargz --lazy && strata image unlazy registry.example/app:estargz",
];
#[cfg(not(feature = "registry"))]
const PULL_EXAMPLES: &[&str] = &["strata image pull registry.example.com/team/app:1.0"];

/// The heading the JSON shape follows in `--help`; tests find it there.
pub const JSON_HEADING: &str = "JSON output (--json):";

macro_rules! ref_json {
    () => {
        "{id, kind, parent, record_type, description, created, last_used, \
usage_count, blob, diff_id, media_type, image_refs: [string]}"
    };
}
macro_rules! du_json {
    () => {
        "{id, mutable, in_use, reclaimable, size, shared, inodes, parent, \
created, last_used, usage_count, description, record_type}"
    };
}
macro_rules! mounts_json {
    () => {
        "[{type, source, target, options: [string]}]"
    };
}
macro_rules! snapshot_json {
    () => {
        "{name, parent, kind, labels: map, created, updated}"
    };
}
macro_rules! blob_json {
    () => {
        "{digest, size, created, updated, labels: map}"
    };
}
macro_rules! lease_json {
    () => {
        "{id, created, labels: map}"
    };
}
macro_rules! image_json {
    () => {
        "{name, ref, manifest, config, source, created}"
    };
}
macro_rules! merged_json {
    () => {
        "{name, changes, linked, copied, size, inodes}"
    };
}

/// Every command's page, in the order of `strata --help`.
pub const PAGES: &[Page] = &[
    Page {
        path: "",
        notes: "Environment: STRATA_ROOT (the state root), STRATA_LOCK_TIMEOUT (how long to wait for \
another process's lock), STRATA_LOG (a tracing filter), DOCKER_CONFIG (where registry credentials \
are read).\n\n\
Exit codes: 0 success; 1 failure (and `check` finding problems); 2 usage error; 3 not found; \
4 conflict (already exists, locked, in use, unauthorized); 5 bad input (corrupt, digest or size \
mismatch, hostile layer). Errors are one line on stderr naming the object and the reason.\n\n\
Without --lease, what a command creates is held by a lease named after it (content/DIGEST, \
snapshot/KEY, ref/ID, image/NAME), which the matching `rm` (or `prune`) lets go of; `gc` \
reclaims what no lease holds.",
        examples: &[
            "strata demo  # the tour on a temporary root",
            "strata image import oci:./app-layout:1.0 --name app:1.0",
            "strata --json du | jq '.[] | select(.reclaimable) | .size'",
            "STRATA_ROOT=/srv/strata strata prune --keep-storage 20GiB",
        ],
        json: None,
    },
    Page {
        path: "content ingest",
        notes: "",
        examples: &[
            "strata content ingest layer.tar.gz --label team=build",
            "curl -s https://example.com/blob | strata content ingest - --expected sha256:4f1c...",
        ],
        json: Some("{digest, size, already_existed}"),
    },
    Page {
        path: "content ls",
        notes: "",
        examples: &[
            "strata content ls",
            "strata content ls --filter 'labels.team==build' -q",
        ],
        json: Some(concat!("[", blob_json!(), "]")),
    },
    Page {
        path: "content info",
        notes: "",
        examples: &["strata content info sha256:4f1c..."],
        json: Some(blob_json!()),
    },
    Page {
        path: "content cat",
        notes: "",
        examples: &["strata content cat sha256:4f1c... | tar -tz | head"],
        json: None,
    },
    Page {
        path: "content label",
        notes: "",
        examples: &["strata content label sha256:4f1c... team=build stale="],
        json: Some(blob_json!()),
    },
    Page {
        path: "content rm",
        notes: "",
        examples: &["strata content rm sha256:4f1c... sha256:9e0a..."],
        json: Some("[string]"),
    },
    Page {
        path: "content active",
        notes: "",
        examples: &["strata content active"],
        json: Some("[{reference, offset, total, expected, started, updated}]"),
    },
    Page {
        path: "content abort",
        notes: "",
        examples: &["strata content abort ingest-7f3a"],
        json: Some("string"),
    },
    Page {
        path: "snapshot prepare",
        notes: "",
        examples: &[
            "strata snapshot prepare work base  # a writable layer on the committed snapshot base",
            "strata snapshot prepare scratch  # an empty one",
        ],
        json: Some(mounts_json!()),
    },
    Page {
        path: "snapshot view",
        notes: "",
        examples: &["strata snapshot view look base"],
        json: Some(mounts_json!()),
    },
    Page {
        path: "snapshot mounts",
        notes: "",
        examples: &["strata --json snapshot mounts work"],
        json: Some(mounts_json!()),
    },
    Page {
        path: "snapshot commit",
        notes: "",
        examples: &["strata snapshot commit step-1 work"],
        json: Some("string"),
    },
    Page {
        path: "snapshot rm",
        notes: "",
        examples: &["strata snapshot rm look work"],
        json: Some("[string]"),
    },
    Page {
        path: "snapshot ls",
        notes: "",
        examples: &[
            "strata snapshot ls",
            "strata snapshot ls --filter kind==committed --filter 'labels.team==build'",
        ],
        json: Some(concat!("[", snapshot_json!(), "]")),
    },
    Page {
        path: "snapshot info",
        notes: "",
        examples: &["strata snapshot info step-1"],
        json: Some(snapshot_json!()),
    },
    Page {
        path: "snapshot usage",
        notes: "",
        examples: &["strata snapshot usage step-1 step-2"],
        json: Some("[{name, size, inodes}]"),
    },
    Page {
        path: "snapshot tree",
        notes: "",
        examples: &["strata snapshot tree"],
        json: Some(concat!("[", snapshot_json!(), "]")),
    },
    Page {
        path: "snapshot merge",
        notes: "",
        examples: &[
            "strata snapshot merge both base-a base-b  # base-b wins where both have a path",
        ],
        json: Some(merged_json!()),
    },
    Page {
        path: "snapshot diff",
        notes: "",
        examples: &["strata snapshot diff delta base step-1"],
        json: Some(merged_json!()),
    },
    Page {
        path: "mount",
        notes: "",
        examples: &[
            "strata mount step-1 /mnt/step-1  # read-only",
            "strata mount work /mnt/work --rw",
        ],
        json: Some("string"),
    },
    Page {
        path: "umount",
        notes: "",
        examples: &["strata umount /mnt/work"],
        json: Some("string"),
    },
    Page {
        path: "layer apply",
        notes: "",
        examples: &[
            "strata layer apply layer.tar.gz ./rootfs --diff-id sha256:77b2...",
            "zstd -dc layer.tar.zst | strata layer apply - ./rootfs",
        ],
        json: Some("{digest, diff_id, compression, compressed_size, size, entries}"),
    },
    Page {
        path: "layer diff",
        notes: "",
        examples: &["strata layer diff ./before ./after -o change.tar.zst --compression zstd"],
        json: Some("{file, media_type, digest, size, diff_id, uncompressed_size, entries}"),
    },
    #[cfg(feature = "registry")]
    Page {
        path: "lazy mount",
        notes: "An eStargz layer (push or export an image with --compression estargz to make one) \
is read lazily: only the manifest, the config and each such layer's footer and TOC are fetched before \
DIR is mounted. A file's data is fetched when it is read, a chunk at a time by range requests, and \
checked against the chunk digest in the TOC before it is served or kept. Unless --no-prefetch, the \
rest is fetched in the background, in the layer's order (its prioritized files first), but only once \
no read has waited for a fetch for a second, so a program's first reads have the link to themselves; \
then what the mount has not kept of each blob, when that is at most an eighth of it or 1 MiB, so that \
the kept blob is whole. \
A read the registry cannot serve fails with EIO (the error is logged) and works again once the \
registry is back. A plain gzip or zstd layer cannot be read lazily: it is fetched whole, checked \
against its digest and diffID, and unpacked once into CACHE/layers (a note on stderr says so); later \
mounts of the same layers use it. CACHE keeps the checked chunks for the next mount (each is checked \
again the first time a process uses it), the compressed bytes fetched (CACHE/blobs, for image pull \
--lazy-cache; not with --no-keep-blobs) and the layers' own FUSE mounts (CACHE/mnt/N). With \
--keep-storage SIZE the mount prunes CACHE to SIZE as it goes (a second after its layers are open, \
then each time it has added an eighth of SIZE), as `strata lazy prune` does. With --upper UPPER \
the image is mounted writable: writes go to UPPER/fs (an overlay upper directory: a deleted file \
is a whiteout, a written one a copy) with UPPER/work beside it, made if missing and kept after \
unmount (UPPER and work mode 0700, a new fs with the image root's mode); the same upper given again \
shows the changes again. UPPER and the directories above it must belong to root (or this user) and \
be writable by no one else unless sticky; UPPER, fs and work must be real directories and no symlink \
on the way may belong to another user; an upper overlapping DIR or CACHE, one another running mount uses \
(UPPER/lock), or one an overlay in the mount table still uses (a killed mount's) is refused before \
any layer is fetched. Needs root \
(FUSE and overlay mounts). No state root is involved. From another shell, the image is usable at \
once: chroot /mnt/app python3 --version.\n\n\
With --json it prints {image, dir, layers: [{digest, lazy, toc_digest, inodes, dir}], requests, \
bytes_fetched} once DIR is mounted (toc_digest and inodes for lazy layers only; dir is the layer's \
FUSE mount or where it was unpacked), {prefetched: true, blobs_whole, requests, bytes_fetched, chunks_fetched} \
once prefetch has finished (blobs_whole: how many layer blobs CACHE keeps whole, which image pull \
--lazy-cache takes without downloading), and {requests, \
bytes_fetched, chunks_fetched} when it stops.",
        examples: &[
            "strata lazy mount registry.example/app:estargz /mnt/app --cache /var/cache/strata-lazy",
            "strata lazy mount localhost:5000/app:estargz /mnt/app --cache /tmp/lazy --no-prefetch  # fetch only what is read",
            "strata lazy mount registry.example/app:estargz /mnt/app --cache /var/cache/strata-lazy --keep-storage 20GiB",
            "strata lazy mount registry.example/app:estargz /mnt/app --cache /var/cache/strata-lazy --upper /var/lib/steps/1  # writable",
        ],
        json: None,
    },
    #[cfg(feature = "registry")]
    Page {
        path: "lazy copy",
        notes: "Nothing is stored and no root is involved: the image (of an index, the manifest for \
--platform) goes from one repository to the other. A blob the target has is skipped; on one \
registry, a blob is mounted from the source repository when the registry allows it (no bytes move; \
on a registry that hands out tokens, with one covering both repositories unless the credentials are \
a registry token; a refusal is logged, and a repository refused for want of access is not asked \
again); \
otherwise it is streamed \
from the source to the target, counted and hashed on the way, and a blob of other bytes than its \
digest fails the copy before the target can accept it. The manifest goes last, under the target's \
tag, with the source's digest.",
        examples: &[
            "strata lazy copy registry.example/team/app:1.0 registry.example/prod/app:1.0  # one registry: blobs mounted",
            "strata lazy copy localhost:5000/app:estargz mirror.example/app:estargz",
        ],
        json: Some("{source, target, manifest, layers, size, uploaded, mounted, present}"),
    },
    #[cfg(feature = "registry")]
    Page {
        path: "lazy prune",
        notes: "What goes: the checked chunks and kept TOCs (CACHE/chunks), the blobs mounts kept \
(CACHE/blobs, for `image pull --lazy-cache`; a partial one counted by the blocks it holds) and the \
layers unpacked whole (CACHE/layers), those used longest ago first (a chunk, TOC or blob by the \
later of its access and modification times, a layer by when a mount last took it), until what is left holds at most \
--keep-storage; and temporary files over an hour old and staging directories that a killed mount or \
prune left. Running mounts keep working: a chunk removed under one is fetched and checked again when \
next read, and a layer a running mount is stacked on is kept (counted in in_use), as is one an \
overlay in this mount namespace still stacks on after its mount process is gone. A layer is \
renamed away before it is removed, so a mount never finds part of one.",
        examples: &[
            "strata lazy prune --cache /var/cache/strata-lazy --keep-storage 20GiB",
            "strata lazy prune --cache /tmp/lazy  # every chunk, TOC, kept blob and unused unpacked layer",
        ],
        json: Some("{cache, removed, removed_bytes, kept, kept_bytes, in_use}"),
    },
    Page {
        path: "lease create",
        notes: "",
        examples: &[
            "strata lease create --id build-42 --expire 2h --label owner=ci",
            "strata --lease build-42 image import oci:./layout  # held by build-42, not by a name",
        ],
        json: Some(lease_json!()),
    },
    Page {
        path: "lease ls",
        notes: "",
        examples: &["strata lease ls --filter 'labels.owner==ci'"],
        json: Some(concat!("[", lease_json!(), "]")),
    },
    Page {
        path: "lease rm",
        notes: "",
        examples: &["strata lease rm build-42 --sync  # and collect at once"],
        json: Some("[string]"),
    },
    Page {
        path: "lease add",
        notes: "",
        examples: &["strata lease add build-42 content sha256:4f1c..."],
        json: Some("{type, id}"),
    },
    Page {
        path: "lease resources",
        notes: "",
        examples: &["strata lease resources build-42"],
        json: Some("[{type, id}]"),
    },
    Page {
        path: "image import",
        notes: "SOURCE is oci:DIR[:TAG] (an OCI image layout), oci-archive:FILE[:REF] (an OCI \
image layout in a tar, as skopeo, podman and buildah write it), docker-archive:FILE[:NAME] (what \
`docker save` writes, old or new form) or docker://HOST/REPO[:TAG|@DIGEST], the transport names \
skopeo uses. Without --name an image is named after its source. Blobs the root already has are not read again; each layer is \
unpacked once, --jobs at a time. --lazy leaves layers lazy as `image pull --lazy` does (see its help); `image unlazy` then reads them from SOURCE again.",
        examples: &[
            "strata image import oci:./layout:1.0 --name app:1.0",
            "strata image import docker-archive:app.tar --platform linux/arm64",
            "strata image import oci-archive:app.oci.tar:example.com/app:1.0",
        ],
        json: Some(
            "{name, ref, manifest, config, source, created, fetched, present, lazy, lazy_cache}",
        ),
    },
    Page {
        path: "image pull",
        notes: PULL_NOTES,
        examples: PULL_EXAMPLES,
        json: Some(
            "{name, ref, manifest, config, source, created, fetched, present, lazy, lazy_cache}",
        ),
    },
    Page {
        path: "image unlazy",
        notes: "Fetches, from the source the image was pulled from, the layers `image pull --lazy` left, and unpacks each into its lazy ref, bottom first: every ref keeps its id, and each becomes readable in one step (a crash leaves it lazy, or filled, never half). Blobs the root has are not fetched again, and each is checked against its digest and its diffID as a pull checks it. An eager `image pull` or `image import` of the same image fills the refs the same way. Nothing is done for an image with no lazy ref.",
        examples: &["strata image unlazy registry.example/app:estargz"],
        json: Some(
            "{name, ref, manifest, config, source, created, fetched, present, lazy, lazy_cache}",
        ),
    },
    #[cfg(feature = "registry")]
    Page {
        path: "image mount",
        notes: "Mounts an image of the root as `strata lazy mount` mounts one from a registry (see its help for \
the cache, prefetch, --keep-storage and --upper), with the layers the root has stacked straight from its \
snapshots (nothing fetched or unpacked for them) and the lazy layers a `pull --lazy` left read from where \
the image was pulled: by range from its registry (by digest, so a tag that moved does not matter) or from \
its layout's blob files. An image imported from an archive cannot be read by range: `image unlazy` it \
first (exit 4). The image's layers are held by a lease of the command's own (not --lease) until DIR \
is mounted, and from then on by the mount itself (the collector leaves every snapshot a mount uses), so `image rm` and `gc` can run \
meanwhile; run without a daemon, the command lets go of the root once it serves. Run through `strata \
serve`, the daemon serves the mount and stops it when the client is stopped. What the mount kept of the \
lazy layers' blobs fills them without a download: `image unlazy NAME --lazy-cache CACHE`.\n\n\
With --json it prints {image, dir, from_root, layers, requests, bytes_fetched} once DIR is mounted \
(from_root: how many bottom layers come from the root's snapshots; layers: those above them, as \
`lazy mount` prints them), then what `lazy mount` prints.",
        examples: &[
            "strata image pull registry.example/app:estargz --lazy && strata image mount registry.example/app:estargz /mnt/app --cache /var/cache/strata-lazy",
            "strata image unlazy registry.example/app:estargz --lazy-cache /var/cache/strata-lazy  # after it stops",
        ],
        json: None,
    },
    #[cfg(feature = "registry")]
    Page {
        path: "image attach",
        notes: "Serves the lazy layers of an image of the root (those a `pull --lazy` left) through FUSE, \
each on its own snapshot's placeholder directory, with the cache, prefetch and --keep-storage of \
`image mount`, until SIGINT or SIGTERM (through `strata serve`: until the client is stopped). While \
it serves, the lazy refs read as refs holding their layers: `ref new` on them, `mount` (writable for a \
new ref), views, commits and the containerd proxy's prepares stack on them, and files are fetched as \
they are read. Only an overlay root's snapshots hold one layer each: a native or btrfs root is refused \
(exit 4), and so are a userxattr root, an image whose lazy layers are not all eStargz (before anything \
is fetched; `image unlazy` fetches them) or one without lazy layers, a layer whose root is opaque, and a \
second attach of a layer while the first serves. An attached snapshot is not removed or filled meanwhile \
(`snapshot rm`, `image unlazy` and an eager pull of the image exit 4). When it stops, the directories \
the layers were served on go, so a mount named meanwhile fails rather than stacking an empty layer. \
Unmount what was mounted over the layers before stopping: a layer such a mount still uses serves it only \
until this process ends, then its unread files fail with ENOTCONN. A killed attach leaves dead mounts \
that read as lazy; `strata check` reports them, and the next attach, a removal or fill, or `check \
--repair` detaches them.\n\n\
With --json it prints {image, from_root, layers, requests, bytes_fetched} once the layers are attached \
(from_root: how many bottom layers the root holds; layers: the attached ones, each with its snapshot's \
directory as dir), then what `lazy mount` prints.",
        examples: &[
            "strata image pull registry.example/app:estargz --lazy --name app && strata image attach app --cache /var/cache/strata-lazy",
            "strata ref new $(strata --json image inspect app | jq -r .top_ref)  # while it serves",
        ],
        json: None,
    },
    Page {
        path: "image export",
        notes: "DEST is oci:DIR[:TAG], oci-archive:FILE[:REF], docker-archive:FILE[:NAME] or \
docker://HOST/REPO[:TAG]. A \
named image is written as it was stored (the same manifest digest) unless --compression is given; \
a ref id, or a name with --compression, becomes a new image (one history line per layer, this \
machine's platform or --platform). Layers keep their compression unless --force-compression \
converts them. In the JSON, uploaded, present and mounted are null except for a registry: blobs \
sent, blobs the repository had, blobs mounted from another repository. A named image pulled with \
--lazy is written as stored: the layers not fetched come from where it was pulled (to a registry \
copied registry to registry without being stored when it was pulled from a registry, as for \
image push; otherwise, to or from a layout or an archive, fetched into the root first); with \
--compression it needs its files, and exits 4 until unlazied.",
        examples: &[
            "strata image export app:1.0 oci:./out:1.0",
            "strata image export app:1.0 docker-archive:app.tar:app:1.0",
            "strata image export 8c1f... oci:./out:zst --compression zstd --force-compression",
        ],
        json: Some("{destination, manifest, layers, size, uploaded, present, mounted}"),
    },
    Page {
        path: "image push",
        notes: "Blobs the repository has are skipped, blobs another repository of the same \
registry has are mounted, the rest are uploaded in chunks; the manifest goes last. The layers a \
`pull --lazy` left are copied from the repository the image was pulled from, as `lazy copy` \
copies: mounted within one registry when it allows that, else streamed through and checked, \
never stored (an image imported lazily from a layout or an archive has them fetched into the \
root first).",
        examples: &["strata image push app:1.0 registry.example.com/team/app:1.0"],
        json: Some("{destination, manifest, layers, size, uploaded, present, mounted}"),
    },
    Page {
        path: "image ls",
        notes: "",
        examples: &["strata --json image ls | jq -r '.[].name'"],
        json: Some(concat!("[", image_json!(), "]")),
    },
    Page {
        path: "image inspect",
        notes: "A layer `image pull --lazy` left unfetched is marked lazy.",
        examples: &["strata image inspect app:1.0"],
        json: Some(
            "{name, ref, manifest, config, source, created, manifest_media_type, size, \
layers: [{digest, media_type, size, diff_id, lazy}]}",
        ),
    },
    Page {
        path: "image rm",
        notes: "",
        examples: &["strata image rm app:1.0 && strata gc"],
        json: Some("[string]"),
    },
    Page {
        path: "ref ls",
        notes: "",
        examples: &["strata ref ls --filter mutable==true"],
        json: Some(concat!("[", ref_json!(), "]")),
    },
    Page {
        path: "ref info",
        notes: "",
        examples: &["strata ref info 8c1f..."],
        json: Some(ref_json!()),
    },
    Page {
        path: "ref new",
        notes: "",
        examples: &["id=$(strata ref new 8c1f... --description 'RUN make')"],
        json: Some("string"),
    },
    Page {
        path: "ref commit",
        notes: "",
        examples: &["strata ref commit \"$id\""],
        json: Some("string"),
    },
    Page {
        path: "ref merge",
        notes: "",
        examples: &["strata ref merge 8c1f... 2d9e...  # the second wins"],
        json: Some("string"),
    },
    Page {
        path: "ref diff",
        notes: "",
        examples: &["strata ref diff 8c1f... 2d9e..."],
        json: Some("string"),
    },
    Page {
        path: "ref rm",
        notes: "",
        examples: &["strata ref rm 2d9e..."],
        json: Some("[string]"),
    },
    Page {
        path: "du",
        notes: "Every inode is counted once: files a merge shares by hard link are `shared`, not \
counted twice.",
        examples: &["strata du", "strata du --verbose --filter mutable==false"],
        json: Some(concat!("[", du_json!(), "]")),
    },
    Page {
        path: "prune",
        notes: "Lets go of the records nothing else holds (not in use, no child, no lease but \
their own), least recently used first when a space target is given, then collects. With \
--dry-run it says what would go and what keeps each record.",
        examples: &[
            "strata prune --keep-duration 48h",
            "strata prune --keep-storage 20GiB --dry-run",
        ],
        json: Some(concat!(
            "{dry_run, reclaimed, removed: [",
            du_json!(),
            "], kept: [{id, reason}]}"
        )),
    },
    Page {
        path: "gc",
        notes: "",
        examples: &["strata gc --dry-run --explain  # what would go, and what holds the rest"],
        json: Some(
            "{dry_run, kept, pause_ms, duration_ms, removed: {content: [string], snapshots: \
[string], ingests: [string], leases: [string]}, pins: [{object, chain: [string]}]}",
        ),
    },
    Page {
        path: "check",
        notes: "",
        examples: &["strata check", "strata check --repair"],
        json: Some("{clean, problems: [{table, key, problem, repaired}]}"),
    },
    #[cfg(feature = "daemon")]
    Page {
        path: "serve",
        notes: "The daemon owns the root; every other strata command on it (any number at once) \
finds it on the root's own socket, run/strata.sock (mode 0600), and runs through it, with the same \
output, --json, exit codes and progress bars; --address (or $STRATA_ADDRESS) names another socket. \
Each command runs in the client's working directory and umask, as the daemon's user; a client that goes away \
cancels its command. Without a daemon, commands open the root themselves.\n\n\
The same sockets serve containerd's snapshots API; name one in containerd's config as a proxy \
snapshotter:\n\n\
  [proxy_plugins.strata]\n    type = \"snapshot\"\n    address = \"/run/strata/containerd.sock\"\n\n\
then `ctr images pull --snapshotter strata ...` and every containerd client use Strata. What \
containerd creates is held by the lease containerd/snapshots; containerd's collector decides what \
goes and calls Remove. A socket nobody answers on is replaced; a live one, or a file that is not a \
socket, is refused (exit 4). SIGINT or SIGTERM stops accepting, lets the commands and calls in \
flight finish, removes the sockets and exits 0. `serve --check [--json]` asks a running daemon for its \
health: exit 0 when it answers, 4 when none does.",
        examples: &[
            "strata serve --socket /run/strata/containerd.sock",
            "strata serve --socket /run/strata/strata.sock --socket-mode 660 --group strata",
            "strata serve --check --json",
        ],
        json: Some(
            "{serving, socket, root, backend, pid, version, api_version, running, served, uptime_seconds}",
        ),
    },
    Page {
        path: "demo",
        notes: "",
        examples: &[
            "strata demo",
            "strata --root /tmp/demo-root demo && strata --root /tmp/demo-root image ls",
        ],
        json: Some("{root, backend, steps: [{step, what, ms}]}"),
    },
    Page {
        path: "completions",
        notes: "",
        examples: &[
            "strata completions bash > /etc/bash_completion.d/strata",
            "strata completions zsh > \"${fpath[1]}/_strata\"",
        ],
        json: None,
    },
];

/// The command tree with every page attached as its long help's epilogue.
pub fn command() -> Command {
    let mut cmd = <crate::Cli as clap::CommandFactory>::command();
    for page in PAGES {
        let path: Vec<&str> = page.path.split_whitespace().collect();
        cmd = attach(cmd, &path, page);
    }
    cmd
}

fn attach(cmd: Command, path: &[&str], page: &Page) -> Command {
    match path.split_first() {
        None => cmd.after_long_help(render(page)),
        // clap panics on a path that names no command: a typo here fails
        // every test that builds the tree.
        Some((first, rest)) => cmd.mut_subcommand(*first, |sub| attach(sub, rest, page)),
    }
}

fn render(page: &Page) -> String {
    let mut parts = Vec::new();
    if !page.notes.is_empty() {
        parts.push(page.notes.to_owned());
    }
    let examples: Vec<String> = page.examples.iter().map(|e| format!("  {e}")).collect();
    parts.push(format!("Examples:\n{}", examples.join("\n")));
    if let Some(shape) = page.json {
        parts.push(format!("{JSON_HEADING}\n  {shape}"));
    }
    parts.join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command in the tree, depth first, with its full name.
    fn commands(cmd: &Command, name: String, out: &mut Vec<(String, Command)>) {
        out.push((name.clone(), cmd.clone()));
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            commands(sub, format!("{name} {}", sub.get_name()), out);
        }
    }

    fn built() -> Vec<(String, Command)> {
        let mut cmd = command().term_width(100);
        cmd.build();
        let mut all = Vec::new();
        commands(&cmd, "strata".into(), &mut all);
        all
    }

    #[test]
    fn every_command_has_a_page_and_every_page_a_command() {
        let all = built();
        let leaves: Vec<String> = all
            .iter()
            .filter(|(name, c)| name == "strata" || !c.has_subcommands())
            .map(|(name, _)| name.trim_start_matches("strata").trim().to_owned())
            .collect();
        let pages: Vec<&str> = PAGES.iter().map(|p| p.path).collect();
        assert_eq!(
            leaves, pages,
            "pages follow the command tree, one per command"
        );
        for page in PAGES {
            assert!(!page.examples.is_empty(), "{:?} has no example", page.path);
            for e in page.examples {
                assert!(e.contains("strata "), "{:?}: example {e:?}", page.path);
                example_options_exist(&all, e)
                    .unwrap_or_else(|why| panic!("{:?}: example {e:?}: {why}", page.path));
            }
            if let Some(shape) = page.json {
                strata_testkit::json_shape::parse(shape)
                    .unwrap_or_else(|e| panic!("{:?}: JSON shape: {e}", page.path));
            }
        }
    }

    /// Every `--option` a strata command line of `example` gives is one
    /// the command it runs has in this build (a reduced build must not
    /// show a left-out one): read word by word after `strata`, an option
    /// belongs to the command named so far (global ones to every command;
    /// its value, if it takes one, passed over), and a word naming a
    /// subcommand of it goes deeper. Each command of a pipeline or list is
    /// checked alone.
    fn example_options_exist(all: &[(String, Command)], example: &str) -> Result<(), String> {
        let line = example.split("  #").next().unwrap_or(example);
        for part in line.split(['|', ';']).flat_map(|p| p.split("&&")) {
            let words: Vec<&str> = part
                .split_whitespace()
                .map(|w| w.rsplit("$(").next().unwrap_or(w))
                .skip_while(|w| *w != "strata")
                .collect();
            if words.is_empty() {
                continue;
            }
            let command = |name: &str| all.iter().find(|(n, _)| n == name).map(|(_, c)| c);
            let mut name = String::from("strata");
            let mut rest = words[1..].iter();
            while let Some(w) = rest.next() {
                let cmd = command(&name).expect("a command");
                if let Some(flag) = w.strip_prefix("--") {
                    let flag = flag.split('=').next().unwrap_or(flag);
                    let arg = cmd.get_arguments().find(|a| a.get_long() == Some(flag));
                    let arg = arg.ok_or(format!("`{name}` has no --{flag} in this build"))?;
                    if arg.get_action().takes_values() && !w.contains('=') {
                        rest.next();
                    }
                } else if command(&format!("{name} {w}")).is_some() {
                    name = format!("{name} {w}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn example_options_are_read_as_the_command_line_would_be() {
        let all = built();
        let ok = [
            "strata --json --root /srv/strata ref ls --filter kind==mutable",
            "zstd -dc l.tar.zst | strata layer apply - ./rootfs && strata --json du",
            "id=$(strata ref new 8c1f --description 'RUN make')",
        ];
        for e in ok {
            example_options_exist(&all, e).unwrap_or_else(|why| panic!("{e}: {why}"));
        }
        let wrong = [
            (
                "strata ref ls --no-such-option",
                "`strata ref ls` has no --no-such-option",
            ),
            ("strata --filter x ref ls", "`strata` has no --filter"),
            (
                "strata du | strata gc --keep-storage 1G",
                "`strata gc` has no --keep-storage",
            ),
        ];
        for (e, why) in wrong {
            assert_eq!(
                example_options_exist(&all, e).unwrap_err(),
                format!("{why} in this build"),
                "{e}"
            );
        }
    }

    /// `docs/cli.md` as rendered from the command tree: every command's
    /// long help, global options shown once at the top.
    fn cli_md() -> String {
        let all = built();
        let globals: Vec<clap::Id> = all[0]
            .1
            .get_arguments()
            .filter(|a| a.is_global_set())
            .map(|a| a.get_id().clone())
            .collect();
        let mut md = String::from(
            "# The `strata` command line\n\n\
<!-- Generated from strata-cli's clap definitions and src/help.rs by `cargo xtask docs`; \
a test fails when it is stale. Do not edit by hand. -->\n\n\
Every capability has its verb, so each part of Strata can be used and tested from the shell. \
This is every command's `--help`, as the binary prints it. The global options, listed under \
`strata`, apply to every command. Commands that print data take `--json` and print one JSON \
document whose shape is given under \"JSON output\": `{a, b}` is an object with exactly those \
fields, `[...]` a list; a field's values are documented by the text beside it.\n\n",
        );
        for (name, cmd) in &all {
            let about = cmd.get_about().map(|a| a.to_string()).unwrap_or_default();
            let anchor = name.replace(' ', "-");
            md.push_str(&format!("- [`{name}`](#{anchor}): {about}\n"));
        }
        for (i, (name, cmd)) in all.iter().enumerate() {
            let mut cmd = cmd.clone();
            if i > 0 {
                for id in &globals {
                    if cmd.get_arguments().any(|a| a.get_id() == id) {
                        cmd = cmd.mut_arg(id.clone(), |a| a.hide(true));
                    }
                }
            }
            let help = cmd.render_long_help().to_string();
            let help: Vec<&str> = help.lines().map(str::trim_end).collect();
            md.push_str(&format!(
                "\n## {name}\n\n```text\n{}\n```\n",
                help.join("\n").trim_end()
            ));
        }
        md
    }

    /// Fails when `docs/cli.md` differs from what the binary says;
    /// `STRATA_BLESS=1` (what `cargo xtask docs` sets) rewrites it. The
    /// file describes the default build, so a reduced one skips this.
    #[test]
    #[cfg_attr(
        not(all(feature = "daemon", feature = "registry")),
        ignore = "docs/cli.md describes the default build"
    )]
    fn docs_cli_md_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/cli.md");
        let want = cli_md();
        if std::env::var_os("STRATA_BLESS").is_some() {
            assert!(
                std::env::var_os("CI").is_none(),
                "STRATA_BLESS is set under CI: CI checks docs/cli.md, it never rewrites it"
            );
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "docs/cli.md is stale: run `cargo xtask docs` and commit the result"
        );
    }
}
