//! The playbook's steps, one module each, in playbook order ([`playbook`]). Each declares the
//! RBAC it needs; none decides dry-run or guardrails (the dispatcher does).
//!
//! The steps done through the Kubernetes API have one shape, [`ApiStep`]: a name, the RBAC,
//! what the step acts on ([`Scope`]), and `run` and `undo` given the API. What every API step
//! shares (no cluster, no pod identity or node, another incident still holding the node, the
//! object gone, an error becoming the outcome, the boxed future the dispatcher runs) is written
//! once, in `impl<S: ApiStep> Action for S`. The steps on the node itself (the kernel block,
//! freeze, kill) implement [`Action`] directly.

pub mod access;
pub mod cordon_node;
pub mod evict_pods;
pub mod freeze;
pub mod kernel_block;
pub mod kill;
pub mod label_node;
pub mod label_pod;
pub mod network_policy;
pub mod propose;
pub mod protect;
pub mod remove_from_service;
pub mod report;
pub mod revoke;
pub mod snapshot;

use std::{collections::BTreeMap, future::Future};

use futures::{FutureExt as _, future::BoxFuture};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::Value;

use super::{
    Action, ContainConfig, EventTarget, Incident, Rule, StepCtx, StepOutcome,
    kube::{ApiError, KubeApi},
};
use crate::config::Problem;

/// What an API step acts on; the step does not run without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The suspect pod (its namespace and name must be known).
    Pod,
    /// The pod's node (its name must be known); undone only when no other open incident holds
    /// the node.
    Node,
}

/// One playbook step done through the Kubernetes API. Implementing it makes an [`Action`].
pub trait ApiStep: Send + Sync {
    /// Its name in the journal and the configuration.
    const NAME: &'static str;
    /// The RBAC rules `run` and `undo` need.
    const RBAC: &'static [Rule];
    /// The `deploy/components/` component that grants `RBAC`, when the base RBAC does not
    /// (a step whose rights are too wide to give every installation).
    const RBAC_COMPONENT: Option<&'static str> = None;
    /// What it acts on (and what its Event is about).
    const SCOPE: Scope;
    /// Whether the configuration enables it.
    fn enabled(config: &ContainConfig) -> bool;
    /// Its configuration problems (locations relative to `contain`).
    fn check(config: &ContainConfig) -> Vec<Problem> {
        let _ = config;
        Vec::new()
    }
    /// Runs it. Idempotent. An error is the step's outcome (a 404 of its object: not
    /// applicable).
    fn run(&self, step: &Step<'_>) -> impl Future<Output = Result<StepOutcome, ApiError>> + Send;
    /// Undoes what `run` did (`done` is its recorded outcome).
    fn undo(
        &self,
        step: &Step<'_>,
        done: &StepOutcome,
    ) -> impl Future<Output = Result<StepOutcome, ApiError>> + Send;
}

/// What an API step runs with: the API, the step's context, the incident and its object.
pub struct Step<'a> {
    /// The API.
    pub api: &'a KubeApi,
    /// Dry run and configuration.
    pub ctx: &'a StepCtx<'a>,
    /// The incident.
    pub incident: &'a Incident,
    /// The pod's namespace (pod steps; empty for node steps).
    pub namespace: &'a str,
    /// The pod's name, or the node's.
    pub name: &'a str,
}

