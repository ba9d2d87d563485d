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
    /// At most this many containments per window across the cluster, on a Lease (with a
    /// cluster configured).
    pub cluster_budget: ClusterBudgetConfig,
    /// Pods in these namespaces are never contained (the daemon's own, from `POD_NAMESPACE`, is
    /// added at start).
    pub protected_namespaces: Vec<String>,
    /// Pods matching any of these label selectors (`key=value` or `key`) are never contained.
    pub protected_labels: Vec<String>,
    /// The node's name; else `NODE_NAME`, else the host name. A pod's own `spec.nodeName` wins.
    pub node_name: Option<String>,
    /// Whether an incident runs the playbook at once (`enforce`) or asks a person first
    /// (`propose`), per namespace and rule, and when unconfirmed incidents lapse.
    pub modes: ModesConfig,
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
    /// The VolumeSnapshotClass of `steps.snapshot_volumes`; the cluster's default when unset.
    pub snapshot_class: Option<String>,
    /// Emit a Kubernetes Event on the pod or node for each step.
    pub events: bool,
    /// Each pod's latest `alert` or `contain` verdict as an OpenReports `Report` in its
    /// namespace, owned by the pod (with a cluster, where the CRD is installed).
    pub verdict_reports: bool,
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

/// The cluster-wide budget, kept in a `coordination.k8s.io` Lease shared by every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterBudgetConfig {
    /// Take from it before the API steps of each containment.
    pub enabled: bool,
    /// Containments per window at most, across every node.
    pub max: u32,
    /// The window, in seconds.
    pub window_s: u64,
    /// The Lease's name.
    pub lease: String,
    /// The Lease's namespace; else the daemon's own (`POD_NAMESPACE`), else `default`.
    pub namespace: Option<String>,
}

/// How an incident is acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The whole playbook at once.
    #[default]
    Enforce,
    /// The kernel block only (or nothing), a proposal on the pod, and the API steps once a
    /// person approves (`detector approve INCIDENT`, or the pod annotated
    /// `<prefix>approve=<incident>`).
    Propose,
}

/// Modes per namespace and rule, and the expiry of unconfirmed incidents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModesConfig {
    /// The mode where neither a namespace nor a rule sets one.
    pub default: Mode,
    /// Per namespace; wins over the rules.
    pub namespaces: std::collections::BTreeMap<String, Mode>,
    /// Per rule id: an incident one of whose rules proposes is proposed.
    pub rules: std::collections::BTreeMap<String, Mode>,
    /// While a proposal waits, cut the pod off in the kernel (with `steps.kernel_block`).
    pub propose_kernel_block: bool,
    /// A proposal nobody approved within this many seconds lapses: released, journaled as
    /// expired (0: never).
    pub propose_expiry_s: u64,
    /// An enforced incident nobody confirmed (`detector confirm INCIDENT`) within this many
    /// seconds is released, journaled as expired (0: never).
    pub enforce_expiry_s: u64,
}

impl Default for ModesConfig {
    fn default() -> Self {
        Self {
            default: Mode::Enforce,
            namespaces: std::collections::BTreeMap::new(),
            rules: std::collections::BTreeMap::new(),
            // A proposal still stops the exfiltration while it waits; only the disruptive API
            // steps wait for a person.
            propose_kernel_block: true,
            // An hour is a working on-call response time; a proposal older than that was not
            // looked at, and the pod gets its network back rather than staying cut off unseen.
            propose_expiry_s: 3600,
            // An enforced incident stays until a person releases it: a containment that lapses
            // when nobody looks would hand the pod back to an attacker.
            enforce_expiry_s: 0,
        }
    }
}

