//! One capture, start to end: resolve the target, freeze its cgroup, run the steps (one
//! artifact each, see [`super::steps`]), thaw, seal the manifest, upload.
//!
//! The freeze is the cgroup freezer's, whatever runs the container: a [`FreezeGuard`] thaws it
//! on every way out, an error or a panic in a step included. The runtime's API, when one
//! answers for the container, only adds what the runtime alone knows; nothing is executed
//! inside the container at any step.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use regex::Regex;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::{
    EvidenceError,
    bundle::{Bundle, Manifest, Reference, TargetInfo},
    config::EvidenceConfig,
    containerd::ContainerdRuntime,
    cri::CriRuntime,
    docker::DockerRuntime,
    freezer::{self, FreezeGuard},
    limits::Budget,
    procfs,
    runtime::{ContainerRuntime, RuntimeKind, detect},
    signing::Sealer,
    steps::{Run, blocking},
    store::{S3Store, UploadReport},
};
use crate::event::Event;

/// How long the freezer may take to stop every task of the container.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

/// What to capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A container id known to a runtime (containerd, CRI-O, Docker), or a Docker name.
    Container(String),
    /// A cgroup2 directory: absolute, or relative to the cgroup2 mount.
    Cgroup(PathBuf),
}

/// A capture request.
#[derive(Debug, Clone)]
pub struct CaptureRequest {
    /// What to capture.
    pub target: Target,
    /// Incident id; `manual-<unix time>` when unset.
    pub incident: Option<String>,
    /// Recent events of the target's cgroups from the daemon's ring; `None` when there is no
    /// ring in this process (a manual capture).
    pub recent_events: Option<Vec<Event>>,
}

/// The result of a capture.
#[derive(Debug)]
pub struct Outcome {
    /// The local bundle directory (removed when uploaded with `delete_local_after_upload`).
    pub dir: PathBuf,
    /// The sealed manifest.
    pub manifest: Manifest,
    /// Wall time of the capture, manifest included, upload excluded.
    pub elapsed: Duration,
    /// The upload, when object storage is configured.
    pub upload: Option<UploadReport>,
}

/// The target, resolved: its cgroup, the container it is, and the runtime that answers for it.
pub struct Subject {
    /// The cgroup2 directory.
    pub cgroup_dir: PathBuf,
    /// The container id, when the cgroup path or the runtime names one.
    pub container_id: Option<String>,
    /// The runtime the cgroup path names.
    pub kind: RuntimeKind,
    /// The runtime's API, when it answers for the container.
    pub runtime: Option<Box<dyn ContainerRuntime>>,
    /// Why no runtime answers, when none does.
    pub runtime_missing: Option<String>,
}

