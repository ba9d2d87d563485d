//! The Kubernetes CRI API of a private containerd started with its CRI plugin
//! ([`Containerd::start_with_cri`]), driven the way a kubelet drives it, without a kubelet: a
//! pod sandbox for a [`KubePod`] and containers in it, with the kubelet's labels, log layout and
//! cgroupfs-driver cgroup parent (`/kubepods/besteffort/pod<uid>`). Pods use the node's network
//! namespace, so no CNI plugin is needed and nothing leaves the node.
//!
//! The calls go over the daemon's socket with tonic and block on a runtime of the client's own
//! (the tests are synchronous). A [`PodSandbox`] stops and removes its containers and itself on
//! drop, failure or not, then the pod's cgroup directories, which runc leaves (the kubelet makes
//! and removes them).
//!
//! # Cgroups on this machine
//!
//! In the hybrid layout of these hosts (see [`crate::containerd`]), runc's cgroupfs manager puts
//! each container of the pod, the sandbox's own included, at `<cgroup parent>/<id>` in every
//! v1 hierarchy and in the unified one, so the container's processes read
//! `0::/kubepods/besteffort/pod<uid>/<container id>` (and the same path after each v1
//! controller). [`Container::cgroup`] is the directory the `0::` line names, read from the
//! container's process, not computed.

