//! A private npm registry on this machine, for tests of projects whose dependencies
//! need a token: Verdaccio (installed once from the npm registry into the cache),
//! listening on 127.0.0.1 only, with no uplinks, so it serves exactly what was
//! published to it, and only to the user whose token [`PrivateRegistry::token`] is.
//!
//! npm keeps tarballs in its cache by integrity and reuses them without asking the
//! registry, so every npm run here that talks to the private registry gets a cache of
//! its own (never `~/.npm`) and a user config of its own (never `~/.npmrc`): a tarball
//! fetched with the token cannot later make an install without it pass.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

/// The Verdaccio release the tests use; bumping it installs a new copy beside the old.
/// 6.8.0 is the newest for Node 20: later releases require Node 22 (6.10 refuses to start).
pub const VERDACCIO_VERSION: &str = "6.8.0";

/// The scope [`private_dependency_project`] publishes under.
pub const PRIVATE_SCOPE: &str = "@aether-private";
/// The package it publishes, and what the package's `greeting()` returns.
pub const PRIVATE_PACKAGE: &str = "@aether-private/secret-greeting";
pub const PRIVATE_GREETING: &str = "private registry ok\n";

/// How long Verdaccio may take to answer on its port.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const USER: &str = "aether-e2e";

/// A running Verdaccio; dropping it kills the process and deletes its storage.
#[derive(Debug)]
pub struct PrivateRegistry {
    child: Child,
    pid: u32,
    port: u16,
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT/`
    pub url: String,
    /// The registry user's token, for `//127.0.0.1:PORT/:_authToken=`.
    pub token: String,
}