pub(super) fn now() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// The node's name: configured, else `NODE_NAME`, else the hostname.
pub fn node_name(config: &EvidenceConfig) -> String {
    config
        .node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// An image repository name for the incident: references allow lowercase letters, digits
/// and single separators.
pub fn image_repo(incident: &str) -> String {
    let mut out = String::from("evidence-");
    for c in incident.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_owned()
}

/// Captures evidence of one container or cgroup into `<out_dir>/<incident>/`.
pub async fn capture(
    config: &EvidenceConfig,
    out_dir: &Path,
    request: CaptureRequest,
) -> Result<Outcome, EvidenceError> {
    capture_with(config, out_dir, request, async { Vec::new() }).await
}

/// [`capture`], with the evidence kept outside the bundle that `references` names once the
/// capture is done (awaited just before the manifest is sealed).
pub async fn capture_with(
    config: &EvidenceConfig,
    out_dir: &Path,
    request: CaptureRequest,
    references: impl Future<Output = Vec<Reference>>,
) -> Result<Outcome, EvidenceError> {
    let started = Instant::now();
    let secret = Regex::new(&config.redact_env).map_err(|source| EvidenceError::Redact {
        source: Box::new(source),
    })?;
    let cgroup2 = crate::cgroup::cgroup2_mount().ok_or(EvidenceError::NoCgroup2)?;
    let subject = Subject::resolve(config, &cgroup2, &request.target).await?;
    let incident = request
        .incident
        .clone()
        .unwrap_or_else(|| format!("manual-{}", OffsetDateTime::now_utc().unix_timestamp()));
    let manifest = subject.manifest(config, &cgroup2, &incident);
    let bundle = Bundle::create(out_dir, &incident, manifest)?;
    let mut run = Run {
        config,
        cgroup2,
        subject,
        incident,
        secret,
        budget: Budget::new(&config.limits, started),
        bundle,
        recent_events: request.recent_events,
    };

    // Freeze first, so that nothing changes while it is read; thawed whatever the steps did
    // (a panic in one included: the guard's drop thaws).
    let frozen = freeze(&mut run).await;
    run.steps().await;
    thaw(&mut run, frozen).await;

    let Run {
        mut bundle,
        budget,
        incident,
        ..
    } = run;
    if let Some(reason) = budget.exhausted(Instant::now()) {
        bundle.incomplete(reason);
    }
    for reference in references.await {
        bundle.reference(reference);
    }
    let sealer = Sealer::load(config.signing_key.as_deref());
    let (dir, manifest) = bundle.seal(now(), &sealer)?;
    let elapsed = started.elapsed();
    let upload = match &config.s3 {
        Some(s3) => Some(
            S3Store::new(s3)?
                .upload(&dir, &incident, config.delete_local_after_upload)
                .await?,
        ),
        None => None,
    };
    Ok(Outcome {
        dir,
        manifest,
        elapsed,
        upload,
    })
}

/// Freezes the subject's cgroup when `evidence.pause` asks for it, recording the action.
async fn freeze(run: &mut Run<'_>) -> Option<FreezeGuard> {
    if !run.config.pause {
        run.bundle.incomplete(
            "container not frozen (evidence.pause is off): it kept running during capture",
        );
        return None;
    }
    let dir = run.subject.cgroup_dir.clone();
    let result = blocking(move || freezer::freeze(&dir, FREEZE_TIMEOUT)).await;
    match result {
        Ok(guard) => {
            let detail = if guard.was_frozen() {
                "frozen already (left frozen afterwards)".to_owned()
            } else {
                format!("frozen ({:?} freezer)", guard.freezer())
            };
            run.bundle.action("freeze", now(), Ok(detail));
            Some(guard)
        }
        Err(err) => {
            run.bundle.action("freeze", now(), Err(err.to_string()));
            run.bundle.incomplete(format!(
                "container not frozen: {err}; it ran during capture"
            ));
            None
        }
    }
}

/// Thaws what [`freeze`] froze, unless `evidence.unpause` is off (containment decides).
async fn thaw(run: &mut Run<'_>, frozen: Option<FreezeGuard>) {
    let Some(guard) = frozen else { return };
    if guard.was_frozen() {
        return;
    }
    if !run.config.unpause {
        guard.keep();
        run.bundle.action(
            "thaw",
            now(),
            Ok("left frozen (evidence.unpause is off)".into()),
        );
        return;
    }
    let result = blocking(move || guard.thaw()).await;
    run.bundle.action(
        "thaw",
        now(),
        result.map(|()| "running".into()).map_err(|e| e.to_string()),
    );
}

impl Subject {
    /// Resolves `target`: its cgroup directory, the container it is and the runtime that
    /// answers for it. Only a container id that the runtime does not know is an error; a
    /// cgroup whose runtime does not answer is captured from the node alone.
    async fn resolve(
        config: &EvidenceConfig,
        cgroup2: &Path,
        target: &Target,
    ) -> Result<Self, EvidenceError> {
        match target {
            Target::Container(id) => Self::of_container(config, cgroup2, id).await,
            Target::Cgroup(path) => Self::of_cgroup(config, cgroup2, path).await,
        }
    }

    /// A container named by its id (or, on Docker, its name): the runtime that knows it says
    /// which process is its first, whose cgroup is the container's.
    async fn of_container(
        config: &EvidenceConfig,
        cgroup2: &Path,
        id: &str,
    ) -> Result<Self, EvidenceError> {
        // Docker first: only it resolves a name.
        let order = [
            RuntimeKind::Docker,
            RuntimeKind::Containerd,
            RuntimeKind::Crio,
        ];
        let (found, why) = find_runtime(config, &order, id).await;
        let Some((kind, runtime)) = found else {
            return Err(EvidenceError::UnknownContainer {
                id: id.to_owned(),
                why,
            });
        };
        let info = runtime.inspect(id).await?;
        let full_id = info["Id"]
            .as_str()
            .or_else(|| info["containerd"]["container"]["id"].as_str())
            .or_else(|| info["cri"]["status"]["id"].as_str())
            .unwrap_or(id)
            .to_owned();
        let pid = [
            &info["State"]["Pid"],
            &info["containerd"]["task"]["pid"],
            &info["cri"]["info"]["info"]["pid"],
        ]
        .into_iter()
        .find_map(serde_json::Value::as_u64)
        .unwrap_or(0) as u32;
        if pid == 0 {
            return Err(EvidenceError::NotRunning(full_id));
        }
        let cgroup_dir =
            procfs::process_cgroup(cgroup2, pid).map_err(|source| EvidenceError::Cgroup {
                path: PathBuf::from(format!("/proc/{pid}/cgroup")),
                source,
            })?;
        Ok(Self {
            cgroup_dir,
            container_id: Some(full_id),
            kind,
            runtime: Some(runtime),
            runtime_missing: None,
        })
    }

    async fn of_cgroup(
        config: &EvidenceConfig,
        cgroup2: &Path,
        path: &Path,
    ) -> Result<Self, EvidenceError> {
        let cgroup_dir = if path.is_absolute() {
            path.to_owned()
        } else {
            cgroup2.join(path)
        };
        if !cgroup_dir.join("cgroup.procs").exists() {
            return Err(EvidenceError::Cgroup {
                path: cgroup_dir,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "not a cgroup2 directory",
                ),
            });
        }
        let rel = cgroup_dir.strip_prefix(cgroup2).unwrap_or(&cgroup_dir);
        let Some(hint) = detect(&format!("/{}", rel.to_string_lossy())) else {
            return Ok(Self {
                cgroup_dir,
                container_id: None,
                kind: RuntimeKind::Unknown,
                runtime: None,
                runtime_missing: Some(
                    "the cgroup path names no container, so no runtime was asked".into(),
                ),
            });
        };
        let (found, why) = find_runtime(config, candidates(hint.kind), &hint.container_id).await;
        let (kind, runtime, runtime_missing) = match found {
            Some((kind, runtime)) => (kind, Some(runtime), None),
            None => (hint.kind, None, Some(why)),
        };
        Ok(Self {
            cgroup_dir,
            container_id: Some(hint.container_id),
            kind,
            runtime,
            runtime_missing,
        })
    }

    /// The manifest a capture of this subject starts from.
    fn manifest(&self, config: &EvidenceConfig, cgroup2: &Path, incident: &str) -> Manifest {
        let cgroup = self
            .cgroup_dir
            .strip_prefix(cgroup2)
            .unwrap_or(&self.cgroup_dir);
        let target = TargetInfo {
            container_id: self.container_id.clone(),
            cgroup: Some(format!("/{}", cgroup.display())),
            runtime: self.kind.to_string(),
            runtime_used: self.runtime.is_some(),
        };
        Manifest::new(incident, node_name(config), target, now())
    }
}

