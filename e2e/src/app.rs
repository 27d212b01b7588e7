//! Driving `aether` like a developer does, and asking the deployed app what it answers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

/// The CLI under test: `AETHER_BIN`, else the workspace's debug build.
pub fn aether_bin() -> PathBuf {
    std::env::var_os("AETHER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/aether"))
}

/// The dependency cache shared by the e2e runs (`AETHER_E2E_CACHE`, else under
/// target/): the example's 252 packages are installed once, not once per test.
pub fn shared_cache() -> PathBuf {
    std::env::var_os("AETHER_E2E_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-cache"))
}

/// Copy a project without its node_modules or packed output.
pub fn copy_project(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "node_modules" || name == ".aether" {
            continue;
        }
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(to.join(&name))?;
            copy_project(&entry.path(), &to.join(&name))?;
        } else {
            std::fs::copy(entry.path(), to.join(&name))?;
        }
    }
    Ok(())
}

/// A copy of examples/express-api whose `/` answers `greeting` (one source line).
pub fn example_app(dir: &Path, greeting: &str) -> anyhow::Result<()> {
    copy_project(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/express-api"),
        dir,
    )?;
    set_greeting(dir, greeting)
}

/// The code-only change: rewrite the one line lib/greeting.js holds.
pub fn set_greeting(dir: &Path, greeting: &str) -> anyhow::Result<()> {
    let path = dir.join("lib/greeting.js");
    let text = std::fs::read_to_string(&path)?;
    let line = format!("exports.greeting = () => '{greeting}\\n';");
    let changed: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("exports.greeting") {
                line.clone()
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&path, changed.join("\n") + "\n")?;
    Ok(())
}

/// An error message as one line: miette wraps it at 80 columns behind `│`, breaking
/// after a `-` too (`kustomize-` / `controller`).
pub fn one_line(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines().map(|l| l.replace('│', " ")) {
        let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
        if line.is_empty() {
            continue;
        }
        if !out.is_empty() && !out.ends_with('-') {
            out.push(' ');
        }
        out.push_str(&line);
    }
    out
}

/// What one `aether` run did.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub json: serde_json::Value,
    pub stderr: String,
}

/// `aether ARGS -n NS -o json` in `dir`, with the shared cache.
pub fn aether(dir: &Path, ns: &str, args: &[&str]) -> Run {
    let out = Command::new(aether_bin())
        .args(args)
        .args(["-n", ns, "-o", "json"])
        .current_dir(dir)
        .env("AETHER_CACHE_DIR", shared_cache())
        .output()
        .expect("running aether (build it: cargo build -p aether-cli)");
    Run {
        code: out.status.code(),
        json: serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// GET `/` of the app: straight at `url` when it is an address this machine reaches
/// (the local cluster reports cluster IPs), else through the API server's Service
/// proxy, which works from anywhere a kubeconfig does.
pub async fn body(client: &kube::Client, ns: &str, app: &str, url: &str) -> anyhow::Result<String> {
    let uri: hyper::Uri = url.parse().with_context(|| format!("not a URL: {url}"))?;
    let host = uri.host().unwrap_or_default();
    if host.parse::<std::net::IpAddr>().is_ok() {
        let (status, body) = crate::http::get(host, uri.port_u16().unwrap_or(80), "/").await?;
        anyhow::ensure!(status == 200, "GET {url}: HTTP {status}: {body}");
        return Ok(body);
    }
    let path = format!("/api/v1/namespaces/{ns}/services/{app}:http/proxy/");
    let req = http::Request::get(&path).body(Vec::new())?;
    Ok(client.request_text(req).await?)
}

/// Poll `/` until it answers `expected` (kube-proxy takes up to a second to route
/// to a new pod), failing after `timeout` with the last answer.
pub async fn wait_for_body(
    client: &kube::Client,
    ns: &str,
    app: &str,
    url: &str,
    expected: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    // A wrong answer counts as the last error, which a timeout reports.
    crate::wait_until(&format!("{url} to answer {expected:?}"), timeout, || async move {
        let answer = body(client, ns, app, url).await?;
        anyhow::ensure!(answer == expected, "it answered {answer:?}");
        Ok(Some(()))
    })
    .await
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_wrapped_message_reads_as_one_line() {
        let wrapped = "  × app web's fields are managed elsewhere: spec.env by kustomize-\n  │ controller\n  help: revert the change\n        in Git\n";
        assert_eq!(
            super::one_line(wrapped),
            "× app web's fields are managed elsewhere: spec.env by kustomize-controller help: revert the change in Git"
        );
    }
}
