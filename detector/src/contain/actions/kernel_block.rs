//! In-kernel network block of the pod's cgroups: immediate, so always the first step.

use futures::{FutureExt as _, future::BoxFuture};
use serde_json::json;

use crate::contain::{Action, ContainConfig, Incident, Rule, StepCtx, StepOutcome};

/// Adds the pod's cgroup ids to the `QUARANTINE` map (connects fail with `EPERM`, packets drop).
pub struct KernelBlock;

impl Action for KernelBlock {
    fn name(&self) -> &'static str {
        "kernel_block"
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
        async move {
            let Some(block) = ctx.block else {
                return StepOutcome::not_applicable(
                    "the kernel block is applied by the daemon only",
                );
            };
            if incident.cgroup_ids.is_empty() {
                return StepOutcome::not_applicable("the verdict names no cgroup");
            }
            let mut blocked = Vec::new();
            for &id in &incident.cgroup_ids {
                let result = ctx
                    .change(format!("kernel block cgroup {id}"), async || {
                        block
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .block(id)
                    })
                    .await;
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
        .boxed()
    }

    fn undo<'a>(
        &'a self,
        ctx: &'a StepCtx<'a>,
        incident: &'a Incident,
        done: &'a StepOutcome,
    ) -> BoxFuture<'a, StepOutcome> {
        async move {
            let Some(block) = ctx.block else {
                return StepOutcome::Pending {
                    why: "the daemon lifts the kernel block when it reads the release".into(),
                };
            };
            // The cgroups the block was applied to: after a reboot, the pod's new ones.
            let ids = applied_to(done).unwrap_or_else(|| incident.cgroup_ids.clone());
            for &id in &ids {
                let result = ctx
                    .change(format!("kernel release cgroup {id}"), async || {
                        block
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .release(id)
                    })
                    .await;
                if let Err(err) = result {
                    return StepOutcome::Failed {
                        error: err.to_string(),
                    };
                }
            }
            StepOutcome::done(format!("cgroups {ids:?} back on the network"))
        }
        .boxed()
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
