//! `strata completions SHELL`: a script for each shell that knows every
//! noun, needing no root, and a closed pipe is not an error.

use std::io::Read;
use std::process::{Command, Stdio};

use strata_testkit::cli::Env;

#[test]
fn completion_scripts_name_every_noun() {
    let env = Env::strata();
    for shell in ["bash", "zsh", "fish"] {
        let script = env.run(&["completions", shell]).expect(0).text();
        for noun in [
            "content", "snapshot", "image", "ref", "lease", "serve", "prune",
        ] {
            assert!(script.contains(noun), "{shell} completions lack {noun}");
        }
    }
    assert!(!env.root.exists(), "completions need no root");
    env.run(&["completions", "tcsh"]).expect(2);

    // The reader goes away after one byte.
    let mut child = Command::new(env.bin())
        .args(["completions", "zsh"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut one = [0u8; 1];
    child.stdout.take().unwrap().read_exact(&mut one).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
