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

    /// Ask on stderr and read the answer from stdin (callers ask only a terminal).
    pub fn ask(&self, question: &str) -> std::io::Result<String> {
        let mut err = std::io::stderr().lock();
        write!(err, "{question} ")?;
        err.flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        Ok(answer)
    }

    /// Data on stdout. A closed pipe (`aether pack | head -1`) is not an error.
    pub fn data(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
    }

    /// A result on stdout, as JSON or YAML by `-o` (JSON when asked for human output).
    pub fn value(&self, value: &impl serde::Serialize) {
        let text = match self.format {
            OutputFormat::Yaml => serde_yaml::to_string(value).expect("output serialises"),
            OutputFormat::Json | OutputFormat::Human => {
                serde_json::to_string_pretty(value).expect("output serialises")
            }
        };
        self.data(text.trim_end());
    }
}

/// Columns padded to their widest cell, three spaces apart, as `kubectl get` prints.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let padded: Vec<String> = cells
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        padded.join("   ").trim_end().to_string() + "\n"
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out += &line(&mut row.iter().map(String::as_str));
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_aligns_columns_to_the_widest_cell() {
        let rows = vec![
            vec!["web".to_string(), "True".into(), "http://10.96.0.12".into()],
            vec!["a-longer-name".to_string(), "False".into(), "-".into()],
        ];
        assert_eq!(
            table(&["NAME", "READY", "URL"], &rows),
            "NAME            READY   URL\n\
             web             True    http://10.96.0.12\n\
             a-longer-name   False   -\n"
        );
        assert_eq!(table(&["NAME", "AGE"], &[]), "NAME   AGE\n");
    }
}
