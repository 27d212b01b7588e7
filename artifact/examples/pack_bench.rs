//! Packing and unpacking speed against the shell pipelines, on the same tree:
//!   pack:   aether pack_layer (tar + zstd -3 multi-threaded + sha256 of output and files)
//!           vs `tar -cf - node_modules | zstd -T0 -3`
//!   unpack: aether verify (sha256) + hardened unpack
//!           vs `zstd -dc | tar -x`
//! Usage: cargo run --release -p aether-artifact --example pack_bench -- DIR [RUNS]
//! where DIR holds an installed node_modules (`make bench` prepares one).
//! Built for musl it measures what pods run, so with the runtime's allocator.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use aether_artifact::digest;
use aether_artifact::layer::{PackOptions, collect, pack_layer};
use aether_artifact::unpack::{Limits, Unpacker};

#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

/// "min–max" of the runs, in ms: the machine may be shared, so the spread says how
/// far to trust the medians.
fn spread(v: &[Duration]) -> String {
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    let min = v.iter().min().map_or(0.0, ms);
    let max = v.iter().max().map_or(0.0, ms);
    format!("{min:.0}–{max:.0}ms")
}

fn sh(script: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(script)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "failed: {script}");
}

fn fresh_dir(base: &Path, name: &str) -> PathBuf {
    let d = base.join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().expect("usage: pack_bench DIR [RUNS]"));
    let runs: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(5);
    assert!(
        dir.join("node_modules").is_dir(),
        "{} has no node_modules",
        dir.display()
    );
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let dir_s = dir.display();

    let paths = collect(&dir, &mut |p, _| {
        p == "node_modules" || p.starts_with("node_modules/")
    })
    .expect("collect");
    let ours = w.join("aether.tar.zst");
    let theirs = w.join("shell.tar.zst");
    let mut options = PackOptions::default();
    if let Some(t) = std::env::var("BENCH_THREADS").ok().and_then(|t| t.parse().ok()) {
        options.threads = t;
    }
    // Extract where an init container would: a folder on a given filesystem.
    let w_owned = std::env::var("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| w.to_path_buf());
    let w = w_owned.as_path();

    let (mut pack_a, mut pack_s, mut unpack_a, mut unpack_s) = (vec![], vec![], vec![], vec![]);
    let mut stats = None;
    for run in 0..=runs {
        let t = Instant::now();
        let out = std::fs::File::create(&ours).expect("create");
        stats = Some(pack_layer(&dir, &paths, out, &options).expect("pack"));
        let a = t.elapsed();

        let t = Instant::now();
        sh(&format!(
            "tar -C '{dir_s}' -cf - node_modules | zstd -T0 -3 -q -f -o '{}'",
            theirs.display()
        ));
        let s = t.elapsed();

        let s_stats = stats.as_ref().expect("stats");
        let dest = fresh_dir(w, "dest-aether");
        let t = Instant::now();
        digest::verify(
            std::fs::File::open(&ours).expect("open"),
            &s_stats.digest,
            s_stats.size,
        )
        .expect("verify");
        let mut u = Unpacker::new(&dest, Limits::default()).expect("unpacker");
        u.unpack_layer(std::io::BufReader::new(std::fs::File::open(&ours).expect("open")))
            .expect("unpack");
        u.finish().expect("finish");
        let ua = t.elapsed();

        let dest = fresh_dir(w, "dest-shell");
        let t = Instant::now();
        sh(&format!(
            "zstd -dc '{}' | tar -C '{}' -xf -",
            theirs.display(),
            dest.display()
        ));
        let us = t.elapsed();

        if run > 0 {
            // Run 0 warms the page cache for both sides.
            pack_a.push(a);
            pack_s.push(s);
            unpack_a.push(ua);
            unpack_s.push(us);
        }
    }
    let stats = stats.expect("stats");
    let shell_size = std::fs::metadata(&theirs).expect("meta").len();
    let (pa, ps, ua, us) = (
        median(&pack_a),
        median(&pack_s),
        median(&unpack_a),
        median(&unpack_s),
    );
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "workload: {} entries, {:.1} MiB of file content ({} runs, medians, warm cache)",
        stats.entries,
        stats.content_bytes as f64 / 1048576.0,
        runs
    );
    println!("{:<40} {:>9} {:>11} {:>13}", "", "time", "output", "runs");
    println!(
        "{:<40} {:>7.0}ms {:>8.2}MiB {:>13}",
        "aether pack (tar+zstd -3 MT+sha256)",
        ms(pa),
        stats.size as f64 / 1048576.0,
        spread(&pack_a)
    );
    println!(
        "{:<40} {:>7.0}ms {:>8.2}MiB {:>13}",
        "tar -cf - | zstd -T0 -3",
        ms(ps),
        shell_size as f64 / 1048576.0,
        spread(&pack_s)
    );
    println!(
        "{:<40} {:>7.0}ms {:>11} {:>13}",
        "aether verify + hardened unpack",
        ms(ua),
        "",
        spread(&unpack_a)
    );
    println!(
        "{:<40} {:>7.0}ms {:>11} {:>13}",
        "zstd -dc | tar -x",
        ms(us),
        "",
        spread(&unpack_s)
    );
    println!(
        "pack speed ratio (shell time / aether time): {:.2}x",
        ps.as_secs_f64() / pa.as_secs_f64()
    );
    println!(
        "unpack speed ratio (shell time / aether time): {:.2}x",
        us.as_secs_f64() / ua.as_secs_f64()
    );
}