impl ModesConfig {
    /// The mode of an incident on a pod of `namespace` whose verdict names `rules`: the
    /// namespace's, else `propose` when one of the rules proposes, else the default.
    pub fn of<'a>(
        &self,
        namespace: Option<&str>,
        rules: impl IntoIterator<Item = &'a str>,
    ) -> Mode {
        if let Some(mode) = namespace.and_then(|ns| self.namespaces.get(ns)) {
            return *mode;
        }
        let mut by_rules = rules.into_iter().filter_map(|r| self.rules.get(r));
        if by_rules.any(|m| *m == Mode::Propose) {
            return Mode::Propose;
        }
        self.default
    }

    /// Whether any incident can be proposed or expire under these modes.
    pub fn may_propose_or_expire(&self) -> bool {
        self.default == Mode::Propose
            || self.namespaces.values().any(|m| *m == Mode::Propose)
            || self.rules.values().any(|m| *m == Mode::Propose)
            || self.enforce_expiry_s > 0
    }

    /// How long an incident of `mode` lasts unconfirmed (`None`: for ever).
    pub fn expiry(&self, mode: Mode) -> Option<std::time::Duration> {
        let seconds = match mode {
            Mode::Enforce => self.enforce_expiry_s,
            Mode::Propose => self.propose_expiry_s,
        };
        (seconds > 0).then(|| std::time::Duration::from_secs(seconds))
    }
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
    /// Take a VolumeSnapshot of each PersistentVolumeClaim the pod mounts (kept on release).
    pub snapshot_volumes: bool,
    /// Strip the labels its controller's and Services' selectors match.
    pub remove_from_service: bool,
    /// Label the pod as quarantined and annotate it with the incident.
    pub label_pod: bool,
    /// Mark the pod `karpenter.sh/do-not-disrupt` and not safe to evict
    /// (`cluster-autoscaler.kubernetes.io/safe-to-evict: "false"`).
    pub protect_pod: bool,
    /// List what the pod's ServiceAccount may do (its RoleBindings and ClusterRoleBindings, by
    /// name or group) in the incident: the blast radius of its token. Read only.
    pub list_access: bool,
    /// Take the pod's ServiceAccount out of the bindings that name it (put back on release) and
    /// delete its legacy token Secrets; needs `deploy/components/revoke-credentials`.
    pub revoke_service_account: bool,
    /// The incident as an OpenReports `Report` in the pod's namespace (where the CRD is
    /// installed); deleted on release.
    pub report: bool,
    /// Ensure the namespace's deny-all NetworkPolicy selecting the quarantine label.
    pub network_policy: bool,
    /// Label the node as suspect.
    pub label_node: bool,
    /// Keep the autoscalers off the node while an incident holds it
    /// (`karpenter.sh/do-not-disrupt`, `cluster-autoscaler.kubernetes.io/scale-down-disabled`).
    pub protect_node: bool,
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
            cluster_budget: ClusterBudgetConfig::default(),
            protected_namespaces: vec!["kube-system".into()],
            protected_labels: Vec::new(),
            node_name: None,
            modes: ModesConfig::default(),
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
            snapshot_class: None,
            events: true,
            verdict_reports: true,
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

impl Default for ClusterBudgetConfig {
    fn default() -> Self {
        // A false-positive storm is what reaches many nodes at once; a real intrusion that
        // needs more than ten pods contained within ten minutes has people looking already.
        Self {
            enabled: true,
            max: 10,
            window_s: 600,
            lease: "detector-containment-budget".into(),
            namespace: None,
        }
    }
}

impl Default for StepsConfig {
    fn default() -> Self {
        Self {
            kernel_block: true,
            freeze: false,
            kill: false,
            snapshot_volumes: false,
            remove_from_service: true,
            label_pod: true,
            protect_pod: true,
            list_access: true,
            revoke_service_account: false,
            report: true,
            network_policy: true,
            label_node: true,
            protect_node: true,
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

/// A DNS-1123 subdomain (a Lease's or a namespace's name).
fn check_object_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a Kubernetes object name (lower-case letters, digits, '-' and '.', \
             starting and ending with a letter or digit)"
        ))
    }
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
        if self.cluster_budget.max == 0 {
            problem("cluster_budget.max", "must be greater than 0".into());
        }
        if self.cluster_budget.window_s == 0 {
            problem("cluster_budget.window_s", "must be greater than 0".into());
        }
        if let Err(message) = check_object_name(&self.cluster_budget.lease) {
            problem("cluster_budget.lease", message);
        }
        if let Some(namespace) = &self.cluster_budget.namespace
            && let Err(message) = check_object_name(namespace)
        {
            problem("cluster_budget.namespace", message);
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
