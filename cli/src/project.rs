//! What kind of Node.js project a folder is: package manager, lockfile, workspace,
//! start command, Node version, app name. Pure reads of the folder; nothing is run.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::errors::CliError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageManager {
    Npm,
    YarnClassic,
    YarnBerry,
    Pnpm,
}

impl fmt::Display for PackageManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Npm => "npm",
            Self::YarnClassic | Self::YarnBerry => "yarn",
            Self::Pnpm => "pnpm",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Project {
    /// Where the lockfile is, and what both layers are rooted at: the workspace
    /// root for a workspace package, else the package folder itself.
    pub root: PathBuf,
    /// The app's package folder relative to `root`; empty outside workspaces.
    pub member: String,
    /// The app package's package.json.
    pub package_json: Value,
    /// The root's package.json (the same as `package_json` outside workspaces).
    pub root_package_json: Value,
    pub manager: PackageManager,
    /// None only with `--allow-no-lockfile`.
    pub lockfile: Option<PathBuf>,
    /// The start command, argv run in the package folder (see [`start_command`]).
    pub entrypoint: Vec<String>,
    /// Every workspace package folder (relative to `root`): their package.json files
    /// are part of the install.
    pub members: Vec<String>,
    /// The workspace packages that go into the artifact: the app's own folder and
    /// the local packages it depends on, directly or not.
    pub local_packages: Vec<String>,
}

impl Project {
    /// The app's package folder.
    pub fn dir(&self) -> PathBuf {
        if self.member.is_empty() {
            self.root.clone()
        } else {
            self.root.join(&self.member)
        }
    }

    /// The working directory inside the artifact, for a workspace package.
    pub fn workdir(&self) -> Option<String> {
        (!self.member.is_empty()).then(|| self.member.clone())
    }

    /// The `build` script, if the package has one.
    pub fn build_script(&self) -> Option<&str> {
        self.package_json.pointer("/scripts/build")?.as_str()
    }
}

/// Lockfiles in order of preference, with the manager each implies.
const LOCKFILES: [(&str, PackageManager); 4] = [
    ("package-lock.json", PackageManager::Npm),
    ("npm-shrinkwrap.json", PackageManager::Npm),
    ("pnpm-lock.yaml", PackageManager::Pnpm),
    ("yarn.lock", PackageManager::YarnClassic),
];

/// Detect the project in `dir`. Inside a workspace package the workspace root is
/// found above it; at a workspace root, `workspace` names the package to deploy
/// (by package name or folder).
pub fn detect(dir: &Path, workspace: Option<&str>, allow_no_lockfile: bool) -> Result<Project, CliError> {
    let dir = dir
        .canonicalize()
        .map_err(CliError::io(format!("opening {}", dir.display())))?;
    // A pnpm workspace root needs no package.json of its own.
    let own = match read_package_json(&dir) {
        Err(CliError::NotNodeProject(_))
            if workspace.is_some() && dir.join("pnpm-workspace.yaml").is_file() =>
        {
            Value::Null
        }
        other => other?,
    };

    let (root, member, members) = match (workspace, find_workspace(&dir)) {
        (Some(name), _) => {
            let globs = workspace_globs(&dir, &own)
                .ok_or_else(|| CliError::NotAWorkspace(dir.clone(), name.to_string()))?;
            let members = expand_members(&dir, &globs);
            let member = members
                .iter()
                .find(|m| {
                    *m == name
                        || read_package_json(&dir.join(m)).is_ok_and(|p| p["name"].as_str() == Some(name))
                })
                .cloned()
                .ok_or_else(|| CliError::UnknownWorkspace {
                    name: name.to_string(),
                    members: members.join(", "),
                })?;
            (dir.clone(), member, members)
        }
        (None, Some((root, member, members))) => (root, member, members),
        (None, None) => {
            let members = workspace_globs(&dir, &own)
                .map(|g| expand_members(&dir, &g))
                .unwrap_or_default();
            (dir.clone(), String::new(), members)
        }
    };
    let package_dir = if member.is_empty() {
        root.clone()
    } else {
        root.join(&member)
    };
    let package_json = if member.is_empty() {
        own.clone()
    } else {
        read_package_json(&package_dir)?
    };
    let root_package_json = if root == package_dir {
        package_json.clone()
    } else {
        match read_package_json(&root) {
            Err(CliError::NotNodeProject(_)) => Value::Null,
            other => other?,
        }
    };

    let found = LOCKFILES.iter().find(|(name, _)| root.join(name).is_file());
    let (manager, lockfile) = match found {
        Some((name, pm)) => {
            let path = root.join(name);
            let pm = if *pm == PackageManager::YarnClassic && is_yarn_berry(&path) {
                PackageManager::YarnBerry
            } else {
                *pm
            };
            (pm, Some(path))
        }
        None if allow_no_lockfile => (PackageManager::Npm, None),
        None => return Err(CliError::NoLockfile(root)),
    };
    let procfile = std::fs::read_to_string(package_dir.join("Procfile")).ok();
    let entrypoint = start_command(procfile.as_deref(), &package_json, |f| {
        package_dir.join(f).is_file()
    })
    .ok_or_else(|| {
        if member.is_empty() && !members.is_empty() {
            CliError::WorkspaceRoot {
                root: root.clone(),
                members: members.join(", "),
            }
        } else {
            CliError::NoEntrypoint
        }
    })?;
    let local_packages = local_packages(&root, &member, &members);
    Ok(Project {
        root,
        member,
        package_json,
        root_package_json,
        manager,
        lockfile,
        entrypoint,
        members,
        local_packages,
    })
}

