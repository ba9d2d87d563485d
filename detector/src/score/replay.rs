//! `detector replay FILE.jsonl`: recorded events through the same [`Engine`] as the live
//! stream, records out as JSON lines. Lines that are not events are reported with their line
//! number, counted and skipped.

use std::{
    fs::File,
    io::{BufRead, BufReader, BufWriter, Write},
    path::PathBuf,
};

use super::{Engine, Record};
use crate::{
    config::{Config, ConfigError},
    event::Event,
    rules::{RuleSet, RulesError},
};

/// Arguments of `detector replay`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Recorded events, one JSON object per line (`-` for standard input).
    pub file: PathBuf,
    /// The daemon's configuration file; its `rules` and `score` sections apply, as they do to
    /// `detector run`. Defaults without one.
    #[arg(long, short, env = "DETECTOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory of rule files replacing the configured ones.
    #[arg(long)]
    pub rules: Option<PathBuf>,
}

/// Failure of `detector replay`.
#[derive(Debug, thiserror::Error)]
pub enum ReplayCommandError {
    /// The rules did not load.
    #[error(transparent)]
    Rules(#[from] RulesError),
    /// The configuration did not load.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The input file could not be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The replay itself failed.
    #[error(transparent)]
    Replay(#[from] ReplayError),
}

/// Runs `detector replay`: records to standard output, bad lines to standard error.
pub fn run(args: &ReplayArgs) -> Result<ReplaySummary, ReplayCommandError> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let rules = RuleSet::load(args.rules.as_deref().or(config.rules.dir.as_deref()))?;
    let mut engine = Engine::new(rules, config.score);
    let out = BufWriter::new(std::io::stdout().lock());
    let diagnostics = std::io::stderr().lock();
    let summary = if args.file.as_os_str() == "-" {
        replay(&mut engine, std::io::stdin().lock(), out, diagnostics)?
    } else {
        let file = File::open(&args.file).map_err(|source| ReplayCommandError::Open {
            path: args.file.clone(),
            source,
        })?;
        replay(&mut engine, BufReader::new(file), out, diagnostics)?
    };
    Ok(summary)
}

/// Failure of a replay (bad lines are not failures: they are counted).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The input could not be read.
    #[error("cannot read line {line}: {source}")]
    Read {
        /// Line number, from 1.
        line: u64,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A record or a diagnostic could not be written.
    #[error("cannot write: {0}")]
    Write(#[source] std::io::Error),
}

/// What a replay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Lines read (blank ones included).
    pub lines: u64,
    /// Events scored.
    pub events: u64,
    /// Lines that were not events, skipped.
    pub bad_lines: u64,
    /// Alerts written.
    pub alerts: u64,
    /// Verdicts written.
    pub verdicts: u64,
}

impl std::fmt::Display for ReplaySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} lines, {} events, {} bad lines skipped, {} alerts, {} verdicts",
            self.lines, self.events, self.bad_lines, self.alerts, self.verdicts
        )
    }
}

/// Scores every event of `input` with `engine`, writing records to `out` and one line per
/// bad input line to `diagnostics`.
pub fn replay(
    engine: &mut Engine,
    input: impl BufRead,
    mut out: impl Write,
    mut diagnostics: impl Write,
) -> Result<ReplaySummary, ReplayError> {
    let mut summary = ReplaySummary::default();
    for line in input.lines() {
        summary.lines += 1;
        let line = line.map_err(|source| ReplayError::Read {
            line: summary.lines,
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let event: Event = match serde_json::from_str(&line) {
            Ok(event) => event,
            Err(err) => {
                summary.bad_lines += 1;
                writeln!(diagnostics, "line {}: skipped: {err}", summary.lines)
                    .map_err(ReplayError::Write)?;
                continue;
            }
        };
        summary.events += 1;
        for record in engine.process(&event) {
            match record {
                Record::Alert(_) => summary.alerts += 1,
                Record::Verdict(_) => summary.verdicts += 1,
            }
            serde_json::to_writer(&mut out, &record)
                .map_err(|err| ReplayError::Write(err.into()))?;
            out.write_all(b"\n").map_err(ReplayError::Write)?;
        }
    }
    out.flush().map_err(ReplayError::Write)?;
    Ok(summary)
}
