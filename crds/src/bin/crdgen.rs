//! Writes the CRD YAML generated from the Rust types.
//!   cargo run -p aether-crds --bin crdgen            # print to stdout
//!   cargo run -p aether-crds --bin crdgen -- FILE    # write FILE

fn main() -> std::io::Result<()> {
    let yaml = aether_crds::crds_yaml();
    match std::env::args_os().nth(1) {
        Some(path) => std::fs::write(path, yaml),
        None => {
            print!("{yaml}");
            Ok(())
        }
    }
}