fn read_package_json(dir: &Path) -> Result<Value, CliError> {
    let text = match std::fs::read_to_string(dir.join("package.json")) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CliError::NotNodeProject(dir.to_path_buf()));
        }
        Err(e) => return Err(CliError::io("reading package.json")(e)),
    };
    serde_json::from_str(&text).map_err(|e| CliError::BadPackageJson(format!("{}: {e}", dir.display())))
}

/// Berry lockfiles are YAML with a `__metadata` block; classic ones are not YAML.
fn is_yarn_berry(lockfile: &Path) -> bool {
    std::fs::read_to_string(lockfile).is_ok_and(|t| t.contains("__metadata:"))
}

/// The member globs a folder declares: package.json `workspaces` (a list, or
/// `{packages: [...]}` as yarn allows) or pnpm-workspace.yaml's `packages`.
fn workspace_globs(dir: &Path, pkg: &Value) -> Option<Vec<String>> {
    let from_json = pkg
        .get("workspaces")
        .and_then(|w| w.as_array().or_else(|| w.get("packages")?.as_array()))
        .map(|list| list.iter().filter_map(|g| g.as_str().map(String::from)).collect());
    from_json.or_else(|| {
        let text = std::fs::read_to_string(dir.join("pnpm-workspace.yaml")).ok()?;
        let yaml: Value = serde_yaml::from_str(&text).ok()?;
        Some(
            yaml.get("packages")?
                .as_array()?
                .iter()
                .filter_map(|g| g.as_str().map(String::from))
                .collect(),
        )
    })
}

/// The closest folder above `dir` whose workspace globs include `dir`: (root,
/// `dir` relative to it, every member).
fn find_workspace(dir: &Path) -> Option<(PathBuf, String, Vec<String>)> {
    for root in dir.ancestors().skip(1) {
        // pnpm workspaces need no root package.json.
        let pkg = read_package_json(root).unwrap_or(Value::Null);
        let Some(globs) = workspace_globs(root, &pkg) else {
            continue;
        };
        let members = expand_members(root, &globs);
        let rel = dir.strip_prefix(root).ok()?.to_str()?.to_string();
        if members.contains(&rel) {
            return Some((root.to_path_buf(), rel, members));
        }
    }
    None
}

/// Expand workspace globs (`apps/*`, `packages/**`, literal folders; `!x` excludes)
/// to folders holding a package.json, sorted.
pub fn expand_members(root: &Path, globs: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let (excluded, included): (Vec<&String>, Vec<&String>) = globs.iter().partition(|g| g.starts_with('!'));
    for glob in included {
        let glob = glob.trim_start_matches("./").trim_end_matches('/');
        let parts: Vec<&str> = glob.split('/').collect();
        expand(root, "", &parts, &mut out);
    }
    // A member is a folder inside the root: `..` or a link out of it is no member.
    let canonical_root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    out.retain(|m| {
        aether_artifact::path::components(m, 32).is_ok_and(|parts| parts.join("/") == *m)
            && root
                .join(m)
                .canonicalize()
                .is_ok_and(|p| p.starts_with(&canonical_root))
    });
    out.retain(|m| {
        !excluded
            .iter()
            .any(|e| glob_matches(e.trim_start_matches('!').trim_start_matches("./"), m))
    });
    out.sort();
    out.dedup();
    out
}