/// The runtimes to ask about a container whose cgroup path names `kind`: that one, or when
/// the path names none (the kubelet's cgroupfs layout) every runtime a node may run, the
/// kubelet's first.
fn candidates(kind: RuntimeKind) -> &'static [RuntimeKind] {
    match kind {
        RuntimeKind::Docker => &[RuntimeKind::Docker],
        RuntimeKind::Containerd => &[RuntimeKind::Containerd],
        RuntimeKind::Crio => &[RuntimeKind::Crio],
        RuntimeKind::Podman => &[],
        RuntimeKind::Unknown => &[
            RuntimeKind::Containerd,
            RuntimeKind::Crio,
            RuntimeKind::Docker,
        ],
    }
}

/// The first of `candidates` that knows container `id`; without one, why each said no.
async fn find_runtime(
    config: &EvidenceConfig,
    candidates: &[RuntimeKind],
    id: &str,
) -> (Option<(RuntimeKind, Box<dyn ContainerRuntime>)>, String) {
    let mut why = Vec::new();
    for &candidate in candidates {
        match ask(config, candidate, id).await {
            Ok(runtime) => return (Some((candidate, runtime)), String::new()),
            Err(reason) => why.push(reason),
        }
    }
    if why.is_empty() {
        why.push("no API of this runtime is asked; the node-side artifacts are captured".into());
    }
    (None, why.join("; "))
}

/// Runtime `kind` at its configured socket, when it knows container `id`; else why not.
async fn ask(
    config: &EvidenceConfig,
    kind: RuntimeKind,
    id: &str,
) -> Result<Box<dyn ContainerRuntime>, String> {
    match kind {
        RuntimeKind::Docker => {
            let docker = DockerRuntime::connect(&config.docker_socket)
                .await
                .map_err(|err| err.to_string())?;
            match docker.inspect(id).await {
                Ok(_) => Ok(Box::new(docker)),
                Err(err) => Err(format!("the Docker socket does not know it: {err}")),
            }
        }
        RuntimeKind::Containerd => {
            let socket = &config.containerd_socket;
            match ContainerdRuntime::find(socket, &config.host_root, id).await {
                Ok(Some(containerd)) => Ok(Box::new(containerd)),
                Ok(None) => Err(format!(
                    "containerd at {} has it in no namespace",
                    socket.display()
                )),
                Err(err) => Err(err.to_string()),
            }
        }
        RuntimeKind::Crio => {
            let socket = &config.crio_socket;
            let cri = CriRuntime::connect("cri-o", socket, &config.host_root)
                .await
                .map_err(|err| err.to_string())?;
            match cri.knows(id).await {
                Ok(true) => Ok(Box::new(cri)),
                Ok(false) => Err(format!("CRI-O at {} does not know it", socket.display())),
                Err(err) => Err(err.to_string()),
            }
        }
        RuntimeKind::Podman | RuntimeKind::Unknown => Err(format!("runtime {kind}: no API to ask")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_are_valid_references() {
        assert_eq!(image_repo("INC_42/x..y"), "evidence-inc-42-x-y");
        assert_eq!(
            image_repo("manual-1700000000"),
            "evidence-manual-1700000000"
        );
    }
}
