//! What the daemon does with its decisions: export every event and record to the configured
//! SIEM sinks, hand `contain` verdicts to the containment dispatcher, and capture evidence of a
//! contained pod from the node side. Containment actions and evidence bundles are announced to
//! the exporter and, in the pretty output format, to the terminal ([`Fanout`]).
//!
//! Everything here is called from the analysis thread and never waits on I/O: the exporter and
//! the dispatcher take records through bounded queues of their own, and captures run as tasks on
//! the daemon's runtime.

use std::{
    collections::HashSet,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use time::OffsetDateTime;
use tokio::runtime::Handle;
use tracing::{error, info, warn};

use crate::{
    attribution::cgroup_path,
    contain::{
        ContainmentHandle, IncidentView, StepOutcome, Taken,
        journal::{Entry, EntryKind},
        verdict_reports::VerdictReports,
    },
    event::Event,
    evidence::{
        EvidenceConfig, Reference,
        capture::{CaptureRequest, Outcome as CaptureOutcome, Target, capture_with},
    },
    export::{
        ExporterHandle,
        record::{Finding, Record as ExportRecord, Severity},
    },
    metrics::Metrics,
    output::{EvidenceNotice, Notice, Notices},
    rules::Severity as RuleSeverity,
    score::{
        Subject,
        record::{Decision, Record, Verdict},
    },
};

/// Subjects whose evidence was captured, remembered at most (then forgotten all at once, so a
/// long-running daemon can capture a pod contained again much later).
const MAX_CAPTURED: usize = 4096;

/// The response stage.
pub struct Responders {
    fanout: Fanout,
    containment: Option<ContainmentHandle>,
    reports: Option<VerdictReports>,
    evidence: Option<EvidenceConfig>,
    runtime: Handle,
    cgroup2: PathBuf,
    captured: HashSet<String>,
}

impl Responders {
    /// Assembles the stage; `None` turns a responder off. `terminal` receives the containment
    /// actions and evidence bundles to show (the pretty output format).
    pub fn new(
        exporter: Option<ExporterHandle>,
        containment: Option<ContainmentHandle>,
        reports: Option<VerdictReports>,
        evidence: Option<EvidenceConfig>,
        runtime: Handle,
        cgroup2: PathBuf,
        terminal: Option<Notices>,
    ) -> Self {
        let fanout = Fanout {
            exporter: exporter.map(Arc::new),
            terminal,
        };
        // Every containment action (each step, its undo, a refusal) is announced as it is
        // journaled, the resumed incidents' included.
        if let (false, Some(containment)) = (fanout.is_empty(), &containment) {
            let fanout = fanout.clone();
            containment.set_entry_sink(Box::new(move |entry, subject| {
                fanout.action(entry, subject);
            }));
        }
        Self {
            fanout,
            containment,
            reports,
            evidence,
            runtime,
            cgroup2,
            captured: HashSet::new(),
        }
    }

    /// Samples the responders' own counters into `metrics`: each sink's deliveries, retries,
    /// rejections and drops, the containment queue.
    pub fn sample(&self, metrics: &Metrics) {
        if let Some(exporter) = &self.fanout.exporter {
            metrics.observe_export(&exporter.stats());
        }
        if let Some(containment) = &self.containment {
            metrics.observe_containment_queue(containment.dropped(), containment.queue_depth());
        }
    }

    /// Exports an event.
    pub fn event(&self, event: &Event) {
        if let Some(exporter) = &self.fanout.exporter {
            exporter.send(ExportRecord::Event(event.clone()));
        }
    }

    /// Exports a record; contains and captures for `contain` verdicts. `path_of` gives a
    /// cgroup's path relative to the cgroup2 mount; `recent` the recent events of cgroups.
    /// Returns, for a verdict containment refused for a reason that lapses, that reason and
    /// when to decide about its pod again.
    pub fn record(
        &mut self,
        record: &Record,
        path_of: impl FnOnce(u64) -> Option<Arc<str>>,
        recent: impl FnOnce(&[u64]) -> Vec<Event>,
    ) -> Option<(String, Duration)> {
        if let Some(exporter) = &self.fanout.exporter {
            exporter.send(ExportRecord::Verdict(finding(record)));
        }
        let Record::Verdict(verdict) = record else {
            return None;
        };
        if let Some(reports) = &self.reports {
            reports.verdict(verdict);
        }
        if verdict.decision != Decision::Contain {
            return None;
        }
        let Some(cgroup_id) = verdict.subject.cgroup_id else {
            warn!(subject = %verdict.subject.key, "contain verdict without a cgroup: nothing to block");
            return None;
        };
        let path = path_of(cgroup_id);
        let targets = block_targets(&self.cgroup2, cgroup_id, path.as_deref());
        // Evidence follows the containment's own decision (guardrails, warm-up, one incident
        // per pod) and carries the journal's incident id; without containment every contain
        // verdict is captured, named after its subject.
        let (incident, again) = match &self.containment {
            Some(containment) => {
                match containment.on_verdict(verdict, verdict.ktime_ns, targets.clone()) {
                    Taken::Incident(id) => (Some(id), None),
                    Taken::Ignored => (None, None),
                    Taken::Deferred { why, after } => (None, Some((why, after))),
                }
            }
            None => (
                Some(format!(
                    "{}-{}",
                    verdict.subject.key.replace([':', '/'], "-"),
                    verdict.time.unix_timestamp()
                )),
                None,
            ),
        };
        if let (Some(incident), Some(config), Some(path)) = (incident, &self.evidence, path) {
            let dir = self.cgroup2.join(path.trim_start_matches('/'));
            let recent = recent(&evidence_cgroups(&self.cgroup2, cgroup_id, &path));
            self.capture(config.clone(), verdict, incident, dir, recent);
        }
        again
    }

    fn capture(
        &mut self,
        config: EvidenceConfig,
        verdict: &Verdict,
        incident: String,
        dir: PathBuf,
        recent: Vec<Event>,
    ) {
        if self.captured.len() >= MAX_CAPTURED {
            self.captured.clear();
        }
        if !self.captured.insert(verdict.subject.key.clone()) {
            return;
        }
        let request = CaptureRequest {
            target: Target::Cgroup(dir),
            incident: Some(incident.clone()),
            recent_events: Some(recent),
        };
        let fanout = self.fanout.clone();
        let references = snapshot_references(
            self.containment.as_ref().map(ContainmentHandle::view),
            incident.clone(),
            verdict.subject.namespace.clone(),
        );
        let verdict = Box::new(verdict.clone());
        self.runtime.spawn(async move {
            match capture_with(&config, &config.out_dir, request, references).await {
                Ok(outcome) => {
                    info!(
                        incident,
                        bundle = %outcome.dir.display(),
                        complete = outcome.manifest.complete,
                        elapsed_ms = outcome.elapsed.as_millis() as u64,
                        "evidence captured"
                    );
                    fanout.evidence(&incident, verdict, &outcome);
                }
                Err(err) => error!(incident, %err, "evidence capture failed"),
            }
        });
    }

    /// Stops the exporter after it delivered what it could within its drain time.
    pub async fn shutdown(self) {
        // Containment first: its entry sink holds the exporter, which drains once it is alone.
        if let Some(containment) = self.containment {
            // Running incidents get a moment to finish, then are journaled as interrupted and
            // resumed by the next start; joining the dispatcher thread is blocking work.
            let _ = tokio::task::spawn_blocking(move || containment.shutdown(SHUTDOWN_GRACE)).await;
        }
        if let Some(exporter) = self.fanout.exporter {
            match Arc::try_unwrap(exporter) {
                Ok(exporter) => exporter.shutdown().await,
                Err(_) => {
                    warn!("a capture still runs: export stops without draining its memory queue")
                }
            }
        }
    }
}

/// How long running containment steps get to finish at shutdown: with the exporter's drain
/// (`export.drain_timeout_ms`, 2 s by default) after it, the daemon stops within about 4 s
/// whatever is in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Where containment actions and evidence bundles are announced: the SIEM exporter and, in the
/// pretty output format, the terminal. The containment sink and the evidence tasks each hold a
/// clone, so a new consumer is added here and nowhere else.
#[derive(Clone)]
struct Fanout {
    exporter: Option<Arc<ExporterHandle>>,
    terminal: Option<Notices>,
}

impl Fanout {
    fn is_empty(&self) -> bool {
        self.exporter.is_none() && self.terminal.is_none()
    }

    /// A containment journal entry, with its incident's subject.
    fn action(&self, entry: &Entry, subject: Option<&Subject>) {
        if let Some(exporter) = &self.exporter {
            exporter.send(ExportRecord::Action(action_finding(entry, subject)));
        }
        if let Some(terminal) = &self.terminal {
            terminal.send(Notice::Action {
                entry: Box::new(entry.clone()),
                subject: subject.cloned(),
            });
        }
    }

    /// An evidence bundle captured for `verdict`.
    fn evidence(&self, incident: &str, verdict: Box<Verdict>, outcome: &CaptureOutcome) {
        let time = OffsetDateTime::now_utc();
        if let Some(exporter) = &self.exporter {
            exporter.send(ExportRecord::Evidence(Finding {
                time,
                severity: Severity::High,
                name: "evidence_bundle".into(),
                summary: format!("evidence of {incident} in {}", outcome.dir.display()),
                data: serde_json::to_value(&outcome.manifest).unwrap_or_default(),
            }));
        }
        if let Some(terminal) = &self.terminal {
            terminal.send(Notice::Evidence(Box::new(EvidenceNotice {
                time,
                incident: incident.to_owned(),
                verdict: *verdict,
                dir: outcome.dir.clone(),
                complete: outcome.manifest.complete,
                artifacts: outcome.manifest.artifacts.len(),
            })));
        }
    }
}

/// What to block for a contained container: its pod's cgroup when the container sits in one
/// (so sibling and restarted containers are cut off too), else the container's own cgroup.
/// `path` is relative to the cgroup2 mount (a leading `/` is allowed).
pub fn block_targets(cgroup2: &Path, cgroup_id: u64, path: Option<&str>) -> Vec<u64> {
    match path
        .and_then(|path| pod_dir(cgroup2, path))
        .and_then(|dir| std::fs::metadata(dir).ok())
    {
        Some(meta) => vec![meta.ino()],
        None => vec![cgroup_id],
    }
}

/// The pod-level cgroup directory of the container cgroup at `path` (relative to `cgroup2`),
/// when its parent is one.
fn pod_dir(cgroup2: &Path, path: &str) -> Option<PathBuf> {
    let path = path.trim_matches('/');
    let (parent, _) = path.rsplit_once('/')?;
    let identity = cgroup_path::parse(parent).ok()?;
    (identity.pod.is_some() && identity.container.is_none()).then(|| cgroup2.join(parent))
}

/// The cgroups whose recent events go into the evidence of the container cgroup `cgroup_id` at
/// `path`: every cgroup of its pod (the ring keys events by the container cgroup they happened
/// in; the pod-level cgroup, the one blocked, runs no process), or its own and those below it
/// outside a pod.
pub fn evidence_cgroups(cgroup2: &Path, cgroup_id: u64, path: &str) -> Vec<u64> {
    let top = pod_dir(cgroup2, path).unwrap_or_else(|| cgroup2.join(path.trim_start_matches('/')));
    let mut cgroups = crate::evidence::procfs::cgroup_ids(&top);
    cgroups.push(cgroup_id);
    cgroups.sort_unstable();
    cgroups.dedup();
    cgroups
}

/// How long a capture about to be sealed waits for its incident's snapshot step.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(10);

/// The VolumeSnapshots incident `incident` took (`contain.steps.snapshot_volumes`), for the
/// manifest of its evidence: awaited when the capture is done, for at most [`SNAPSHOT_WAIT`].
pub async fn snapshot_references(
    view: Option<IncidentView>,
    incident: String,
    namespace: Option<String>,
) -> Vec<Reference> {
    const STEP: &str = "snapshot_volumes";
    let (Some(view), Some(namespace)) = (view, namespace) else {
        return Vec::new();
    };
    if !view.config().steps.snapshot_volumes {
        return Vec::new();
    }
    let deadline = tokio::time::Instant::now() + SNAPSHOT_WAIT;
    let outcome = loop {
        if let Some(outcome) = view.step(&incident, STEP) {
            break outcome;
        }
        if tokio::time::Instant::now() >= deadline {
            warn!(
                incident,
                "the snapshot step had not run when the evidence was sealed: the incident's \
                 journal names its snapshots"
            );
            return Vec::new();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let StepOutcome::Done { undo, .. } = outcome else {
        return Vec::new();
    };
    undo["snapshots"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|name| name.as_str())
        .map(|name| Reference {
            api_version: "snapshot.storage.k8s.io/v1".into(),
            kind: "VolumeSnapshot".into(),
            namespace: namespace.clone(),
            name: name.to_owned(),
            note: "a snapshot of a PersistentVolumeClaim the pod mounted, taken by the \
                   containment"
                .into(),
        })
        .collect()
}

/// A containment journal entry as an export finding: the action's name (the step, `undo_` and
/// the step, or the incident's transition), its outcome, and the incident and pod it concerns.
pub fn action_finding(entry: &Entry, subject: Option<&Subject>) -> Finding {
    let (name, severity, what) = match &entry.kind {
        EntryKind::Opened { score, reason, .. } => (
            "incident_opened".to_owned(),
            Severity::High,
            format!("opened (score {score:.0}: {reason})"),
        ),
        EntryKind::Refused { why, .. } => (
            "containment_refused".to_owned(),
            Severity::High,
            format!("not contained: {why}"),
        ),
        EntryKind::Step { step, outcome } => (
            step.clone(),
            outcome_severity(outcome),
            format!("{step} {}", outcome.summary()),
        ),
        EntryKind::Completed => (
            "incident_contained".to_owned(),
            Severity::Medium,
            "every step attempted".to_owned(),
        ),
        EntryKind::Undo { step, outcome } => (
            format!("undo_{step}"),
            outcome_severity(outcome),
            format!("undo {step} {}", outcome.summary()),
        ),
        EntryKind::ReleaseRequested { by } => (
            "release_requested".to_owned(),
            Severity::Medium,
            format!("release asked for by {by}"),
        ),
        EntryKind::Released => (
            "incident_released".to_owned(),
            Severity::Medium,
            "released".to_owned(),
        ),
        EntryKind::Approved { by } => (
            "incident_approved".to_owned(),
            Severity::High,
            format!("proposal approved by {by}: the playbook runs"),
        ),
        EntryKind::Confirmed { by } => (
            "incident_confirmed".to_owned(),
            Severity::High,
            format!("confirmed by {by}"),
        ),
        EntryKind::Expired { after_s } => (
            "incident_expired".to_owned(),
            Severity::Medium,
            format!("nobody approved or confirmed it within {after_s}s: released"),
        ),
    };
    let time = OffsetDateTime::parse(&entry.ts, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| OffsetDateTime::now_utc());
    let on = subject.map_or("an unknown pod", |s| s.key.as_str());
    let mut data = serde_json::to_value(entry).unwrap_or_default();
    if let (Some(map), Some(subject)) = (data.as_object_mut(), subject) {
        map.entry("subject")
            .or_insert_with(|| serde_json::to_value(subject).unwrap_or_default());
    }
    Finding {
        time,
        severity,
        name,
        summary: format!("incident {} on {on}: {what}", entry.incident),
        data,
    }
}

fn outcome_severity(outcome: &StepOutcome) -> Severity {
    if outcome.ok() {
        Severity::Medium
    } else {
        Severity::High
    }
}

/// An alert or verdict as an export finding.
fn finding(record: &Record) -> Finding {
    let data = serde_json::to_value(record).unwrap_or_default();
    match record {
        Record::Alert(alert) => Finding {
            time: alert.time,
            severity: match alert.rule.severity {
                RuleSeverity::Low => Severity::Low,
                RuleSeverity::Medium => Severity::Medium,
                RuleSeverity::High => Severity::High,
                RuleSeverity::Critical => Severity::Critical,
            },
            name: alert.rule.id.clone(),
            summary: format!(
                "{} ({} {}) in {}",
                alert.rule.description, alert.rule.tactic, alert.rule.technique, alert.subject.key
            ),
            data,
        },
        Record::Verdict(verdict) => Finding {
            time: verdict.time,
            severity: match verdict.decision {
                Decision::Contain => Severity::Critical,
                Decision::Alert => Severity::High,
                Decision::Log => Severity::Info,
            },
            name: format!("verdict_{:?}", verdict.decision).to_lowercase(),
            summary: format!(
                "{} scored {:.0}: {}",
                verdict.subject.key, verdict.score, verdict.reason
            ),
            data,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_in_a_pod_blocks_the_pod_and_a_bare_container_itself() {
        let root = tempfile::tempdir().unwrap();
        let pod = "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0c4d1f9e_7a2b_4c3d_9e8f_112233445566.slice";
        let container = format!("{pod}/cri-containerd-{}.scope", "ab".repeat(32));
        std::fs::create_dir_all(root.path().join(&container)).unwrap();
        let pod_ino = std::fs::metadata(root.path().join(pod)).unwrap().ino();
        assert_eq!(block_targets(root.path(), 77, Some(&container)), [pod_ino]);
        let absolute = format!("/{container}");
        assert_eq!(block_targets(root.path(), 77, Some(&absolute)), [pod_ino]);
        let docker = format!("system.slice/docker-{}.scope", "cd".repeat(32));
        std::fs::create_dir_all(root.path().join(&docker)).unwrap();
        assert_eq!(block_targets(root.path(), 78, Some(&docker)), [78]);
        assert_eq!(block_targets(root.path(), 79, None), [79]);
    }

    #[test]
    fn evidence_of_a_pods_container_takes_the_recent_events_of_all_its_containers() {
        let root = tempfile::tempdir().unwrap();
        let ino = |rel: &str| std::fs::metadata(root.path().join(rel)).unwrap().ino();
        let pod = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0c4d1f9e_7a2b_4c3d_9e8f_112233445566.slice";
        let suspect = format!("{pod}/cri-containerd-{}.scope", "ab".repeat(32));
        let sidecar = format!("{pod}/cri-containerd-{}.scope", "cd".repeat(32));
        let other_pod = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod99999999_7a2b_4c3d_9e8f_112233445566.slice";
        let stranger = format!("{other_pod}/cri-containerd-{}.scope", "ef".repeat(32));
        for dir in [&suspect, &sidecar, &stranger] {
            std::fs::create_dir_all(root.path().join(dir)).unwrap();
        }
        let mut want = vec![ino(pod), ino(&suspect), ino(&sidecar)];
        want.sort_unstable();
        let got = evidence_cgroups(root.path(), ino(&suspect), &format!("/{suspect}"));
        assert_eq!(got, want, "the pod's cgroups, not the other pod's");
        assert!(!got.contains(&ino(&stranger)));

        // Outside a pod: the cgroup itself and what is below it.
        let docker = format!("system.slice/docker-{}.scope", "12".repeat(32));
        std::fs::create_dir_all(root.path().join(&docker).join("init")).unwrap();
        let mut want = vec![ino(&docker), ino(&format!("{docker}/init"))];
        want.sort_unstable();
        assert_eq!(evidence_cgroups(root.path(), ino(&docker), &docker), want);
        // A cgroup gone since: its own id still.
        assert_eq!(
            evidence_cgroups(root.path(), 5, "system.slice/gone.scope"),
            [5]
        );
    }
}