impl<'a> Step<'a> {
    /// The step's object, or why it does not apply.
    fn of(ctx: &'a StepCtx<'a>, incident: &'a Incident, scope: Scope) -> Result<Self, StepOutcome> {
        let Some(api) = ctx.api else {
            return Err(StepOutcome::not_applicable("no cluster"));
        };
        let (namespace, name) = match scope {
            Scope::Pod => incident
                .pod_ref()
                .ok_or_else(|| StepOutcome::not_applicable("no pod identity"))?,
            Scope::Node if incident.node.is_empty() => {
                return Err(StepOutcome::not_applicable("node unknown"));
            }
            Scope::Node => ("", incident.node.as_str()),
        };
        Ok(Self {
            api,
            ctx,
            incident,
            namespace,
            name,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ContainConfig {
        self.ctx.config
    }

    /// The pods of the step's namespace.
    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.api.client().clone(), self.namespace)
    }

    /// The nodes.
    pub fn nodes(&self) -> Api<Node> {
        Api::all(self.api.client().clone())
    }

    /// Reads the step's pod; `Ok(None)` when it is gone.
    pub async fn pod(&self) -> Result<Option<Pod>, ApiError> {
        read_pod(self.ctx, self.namespace, self.name).await
    }

    /// Reads the step's node.
    pub async fn node(&self) -> Result<Node, ApiError> {
        let nodes = self.nodes();
        self.api.call("get node", || nodes.get(self.name)).await
    }

    /// Patches the step's object (dry-run aware).
    pub async fn patch<K>(
        &self,
        api: &Api<K>,
        kind: PatchKind,
        body: &Value,
    ) -> Result<Option<K>, ApiError>
    where
        K: Clone + serde::de::DeserializeOwned + std::fmt::Debug + kube::Resource,
    {
        patch(self.ctx, api, self.name, kind, body).await
    }
}

/// An error as the step's outcome: its object gone is not applicable, the rest failed.
fn settle(scope: Scope, result: Result<StepOutcome, ApiError>) -> StepOutcome {
    match result {
        Ok(outcome) => outcome,
        Err(ApiError::NotFound { .. }) => StepOutcome::not_applicable(match scope {
            Scope::Pod => "the pod is gone",
            Scope::Node => "no such node",
        }),
        Err(err) => StepOutcome::Failed {
            error: err.to_string(),
        },
    }
}

impl<S: ApiStep> Action for S {
    fn name(&self) -> &'static str {
        S::NAME
    }

    fn rbac(&self) -> &'static [Rule] {
        S::RBAC
    }

    fn rbac_component(&self) -> Option<&'static str> {
        S::RBAC_COMPONENT
    }

    fn enabled(&self, config: &ContainConfig) -> bool {
        S::enabled(config)
    }

    fn check(&self, config: &ContainConfig) -> Vec<Problem> {
        S::check(config)
    }

    fn event_target(&self) -> EventTarget {
        match S::SCOPE {
            Scope::Pod => EventTarget::Pod,
            Scope::Node => EventTarget::Node,
        }
    }

    fn run<'a>(
        &'a self,
        ctx: &'a StepCtx<'a>,
        incident: &'a Incident,
    ) -> BoxFuture<'a, StepOutcome> {
        async move {
            match Step::of(ctx, incident, S::SCOPE) {
                Ok(step) => settle(S::SCOPE, ApiStep::run(self, &step).await),
                Err(outcome) => outcome,
            }
        }
        .boxed()
    }

    fn undo<'a>(
        &'a self,
        ctx: &'a StepCtx<'a>,
        incident: &'a Incident,
        done: &'a StepOutcome,
    ) -> BoxFuture<'a, StepOutcome> {
        async move {
            let step = match Step::of(ctx, incident, S::SCOPE) {
                Ok(step) => step,
                Err(outcome) => return outcome,
            };
            if S::SCOPE == Scope::Node
                && let Some(other) = incident.node_held_by.first()
            {
                return StepOutcome::not_applicable(format!(
                    "incident {other} still holds the node"
                ));
            }
            settle(S::SCOPE, ApiStep::undo(self, &step, done).await)
        }
        .boxed()
    }
}

