//! The `contain:` section of the configuration.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::Problem;

/// Containment settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainConfig {
    /// Act on `contain` verdicts at all.
    pub enabled: bool,
    /// Log the exact API calls and kernel changes instead of making them.
    pub dry_run: bool,
    /// Verdicts within this many seconds of the start are journaled, not acted on (the scoring
    /// engine has not learned baselines yet).
    pub warmup_s: u64,
    /// Where incidents are journaled (one JSON-lines file, fsync'd).
    pub journal_dir: PathBuf,
    /// At most this many containments per window on this node; past it the dispatcher disarms.
    pub budget: BudgetConfig,
    /// Pods in these namespaces are never contained (the daemon's own, from `POD_NAMESPACE`, is
    /// added at start).
    pub protected_namespaces: Vec<String>,
    /// Pods matching any of these label selectors (`key=value` or `key`) are never contained.
    pub protected_labels: Vec<String>,
    /// The node's name; else `NODE_NAME`, else the host name. A pod's own `spec.nodeName` wins.
    pub node_name: Option<String>,
    /// Which playbook steps run.
    pub steps: StepsConfig,
    /// The label that marks a quarantined pod (selected by the deny-all NetworkPolicy).
    pub quarantine_label: LabelConfig,
    /// The label that marks a suspect node.
    pub node_label: LabelConfig,
    /// Prefix of the annotations written on the pod (incident id, score, reason).
    pub annotation_prefix: String,
    /// Name of the deny-all NetworkPolicy, one per namespace.
    pub network_policy_name: String,
    /// Emit a Kubernetes Event on the pod or node for each step.
    pub events: bool,
    /// Retries of Kubernetes API calls.
    pub api: ApiRetryConfig,
    /// How long evictions refused by a PodDisruptionBudget (429) are retried, in seconds.
    pub evict_deadline_s: u64,
}

/// The action budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetConfig {
    /// Containments per window at most.
    pub max: u32,
    /// The window, in seconds.
    pub window_s: u64,
}

/// Which steps of the playbook run, in playbook order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StepsConfig {
    /// In-kernel network block of the pod's cgroups (always first: it is immediate).
    pub kernel_block: bool,
    /// Freeze the pod's cgroup (`cgroup.freeze`); keeps memory for forensics.
    pub freeze: bool,
    /// Kill every process of the pod's cgroup (`cgroup.kill`); excludes `freeze`.
    pub kill: bool,
    /// Strip the labels its controller's and Services' selectors match.
    pub remove_from_service: bool,
    /// Label the pod as quarantined and annotate it with the incident.
    pub label_pod: bool,
    /// Ensure the namespace's deny-all NetworkPolicy selecting the quarantine label.
    pub network_policy: bool,
    /// Label the node as suspect.
    pub label_node: bool,
    /// Cordon the node.
    pub cordon_node: bool,
    /// Evict the node's other pods through the Eviction API.
    pub evict_other_pods: bool,
}

/// One label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelConfig {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
}

/// Retries of transient API failures (429, 5xx, timeouts), with exponential backoff and jitter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiRetryConfig {
    /// Each call's timeout, in milliseconds.
    pub timeout_ms: u64,
    /// Attempts per call at most.
    pub max_attempts: u32,
    /// First backoff, in milliseconds; doubled each attempt, with up to 50% jitter.
    pub backoff_base_ms: u64,
    /// Longest backoff, in milliseconds.
    pub backoff_max_ms: u64,
}

impl Default for ContainConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dry_run: false,
            // Baselines of egress rates settle within the first minute.
            warmup_s: 60,
            journal_dir: PathBuf::from("/var/lib/detector/incidents"),
            budget: BudgetConfig::default(),
            protected_namespaces: vec!["kube-system".into()],
            protected_labels: Vec::new(),
            node_name: None,
            steps: StepsConfig::default(),
            quarantine_label: LabelConfig {
                key: "quarantine".into(),
                value: "true".into(),
            },
            node_label: LabelConfig {
                key: "detector.security/suspect".into(),
                value: "true".into(),
            },
            annotation_prefix: "detector.security/".into(),
            network_policy_name: "detector-quarantine".into(),
            events: true,
            api: ApiRetryConfig::default(),
            // A PodDisruptionBudget usually frees up once a replacement is ready.
            evict_deadline_s: 120,
        }
    }
}

impl Default for BudgetConfig {
    fn default() -> Self {
        // Five pods in ten minutes on one node is already an outbreak or a false positive storm.
        Self {
            max: 5,
            window_s: 600,
        }
    }
}

impl Default for StepsConfig {
    fn default() -> Self {
        Self {
            kernel_block: true,
            freeze: false,
            kill: false,
            remove_from_service: true,
            label_pod: true,
            network_policy: true,
            label_node: true,
            cordon_node: true,
            evict_other_pods: true,
        }
    }
}

impl Default for ApiRetryConfig {
    fn default() -> Self {
        Self {
            timeout_ms: 5000,
            max_attempts: 5,
            backoff_base_ms: 100,
            backoff_max_ms: 5000,
        }
    }
}

/// A parsed protected-label selector term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelTerm {
    /// Key.
    pub key: String,
    /// Value; `None` means the key only has to exist.
    pub value: Option<String>,
}

impl LabelTerm {
    /// Parses `key=value` or `key`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (key, value) = match text.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim().to_owned())),
            None => (text.trim(), None),
        };
        check_label_key(key)?;
        Ok(Self {
            key: key.to_owned(),
            value,
        })
    }

    /// Whether the labels match.
    pub fn matches(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        labels
            .get(&self.key)
            .is_some_and(|v| self.value.as_ref().is_none_or(|want| want == v))
    }
}

fn check_label_key(key: &str) -> Result<(), String> {
    let name = key.rsplit('/').next().unwrap_or_default();
    if name.is_empty() || name.len() > 63 {
        return Err(format!(
            "{key:?} is not a label key (name part 1 to 63 characters)"
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!("{key:?} is not a label key"));
    }
    Ok(())
}

impl ContainConfig {
    /// Every problem, located under `at` (e.g. `contain`); the actions add their own checks.
    pub fn validate(&self, at: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| {
            problems.push(Problem {
                at: format!("{at}.{key}"),
                message,
            });
        };
        if self.budget.max == 0 {
            problem("budget.max", "must be greater than 0".into());
        }
        if self.budget.window_s == 0 {
            problem("budget.window_s", "must be greater than 0".into());
        }
        for (i, term) in self.protected_labels.iter().enumerate() {
            if let Err(message) = LabelTerm::parse(term) {
                problem(&format!("protected_labels[{i}]"), message);
            }
        }
        for (key, label) in [
            ("quarantine_label", &self.quarantine_label),
            ("node_label", &self.node_label),
        ] {
            if let Err(message) = check_label_key(&label.key) {
                problem(&format!("{key}.key"), message);
            }
            if label.value.len() > 63 {
                problem(&format!("{key}.value"), "longer than 63 characters".into());
            }
        }
        if self.api.max_attempts == 0 {
            problem("api.max_attempts", "must be greater than 0".into());
        }
        if self.api.timeout_ms == 0 {
            problem("api.timeout_ms", "must be greater than 0".into());
        }
        if self.network_policy_name.is_empty() {
            problem("network_policy_name", "must not be empty".into());
        }
        if self.journal_dir.as_os_str().is_empty() {
            problem("journal_dir", "must not be empty".into());
        }
        for action in super::actions::playbook() {
            for p in action.check(self) {
                problems.push(Problem {
                    at: format!("{at}.{}", p.at),
                    message: p.message,
                });
            }
        }
        problems
    }
}
