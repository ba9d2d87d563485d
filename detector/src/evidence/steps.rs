//! The steps of a capture, one artifact each, in order of volatility: the processes first,
//! right after the freeze, the disk last.
//!
//! What concerns the container's filesystem is read from the node, whatever runs the
//! container: the changed files and the preserved image from its overlay layers
//! ([`super::overlay`], [`super::oci`]), the export through `/proc/<pid>/root`
//! ([`super::fsexport`]). The runtime's API adds what only it knows: its inspect record, `top`
//! and the logs. A step that cannot be done is listed as not captured, with the reason; only a
//! failure to write the bundle itself ends the capture. The blocking steps (`/proc`, the
//! filesystem walks) run off the async workers.

use std::{
    io::{self, Write},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Instant,
};

use futures::StreamExt as _;
use regex::Regex;
use serde_json::json;

use super::{
    EvidenceError,
    bundle::{ArtifactWriter, Bundle, BundleError},
    capture::{Subject, image_repo, now},
    config::EvidenceConfig,
    fsexport::{self, Truncated},
    limits::{ArtifactBudget, Budget},
    oci::{self, ImageMeta},
    overlay::{self, OverlayLayers},
    procfs,
    runtime::ByteStream,
};
use crate::event::Event;

/// Most entries of the changed-file list.
const CHANGES_LIMIT: usize = 100_000;

/// A capture in progress: what it captures and the bundle it fills.
pub struct Run<'a> {
    /// The evidence configuration.
    pub config: &'a EvidenceConfig,
    /// The cgroup2 mount.
    pub cgroup2: PathBuf,
    /// The target, resolved.
    pub subject: Subject,
    /// The incident id, the bundle's name.
    pub incident: String,
    /// Environment variables whose name matches are redacted.
    pub secret: Regex,
    /// What is left of the incident's size and time budget.
    pub budget: Budget,
    /// The bundle being filled.
    pub bundle: Bundle,
    /// The daemon's recent events of the target, when the capture runs in the daemon.
    pub recent_events: Option<Vec<Event>>,
}

/// One artifact of a capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `/proc` state of every process of the cgroup, and their memory maps.
    Processes,
    /// The daemon's events of the target before the verdict.
    Events,
    /// The runtime's record of the container.
    Inspect,
    /// The runtime's process list.
    Top,
    /// Files added, changed and deleted, from the overlay's upper layer.
    Changes,
    /// The container's output, from the runtime.
    Logs,
    /// The container's filesystem as a tar.
    Filesystem,
    /// The container preserved as an OCI image.
    Image,
}

impl Step {
    /// Every step, in the order they run.
    pub const ALL: [Self; 8] = [
        Self::Processes,
        Self::Events,
        Self::Inspect,
        Self::Top,
        Self::Changes,
        Self::Logs,
        Self::Filesystem,
        Self::Image,
    ];

    /// The artifact's path in the bundle.
    pub fn artifact(self) -> &'static str {
        match self {
            Self::Processes => "proc/processes.json",
            Self::Events => "events.jsonl",
            Self::Inspect => "runtime/inspect.json",
            Self::Top => "runtime/top.json",
            Self::Changes => "node/changes.json",
            Self::Logs => "runtime/container.log",
            Self::Filesystem => "node/filesystem.tar",
            Self::Image => "node/image.oci.tar",
        }
    }
}

