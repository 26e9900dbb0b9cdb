//! `cargo xtask bench estargz`: the gzip layers of debian-python (`cargo
//! xtask bench-images`; a small image in a quick run) converted into
//! eStargz, by Strata (`strata image export --compression estargz
//! --force-compression` on a root where the image was imported, untimed,
//! the round before) and by the stargz snapshotter's own `estargz.Build`
//! (the library BuildKit and nerdctl convert with), through the Go oracle
//! built from Debian's sources: one `build` per layer, from the same gzip
//! blobs, both cores (GOMAXPROCS=2 splits Build's work), gzip level 6
//! (Strata's default) instead of Build's 9. Side by side on the scratch
//! file system (`STRATA_BENCH_DIR`): cache dropped before each run, order
//! rotated, returned and durable times, peak memory. After each Strata run
//! the oracle checks every layer it wrote against the TOC digest of its
//! descriptor, so a fast but wrong conversion cannot pass.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use strata_testkit::bench::{self, Contender};

fn read(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// Every layer of the OCI layout `dir` passes the oracle's check with its
/// descriptor's TOC digest.
fn checked(oracle: &Path, dir: &Path) {
    let blob = |d: &Value| dir.join("blobs/sha256").join(&d.as_str().unwrap()[7..]);
    let index = read(&dir.join("index.json"));
    let manifest = read(&blob(&index["manifests"][0]["digest"]));
    for l in manifest["layers"].as_array().unwrap() {
        let toc = l["annotations"]["containerd.io/snapshot/stargz/toc.digest"]
            .as_str()
            .unwrap_or_else(|| panic!("no TOC digest on {l}"));
        bench::ok(
            Command::new(oracle)
                .args(["check", "--toc-digest", toc])
                .arg(blob(&l["digest"]))
                .stdout(std::process::Stdio::null()),
        );
    }
}

fn main() {
    let dir = bench::scratch();
    let images = bench::images(&dir);
    let name = &images.names[0];
    let layout = images.layout(name);
    let layers = images.layers(name);
    let oracle = strata_testkit::go::estargz_oracle(&dir);
    let root = |r: usize| dir.join(format!("root-{r}"));
    let out = |r: usize| dir.join(format!("out-{r}"));
    let go_out = |r: usize| dir.join(format!("go-{r}"));
    let go_script = |r: usize| -> String {
        let mut script = format!("set -e; mkdir -p {}\n", go_out(r).display());
        for (i, (blob, _)) in layers.iter().enumerate() {
            script.push_str(&format!(
                "{} build {} {}/{i} --gzip-level 6 --procs 2 >/dev/null\n",
                oracle.display(),
                blob.display(),
                go_out(r).display()
            ));
        }
        script
    };
    let mut contenders = [
        Contender::new(
            "strata image export --compression estargz",
            &bench::strata_version(),
            |r| {
                bench::ok(bench::strata(&root(r)).args([
                    "image",
                    "import",
                    &format!("oci:{}", layout.display()),
                    "--name",
                    "img",
                ]));
                let mut c = bench::strata(&root(r));
                c.args([
                    "image",
                    "export",
                    "img",
                    &format!("oci:{}", out(r).display()),
                    "--compression",
                    "estargz",
                    "--force-compression",
                ]);
                c
            },
        )
        .after(|r| {
            checked(&oracle, &out(r));
            bench::remove(&root(r));
            bench::remove(&out(r));
        }),
        Contender::new(
            "estargz.Build (Go, GOMAXPROCS=2, level 6)",
            &strata_testkit::go::estargz_oracle_version(),
            |r| bench::bash(&go_script(r)),
        )
        .after(|r| bench::remove(&go_out(r))),
    ];
    let times = bench::side_by_side(&dir, true, &mut contenders);
    let figures: Vec<_> = times.iter().map(bench::Times::figure).collect();
    bench::record(
        "estargz",
        &format!("convert {name} ({} gzip layers) to eStargz", layers.len()),
        &dir,
        &figures,
        &[],
    );
}
