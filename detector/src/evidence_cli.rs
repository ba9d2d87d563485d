//! `detector evidence`: the command line of [`detector::evidence`]; the logic lives there.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use detector::{
    config::Config,
    evidence::{CaptureRequest, Target, bundle, capture},
};

/// `detector evidence ...`
#[derive(Debug, Subcommand)]
pub enum EvidenceCommand {
    /// Capture evidence of a container or cgroup now (needs root), from the node side.
    Capture {
        /// Container id or name, as the Docker socket knows it.
        #[arg(long, conflicts_with = "cgroup", required_unless_present = "cgroup")]
        container: Option<String>,
        /// cgroup2 directory: absolute, or relative to the cgroup2 mount.
        #[arg(long)]
        cgroup: Option<PathBuf>,
        /// Incident id (the bundle's directory name); `manual-<unix time>` by default.
        #[arg(long)]
        incident: Option<String>,
        /// Directory that receives the bundle (overrides `evidence.out_dir`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Configuration file (YAML); defaults apply without one.
        #[arg(long, short, env = "DETECTOR_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Re-hash a bundle against its manifest; exits non-zero on any mismatch.
    Verify {
        /// The bundle directory.
        bundle: PathBuf,
    },
}

/// Runs the command; a failed verification is an error.
pub fn run(command: EvidenceCommand) -> anyhow::Result<()> {
    match command {
        EvidenceCommand::Capture {
            container,
            cgroup,
            incident,
            out,
            config,
        } => {
            let config =
                Config::load_with_env(config.as_deref(), detector::config::env::process_vars())?;
            let out = out.unwrap_or_else(|| config.evidence.out_dir.clone());
            let target = match (container, cgroup) {
                (Some(id), _) => Target::Container(id),
                (None, Some(path)) => Target::Cgroup(path),
                (None, None) => bail!("give --container or --cgroup"),
            };
            let request = CaptureRequest {
                target,
                incident,
                recent_events: None,
            };
            let outcome = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?
                .block_on(capture(&config.evidence, &out, request))?;
            println!("bundle: {}", outcome.dir.display());
            println!(
                "artifacts: {}, complete: {}, took {} ms",
                outcome.manifest.artifacts.len(),
                outcome.manifest.complete,
                outcome.elapsed.as_millis()
            );
            for missing in &outcome.manifest.not_captured {
                println!("not captured: {}: {}", missing.artifact, missing.reason);
            }
            for reason in &outcome.manifest.incomplete_reasons {
                println!("partial: {reason}");
            }
            if let Some(upload) = &outcome.upload {
                println!(
                    "uploaded: {} objects, {} bytes to {}",
                    upload.objects, upload.bytes, upload.location
                );
            }
            Ok(())
        }
        EvidenceCommand::Verify { bundle: dir } => {
            let report = bundle::verify(&dir)?;
            for problem in &report.problems {
                println!("MISMATCH {problem}");
            }
            if report.ok() {
                println!(
                    "{}: ok, {} artifacts verified{}",
                    dir.display(),
                    report.checked,
                    if report.complete {
                        ""
                    } else {
                        " (the capture itself is recorded as partial)"
                    }
                );
                Ok(())
            } else {
                bail!("{}: {} mismatches", dir.display(), report.problems.len())
            }
        }
    }
}
