//! Evicts the node's other pods through the Eviction API, so PodDisruptionBudgets are
//! honoured: a 429 (the budget allows no disruption now) is retried with backoff until
//! `evict_deadline_s`. DaemonSet pods, mirror (static) pods, finished pods, quarantined pods,
//! pods of protected namespaces and the suspect pod itself are left alone.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{EvictParams, ListParams},
};

use super::{ApiStep, Scope, Step, labels_of};
use crate::contain::{ContainConfig, Incident, Rule, StepOutcome, kube::ApiError};

/// Evicts every other evictable pod of the node.
pub struct EvictPods;

/// Why a pod of the node is left alone, if it is.
pub fn left_alone(pod: &Pod, incident: &Incident, config: &ContainConfig) -> Option<&'static str> {
    let meta = &pod.metadata;
    if meta.uid.is_some() && meta.uid == incident.subject.pod_uid
        || meta.name.as_deref() == incident.subject.pod.as_deref()
            && meta.namespace == incident.subject.namespace
    {
        return Some("the suspect pod");
    }
    if meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"))
    {
        return Some("mirror pod");
    }
    if meta
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DaemonSet")
    {
        return Some("DaemonSet pod");
    }
    if meta.deletion_timestamp.is_some() {
        return Some("terminating");
    }
    if pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed")
    {
        return Some("finished");
    }
    let label = &config.quarantine_label;
    if labels_of(pod).get(&label.key) == Some(&label.value) {
        return Some("quarantined");
    }
    if meta
        .namespace
        .as_ref()
        .is_some_and(|ns| config.protected_namespaces.contains(ns))
    {
        return Some("protected namespace");
    }
    None
}

impl ApiStep for EvictPods {
    const NAME: &'static str = "evict_other_pods";
    const RBAC: &'static [Rule] = &[
        Rule {
            api_group: "",
            resource: "pods",
            verbs: &["list"],
        },
        Rule {
            api_group: "",
            resource: "pods/eviction",
            verbs: &["create"],
        },
    ];
    const SCOPE: Scope = Scope::Node;

    fn enabled(config: &ContainConfig) -> bool {
        config.steps.evict_other_pods
    }

    async fn run(&self, step: &Step<'_>) -> Result<StepOutcome, ApiError> {
        let (api, ctx, incident) = (step.api, step.ctx, step.incident);
        let all: Api<Pod> = Api::all(api.client().clone());
        let params = ListParams::default().fields(&format!("spec.nodeName={}", incident.node));
        let pods = api
            .call("list pods of the node", || all.list(&params))
            .await?
            .items;
        let mut kept = Vec::new();
        let mut targets = Vec::new();
        for pod in &pods {
            let (Some(ns), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else {
                continue;
            };
            match left_alone(pod, incident, ctx.config) {
                Some(why) => kept.push(format!("{ns}/{name} ({why})")),
                None => targets.push((ns.clone(), name.clone())),
            }
        }
        let deadline = Instant::now() + Duration::from_secs(ctx.config.evict_deadline_s);
        let evictions = targets.iter().map(|(ns, name)| async move {
            let pods: Api<Pod> = Api::namespaced(api.client().clone(), ns);
            let call = format!("POST {}/{name}/eviction", pods.resource_url());
            let params = EvictParams::default();
            let result = ctx
                .change(call, async || {
                    api.call_until("evict pod", u32::MAX, Some(deadline), || {
                        pods.evict(name, &params)
                    })
                    .await
                })
                .await;
            match result {
                Ok(_) | Err(ApiError::NotFound { .. }) => Ok(format!("{ns}/{name}")),
                Err(err) => Err(format!("{ns}/{name}: {err}")),
            }
        });
        let results = futures::future::join_all(evictions).await;
        let (evicted, failed): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
        let evicted: Vec<String> = evicted.into_iter().flatten().collect();
        let failed: Vec<String> = failed.into_iter().filter_map(Result::err).collect();
        let detail = format!(
            "evicted [{}]; left alone [{}]",
            evicted.join(", "),
            kept.join(", ")
        );
        if failed.is_empty() {
            Ok(StepOutcome::done(detail))
        } else {
            Ok(StepOutcome::Failed {
                error: format!("{detail}; not evicted [{}]", failed.join(", ")),
            })
        }
    }

    async fn undo(&self, _step: &Step<'_>, _done: &StepOutcome) -> Result<StepOutcome, ApiError> {
        Ok(StepOutcome::not_applicable(
            "evicted pods were rescheduled by their controllers",
        ))
    }
}
