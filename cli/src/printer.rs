//! Owns stdout and stderr: data goes to stdout, messages and progress to stderr.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::args::OutputFormat;
use crate::pack::{Phase, Reporter};

#[derive(Debug)]
pub struct Printer {
    pub format: OutputFormat,
    quiet: bool,
    spinner: Mutex<Option<ProgressBar>>,
}

impl Printer {
    pub fn new(format: OutputFormat, quiet: bool) -> Self {
        Self {
            format,
            quiet,
            spinner: Mutex::new(None),
        }
    }

    fn chatty(&self) -> bool {
        !self.quiet && self.format == OutputFormat::Human
    }

    /// A human message on stderr (suppressed by --quiet and -o json).
    pub fn info(&self, msg: impl AsRef<str>) {
        if self.chatty() {
            eprintln!("{}", msg.as_ref());
        }
    }

    /// A warning on stderr, shown unless --quiet.
    pub fn warn(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("warning: {}", msg.as_ref());
        }
    }

    /// Data on stdout. A closed pipe (`aether pack | head -1`) is not an error.
    pub fn data(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
    }

    pub fn json(&self, value: &impl serde::Serialize) {
        self.data(&serde_json::to_string_pretty(value).expect("output serialises"));
    }
}

impl Reporter for Printer {
    fn started(&self, phase: Phase) {
        if !self.chatty() {
            return;
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"));
        bar.set_message(phase.label());
        bar.enable_steady_tick(Duration::from_millis(100));
        *self.spinner.lock().expect("spinner lock") = Some(bar);
    }

    fn finished(&self, phase: Phase, detail: &str) {
        if let Some(bar) = self.spinner.lock().expect("spinner lock").take() {
            let secs = bar.elapsed().as_secs_f64();
            bar.finish_and_clear();
            eprintln!("  {:<36} {detail} ({secs:.1}s)", phase.label());
        }
    }
}