fn expand(root: &Path, prefix: &str, parts: &[&str], out: &mut Vec<String>) {
    let join = |name: &str| {
        if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        }
    };
    let Some((first, rest)) = parts.split_first() else {
        if !prefix.is_empty() && root.join(prefix).join("package.json").is_file() {
            out.push(prefix.to_string());
        }
        return;
    };
    let subdirs = || {
        let mut names: Vec<String> = std::fs::read_dir(root.join(prefix))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "node_modules" && !n.starts_with('.'))
            .collect();
        names.sort();
        names
    };
    match *first {
        "**" => {
            expand(root, prefix, rest, out);
            for name in subdirs() {
                expand(root, &join(&name), parts, out);
            }
        }
        p if p.contains('*') => {
            for name in subdirs() {
                if glob_matches(p, &name) {
                    expand(root, &join(&name), rest, out);
                }
            }
        }
        p => expand(root, &join(p), rest, out),
    }
}

/// `*` matches any run of characters within a path segment; `**` any segments.
fn glob_matches(glob: &str, path: &str) -> bool {
    fn segs(g: &[&str], p: &[&str]) -> bool {
        match (g.split_first(), p.split_first()) {
            (None, None) => true,
            (Some((&"**", gr)), _) => segs(gr, p) || (!p.is_empty() && segs(g, &p[1..])),
            (Some((gs, gr)), Some((ps, pr))) => seg(gs, ps) && segs(gr, pr),
            _ => false,
        }
    }
    fn seg(g: &str, s: &str) -> bool {
        match g.split_once('*') {
            None => g == s,
            Some((head, tail)) => {
                s.starts_with(head)
                    && (0..=s.len() - head.len())
                        .any(|i| s.is_char_boundary(head.len() + i) && seg(tail, &s[head.len() + i..]))
            }
        }
    }
    let g: Vec<&str> = glob.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    segs(&g, &p)
}

/// The member itself and every workspace package it depends on, transitively,
/// matched by package name.
fn local_packages(root: &Path, member: &str, members: &[String]) -> Vec<String> {
    if member.is_empty() {
        return Vec::new();
    }
    let packages: Vec<(String, Value)> = members
        .iter()
        .filter_map(|m| Some((m.clone(), read_package_json(&root.join(m)).ok()?)))
        .collect();
    let mut out = vec![member.to_string()];
    let mut i = 0;
    while i < out.len() {
        let pkg = packages
            .iter()
            .find(|(m, _)| *m == out[i])
            .map(|(_, p)| p.clone());
        i += 1;
        let Some(pkg) = pkg else { continue };
        for field in ["dependencies", "optionalDependencies"] {
            let Some(deps) = pkg.get(field).and_then(Value::as_object) else {
                continue;
            };
            for name in deps.keys() {
                if let Some((m, _)) = packages.iter().find(|(_, p)| p["name"].as_str() == Some(name))
                    && !out.contains(m)
                {
                    out.push(m.clone());
                }
            }
        }
    }
    out
}

/// How the app starts, in the order Heroku's Node buildpack and Cloud Foundry use:
/// a Procfile `web:` line, else `scripts.start` (with `prestart`), else `main`, else
/// server.js or index.js. `node <file> [args]` runs directly; any other command
/// runs with `/bin/sh -c` as npm would, with node_modules/.bin on PATH (set by the
/// runtime). `npm run X`, `yarn X` and `pnpm X` are replaced by script X, since the
/// runtime image need not have a package manager.
pub fn start_command(
    procfile: Option<&str>,
    pkg: &Value,
    has_file: impl Fn(&str) -> bool,
) -> Option<Vec<String>> {
    let web = procfile.and_then(|text| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix("web:").map(str::trim))
            .filter(|c| !c.is_empty())
            .map(String::from)
    });
    let scripts = pkg.get("scripts");
    let script = |name: &str| scripts?.get(name)?.as_str().map(String::from);
    let command = web.or_else(|| {
        let start = script("start")?;
        Some(match script("prestart") {
            Some(pre) => format!("{} && {}", group(&pre), group(&start)),
            None => start,
        })
    });
    if let Some(command) = command {
        let command = inline_scripts(&command, &script, 0);
        return Some(argv_for(&command));
    }
    if let Some(main) = pkg.get("main").and_then(|m| m.as_str())
        && has_file(main)
    {
        return Some(vec!["node".into(), main.into()]);
    }
    ["server.js", "index.js"]
        .into_iter()
        .find(|f| has_file(f))
        .map(|f| vec!["node".into(), f.into()])
}

/// `node file args` without shell syntax runs as it is; anything else through sh.
fn argv_for(command: &str) -> Vec<String> {
    let plain = !command.contains(['&', '|', ';', '$', '>', '<', '`', '(', '\'', '"', '\\', '*', '\n']);
    let words: Vec<&str> = command.split_whitespace().collect();
    if plain && words.len() >= 2 && words[0] == "node" && !words[1..].iter().any(|w| w.contains('=')) {
        words.iter().map(|w| w.to_string()).collect()
    } else {
        vec!["/bin/sh".into(), "-c".into(), command.trim().to_string()]
    }
}

