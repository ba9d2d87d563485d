//! A real, private Docker daemon for a test: its own data root, exec root and socket under a
//! temporary directory, no bridge and no iptables. Stopped and cleaned up on drop (containers,
//! images, mounts, cgroup parents), failure or not.
//!
//! Under `CI=true` a daemon that cannot be started is a failure; elsewhere the test is skipped
//! with the reason printed.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use crate::host::{mounts, remove_with_mounts, stop_child};

/// A dockerd started by the test.
pub struct Dockerd {
    dir: PathBuf,
    child: Child,
    cgroup_parents: Vec<String>,
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn skip_or_fail(test: &str, why: &str) -> Option<Dockerd> {
    assert!(!under_ci(), "{test}: {why}, and CI=true");
    eprintln!("skipped {test}: {why}");
    None
}

/// The docker CLI matching the daemon: Debian's when installed, else the first on `PATH`.
fn docker_cli() -> PathBuf {
    let debian = Path::new("/usr/bin/docker");
    if debian.exists() {
        debian.to_owned()
    } else {
        PathBuf::from("docker")
    }
}

impl Dockerd {
    /// Starts a private dockerd, or says why not (`None`: skipped; panics under `CI=true`).
    pub fn start(test: &str) -> Option<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return skip_or_fail(test, "needs root to run dockerd");
        }
        if which("dockerd").is_none() || which("busybox").is_none() {
            return skip_or_fail(
                test,
                "needs dockerd and busybox (apt-get install docker.io busybox-static; `cargo xtask test` does it)",
            );
        }
        match Self::try_start(test) {
            Ok(dockerd) => Some(dockerd),
            Err(err) => skip_or_fail(test, &format!("cannot start dockerd: {err:#}")),
        }
    }

    fn try_start(test: &str) -> anyhow::Result<Self> {
        // Unix socket paths are limited to 108 bytes (104 as containerd counts): keep the
        // directory's name short.
        let short: String = test.chars().take(32).collect();
        let dir =
            std::env::temp_dir().join(format!("detector-dockerd-{short}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let log = fs::File::create(dir.join("dockerd.log"))?;
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", dir.join("docker.sock").display()))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
                "--ip-forward=false",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot spawn dockerd")?;
        let mut dockerd = Self {
            dir,
            child,
            cgroup_parents: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if dockerd.cli(&["version"]).is_ok() {
                return Ok(dockerd);
            }
            if let Some(status) = dockerd.child.try_wait()? {
                let log = fs::read_to_string(dockerd.dir.join("dockerd.log")).unwrap_or_default();
                bail!("dockerd exited with {status}:\n{log}");
            }
            if Instant::now() > deadline {
                let log = fs::read_to_string(dockerd.dir.join("dockerd.log")).unwrap_or_default();
                bail!("dockerd did not answer within 60 s:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The daemon's socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// The docker CLI pointed at this daemon.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(docker_cli());
        cmd.arg("-H")
            .arg(format!("unix://{}", self.socket().display()));
        cmd
    }

    /// Runs the docker CLI; its standard output, trimmed.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.command().args(args).output()?;
        ensure!(
            out.status.success(),
            "docker {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Builds image `tag` with `docker import` from a rootfs of Debian's static busybox (with
    /// its applets as symlinks), plus `files` (path inside, content).
    pub fn import_busybox(&self, tag: &str, files: &[(&str, &[u8])]) -> anyhow::Result<()> {
        let rootfs = self
            .dir
            .join(format!("rootfs-{}", tag.replace([':', '/'], "-")));
        busybox_rootfs(&rootfs, files)?;
        let tar = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()?;
        let status = self
            .command()
            .args(["import", "-", tag])
            .stdin(tar.stdout.context("tar stdout")?)
            .stdout(Stdio::null())
            .status()?;
        ensure!(status.success(), "docker import failed: {status}");
        Ok(())
    }

    /// Records a `--cgroup-parent` so that its directories are removed on drop.
    pub fn cgroup_parent(&mut self, parent: &str) -> String {
        self.cgroup_parents.push(parent.to_owned());
        parent.to_owned()
    }
}

/// Lays out at `rootfs` a minimal userland: Debian's static busybox with the applets the tests
/// run as symlinks, and `files` (path inside, content).
pub fn busybox_rootfs(rootfs: &Path, files: &[(&str, &[u8])]) -> anyhow::Result<()> {
    for sub in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
        fs::create_dir_all(rootfs.join(sub))?;
    }
    let busybox = which("busybox").context("no busybox")?;
    fs::copy(&busybox, rootfs.join("bin/busybox"))?;
    for applet in [
        "sh", "sleep", "cat", "rm", "echo", "dd", "ls", "touch", "ps", "head", "test",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
    }
    for (path, content) in files {
        let path = rootfs.join(path.trim_start_matches('/'));
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(path, content)?;
    }
    Ok(())
}

/// The path of an executable on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([
            "/usr/sbin".into(),
            "/sbin".into(),
            "/usr/bin".into(),
            "/bin".into(),
        ])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // Everything this daemon holds was made by the test.
        if let Ok(ids) = self.cli(&["ps", "-aq"]) {
            for id in ids.split_whitespace() {
                let _ = self.cli(&["rm", "-f", id]);
            }
        }
        if let Ok(ids) = self.cli(&["images", "-aq"]) {
            for id in ids.split_whitespace() {
                let _ = self.cli(&["rmi", "-f", id]);
            }
        }
        stop_child(&mut self.child, "dockerd", Duration::from_secs(20));
        remove_with_mounts(&self.dir);
        let hierarchies = mounts(|_, fstype| fstype == "cgroup" || fstype == "cgroup2");
        for parent in &self.cgroup_parents {
            let rel = parent.trim_matches('/');
            for root in &hierarchies {
                // Deepest first: the pod directory, then its parents up to the top one.
                let mut path = root.join(rel);
                while path.starts_with(root) && path != *root {
                    if fs::remove_dir(&path).is_err() {
                        break;
                    }
                    if !path.pop() {
                        break;
                    }
                }
            }
        }
    }
}
