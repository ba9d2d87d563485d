//! A real, private containerd for a test (Debian's containerd 1.6 with runc 1.1), driven with
//! `ctr` in the `detector-test` namespace. Its configuration, root, state, sockets, runc state
//! (`--runc-root`), stdio FIFOs and container logs all live under one temporary directory; the
//! CRI plugin is disabled (nothing here needs it, and its default OOM score adjustment makes
//! runc fail on a machine whose root lacks `CAP_SYS_RESOURCE`). Stopped on drop, failure or
//! not, with every task, container, snapshot, image, mount and cgroup it made removed.
//!
//! [`Containerd::start_with_cri`] starts one with the CRI plugin on instead, for pods run
//! through the Kubernetes CRI API ([`crate::cri`]), as a kubelet's node has it: runc with the
//! cgroupfs driver, the overlayfs snapshotter, a sandbox image of the test's own in `k8s.io`
//! (nothing is pulled), empty CNI directories (pods use the node's network), and OOM score
//! adjustments held at containerd's own (`restrict_oom_score_adj`: the sandbox's default -998
//! needs `CAP_SYS_RESOURCE`). `ctr` then works in `k8s.io`, where the CRI plugin keeps
//! everything.
//!
//! Containers get a network namespace of their own with only loopback (runc brings `lo` up in
//! a new network namespace), which is what the tests want: no traffic leaves them.
//!
//! # Cgroups on this machine
//!
//! The hosts these tests run on mount the cgroup v1 hierarchies under `/sys/fs/cgroup/<controller>`
//! and cgroup2 at `/sys/fs/cgroup/unified` (systemd's hybrid layout, without systemd). runc's
//! cgroupfs manager then takes `--cgroup <path>` literally in every v1 hierarchy *and* in the
//! unified one, so a container's processes read, for example:
//!
//! ```text
//! 9:name=systemd:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice/cri-containerd-<id>.scope
//! 8:pids:/kubepods.slice/…/cri-containerd-<id>.scope   (the same path in each v1 hierarchy)
//! 0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice/cri-containerd-<id>.scope
//! ```
//!
//! The `0::` line is the cgroup2 directory the kernel's cgroup id comes from, which is what the
//! daemon attributes. Docker (cgroupfs driver) does the same with `--cgroup-parent`: the
//! container lands in `<parent>/<64-hex id>` in every hierarchy, the unified one included. A
//! systemd-style path needs no systemd here: runc's cgroupfs manager only makes directories, and
//! `ctr` uses that manager unless told `--runc-systemd-cgroup`.
//!
//! [`KubePod`] makes both layouts for a fresh pod uid: the systemd driver's
//! `cri-containerd-<id>.scope` for containerd (attributed to containerd, the pod and its QoS
//! class) and the cgroupfs driver's `/kubepods/besteffort/pod<uid>` parent for Docker
//! (attributed to the pod and the bare container id). Both sit at the top of the cgroup trees,
//! where the kubelet puts them, so the daemon's `watch: containers` mode sees them too.
//!
//! Runtime set-up writes outside the temporary directory that cannot be moved: the shim's
//! socket under `/run/containerd/s/` (removed when the shim exits), and the cgroup directories.
//!
//! Under `CI=true` a daemon that cannot be started is a failure; elsewhere the test is skipped
//! with the reason printed.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{self, Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use detector::evidence::oci;

use crate::{
    docker::{busybox_rootfs, which},
    host::{mounts, remove_with_mounts, stop_child},
};

/// The containerd namespace of the containers `ctr` runs.
pub const NAMESPACE: &str = "detector-test";

/// The containerd namespace of the CRI plugin (pods, their containers and images).
pub const CRI_NAMESPACE: &str = "k8s.io";

/// The CRI plugin's sandbox ("pause") image: busybox sleeping, imported by
/// [`Containerd::start_with_cri`]. Named on `localhost`, so that a pull, were the image ever
/// missing, could only go to loopback.
pub const SANDBOX_IMAGE: &str = "localhost/detector-test-pause:1";

