//! The export envelope: every kind of record the daemon sends to a SIEM, its severity, and the
//! unique id that lets a receiver drop the duplicates at-least-once delivery can produce.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::event::{Body, Event, FileOperation};

/// How serious a record is; the order is the order of the variants (`Info` lowest).
///
/// The numbers are OCSF `severity_id` values, which the other schemas are mapped from.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Telemetry: something happened.
    #[default]
    Info = 1,
    /// Worth a look.
    Low = 2,
    /// Suspicious.
    Medium = 3,
    /// Likely malicious.
    High = 4,
    /// Malicious and urgent.
    Critical = 5,
}

impl Severity {
    /// The OCSF `severity_id`.
    pub fn ocsf_id(self) -> u8 {
        self as u8
    }

    /// The OCSF `severity` caption.
    pub fn caption(self) -> &'static str {
        match self {
            Self::Info => "Informational",
            Self::Low => "Low",
            Self::Medium => "Medium",
            Self::High => "High",
            Self::Critical => "Critical",
        }
    }
}

/// Which kind of record, for per-sink filters (`kinds:` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    /// An exec event.
    Exec,
    /// An exit event.
    Exit,
    /// A file event.
    File,
    /// A connect event.
    Connect,
    /// A syscall event.
    Syscall,
    /// An egress sample.
    Egress,
    /// A loss report.
    Loss,
    /// A rule verdict (an alert).
    Verdict,
    /// A containment action.
    Action,
    /// An evidence manifest.
    Evidence,
}

/// A record that is not an event, produced by the rules, containment or evidence stages.
///
/// Those stages own their types; the exporter needs only this much of them: when, how serious,
/// a name (the rule, the action), one line for humans, and the full JSON, which every schema
/// carries along so nothing is lost in translation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// When it was produced.
    #[serde(with = "rfc3339")]
    pub time: OffsetDateTime,
    /// How serious it is.
    pub severity: Severity,
    /// Rule or action name, e.g. `shell_in_container` or `isolate_pod`.
    pub name: String,
    /// One line for humans.
    pub summary: String,
    /// The producing stage's own JSON form.
    pub data: serde_json::Value,
}

/// One record to export.
#[expect(
    clippy::large_enum_variant,
    reason = "events are nearly every record; boxing them would allocate for each"
)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", content = "data", rename_all = "lowercase")]
pub enum Record {
    /// Telemetry from the sensors.
    Event(Event),
    /// A rule verdict.
    Verdict(Finding),
    /// A containment action taken (or dry-run).
    Action(Finding),
    /// An evidence manifest.
    Evidence(Finding),
}

impl Record {
    /// The kind, for filters.
    pub fn kind(&self) -> RecordKind {
        match self {
            Self::Event(event) => match event.body {
                Body::Exec(_) => RecordKind::Exec,
                Body::Exit(_) => RecordKind::Exit,
                Body::File(_) => RecordKind::File,
                Body::Connect(_) => RecordKind::Connect,
                Body::Syscall(_) => RecordKind::Syscall,
                Body::Egress(_) => RecordKind::Egress,
                Body::Loss(_) => RecordKind::Loss,
            },
            Self::Verdict(_) => RecordKind::Verdict,
            Self::Action(_) => RecordKind::Action,
            Self::Evidence(_) => RecordKind::Evidence,
        }
    }

    /// Severity: events are informational except sensitive file access, a log cleared and the
    /// system calls the sensors report (low: each is of interest by itself) and losses
    /// (medium: the detector was blind for a while); findings carry their own.
    pub fn severity(&self) -> Severity {
        match self {
            Self::Event(event) => match &event.body {
                Body::File(file) if file.sensitive || file.read_sensitive => Severity::Low,
                Body::File(file) if file.log && file.op != FileOperation::Open => Severity::Low,
                Body::Syscall(_) => Severity::Low,
                Body::Loss(_) => Severity::Medium,
                _ => Severity::Info,
            },
            Self::Verdict(f) | Self::Action(f) | Self::Evidence(f) => f.severity,
        }
    }

    /// When it happened.
    pub fn time(&self) -> OffsetDateTime {
        match self {
            Self::Event(event) => event.time,
            Self::Verdict(f) | Self::Action(f) | Self::Evidence(f) => f.time,
        }
    }

    /// Protected records are never dropped by a full queue: only events are.
    pub fn is_protected(&self) -> bool {
        !matches!(self, Self::Event(_))
    }
}

/// A record with the id the exporter gave it: what the disk queues hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique across restarts: the exporter's start time and a sequence number.
    pub uid: String,
    /// The record.
    #[serde(flatten)]
    pub record: Record,
}

/// RFC 3339 text for the finding's time, as events have.
mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::{OffsetDateTime, format_description::well_known::Rfc3339};

    pub fn serialize<S: Serializer>(
        time: &OffsetDateTime,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let text = time.format(&Rfc3339).map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<OffsetDateTime, D::Error> {
        let text = String::deserialize(deserializer)?;
        OffsetDateTime::parse(&text, &Rfc3339).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severities_order_and_read_back() {
        assert!(Severity::Info < Severity::Low && Severity::High < Severity::Critical);
        let value = serde_json::to_value(Severity::High).unwrap();
        assert_eq!(value, "high");
        assert_eq!(Severity::High.ocsf_id(), 4);
    }

    #[test]
    fn envelope_reads_back() {
        let envelope = Envelope {
            uid: "a-1".into(),
            record: Record::Verdict(Finding {
                time: OffsetDateTime::UNIX_EPOCH,
                severity: Severity::High,
                name: "shell_in_container".into(),
                summary: "a shell ran in a container".into(),
                data: serde_json::json!({"score": 80}),
            }),
        };
        let text = serde_json::to_string(&envelope).unwrap();
        assert!(text.contains(r#""record":"verdict""#), "{text}");
        let back: Envelope = serde_json::from_str(&text).unwrap();
        assert_eq!(back, envelope);
        assert!(back.record.is_protected());
        assert_eq!(back.record.kind(), RecordKind::Verdict);
    }
}