impl Run<'_> {
    /// Runs every step. One whose artifact cannot be written (a full disk) is given up, its
    /// partial file removed and the reason listed, and the next runs: the bundle still says
    /// what failed, and the container is thawed after the last.
    pub async fn steps(&mut self) {
        for step in Step::ALL {
            if let Err(err) = self.step(step).await {
                // The file that failed, which may be another of the step's than its main one
                // (a process's maps).
                let failed = match &err {
                    EvidenceError::Bundle(BundleError::Io { path, .. }) => path
                        .strip_prefix(self.bundle.dir())
                        .ok()
                        .map(|rel| rel.to_string_lossy().into_owned()),
                    _ => None,
                };
                let rel = failed.as_deref().unwrap_or(step.artifact()).to_owned();
                tracing::warn!(
                    incident = self.incident,
                    artifact = rel,
                    "evidence artifact given up: {err}"
                );
                self.bundle.discard(&rel, err.to_string());
            }
        }
    }

    async fn step(&mut self, step: Step) -> Result<(), EvidenceError> {
        match step {
            Step::Processes => self.processes().await,
            Step::Events => self.events(),
            Step::Inspect | Step::Top => self.runtime_json(step).await,
            Step::Changes => self.changes().await,
            Step::Logs => self.logs().await,
            Step::Filesystem => self.filesystem().await,
            Step::Image => self.image().await,
        }
    }

    fn artifact_budget(&self, own_limit: u64) -> ArtifactBudget {
        self.budget.artifact(own_limit, Instant::now())
    }

    /// Writes a whole in-memory artifact within its budget.
    fn add(&mut self, rel: &str, source: &str, content: &[u8]) -> Result<(), EvidenceError> {
        let art = self.artifact_budget(self.config.limits.artifact_bytes);
        let added = self
            .bundle
            .add(rel, source, content, art.max_bytes, now())?;
        self.budget.spend(added.size);
        Ok(())
    }

    async fn processes(&mut self) -> Result<(), EvidenceError> {
        let rel = Step::Processes.artifact();
        let art = self.artifact_budget(self.config.limits.artifact_bytes);
        let (cgroup2, dir, secret) = (
            self.cgroup2.clone(),
            self.subject.cgroup_dir.clone(),
            self.secret.clone(),
        );
        let exe_hash_bytes = self.config.limits.exe_hash_bytes;
        let collected = blocking(move || {
            procfs::collect(&cgroup2, &dir, &secret, exe_hash_bytes, art.deadline)
        })
        .await;
        let collected = match collected {
            Ok(collected) => collected,
            Err(err) => {
                self.bundle
                    .not_captured(rel, format!("cannot read the cgroup: {err}"));
                return Ok(());
            }
        };
        let text = serde_json::to_vec_pretty(&collected.processes).unwrap_or_default();
        self.add(
            rel,
            "procfs:/proc/PID/{status,cmdline,environ,exe,cwd,root,fd,net/*}",
            &text,
        )?;
        if let Some(reason) = collected.cut_short {
            self.bundle.incomplete(format!("{rel}: {reason}"));
        }
        for (pid, maps) in collected.maps {
            self.add(
                &format!("proc/{pid}/maps"),
                &format!("procfs:/proc/{pid}/maps"),
                &maps,
            )?;
        }
        Ok(())
    }

    fn events(&mut self) -> Result<(), EvidenceError> {
        let rel = Step::Events.artifact();
        let Some(events) = self.recent_events.take() else {
            self.bundle.not_captured(
                rel,
                "manual capture: the daemon's recent-event ring is not in this process",
            );
            return Ok(());
        };
        let mut text = Vec::new();
        for event in &events {
            text.extend(serde_json::to_vec(event).unwrap_or_default());
            text.push(b'\n');
        }
        self.add(rel, "detector:recent-events", &text)
    }

    /// `inspect` or `top` from the runtime's API.
    async fn runtime_json(&mut self, step: Step) -> Result<(), EvidenceError> {
        let rel = step.artifact();
        let (Some(runtime), Some(id)) = (&self.subject.runtime, &self.subject.container_id) else {
            self.bundle.not_captured(rel, self.no_runtime());
            return Ok(());
        };
        let art = self.artifact_budget(self.config.limits.artifact_bytes);
        let (answer, what) = if step == Step::Inspect {
            (within(art.deadline, runtime.inspect(id)).await, "json")
        } else {
            (within(art.deadline, runtime.top(id)).await, "top")
        };
        let source = format!("{}/containers/{id}/{what}", runtime.endpoint());
        match answer {
            Ok(Ok(mut value)) => {
                procfs::redact_environ_json(&mut value, &self.secret);
                let text = serde_json::to_vec_pretty(&value).unwrap_or_default();
                self.add(rel, &source, &text)?;
            }
            Ok(Err(err)) => self.bundle.not_captured(rel, err.to_string()),
            Err(()) => self.bundle.not_captured(rel, art.time_reason()),
        }
        Ok(())
    }

    async fn logs(&mut self) -> Result<(), EvidenceError> {
        let rel = Step::Logs.artifact();
        let (Some(runtime), Some(id)) = (&self.subject.runtime, &self.subject.container_id) else {
            self.bundle.not_captured(rel, self.no_runtime());
            return Ok(());
        };
        let source = format!("{}/containers/{id}/logs", runtime.endpoint());
        let art = self.artifact_budget(self.config.limits.logs_bytes);
        let written =
            stream_artifact(&mut self.bundle, rel, &source, &art, runtime.logs(id)).await?;
        self.budget.spend(written);
        Ok(())
    }

    /// Why the runtime's artifacts are missing.
    fn no_runtime(&self) -> String {
        self.subject
            .runtime_missing
            .clone()
            .unwrap_or_else(|| "no runtime answers for the container".into())
    }

    /// A process of the container, whose root and mounts are the container's: the first of
    /// its cgroup.
    fn process(&self) -> Result<u32, String> {
        let pids = procfs::cgroup_pids(&self.cgroup2, &self.subject.cgroup_dir)
            .map_err(|err| format!("cannot list the cgroup's processes: {err}"))?;
        pids.first()
            .map(|(pid, _)| *pid)
            .ok_or_else(|| "no process left in the cgroup".into())
    }

    /// The overlay layers of the container's root filesystem.
    fn layers(&self) -> Result<OverlayLayers, String> {
        let pid = self.process()?;
        OverlayLayers::of_pid(pid, &self.config.host_root)
            .map_err(|err| format!("the container's root is not read from its layers: {err}"))
    }

    async fn changes(&mut self) -> Result<(), EvidenceError> {
        let rel = Step::Changes.artifact();
        let layers = match self.layers() {
            Ok(layers) => layers,
            Err(why) => {
                self.bundle.not_captured(rel, why);
                return Ok(());
            }
        };
        let host_root = self.config.host_root.clone();
        let source = format!("overlay:{}", layers.upper.display());
        let changes = blocking(move || overlay::changes(&layers, &host_root, CHANGES_LIMIT)).await;
        match changes {
            Ok(changes) => {
                let text = serde_json::to_vec_pretty(&changes.entries).unwrap_or_default();
                self.add(rel, &source, &text)?;
                if changes.truncated {
                    self.bundle
                        .incomplete(format!("{rel}: cut at {CHANGES_LIMIT} entries"));
                }
            }
            Err(err) => self.bundle.not_captured(rel, err.to_string()),
        }
        Ok(())
    }

    async fn filesystem(&mut self) -> Result<(), EvidenceError> {
        let rel = Step::Filesystem.artifact();
        if !self.config.export {
            self.bundle.not_captured(rel, "evidence.export is off");
            return Ok(());
        }
        let pid = match self.process() {
            Ok(pid) => pid,
            Err(why) => {
                self.bundle.not_captured(rel, why);
                return Ok(());
            }
        };
        if shares_host_root(&self.config.host_root, pid) {
            self.bundle.not_captured(
                rel,
                format!("process {pid} has the host's root: no container filesystem to export"),
            );
            return Ok(());
        }
        let root = self.config.host_root.join(format!("proc/{pid}/root"));
        let art = self.artifact_budget(self.config.limits.export_bytes);
        let writer = self
            .bundle
            .writer(rel, &format!("procfs:/proc/{pid}/root"), art.max_bytes)?;
        let (max_bytes, deadline) = (art.max_bytes, art.deadline);
        let (sink, exported) = blocking(move || {
            let mut sink = Sink::new(writer);
            let exported = fsexport::export_root(&root, &mut sink, max_bytes, deadline);
            (sink, exported)
        })
        .await;
        let writer = sink.finish()?;
        self.budget.spend(writer.written());
        let partial = match &exported {
            Ok(summary) => match summary.truncated {
                Some(Truncated::Size) => Some(art.size_reason()),
                Some(Truncated::Deadline) => Some(art.time_reason()),
                None => None,
            },
            Err(err) => Some(format!("export failed: {err}")),
        };
        self.bundle
            .finish(writer, partial, || art.size_reason(), now())?;
        if let Ok(summary) = exported {
            let record = json!({
                "entries": summary.entries,
                "bytes": summary.bytes,
                "skipped_mounts": summary.skipped_mounts,
                "unreadable": summary.unreadable,
            });
            let text = serde_json::to_vec_pretty(&record).unwrap_or_default();
            self.add("node/filesystem.json", "detector:export-summary", &text)?;
        }
        Ok(())
    }

    async fn image(&mut self) -> Result<(), EvidenceError> {
        let rel = Step::Image.artifact();
        if !self.config.commit {
            self.bundle.not_captured(rel, "evidence.commit is off");
            return Ok(());
        }
        let layers = match self.layers() {
            Ok(layers) => layers.under(&self.config.host_root),
            Err(why) => {
                self.bundle.not_captured(rel, why);
                return Ok(());
            }
        };
        let tag = self
            .subject
            .container_id
            .as_deref()
            .map_or_else(|| "latest".to_owned(), |id| id.chars().take(12).collect());
        let reference = format!("localhost/{}:{tag}", image_repo(&self.incident));
        let mut meta = ImageMeta::for_this_node(
            time::OffsetDateTime::now_utc(),
            &format!("evidence of incident {}", self.incident),
        );
        meta.labels
            .insert("detector.incident".into(), self.incident.clone());
        if let Some(id) = &self.subject.container_id {
            meta.labels.insert("detector.container".into(), id.clone());
        }
        let art = self.artifact_budget(self.config.limits.image_bytes);
        let writer = self.bundle.writer(
            rel,
            &format!("overlay:{}", layers.upper.display()),
            art.max_bytes,
        )?;
        let image_ref = reference.clone();
        // The layers are staged beside the bundle, on its disk, within the image's budget.
        let scratch = self.bundle.dir().to_owned();
        let max_bytes = art.max_bytes;
        let (sink, written) = blocking(move || {
            let mut sink = Sink::new(writer);
            let staging = oci::Staging {
                dir: &scratch,
                max_bytes,
            };
            let written = oci::write_image(
                &layers.lower,
                &layers.upper,
                &mut sink,
                &image_ref,
                &meta,
                staging,
            );
            (sink, written)
        })
        .await;
        let writer = sink.finish()?;
        self.budget.spend(writer.written());
        // An image cut short is not an image (its index comes last): it is given up, whatever
        // stopped it (the size limit, a full disk while its layers were staged).
        let failed = written
            .as_ref()
            .err()
            .map(|err| format!("image not complete: {err}"));
        self.bundle
            .finish(writer, None, || art.size_reason(), now())?;
        if let Some(reason) = failed {
            self.bundle.discard(rel, reason);
        }
        match written {
            Ok(summary) => {
                let layers: Vec<_> = summary
                    .layers
                    .iter()
                    .map(|l| json!({"source": l.source, "digest": l.digest, "size": l.size, "entries": l.entries}))
                    .collect();
                let record = json!({
                    "reference": reference,
                    "manifest_digest": summary.manifest_digest,
                    "config_digest": summary.config_digest,
                    "layers": layers,
                    "unreadable": summary.unreadable,
                });
                let text = serde_json::to_vec_pretty(&record).unwrap_or_default();
                self.add("node/image.json", "detector:image-summary", &text)?;
                self.bundle.action(
                    "image",
                    now(),
                    Ok(format!("{reference} {}", summary.manifest_digest)),
                );
            }
            Err(err) => self.bundle.action("image", now(), Err(err.to_string())),
        }
        Ok(())
    }
}

