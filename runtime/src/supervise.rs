//! `aether-runtime supervise -- ARGV...`: the app's parent inside the container.
//! Signals the kubelet sends (TERM on shutdown) reach the app; the container exits
//! with the app's exit code, or 128 + the signal that killed it, as a shell would.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitCode;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::signal::unix::{SignalKind, signal};

/// Signals passed on to the app.
const FORWARDED: [(SignalKind, Signal); 6] = [
    (SignalKind::terminate(), Signal::SIGTERM),
    (SignalKind::interrupt(), Signal::SIGINT),
    (SignalKind::hangup(), Signal::SIGHUP),
    (SignalKind::quit(), Signal::SIGQUIT),
    (SignalKind::user_defined1(), Signal::SIGUSR1),
    (SignalKind::user_defined2(), Signal::SIGUSR2),
];

pub async fn run(argv: &[String]) -> ExitCode {
    match supervise(argv).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("aether-runtime: {e}");
            // 127: what a shell reports for a command it cannot run.
            ExitCode::from(127)
        }
    }
}

/// Run `argv` to completion, forwarding signals; the exit code to report.
pub async fn supervise(argv: &[String]) -> std::io::Result<u8> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| std::io::Error::other("nothing to run"))?;
    // Listen before spawning, so a signal that arrives at once is not lost.
    let mut streams = Vec::new();
    for (kind, sig) in FORWARDED {
        streams.push((signal(kind)?, sig));
    }
    let mut child = Command::new(program)
        .args(args)
        .spawn()
        .map_err(|e| std::io::Error::new(e.kind(), format!("starting {program}: {e}")))?;
    let pid = child.id().map(|id| Pid::from_raw(id as i32));
    loop {
        let received = next_signal(&mut streams);
        tokio::select! {
            status = child.wait() => {
                let status = status?;
                return Ok(match (status.code(), status.signal()) {
                    (Some(code), _) => code as u8,
                    (None, Some(sig)) => 128u8.saturating_add(sig as u8),
                    (None, None) => 1,
                });
            }
            sig = received => {
                if let Some(pid) = pid {
                    // The child may have exited meanwhile; wait() reports that next.
                    let _ = kill(pid, sig);
                }
            }
        }
    }
}

/// The next signal on any of the streams.
async fn next_signal(streams: &mut [(tokio::signal::unix::Signal, Signal)]) -> Signal {
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