use std::{
    collections::{BTreeSet, HashMap},
    fs,
    future::Future,
    io::{self, Write as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use detector::cgroup::cgroup2_mount;
use k8s_cri::v1::{
    self, image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
};
use tonic::transport::Channel;

use crate::{
    containerd::{Containerd, KubePod, SANDBOX_IMAGE, remove_cgroup},
    host::mounts,
};

/// How long one CRI call may take; containerd answers each of the tests' in well under that.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A client of one containerd's CRI API.
pub struct Cri {
    runtime: tokio::runtime::Runtime,
    channel: Channel,
    /// Where pods' log directories go (`/var/log/pods` on a node).
    pods: PathBuf,
}

impl Cri {
    /// Connects to the CRI API of `containerd` (started with [`Containerd::start_with_cri`]);
    /// fails unless it answers as containerd and has the sandbox image, so that no pod start
    /// would pull one.
    pub fn connect(containerd: &Containerd) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let socket = containerd.socket();
        let channel = runtime
            .block_on(containerd_client::connect(&socket))
            .with_context(|| format!("cannot connect to {}", socket.display()))?;
        let cri = Self {
            runtime,
            channel,
            pods: containerd.dir().join("pods"),
        };
        let version = cri.call(cri.runtime_service().version(v1::VersionRequest {
            version: "v1".into(),
        }))?;
        ensure!(
            version.runtime_name == "containerd",
            "not containerd: {version:?}"
        );
        cri.wait_for_image(SANDBOX_IMAGE)?;
        Ok(cri)
    }

    fn runtime_service(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
    }

    fn image_service(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone())
    }

    /// Runs one call to completion, within [`CALL_TIMEOUT`].
    fn call<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> anyhow::Result<T> {
        let response = self
            .runtime
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, call).await })
            .context("the CRI call timed out")??;
        Ok(response.into_inner())
    }

    /// Waits until the CRI plugin knows image `name`: it learns of an image `ctr` imported
    /// from containerd's events, a moment after the import.
    fn wait_for_image(&self, name: &str) -> anyhow::Result<()> {
        let mut known = Ok(false);
        let waited = poll(&format!("the CRI plugin to know image {name}"), || {
            known = self
                .call(self.image_service().image_status(v1::ImageStatusRequest {
                    image: Some(v1::ImageSpec {
                        image: name.into(),
                        ..Default::default()
                    }),
                    verbose: false,
                }))
                .map(|status| status.image.is_some());
            !matches!(known, Ok(false))
        });
        known?;
        waited.context("import it into k8s.io first")
    }

    /// Runs a sandbox for `pod`, named `name` in Kubernetes namespace `namespace`, as the
    /// kubelet asks for a best-effort pod with `hostNetwork: true`: the node's network
    /// namespace, a pod IPC namespace, a PID namespace per container, cgroup parent
    /// `/kubepods/besteffort/pod<uid>`, log directory `<namespace>_<name>_<uid>`.
    pub fn run_pod(
        &self,
        pod: &KubePod,
        name: &str,
        namespace: &str,
    ) -> anyhow::Result<PodSandbox<'_>> {
        let log_directory = self.pods.join(format!("{namespace}_{name}_{}", pod.uid()));
        fs::create_dir_all(&log_directory)?;
        let labels = HashMap::from([
            ("io.kubernetes.pod.name".to_owned(), name.to_owned()),
            (
                "io.kubernetes.pod.namespace".to_owned(),
                namespace.to_owned(),
            ),
            ("io.kubernetes.pod.uid".to_owned(), pod.uid().to_owned()),
        ]);
        let config = v1::PodSandboxConfig {
            metadata: Some(v1::PodSandboxMetadata {
                name: name.into(),
                uid: pod.uid().into(),
                namespace: namespace.into(),
                attempt: 0,
            }),
            log_directory: log_directory.to_string_lossy().into_owned(),
            labels,
            linux: Some(v1::LinuxPodSandboxConfig {
                cgroup_parent: pod.cgroupfs_parent(),
                security_context: Some(v1::LinuxSandboxSecurityContext {
                    namespace_options: Some(v1::NamespaceOption {
                        network: v1::NamespaceMode::Node.into(),
                        pid: v1::NamespaceMode::Container.into(),
                        ipc: v1::NamespaceMode::Pod.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        // The guard exists before the call: runc may have made the pod's cgroup directories
        // even when the sandbox fails to start.
        let mut sandbox = PodSandbox {
            cri: self,
            pod: pod.clone(),
            config: config.clone(),
            id: None,
            containers: Vec::new(),
        };
        let response = self.call(self.runtime_service().run_pod_sandbox(
            v1::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            },
        ))?;
        sandbox.id = Some(response.pod_sandbox_id);
        Ok(sandbox)
    }

    /// Every container the runtime has (`crictl ps -a`).
    pub fn containers(&self) -> anyhow::Result<Vec<v1::Container>> {
        Ok(self
            .call(
                self.runtime_service()
                    .list_containers(v1::ListContainersRequest { filter: None }),
            )?
            .containers)
    }

    /// Every pod sandbox the runtime has (`crictl pods`).
    pub fn sandboxes(&self) -> anyhow::Result<Vec<v1::PodSandbox>> {
        Ok(self
            .call(
                self.runtime_service()
                    .list_pod_sandbox(v1::ListPodSandboxRequest { filter: None }),
            )?
            .items)
    }

    /// Container `id`'s status, verbose: `info["info"]` holds the runtime's JSON (pid,
    /// snapshotter, OCI spec).
    pub fn status(&self, id: &str) -> anyhow::Result<v1::ContainerStatusResponse> {
        self.call(
            self.runtime_service()
                .container_status(v1::ContainerStatusRequest {
                    container_id: id.into(),
                    verbose: true,
                }),
        )
    }

    /// Container `id`'s state (`CONTAINER_RUNNING`, ...).
    pub fn state(&self, id: &str) -> anyhow::Result<v1::ContainerState> {
        let status = self.status(id)?.status.context("no status")?;
        Ok(v1::ContainerState::try_from(status.state)?)
    }

    /// The pid (in this PID namespace) of container `id`'s main process, from its verbose
    /// status.
    pub fn pid(&self, id: &str) -> anyhow::Result<u32> {
        let status = self.status(id)?;
        let info = status
            .info
            .get("info")
            .with_context(|| format!("no verbose info in {status:?}"))?;
        let info: serde_json::Value = serde_json::from_str(info)?;
        info["pid"]
            .as_u64()
            .and_then(|pid| u32::try_from(pid).ok())
            .filter(|&pid| pid != 0)
            .with_context(|| format!("no pid in {info}"))
    }
}

/// A container to start in a pod: what the kubelet takes from the pod's spec.
#[derive(Debug, Clone, Copy, Default)]
pub struct ContainerSpec<'a> {
    /// The container's name in the pod.
    pub name: &'a str,
    /// The image, in full (`localhost/name:tag`); it must already be in `k8s.io`.
    pub image: &'a str,
    /// The entrypoint (the image's when empty).
    pub command: &'a [&'a str],
    /// Its arguments.
    pub args: &'a [&'a str],
    /// Labels besides the kubelet's own.
    pub labels: &'a [(&'a str, &'a str)],
}

/// A container started in a [`PodSandbox`].
#[derive(Debug, Clone)]
pub struct Container {
    /// The runtime's id (64 hex digits).
    pub id: String,
    /// The name in the pod.
    pub name: String,
    /// Its main process.
    pub pid: u32,
    /// Its cgroup2 directory, as its main process reads it.
    pub cgroup: PathBuf,
    /// Its log file, in the CRI format (`<RFC 3339 time> stdout F <line>`).
    pub log: PathBuf,
}

impl Container {
    /// Waits up to 20 s for `path` to exist inside the container (through its root as
    /// `/proc/<pid>/root` shows it).
    pub fn wait_for_file(&self, path: &str) -> anyhow::Result<()> {
        let inside =
            PathBuf::from(format!("/proc/{}/root", self.pid)).join(path.trim_start_matches('/'));
        poll(&format!("{path} in {}", self.name), || inside.exists())
    }

    /// Waits up to 20 s for the container's log to hold `text`; the log.
    pub fn wait_for_log(&self, text: &str) -> anyhow::Result<String> {
        let mut log = String::new();
        poll(&format!("{text:?} in the log of {}", self.name), || {
            log = fs::read_to_string(&self.log).unwrap_or_default();
            log.contains(text)
        })?;
        Ok(log)
    }
}

/// Polls `done` for up to 20 s; an error naming `what` when it never held.
fn poll(what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A pod sandbox run through the CRI API, with the containers started in it: all stopped and
/// removed on drop, with the pod's cgroup directories.
pub struct PodSandbox<'c> {
    cri: &'c Cri,
    pod: KubePod,
    config: v1::PodSandboxConfig,
    /// `None` until the runtime answered.
    id: Option<String>,
    /// Ids of the containers created in it, started or not.
    containers: Vec<String>,
}

impl PodSandbox<'_> {
    /// The sandbox's id.
    pub fn id(&self) -> &str {
        self.id.as_deref().unwrap_or_default()
    }

    /// The pod.
    pub fn pod(&self) -> &KubePod {
        &self.pod
    }

    /// The pod's log directory.
    pub fn log_directory(&self) -> &Path {
        Path::new(&self.config.log_directory)
    }

    /// Creates and starts a container, as the kubelet does: labelled with the pod and the
    /// container name, logging to `<name>/0.log` in the pod's log directory. Returns once it
    /// runs.
    pub fn start_container(&mut self, spec: &ContainerSpec) -> anyhow::Result<Container> {
        self.cri.wait_for_image(spec.image)?;
        let metadata = self.config.metadata.clone().unwrap_or_default();
        let mut labels = HashMap::from([
            (
                "io.kubernetes.container.name".to_owned(),
                spec.name.to_owned(),
            ),
            ("io.kubernetes.pod.name".to_owned(), metadata.name),
            ("io.kubernetes.pod.namespace".to_owned(), metadata.namespace),
            ("io.kubernetes.pod.uid".to_owned(), metadata.uid),
        ]);
        labels.extend(
            spec.labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let owned = |args: &[&str]| args.iter().map(|&a| a.to_owned()).collect();
        let log_path = format!("{}/0.log", spec.name);
        let config = v1::ContainerConfig {
            metadata: Some(v1::ContainerMetadata {
                name: spec.name.into(),
                attempt: 0,
            }),
            image: Some(v1::ImageSpec {
                image: spec.image.into(),
                ..Default::default()
            }),
            command: owned(spec.command),
            args: owned(spec.args),
            labels,
            log_path: log_path.clone(),
            ..Default::default()
        };
        let id = self
            .cri
            .call(
                self.cri
                    .runtime_service()
                    .create_container(v1::CreateContainerRequest {
                        pod_sandbox_id: self.id().into(),
                        config: Some(config),
                        sandbox_config: Some(self.config.clone()),
                    }),
            )?
            .container_id;
        self.containers.push(id.clone());
        self.cri.call(
            self.cri
                .runtime_service()
                .start_container(v1::StartContainerRequest {
                    container_id: id.clone(),
                }),
        )?;
        let pid = self.cri.pid(&id)?;
        Ok(Container {
            cgroup: cgroup2_dir(pid)?,
            log: self.log_directory().join(log_path),
            name: spec.name.to_owned(),
            id,
            pid,
        })
    }

    /// Stops (without a grace period: the tests' containers are ended, not shut down) and
    /// removes container `id`.
    fn remove_container(&self, id: &str) -> anyhow::Result<()> {
        let runtime = || self.cri.runtime_service();
        self.cri
            .call(runtime().stop_container(v1::StopContainerRequest {
                container_id: id.into(),
                timeout: 0,
            }))?;
        self.cri
            .call(runtime().remove_container(v1::RemoveContainerRequest {
                container_id: id.into(),
            }))?;
        Ok(())
    }

    fn remove_sandbox(&self, id: &str) -> anyhow::Result<()> {
        let runtime = || self.cri.runtime_service();
        self.cri
            .call(runtime().stop_pod_sandbox(v1::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))?;
        self.cri
            .call(runtime().remove_pod_sandbox(v1::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))?;
        Ok(())
    }
}

impl Drop for PodSandbox<'_> {
    fn drop(&mut self) {
        let mut err = io::stderr().lock();
        for id in self.containers.iter().rev() {
            if let Err(e) = self.remove_container(id) {
                let _ = writeln!(err, "cannot remove container {id}: {e:#}");
            }
        }
        if let Some(id) = &self.id
            && let Err(e) = self.remove_sandbox(id)
        {
            let _ = writeln!(err, "cannot remove pod sandbox {id}: {e:#}");
        }
        remove_pod_cgroups(&self.pod.cgroupfs_parent());
    }
}