/// Whether process `pid`'s root directory is the host's own (pid 1's) or the daemon's: a
/// process outside any container, whose "filesystem" would be the whole node's. (Pid 1's may
/// be unreadable in a sandbox; the daemon's own is then the one compared.)
fn shares_host_root(host_root: &Path, pid: u32) -> bool {
    let root = |path: PathBuf| std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    let Some(theirs) = root(host_root.join(format!("proc/{pid}/root"))) else {
        return false;
    };
    [
        root(host_root.join("proc/1/root")),
        root(PathBuf::from("/proc/self/root")),
    ]
    .contains(&Some(theirs))
}

/// An artifact writer as an [`io::Write`] for the blocking writers (tar, OCI): the size limit
/// surfaces as an error, so that a writer never believes a cut archive complete, and a failure
/// to write the bundle (a full disk) is kept for [`Sink::finish`].
struct Sink {
    writer: ArtifactWriter,
    failed: Option<BundleError>,
}

impl Sink {
    fn new(writer: ArtifactWriter) -> Self {
        Self {
            writer,
            failed: None,
        }
    }

    /// The writer back, or the bundle's own failure, which gives the artifact up.
    fn finish(self) -> Result<ArtifactWriter, EvidenceError> {
        match self.failed {
            Some(err) => Err(err.into()),
            None => Ok(self.writer),
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.writer.write(buf) {
            Ok(true) => Ok(buf.len()),
            Ok(false) => Err(io::Error::other("the artifact's size limit was reached")),
            Err(err) => {
                let message = err.to_string();
                self.failed = Some(err);
                Err(io::Error::other(message))
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs blocking work off the async workers; a panic in it goes on in the caller.
pub(super) async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()))
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

/// Streams a runtime artifact to disk within its budget; a cut or failed stream leaves a
/// partial artifact that says why. Returns the bytes written.
async fn stream_artifact(
    bundle: &mut Bundle,
    rel: &str,
    source: &str,
    art: &ArtifactBudget,
    mut stream: ByteStream<'_>,
) -> Result<u64, EvidenceError> {
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
    let written = writer.written();
    bundle.finish(writer, partial, || art.size_reason(), now())?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::{
        bundle::{Manifest, TargetInfo},
        limits::Budget,
        runtime::{BoxFuture, ContainerRuntime, RuntimeError, RuntimeKind},
    };

    /// A runtime that answers from memory: what `inspect` returns, or that it fails; `top`
    /// never answers (a hung API).
    struct FakeRuntime {
        inspect: Result<serde_json::Value, String>,
        logs: Vec<&'static str>,
    }

    impl ContainerRuntime for FakeRuntime {
        fn name(&self) -> &'static str {
            "fake"
        }

        fn endpoint(&self) -> String {
            "fake:memory".into()
        }

        fn inspect<'a>(
            &'a self,
            _id: &'a str,
        ) -> BoxFuture<'a, Result<serde_json::Value, RuntimeError>> {
            let answer = self.inspect.clone().map_err(|message| RuntimeError::Api {
                runtime: "fake",
                operation: "inspect",
                source: message.into(),
            });
            Box::pin(async move { answer })
        }

        fn top<'a>(
            &'a self,
            _id: &'a str,
        ) -> BoxFuture<'a, Result<serde_json::Value, RuntimeError>> {
            Box::pin(futures::future::pending())
        }

        fn logs<'a>(&'a self, _id: &'a str) -> ByteStream<'a> {
            let chunks = self
                .logs
                .iter()
                .map(|c| Ok(bytes::Bytes::from_static(c.as_bytes())));
            futures::stream::iter(chunks).boxed()
        }
    }

    /// A run over a fresh bundle in `out`, for a container the fake runtime answers for. The
    /// cgroup is a plain directory: the node-side steps are not run here.
    fn fake_run<'a>(config: &'a EvidenceConfig, out: &Path, runtime: FakeRuntime) -> Run<'a> {
        let subject = Subject {
            cgroup_dir: out.join("cgroup"),
            container_id: Some("c0ffee".into()),
            kind: RuntimeKind::Unknown,
            runtime: Some(Box::new(runtime)),
            runtime_missing: None,
        };
        let manifest = Manifest::new("fake", "node".into(), TargetInfo::default(), now());
        Run {
            config,
            cgroup2: out.to_owned(),
            subject,
            incident: "fake".into(),
            secret: Regex::new("SECRET").unwrap(),
            budget: Budget::new(&config.limits, Instant::now()),
            bundle: Bundle::create(out, "fake", manifest).unwrap(),
            recent_events: None,
        }
    }

    #[tokio::test]
    async fn runtime_steps_take_what_the_runtime_answers_and_say_why_when_it_does_not() {
        let out = tempfile::tempdir().unwrap();
        let mut config = EvidenceConfig::default();
        config.limits.artifact_ms = 200;
        let runtime = FakeRuntime {
            inspect: Ok(
                json!({"Id": "c0ffee", "State": {"Pid": 42}, "Config": {"Env": ["MY_SECRET=s3"]}}),
            ),
            logs: vec!["line one\n", "line two\n"],
        };
        let mut run = fake_run(&config, out.path(), runtime);
        run.runtime_json(Step::Inspect).await.unwrap();
        run.runtime_json(Step::Top).await.unwrap();
        run.logs().await.unwrap();
        let dir = run.bundle.dir().to_owned();
        let inspect: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("runtime/inspect.json")).unwrap())
                .unwrap();
        assert_eq!(inspect["State"]["Pid"], 42);
        // The runtime's record of the environment is redacted as /proc's is.
        assert_eq!(inspect["Config"]["Env"][0], "MY_SECRET=<redacted>");
        assert_eq!(
            std::fs::read_to_string(dir.join("runtime/container.log")).unwrap(),
            "line one\nline two\n"
        );
        let manifest = run.bundle.manifest();
        let sources: Vec<&str> = manifest
            .artifacts
            .iter()
            .map(|a| a.source.as_str())
            .collect();
        assert_eq!(
            sources,
            [
                "fake:memory/containers/c0ffee/json",
                "fake:memory/containers/c0ffee/logs"
            ]
        );
        // The hung `top` is given up at the artifact's deadline, and says so.
        assert_eq!(manifest.not_captured.len(), 1, "{manifest:#?}");
        assert_eq!(manifest.not_captured[0].artifact, "runtime/top.json");
        assert_eq!(
            manifest.not_captured[0].reason,
            "artifact time limit reached"
        );

        // A runtime that refuses: its own error is the reason.
        let out = tempfile::tempdir().unwrap();
        let runtime = FakeRuntime {
            inspect: Err("no such container".into()),
            logs: Vec::new(),
        };
        let mut run = fake_run(&config, out.path(), runtime);
        run.runtime_json(Step::Inspect).await.unwrap();
        let reason = &run.bundle.manifest().not_captured[0].reason;
        assert!(
            reason.contains("fake inspect failed: no such container"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn without_a_runtime_its_artifacts_say_why() {
        let out = tempfile::tempdir().unwrap();
        let config = EvidenceConfig::default();
        let mut run = fake_run(
            &config,
            out.path(),
            FakeRuntime {
                inspect: Ok(json!({})),
                logs: Vec::new(),
            },
        );
        run.subject.runtime = None;
        run.subject.runtime_missing = Some("runtime cri-o: its API is not asked".into());
        run.runtime_json(Step::Inspect).await.unwrap();
        run.logs().await.unwrap();
        let missing: Vec<(&str, &str)> = run
            .bundle
            .manifest()
            .not_captured
            .iter()
            .map(|n| (n.artifact.as_str(), n.reason.as_str()))
            .collect();
        assert_eq!(
            missing,
            [
                (
                    "runtime/inspect.json",
                    "runtime cri-o: its API is not asked"
                ),
                (
                    "runtime/container.log",
                    "runtime cri-o: its API is not asked"
                ),
            ]
        );
    }

    #[test]
    fn every_step_has_its_own_artifact() {
        let mut seen: Vec<&str> = Step::ALL.iter().map(|s| s.artifact()).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), Step::ALL.len());
        assert_eq!(Step::ALL[0], Step::Processes, "the most volatile first");
    }

    #[test]
    fn a_sink_reports_the_size_limit_as_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = super::super::bundle::Manifest::new(
            "t",
            "n".into(),
            super::super::bundle::TargetInfo::default(),
            now(),
        );
        let bundle = Bundle::create(dir.path(), "t", manifest).unwrap();
        let mut sink = Sink::new(bundle.writer("x", "test", 4).unwrap());
        assert_eq!(sink.write(b"abc").unwrap(), 3);
        assert!(sink.write(b"def").is_err());
        let writer = sink.finish().expect("a cut is not a failure of the bundle");
        assert!(writer.was_cut());
    }
}
