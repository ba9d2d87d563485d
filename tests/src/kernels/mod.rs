//! The kernel matrix: Debian's distribution kernels booted under qemu, each running
//! `detector-kernel-check` (every sensor and the quarantine, with real processes) in its
//! guest, and the same checker run directly on this machine's own kernel.
//!
//! - [`apt`]: the kernels, fetched through a private apt configuration under
//!   `<target>/kernels/apt/` and kept as `<target>/kernels/<name>/vmlinuz-*` (fetched only
//!   when missing).
//! - [`initramfs`]: the guests' root file system (busybox, bash, the checker, `/init`), a
//!   cpio archive written here.
//! - [`qemu`]: one guest, software-emulated, no network device, with a time limit.
//! - [`report`]: the checker's report line, the rows, the table and `matrix.json`.
//!
//! [`run`] does it all: the kernels first, then this machine's row, then the guests, two at a
//! time by default (each qemu emulates on one thread; the machine has two cores).

use std::{
    collections::VecDeque,
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

pub mod apt;
pub mod initramfs;
pub mod qemu;
pub mod report;

use report::{CheckReport, Matrix, Row};

/// A Debian kernel the matrix boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernel {
    /// The row's name, as `--kernel` takes it.
    pub name: &'static str,
    /// The Debian suite it comes from.
    pub suite: &'static str,
    /// The metapackage whose dependency names the kernel image package.
    pub metapackage: &'static str,
    /// What it is, for people.
    pub about: &'static str,
}

/// The kernels of the matrix, oldest first.
pub const KERNELS: [Kernel; 4] = [
    Kernel {
        name: "bullseye",
        suite: "bullseye",
        metapackage: "linux-image-amd64",
        about: "Debian 11, Linux 5.10",
    },
    Kernel {
        name: "bookworm",
        suite: "bookworm",
        metapackage: "linux-image-amd64",
        about: "Debian 12, Linux 6.1",
    },
    Kernel {
        name: "bookworm-cloud",
        suite: "bookworm",
        metapackage: "linux-image-cloud-amd64",
        about: "Debian 12 cloud flavour, Linux 6.1",
    },
    Kernel {
        name: "trixie",
        suite: "trixie",
        metapackage: "linux-image-amd64",
        about: "Debian 13, Linux 6.12",
    },
];

/// The row of this machine's own kernel (the checker run directly, no guest).
pub const HOST: &str = "host";
/// This machine's own kernel again, with the build of the programs for kernels before 6.2
/// (`probe-read`) instead of the one it would pick: both builds are checked on one kernel.
pub const HOST_PROBE_READ: &str = "host-probe-read";

/// Whether `name` is one of the rows run on this machine.
pub fn is_host_row(name: &str) -> bool {
    name == HOST || name == HOST_PROBE_READ
}

/// What to run and where.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Row names ([`KERNELS`]' and [`HOST`]), in the order to report them.
    pub rows: Vec<String>,
    /// The `detector-kernel-check` binary.
    pub checker: PathBuf,
    /// The cache and output directory (`<target>/kernels`).
    pub dir: PathBuf,
    /// Guests run at once.
    pub jobs: usize,
    /// Wall-clock limit of one guest, boot to power-off.
    pub guest_timeout: Duration,
    /// Each check's limit in a guest (emulated: slower than the machine).
    pub guest_check_timeout: Duration,
    /// Each check's limit on this machine.
    pub host_check_timeout: Duration,
}

impl Plan {
    /// Every row, the defaults, the checker next to this binary and `<target>/kernels`.
    pub fn new() -> Self {
        let mut rows: Vec<String> = KERNELS.iter().map(|k| k.name.to_owned()).collect();
        rows.push(HOST.to_owned());
        rows.push(HOST_PROBE_READ.to_owned());
        Self {
            rows,
            checker: sibling_binary("detector-kernel-check"),
            dir: crate::target_dir().join("kernels"),
            jobs: 2,
            guest_timeout: Duration::from_secs(300),
            guest_check_timeout: Duration::from_secs(20),
            host_check_timeout: Duration::from_secs(10),
        }
    }
}