impl PrivateRegistry {
    /// Install Verdaccio into `cache` (once per [`VERDACCIO_VERSION`]; reused when
    /// present), start it on 127.0.0.1 with a free port and storage in a temporary
    /// directory, and create a user whose token is returned in [`Self::token`].
    pub fn start(cache: &Path) -> anyhow::Result<Self> {
        let bin = install_verdaccio(cache)?;
        let dir = tempfile::Builder::new().prefix("aether-registry-").tempdir()?;
        let port = free_port()?;
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, verdaccio_config(dir.path(), port))?;
        let log_path = dir.path().join("verdaccio.log");
        let log = std::fs::File::create(&log_path)?;
        let started = Instant::now();
        let child = Command::new("node")
            .arg(&bin)
            .arg("--config")
            .arg(&config)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting Verdaccio with `node` (is Node.js installed?)")?;
        let pid = child.id();
        let mut registry = Self {
            child,
            pid,
            port,
            dir,
            url: format!("http://127.0.0.1:{port}/"),
            token: String::new(),
        };
        registry
            .wait_until_ready()
            .with_context(|| format!("Verdaccio log:\n{}", tail(&log_path)))?;
        registry.token = registry
            .add_user()
            .with_context(|| format!("Verdaccio log:\n{}", tail(&log_path)))?;
        eprintln!(
            "private registry: Verdaccio {VERDACCIO_VERSION} (pid {pid}) ready on {} {:?} after starting it",
            registry.url,
            started.elapsed()
        );
        Ok(registry)
    }

    /// `npm publish` the package in `dir` to this registry with the token, through a
    /// temporary npmrc (`--userconfig`) and npm cache.
    pub fn publish(&self, dir: &Path) -> anyhow::Result<()> {
        let userconfig = self.scratch("publish.npmrc")?;
        std::fs::write(
            &userconfig,
            format!("registry={}\n{}\n", self.url, self.auth_line()),
        )?;
        let cache = self.scratch("npm-cache-publish")?;
        let mut cmd = npm(&userconfig, &cache, dir);
        cmd.args(["publish", "--registry", &self.url]);
        run(&mut cmd, &format!("npm publish in {}", dir.display()))?;
        Ok(())
    }

    /// `.npmrc` lines that route `scope` (e.g. `@acme`) to this registry with the token.
    pub fn npmrc(&self, scope: &str) -> String {
        format!("{scope}:registry={}\n{}\n", self.url, self.auth_line())
    }

    /// The port Verdaccio listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    fn auth_line(&self) -> String {
        format!("//127.0.0.1:{}/:_authToken={}", self.port, self.token)
    }

    /// A fresh path inside the registry's temporary directory.
    fn scratch(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = tempfile::Builder::new()
            .prefix(name)
            .tempdir_in(self.dir.path())?
            .keep();
        Ok(path.join(name))
    }

    fn wait_until_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("Verdaccio exited before answering: {status}");
            }
            let last = match request(self.port, "GET", "/-/ping", None) {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => format!("HTTP {status}: {body}"),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "Verdaccio did not answer on 127.0.0.1:{} within {START_TIMEOUT:?} ({last})",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The registry's "add user" call (what `npm adduser` sends), which answers with a token.
    fn add_user(&self) -> anyhow::Result<String> {
        let password = format!("pw-{}-{}", std::process::id(), self.port);
        let body = serde_json::json!({
            "_id": format!("org.couchdb.user:{USER}"),
            "name": USER,
            "password": password,
            "email": "e2e@aether.invalid",
            "type": "user",
            "roles": [],
        })
        .to_string();
        let path = format!("/-/user/org.couchdb.user:{USER}");
        let (status, answer) = request(self.port, "PUT", &path, Some(&body))?;
        ensure!(
            status == 201,
            "creating the registry user: HTTP {status}: {answer}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&answer).with_context(|| format!("the registry answered {answer:?}"))?;
        let token = json["token"]
            .as_str()
            .with_context(|| format!("no token in the registry's answer {answer:?}"))?;
        Ok(token.to_string())
    }
}

impl Drop for PrivateRegistry {
    fn drop(&mut self) {
        // `child` is the node process itself (no shell in between): kill its PID and reap it.
        if let Err(e) = self.child.kill() {
            eprintln!("private registry: killing Verdaccio (pid {}): {e}", self.pid);
        }
        let _ = self.child.wait();
    }
}

/// Publish [`PRIVATE_PACKAGE`]@1.0.0 to `reg` and write at `dir` an npm project
/// `private-dep` that depends on it and on one public package (`ms`), with an `.npmrc`
/// routing [`PRIVATE_SCOPE`] to `reg` with the token and a package-lock.json (whose
/// `resolved` URLs are kept, so the private one points at 127.0.0.1). `GET /` of its
/// `server.js` answers [`PRIVATE_GREETING`].
pub fn private_dependency_project(reg: &PrivateRegistry, dir: &Path) -> anyhow::Result<()> {
    let package = tempfile::Builder::new().prefix("secret-greeting-").tempdir()?;
    std::fs::write(
        package.path().join("package.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "name": PRIVATE_PACKAGE,
            "version": "1.0.0",
            "description": "A package only the private registry has",
            "main": "index.js",
            "license": "UNLICENSED",
        }))? + "\n",
    )?;
    std::fs::write(
        package.path().join("index.js"),
        format!(
            "exports.greeting = () => {};\n",
            serde_json::to_string(PRIVATE_GREETING)?
        ),
    )?;
    reg.publish(package.path())?;

    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("package.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "name": "private-dep",
            "version": "1.0.0",
            "private": true,
            "scripts": { "start": "node server.js" },
            "dependencies": { PRIVATE_PACKAGE: "^1.0.0", "ms": "^2.1.3" },
        }))? + "\n",
    )?;
    std::fs::write(
        dir.join("server.js"),
        format!(
            "const http = require('node:http');\n\
             const ms = require('ms');\n\
             const {{ greeting }} = require('{PRIVATE_PACKAGE}');\n\
             \n\
             const started = Date.now();\n\
             http\n  .createServer((req, res) => {{\n    \
               res.setHeader('content-type', 'text/plain');\n    \
               if (req.url === '/uptime') return res.end(`${{ms(Date.now() - started)}}\\n`);\n    \
               res.end(greeting());\n  }})\n  \
               .listen(Number(process.env.PORT || 3000));\n"
        ),
    )?;
    std::fs::write(dir.join(".npmrc"), reg.npmrc(PRIVATE_SCOPE))?;
    std::fs::write(dir.join(".gitignore"), "node_modules/\n")?;

    let userconfig = reg.scratch("project.npmrc")?;
    // Keep `resolved` even where the machine's own config omits it.
    std::fs::write(&userconfig, "omit-lockfile-registry-resolved=false\n")?;
    let cache = reg.scratch("npm-cache-lock")?;
    let mut cmd = npm(&userconfig, &cache, dir);
    cmd.args(["install", "--package-lock-only"]);
    run(
        &mut cmd,
        &format!("npm install --package-lock-only in {}", dir.display()),
    )?;
    ensure!(
        dir.join("package-lock.json").is_file(),
        "npm wrote no package-lock.json in {}",
        dir.display()
    );
    Ok(())
}

