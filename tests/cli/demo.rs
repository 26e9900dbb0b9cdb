//! `strata demo`: the tour runs every step on a temporary root, and with
//! `--root` leaves a root that holds the two named images and checks
//! clean.

use serde_json::Value;
use strata_testkit::cli::Env;

#[test]
fn the_demo_runs_every_step() {
    let env = Env::strata();
    // Without --root: a temporary root, even when STRATA_ROOT names one.
    let out = std::process::Command::new(env.bin())
        .arg("demo")
        .env("STRATA_ROOT", &env.root)
        .output()
        .unwrap();
    let run = strata_testkit::cli::finish(out).expect(0);
    let text = run.text();
    for step in [
        "image", "import", "build", "merge", "diff", "export", "du", "prune",
    ] {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(step)),
            "no {step} step in:\n{text}"
        );
    }
    assert!(
        !env.root.exists(),
        "without --root the demo touches no root of the user's"
    );

    // With --root the root stays, holding what the demo named.
    env.run(&["demo"]).expect(0);
    let names: Vec<String> = env
        .run(&["--json", "image", "ls"])
        .expect(0)
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|i: &Value| i["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["demo/app:1", "demo/base:1"]);
    env.run(&["check"]).expect(0);
}
