//! The cache manager's crash test on the overlay backend (see `crash/`).
#![allow(clippy::print_stdout)]

mod crash;

fn main() {
    crash::main_for(
        "cache_crash_overlay",
        strata_cache::BackendChoice::overlay(),
    );
}
