//! A real OCI registry for tests: Debian's `docker-registry` (the CNCF
//! distribution registry) on 127.0.0.1 at a free port, with a throwaway
//! config and storage directory, optionally behind htpasswd basic auth.
//! It stops when dropped.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running registry.
#[derive(Debug)]
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Its storage directory (blobs under `docker/registry/v2/blobs`).
    pub storage: PathBuf,
    dir: tempfile::TempDir,
    child: Child,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e} (.ci/run installs it)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Registry {
    /// Starts a registry; with `user`, only that user (password `password`)
    /// may pull or push.
    pub fn start(user: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().expect("temp dir");
        let storage = dir.path().join("data");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let auth = match user {
            Some((name, password)) => {
                let line = run(Command::new("htpasswd").args(["-Bbn", name, password]));
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, line.trim()).expect("write htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: strata-test\n    path: {}\n",
                    file.display()
                )
            }
            None => String::new(),
        };
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth}",
                storage.display()
            ),
        )
        .expect("write registry config");
        let log = std::fs::File::create(dir.path().join("log")).expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect(
                "start docker-registry (Debian's docker-registry package; .ci/run installs it)",
            );
        let mut r = Registry {
            addr,
            storage,
            dir,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&r.addr).is_err() {
            if let Ok(Some(status)) = r.child.try_wait() {
                panic!("docker-registry exited with {status}: {}", r.log());
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen: {}",
                r.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    /// What the registry logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// The data file of blob `digest` (`sha256:HEX`) in the storage.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The registry's temporary directory (for configs beside it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