/// Replace each `npm run X` / `npm start` / `yarn [run] X` / `pnpm [run] X`
/// command in `command` by script X (recursively, a few levels deep).
fn inline_scripts(command: &str, script: &dyn Fn(&str) -> Option<String>, depth: usize) -> String {
    if depth > 4 {
        return command.to_string();
    }
    let segments = split_commands(command);
    let alone = segments.len() == 1;
    segments
        .into_iter()
        .map(|(segment, separator)| {
            let words: Vec<&str> = segment.split_whitespace().collect();
            let assignments: Vec<&str> = words.iter().copied().take_while(|w| is_assignment(w)).collect();
            let rest = &words[assignments.len()..];
            // The script run, and the arguments npm and yarn would append to it.
            let (name, extra): (Option<&str>, &[&str]) = match rest {
                ["npm" | "yarn" | "pnpm", "start", extra @ ..] => (Some("start"), extra),
                ["npm", "run" | "run-script", name, "--", extra @ ..] => (Some(name), extra),
                ["npm", "run" | "run-script", name] => (Some(name), &[]),
                ["yarn" | "pnpm", "run", name, extra @ ..] | ["yarn" | "pnpm", name, extra @ ..] => {
                    (Some(name), extra)
                }
                _ => (None, &[]),
            };
            let extra: Vec<&str> = extra.iter().copied().filter(|w| *w != "--").collect();
            let replaced = name.and_then(script).map(|s| {
                let s = inline_scripts(&s, script, depth + 1);
                if extra.is_empty() {
                    s
                } else {
                    format!("{s} {}", extra.join(" "))
                }
            });
            let text = match replaced {
                Some(s) if assignments.is_empty() && alone => s,
                // Variables set for the script apply to it alone: a subshell.
                Some(s) if !assignments.is_empty() => format!(" ( export {}; {s} ) ", assignments.join(" ")),
                Some(s) => format!(" {} ", group(&s)),
                None => segment,
            };
            format!("{text}{separator}")
        })
        .collect::<String>()
        .trim()
        .to_string()
}

/// `{ command; }`: one command for `&&` and `||`, whatever it holds.
fn group(command: &str) -> String {
    let command = command.trim().trim_end_matches(';').trim_end();
    if command.ends_with('&') {
        format!("{{ {command} }}")
    } else {
        format!("{{ {command}; }}")
    }
}

/// Split a shell command on unquoted `&&`, `||`, `;`, `|`, `&` and newlines:
/// (command, the separator after it).
pub fn split_commands(command: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    let mut chars = command.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => {
                quote = None;
                current.push(c);
            }
            (Some(_), '\\') | (None, '\\') => {
                current.push(c);
                if let Some(n) = chars.next() {
                    current.push(n);
                }
            }
            (Some(_), c) => current.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                current.push(c);
            }
            // `2>&1`, `>&2`, `<&3` and `&>file` redirect; they separate nothing.
            (None, '&') if current.ends_with(['>', '<']) || chars.peek() == Some(&'>') => current.push(c),
            (None, '&' | '|') => {
                let mut sep = c.to_string();
                if chars.peek() == Some(&c) {
                    sep.push(c);
                    chars.next();
                }
                out.push((std::mem::take(&mut current), sep));
            }
            (None, ';' | '\n') => out.push((std::mem::take(&mut current), c.to_string())),
            (None, c) => current.push(c),
        }
    }
    out.push((current, String::new()));
    out
}

/// What a start command needs that the artifact lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// `node <file>` names a file that is not in the app layer.
    File(String),
    /// A command that is neither a shell builtin, a file of the app, nor in
    /// node_modules/.bin.
    Command(String),
}

/// Shell builtins and the few programs every Node image has.
const ALWAYS_THERE: &[&str] = &[
    "cd", "echo", "exec", "export", "set", "test", "[", "true", "false", "sh", "env", "sleep", "exit",
    "wait", "trap", ":", ".", "printf", "unset", "node",
];