impl Default for Plan {
    fn default() -> Self {
        Self::new()
    }
}

/// `name` next to the running binary (`target/<profile>/<name>`).
fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.ancestors()
        .skip(1)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// The kernel named `name`.
pub fn kernel(name: &str) -> Option<&'static Kernel> {
    KERNELS.iter().find(|k| k.name == name)
}

/// The cached kernel image of `kernel` under `dir`, if it was fetched.
pub fn cached(dir: &Path, kernel: &Kernel) -> Option<PathBuf> {
    apt::cached_kernel(&dir.join(kernel.name))
}

/// Runs the plan: fetches the kernels it lacks, runs this machine's row, builds the initramfs
/// and boots the guests; writes `matrix.json` in the plan's directory.
pub fn run(plan: &Plan) -> anyhow::Result<Matrix> {
    let started = Instant::now();
    let mut guests = Vec::new();
    for name in &plan.rows {
        if is_host_row(name) {
            continue;
        }
        let known =
            kernel(name).with_context(|| format!("unknown kernel {name}: `--list` names them"))?;
        guests.push(known);
    }
    ensure!(
        plan.checker.is_file(),
        "no checker at {}: build it (cargo build -p tests --bin detector-kernel-check)",
        plan.checker.display()
    );
    fs::create_dir_all(&plan.dir)
        .with_context(|| format!("cannot create {}", plan.dir.display()))?;

    let fetch_started = Instant::now();
    let images = fetch(&plan.dir, &guests)?;
    let download_seconds = fetch_started.elapsed().as_secs_f64();

    let mut rows = Vec::new();
    for name in [HOST, HOST_PROBE_READ] {
        if plan.rows.iter().any(|r| r == name) {
            rows.push(host_row(plan, name));
        }
    }

    let mut initramfs_seconds = 0.0;
    if !guests.is_empty() {
        let built = Instant::now();
        let initrd = plan.dir.join("initramfs.cpio");
        let size = initramfs::build(
            &initrd,
            &plan.checker,
            &plan.dir.join("work"),
            plan.guest_check_timeout,
        )
        .context("cannot build the guests' initramfs")?;
        initramfs_seconds = built.elapsed().as_secs_f64();
        eprintln!(
            "initramfs: {} ({:.1} MiB) in {initramfs_seconds:.1} s",
            initrd.display(),
            size as f64 / f64::from(1 << 20)
        );
        rows.extend(boot_all(plan, &guests, &images, &initrd));
    }
    // In the order asked.
    rows.sort_by_key(|row| plan.rows.iter().position(|r| *r == row.name));

    let matrix = Matrix {
        rows,
        download_seconds,
        initramfs_seconds,
        total_seconds: started.elapsed().as_secs_f64(),
    };
    let path = plan.dir.join("matrix.json");
    let json = serde_json::to_string_pretty(&matrix).context("cannot serialize the matrix")?;
    fs::write(&path, json).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(matrix)
}

/// A fetched kernel: its image and the package it came from (`name version`).
#[derive(Debug, Clone)]
struct Image {
    vmlinuz: PathBuf,
    package: Option<String>,
}

/// The file next to a kernel image saying which package it came from.
const PACKAGE_FILE: &str = "package";

