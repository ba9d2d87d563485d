//! Optional: freeze the pod's cgroup (`cgroup.freeze`), keeping its memory for forensics.

use std::path::{Path, PathBuf};

use futures::{FutureExt as _, future::BoxFuture};

use crate::contain::{Action, ContainConfig, Incident, Rule, StepCtx, StepOutcome};

/// Writes `1` to the pod cgroup's `cgroup.freeze`; undo writes `0`.
pub struct Freeze;

/// Finds the directory of a cgroup id below the cgroup2 mount.
pub(crate) fn cgroup_dir(root: &Path, id: u64) -> Option<PathBuf> {
    if crate::cgroup::cgroup_id(root).ok() == Some(id) {
        return Some(root.to_owned());
    }
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let path = entry.path();
                if crate::cgroup::cgroup_id(&path).ok() == Some(id) {
                    return Some(path);
                }
                stack.push(path);
            }
        }
    }
    None
}

/// Writes `value` to `file` in the directory of every cgroup of the incident.
pub(crate) async fn write_each(
    ctx: &StepCtx<'_>,
    incident: &Incident,
    file: &str,
    value: &str,
) -> StepOutcome {
    let Some(root) = ctx.cgroup_root else {
        return StepOutcome::not_applicable("no cgroup2 mount");
    };
    if incident.cgroup_ids.is_empty() {
        return StepOutcome::not_applicable("the verdict names no cgroup");
    }
    let mut done = Vec::new();
    for &id in &incident.cgroup_ids {
        let Some(dir) = cgroup_dir(root, id) else {
            return StepOutcome::Failed {
                error: format!("cgroup {id} not found below {}", root.display()),
            };
        };
        let target = dir.join(file);
        let result = ctx
            .change(
                format!("write {value} to {}", target.display()),
                async || std::fs::write(&target, value),
            )
            .await;
        if let Err(err) = result {
            return StepOutcome::Failed {
                error: format!("{}: {err}", target.display()),
            };
        }
        done.push(dir.display().to_string());
    }
    StepOutcome::done(format!("{file}={value} on {}", done.join(", ")))
}

impl Action for Freeze {
    fn name(&self) -> &'static str {
        "freeze"
    }

    fn rbac(&self) -> &'static [Rule] {
        &[]
    }

    fn enabled(&self, config: &ContainConfig) -> bool {
        config.steps.freeze
    }

    fn run<'a>(
        &'a self,
        ctx: &'a StepCtx<'a>,
        incident: &'a Incident,
    ) -> BoxFuture<'a, StepOutcome> {
        write_each(ctx, incident, "cgroup.freeze", "1").boxed()
    }

    fn undo<'a>(
        &'a self,
        ctx: &'a StepCtx<'a>,
        incident: &'a Incident,
        _done: &'a StepOutcome,
    ) -> BoxFuture<'a, StepOutcome> {
        write_each(ctx, incident, "cgroup.freeze", "0").boxed()
    }
}
