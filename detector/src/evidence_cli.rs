//! `detector evidence`: the command line of [`detector::evidence`]; the logic lives there.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Subcommand;
use detector::{
    config::Config,
    evidence::{
        CaptureRequest, Target, bundle, capture,
        signing::{self, SignatureCheck, Trust},
    },
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
    /// Re-hash a bundle against its manifest and check its signature; exits non-zero on any
    /// mismatch.
    Verify {
        /// The bundle directory.
        bundle: PathBuf,
        /// The public key (PEM, as `keygen` or `openssl pkey -pubout` write it) the bundle
        /// must be signed by. Without it the signature is checked only against the key the
        /// manifest names, which is no proof of origin.
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Create an Ed25519 key pair for signing bundles: `ed25519.pem` (private, PKCS#8, mode
    /// 0600) and `ed25519.pub.pem` (public). Existing files are never replaced.
    Keygen {
        /// Directory that receives the two files (created if missing).
        #[arg(long)]
        out: PathBuf,
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
            for reason in &outcome.manifest.incomplete_reasons {
                println!("incomplete: {reason}");
            }
            match &outcome.manifest.trust {
                Trust::Signed { key_id, .. } => println!("signed by key {key_id}"),
                Trust::Unsigned { reason } => println!("unsigned: {reason}"),
            }
            if let Some(upload) = &outcome.upload {
                println!(
                    "uploaded: {} objects, {} bytes to {}",
                    upload.objects, upload.bytes, upload.location
                );
            }
            Ok(())
        }
        EvidenceCommand::Verify { bundle: dir, key } => verify(&dir, key.as_deref()),
        EvidenceCommand::Keygen { out } => {
            let files = signing::generate(&out)?;
            println!("private key: {} (mode 0600)", files.private.display());
            println!("public key: {}", files.public.display());
            println!("key id: {}", files.key_id);
            Ok(())
        }
    }
}

/// `detector evidence verify`: prints every problem and what the signature proves.
fn verify(dir: &Path, key: Option<&Path>) -> anyhow::Result<()> {
    let pinned = key.map(signing::load_verifying_key).transpose()?;
    let report = bundle::verify(dir, pinned.as_ref())?;
    for problem in &report.problems {
        println!("MISMATCH {problem}");
    }
    let ok = report.ok();
    match &report.signature {
        SignatureCheck::Signed {
            key_id,
            pinned: true,
        } if ok => {
            println!("signature: valid, by the given key {key_id}");
        }
        SignatureCheck::Signed {
            key_id,
            pinned: false,
        } if ok => println!(
            "signature: valid under the key the manifest names, {key_id}; that key was not \
             pinned (no --key): this shows the bundle is consistent, not who made it"
        ),
        SignatureCheck::Signed { .. } => {}
        SignatureCheck::Unsigned(reason) => println!(
            "signature: unsigned ({reason}); the hashes find damage, but anyone who can write \
             the bundle can recompute them"
        ),
    }
    if !ok {
        bail!("{}: {} mismatches", dir.display(), report.problems.len());
    }
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
}
