//! Logging: tracing to stderr, human-readable or JSON (`--log-format json`), filtered by RUST_LOG.

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// Logs of long-running commands (`run`, `sim`).
pub const SERVICE_FILTER: &str = "info,kube=warn,hyper=warn,tower=warn";
/// Logs of one-shot commands (`plan`, `apply`, `crd`), which print their own output.
pub const COMMAND_FILTER: &str = "warn";

/// `--log-level`: the level of the operator's own logs; its libraries stay at warn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The filter for this level.
    pub fn filter(self) -> String {
        let level = self.to_possible_value().expect("no skipped variants");
        format!("{},kube=warn,hyper=warn,tower=warn", level.get_name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Install the global subscriber once; a second call (tests) is a no-op. `default_filter`
/// applies when RUST_LOG is unset: the controller and simulator log at info, the file mode
/// prints its own progress and keeps logs to warnings.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: log files and collectors get plain text.
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
