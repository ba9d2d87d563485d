//! Containment test support: a stand-in for the kernel quarantine maps (for tests and
//! benchmarks without root; the privileged tests use the real maps) and contain verdicts.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex, PoisonError},
};

use detector::{
    clock::Clock,
    contain::NetworkBlock,
    quarantine::QuarantineError,
    score::{Decision, Subject, Verdict},
};

/// Records which cgroups are blocked; clones share the record.
#[derive(Clone, Default)]
pub struct RecordingBlock(Arc<Mutex<BTreeSet<u64>>>);

impl RecordingBlock {
    /// The cgroups blocked now.
    pub fn blocked(&self) -> BTreeSet<u64> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl NetworkBlock for RecordingBlock {
    fn block(&mut self, cgroup_id: u64) -> Result<(), QuarantineError> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(cgroup_id);
        Ok(())
    }

    fn release(&mut self, cgroup_id: u64) -> Result<(), QuarantineError> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&cgroup_id);
        Ok(())
    }

    fn blocked(&self) -> Vec<u64> {
        RecordingBlock::blocked(self).into_iter().collect()
    }
}

/// A `contain` verdict on pod `ns/pod` (uid `<pod>-uid`), decided now.
pub fn contain_verdict(ns: &str, pod: &str) -> Verdict {
    Verdict {
        time: time::OffsetDateTime::now_utc(),
        ktime_ns: Clock::boot_now_ns(),
        subject: Subject {
            key: format!("pod:{pod}-uid"),
            namespace: Some(ns.into()),
            pod: Some(pod.into()),
            pod_uid: Some(format!("{pod}-uid")),
            ..Subject::default()
        },
        score: 42.0,
        decision: Decision::Contain,
        reason: "reverse shell then credential read".into(),
        mitre: Vec::new(),
        rules: Vec::new(),
        omitted_rules: 0,
    }
}
