//! One capture, start to end: resolve the target, pause, read `/proc`, ask the runtime for
//! inspect, top, diff, logs, the filesystem and a commit, thaw, seal the manifest, upload.
//!
//! Order follows volatility: the process state is read first, right after the freeze, the disk
//! last. Nothing is executed inside the container at any step.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use regex::Regex;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::{
    EvidenceError,
    bundle::{Bundle, Collector, FORMAT, Manifest, TargetInfo},
    config::EvidenceConfig,
    docker::DockerRuntime,
    limits::Budget,
    procfs,
    runtime::{ByteStream, ContainerRuntime, RuntimeKind, detect},
    signing::Sealer,
    store::{S3Store, UploadReport},
};
use crate::event::Event;

/// What to capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A container id (or name) known to the Docker socket.
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

fn now() -> String {
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

/// An image repository name for the incident: Docker references allow lowercase letters,
/// digits and single separators.
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
    let started = Instant::now();
    let mut budget = Budget::new(&config.limits, started);
    let secret = Regex::new(&config.redact_env).map_err(|source| EvidenceError::Redact {
        source: Box::new(source),
    })?;
    let cgroup2 = crate::cgroup::cgroup2_mount().ok_or(EvidenceError::NoCgroup2)?;

    // Resolve the target: a runtime (if one is reachable) and the cgroup directory.
    let mut runtime: Option<DockerRuntime> = None;
    let mut runtime_missing: Option<String> = None;
    let (container_id, runtime_kind, cgroup_dir) = match &request.target {
        Target::Container(id) => {
            let docker = DockerRuntime::connect(&config.docker_socket).await?;
            let info = docker.inspect(id).await?;
            let full_id = info["Id"].as_str().unwrap_or(id).to_owned();
            let pid = info["State"]["Pid"].as_u64().unwrap_or(0) as u32;
            if pid == 0 {
                return Err(EvidenceError::NotRunning(full_id));
            }
            let dir =
                procfs::process_cgroup(&cgroup2, pid).map_err(|source| EvidenceError::Cgroup {
                    path: PathBuf::from(format!("/proc/{pid}/cgroup")),
                    source,
                })?;
            runtime = Some(docker);
            (Some(full_id), RuntimeKind::Docker, dir)
        }
        Target::Cgroup(path) => {
            let dir = if path.is_absolute() {
                path.clone()
            } else {
                cgroup2.join(path)
            };
            if !dir.join("cgroup.procs").exists() {
                return Err(EvidenceError::Cgroup {
                    path: dir,
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "not a cgroup2 directory",
                    ),
                });
            }
            let rel = dir.strip_prefix(&cgroup2).unwrap_or(&dir).to_string_lossy();
            let hint = detect(&format!("/{rel}"));
            let kind = hint.as_ref().map_or(RuntimeKind::Unknown, |h| h.kind);
            match (&hint, kind) {
                (Some(hint), RuntimeKind::Docker | RuntimeKind::Unknown) => {
                    match DockerRuntime::connect(&config.docker_socket).await {
                        Ok(docker) => match docker.inspect(&hint.container_id).await {
                            Ok(_) => runtime = Some(docker),
                            Err(err) => {
                                runtime_missing =
                                    Some(format!("the Docker socket does not know it: {err}"));
                            }
                        },
                        Err(err) => runtime_missing = Some(err.to_string()),
                    }
                }
                (Some(_), other) => {
                    runtime_missing = Some(format!(
                        "runtime {other}: this collector speaks only the Docker Engine API, and \
                         {other} has no Docker socket; only the node-side /proc artifacts are captured"
                    ));
                }
                (None, _) => {
                    runtime_missing =
                        Some("the cgroup path names no container, so no runtime was asked".into());
                }
            }
            let kind = if runtime.is_some() {
                RuntimeKind::Docker
            } else {
                kind
            };
            (hint.map(|h| h.container_id), kind, dir)
        }
    };

    let incident = request
        .incident
        .clone()
        .unwrap_or_else(|| format!("manual-{}", OffsetDateTime::now_utc().unix_timestamp()));
    let manifest = Manifest {
        format: FORMAT,
        incident: incident.clone(),
        collector: Collector::this(),
        node: node_name(config),
        target: TargetInfo {
            container_id: container_id.clone(),
            cgroup: Some(format!(
                "/{}",
                cgroup_dir
                    .strip_prefix(&cgroup2)
                    .unwrap_or(&cgroup_dir)
                    .display()
            )),
            runtime: runtime_kind.to_string(),
            runtime_used: runtime.is_some(),
        },
        started_at: now(),
        finished_at: String::new(),
        complete: false,
        incomplete_reasons: Vec::new(),
        artifacts: Vec::new(),
        not_captured: Vec::new(),
        actions: Vec::new(),
        trust: Default::default(),
    };
    let mut bundle = Bundle::create(out_dir, &incident, manifest)?;
    let limits = &config.limits;

    // Freeze first, so that nothing changes while it is read.
    let mut paused_by_us = false;
    if let (Some(docker), Some(id)) = (&runtime, &container_id) {
        if config.pause {
            let result = docker.pause(id).await;
            paused_by_us = result.is_ok();
            bundle.action(
                "pause",
                now(),
                result.map(|()| "paused".into()).map_err(|e| e.to_string()),
            );
        } else {
            bundle.incomplete(
                "container not paused (evidence.pause is off): it kept running during capture",
            );
        }
    }

    // Volatile state from /proc.
    let art = budget.artifact(limits.artifact_bytes, Instant::now());
    match procfs::collect(
        &cgroup2,
        &cgroup_dir,
        &secret,
        limits.exe_hash_bytes,
        art.deadline,
    ) {
        Ok(collected) => {
            let text = serde_json::to_vec_pretty(&collected.processes).unwrap_or_default();
            let a = bundle.add(
                "proc/processes.json",
                "procfs:/proc/PID/{status,cmdline,environ,exe,cwd,root,fd,net/*}",
                &text,
                art.max_bytes,
                now(),
            )?;
            budget.spend(a.size);
            if let Some(reason) = collected.cut_short {
                bundle.incomplete(format!("proc/processes.json: {reason}"));
            }
            for (pid, maps) in collected.maps {
                let art = budget.artifact(limits.artifact_bytes, Instant::now());
                let a = bundle.add(
                    &format!("proc/{pid}/maps"),
                    &format!("procfs:/proc/{pid}/maps"),
                    &maps,
                    art.max_bytes,
                    now(),
                )?;
                budget.spend(a.size);
            }
        }
        Err(err) => bundle.not_captured(
            "proc/processes.json",
            format!("cannot read the cgroup: {err}"),
        ),
    }

    // Recent events from the daemon's ring.
    match &request.recent_events {
        Some(events) => {
            let mut text = Vec::new();
            for event in events {
                text.extend(serde_json::to_vec(event).unwrap_or_default());
                text.push(b'\n');
            }
            let art = budget.artifact(limits.artifact_bytes, Instant::now());
            let a = bundle.add(
                "events.jsonl",
                "detector:recent-events",
                &text,
                art.max_bytes,
                now(),
            )?;
            budget.spend(a.size);
        }
        None => bundle.not_captured(
            "events.jsonl",
            "manual capture: the daemon's recent-event ring is not in this process",
        ),
    }

    // What only the runtime can give.
    const RUNTIME_ARTIFACTS: [&str; 6] = [
        "runtime/inspect.json",
        "runtime/top.json",
        "runtime/changes.json",
        "runtime/container.log",
        "runtime/filesystem.tar",
        "runtime/commit.json",
    ];
    match (&runtime, &container_id) {
        (Some(docker), Some(id)) => {
            let source = |what: &str| format!("{}/containers/{id}/{what}", docker.endpoint());
            let json =
                |value: serde_json::Value| serde_json::to_vec_pretty(&value).unwrap_or_default();
            let art = budget.artifact(limits.artifact_bytes, Instant::now());
            match within(art.deadline, docker.inspect(id)).await {
                Ok(Ok(v)) => {
                    let a = bundle.add(
                        RUNTIME_ARTIFACTS[0],
                        &source("json"),
                        &json(v),
                        art.max_bytes,
                        now(),
                    )?;
                    budget.spend(a.size);
                }
                Ok(Err(e)) => bundle.not_captured(RUNTIME_ARTIFACTS[0], e.to_string()),
                Err(()) => bundle.not_captured(RUNTIME_ARTIFACTS[0], art.time_reason()),
            }
            let art = budget.artifact(limits.artifact_bytes, Instant::now());
            match within(art.deadline, docker.top(id)).await {
                Ok(Ok(v)) => {
                    let a = bundle.add(
                        RUNTIME_ARTIFACTS[1],
                        &source("top"),
                        &json(v),
                        art.max_bytes,
                        now(),
                    )?;
                    budget.spend(a.size);
                }
                Ok(Err(e)) => bundle.not_captured(RUNTIME_ARTIFACTS[1], e.to_string()),
                Err(()) => bundle.not_captured(RUNTIME_ARTIFACTS[1], art.time_reason()),
            }
            let art = budget.artifact(limits.artifact_bytes, Instant::now());
            match within(art.deadline, docker.changes(id)).await {
                Ok(Ok(changes)) => {
                    let text = serde_json::to_vec_pretty(&changes).unwrap_or_default();
                    let a = bundle.add(
                        RUNTIME_ARTIFACTS[2],
                        &source("changes"),
                        &text,
                        art.max_bytes,
                        now(),
                    )?;
                    budget.spend(a.size);
                }
                Ok(Err(e)) => bundle.not_captured(RUNTIME_ARTIFACTS[2], e.to_string()),
                Err(()) => bundle.not_captured(RUNTIME_ARTIFACTS[2], art.time_reason()),
            }
            stream_artifact(
                &mut bundle,
                &mut budget,
                RUNTIME_ARTIFACTS[3],
                &source("logs"),
                limits.logs_bytes,
                docker.logs(id),
            )
            .await?;
            if config.export {
                stream_artifact(
                    &mut bundle,
                    &mut budget,
                    RUNTIME_ARTIFACTS[4],
                    &source("export"),
                    limits.export_bytes,
                    docker.export(id),
                )
                .await?;
            } else {
                bundle.not_captured(RUNTIME_ARTIFACTS[4], "evidence.export is off");
            }
            if config.commit {
                let repo = image_repo(&incident);
                let tag = id.chars().take(12).collect::<String>();
                let comment = format!("evidence of incident {incident}, container {id}");
                let art = budget.artifact(limits.artifact_bytes, Instant::now());
                match within(art.deadline, docker.commit(id, &repo, &tag, &comment)).await {
                    Ok(Ok(image)) => {
                        let record = serde_json::json!({ "image": format!("{repo}:{tag}"), "id": image, "container": id });
                        bundle.action("commit", now(), Ok(format!("{repo}:{tag} {image}")));
                        let a = bundle.add(
                            RUNTIME_ARTIFACTS[5],
                            &format!("{}/commit", docker.endpoint()),
                            &json(record),
                            art.max_bytes,
                            now(),
                        )?;
                        budget.spend(a.size);
                    }
                    Ok(Err(e)) => {
                        bundle.action("commit", now(), Err(e.to_string()));
                        bundle.not_captured(RUNTIME_ARTIFACTS[5], e.to_string());
                    }
                    Err(()) => bundle.not_captured(RUNTIME_ARTIFACTS[5], art.time_reason()),
                }
            } else {
                bundle.not_captured(RUNTIME_ARTIFACTS[5], "evidence.commit is off");
            }
            if paused_by_us && config.unpause {
                let result = docker.unpause(id).await;
                bundle.action(
                    "unpause",
                    now(),
                    result
                        .map(|()| "unpaused".into())
                        .map_err(|e| e.to_string()),
                );
            }
        }
        _ => {
            let reason = runtime_missing.unwrap_or_else(|| "no runtime".into());
            for artifact in RUNTIME_ARTIFACTS {
                bundle.not_captured(artifact, reason.clone());
            }
        }
    }
    if let Some(reason) = budget.exhausted(Instant::now()) {
        bundle.incomplete(reason);
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

/// Runs `future` until `deadline`; `Err(())` when it ran out of time.
async fn within<T>(
    deadline: Instant,
    future: impl std::future::Future<Output = T>,
) -> Result<T, ()> {
    tokio::time::timeout_at(deadline.into(), future)
        .await
        .map_err(|_| ())
}

/// Streams a runtime artifact to disk within its size and time budgets; a cut or failed
/// stream leaves a partial artifact that says why.
async fn stream_artifact(
    bundle: &mut Bundle,
    budget: &mut Budget,
    rel: &str,
    source: &str,
    own_limit: u64,
    mut stream: ByteStream<'_>,
) -> Result<(), EvidenceError> {
    let art = budget.artifact(own_limit, Instant::now());
    let mut writer = bundle.writer(rel, source, art.max_bytes)?;
    let mut partial = None;
    loop {
        match tokio::time::timeout_at(art.deadline.into(), stream.next()).await {
            Ok(Some(Ok(chunk))) => {
                if !writer.write(&chunk)? {
                    break;
                }
            }
            Ok(Some(Err(err))) => {
                partial = Some(format!("stream failed: {err}"));
                break;
            }
            Ok(None) => break,
            Err(_) => {
                partial = Some(art.time_reason());
                break;
            }
        }
    }
    budget.spend(writer.written());
    bundle.finish(writer, partial, || art.size_reason(), now())?;
    Ok(())
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