/// A containerd started by the test.
pub struct Containerd {
    dir: PathBuf,
    child: Child,
    /// Where `ctr` works: [`NAMESPACE`], or [`CRI_NAMESPACE`] with the CRI plugin on.
    namespace: &'static str,
    /// Cgroup path of each container `run` made, by name.
    containers: BTreeMap<String, String>,
    /// Every cgroup path handed to runc, removed (with empty parents) on drop.
    cgroups: Vec<String>,
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn skip_or_fail(test: &str, why: &str) -> Option<Containerd> {
    assert!(!under_ci(), "{test}: {why}, and CI=true");
    eprintln!("skipped {test}: {why}");
    None
}

impl Containerd {
    /// Starts a private containerd, or says why not (`None`: skipped; panics under `CI=true`).
    pub fn start(test: &str) -> Option<Self> {
        Self::start_checked(test, false)
    }

    /// Starts a private containerd with the CRI plugin on (see the module's documentation), its
    /// sandbox image imported, or says why not (`None`: skipped; panics under `CI=true`).
    pub fn start_with_cri(test: &str) -> Option<Self> {
        if which("busybox").is_none() {
            return skip_or_fail(
                test,
                "needs busybox for the sandbox image (apt-get install busybox-static; `cargo xtask test` does it)",
            );
        }
        Self::start_checked(test, true)
    }