/// Check a start command (as [`start_command`] returns it) against the artifact:
/// `has_file` says whether a path relative to the package folder is in the app
/// layer, `has_bin` whether node_modules/.bin has a command. Commands it cannot
/// read (substitutions, variables) are given the benefit of the doubt. Pure.
pub fn check_start(
    argv: &[String],
    has_file: impl Fn(&str) -> bool,
    has_bin: impl Fn(&str) -> bool,
) -> Result<(), Missing> {
    let commands: Vec<Vec<String>> = match argv {
        [sh, c, script] if sh == "/bin/sh" && c == "-c" => split_commands(script)
            .into_iter()
            .map(|(segment, _)| words(&segment))
            .collect(),
        _ => vec![argv.to_vec()],
    };
    // `cd dir && node main.js` runs main.js from dir.
    let mut cwd = String::new();
    let in_cwd = |cwd: &str, path: &str| {
        let path = path.trim_start_matches("./");
        if cwd.is_empty() {
            path.to_string()
        } else {
            format!("{cwd}/{path}")
        }
    };
    for words in commands {
        let mut words = words
            .iter()
            .map(String::as_str)
            .skip_while(|w| is_assignment(w) || matches!(*w, "exec" | "{" | "(" | "env" | "nohup"));
        let Some(program) = words.next() else { continue };
        if program.contains(['$', '`', '(', ')', '{', '}']) {
            continue;
        }
        if program == "cd" {
            match words.next() {
                Some(dir) if !dir.contains('$') && !dir.starts_with('/') && !dir.contains("..") => {
                    cwd = in_cwd(&cwd, dir.trim_end_matches('/'));
                }
                // Somewhere it cannot follow: check nothing further.
                _ => return Ok(()),
            }
            continue;
        }
        if program == "node" {
            // `node .` runs the folder's main: nothing to name here.
            if let Some(file) = node_script(words).filter(|f| !f.contains('$') && *f != ".") {
                let candidates = [
                    file.to_string(),
                    format!("{file}.js"),
                    format!("{file}.cjs"),
                    format!("{file}.mjs"),
                    format!("{file}/index.js"),
                ];
                if !candidates.iter().any(|c| has_file(&in_cwd(&cwd, c))) {
                    return Err(Missing::File(in_cwd(&cwd, file)));
                }
            }
        } else if program.contains('/') {
            if !has_file(&in_cwd(&cwd, program)) {
                return Err(Missing::File(in_cwd(&cwd, program)));
            }
        } else if !ALWAYS_THERE.contains(&program) && !has_bin(program) {
            return Err(Missing::Command(program.to_string()));
        }
    }
    Ok(())
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit())
    })
}

/// The script `node [options] <script> [args]` runs, if any (`-e`/`-p` run none).
fn node_script<'a>(mut words: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    const TAKES_VALUE: &[&str] = &[
        "-r",
        "--require",
        "--import",
        "--loader",
        "--experimental-loader",
        "--env-file",
        "--conditions",
        "-C",
        "--title",
        "--inspect-port",
        "--disable-warning",
        "--unhandled-rejections",
        "--stack-size",
        "--max-old-space-size",
    ];
    while let Some(w) = words.next() {
        match w {
            "-e" | "--eval" | "-p" | "--print" | "-" | "--" => return None,
            w if TAKES_VALUE.contains(&w) => {
                words.next();
            }
            w if w.starts_with('-') => {}
            w => return Some(w),
        }
    }
    None
}

/// Words of one simple command, quotes removed.
fn words(segment: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in segment.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => current.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
                any = false;
            }
            (None, c) => current.push(c),
        }
    }
    if any || !current.is_empty() {
        out.push(current);
    }
    out
}

/// The newest of `available` majors that `engines.node` allows, as Heroku picks
/// the newest release satisfying the range (">=16" → 24, "^18.12" → 18,
/// "18 || 20" → 20). `None` without a range; a range no major satisfies, or one
/// that cannot be read, gives its first number, for the caller to refuse by name.
pub fn engines_node_major(pkg: &Value, available: &[u32]) -> Option<u32> {
    let range = pkg.pointer("/engines/node")?.as_str()?;
    let reqs: Vec<semver::VersionReq> = range
        .split("||")
        .filter_map(|alternative| semver::VersionReq::parse(&npm_to_cargo_range(alternative)).ok())
        .collect();
    let satisfied = |major: u32| {
        let newest = semver::Version::new(u64::from(major), 999, 999);
        let first = semver::Version::new(u64::from(major), 0, 0);
        reqs.iter().any(|r| r.matches(&newest) || r.matches(&first))
    };
    let mut majors = available.to_vec();
    majors.sort_unstable();
    majors.into_iter().rev().find(|m| satisfied(*m)).or_else(|| {
        let digits: String = range
            .chars()
            .skip_while(|c| !c.is_ascii_digit())
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    })
}

/// npm joins comparators with spaces (`>= 18 <21`), the semver crate with commas.
fn npm_to_cargo_range(range: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut pending = String::new();
    for word in range.split_whitespace() {
        if word.chars().all(|c| matches!(c, '<' | '>' | '=' | '~' | '^')) {
            pending.push_str(word);
        } else {
            parts.push(format!("{pending}{}", word.trim_start_matches('v')));
            pending.clear();
        }
    }
    if parts.is_empty() {
        return "*".into();
    }
    parts.join(", ")
}

