//! `cargo xtask bench content`: ingest of one large file (1 GiB of
//! pseudo-random bytes, `$STRATA_BENCH_SIZE_MIB` MiB; 16 MiB in a quick
//! run) into a fresh content store by `strata content ingest`, against the
//! least a store must do, hash the file and keep a copy of it:
//! `sha256sum` then `cp`, `openssl dgst -sha256` then `cp`, and the one
//! pass `tee >(sha256sum) > copy < file`. Run side by side on a tmpfs
//! (`$STRATA_BENCH_TMPFS`), where the disk does not show, and on the
//! loop-mounted ext4 (`$STRATA_BENCH_DIR`), where the durable time (the
//! command, then `sync -f`) is what a store pays to keep the file.

use std::io::Write;
use std::path::Path;

use strata_testkit::bench::{self, Contender};

/// Writes `mib` MiB of xorshift bytes (no compression or dedupe helps).
fn write_input(path: &Path, mib: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        f.write_all(&block).unwrap();
    }
    f.flush().unwrap();
}

fn ingest(dir: &Path, mib: u64) {
    let input = dir.join("input");
    write_input(&input, mib);
    let (root, copy, hash) = (dir.join("root"), dir.join("copy"), dir.join("hash"));
    let (i, c, h) = (input.display(), copy.display(), hash.display());
    let fresh = || {
        bench::remove(&root);
        bench::remove(&copy);
    };
    let sha = bench::version("sha256sum");
    let cp = bench::version("cp");
    let mut contenders = [
        Contender::new("strata content ingest", &bench::strata_version(), |_| {
            fresh();
            let mut cmd = bench::strata(&root);
            cmd.args(["content", "ingest"]).arg(&input);
            cmd
        }),
        Contender::new("sha256sum + cp", &format!("{sha}; {cp}"), |_| {
            fresh();
            bench::bash(&format!("sha256sum {i} > {h} && cp {i} {c}"))
        }),
        Contender::new(
            "openssl dgst -sha256 + cp",
            &format!("{}; {cp}", bench::version("openssl")),
            |_| {
                fresh();
                bench::bash(&format!("openssl dgst -sha256 {i} > {h} && cp {i} {c}"))
            },
        ),
        Contender::new(
            "tee >(sha256sum) > copy (one pass)",
            &format!("{}; {sha}", bench::version("tee")),
            |_| {
                fresh();
                // `wait $!` waits for the process substitution (bash 5.1+).
                bench::bash(&format!("tee >(sha256sum > {h}) < {i} > {c}; wait $!"))
            },
        ),
    ];
    let times = bench::side_by_side(dir, true, &mut contenders);
    fresh();
    let figures: Vec<_> = times.iter().map(bench::Times::figure).collect();
    bench::record(
        "ingest",
        &format!("a {mib} MiB file on {}", bench::fs_type(dir)),
        dir,
        &figures,
        &[],
    );
    std::fs::remove_file(&input).unwrap();
}

fn main() {
    let mib = bench::pick(
        std::env::var("STRATA_BENCH_SIZE_MIB").map_or(1024, |v| v.parse().expect("a size in MiB")),
        16,
    );
    let tmpfs = std::env::var_os("STRATA_BENCH_TMPFS").expect("run through cargo xtask bench");
    ingest(Path::new(&tmpfs), mib);
    ingest(&bench::scratch(), mib);
}
