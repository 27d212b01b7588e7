use aether_artifact::signature::SigningKey;

use crate::args::{GlobalArgs, OutputFormat, PackArgs};
use crate::errors::CliError;
use crate::install::{self, Mode, Target};
use crate::pack::{self, PackOutcome, PackRequest, human_bytes};
use crate::printer::Printer;
use crate::project;
use crate::tools::ToolSpec;

pub fn run(args: &PackArgs, global: &GlobalArgs, printer: &Printer) -> Result<PackOutcome, CliError> {
    let outcome = pack_only(args, global, printer)?;
    print(&outcome, printer);
    Ok(outcome)
}

/// Pack without printing the result (`aether push` prints its own).
pub fn pack_only(args: &PackArgs, global: &GlobalArgs, printer: &Printer) -> Result<PackOutcome, CliError> {
    let request = request(args, global, printer)?;
    run_request(&request, printer)
}

/// Pack a prepared request, announcing it.
pub fn run_request(request: &PackRequest, printer: &Printer) -> Result<PackOutcome, CliError> {
    let workspace = request
        .project
        .workdir()
        .map(|w| format!(", workspace package {w}"))
        .unwrap_or_default();
    printer.info(format!(
        "Packing {} ({}, Node {}, {}{workspace})",
        request.app,
        request.tool.describe(),
        request.target.node_major,
        request.target.platform
    ));
    pack::pack(request, printer)
}

/// Everything `aether pack` decides before packing: project, app name, target
/// runtime, signing key, output and cache folders.
pub fn request(args: &PackArgs, global: &GlobalArgs, printer: &Printer) -> Result<PackRequest, CliError> {
    let project = project::detect(&args.dir, args.workspace.as_deref(), args.allow_no_lockfile)?;
    if project.lockfile.is_none() {
        printer.warn(
            "packing without a lockfile: dependencies are resolved now and the artifact is not reproducible",
        );
    }
    let app = project::app_name(&project, args.app.as_deref())?;
    let node_major = args
        .node
        .or_else(|| project::engines_node_major(&project.package_json, &aether_crds::NODE_MAJORS))
        .or_else(|| project::engines_node_major(&project.root_package_json, &aether_crds::NODE_MAJORS))
        .unwrap_or_else(local_node_major);
    if !aether_crds::NODE_MAJORS.contains(&node_major) {
        return Err(CliError::UnsupportedNode {
            major: node_major,
            available: aether_crds::NODE_MAJORS.map(|m| m.to_string()).join(", "),
        });
    }
    let target = Target {
        node_major,
        platform: args.platform.clone(),
        libc: args.libc.clone(),
    };

    let signing_key = if args.no_sign {
        None
    } else {
        let explicit = args.key.is_some();
        let path = args.key.clone().unwrap_or_else(super::keys::default_key_path);
        match std::fs::read_to_string(&path) {
            Ok(pem) => Some(SigningKey::from_pem(&pem).map_err(|source| CliError::Key { path, source })?),
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
                printer.warn("no signing key (run `aether keys generate`): the artifact is unsigned");
                None
            }
            Err(e) => return Err(CliError::io(format!("reading {}", path.display()))(e)),
        }
    };

    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| project.dir().join(".aether").join("out"));
    let cache_dir = args.cache_dir.clone().unwrap_or_else(install::default_cache_dir);
    let tool = ToolSpec::for_project(&project);
    let deps_key = install::cache_key(&project, &target, &tool, Mode::Production)?;
    Ok(PackRequest {
        project,
        tool,
        deps_key,
        build: !args.no_build,
        app,
        namespace: global.namespace.clone().unwrap_or_else(|| "default".into()),
        target,
        out_dir,
        cache_dir,
        signing_key,
        remote_deps: None,
    })
}

fn print(outcome: &PackOutcome, printer: &Printer) {
    match printer.format {
        OutputFormat::Json | OutputFormat::Yaml => printer.value(outcome),
        OutputFormat::Human => {
            for l in &outcome.layers {
                printer.info(format!(
                    "  {:<5} {}  {:>10}",
                    l.name,
                    l.digest,
                    human_bytes(l.size)
                ));
            }
            match &outcome.signature {
                Some(s) => printer.info(format!(
                    "  signed by key {} for {}/{}",
                    s.key_id, outcome.namespace, outcome.app
                )),
                None => printer.info("  unsigned"),
            }
            printer.info(format!(
                "Artifact written to {} in {:.1}s",
                outcome.out.display(),
                outcome.timings_ms.total as f64 / 1000.0
            ));
            printer.data(&outcome.digest.to_string());
        }
    }
}

fn local_node_major() -> u32 {
    std::process::Command::new("node")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|v| {
            v.trim()
                .trim_start_matches('v')
                .split('.')
                .next()
                .and_then(|m| m.parse().ok())
        })
        .unwrap_or(20)
}