/// The app name: `explicit` if given (it must be a DNS label), else from
/// package.json's name, else from the folder's name.
pub fn app_name(project: &Project, explicit: Option<&str>) -> Result<String, CliError> {
    match explicit {
        Some(a) if aether_crds::validation::is_dns_label(a) => Ok(a.to_string()),
        Some(a) => Err(CliError::BadAppName(a.to_string())),
        None => {
            let name = project.package_json["name"].as_str().unwrap_or_default();
            let dir_name = project
                .dir()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            app_name_from(name)
                .or_else(|| app_name_from(&dir_name))
                .ok_or_else(|| CliError::BadAppName(name.to_string()))
        }
    }
}

/// The app a command acts on (`status`, `scale`, `logs`, `delete`): `--app`, else the
/// app `aether push` deploys from the current folder.
pub fn target_app(explicit: Option<&str>) -> Result<String, CliError> {
    if let Some(app) = explicit {
        return match aether_crds::validation::is_dns_label(app) {
            true => Ok(app.to_string()),
            false => Err(CliError::BadAppName(app.to_string())),
        };
    }
    let cwd = std::env::current_dir().map_err(CliError::io("reading the current folder"))?;
    match detect(&cwd, None, true) {
        Ok(project) => app_name(&project, None),
        // No package.json here, or a workspace root: there is no one app to name.
        Err(CliError::NotNodeProject(dir) | CliError::WorkspaceRoot { root: dir, .. }) => {
            Err(CliError::NoApp(dir))
        }
        Err(e) => Err(e),
    }
}

