//! `detector-corpus`: the whole attack and benign corpora (`tests/corpus/`) against the real
//! daemon, on Docker and containerd (as root); prints the reports, Markdown. Run by
//! `cargo xtask bench`; the tests run a CI subset.
//!
//! `detector-corpus [--runtime docker|containerd]... [--attack-only | --benign-only]
//! [--benign-s N] [--restarts N] [--only ID]... [--detector PATH]`; `CORPUS_KEEP=1`
//! keeps the daemons' outputs and journals (the directory is printed).

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use tests::corpus::{self, Plan};

fn main() -> anyhow::Result<()> {
    let mut plan = Plan {
        detector: tests::daemon::binary(),
        runtimes: Vec::new(),
        attacks: Vec::new(),
        attack: true,
        benign: Some(Duration::from_secs(300)),
        restarts: 2,
        work_dir: std::env::temp_dir().join(format!("detector-corpus-{}", std::process::id())),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--runtime" => plan.runtimes.push(value()?),
            "--attack-only" => plan.benign = None,
            "--benign-only" => plan.attack = false,
            "--benign-s" => plan.benign = Some(Duration::from_secs(value()?.parse()?)),
            "--restarts" => plan.restarts = value()?.parse()?,
            "--only" => plan.attacks.push(value()?),
            "--detector" => plan.detector = PathBuf::from(value()?),
            other => bail!("unknown argument {other}"),
        }
    }
    if plan.runtimes.is_empty() {
        plan.runtimes = vec!["docker".into(), "containerd".into()];
    }
    let outcome = corpus::run(&plan);
    if std::env::var_os("CORPUS_KEEP").is_some() {
        eprintln!("kept {}", plan.work_dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&plan.work_dir);
    }
    let outcome = outcome?;
    for report in &outcome.benign {
        println!("{}", report.render());
    }
    if plan.attack {
        println!("{}", corpus::attack_report(&outcome.attacks));
    }
    Ok(())
}
