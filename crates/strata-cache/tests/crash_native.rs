//! The cache manager's crash test on the native backend (see `crash/`).
#![allow(clippy::print_stdout)]

mod crash;

fn main() {
    crash::main_for("cache_crash_native", strata_cache::BackendChoice::Native);
}