/// The cgroup2 directory of process `pid`: the one the `0::` line of `/proc/<pid>/cgroup`
/// names, which the kernel's cgroup id of the process's events is the id of.
fn cgroup2_dir(pid: u32) -> anyhow::Result<PathBuf> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .with_context(|| format!("no cgroup2 line for {pid}: {text}"))?;
    let root = cgroup2_mount().context("no cgroup2 mount")?;
    Ok(root.join(path.trim_start_matches('/')))
}

/// Removes a pod's cgroup directory `parent` and everything below it in every hierarchy,
/// deepest first, ending what is left in them (the pod's uid is the test's own, so only its
/// processes can be there); then the parents while they are empty.
fn remove_pod_cgroups(parent: &str) {
    let rel = parent.trim_matches('/');
    let mut below = BTreeSet::new();
    for root in mounts(|_, fstype| fstype == "cgroup" || fstype == "cgroup2") {
        directories_below(&root, &root.join(rel), &mut below);
    }
    let mut below: Vec<PathBuf> = below.into_iter().collect();
    below.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for path in below {
        remove_cgroup(&path.to_string_lossy());
    }
    remove_cgroup(parent);
}

/// Adds every directory below `dir` to `out`, relative to `root`.
fn directories_below(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let path = entry.path();
            directories_below(root, &path, out);
            if let Ok(rel) = path.strip_prefix(root) {
                out.insert(rel.to_owned());
            }
        }
    }
}
