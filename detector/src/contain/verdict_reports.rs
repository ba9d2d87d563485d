//! Each pod's latest alerting verdict as an OpenReports `Report` (`openreports.io/v1alpha1`)
//! in its namespace, for the dashboards and policy tooling that read reports: one Report per
//! pod, `detector-pod-<name>`, replaced by the pod's next verdict (a Report tells the current
//! state) and owned by the pod, so that Kubernetes' garbage collector deletes it with the pod.
//! Incidents get Reports of their own (`actions::report`).
//!
//! Verdicts arrive without blocking the caller ([`VerdictReports::verdict`]; a full queue drops
//! and counts). A pod's verdicts are coalesced: at most one write per pod every
//! [`FLUSH_EVERY`], the latest verdict winning. A cluster without the CRD (404) is told once,
//! and asked again after [`CRD_RETRY`].

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use kube::{
    Api, Client,
    api::{DynamicObject, PostParams},
};
use tokio::sync::mpsc;

use super::{
    Rule,
    actions::report::{ReportedPod, report_object, resource},
    config::ApiRetryConfig,
    kube::{ApiError, KubeApi},
};
use crate::score::{Decision, Verdict};

/// What the verdict Reports need, besides the incidents' create and delete.
pub const RBAC: &[Rule] = &[Rule {
    api_group: "openreports.io",
    resource: "reports",
    verbs: &["get", "create", "update"],
}];

/// Verdicts waiting at most; beyond it they are dropped and counted.
const QUEUE: usize = 1024;
/// How often the pending verdicts are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(2);
/// How long a cluster without the Report CRD is left alone.
pub const CRD_RETRY: Duration = Duration::from_secs(600);

/// The handle the responders keep.
pub struct VerdictReports {
    tx: mpsc::Sender<Box<Verdict>>,
    dropped: Arc<AtomicU64>,
}

/// The Report's name for a pod.
pub fn report_name(pod: &str) -> String {
    let mut name = format!("detector-pod-{pod}");
    name.truncate(253);
    name
}

impl VerdictReports {
    /// Starts the writer on `runtime`.
    pub fn start(client: Client, retry: ApiRetryConfig, runtime: &tokio::runtime::Handle) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let api = KubeApi::new(client, retry);
        runtime.spawn(write(api, rx));
        Self {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Hands over a verdict; only `alert` and `contain` verdicts on a pod with a UID (the
    /// Report's owner) are reported.
    pub fn verdict(&self, verdict: &Verdict) {
        if verdict.decision == Decision::Log
            || verdict.subject.namespace.is_none()
            || verdict.subject.pod.is_none()
            || verdict.subject.pod_uid.is_none()
        {
            return;
        }
        if self.tx.try_send(Box::new(verdict.clone())).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!("verdict Reports: queue full, a verdict not reported ({n} so far)");
        }
    }

    /// Verdicts dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

async fn write(api: KubeApi, mut rx: mpsc::Receiver<Box<Verdict>>) {
    let mut pending: HashMap<String, Box<Verdict>> = HashMap::new();
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut no_crd_until: Option<Instant> = None;
    loop {
        tokio::select! {
            verdict = rx.recv() => match verdict {
                Some(verdict) => {
                    let key = verdict.subject.pod_uid.clone().unwrap_or_default();
                    pending.insert(key, verdict);
                }
                None => break,
            },
            _ = tick.tick() => {
                if no_crd_until.is_some_and(|until| Instant::now() < until) {
                    pending.clear();
                    continue;
                }
                for (_, verdict) in pending.drain() {
                    match upsert(&api, &verdict).await {
                        Ok(()) => {}
                        Err(ApiError::NotFound { .. }) => {
                            tracing::info!(
                                "verdict Reports: the OpenReports Report CRD \
                                 (openreports.io/v1alpha1) is not installed; asked again in {}s",
                                CRD_RETRY.as_secs()
                            );
                            no_crd_until = Some(Instant::now() + CRD_RETRY);
                            break;
                        }
                        Err(err) => tracing::warn!(
                            "verdict Report of {}: {err}",
                            verdict.subject.key
                        ),
                    }
                }
            }
        }
    }
}

/// Creates the pod's Report, or replaces it with this verdict's.
async fn upsert(api: &KubeApi, verdict: &Verdict) -> Result<(), ApiError> {
    let (Some(namespace), Some(pod), Some(uid)) = (
        verdict.subject.namespace.as_deref(),
        verdict.subject.pod.as_deref(),
        verdict.subject.pod_uid.as_deref(),
    ) else {
        return Ok(());
    };
    let name = report_name(pod);
    let rules: Vec<_> = verdict.rules.iter().map(|c| c.rule.clone()).collect();
    let mut value = report_object(
        &name,
        &ReportedPod {
            namespace,
            name: pod,
            uid: Some(uid),
        },
        &rules,
        &verdict.reason,
        &[
            (
                "decision",
                serde_json::to_value(verdict.decision)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            ),
            ("score", format!("{:.1}", verdict.score)),
        ],
    );
    // Owned by the pod: deleted with it.
    value["metadata"]["ownerReferences"] = serde_json::json!([{
        "apiVersion": "v1",
        "kind": "Pod",
        "name": pod,
        "uid": uid,
    }]);
    let resource = resource();
    let reports: Api<DynamicObject> =
        Api::namespaced_with(api.client().clone(), namespace, &resource);
    let mut object: DynamicObject =
        serde_json::from_value(value).map_err(|err| ApiError::Rejected {
            what: "report".into(),
            code: 0,
            message: err.to_string(),
        })?;
    let params = PostParams::default();
    match api
        .call("create report", || reports.create(&params, &object))
        .await
    {
        Ok(_) => return Ok(()),
        Err(ApiError::Conflict { .. }) => {}
        Err(err) => return Err(err),
    }
    // It exists: replace it with this verdict's, at the version read (a 409 again is another
    // writer's newer verdict, which wins).
    let current = api.call("get report", || reports.get(&name)).await?;
    object.metadata.resource_version = current.metadata.resource_version;
    match api
        .call("replace report", || {
            reports.replace(&name, &params, &object)
        })
        .await
    {
        Ok(_) | Err(ApiError::Conflict { .. }) => Ok(()),
        Err(err) => Err(err),
    }
}