/// A DNS-label app name from package.json's name: `@acme/Web_API` → `web-api`.
pub fn app_name_from(pkg_name: &str) -> Option<String> {
    let base = pkg_name
        .rsplit('/')
        .next()
        .unwrap_or(pkg_name)
        .to_ascii_lowercase();
    let mut name: String = base
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    while name.contains("--") {
        name = name.replace("--", "-");
    }
    let name = name
        .trim_matches(|c: char| c == '-' || c.is_ascii_digit())
        .to_string();
    let name: String = name.chars().take(63).collect();
    let name = name.trim_end_matches('-').to_string();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn start(pkg: Value) -> Option<Vec<String>> {
        start_command(None, &pkg, |f| f == "app.js")
    }

    fn sh(script: &str) -> Option<Vec<String>> {
        Some(vec!["/bin/sh".into(), "-c".into(), script.into()])
    }

    #[test]
    fn a_named_app_must_be_a_dns_label() {
        assert_eq!(target_app(Some("web-2")).unwrap(), "web-2");
        for bad in ["Web", "2web", "web_api", ""] {
            assert!(
                matches!(target_app(Some(bad)), Err(CliError::BadAppName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn plain_node_start_scripts_run_directly() {
        assert_eq!(
            start(json!({"scripts": {"start": "node server.js --port 3"}})).unwrap(),
            ["node", "server.js", "--port", "3"]
        );
    }

    #[test]
    fn any_other_start_script_runs_through_sh() {
        assert_eq!(
            start(json!({"scripts": {"start": "json-server --port ${PORT:-3000} db.json"}})),
            sh("json-server --port ${PORT:-3000} db.json")
        );
        assert_eq!(
            start(json!({"scripts": {"start": "nest start"}})),
            sh("nest start")
        );
        assert_eq!(
            start(json!({"scripts": {"start": "node a.js && node b.js"}})),
            sh("node a.js && node b.js")
        );
        assert_eq!(
            start(json!({"scripts": {"start": "NODE_OPTIONS=--max-old-space-size=200 node a.js"}})),
            sh("NODE_OPTIONS=--max-old-space-size=200 node a.js")
        );
        assert_eq!(
            start(json!({"scripts": {"start": "node server.js", "prestart": "node migrate.js"}})),
            sh("{ node migrate.js; } && { node server.js; }")
        );
    }

    #[test]
    fn package_manager_runs_are_inlined() {
        assert_eq!(
            start(json!({"scripts": {"start": "npm run serve", "serve": "node dist/main.js"}})).unwrap(),
            ["node", "dist/main.js"]
        );
        assert_eq!(
            start(
                json!({"scripts": {"start": "yarn migrate && yarn serve", "migrate": "knex migrate:latest", "serve": "node s.js"}})
            ),
            sh("{ knex migrate:latest; } && { node s.js; }")
        );
        // An unknown script is left for the shell (and refused by check_start).
        assert_eq!(
            start(json!({"scripts": {"start": "pnpm run nope"}})),
            sh("pnpm run nope")
        );
    }

    #[test]
    fn inlined_scripts_keep_their_arguments_and_variables() {
        let scripts = json!({"scripts": {
            "start": "npm run serve -- --port 8080",
            "serve": "node dist/main.js",
        }});
        assert_eq!(
            start(scripts).unwrap(),
            ["node", "dist/main.js", "--port", "8080"]
        );
        assert_eq!(
            start(
                json!({"scripts": {"start": "NODE_ENV=production yarn serve && echo done", "serve": "node s.js"}})
            ),
            sh("( export NODE_ENV=production; node s.js ) && echo done")
        );
        assert_eq!(
            start(json!({"scripts": {"start": "pnpm bg; wait", "bg": "node a.js &"}})),
            sh("{ node a.js & } ; wait")
        );
    }

    #[test]
    fn procfile_web_wins_then_main_then_defaults() {
        let pkg = json!({"scripts": {"start": "node a.js"}, "main": "app.js"});
        assert_eq!(
            start_command(Some("worker: node w.js\nweb: node web.js\n"), &pkg, |_| true).unwrap(),
            ["node", "web.js"]
        );
        assert_eq!(
            start_command(Some("worker: node w.js\n"), &pkg, |_| true).unwrap(),
            ["node", "a.js"]
        );
        assert_eq!(start(json!({"main": "app.js"})).unwrap(), ["node", "app.js"]);
        assert_eq!(start(json!({"main": "missing.js"})), None);
        assert_eq!(
            start_command(None, &json!({}), |f| f == "index.js").unwrap(),
            ["node", "index.js"]
        );
    }

    #[test]
    fn start_commands_are_checked_against_the_artifact() {
        let files = ["dist/index.js", "lib/cli.js", "bin/run"];
        let has_file = |f: &str| files.contains(&f);
        let has_bin = |b: &str| b == "fastify";
        let argv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let check = |a: Vec<String>| check_start(&a, has_file, has_bin);

        assert_eq!(check(argv(&["node", "dist/index.js"])), Ok(()));
        assert_eq!(check(argv(&["node", "dist/index"])), Ok(()));
        assert_eq!(
            check(argv(&["node", "dist/main.js"])),
            Err(Missing::File("dist/main.js".into()))
        );
        assert_eq!(
            check(sh("fastify start -p ${PORT:-3000} app.js").unwrap()),
            Ok(())
        );
        assert_eq!(
            check(sh("PORT=1 nest start").unwrap()),
            Err(Missing::Command("nest".into()))
        );
        assert_eq!(
            check(sh("node -r ./lib/cli.js --enable-source-maps dist/missing.js").unwrap()),
            Err(Missing::File("dist/missing.js".into()))
        );
        assert_eq!(check(sh("echo hi && exec ./bin/run").unwrap()), Ok(()));
        assert_eq!(
            check(sh("node -e 'require(1)' | cat2").unwrap()),
            Err(Missing::Command("cat2".into()))
        );
        // Redirections are not command separators.
        assert_eq!(check(sh("node dist/index.js 2>&1 | fastify").unwrap()), Ok(()));
        assert_eq!(check(sh("node dist/index.js &>/dev/null").unwrap()), Ok(()));
        // `cd` moves where files are looked for; `node .` names no file.
        assert_eq!(check(sh("cd dist && node index.js").unwrap()), Ok(()));
        assert_eq!(
            check(sh("cd dist && node main.js").unwrap()),
            Err(Missing::File("dist/main.js".into()))
        );
        assert_eq!(check(sh("node .").unwrap()), Ok(()));
        assert_eq!(
            check(sh("node --disable-warning DEP0040 dist/index.js").unwrap()),
            Ok(())
        );
        // The shapes start_command writes.
        assert_eq!(
            check(sh("{ node lib/cli.js; } && { node dist/index.js; }").unwrap()),
            Ok(())
        );
        assert_eq!(
            check(sh("( export A=1; node dist/index.js ) && echo ok").unwrap()),
            Ok(())
        );
        // What cannot be read is not refused.
        assert_eq!(check(sh("$CMD --serve").unwrap()), Ok(()));
        assert_eq!(check(sh("node \"$ENTRY\"").unwrap()), Ok(()));
    }

    #[test]
    fn commands_split_outside_quotes() {
        let parts: Vec<String> = split_commands("a 'x && y' && b | c; d")
            .into_iter()
            .map(|(c, s)| format!("[{}]{s}", c.trim()))
            .collect();
        assert_eq!(parts, ["[a 'x && y']&&", "[b]|", "[c];", "[d]"]);
    }

    #[test]
    fn engines_and_names() {
        let major = |range: &str| engines_node_major(&json!({"engines": {"node": range}}), &[18, 20, 22, 24]);
        assert_eq!(major(">=20"), Some(24));
        assert_eq!(major(">=14"), Some(24), "an old floor is no reason to refuse");
        assert_eq!(major("^18.12.0"), Some(18));
        assert_eq!(major("20.x"), Some(20));
        assert_eq!(major(">= 18 <21"), Some(20));
        assert_eq!(major("18 || 20"), Some(20));
        assert_eq!(major("~22.1"), Some(22));
        assert_eq!(
            major("21.x"),
            Some(21),
            "unserved: its own number, to be refused by name"
        );
        assert_eq!(engines_node_major(&json!({}), &[20]), None);
        assert_eq!(app_name_from("@acme/Web_API").as_deref(), Some("web-api"));
        assert_eq!(app_name_from("express-api").as_deref(), Some("express-api"));
        assert_eq!(app_name_from("123").as_deref(), None);
    }

    #[test]
    fn workspace_globs_expand_to_packages() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for p in [
            "apps/web",
            "apps/api",
            "packages/lib",
            "packages/deep/nested",
            "tools/x",
        ] {
            std::fs::create_dir_all(r.join(p)).unwrap();
            std::fs::write(r.join(p).join("package.json"), "{}").unwrap();
        }
        std::fs::create_dir_all(r.join("apps/empty")).unwrap();
        let globs = |g: &[&str]| expand_members(r, &g.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(globs(&["apps/*"]), ["apps/api", "apps/web"]);
        assert_eq!(
            globs(&["apps/*", "packages/**", "!apps/api"]),
            ["apps/web", "packages/deep/nested", "packages/lib"]
        );
        assert_eq!(globs(&["./tools/x"]), ["tools/x"]);
    }

    #[test]
    fn a_workspace_package_is_found_from_its_folder_or_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let write = |p: &str, text: &str| {
            std::fs::create_dir_all(r.join(p).parent().unwrap()).unwrap();
            std::fs::write(r.join(p), text).unwrap();
        };
        write(
            "package.json",
            r#"{"private": true, "workspaces": ["apps/*", "packages/*"]}"#,
        );
        write("package-lock.json", "{}");
        write(
            "apps/web/package.json",
            r#"{"name": "web", "scripts": {"start": "node server.js"}, "dependencies": {"@acme/greeting": "*"}}"#,
        );
        write(
            "packages/greeting/package.json",
            r#"{"name": "@acme/greeting", "dependencies": {"@acme/util": "*"}}"#,
        );
        write("packages/util/package.json", r#"{"name": "@acme/util"}"#);
        write("packages/other/package.json", r#"{"name": "@acme/other"}"#);

        let p = detect(&r.join("apps/web"), None, false).unwrap();
        assert_eq!(p.root, r.canonicalize().unwrap());
        assert_eq!(p.member, "apps/web");
        assert_eq!(p.lockfile, Some(p.root.join("package-lock.json")));
        assert_eq!(
            p.local_packages,
            ["apps/web", "packages/greeting", "packages/util"]
        );
        assert_eq!(app_name(&p, None).unwrap(), "web");

        let by_name = detect(r, Some("web"), false).unwrap();
        assert_eq!(by_name.member, "apps/web");
        assert!(matches!(
            detect(r, None, false),
            Err(CliError::WorkspaceRoot { members, .. }) if members.contains("apps/web")
        ));
        assert!(matches!(
            detect(r, Some("nope"), false),
            Err(CliError::UnknownWorkspace { .. })
        ));
    }

    #[test]
    fn refuses_what_is_not_a_project() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            detect(dir.path(), None, false),
            Err(CliError::NotNodeProject(_))
        ));
        std::fs::write(
            dir.path().join("package.json"),
            r#"{"name":"x","main":"index.js"}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("index.js"), "").unwrap();
        assert!(matches!(
            detect(dir.path(), None, false),
            Err(CliError::NoLockfile(_))
        ));
        assert_eq!(detect(dir.path(), None, true).unwrap().lockfile, None);
        std::fs::write(dir.path().join("pnpm-lock.yaml"), "lockfileVersion: '9.0'\n").unwrap();
        assert_eq!(
            detect(dir.path(), None, false).unwrap().manager,
            PackageManager::Pnpm
        );
        std::fs::write(dir.path().join("package.json"), "{not json").unwrap();
        assert!(matches!(
            detect(dir.path(), None, false),
            Err(CliError::BadPackageJson(_))
        ));
    }
}
