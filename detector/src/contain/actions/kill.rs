//! Optional: kill every process of the pod's cgroup (`cgroup.kill`, Linux 5.14).

use futures::{FutureExt as _, future::BoxFuture};

use super::freeze::write_each;
use crate::{
    config::Problem,
    contain::{Action, ContainConfig, Incident, Rule, StepCtx, StepOutcome},
};

/// Writes `1` to the pod cgroup's `cgroup.kill`; the kubelet restarts the containers, still
/// cut off by the kernel block. Cannot be undone.
pub struct Kill;

impl Action for Kill {
    fn name(&self) -> &'static str {
        "kill"
    }

    fn rbac(&self) -> &'static [Rule] {
        &[]
    }

    fn enabled(&self, config: &ContainConfig) -> bool {
        config.steps.kill
    }

    fn check(&self, config: &ContainConfig) -> Vec<Problem> {
        if config.steps.kill && config.steps.freeze {
            return vec![Problem {
                at: "steps.kill".into(),
                message:
                    "excludes steps.freeze (a frozen cgroup keeps its processes for forensics)"
                        .into(),
            }];
        }
        Vec::new()
    }

    fn run<'a>(
        &'a self,
        ctx: &'a StepCtx<'a>,
        incident: &'a Incident,
    ) -> BoxFuture<'a, StepOutcome> {
        write_each(ctx, incident, "cgroup.kill", "1").boxed()
    }

    fn undo<'a>(
        &'a self,
        _ctx: &'a StepCtx<'a>,
        _incident: &'a Incident,
        _done: &'a StepOutcome,
    ) -> BoxFuture<'a, StepOutcome> {
        async { StepOutcome::not_applicable("killed processes stay killed") }.boxed()
    }
}
