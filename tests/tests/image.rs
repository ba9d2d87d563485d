//! The image `deploy/image.sh` builds from the repository alone (no registry, no base image),
//! made here from the debug build of the daemon and imported into a private dockerd: it holds
//! the daemon, the libraries it links and the CA bundle, nothing else, and the daemon runs in
//! it as deploy/daemonset.yaml runs it: read-only root filesystem, host PID namespace, the
//! DaemonSet's host mounts, capabilities instead of privileged, seccomp and AppArmor
//! unconfined. It loads its programs and says it is ready.
//!
//! Not exactly the DaemonSet's capabilities: Debian's Docker 20.10 does not know `BPF` and
//! `PERFMON` (`SYS_ADMIN` covers both), and root here lacks `SYS_RESOURCE`, which it cannot
//! grant. Needs root and dockerd: skipped without them, a failure under `CI=true`.

use std::{
    collections::BTreeSet,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use tests::docker::Dockerd;

const TAG: &str = "detector-test/image:dev";

#[test]
fn the_offline_image_runs_the_daemon_read_only_as_the_daemonset_does() {
    // A short name: dockerd's sockets live below a directory named after it (108 bytes at most).
    let Some(dockerd) = Dockerd::start("image") else {
        return;
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let binary = tests::daemon::binary();
    assert!(binary.is_file(), "no daemon at {}", binary.display());
    let docker = dockerd.command().get_program().to_owned();
    let started = Instant::now();
    let built = Command::new(repo.join("deploy/image.sh"))
        .arg(TAG)
        .env("DETECTOR_BINARY", &binary)
        .env("DOCKER", &docker)
        .env(
            "DOCKER_HOST",
            format!("unix://{}", dockerd.socket().display()),
        )
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "deploy/image.sh: {}\n{}",
        built.status,
        String::from_utf8_lossy(&built.stderr)
    );
    let size: u64 = dockerd
        .cli(&["image", "inspect", "-f", "{{.Size}}", TAG])
        .unwrap()
        .parse()
        .unwrap();
    eprintln!(
        "image built in {:.1} s, {size} bytes (the daemon's debug build: {} bytes)",
        started.elapsed().as_secs_f64(),
        std::fs::metadata(&binary).unwrap().len()
    );

    // Its files: the daemon, the loader and the libraries it links, the CA bundle.
    let id = dockerd.cli(&["create", TAG]).unwrap();
    let export = dockerd.command().args(["export", &id]).output().unwrap();
    dockerd.cli(&["rm", &id]).unwrap();
    let listing = Command::new("tar")
        .arg("-t")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut tar| {
            use std::io::Write as _;
            tar.stdin.take().unwrap().write_all(&export.stdout)?;
            tar.wait_with_output()
        })
        .unwrap();
    let files: BTreeSet<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter(|l| !l.ends_with('/'))
        .map(|l| l.trim_start_matches("./").to_owned())
        // What docker adds to every container.
        .filter(|l| {
            !matches!(
                l.as_str(),
                ".dockerenv" | "etc/hostname" | "etc/hosts" | "etc/mtab" | "etc/resolv.conf"
            ) && !l.starts_with("dev/")
        })
        .collect();
    for file in files.iter() {
        assert!(
            file == "usr/local/bin/detector"
                || file == "etc/ssl/certs/ca-certificates.crt"
                || file.starts_with("lib/")
                || file.starts_with("lib64/")
                || file.starts_with("usr/lib/"),
            "unexpected file in the image: {file}"
        );
    }
    assert!(files.contains("usr/local/bin/detector"), "{files:?}");

    // The daemon, as the DaemonSet runs it, in detection only (it must not act on the other
    // tests' pods).
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "sensors:\n  watch: containers\noutput:\n  path: \"-\"\nevidence:\n  out_dir: /var/lib/detector/evidence\n  on_contain: false\ncontain:\n  enabled: false\n  journal_dir: /var/lib/detector/incidents\nmetrics:\n  enabled: false\nexport:\n  state_dir: /var/lib/detector/export\n",
    )
    .unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let mount = |host: &Path, inside: &str, ro: bool| {
        format!("{}:{inside}{}", host.display(), if ro { ":ro" } else { "" })
    };
    let mounts = [
        mount(&config, "/etc/detector/config.yaml", true),
        mount(Path::new("/sys/kernel/btf"), "/sys/kernel/btf", true),
        mount(
            Path::new("/sys/kernel/tracing"),
            "/sys/kernel/tracing",
            true,
        ),
        mount(Path::new("/sys/fs/cgroup"), "/sys/fs/cgroup", true),
        mount(Path::new("/sys/fs/bpf"), "/sys/fs/bpf", false),
        mount(Path::new("/proc"), "/host/proc", true),
        mount(&state, "/var/lib/detector", false),
    ];
    let name = format!("detector-image-{}", std::process::id());
    let mut run = vec![
        "run",
        "-d",
        "--name",
        &name,
        "--read-only",
        "--network",
        "none",
        "--pid",
        "host",
        "--user",
        "0",
        "--cap-drop",
        "ALL",
        "--cap-add",
        "NET_ADMIN",
        "--cap-add",
        "SYS_ADMIN",
        "--cap-add",
        "SYS_PTRACE",
        "--cap-add",
        "DAC_READ_SEARCH",
        "--security-opt",
        "seccomp=unconfined",
        "--security-opt",
        "apparmor=unconfined",
        "--tmpfs",
        "/tmp",
        "-e",
        "DETECTOR_LOG=info",
    ];
    for m in &mounts {
        run.extend(["-v", m.as_str()]);
    }
    run.push(TAG);
    dockerd.cli(&run).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (ready, log) = loop {
        let out = dockerd.command().args(["logs", &name]).output().unwrap();
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        let running = dockerd
            .cli(&["inspect", "-f", "{{.State.Running}}", &name])
            .is_ok_and(|r| r == "true");
        if log.contains(" ready") || !running || Instant::now() > deadline {
            break (log.contains(" ready") && running, log);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = dockerd.cli(&["rm", "-f", &name]);
    let _ = dockerd.cli(&["rmi", TAG]);
    assert!(ready, "the daemon did not get ready in the image:\n{log}");
    assert!(log.contains("eBPF programs attached"), "{log}");
}