/// Runs `attempt` again while it ends in a 409 (the object changed since it was read), up to
/// [`CONFLICT_RETRIES`] times; each attempt reads the object afresh.
pub(crate) async fn reread_on_conflict<F, Fut>(mut attempt: F) -> Result<StepOutcome, ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<StepOutcome, ApiError>>,
{
    let mut last = String::new();
    for _ in 0..CONFLICT_RETRIES {
        match attempt().await {
            Err(ApiError::Conflict { message, .. }) => last = message,
            other => return other,
        }
    }
    Ok(StepOutcome::Failed {
        error: format!("still conflicting after {CONFLICT_RETRIES} re-reads: {last}"),
    })
}

/// Every step, in the order the playbook runs them.
pub fn playbook() -> Vec<Box<dyn Action>> {
    vec![
        Box::new(kernel_block::KernelBlock),
        Box::new(freeze::Freeze),
        Box::new(kill::Kill),
        Box::new(snapshot::SnapshotVolumes),
        Box::new(remove_from_service::RemoveFromService),
        Box::new(label_pod::LabelPod),
        Box::new(protect::ProtectPod),
        Box::new(access::ListAccess),
        Box::new(revoke::RevokeServiceAccount),
        Box::new(report::Report),
        Box::new(network_policy::NetworkPolicy),
        Box::new(label_node::LabelNode),
        Box::new(protect::ProtectNode),
        Box::new(cordon_node::CordonNode),
        Box::new(evict_pods::EvictPods),
    ]
}

/// Every step an incident can record, the playbook's and the proposal: what release undoes by
/// name, and what the RBAC covers.
pub fn steps() -> Vec<Box<dyn Action>> {
    let mut steps = playbook();
    steps.push(Box::new(propose::Propose));
    steps
}

/// Pod reads and patches (labels and annotations).
pub(crate) const POD_RBAC: &[Rule] = &[Rule {
    api_group: "",
    resource: "pods",
    verbs: &["get", "patch"],
}];

/// The labels of every object the detector creates.
pub(crate) fn managed_labels() -> BTreeMap<String, String> {
    [(
        "app.kubernetes.io/managed-by".to_owned(),
        "detector".to_owned(),
    )]
    .into()
}

/// Pod labels, empty when unset.
pub(crate) fn labels_of(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.labels.clone().unwrap_or_default()
}

/// Reads a pod; `Ok(None)` when it is gone.
pub(crate) async fn read_pod(
    ctx: &StepCtx<'_>,
    namespace: &str,
    name: &str,
) -> Result<Option<Pod>, ApiError> {
    let Some(api) = ctx.api else {
        return Ok(None);
    };
    let pods: Api<Pod> = Api::namespaced(api.client().clone(), namespace);
    match api.call("get pod", || pods.get(name)).await {
        Ok(pod) => Ok(Some(pod)),
        Err(ApiError::NotFound { .. }) => Ok(None),
        Err(err) => Err(err),
    }
}

/// Patch flavours the playbook uses.
#[derive(Debug, Clone, Copy)]
pub enum PatchKind {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
}

/// Patches an object through `ctx.change` (dry-run aware); the call text is the exact request.
pub(crate) async fn patch<K>(
    ctx: &StepCtx<'_>,
    api: &Api<K>,
    name: &str,
    kind: PatchKind,
    body: &Value,
) -> Result<Option<K>, ApiError>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug + kube::Resource,
{
    let Some(kube) = ctx.api else {
        return Ok(None);
    };
    let content = match kind {
        PatchKind::Merge => "merge-patch",
        PatchKind::Strategic => "strategic-merge-patch",
    };
    let call = format!("PATCH {}/{name} ({content}) {body}", api.resource_url());
    let params = PatchParams::default();
    ctx.change(call, async || {
        kube.call("patch", || async {
            match kind {
                PatchKind::Merge => api.patch(name, &params, &Patch::Merge(body)).await,
                PatchKind::Strategic => api.patch(name, &params, &Patch::Strategic(body)).await,
            }
        })
        .await
    })
    .await
}

/// Times a step re-reads and re-applies after a 409 before giving up.
pub(crate) const CONFLICT_RETRIES: usize = 5;
