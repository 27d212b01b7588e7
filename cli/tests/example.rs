//! `aether pack` on the real example app (real dependencies from the npm registry):
//! reproducible across clean caches, and a code change moves only the app layer.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::path::Path;

use common::{aether, copy_project, json};

fn digests(v: &serde_json::Value) -> (String, String, String) {
    let layer = |i: usize| v["layers"][i]["digest"].as_str().unwrap().to_string();
    (v["digest"].as_str().unwrap().to_string(), layer(0), layer(1))
}

#[test]
fn packing_is_reproducible_and_code_changes_touch_only_the_app_layer() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/express-api");
    let project = tempfile::tempdir().unwrap();
    copy_project(&example, project.path());

    let cache1 = tempfile::tempdir().unwrap();
    let first = json(&aether(
        project.path(),
        cache1.path(),
        &["pack", "--no-sign", "-o", "json"],
    ));
    assert_eq!(first["installSkipped"], false);
    assert!(
        first["layers"][0]["entries"].as_u64().unwrap() > 1000,
        "the deps layer holds node_modules"
    );

    // A clean cache: everything is installed and packed again, to the same bytes.
    let cache2 = tempfile::tempdir().unwrap();
    let second = json(&aether(
        project.path(),
        cache2.path(),
        &["pack", "--no-sign", "-o", "json"],
    ));
    assert_eq!(digests(&first), digests(&second), "two clean packs differ");

    // One changed source line: new app layer and artifact digest, same deps layer,
    // and no install.
    let greeting = project.path().join("lib/greeting.js");
    let text = std::fs::read_to_string(&greeting)
        .unwrap()
        .replace("Hello from Aether!", "Hello again!");
    std::fs::write(&greeting, text).unwrap();
    let third = json(&aether(
        project.path(),
        cache2.path(),
        &["pack", "--no-sign", "-o", "json"],
    ));
    let (d1, deps1, app1) = digests(&first);
    let (d3, deps3, app3) = digests(&third);
    assert_eq!(deps1, deps3);
    assert_ne!(app1, app3);
    assert_ne!(d1, d3);
    assert_eq!(third["installSkipped"], true);
    assert_eq!(third["layers"][0]["cached"], true);
    println!("deps {deps1}  app {app1} -> {app3}");
}