/// `npm` in `cwd` with its own user config and cache (never the user's), quiet.
fn npm(userconfig: &Path, cache: &Path, cwd: &Path) -> Command {
    let mut cmd = Command::new("npm");
    cmd.arg("--userconfig")
        .arg(userconfig)
        .arg("--cache")
        .arg(cache)
        .args(["--no-audit", "--no-fund", "--no-update-notifier"])
        .current_dir(cwd)
        .stdin(Stdio::null());
    cmd
}

/// Run `cmd` to completion; an error carries its output.
fn run(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: could not run it"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// `cache/verdaccio-VERSION/node_modules/verdaccio/bin/verdaccio`, installing it first
/// when absent (into a scratch directory renamed into place, so an interrupted or
/// concurrent install never leaves a half-installed copy that looks complete).
fn install_verdaccio(cache: &Path) -> anyhow::Result<PathBuf> {
    let home = cache.join(format!("verdaccio-{VERDACCIO_VERSION}"));
    let bin = |root: &Path| root.join("node_modules/verdaccio/bin/verdaccio");
    if bin(&home).is_file() {
        return Ok(bin(&home));
    }
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix(&format!(".verdaccio-{VERDACCIO_VERSION}-"))
        .tempdir_in(cache)?;
    // verdaccio-audit asks for `node-fetch@cjs`, a dist-tag for node-fetch's CommonJS 2.x
    // line that registry mirrors keeping only `latest` lack; pin the last 2.x instead.
    std::fs::write(
        scratch.path().join("package.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "name": "aether-e2e-verdaccio",
            "private": true,
            "dependencies": { "verdaccio": VERDACCIO_VERSION },
            "overrides": { "verdaccio-audit": { "node-fetch": "2.7.0" } },
        }))? + "\n",
    )?;
    let started = Instant::now();
    // The user's npm config applies here: this install is from the public registry.
    let mut cmd = Command::new("npm");
    cmd.args([
        "install",
        "--omit=dev",
        "--no-audit",
        "--no-fund",
        "--no-update-notifier",
    ])
    .current_dir(scratch.path())
    .stdin(Stdio::null());
    run(&mut cmd, &format!("installing verdaccio@{VERDACCIO_VERSION}"))?;
    ensure!(
        bin(scratch.path()).is_file(),
        "verdaccio@{VERDACCIO_VERSION} installed without bin/verdaccio"
    );
    match std::fs::rename(scratch.path(), &home) {
        Ok(()) => {
            // Renamed away: nothing left for the TempDir to delete.
            let _ = scratch.keep();
        }
        // Another run finished first; use its copy (ours is deleted with `scratch`).
        Err(_) if bin(&home).is_file() => {}
        Err(e) => return Err(e).with_context(|| format!("moving Verdaccio into {}", home.display())),
    }
    eprintln!(
        "private registry: installed verdaccio@{VERDACCIO_VERSION} into {} in {:?}",
        home.display(),
        started.elapsed()
    );
    Ok(bin(&home))
}

/// Verdaccio's config: htpasswd users, no uplinks, and one package rule, so only
/// `@aether-private/*` exists and only an authenticated user may read or publish it.
fn verdaccio_config(dir: &Path, port: u16) -> String {
    // Paths are written as JSON strings, which YAML reads as double-quoted scalars.
    let quoted = |p: PathBuf| serde_json::Value::String(p.display().to_string()).to_string();
    format!(
        "# Written by aether-e2e (e2e/src/registry.rs).\n\
         listen: 127.0.0.1:{port}\n\
         storage: {storage}\n\
         auth:\n  htpasswd:\n    file: {htpasswd}\n    max_users: 10\n\
         uplinks: {{}}\n\
         packages:\n  '{PRIVATE_SCOPE}/*':\n    access: $authenticated\n    publish: $authenticated\n\
         web:\n  enable: false\n\
         log: {{ type: stdout, format: pretty, level: http }}\n",
        storage = quoted(dir.join("storage")),
        htpasswd = quoted(dir.join("htpasswd")),
    )
}

