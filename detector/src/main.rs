//! `detector`: the command line of the daemon.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use detector::config::{Config, OutputFormat, Watch, env};

mod contain_cli;
mod evidence_cli;

/// eBPF runtime detector for Kubernetes nodes.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load the sensors and stream events, alerts and verdicts (needs root): JSON lines, or
    /// lines for people on a terminal. With no cluster configured this is the standalone mode.
    Run {
        /// Configuration file (YAML); defaults apply without one.
        #[arg(long, short, env = "DETECTOR_CONFIG")]
        config: Option<PathBuf>,
        /// Write events here instead of the configured output (`-` for standard output).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Override the output format: `auto` is `pretty` for standard output on a terminal,
        /// else `json`.
        #[arg(long, value_enum)]
        format: Option<FormatArg>,
        /// In the pretty format, print every event too (one compact line each).
        #[arg(long)]
        events: bool,
        /// Override which cgroups are watched.
        #[arg(long, value_enum)]
        watch: Option<WatchArg>,
        /// Override the write-open repeat-suppression window (0 reports every write-open).
        #[arg(long)]
        write_dedup_window_ms: Option<u64>,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Evidence capture and verification.
    Evidence {
        #[command(subcommand)]
        command: evidence_cli::EvidenceCommand,
    },
    /// Rule commands.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Score recorded events (JSON lines, `-` for standard input) and print alerts and verdicts.
    Replay(detector::score::replay::ReplayArgs),
    /// List the containment incidents of the journal with each step's outcome.
    Incidents {
        #[command(flatten)]
        journal: contain_cli::JournalArgs,
        /// One JSON object per incident.
        #[arg(long)]
        json: bool,
    },
    /// Undo an incident's containment (the running daemon lifts the kernel block).
    Release {
        /// The incident id.
        incident: String,
        #[command(flatten)]
        journal: contain_cli::JournalArgs,
    },
    /// Approve a proposed incident: the running daemon runs its playbook.
    Approve {
        /// The incident id.
        incident: String,
        #[command(flatten)]
        journal: contain_cli::JournalArgs,
    },
    /// Confirm an incident: it is not released at its mode's expiry.
    Confirm {
        /// The incident id.
        incident: String,
        #[command(flatten)]
        journal: contain_cli::JournalArgs,
    },
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// Validate the rules of a directory (the embedded defaults without one); every problem is
    /// printed with its file and location.
    Check {
        /// The directory of *.yaml rule files.
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file with the `DETECTOR_` environment overrides applied and
    /// print every problem with its location (a key or a variable).
    Check {
        /// The file; the defaults without one.
        #[arg(env = env::CONFIG_VAR)]
        file: Option<PathBuf>,
    },
    /// Print the default configuration as YAML.
    Default,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    Json,
    Pretty,
    Auto,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum WatchArg {
    All,
    Containers,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            // An invalid DETECTOR_LOG is reported by the configuration check.
            tracing_subscriber::EnvFilter::try_from_env(env::LOG_VAR)
                .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            config,
            output,
            format,
            events,
            watch,
            write_dedup_window_ms,
        } => (|| {
            let mut config = Config::load_with_env(config.as_deref(), env::process_vars())?;
            if let Some(output) = output {
                config.output.path = output;
            }
            if let Some(format) = format {
                config.output.format = match format {
                    FormatArg::Json => OutputFormat::Json,
                    FormatArg::Pretty => OutputFormat::Pretty,
                    FormatArg::Auto => OutputFormat::Auto,
                };
            }
            if events {
                config.output.events = true;
            }
            if let Some(watch) = watch {
                config.sensors.watch = match watch {
                    WatchArg::All => Watch::All,
                    WatchArg::Containers => Watch::Containers,
                };
            }
            if let Some(window) = write_dedup_window_ms {
                config.sensors.write_dedup_window_ms = window;
            }
            // Before any thread starts: the allocator's arenas are set per process.
            detector::daemon::limit_allocator_arenas();
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("cannot start the async runtime")?
                .block_on(detector::daemon::run(config))
                .map_err(Into::into)
        })(),
        Command::Config { command } => match command {
            ConfigCommand::Check { file } => {
                Config::load_with_env(file.as_deref(), env::process_vars())
                    .map(|_| config_ok(file.as_deref()))
                    .map_err(Into::into)
            }
            ConfigCommand::Default => serde_yaml_ng::to_string(&Config::default())
                .map(|text| print!("{text}"))
                .map_err(Into::into),
        },
        Command::Evidence { command } => evidence_cli::run(command),
        Command::Rules {
            command: RulesCommand::Check { dir },
        } => detector::rules::check(dir.as_deref())
            .map(|summary| println!("{summary}"))
            .map_err(Into::into),
        Command::Replay(args) => detector::score::replay::run(&args)
            .map(|summary| eprintln!("replay: {summary}"))
            .map_err(Into::into),
        Command::Incidents { journal, json } => contain_cli::incidents(&journal, json),
        Command::Release { incident, journal } => contain_cli::release(&journal, &incident),
        Command::Approve { incident, journal } => contain_cli::approve(&journal, &incident),
        Command::Confirm { incident, journal } => contain_cli::confirm(&journal, &incident),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Prints that the configuration is usable, and which variables changed it.
fn config_ok(file: Option<&std::path::Path>) {
    let name = file.map_or_else(|| "(defaults)".into(), |f| f.display().to_string());
    let overrides = env::overrides(env::process_vars()).unwrap_or_default();
    if overrides.is_empty() {
        println!("{name}: ok");
    } else {
        let set: Vec<_> = overrides
            .iter()
            .map(|o| format!("{} ({})", o.variable, o.key()))
            .collect();
        println!("{name}: ok (from the environment: {})", set.join(", "));
    }
}

/// The error and its sources, each source shown once even when a message already embeds it.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}
