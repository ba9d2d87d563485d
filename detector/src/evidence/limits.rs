//! Size and time budgets of one capture. Pure: the caller passes the current instant.

use std::time::{Duration, Instant};

use super::config::LimitsConfig;

/// What is left of an incident's budgets.
#[derive(Debug, Clone)]
pub struct Budget {
    bytes_left: u64,
    deadline: Instant,
    artifact_time: Duration,
}

/// The budget of one artifact: the tighter of its own limits and what the incident has left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArtifactBudget {
    /// Most bytes the artifact may have.
    pub max_bytes: u64,
    /// When writing it must stop.
    pub deadline: Instant,
    /// Whether `max_bytes` is the incident's remainder rather than the artifact's own limit.
    pub bytes_from_incident: bool,
    /// Whether `deadline` is the incident's rather than the artifact's own.
    pub time_from_incident: bool,
}

impl ArtifactBudget {
    /// Why writing stopped at `max_bytes`, for the manifest.
    pub fn size_reason(&self) -> String {
        if self.bytes_from_incident {
            format!(
                "incident size budget reached: cut at {} bytes",
                self.max_bytes
            )
        } else {
            format!(
                "artifact size limit reached: cut at {} bytes",
                self.max_bytes
            )
        }
    }

    /// Why writing stopped at `deadline`, for the manifest.
    pub fn time_reason(&self) -> String {
        if self.time_from_incident {
            "incident time budget reached".into()
        } else {
            "artifact time limit reached".into()
        }
    }
}

impl Budget {
    /// A fresh budget from the configured limits, starting at `now`.
    pub fn new(limits: &LimitsConfig, now: Instant) -> Self {
        Self {
            bytes_left: limits.incident_bytes,
            deadline: now + Duration::from_millis(limits.incident_ms),
            artifact_time: Duration::from_millis(limits.artifact_ms),
        }
    }

    /// The budget for the next artifact, whose own size limit is `artifact_bytes`.
    pub fn artifact(&self, artifact_bytes: u64, now: Instant) -> ArtifactBudget {
        let own_deadline = now + self.artifact_time;
        ArtifactBudget {
            max_bytes: artifact_bytes.min(self.bytes_left),
            deadline: own_deadline.min(self.deadline),
            bytes_from_incident: self.bytes_left < artifact_bytes,
            time_from_incident: self.deadline < own_deadline,
        }
    }

    /// Records bytes written.
    pub fn spend(&mut self, bytes: u64) {
        self.bytes_left = self.bytes_left.saturating_sub(bytes);
    }

    /// Why nothing more may be captured, if that is so.
    pub fn exhausted(&self, now: Instant) -> Option<&'static str> {
        if now >= self.deadline {
            Some("incident time budget reached")
        } else if self.bytes_left == 0 {
            Some("incident size budget reached")
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_budget_is_the_tighter_of_both() {
        let limits = LimitsConfig {
            incident_bytes: 100,
            incident_ms: 1000,
            artifact_ms: 400,
            ..LimitsConfig::default()
        };
        let t0 = Instant::now();
        let mut budget = Budget::new(&limits, t0);
        let a = budget.artifact(60, t0);
        assert_eq!(a.max_bytes, 60);
        assert!(!a.bytes_from_incident);
        assert_eq!(a.deadline, t0 + Duration::from_millis(400));
        budget.spend(60);
        let b = budget.artifact(60, t0 + Duration::from_millis(800));
        assert_eq!(b.max_bytes, 40);
        assert!(b.bytes_from_incident && b.time_from_incident);
        assert!(b.size_reason().contains("incident size budget"));
        assert_eq!(budget.exhausted(t0), None);
        budget.spend(40);
        assert_eq!(budget.exhausted(t0), Some("incident size budget reached"));
        let fresh = Budget::new(&limits, t0);
        assert_eq!(
            fresh.exhausted(t0 + Duration::from_secs(1)),
            Some("incident time budget reached")
        );
    }
}
