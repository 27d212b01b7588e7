//! `aether-runtime supervise -- ARGV...`: the app's parent inside the container.
//! It runs ARGV as `npm start` would: node_modules/.bin of the working directory
//! and of each folder above it first on PATH, so a start script such as
//! `fastify start -p ${PORT:-3000}` finds its CLI. Signals the kubelet sends (TERM
//! on shutdown) reach the app; for a `/bin/sh -c` start script they reach its
//! whole process group, since sh does not pass them on, and supervise stays until
//! every process of the group has exited, so a server behind the shell can drain
//! (as PID 1, its exit would kill them all). The container exits with the app's
//! exit code, or 128 + the signal that killed it, as a shell would.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitCode;

use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::signal::unix::{SignalKind, signal};

use crate::health::HealthArgs;

/// Signals passed on to the app.
const FORWARDED: [(SignalKind, Signal); 6] = [
    (SignalKind::terminate(), Signal::SIGTERM),
    (SignalKind::interrupt(), Signal::SIGINT),
    (SignalKind::hangup(), Signal::SIGHUP),
    (SignalKind::quit(), Signal::SIGQUIT),
    (SignalKind::user_defined1(), Signal::SIGUSR1),
    (SignalKind::user_defined2(), Signal::SIGUSR2),
];

pub async fn run(
    code: Option<&Path>,
    workdir: Option<&Path>,
    health: &HealthArgs,
    argv: &[String],
) -> ExitCode {
    let dev_hot = std::env::var(crate::hot::DEV_HOT).is_ok_and(|v| v == "true");
    if !dev_hot {
        // Answering from the start: while the code is fetched, the app is starting.
        if let Err(e) = crate::health::start(health, crate::health::Target::app(health)) {
            eprintln!("aether-runtime: {e}");
            return ExitCode::from(127);
        }
    }
    if let Some(root) = code
        && let Err(code) = wait_for_code(root).await
    {
        return ExitCode::from(code);
    }
    if let Some(dir) = workdir
        && let Err(e) = std::env::set_current_dir(dir)
    {
        eprintln!("aether-runtime: the app's directory {}: {e}", dir.display());
        return ExitCode::from(127);
    }
    let result = if dev_hot {
        // The volume the fetch container filled: this binary runs from its `bin/`.
        let root = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("/aether"));
        match crate::hot::HotConfig::from_env(&root) {
            Ok(config) => crate::hot::run(argv, config, health).await,
            Err(e) => Err(std::io::Error::other(format!("dev-hot mode: {e}"))),
        }
    } else {
        supervise(argv).await
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("aether-runtime: {e}");
            // 127: what a shell reports for a command it cannot run.
            ExitCode::from(127)
        }
    }
}

/// Wait until the fetch container marked the code under `root` ready. Beside the
/// app, it may still be downloading when the kubelet starts this container; the
/// app container's startup probe bounds the wait. Err: a signal came first (the pod
/// is going away), with the exit code to report.
pub async fn wait_for_code(root: &Path) -> Result<(), u8> {
    let ready = root.join(crate::fetch::READY_FILE);
    if ready.exists() {
        return Ok(());
    }
    eprintln!("aether-runtime: waiting for the fetch container to verify and extract the app");
    let mut streams = signal_streams().map_err(|e| {
        eprintln!("aether-runtime: {e}");
        127u8
    })?;
    while !ready.exists() {
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_millis(10)) => {}
            sig = next_signal(&mut streams) => return Err(128u8.saturating_add(sig as u8)),
        }
    }
    Ok(())
}

/// Set (to `true`) by the operator when a cluster admin's policy forbids replacing
/// the artifact's entrypoint: the app then gets no variable that makes Node or the
/// loader run other code first.
pub const ENTRYPOINT_LOCKED: &str = "AETHER_ENTRYPOINT_LOCKED";

/// Variables that run code before the entrypoint: Node's preloads and module path,
/// and the dynamic loader's.
pub fn runs_code(name: &str) -> bool {
    matches!(name, "NODE_OPTIONS" | "NODE_PATH" | "NODE_REPL_EXTERNAL_MODULE") || name.starts_with("LD_")
}

