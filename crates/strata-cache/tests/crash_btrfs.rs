//! The cache manager's crash test on the btrfs backend, on a loop btrfs
//! (see `crash/`).
#![allow(clippy::print_stdout)]

mod crash;

fn main() {
    crash::main_for("cache_crash_btrfs", strata_cache::BackendChoice::Btrfs);
}
