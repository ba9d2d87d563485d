//! Containment: the incident playbook, automated, guarded, journaled and reversible.
//!
//! When a pod's verdict says `contain`, [`ContainmentHandle::on_verdict`] hands it to the
//! dispatcher without blocking. The dispatcher alone decides whether to act (warm-up,
//! protected namespaces and labels, the daemon's own pod, the action budget, an incident
//! already open for the pod) and whether for real or as a dry run. It then runs the playbook,
//! one [`Action`] per step, in this order:
//!
//! 1. [`actions::kernel_block`]: the in-kernel network block of the pod's cgroups, first
//!    because it is immediate (no API round trip);
//! 2. [`actions::freeze`] / [`actions::kill`]: optional, off by default;
//! 3. [`actions::remove_from_service`]: strip the labels its ReplicaSet's and Services'
//!    selectors match (the ReplicaSet spawns a replacement, Services stop routing to it);
//! 4. [`actions::label_pod`]: `quarantine=true` and the incident annotations;
//! 5. [`actions::network_policy`]: one deny-all NetworkPolicy per namespace selecting the
//!    quarantine label (so only the suspect pod is isolated, never every replica);
//! 6. [`actions::label_node`] and [`actions::cordon_node`];
//! 7. [`actions::evict_pods`]: the node's other pods, through the Eviction API.
//!
//! Every step is idempotent, journaled ([`journal`]) with its outcome and emits a Kubernetes
//! Event on the pod or node. A failing step is recorded as failed and the next one still runs.
//! `detector release` (or [`ContainmentHandle::release`]) undoes what can be undone.
//!
//! Each action declares the RBAC rules it needs ([`Action::rbac`]); a test checks
//! `deploy/rbac.yaml` against them.

pub mod actions;
pub mod budget;
pub mod config;
pub mod dispatcher;
pub mod journal;
pub mod kube;
pub mod release;
pub mod verdict_reports;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use self::{
    config::ContainConfig,
    dispatcher::{Admission, Containment, ContainmentHandle, Guard, IncidentView, Refusal, Taken},
};
use crate::{
    config::Problem,
    quarantine::{KernelQuarantine, QuarantineError},
    score::Subject,
};

/// One RBAC rule an action needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// API group (`""` for the core group).
    pub api_group: &'static str,
    /// Resource, with its subresource (`pods/eviction`).
    pub resource: &'static str,
    /// Verbs.
    pub verbs: &'static [&'static str],
}

/// What the dispatcher itself needs: reading the pod first, and Events for every step.
pub const DISPATCHER_RBAC: &[Rule] = &[
    Rule {
        api_group: "",
        resource: "pods",
        verbs: &["get"],
    },
    Rule {
        api_group: "",
        resource: "events",
        verbs: &["create"],
    },
];

/// What pod attribution needs (its `spec.nodeName` watch and owner lookups).
pub const ATTRIBUTION_RBAC: &[Rule] = &[
    Rule {
        api_group: "",
        resource: "pods",
        verbs: &["get", "list", "watch"],
    },
    Rule {
        api_group: "apps",
        resource: "replicasets",
        verbs: &["get"],
    },
];

/// Every rule the daemon needs: the dispatcher's, attribution's and each action's.
pub fn required_rbac() -> Vec<Rule> {
    let mut rules: Vec<Rule> = DISPATCHER_RBAC
        .iter()
        .chain(ATTRIBUTION_RBAC)
        .chain(budget::RBAC)
        .chain(verdict_reports::RBAC)
        .copied()
        .collect();
    for action in actions::steps() {
        if action.rbac_component().is_none() {
            rules.extend_from_slice(action.rbac());
        }
    }
    rules
}

/// The rules component `component` of `deploy/components/` grants, for the steps that need it.
pub fn component_rbac(component: &str) -> Vec<Rule> {
    actions::steps()
        .iter()
        .filter(|a| a.rbac_component() == Some(component))
        .flat_map(|a| a.rbac().iter().copied())
        .collect()
}

