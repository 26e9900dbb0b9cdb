//! A real OCI registry for tests: Debian's `docker-registry` (the CNCF
//! distribution registry) on 127.0.0.1 at a port the kernel picks for it
//! (read back from its log, so no other server can have taken it between a
//! probe and the bind), with a throwaway config and storage directory,
//! optionally behind htpasswd basic auth. It stops when dropped.

use std::net::TcpStream;
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
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n{auth}",
                storage.display()
            ),
        )
        .expect("write registry config");
        let child = serve(&config, &dir.path().join("log"));
        let mut r = Registry {
            addr: String::new(),
            storage,
            dir,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(addr) = listening(&r.log()) {
                r.addr = addr;
                if TcpStream::connect(&r.addr).is_ok() {
                    break;
                }
            }
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

    /// What the registry logged (at info: requests are there too).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Whether the log shows `what` within ten seconds (lines are written
    /// after the response they describe has gone out).
    pub fn log_shows(&self, what: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log().contains(what) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
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

    /// Stops the registry (SIGKILL: connections drop mid-response).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the stopped registry again, on the same address and storage.
    pub fn restart(&mut self) {
        let config = self.dir.path().join("config.yml");
        let text = std::fs::read_to_string(&config).expect("read registry config");
        let text = text.replace("addr: 127.0.0.1:0", &format!("addr: {}", self.addr));
        std::fs::write(&config, text).expect("write registry config");
        self.child = serve(&config, &self.dir.path().join("restarted.log"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(&self.addr).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("docker-registry exited with {status} on restart");
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen again"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `docker-registry serve CONFIG`, logging to `log`.
fn serve(config: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("registry log");
    Command::new("docker-registry")
        .arg("serve")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log fd"))
        .stderr(log)
        .spawn()
        .expect("start docker-registry (Debian's docker-registry package; .ci/run installs it)")
}

/// The address the registry says it listens on (`listening on ADDR`).
fn listening(log: &str) -> Option<String> {
    let rest = log.split("listening on ").nth(1)?;
    let addr: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"')
        .collect();
    addr.starts_with("127.0.0.1:").then_some(addr)
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
