//! `strata serve --containerd-socket PATH`: the root's snapshot store as a
//! containerd proxy snapshotter until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use strata_cache::CacheManager;
use strata_containerd::{ServeOptions, Service, serve, signalled};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The unix socket containerd's `proxy_plugins` entry names.
    #[arg(long, value_name = "PATH")]
    containerd_socket: PathBuf,
    /// The socket's mode, in octal.
    #[arg(long, default_value = "600", value_parser = parse_mode)]
    socket_mode: u32,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal mode such as 600"))
}

pub fn run(mgr: &CacheManager, args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let root = mgr.root();
    let service = Service::new(&root.snapshots, &root.leases)?;
    let opts = ServeOptions {
        socket: args.containerd_socket.clone(),
        mode: args.socket_mode,
    };
    // The signal handlers exist before the socket does.
    crate::snapshot::block_on_parallel(async {
        let shutdown = signalled();
        serve(service, &opts, shutdown).await
    })??;
    Ok(ExitCode::SUCCESS)
}