/// The outcome of one step (or of its undo), as journaled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StepOutcome {
    /// Done; `undo` holds what release needs (removed labels, earlier state).
    Done {
        /// What was done.
        detail: String,
        /// What release needs.
        #[serde(default, skip_serializing_if = "Value::is_null")]
        undo: Value,
    },
    /// Nothing to do: the state was already the wanted one.
    AlreadyDone {
        /// What was found.
        detail: String,
    },
    /// Dry run: these calls would have been made.
    DryRun {
        /// The exact calls (method, path, body) or kernel changes.
        calls: Vec<String>,
    },
    /// Does not apply (no cluster, no pod identity, pod gone, kind not handled).
    NotApplicable {
        /// Why.
        why: String,
    },
    /// Left to someone else (the kernel block, lifted by the daemon after a CLI release).
    Pending {
        /// Why.
        why: String,
    },
    /// Failed after the retries the error allows.
    Failed {
        /// The error.
        error: String,
    },
}

impl StepOutcome {
    /// Done with no undo data.
    pub fn done(detail: impl Into<String>) -> Self {
        Self::Done {
            detail: detail.into(),
            undo: Value::Null,
        }
    }

    /// Not applicable.
    pub fn not_applicable(why: impl Into<String>) -> Self {
        Self::NotApplicable { why: why.into() }
    }

    /// Whether the step left things as wanted (or had nothing to do).
    pub fn ok(&self) -> bool {
        !matches!(self, Self::Failed { .. } | Self::Pending { .. })
    }

    /// Whether it changed something that release may have to undo.
    pub fn changed(&self) -> bool {
        matches!(self, Self::Done { .. })
    }

    /// The undo data.
    pub fn undo_data(&self) -> &Value {
        match self {
            Self::Done { undo, .. } => undo,
            _ => &Value::Null,
        }
    }

    /// One line for humans.
    pub fn summary(&self) -> String {
        match self {
            Self::Done { detail, .. } => format!("done: {detail}"),
            Self::AlreadyDone { detail } => format!("already done: {detail}"),
            Self::DryRun { calls } => format!("dry run: {}", calls.join("; ")),
            Self::NotApplicable { why } => format!("not applicable: {why}"),
            Self::Pending { why } => format!("pending: {why}"),
            Self::Failed { error } => format!("failed: {error}"),
        }
    }
}

/// The in-kernel network block, behind a trait so that tests without root can stand in for it.
pub trait NetworkBlock: Send {
    /// Cuts the cgroup and its descendants off the network. Idempotent.
    fn block(&mut self, cgroup_id: u64) -> Result<(), QuarantineError>;
    /// Lifts the block. Idempotent.
    fn release(&mut self, cgroup_id: u64) -> Result<(), QuarantineError>;
    /// The cgroups blocked, those an earlier run left pinned included.
    fn blocked(&self) -> Vec<u64>;
}

impl NetworkBlock for KernelQuarantine {
    fn block(&mut self, cgroup_id: u64) -> Result<(), QuarantineError> {
        KernelQuarantine::block(self, cgroup_id)
    }

    fn release(&mut self, cgroup_id: u64) -> Result<(), QuarantineError> {
        KernelQuarantine::release(self, cgroup_id)
    }

    fn blocked(&self) -> Vec<u64> {
        KernelQuarantine::blocked(self).iter().copied().collect()
    }
}

/// The block, shared by the dispatcher and its release path.
pub type SharedBlock = Arc<Mutex<Box<dyn NetworkBlock>>>;

/// An incident as the actions see it.
#[derive(Debug, Clone)]
pub struct Incident {
    /// Id, e.g. `inc-20261123t101500z-3`.
    pub id: String,
    /// The pod.
    pub subject: Subject,
    /// The node the pod runs on.
    pub node: String,
    /// Score.
    pub score: f64,
    /// Reason.
    pub reason: String,
    /// cgroup ids to block (the pod-level cgroup covers all its containers).
    pub cgroup_ids: Vec<u64>,
    /// The pod as read from the API at the start of the API steps.
    pub pod: Option<Pod>,
    /// Other open incidents on the same node (release keeps the node cordoned for them).
    pub node_held_by: Vec<String>,
    /// `CLOCK_BOOTTIME` of the deciding event (0 when unknown, as for a resumed incident).
    pub event_ktime_ns: u64,
    /// `propose` until a person approves it; then, as from the start in `enforce`, the
    /// playbook runs.
    pub mode: config::Mode,
    /// The verdict's rules (empty for an incident resumed from the journal).
    pub rules: Vec<crate::rules::RuleMeta>,
}

