//! Scoring settings: one serde tree, defaults that work with no file, unknown keys rejected,
//! and [`ScoreConfig::validate`] reporting every problem with its location.

use serde::{Deserialize, Serialize};

use crate::config::Problem;

/// How matches become per-pod scores and decisions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreConfig {
    /// A pod's score halves every this many seconds without new matches.
    pub half_life_s: f64,
    /// Score at which a pod is reported.
    pub alert: f64,
    /// Score at which a pod is contained.
    pub contain: f64,
    /// Pods (or containers, or cgroups) tracked at once; the least recently seen go first.
    pub max_pods: usize,
    /// A pod not seen for this long is forgotten.
    pub idle_evict_s: u64,
    /// Rules listed in one verdict; further rules are counted.
    pub max_rules_per_verdict: usize,
    /// Events kept per rule of a verdict.
    pub max_events_per_rule: usize,
    /// Written paths remembered per pod for drift detection.
    pub max_written_paths: usize,
    /// Egress spike detection.
    pub egress: EgressConfig,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        Self {
            // Fifteen minutes: steps of one intrusion add up, a week of noise does not.
            half_life_s: 900.0,
            alert: 50.0,
            contain: 100.0,
            max_pods: 10_000,
            idle_evict_s: 3600,
            max_rules_per_verdict: 16,
            max_events_per_rule: 3,
            max_written_paths: 4096,
            egress: EgressConfig::default(),
        }
    }
}

/// Egress spike detection: a learned per-pod baseline of bytes per second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EgressConfig {
    /// Whether spikes are detected at all.
    pub enabled: bool,
    /// A rate above `factor` times the baseline is a spike...
    pub factor: f64,
    /// ...when it is also above this many bytes per second.
    pub floor_bytes_per_s: f64,
    /// Samples averaged into the baseline before anything can fire.
    pub warmup_samples: u32,
    /// Weight of a new sample in the moving average (0 < alpha <= 1).
    pub alpha: f64,
    /// What a spike adds to the pod's score.
    pub weight: f64,
}

impl Default for EgressConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            factor: 5.0,
            // 1 MiB/s: below this no spike is worth a look, whatever the baseline.
            floor_bytes_per_s: 1_048_576.0,
            // One minute of the default one-second samples.
            warmup_samples: 60,
            // About the last twenty samples weigh most.
            alpha: 0.05,
            weight: 40.0,
        }
    }
}

impl ScoreConfig {
    /// Every problem in the settings; empty when they are usable.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, at: &str, message: &str| {
            if !ok {
                problems.push(Problem {
                    at: at.to_owned(),
                    message: message.to_owned(),
                });
            }
        };
        let positive = |x: f64| x.is_finite() && x > 0.0;
        check(
            positive(self.half_life_s),
            "half_life_s",
            "must be a number > 0",
        );
        check(positive(self.alert), "alert", "must be a number > 0");
        check(
            positive(self.contain) && self.contain >= self.alert,
            "contain",
            "must be a number >= alert",
        );
        check(self.max_pods > 0, "max_pods", "must be greater than 0");
        check(
            self.idle_evict_s > 0,
            "idle_evict_s",
            "must be greater than 0",
        );
        let e = &self.egress;
        check(
            e.factor.is_finite() && e.factor > 1.0,
            "egress.factor",
            "must be a number > 1",
        );
        check(
            e.floor_bytes_per_s.is_finite() && e.floor_bytes_per_s >= 0.0,
            "egress.floor_bytes_per_s",
            "must be a number >= 0",
        );
        check(
            positive(e.alpha) && e.alpha <= 1.0,
            "egress.alpha",
            "must be in (0, 1]",
        );
        check(
            e.weight.is_finite() && e.weight >= 0.0,
            "egress.weight",
            "must be a number >= 0",
        );
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(ScoreConfig::default().validate().is_empty());
    }

    #[test]
    fn every_problem_is_reported() {
        let config = ScoreConfig {
            alert: 10.0,
            contain: 5.0,
            egress: EgressConfig {
                factor: 1.0,
                alpha: 0.0,
                ..EgressConfig::default()
            },
            ..ScoreConfig::default()
        };
        let at: Vec<_> = config.validate().into_iter().map(|p| p.at).collect();
        assert_eq!(at, ["contain", "egress.factor", "egress.alpha"]);
    }
}