/// A port on 127.0.0.1 that nothing listens on right now.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A blocking HTTP/1.0 request to 127.0.0.1:`port` (1.0: the answer is never chunked).
fn request(port: u16, method: &str, path: &str, json: Option<&str>) -> anyhow::Result<(u16, String)> {
    let addr = (Ipv4Addr::LOCALHOST, port).into();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let body = json.unwrap_or("");
    let mut head =
        format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\n");
    if json.is_some() {
        head += &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
    }
    stream.write_all(format!("{head}\r\n{body}").as_bytes())?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .with_context(|| format!("not an HTTP answer: {answer:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// The last lines of a log file, for error messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run npm in `dir` with a fresh cache and no user config beyond `userconfig_text`.
    fn npm_in(dir: &Path, userconfig_text: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let scratch = tempfile::tempdir()?;
        let userconfig = scratch.path().join("npmrc");
        std::fs::write(&userconfig, userconfig_text)?;
        Ok(npm(&userconfig, &scratch.path().join("cache"), dir)
            .args(args)
            .output()?)
    }

    fn copy_without_npmrc(from: &Path, to: &Path, npmrc: Option<&str>) -> anyhow::Result<()> {
        std::fs::create_dir_all(to)?;
        crate::app::copy_project(from, to).with_context(|| format!("copying {}", from.display()))?;
        std::fs::remove_file(to.join(".npmrc")).context("removing the copy's .npmrc")?;
        if let Some(text) = npmrc {
            std::fs::write(to.join(".npmrc"), text)?;
        }
        Ok(())
    }

    #[test]
    #[ignore = "installs Verdaccio from the npm registry and runs it on 127.0.0.1"]
    fn private_dependency_needs_the_token() -> anyhow::Result<()> {
        let reg = PrivateRegistry::start(&crate::app::shared_cache())?;
        let work = tempfile::tempdir()?;
        let project = work.path().join("private-dep");
        private_dependency_project(&reg, &project)?;

        // The lockfile pins the private package to this registry.
        let lock: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(project.join("package-lock.json"))?)?;
        let entry = &lock["packages"][format!("node_modules/{PRIVATE_PACKAGE}")];
        assert_eq!(entry["version"], "1.0.0", "lockfile entry: {entry}");
        let resolved = entry["resolved"].as_str().unwrap_or_default();
        assert!(
            resolved.starts_with(&format!("http://127.0.0.1:{}/", reg.port())),
            "resolved: {resolved:?}"
        );
        assert!(lock["packages"]["node_modules/ms"].is_object(), "no ms in {lock}");

        // With the project's .npmrc (token included) it installs and greets.
        let ok = npm_in(&project, "", &["install"])?;
        assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
        let script = format!("process.stdout.write(require('{PRIVATE_PACKAGE}').greeting())");
        let out = Command::new("node")
            .args(["-e", &script])
            .current_dir(&project)
            .output()?;
        assert_eq!(String::from_utf8_lossy(&out.stdout), PRIVATE_GREETING);

        // Without the .npmrc, the lockfile still points at the registry, which refuses
        // an anonymous download.
        let bare = work.path().join("no-npmrc");
        copy_without_npmrc(&project, &bare, None)?;
        let out = npm_in(&bare, "", &["install"])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "installed without the .npmrc:\n{stderr}");
        eprintln!("without .npmrc, npm install failed as it should:\n{stderr}");

        // The scope routed to the registry but no token: refused too, so the token matters.
        let tokenless = work.path().join("no-token");
        let route = format!("{PRIVATE_SCOPE}:registry={}\n", reg.url);
        copy_without_npmrc(&project, &tokenless, Some(&route))?;
        let out = npm_in(&tokenless, "", &["install"])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "installed without the token:\n{stderr}");
        assert!(
            stderr.contains("401") || stderr.contains("403") || stderr.contains("E401"),
            "expected an authorization failure:\n{stderr}"
        );

        Ok(())
    }
}