impl Incident {
    /// Namespace and name of the pod, when known.
    pub fn pod_ref(&self) -> Option<(&str, &str)> {
        Some((
            self.subject.namespace.as_deref()?,
            self.subject.pod.as_deref()?,
        ))
    }
}

/// What a step runs with. The dispatcher builds it; `dry_run` is its decision alone.
pub struct StepCtx<'a> {
    /// The configuration.
    pub config: &'a ContainConfig,
    /// The Kubernetes API; `None` when no cluster is configured.
    pub api: Option<&'a kube::KubeApi>,
    /// The kernel block; `None` outside the daemon (the CLI).
    pub block: Option<&'a SharedBlock>,
    /// cgroup2 mount, for freeze and kill.
    pub cgroup_root: Option<&'a std::path::Path>,
    dry_run: bool,
    calls: Mutex<Vec<String>>,
}

impl<'a> StepCtx<'a> {
    /// A context; only the dispatcher and release decide `dry_run`.
    pub(crate) fn new(
        config: &'a ContainConfig,
        api: Option<&'a kube::KubeApi>,
        block: Option<&'a SharedBlock>,
        cgroup_root: Option<&'a std::path::Path>,
        dry_run: bool,
    ) -> Self {
        Self {
            config,
            api,
            block,
            cgroup_root,
            dry_run,
            calls: Mutex::new(Vec::new()),
        }
    }

    /// Runs a change, or in a dry run records `call` (the exact request) instead. Returns
    /// `None` in a dry run.
    pub async fn change<T, E>(
        &self,
        call: String,
        run: impl AsyncFnOnce() -> Result<T, E>,
    ) -> Result<Option<T>, E> {
        if self.recorded(call) {
            return Ok(None);
        }
        run().await.map(Some)
    }

    /// [`StepCtx::change`] for a change made at once, with no I/O to wait for (a map update).
    pub fn change_now<T, E>(
        &self,
        call: String,
        run: impl FnOnce() -> Result<T, E>,
    ) -> Result<Option<T>, E> {
        if self.recorded(call) {
            return Ok(None);
        }
        run().map(Some)
    }

    /// In a dry run, records `call` and says so.
    fn recorded(&self, call: String) -> bool {
        if self.dry_run {
            tracing::info!("dry run: {call}");
            self.calls
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(call);
        }
        self.dry_run
    }

    /// Whether this is a dry run (for the outcome's wording only; `change` does the rest).
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    pub(crate) fn take_calls(&self) -> Vec<String> {
        std::mem::take(
            &mut *self
                .calls
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// Where a step's Kubernetes Event goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventTarget {
    /// The pod.
    Pod,
    /// The node.
    Node,
}

/// One playbook step.
pub trait Action: Send + Sync {
    /// Its name in the journal and the configuration.
    fn name(&self) -> &'static str;
    /// The RBAC rules `run` and `undo` need.
    fn rbac(&self) -> &'static [Rule];
    /// The `deploy/components/` component that grants them, when `deploy/rbac.yaml` does not.
    fn rbac_component(&self) -> Option<&'static str> {
        None
    }
    /// Whether the configuration enables it.
    fn enabled(&self, config: &ContainConfig) -> bool;
    /// Its configuration problems, at config time (locations relative to `contain`).
    fn check(&self, config: &ContainConfig) -> Vec<Problem> {
        let _ = config;
        Vec::new()
    }
    /// What its Event is about.
    fn event_target(&self) -> EventTarget {
        EventTarget::Pod
    }
    /// Runs it. Idempotent: running it again on a contained pod changes nothing.
    fn run<'a>(
        &'a self,
        ctx: &'a StepCtx<'a>,
        incident: &'a Incident,
    ) -> BoxFuture<'a, StepOutcome>;
    /// Undoes what `run` did (`done` is its recorded outcome).
    fn undo<'a>(
        &'a self,
        ctx: &'a StepCtx<'a>,
        incident: &'a Incident,
        done: &'a StepOutcome,
    ) -> BoxFuture<'a, StepOutcome>;
}

/// The journal directory of a configuration.
pub fn journal_dir(config: &ContainConfig) -> PathBuf {
    config.journal_dir.clone()
}

#[cfg(test)]
mod tests;
