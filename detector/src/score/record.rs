//! What the engine reports: alerts (one rule matched one event) and verdicts (a pod's score
//! crossed a threshold), both one JSON object per line with a `kind` of `alert` or `verdict`.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{event::Event, rules::RuleMeta};

/// One output record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    /// A rule matched an event.
    Alert(Box<Alert>),
    /// A pod's decision went up.
    Verdict(Box<Verdict>),
}

/// What to do about a pod, in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Below every threshold: keep the record.
    Log,
    /// Tell a person.
    Alert,
    /// Isolate the pod.
    Contain,
}

/// The pod (or container, or cgroup) a record is about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// Scoring key: `pod:<uid>`, `container:<id>` or `cgroup:<id>`.
    pub key: String,
    /// Pod namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Pod name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Pod UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// Container id (of the first event seen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Container image (of the first event seen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// cgroup id (of the first event seen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
}

/// One rule matching one event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Time of the event.
    #[serde(
        rename = "ts",
        serialize_with = "crate::event::rfc3339",
        deserialize_with = "crate::event::from_rfc3339"
    )]
    pub time: OffsetDateTime,
    /// Kernel time of the event.
    pub ktime_ns: u64,
    /// Whom it is about.
    pub subject: Subject,
    /// The rule, with its MITRE ATT&CK tactic and technique.
    pub rule: RuleMeta,
    /// The pod's score after this match.
    pub score: f64,
    /// The pod's decision after this match.
    pub decision: Decision,
    /// Facts the rule does not carry, e.g. the rate of an egress spike.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The event.
    pub event: Event,
}

/// A pod's decision went up: why, with the rules and events that made its score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Time of the event that decided.
    #[serde(
        rename = "ts",
        serialize_with = "crate::event::rfc3339",
        deserialize_with = "crate::event::from_rfc3339"
    )]
    pub time: OffsetDateTime,
    /// Kernel time of that event.
    pub ktime_ns: u64,
    /// Whom it is about.
    pub subject: Subject,
    /// The score.
    pub score: f64,
    /// The decision.
    pub decision: Decision,
    /// Why, in one sentence.
    pub reason: String,
    /// Distinct ATT&CK tactics and techniques of the contributing rules.
    pub mitre: Vec<MitreTag>,
    /// The contributing rules, first matched first.
    pub rules: Vec<Contribution>,
    /// Rules that matched but did not fit in `rules`.
    pub omitted_rules: u32,
}

/// One ATT&CK tactic and technique.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MitreTag {
    /// Tactic.
    pub tactic: String,
    /// Technique id.
    pub technique: String,
}

/// What one rule added to a score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contribution {
    /// The rule.
    pub rule: RuleMeta,
    /// Times it matched in this episode.
    pub matches: u32,
    /// The first events it matched (bounded).
    pub events: Vec<Event>,
}