/// The image of each of `kernels`, fetched for those not in `dir` yet (one `apt-get update`,
/// one `apt-get download` for them all).
fn fetch(dir: &Path, kernels: &[&Kernel]) -> anyhow::Result<Vec<Image>> {
    let missing: Vec<&Kernel> = kernels
        .iter()
        .copied()
        .filter(|k| cached(dir, k).is_none())
        .collect();
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|k| k.name).collect();
        eprintln!("fetching kernels {names:?} from Debian's archive (private apt configuration)");
        let apt = apt::PrivateApt::new(&dir.join("apt"))?;
        apt.update()?;
        let mut packages = Vec::new();
        for kernel in &missing {
            let package = apt.image_package(kernel.metapackage, kernel.suite)?;
            eprintln!(
                "{}: {} of {} is {package}",
                kernel.name, kernel.metapackage, kernel.suite
            );
            packages.push((package, kernel.suite.to_owned()));
        }
        let debs = apt.download(&packages)?;
        for ((kernel, deb), (package, _)) in missing.iter().zip(&debs).zip(&packages) {
            let into = dir.join(kernel.name);
            let image = apt::extract_kernel(deb, &into)
                .with_context(|| format!("cannot unpack {}", deb.display()))?;
            let version = deb
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.split('_').nth(1))
                .unwrap_or("?");
            fs::write(into.join(PACKAGE_FILE), format!("{package} {version}\n"))?;
            fs::remove_file(deb).with_context(|| format!("cannot remove {}", deb.display()))?;
            eprintln!("{}: {}", kernel.name, image.display());
        }
    }
    kernels
        .iter()
        .map(|kernel| {
            let vmlinuz = cached(dir, kernel)
                .with_context(|| format!("{}: no vmlinuz-* after fetching", kernel.name))?;
            let package = fs::read_to_string(dir.join(kernel.name).join(PACKAGE_FILE))
                .ok()
                .map(|p| p.trim().to_owned());
            Ok(Image { vmlinuz, package })
        })
        .collect()
}

/// Boots every guest, `plan.jobs` at a time; their rows.
fn boot_all(plan: &Plan, kernels: &[&Kernel], images: &[Image], initrd: &Path) -> Vec<Row> {
    let queue: Mutex<VecDeque<(&Kernel, &Image)>> =
        Mutex::new(kernels.iter().copied().zip(images).collect());
    let rows = Mutex::new(Vec::new());
    // The lock is held only to take the next guest (the closure drops its guard).
    let next = || queue.lock().ok().and_then(|mut q| q.pop_front());
    std::thread::scope(|scope| {
        for _ in 0..plan.jobs.max(1) {
            scope.spawn(|| {
                while let Some((kernel, image)) = next() {
                    let row = guest_row(plan, kernel, image, initrd);
                    if let Ok(mut rows) = rows.lock() {
                        rows.push(row);
                    }
                }
            });
        }
    });
    rows.into_inner().unwrap_or_default()
}

/// How many lines of a failed guest's console the row keeps.
const CONSOLE_TAIL: usize = 40;

/// Boots one guest and reads its report from the console.
fn guest_row(plan: &Plan, kernel: &Kernel, image: &Image, initrd: &Path) -> Row {
    eprintln!("{}: booting {}", kernel.name, image.vmlinuz.display());
    let mut row = Row::new(
        kernel.name.to_owned(),
        format!(
            "{} ({} of {})",
            kernel.about, kernel.metapackage, kernel.suite
        ),
        image.package.clone(),
    );
    let log = plan.dir.join(kernel.name).join("console.log");
    let run = match qemu::boot(&image.vmlinuz, initrd, &log, plan.guest_timeout) {
        Ok(run) => run,
        Err(err) => {
            row.error = Some(format!("{err:#}"));
            return row;
        }
    };
    row.seconds = run.elapsed.as_secs_f64();
    let (booted, checked) = guest_marks(&run.console);
    row.boot_seconds = booted;
    row.check_seconds = booted.zip(checked).map(|(b, c)| c - b);
    match CheckReport::find(&run.console) {
        Some(Ok(report)) => row.report = Some(report),
        Some(Err(err)) => row.error = Some(format!("unreadable report line: {err}")),
        None => row.error = Some("the guest printed no report line".to_owned()),
    }
    if run.status.is_none() {
        let why = format!(
            "the guest was still running after {} s: killed",
            plan.guest_timeout.as_secs()
        );
        row.error = Some(match row.error.take() {
            Some(error) => format!("{why}; {error}"),
            None => why,
        });
    }
    if row.error.is_some() {
        row.console_tail = Some(tail(&run.console, CONSOLE_TAIL));
    }
    eprintln!(
        "{}: {} in {:.1} s (console: {})",
        kernel.name,
        if row.passed() { "passed" } else { "FAILED" },
        row.seconds,
        log.display()
    );
    row
}

