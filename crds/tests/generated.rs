//! The committed YAML under config/ must be what the Rust types generate, and the
//! samples users copy must be valid against those types.

use aether_crds::{AetherApp, AetherArtifact};

fn repo_file(rel: &str) -> String {
    let path = format!("{}/../{rel}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

#[test]
fn committed_crd_yaml_matches_the_rust_types() {
    let committed = repo_file("config/crd/aether.dev.yaml");
    assert!(
        committed == aether_crds::crds_yaml(),
        "config/crd/aether.dev.yaml is out of date with crds/src: run `make crds` and commit the result"
    );
}

#[test]
fn samples_parse_as_the_current_types() {
    let app: AetherApp = serde_yaml::from_str(&repo_file("config/samples/aether_v1alpha1_aetherapp.yaml"))
        .expect("the AetherApp sample parses");
    assert_eq!(app.spec.replicas, 2);
    assert_eq!(app.spec.port, 3000);
    let art: AetherArtifact =
        serde_yaml::from_str(&repo_file("config/samples/aether_v1alpha1_aetherartifact.yaml"))
            .expect("the AetherArtifact sample parses");
    assert_eq!(art.spec.app, app.metadata.name.expect("sample has a name"));
    let policy: aether_crds::AetherPolicy =
        serde_yaml::from_str(&repo_file("config/samples/aether_v1alpha1_aetherpolicy.yaml"))
            .expect("the AetherPolicy sample parses");
    assert!(!policy.spec.allow_command);
    assert_eq!(
        policy.spec.verify.minimum_mode,
        Some(aether_crds::VerifyMode::Enforce)
    );
}
