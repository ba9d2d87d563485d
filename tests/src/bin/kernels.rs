//! `detector-kernels`: the kernel matrix (see `tests::kernels`). Fetches Debian's kernels
//! when missing, boots each under qemu with `detector-kernel-check` in its initramfs, runs the
//! same checker on this machine's kernel, prints the table and every reason in full, and
//! writes `<target>/kernels/matrix.json`. Run as root (`cargo xtask kernels` does all of it).
//!
//! `detector-kernels [--kernel NAME]... [--list] [--jobs N] [--guest-timeout SECS]
//! [--check-timeout SECS] [--checker PATH]`
//!
//! The last line on standard output is `kernels: P passed, F failed` (one per row; `cargo
//! xtask test` reads it). The exit status is non-zero when any row failed.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use tests::kernels::{self, HOST, HOST_PROBE_READ, KERNELS, Plan, report};

/// The plan from the command line, or `None` when `--list` printed the kernels.
fn parse_args() -> anyhow::Result<Option<Plan>> {
    let mut plan = Plan::new();
    let mut rows = Vec::new();
    let mut list = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        let seconds = |text: String| -> anyhow::Result<Duration> {
            let secs = text
                .parse()
                .with_context(|| format!("{text}: not a number of seconds"))?;
            Ok(Duration::from_secs(secs))
        };
        match arg.as_str() {
            "--kernel" => {
                let name = value()?;
                if !kernels::is_host_row(&name) && kernels::kernel(&name).is_none() {
                    bail!("unknown kernel {name}: `--list` names them");
                }
                rows.push(name);
            }
            "--list" => list = true,
            "--jobs" => plan.jobs = value()?.parse().context("--jobs: not a number")?,
            "--guest-timeout" => plan.guest_timeout = seconds(value()?)?,
            "--check-timeout" => plan.guest_check_timeout = seconds(value()?)?,
            "--checker" => plan.checker = PathBuf::from(value()?),
            other => bail!("unknown argument {other}"),
        }
    }
    if list {
        for kernel in &KERNELS {
            let state = match kernels::cached(&plan.dir, kernel) {
                Some(image) => format!("cached: {}", image.display()),
                None => "not fetched yet".to_owned(),
            };
            println!(
                "{:<15} {} ({} of {}); {state}",
                kernel.name, kernel.about, kernel.metapackage, kernel.suite
            );
        }
        println!("{HOST:<15} this machine's own kernel, the checker run directly");
        println!("{HOST_PROBE_READ:<15} the same with the probe-read build of the programs");
        return Ok(None);
    }
    if !rows.is_empty() {
        plan.rows = rows;
    }
    Ok(Some(plan))
}

fn main() -> ExitCode {
    let plan = match parse_args() {
        Ok(Some(plan)) => plan,
        Ok(None) => return ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("detector-kernels: {err:#}");
            return ExitCode::from(2);
        }
    };
    let matrix = match kernels::run(&plan) {
        Ok(matrix) => matrix,
        Err(err) => {
            eprintln!("detector-kernels: {err:#}");
            println!("kernels: 0 passed, {} failed", plan.rows.len());
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report::render(&matrix));
    println!("(whole result: {})", plan.dir.join("matrix.json").display());
    let (passed, failed) = matrix.counts();
    println!("kernels: {passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