/// The guest's uptime when `/init` started the checker and when the checker ended, from the
/// lines `/init` prints. Pure.
fn guest_marks(console: &str) -> (Option<f64>, Option<f64>) {
    let mark = |word: &str| {
        let prefix = format!("{} {word} ", initramfs::GUEST_MARK);
        console.lines().find_map(|line| {
            let at = line.find(&prefix)?;
            line[at + prefix.len()..]
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
    };
    (mark("booted"), mark("checked"))
}

/// The last `lines` lines of `text`, carriage returns dropped.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs the checker on this machine's own kernel.
fn host_row(plan: &Plan, name: &str) -> Row {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    eprintln!(
        "{name}: running the checker on this machine's kernel {}",
        release.trim()
    );
    let variant = (name == HOST_PROBE_READ).then_some("probe-read");
    let started = Instant::now();
    let mut row = Row::new(
        name.to_owned(),
        match variant {
            Some(variant) => format!("this machine's own kernel, the {variant} build"),
            None => "this machine's own kernel".to_owned(),
        },
        None,
    );
    // Eight checks at most their limit each, and the load.
    let limit = plan.host_check_timeout * 8 + Duration::from_secs(60);
    match run_checker(&plan.checker, plan.host_check_timeout, limit, variant) {
        Ok(stdout) => match CheckReport::find(&stdout) {
            Some(Ok(report)) => row.report = Some(report),
            Some(Err(err)) => row.error = Some(format!("unreadable report line: {err}")),
            None => {
                row.error = Some("the checker printed no report line".to_owned());
                row.console_tail = Some(tail(&stdout, CONSOLE_TAIL));
            }
        },
        Err(err) => row.error = Some(format!("{err:#}")),
    }
    row.seconds = started.elapsed().as_secs_f64();
    row.check_seconds = Some(row.seconds);
    eprintln!(
        "{name}: {} in {:.1} s",
        if row.passed() { "passed" } else { "FAILED" },
        row.seconds
    );
    row
}

/// Runs `checker --timeout check_timeout` here (with the build of the programs `variant` when
/// given), its human lines passed through to standard error; its standard output, or an error
/// once `limit` has passed (it is killed then).
fn run_checker(
    checker: &Path,
    check_timeout: Duration,
    limit: Duration,
    variant: Option<&str>,
) -> anyhow::Result<String> {
    let mut command = Command::new(checker);
    if let Some(variant) = variant {
        command.env("DETECTOR_TEST_PROGRAM_VARIANT", variant);
    }
    let mut child = command
        .arg("--timeout")
        .arg(check_timeout.as_secs().max(1).to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot run {}", checker.display()))?;
    let mut stdout = child
        .stdout
        .take()
        .context("the checker's standard output")?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    loop {
        if child
            .try_wait()
            .context("waiting for the checker")?
            .is_some()
        {
            break;
        }
        if started.elapsed() >= limit {
            // Our own child, not yet reaped.
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{} was still running after {} s: killed",
                checker.display(),
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader of the checker's output panicked"))
}

/// Runs `cmd`, returns its standard output; its standard error is in the error.
pub(crate) fn command_output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_and_check_times_come_from_the_init_marks() {
        let console = "[    0.1] x\r\nDETECTOR-GUEST booted 5.52\r\nstuff\r\n\
                       DETECTOR-GUEST checked 61.02 status 0\r\n";
        assert_eq!(guest_marks(console), (Some(5.52), Some(61.02)));
        assert_eq!(guest_marks("nothing"), (None, None));
        assert_eq!(tail("a\r\nb\r\nc\r\n", 2), "b\nc");
    }

    #[test]
    fn every_kernel_has_a_distinct_name() {
        let mut names: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
        names.extend([HOST, HOST_PROBE_READ]);
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KERNELS.len() + 2);
    }
}