/// Run `argv` to completion, forwarding signals; the exit code to report.
pub async fn supervise(argv: &[String]) -> std::io::Result<u8> {
    // Listen before spawning, so a signal that arrives at once is not lost.
    let mut streams = signal_streams()?;
    let (mut command, group) = app_command(argv)?;
    let program = &argv[0];
    let mut child = command
        .spawn()
        .map_err(|e| std::io::Error::new(e.kind(), format!("starting {program}: {e}")))?;
    let pid = child.id().map(|id| Pid::from_raw(id as i32));
    let deliver = |sig: Signal| {
        if let Some(pid) = pid {
            // The process may have exited meanwhile; that is reported elsewhere.
            let _ = if group { killpg(pid, sig) } else { kill(pid, sig) };
        }
    };
    let status = loop {
        let received = next_signal(&mut streams);
        tokio::select! {
            status = child.wait() => break status?,
            sig = received => deliver(sig),
        }
    };
    if let (true, Some(pgid)) = (group, pid) {
        // The shell is gone; the processes it started may still be finishing.
        loop {
            while matches!(waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)), Ok(s) if s.pid().is_some())
            {
            }
            if killpg(pgid, None::<Signal>).is_err() {
                break;
            }
            let received = next_signal(&mut streams);
            tokio::select! {
                () = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
                sig = received => deliver(sig),
            }
        }
    }
    Ok(exit_code(status))
}

/// What a shell reports for a child's status: its exit code, or 128 + the signal.
pub fn exit_code(status: std::process::ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128u8.saturating_add(sig as u8),
        (None, None) => 1,
    }
}

/// One stream per forwarded signal.
pub fn signal_streams() -> std::io::Result<Vec<(tokio::signal::unix::Signal, Signal)>> {
    FORWARDED
        .into_iter()
        .map(|(kind, sig)| Ok((signal(kind)?, sig)))
        .collect()
}

/// The app's command, as `npm start` would run it, and whether it is a shell script
/// whose processes form a group of their own, signalled together (any other program,
/// a Node cluster primary say, gets signals alone, as from a container runtime).
pub fn app_command(argv: &[String]) -> std::io::Result<(Command, bool)> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| std::io::Error::other("nothing to run"))?;
    let cwd = std::env::current_dir()?;
    let path = search_path(&cwd, std::env::var_os("PATH").as_deref());
    let group = program == "/bin/sh" || program == "sh";
    let mut command = Command::new(program);
    command.args(args).env("PATH", path);
    if std::env::var(ENTRYPOINT_LOCKED).is_ok_and(|v| v == "true") {
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(runs_code) {
                command.env_remove(&name);
            }
        }
    }
    if group {
        command.process_group(0);
    }
    Ok((command, group))
}

/// The next signal on any of the streams.
pub async fn next_signal(streams: &mut [(tokio::signal::unix::Signal, Signal)]) -> Signal {
    std::future::poll_fn(|cx| {
        for (stream, sig) in streams.iter_mut() {
            if stream.poll_recv(cx).is_ready() {
                return std::task::Poll::Ready(*sig);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// PATH for the app: `node_modules/.bin` of `cwd` and of every folder above it,
/// nearest first, then the inherited PATH (or the usual default).
pub fn search_path(cwd: &Path, inherited: Option<&std::ffi::OsStr>) -> std::ffi::OsString {
    let bins = cwd.ancestors().map(|d| d.join("node_modules").join(".bin"));
    let inherited = inherited
        .filter(|p| !p.is_empty())
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".as_ref());
    let rest = std::env::split_paths(inherited).collect::<Vec<PathBuf>>();
    std::env::join_paths(bins.chain(rest)).unwrap_or_else(|_| inherited.to_os_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_modules_bins_come_first_nearest_first() {
        let path = search_path(Path::new("/aether/app/apps/web"), Some("/usr/bin:/bin".as_ref()));
        assert_eq!(
            path.to_str().unwrap(),
            "/aether/app/apps/web/node_modules/.bin:/aether/app/apps/node_modules/.bin:\
             /aether/app/node_modules/.bin:/aether/node_modules/.bin:/node_modules/.bin:/usr/bin:/bin"
        );
        assert!(
            search_path(Path::new("/a"), None)
                .to_str()
                .unwrap()
                .ends_with(":/usr/bin:/sbin:/bin")
        );
    }
}
