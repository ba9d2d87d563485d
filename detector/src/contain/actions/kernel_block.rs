//! In-kernel network block of the pod's cgroups: immediate, so always the first step. It is a
//! map update with nothing to wait for: the dispatcher calls [`apply`] on the verdict's own
//! thread; the [`Action`] wraps the same functions for release's loop over the steps.

use futures::{FutureExt as _, future::BoxFuture};
use serde_json::json;

use crate::contain::{Action, ContainConfig, Incident, Rule, StepCtx, StepOutcome};

/// Adds the pod's cgroup ids to the `QUARANTINE` map (connects fail with `EPERM`, packets drop).
pub struct KernelBlock;

/// Its name in the journal.
pub const NAME: &str = "kernel_block";

/// Blocks the incident's cgroups, now.
pub fn apply(ctx: &StepCtx<'_>, incident: &Incident) -> StepOutcome {
    let Some(block) = ctx.block else {
        return StepOutcome::not_applicable("the kernel block is applied by the daemon only");
    };
    if incident.cgroup_ids.is_empty() {
        return StepOutcome::not_applicable("the verdict names no cgroup");
    }
    let mut blocked = Vec::new();
    for &id in &incident.cgroup_ids {
        let result = ctx.change_now(format!("kernel block cgroup {id}"), || {
            block
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .block(id)
        });
        match result {
            Ok(_) => blocked.push(id),
            Err(err) => {
                return StepOutcome::Failed {
                    error: format!("blocked {blocked:?}, then: {err}"),
                };
            }
        }
    }
    StepOutcome::Done {
        detail: format!("cgroups {blocked:?} cut off the network"),
        undo: json!({ "cgroup_ids": blocked }),
    }
}

/// Lifts the block `done` applied (the incident's cgroups when it names none), now.
pub fn lift(ctx: &StepCtx<'_>, incident: &Incident, done: &StepOutcome) -> StepOutcome {
    let Some(block) = ctx.block else {
        return StepOutcome::Pending {
            why: "the daemon lifts the kernel block when it reads the release".into(),
        };
    };
    // The cgroups the block was applied to: after a reboot, the pod's new ones.
    let ids = applied_to(done).unwrap_or_else(|| incident.cgroup_ids.clone());
    for &id in &ids {
        let result = ctx.change_now(format!("kernel release cgroup {id}"), || {
            block
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .release(id)
        });
        if let Err(err) = result {
            return StepOutcome::Failed {
                error: err.to_string(),
            };
        }
    }
    StepOutcome::done(format!("cgroups {ids:?} back on the network"))
}

impl Action for KernelBlock {
    fn name(&self) -> &'static str {
        NAME
    }

    fn rbac(&self) -> &'static [Rule] {
        &[]
    }

    fn enabled(&self, config: &ContainConfig) -> bool {
        config.steps.kernel_block
    }

    fn run<'a>(
        &'a self,
        ctx: &'a StepCtx<'a>,
        incident: &'a Incident,
    ) -> BoxFuture<'a, StepOutcome> {
        futures::future::ready(apply(ctx, incident)).boxed()
    }

    fn undo<'a>(
        &'a self,
        ctx: &'a StepCtx<'a>,
        incident: &'a Incident,
        done: &'a StepOutcome,
    ) -> BoxFuture<'a, StepOutcome> {
        futures::future::ready(lift(ctx, incident, done)).boxed()
    }
}

/// The cgroups a done kernel block was applied to, as its undo records them.
pub fn applied_to(done: &StepOutcome) -> Option<Vec<u64>> {
    match done {
        StepOutcome::Done { undo, .. } => undo["cgroup_ids"]
            .as_array()
            .map(|ids| ids.iter().filter_map(serde_json::Value::as_u64).collect()),
        _ => None,
    }
}
