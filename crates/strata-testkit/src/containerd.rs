//! A private containerd for side-by-side benchmarks: config, root, state
//! and sockets in a scratch directory, the CRI plugin off, and content
//! isolated per namespace so each run really fetches and ingests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running containerd.
#[derive(Debug)]
pub struct Containerd {
    child: Child,
    socket: PathBuf,
}

impl Containerd {
    /// Starts containerd on `dir` (Debian's `containerd` package).
    pub fn start(dir: &Path) -> Containerd {
        Containerd::start_with(dir, "")
    }

    /// Starts containerd on `dir` with `extra` appended to its config (a
    /// `[proxy_plugins...]` table, say).
    pub fn start_with(dir: &Path, extra: &str) -> Containerd {
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{1}\"\n[ttrpc]\n  address = \"{0}/ttrpc.sock\"\n[plugins.\"io.containerd.metadata.v1.bolt\"]\n  content_sharing_policy = \"isolated\"\n{2}",
                dir.display(),
                socket.display(),
                extra
            ),
        )
        .expect("write containerd config");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("containerd.log")).expect("containerd log"))
            .spawn()
            .expect("start containerd (apt-get install containerd)");
        let mut c = Containerd { child, socket };
        let log = || std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !c.ctr(&["version"]).status().is_ok_and(|s| s.success()) {
            if let Ok(Some(status)) = c.child.try_wait() {
                panic!("containerd exited with {status}: {}", log());
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not come up in a minute: {}",
                log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    /// Its API socket (for clients other than `ctr`, such as `ctr-remote`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A `ctr` command against this containerd.
    pub fn ctr(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(&self.socket)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    /// A `ctr` command whose output is kept (stdout piped).
    pub fn ctr_out(&self, args: &[&str]) -> std::process::Output {
        let mut c = self.ctr(args);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c.output().expect("run ctr")
    }

    /// The daemon's process id (its memory is measured beside `ctr`'s).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `ctr images import` of the OCI archive `archive` into namespace `ns`,
    /// unpacked into `snapshotter`.
    pub fn import(&self, ns: &str, archive: &Path, snapshotter: &str) -> Command {
        let mut cmd = self.ctr(&[
            "-n",
            ns,
            "images",
            "import",
            "--base-name",
            "localhost/bench/image",
            "--snapshotter",
            snapshotter,
        ]);
        cmd.arg(archive);
        cmd
    }

    /// `ctr images pull` of `reference` over plain HTTP into namespace
    /// `ns` (unpacked into the overlayfs snapshotter).
    pub fn pull(&self, ns: &str, reference: &str) -> Command {
        self.ctr(&[
            "-n",
            ns,
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            "overlayfs",
            reference,
        ])
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