    fn start_checked(test: &str, cri: bool) -> Option<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return skip_or_fail(test, "needs root to run containerd");
        }
        let missing: Vec<&str> = ["containerd", "ctr", "containerd-shim-runc-v2", "runc"]
            .into_iter()
            .filter(|p| which(p).is_none())
            .collect();
        if !missing.is_empty() {
            return skip_or_fail(
                test,
                &format!(
                    "needs {} (apt-get install containerd runc; `cargo xtask test` does it)",
                    missing.join(", ")
                ),
            );
        }
        match Self::try_start(test, cri) {
            Ok(containerd) => Some(containerd),
            Err(err) => skip_or_fail(test, &format!("cannot start containerd: {err:#}")),
        }
    }

    fn try_start(test: &str, cri: bool) -> anyhow::Result<Self> {
        // Unix socket paths are limited to 108 bytes: keep the directory's name short.
        let short: String = test.chars().take(32).collect();
        let dir = std::env::temp_dir().join(format!(
            "detector-containerd-{short}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        for sub in ["root", "state", "opt", "fifo", "logs", "runc"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        if cri {
            // Empty CNI directories (no pod networks), and the pods' log directories.
            for sub in ["cni/bin", "cni/conf", "pods"] {
                fs::create_dir_all(dir.join(sub))?;
            }
        }
        let config = dir.join("config.toml");
        fs::write(&config, config_toml(&dir, cri))?;
        let log = fs::File::create(dir.join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot spawn containerd")?;
        let mut containerd = Self {
            dir,
            child,
            namespace: if cri { CRI_NAMESPACE } else { NAMESPACE },
            containers: BTreeMap::new(),
            cgroups: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // ctr waits 10 s for a socket that is not there: ask only once it exists.
            if containerd.socket().exists()
                && containerd
                    .command()
                    .args(["--connect-timeout", "2s", "version"])
                    .output()
                    .is_ok_and(|o| o.status.success())
            {
                if cri {
                    containerd.check_cri()?;
                    containerd.import_busybox(SANDBOX_IMAGE, &["/bin/sleep", "2147483647"])?;
                }
                return Ok(containerd);
            }
            if let Some(status) = containerd.child.try_wait()? {
                bail!("containerd exited with {status}:\n{}", containerd.log());
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd did not answer within 60 s:\n{}",
                    containerd.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// Fails unless the CRI plugin loaded: a plugin that fails to initialize leaves containerd
    /// serving without it, and says why only in the log.
    fn check_cri(&self) -> anyhow::Result<()> {
        let plugins = self.ctr(&["plugins", "ls"])?;
        let cri = plugins
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cols| cols.get(..2) == Some(&["io.containerd.grpc.v1", "cri"][..]));
        if cri.as_ref().and_then(|cols| cols.last()) == Some(&"ok") {
            return Ok(());
        }
        let log = self.log();
        let why: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("io.containerd.grpc.v1.cri") && l.contains("level=error"))
            .collect();
        bail!("the CRI plugin did not load ({cri:?}): {why:#?}")
    }

    /// The temporary directory everything of this daemon lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The daemon's gRPC socket (containerd's own API, and the CRI API with the plugin on).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// `ctr` pointed at this daemon, in [`NAMESPACE`] ([`CRI_NAMESPACE`] with the CRI plugin).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.socket())
            .args(["--namespace", self.namespace]);
        cmd
    }

    /// Runs `ctr`; its standard output, trimmed.
    pub fn ctr(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.command().args(args).output()?;
        ensure!(
            out.status.success(),
            "ctr {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Imports an image archive (OCI layout or `docker save`), which must name the image
    /// `name` (in full: `docker.io/library/...`, see [`crate::image::normalize_reference`]).
    pub fn import(&self, archive: &Path, name: &str) -> anyhow::Result<()> {
        let archive = archive.to_string_lossy();
        self.ctr(&["images", "import", &archive])?;
        let images = self.ctr(&["images", "ls", "-q"])?;
        ensure!(
            images.lines().any(|l| l == name),
            "{archive} did not give image {name}; the namespace holds: {images:?}"
        );
        Ok(())
    }

    /// Makes image `name` (in full, see [`Containerd::import`]) from a busybox rootfs (see
    /// [`busybox_rootfs`]) with the collector's own OCI writer, with `entrypoint` (none when
    /// empty), and imports it.
    pub fn import_busybox(&self, name: &str, entrypoint: &[&str]) -> anyhow::Result<()> {
        let dir = self
            .dir
            .join("images")
            .join(name.replace(['/', ':', '@'], "_"));
        let (rootfs, upper) = (dir.join("rootfs"), dir.join("upper"));
        busybox_rootfs(&rootfs, &[])?;
        fs::create_dir_all(&upper)?;
        let mut meta = oci::ImageMeta::for_this_node(time::OffsetDateTime::now_utc(), "busybox");
        if !entrypoint.is_empty() {
            meta.config
                .insert("Entrypoint".into(), serde_json::json!(entrypoint));
        }
        let archive = dir.join("image.oci.tar");
        oci::write_image(
            std::slice::from_ref(&rootfs),
            &upper,
            fs::File::create(&archive)?,
            name,
            &meta,
            oci::Staging {
                dir: &dir,
                max_bytes: u64::MAX,
            },
        )?;
        self.import(&archive, name)
    }

    /// Starts container `name` from `image`, detached, in cgroup `cgroup_path` (absolute,
    /// relative to the hierarchies' roots, e.g. [`KubePod::containerd_scope`]), running
    /// `args` (the image's command when empty). Its own network namespace with only loopback;
    /// standard output and error go to [`Containerd::logs`]. Returns once the task runs.
    pub fn run(
        &mut self,
        name: &str,
        image: &str,
        cgroup_path: &str,
        args: &[&str],
    ) -> anyhow::Result<()> {
        self.run_with(name, image, cgroup_path, &[], args)
    }

    /// [`Containerd::run`] with more `ctr run` options (`--cap-add CAP_X`, `--env K=V`).
    pub fn run_with(
        &mut self,
        name: &str,
        image: &str,
        cgroup_path: &str,
        options: &[String],
        args: &[&str],
    ) -> anyhow::Result<()> {
        // Recorded first: runc may have made directories even when the start fails.
        self.cgroups.push(cgroup_path.to_owned());
        let log = format!("file://{}", self.log_path(name).display());
        let mut cmd = self.command();
        cmd.args(["run", "-d", "--cgroup", cgroup_path, "--log-uri", &log])
            .arg("--runc-root")
            .arg(self.dir.join("runc"))
            .arg("--fifo-dir")
            .arg(self.dir.join("fifo"))
            .args(options)
            .args([image, name])
            .args(args);
        let out = cmd.output()?;
        ensure!(
            out.status.success(),
            "ctr run {name}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.logs(name)
        );
        self.containers
            .insert(name.to_owned(), cgroup_path.to_owned());
        Ok(())
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }

    /// What container `name`'s main process wrote to standard output and error so far.
    pub fn logs(&self, name: &str) -> String {
        fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    /// Runs `args` in container `name` as exec process `exec_id` (unique among the container's
    /// running execs), without a terminal, and waits for it. Its exit status is the process's.
    pub fn exec(&self, name: &str, exec_id: &str, args: &[&str]) -> anyhow::Result<Output> {
        self.exec_command(name, exec_id, args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run ctr tasks exec in {name}"))
    }

    /// The `ctr tasks exec` command of [`Containerd::exec`], for a caller that bounds its time.
    pub fn exec_command(&self, name: &str, exec_id: &str, args: &[&str]) -> Command {
        let mut cmd = self.command();
        cmd.args(["tasks", "exec", "--exec-id", exec_id])
            .arg("--fifo-dir")
            .arg(self.dir.join("fifo"))
            .arg(name)
            .args(args);
        cmd
    }

    /// Sends `signal` (`SIGTERM`, `9`, ...) to container `name`'s main process.
    pub fn kill(&self, name: &str, signal: &str) -> anyhow::Result<()> {
        self.ctr(&["tasks", "kill", "--signal", signal, name])
            .map(drop)
    }

    /// The task's status (`RUNNING`, `STOPPED`, `PAUSED`, ...); `None` without a task.
    pub fn status(&self, name: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .ctr(&["tasks", "ls"])?
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cols| cols.first() == Some(&name))
            .and_then(|cols| cols.get(2).map(|s| (*s).to_owned())))
    }

    /// Stops container `name`: `SIGTERM`, then `SIGKILL` after `grace`; waits until it stopped.
    pub fn stop(&self, name: &str, grace: Duration) -> anyhow::Result<()> {
        if self.status(name)?.as_deref() != Some("RUNNING") {
            return Ok(());
        }
        self.kill(name, "SIGTERM")?;
        if self.wait_stopped(name, grace)? {
            return Ok(());
        }
        self.kill(name, "SIGKILL")?;
        ensure!(
            self.wait_stopped(name, Duration::from_secs(10))?,
            "{name} did not stop on SIGKILL"
        );
        Ok(())
    }

    fn wait_stopped(&self, name: &str, timeout: Duration) -> anyhow::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.status(name)?.as_deref() != Some("RUNNING") {
                return Ok(true);
            }
            if Instant::now() > deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Removes container `name`: its task (killed if still running), the container, its
    /// snapshot, and its cgroup directories with the pod's parents once they are empty.
    pub fn rm(&mut self, name: &str) -> anyhow::Result<()> {
        if self.status(name)?.is_some() {
            self.ctr(&["tasks", "rm", "--force", name])?;
        }
        self.ctr(&["containers", "rm", name])?;
        if let Some(path) = self.containers.remove(name) {
            remove_cgroup(&path);
        }
        Ok(())
    }

    /// Every process of container `name` (`ctr tasks ps`), the main one included.
    pub fn pids(&self, name: &str) -> anyhow::Result<Vec<u32>> {
        let out = self.ctr(&["tasks", "ps", name])?;
        Ok(out
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect())
    }

    /// The pid of container `name`'s main process.
    pub fn pid(&self, name: &str) -> anyhow::Result<u32> {
        self.ctr(&["tasks", "ls"])?
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cols| cols.first() == Some(&name))
            .and_then(|cols| cols.get(1)?.parse().ok())
            .with_context(|| format!("no task {name}"))
    }

    /// The cgroup path container `name` was started in (as given to [`Containerd::run`]).
    pub fn cgroup_path(&self, name: &str) -> Option<&str> {
        self.containers.get(name).map(String::as_str)
    }
}

/// The daemon's configuration: everything under `dir`, CRI off unless `cri`.
fn config_toml(dir: &Path, cri: bool) -> String {
    let path = |sub: &str| toml_string(&dir.join(sub).to_string_lossy());
    let mut text = String::new();
    let _ = writeln!(text, "version = 2");
    let _ = writeln!(text, "root = {}", path("root"));
    let _ = writeln!(text, "state = {}", path("state"));
    if !cri {
        let _ = writeln!(text, "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]");
    }
    let _ = writeln!(text, "\n[grpc]\n  address = {}", path("containerd.sock"));
    let _ = writeln!(
        text,
        "\n[ttrpc]\n  address = {}",
        path("containerd.sock.ttrpc")
    );
    let _ = writeln!(text, "\n[debug]\n  address = \"\"");
    let _ = writeln!(text, "\n[metrics]\n  address = \"\"");
    // Where containerd would install managed binaries (`/opt/containerd` by default).
    let _ = writeln!(
        text,
        "\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = {}",
        path("opt")
    );
    if cri {
        let _ = write!(
            text,
            r#"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {sandbox}
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = {runc}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {cni_bin}
    conf_dir = {cni_conf}
"#,
            sandbox = toml_string(SANDBOX_IMAGE),
            runc = path("runc"),
            cni_bin = path("cni/bin"),
            cni_conf = path("cni/conf"),
        );
    }
    text
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Removes a container's cgroup directory in every hierarchy (ending what is left in it,
/// which can only be the container's), then its parents up to the root while they are empty.
pub(crate) fn remove_cgroup(path: &str) {
    let rel = path.trim_matches('/');
    if rel.is_empty() {
        return;
    }
    for root in mounts(|_, fstype| fstype == "cgroup" || fstype == "cgroup2") {
        let leaf = root.join(rel);
        for _ in 0..50 {
            if !leaf.exists() || fs::remove_dir(&leaf).is_ok() {
                break;
            }
            let procs = fs::read_to_string(leaf.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill has no memory-safety preconditions; the pid is in the cgroup of
                // a container this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut dir = leaf.parent().map(Path::to_owned);
        while let Some(d) = dir {
            if d == root || !d.starts_with(&root) || fs::remove_dir(&d).is_err() {
                break;
            }
            dir = d.parent().map(Path::to_owned);
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let mut err = io::stderr().lock();
        // Everything in the namespace was made by this test: tasks (killed), containers with
        // their snapshots, then images with everything they hold.
        if let Ok(names) = self.ctr(&["containers", "ls", "-q"]) {
            for name in names.lines() {
                let _ = self.ctr(&["tasks", "rm", "--force", name]);
                if let Err(e) = self.ctr(&["containers", "rm", name]) {
                    let _ = writeln!(err, "cannot remove container {name}: {e:#}");
                }
            }
        }
        if let Ok(images) = self.ctr(&["images", "ls", "-q"]) {
            for image in images.lines() {
                let _ = self.ctr(&["images", "rm", "--sync", image]);
            }
        }
        if let Ok(snapshots) = self.ctr(&["snapshots", "ls"]) {
            // Children before parents: the listing does not order them, so retry a few times.
            let mut keys: Vec<String> = snapshots
                .lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
                .collect();
            for _ in 0..5 {
                keys.retain(|key| self.ctr(&["snapshots", "rm", key]).is_err());
            }
        }
        stop_child(&mut self.child, "containerd", Duration::from_secs(20));
        remove_with_mounts(&self.dir);
        for path in &self.cgroups {
            remove_cgroup(path);
        }
    }
}

/// A pod as the kubelet lays out its cgroups (QoS class best-effort), with a fresh uid, for
/// containers a test starts through Docker or containerd.
#[derive(Debug, Clone)]
pub struct KubePod {
    uid: String,
}

impl KubePod {
    /// A pod with a random uid.
    pub fn new() -> Self {
        let h = random_hex(16);
        let uid = format!(
            "{}-{}-4{}-a{}-{}",
            &h[..8],
            &h[8..12],
            &h[13..16],
            &h[17..20],
            &h[20..32]
        );
        Self { uid }
    }

    /// The pod uid (with dashes).
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// The cgroup of a containerd container of this pod under the kubelet's systemd driver:
    /// `/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid with _>.slice/cri-containerd-<id>.scope`.
    pub fn containerd_scope(&self, container_id: &str) -> String {
        let uid = self.uid.replace('-', "_");
        format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/cri-containerd-{container_id}.scope"
        )
    }

    /// The pod's cgroup under the kubelet's cgroupfs driver, `/kubepods/besteffort/pod<uid>`:
    /// a `docker run --cgroup-parent` puts the container in `<this>/<64-hex id>`.
    pub fn cgroupfs_parent(&self) -> String {
        format!("/kubepods/besteffort/pod{}", self.uid)
    }
}

impl Default for KubePod {
    fn default() -> Self {
        Self::new()
    }
}

/// A random container id: 64 lowercase hex digits, as the runtimes make them.
pub fn random_container_id() -> String {
    random_hex(32)
}

/// `bytes` random bytes from the kernel, in hex.
fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0; bytes];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("cannot read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use detector::attribution::cgroup_path::{Qos, Runtime, parse};

    use super::*;

    #[test]
    fn kubepod_layouts_are_attributed_to_the_pod_and_container() {
        let pod = KubePod::new();
        let id = random_container_id();
        let containerd = parse(&pod.containerd_scope(&id)).unwrap();
        let p = containerd.pod.unwrap();
        assert_eq!((p.uid.as_str(), p.qos), (pod.uid(), Qos::BestEffort));
        let c = containerd.container.unwrap();
        assert_eq!(
            (c.id.as_str(), c.runtime),
            (id.as_str(), Runtime::Containerd)
        );

        let docker = parse(&format!("{}/{id}", pod.cgroupfs_parent())).unwrap();
        assert_eq!(docker.pod.unwrap().uid, pod.uid());
        assert_eq!(docker.container.unwrap().id, id);
    }

    #[test]
    fn config_keeps_everything_under_the_directory() {
        let text = config_toml(Path::new("/tmp/x"), false);
        assert!(text.contains("root = \"/tmp/x/root\""), "{text}");
        assert!(text.contains("state = \"/tmp/x/state\""), "{text}");
        assert!(
            text.contains("address = \"/tmp/x/containerd.sock\""),
            "{text}"
        );
        assert!(text.contains("io.containerd.grpc.v1.cri"), "{text}");
        assert!(!text.contains("sandbox_image"), "{text}");
    }

    #[test]
    fn cri_config_uses_cgroupfs_and_the_directory() {
        let text = config_toml(Path::new("/tmp/x"), true);
        assert!(!text.contains("disabled_plugins"), "{text}");
        assert!(
            text.contains(&format!("sandbox_image = \"{SANDBOX_IMAGE}\"")),
            "{text}"
        );
        assert!(text.contains("SystemdCgroup = false"), "{text}");
        assert!(text.contains("Root = \"/tmp/x/runc\""), "{text}");
        assert!(text.contains("bin_dir = \"/tmp/x/cni/bin\""), "{text}");
        assert!(text.contains("conf_dir = \"/tmp/x/cni/conf\""), "{text}");
    }
}
