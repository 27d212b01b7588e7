//! `aether pack` on the project shapes of examples/ with real dependencies from the
//! npm registry, and yarn and pnpm fetched by Aether itself (none is installed on
//! the machine): the same bytes from two empty caches for each manager, builds
//! packed with their output, workspaces packed with their local packages, and start
//! commands checked before anything is uploaded.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::path::{Path, PathBuf};

use common::{aether, copy_project, json, layer_paths};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

fn pack(dir: &Path, cache: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["pack", "--no-sign", "-o", "json"];
    args.extend_from_slice(extra);
    json(&aether(dir, cache, &args))
}

fn blob(out: &serde_json::Value, layer: usize) -> PathBuf {
    let digest = out["layers"][layer]["digest"].as_str().unwrap();
    PathBuf::from(out["out"].as_str().unwrap())
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// Pack a copy of examples/NAME from two empty caches: the same artifact. Returns
/// the first pack's output and the copy that holds its blobs.
fn reproducible(name: &str, manager: &str) -> (serde_json::Value, tempfile::TempDir) {
    let project = tempfile::tempdir().unwrap();
    copy_project(&example(name), project.path());
    let (c1, c2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = pack(project.path(), c1.path(), &[]);
    let second = pack(project.path(), c2.path(), &[]);
    assert!(
        first["packageManager"].as_str().unwrap().starts_with(manager),
        "{first}"
    );
    assert_eq!(first["installSkipped"], false);
    assert_eq!(
        first["digest"], second["digest"],
        "{name}: two clean packs differ"
    );
    assert_eq!(first["layers"], second["layers"]);
    (first, project)
}

#[test]
fn yarn_classic_is_fetched_and_packs_reproducibly() {
    let (out, _project) = reproducible("yarn-classic", "yarn");
    assert!(out["layers"][0]["entries"].as_u64().unwrap() > 10, "{out}");
}

#[test]
fn yarn_berry_is_fetched_and_packs_reproducibly() {
    reproducible("yarn-berry", "yarn");
}

#[test]
fn a_yarn_pnp_project_gets_a_node_modules_tree() {
    let (out, _project) = reproducible("yarn-pnp", "yarn");
    let deps = layer_paths(&blob(&out, 0));
    assert!(deps.iter().any(|p| p.starts_with("node_modules/")), "{deps:?}");
    let app = layer_paths(&blob(&out, 1));
    assert!(
        !app.iter()
            .any(|p| p.starts_with(".yarn") || p.starts_with(".pnp")),
        "{app:?}"
    );
}

#[test]
fn pnpm_is_fetched_and_packs_reproducibly() {
    let (out, _project) = reproducible("pnpm-app", "pnpm");
    let deps = layer_paths(&blob(&out, 0));
    assert!(
        deps.iter().any(|p| p.starts_with("node_modules/.pnpm/")),
        "{deps:?}"
    );
    assert!(
        !deps.iter().any(|p| p == "node_modules/.modules.yaml"),
        "install records are left out"
    );
}

#[test]
fn a_build_script_runs_with_dev_dependencies_and_its_output_is_packed() {
    let project = tempfile::tempdir().unwrap();
    copy_project(&example("typescript-api"), project.path());
    let cache = tempfile::tempdir().unwrap();
    let out = pack(project.path(), cache.path(), &[]);
    let app = layer_paths(&blob(&out, 1));
    assert!(app.contains(&"dist/index.js".to_string()), "{app:?}");
    assert!(app.contains(&"src/index.ts".to_string()), "{app:?}");
    // The deps layer stays production-only: typescript is a dev dependency.
    let deps = layer_paths(&blob(&out, 0));
    assert!(deps.iter().any(|p| p.starts_with("node_modules/express/")));
    assert!(
        !deps.iter().any(|p| p.starts_with("node_modules/typescript/")),
        "dev deps packed"
    );
    assert!(
        !project.path().join("dist").exists(),
        "the build wrote into the project"
    );

    // A code change: the build runs again, the deps layer is reused.
    let index = project.path().join("src/index.ts");
    let text = std::fs::read_to_string(&index).unwrap();
    std::fs::write(&index, format!("{text}\nexport const release = 2;\n")).unwrap();
    let again = pack(project.path(), cache.path(), &[]);
    assert_eq!(again["installSkipped"], true);
    assert_eq!(again["layers"][0]["digest"], out["layers"][0]["digest"]);
    assert_ne!(again["layers"][1]["digest"], out["layers"][1]["digest"]);

    // Without the build, dist/ is missing: refused at pack, naming the file.
    let no_build = aether(project.path(), cache.path(), &["pack", "--no-sign", "--no-build"]);
    assert_eq!(no_build.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&no_build.stderr);
    assert!(stderr.contains("dist/index.js"), "{stderr}");
}

#[test]
fn a_workspace_package_packs_with_its_local_packages_from_its_folder_or_by_name() {
    let project = tempfile::tempdir().unwrap();
    copy_project(&example("npm-workspaces"), project.path());
    let cache = tempfile::tempdir().unwrap();
    let out = pack(&project.path().join("apps/web"), cache.path(), &[]);
    assert_eq!(out["app"], "web");
    let app = layer_paths(&blob(&out, 1));
    assert!(app.contains(&"apps/web/server.js".to_string()), "{app:?}");
    assert!(app.iter().any(|p| p.starts_with("packages/greeting/")), "{app:?}");
    // The build ran in the package's folder and could use the local package.
    assert!(app.contains(&"apps/web/dist/greeting.txt".to_string()), "{app:?}");
    let deps = layer_paths(&blob(&out, 0));
    assert!(deps.iter().any(|p| p.starts_with("node_modules/")), "{deps:?}");

    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            PathBuf::from(out["out"].as_str().unwrap())
                .join("blobs/sha256")
                .join(out["digest"].as_str().unwrap().trim_start_matches("sha256:")),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["workdir"], "apps/web");

    let by_name = pack(project.path(), cache.path(), &["--workspace", "web"]);
    assert_eq!(by_name["digest"], out["digest"], "same package, same artifact");
}

#[test]
fn a_start_script_needing_a_dev_only_cli_is_refused_at_pack() {
    let project = tempfile::tempdir().unwrap();
    std::fs::write(
        project.path().join("package.json"),
        r#"{"name": "cli-app", "scripts": {"start": "nodemon --port ${PORT:-3000} app.js"}}"#,
    )
    .unwrap();
    std::fs::write(project.path().join("app.js"), "").unwrap();
    std::fs::write(
        project.path().join("package-lock.json"),
        r#"{"name": "cli-app", "lockfileVersion": 3, "requires": true, "packages": {"": {"name": "cli-app"}}}"#,
    )
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let out = aether(project.path(), cache.path(), &["pack", "--no-sign"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`nodemon`"), "{stderr}");
    assert!(stderr.contains("dependencies"), "{stderr}");
}

#[test]
fn a_node_major_no_image_serves_is_refused() {
    let project = tempfile::tempdir().unwrap();
    copy_project(&example("dns-client"), project.path());
    let cache = tempfile::tempdir().unwrap();
    let out = aether(
        project.path(),
        cache.path(),
        &["pack", "--no-sign", "--node", "21"],
    );
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Node 21") && stderr.contains("18, 20, 22, 24"),
        "{stderr}"
    );
}

#[test]
fn a_yarn_workspace_package_packs_the_same_from_its_folder_or_by_name() {
    let project = tempfile::tempdir().unwrap();
    copy_project(&example("yarn-workspaces"), project.path());
    let (c1, c2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let from_folder = pack(&project.path().join("apps/api"), c1.path(), &[]);
    let by_name = pack(project.path(), c2.path(), &["--workspace", "api"]);
    assert_eq!(from_folder["digest"], by_name["digest"], "two clean packs differ");
    let deps = layer_paths(&blob(&from_folder, 0));
    assert!(
        deps.iter().any(|p| p == "node_modules/@acme/greeting"),
        "{deps:?}"
    );
    assert!(
        deps.iter().any(|p| p.starts_with("node_modules/escape-html/")),
        "{deps:?}"
    );
}

/// `npm install --package-lock-only ARGS` in `dir`: the developer's own edit of
/// package.json and the lockfile.
fn npm_lock(dir: &Path, args: &[&str]) {
    let status = std::process::Command::new("npm")
        .args(["install", "--package-lock-only", "--no-audit", "--no-fund"])
        .args(args)
        .current_dir(dir)
        .status()
        .expect("running npm");
    assert!(status.success(), "npm install --package-lock-only failed");
}

#[test]
fn a_dependency_change_updates_the_last_install_to_the_bytes_of_a_clean_one() {
    // ms 2.0.0 at the top and debug's own ms 2.1.2 nested under it; then ms 2.1.2 at
    // the top, which un-nests debug's copy and leaves npm an empty folder behind.
    let project = tempfile::tempdir().unwrap();
    std::fs::write(
        project.path().join("package.json"),
        r#"{"name": "deps-change", "version": "1.0.0", "main": "index.js",
            "dependencies": {"debug": "4.3.4", "ms": "2.0.0"}}"#,
    )
    .unwrap();
    std::fs::write(project.path().join("index.js"), "require('debug')\n").unwrap();
    npm_lock(project.path(), &[]);
    let cache = tempfile::tempdir().unwrap();
    let first = pack(project.path(), cache.path(), &[]);
    assert_eq!(first["depsSource"], "installed", "{first}");
    let nested = |out: &serde_json::Value| {
        layer_paths(&blob(out, 0))
            .iter()
            .any(|p| p.trim_end_matches('/').ends_with("debug/node_modules"))
    };
    assert!(nested(&first), "debug's ms is nested at first");

    npm_lock(project.path(), &["ms@2.1.2", "--save-exact"]);
    let updated = pack(project.path(), cache.path(), &[]);
    assert_eq!(updated["depsSource"], "updated", "{updated}");
    let clean = pack(project.path(), tempfile::tempdir().unwrap().path(), &[]);
    assert_eq!(clean["depsSource"], "installed");
    assert_eq!(
        updated["layers"][0]["digest"], clean["layers"][0]["digest"],
        "the updated install packs to other bytes than a clean one"
    );
    assert!(!nested(&updated), "the empty nest is gone");
    assert_ne!(updated["layers"][0]["digest"], first["layers"][0]["digest"]);

    // A package.json out of sync with the lockfile fails as `npm ci` does, and no
    // install is recorded for it.
    let manifest = project.path().join("package.json");
    let mut package: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    package["dependencies"]["is-number"] = "7.0.0".into();
    std::fs::write(&manifest, package.to_string()).unwrap();
    let out = aether(project.path(), cache.path(), &["pack", "--no-sign"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in sync"), "{stderr}");
    let installs = std::fs::read_dir(cache.path().join("deps"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join(".complete").is_file())
        .count();
    assert_eq!(installs, 2, "only the two good installs are cached");
}
