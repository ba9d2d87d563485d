//! Lines for people, after Falco's one-line alerts and `tetra getevents -o compact`: one per
//! alert, verdict, containment journal entry and evidence bundle, and a compact one per event.
//! Pure functions of the record, the time zone's offset and whether to colour.
//!
//! Every line starts with the local time (`HH:MM:SS.mmm`) and a level: the rule's severity
//! (alerts), the decision in capitals (verdicts), the outcome (containment), `evidence`, or the
//! event's kind. Then the pod (`namespace/name`, else `pod:<uid prefix>`, else
//! `container:<id prefix>`, else `pid N comm`); for alerts, verdicts and evidence the rule ids,
//! their ATT&CK techniques and the pod's score; for alerts and verdicts the triggering event's
//! key fact (executable and arguments, path, address and port); for containment the step, what
//! it did and the incident. Events, compact: kind, pid, command name, what, the process's role.
//!
//! ```text
//! 19:56:59.224 high      pod:11112222  shadow-file-access T1003.008  score 80  open /etc/shadow  (cat pid 17211)
//! 19:56:59.237 CONTAIN   pod:11112222  read-secret-with-tool,shadow-file-access,cloud-metadata-contacted T1552.001,T1003.008,T1552.005  score 130  connect tcp 169.254.169.254:80  (score 130.0 reached contain threshold 100.0)
//! 19:56:59.237 done      pod:11112222  kernel_block  cgroups [3293] cut off the network  incident inc-20261204t195659-16710-0
//! 19:56:59.238 n/a       pod:11112222  cordon_node  no cluster  incident inc-20261204t195659-16710-0
//! 19:56:42.111 file        16475 cat             open /etc/shadow  role=entrypoint  pod:11112222
//! ```
//!
//! What a process controls (command name, arguments, paths) is printed with its control
//! characters escaped, so that it cannot move the cursor or recolour the terminal.

use std::{fmt::Write as _, net::IpAddr};

use time::{OffsetDateTime, UtcOffset, format_description::well_known::Rfc3339};

use super::{EvidenceNotice, Notice};
use crate::{
    contain::{
        StepOutcome,
        journal::{Entry, EntryKind},
    },
    event::{Body, Container, Event, FileOperation, Pod, ProcessFields, Syscall},
    rules::Severity,
    score::{
        Subject,
        record::{Alert, Decision, Record, Verdict},
    },
};

/// How lines are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// ANSI colours: only for a terminal, and not with `NO_COLOR`.
    pub color: bool,
    /// The local time zone's offset from UTC, for the times shown.
    pub offset: UtcOffset,
}

/// Width of the level column (`contained`).
const LEVEL_WIDTH: usize = 9;
/// Characters of one untrusted string (a path, the arguments) shown at most.
const TEXT_MAX: usize = 240;
/// Rule ids (and techniques) of a verdict shown at most; the rest are counted.
const RULES_SHOWN: usize = 3;

/// ANSI select-graphic-rendition sequences.
mod sgr {
    pub const RESET: &str = "\x1b[0m";
    pub const DIM: &str = "\x1b[2m";
    pub const BOLD: &str = "\x1b[1m";
    pub const GREEN: &str = "\x1b[32m";
    pub const YELLOW: &str = "\x1b[33m";
    pub const RED: &str = "\x1b[31m";
    pub const BOLD_RED: &str = "\x1b[1;31m";
    pub const INVERSE: &str = "\x1b[7m";
    pub const NO_INVERSE: &str = "\x1b[27m";
}

/// How a line is coloured: the whole line, and the level shown inverse or not.
#[derive(Clone, Copy)]
struct Paint {
    line: &'static str,
    inverse_level: bool,
}

impl Paint {
    const NONE: Self = Self::line("");

    const fn line(line: &'static str) -> Self {
        Self {
            line,
            inverse_level: false,
        }
    }
}

/// An alert or a verdict.
pub fn record(record: &Record, style: Style) -> String {
    match record {
        Record::Alert(alert) => self::alert(alert, style),
        Record::Verdict(verdict) => self::verdict(verdict, style),
    }
}

/// A containment entry or an evidence bundle.
pub fn notice(notice: &Notice, style: Style) -> String {
    match notice {
        Notice::Action { entry, subject } => action(entry, subject.as_ref(), style),
        Notice::Evidence(evidence) => self::evidence(evidence, style),
    }
}

/// A rule matched an event: the rule's severity, the pod, the rule and its technique, the
/// pod's score after it, what the event did and, unless the pod column is the process, which
/// process did it.
pub fn alert(alert: &Alert, style: Style) -> String {
    let event = &alert.event;
    let who = Who::of(event, Some(&alert.subject));
    let mut rest = format!(
        "{}  {} {}  score {:.0}  {}",
        who.text,
        alert.rule.id,
        alert.rule.technique,
        alert.score,
        fact(event)
    );
    if let Some(detail) = &alert.detail {
        let _ = write!(rest, "  {}", clean(detail));
    }
    if !who.is_process {
        rest.push_str(&process_suffix(&event.process));
    }
    let (level, paint) = severity(alert.rule.severity);
    line(style, &clock(alert.time, style.offset), level, paint, &rest)
}

/// A pod's decision went up: the decision, the pod, its contributing rules and techniques, its
/// score, the deciding event's key fact (when the verdict kept that event) and the reason.
pub fn verdict(verdict: &Verdict, style: Style) -> String {
    let trigger = verdict
        .rules
        .iter()
        .flat_map(|c| &c.events)
        .find(|e| e.ktime_ns == verdict.ktime_ns && e.time == verdict.time);
    let who = match trigger {
        Some(event) => Who::of(event, Some(&verdict.subject)),
        None => Who::of_subject(&verdict.subject),
    };
    let ids = verdict.rules.iter().map(|c| c.rule.id.as_str());
    let rules = listed(ids, verdict.omitted_rules as usize);
    let techniques = listed(verdict.mitre.iter().map(|m| m.technique.as_str()), 0);
    let mut rest = format!(
        "{}  {rules} {techniques}  score {:.0}",
        who.text, verdict.score
    );
    if let Some(event) = trigger {
        let _ = write!(rest, "  {}", fact(event));
    }
    let _ = write!(rest, "  ({})", verdict.reason);
    let (level, paint) = match verdict.decision {
        Decision::Contain => (
            "CONTAIN",
            Paint {
                line: sgr::BOLD_RED,
                inverse_level: true,
            },
        ),
        Decision::Alert => ("ALERT", Paint::line(sgr::BOLD)),
        Decision::Log => ("LOG", Paint::NONE),
    };
    line(
        style,
        &clock(verdict.time, style.offset),
        level,
        paint,
        &rest,
    )
}

/// A containment journal entry: its outcome, the pod, the step and what it did, the incident.
pub fn action(entry: &Entry, subject: Option<&Subject>, style: Style) -> String {
    let who = subject.map_or_else(|| "?".to_owned(), |s| Who::of_subject(s).text);
    let (level, paint, what) = match &entry.kind {
        EntryKind::Opened {
            score,
            reason,
            dry_run,
            ..
        } => (
            "opened",
            Paint::line(sgr::BOLD_RED),
            format!(
                "score {score:.0}  ({reason}){}",
                if *dry_run { "  dry run" } else { "" }
            ),
        ),
        EntryKind::Refused { why, .. } => (
            "refused",
            Paint::line(sgr::YELLOW),
            format!("not contained: {why}"),
        ),
        EntryKind::Step { step, outcome } => {
            let (level, paint) = outcome_level(outcome);
            (level, paint, format!("{step}  {}", outcome_detail(outcome)))
        }
        EntryKind::Undo { step, outcome } => {
            let (level, paint) = outcome_level(outcome);
            (
                level,
                paint,
                format!("undo {step}  {}", outcome_detail(outcome)),
            )
        }
        EntryKind::Completed => (
            "contained",
            Paint::line(sgr::BOLD_RED),
            "every step attempted".to_owned(),
        ),
        EntryKind::ReleaseRequested { by } => (
            "release",
            Paint::line(sgr::GREEN),
            format!("release asked for by {by}"),
        ),
        EntryKind::Released => ("released", Paint::line(sgr::GREEN), "released".to_owned()),
        EntryKind::Approved { by } => (
            "approved",
            Paint::line(sgr::BOLD_RED),
            format!("proposal approved by {by}: the playbook runs"),
        ),
        EntryKind::Confirmed { by } => (
            "confirmed",
            Paint::line(sgr::BOLD_RED),
            format!("confirmed by {by}: kept until released"),
        ),
        EntryKind::Expired { after_s } => (
            "expired",
            Paint::line(sgr::YELLOW),
            format!("nobody approved or confirmed it within {after_s}s: released"),
        ),
    };
    let time = OffsetDateTime::parse(&entry.ts, &Rfc3339)
        .map_or_else(|_| entry.ts.clone(), |t| clock(t, style.offset));
    let rest = format!("{who}  {what}  incident {}", entry.incident);
    line(style, &time, level, paint, &rest)
}

/// An evidence bundle: the pod, the verdict's rules, techniques and score, the directory and
/// whether it is complete.
pub fn evidence(evidence: &EvidenceNotice, style: Style) -> String {
    let verdict = &evidence.verdict;
    let rules = listed(
        verdict.rules.iter().map(|c| c.rule.id.as_str()),
        verdict.omitted_rules as usize,
    );
    let techniques = listed(verdict.mitre.iter().map(|m| m.technique.as_str()), 0);
    let rest = format!(
        "{}  {rules} {techniques}  score {:.0}  bundle {} ({}, {} artifacts)  incident {}",
        Who::of_subject(&verdict.subject).text,
        verdict.score,
        clean(&evidence.dir.to_string_lossy()),
        if evidence.complete {
            "complete"
        } else {
            "incomplete"
        },
        evidence.artifacts,
        evidence.incident
    );
    line(
        style,
        &clock(evidence.time, style.offset),
        "evidence",
        Paint::line(sgr::BOLD),
        &rest,
    )
}

/// One event, compact: kind, pid, command name, what it did, the process's role in its
/// container and the pod, when known.
pub fn event(event: &Event, style: Style) -> String {
    let pid = event
        .process
        .pid
        .map_or_else(|| "-".to_owned(), |p| p.to_string());
    let comm = event
        .process
        .comm
        .as_deref()
        .map_or_else(|| "-".into(), clean);
    let mut rest = format!("{pid:>7} {comm:<15} {}", what(event));
    if let Some(lineage) = &event.lineage {
        let _ = write!(rest, "  role={}", lineage.role.as_str());
    }
    let who = Who::of(event, None);
    if !who.is_process {
        let _ = write!(rest, "  {}", who.text);
    }
    line(
        style,
        &clock(event.time, style.offset),
        event.body.kind(),
        Paint::NONE,
        &rest,
    )
}

/// The pod column.
struct Who {
    text: String,
    /// The text names the process (nothing better was known).
    is_process: bool,
}

impl Who {
    /// From the event's own pod and container, then the scoring subject, then the process.
    fn of(event: &Event, subject: Option<&Subject>) -> Self {
        if let Some(who) = pod_or_container(event.pod.as_ref(), event.container.as_ref(), subject) {
            return Self {
                text: who,
                is_process: false,
            };
        }
        match (event.process.pid, &event.process.comm) {
            (Some(pid), comm) => Self {
                text: format!(
                    "pid {pid} {}",
                    comm.as_deref().map_or_else(String::new, clean)
                )
                .trim_end()
                .to_owned(),
                is_process: true,
            },
            (None, _) => Self {
                text: subject.map_or_else(
                    || {
                        event
                            .cgroup_id
                            .map_or_else(|| "node".to_owned(), |id| format!("cgroup:{id}"))
                    },
                    |s| s.key.clone(),
                ),
                is_process: false,
            },
        }
    }

    fn of_subject(subject: &Subject) -> Self {
        Self {
            text: pod_or_container(None, None, Some(subject))
                .unwrap_or_else(|| subject.key.clone()),
            is_process: false,
        }
    }
}

fn pod_or_container(
    pod: Option<&Pod>,
    container: Option<&Container>,
    subject: Option<&Subject>,
) -> Option<String> {
    let named = pod
        .and_then(|p| Some((p.namespace.as_deref()?, p.name.as_deref()?)))
        .or_else(|| subject.and_then(|s| Some((s.namespace.as_deref()?, s.pod.as_deref()?))));
    if let Some((namespace, name)) = named {
        return Some(format!("{}/{}", clean(namespace), clean(name)));
    }
    let uid = pod
        .map(|p| p.uid.as_str())
        .or_else(|| subject.and_then(|s| s.pod_uid.as_deref()));
    if let Some(uid) = uid {
        return Some(format!("pod:{}", clean(prefix(uid, 8))));
    }
    let id = container
        .map(|c| c.id.as_str())
        .or_else(|| subject.and_then(|s| s.container_id.as_deref()));
    id.map(|id| format!("container:{}", clean(prefix(id, 12))))
}

fn prefix(text: &str, chars: usize) -> &str {
    text.char_indices()
        .nth(chars)
        .map_or(text, |(end, _)| &text[..end])
}

/// ` (comm pid N)`, or nothing for node-level events.
fn process_suffix(process: &ProcessFields) -> String {
    match (process.pid, &process.comm) {
        (Some(pid), Some(comm)) => format!("  ({} pid {pid})", clean(comm)),
        (Some(pid), None) => format!("  (pid {pid})"),
        (None, _) => String::new(),
    }
}

/// What an event did, led by its verb: `exec /bin/sh -c id`, `open /etc/shadow`,
/// `connect tcp 10.0.0.9:443`, `ptrace attach pid 42`.
fn fact(event: &Event) -> String {
    match &event.body {
        // The operation leads what a file or syscall event did already.
        Body::File(_) | Body::Syscall(_) => what(event),
        body => format!("{} {}", body.kind(), what(event)),
    }
}

/// What an event did, without its kind (the compact line shows the kind in its own column).
fn what(event: &Event) -> String {
    match &event.body {
        Body::Exec(exec) => {
            let mut text = clean(&exec.filename);
            for arg in exec.argv.iter().skip(1) {
                text.push(' ');
                text.push_str(&quote(arg));
            }
            if exec.argv_truncated {
                text.push_str(" …");
            }
            let mut text = shorten(text);
            for (set, note) in [
                (exec.fileless, " (fileless)"),
                (exec.stdin_socket, " (stdin socket)"),
                (exec.stdout_socket, " (stdout socket)"),
            ] {
                if set {
                    text.push_str(note);
                }
            }
            text
        }
        Body::Exit(exit) => match (exit.exit_status, exit.signal) {
            (_, Some(signal)) => format!("signal {signal}"),
            (Some(status), None) => format!("status {status}"),
            (None, None) => format!("code {}", exit.exit_code),
        },
        Body::File(file) => {
            let op = match file.op {
                FileOperation::Open if file.write => "write-open",
                op => op.as_str(),
            };
            let mut text = format!("{op} {}", shorten(clean(&file.path)));
            if let Some(target) = &file.target {
                let _ = write!(text, " -> {}", shorten(clean(target)));
            }
            if file.op == FileOperation::Chmod {
                let _ = write!(text, " mode {:o}", file.flags);
            }
            if let Some(errno) = file.result.filter(|r| *r < 0) {
                let _ = write!(text, " (failed: errno {})", -i64::from(errno));
            }
            if file.suppressed > 0 {
                let _ = write!(text, " (+{} repeats)", file.suppressed);
            }
            for (set, note) in [
                (file.log, " (log)"),
                (file.io_uring, " (io_uring)"),
                (file.unresolved, " (unresolved)"),
            ] {
                if set {
                    text.push_str(note);
                }
            }
            text
        }
        Body::Syscall(call) => syscall(call),
        Body::Connect(connect) => {
            let address = match connect.daddr {
                IpAddr::V4(ip) => format!("{ip}:{}", connect.dport),
                IpAddr::V6(ip) => format!("[{ip}]:{}", connect.dport),
            };
            let blocked = if connect.blocked { " (blocked)" } else { "" };
            format!("{} {address}{blocked}", clean(&connect.protocol))
        }
        Body::Egress(egress) => format!(
            "{} B in {} ms ({} B in all)",
            egress.bytes, egress.interval_ms, egress.total_bytes
        ),
        Body::Loss(loss) => {
            let mut text = format!(
                "{} {} records lost ({}, {} in all)",
                loss.count,
                clean(&loss.lost_kind),
                clean(&loss.source),
                loss.total
            );
            if let Some(reason) = &loss.reason {
                let _ = write!(text, ": {}", clean(reason));
            }
            text
        }
    }
}

/// A syscall event: the operation, what it acted on, its tags and, when refused, the error:
/// `mount /host [bind rec fstype:none]`, `setuid euid 0 [to_root from_non_root]`.
fn syscall(call: &Syscall) -> String {
    let mut text = call.op.as_str().to_owned();
    if let Some(pid) = call.target_pid {
        let _ = write!(text, " pid {pid}");
    }
    if let Some(path) = &call.path {
        let _ = write!(text, " {}", shorten(clean(path)));
    }
    if let Some(name) = &call.name {
        let _ = write!(text, " {}", quote(name));
    }
    if let Some(fd) = call.fd {
        let _ = write!(text, " fd {fd}");
    }
    if let (Some(old), Some(new)) = (call.old_fd, call.new_fd) {
        let _ = write!(text, " fd {old} -> {new}");
    }
    for (id, value) in [
        ("ruid", call.ruid),
        ("euid", call.euid),
        ("suid", call.suid),
    ] {
        if let Some(value) = value {
            let _ = write!(text, " {id} {value}");
        }
    }
    if let Some(entries) = call.entries {
        let _ = write!(text, " entries {entries}");
    }
    let tags: Vec<String> = call
        .tags
        .iter()
        .filter(|t| *t != "refused")
        .map(|t| clean(t))
        .collect();
    if !tags.is_empty() {
        let _ = write!(text, " [{}]", tags.join(" "));
    }
    if call.result < 0 {
        let _ = write!(text, " (failed: errno {})", call.result.unsigned_abs());
    }
    text
}

fn severity(severity: Severity) -> (&'static str, Paint) {
    match severity {
        Severity::Low => ("low", Paint::line(sgr::DIM)),
        Severity::Medium => ("medium", Paint::line(sgr::YELLOW)),
        Severity::High => ("high", Paint::line(sgr::RED)),
        Severity::Critical => ("critical", Paint::line(sgr::BOLD_RED)),
    }
}

fn outcome_level(outcome: &StepOutcome) -> (&'static str, Paint) {
    match outcome {
        StepOutcome::Done { .. } | StepOutcome::AlreadyDone { .. } => {
            ("done", Paint::line(sgr::GREEN))
        }
        StepOutcome::DryRun { .. } => ("dry-run", Paint::line(sgr::DIM)),
        StepOutcome::NotApplicable { .. } => ("n/a", Paint::line(sgr::DIM)),
        StepOutcome::Pending { .. } => ("pending", Paint::line(sgr::YELLOW)),
        StepOutcome::Failed { .. } => ("failed", Paint::line(sgr::RED)),
    }
}

fn outcome_detail(outcome: &StepOutcome) -> String {
    match outcome {
        StepOutcome::Done { detail, .. } => detail.clone(),
        StepOutcome::AlreadyDone { detail } => format!("already done: {detail}"),
        StepOutcome::DryRun { calls } => format!("would: {}", calls.join("; ")),
        StepOutcome::NotApplicable { why } | StepOutcome::Pending { why } => why.clone(),
        StepOutcome::Failed { error } => error.clone(),
    }
}

/// `a,b,c` and `+N` for those not shown (beyond [`RULES_SHOWN`], and `more` besides).
fn listed<'a>(items: impl Iterator<Item = &'a str>, more: usize) -> String {
    let items: Vec<&str> = items.collect();
    let mut text = items
        .iter()
        .take(RULES_SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(",");
    let hidden = items.len().saturating_sub(RULES_SHOWN) + more;
    if hidden > 0 {
        let _ = write!(text, "+{hidden}");
    }
    if text.is_empty() {
        text.push('-');
    }
    text
}

/// `HH:MM:SS.mmm` at `offset`.
fn clock(time: OffsetDateTime, offset: UtcOffset) -> String {
    let local = time.checked_to_offset(offset).unwrap_or(time);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        local.hour(),
        local.minute(),
        local.second(),
        local.millisecond()
    )
}

/// The line: time, level padded to its column, the rest; coloured when asked.
fn line(style: Style, time: &str, level: &str, paint: Paint, rest: &str) -> String {
    let level = format!("{level:<LEVEL_WIDTH$}");
    if !style.color || paint.line.is_empty() && !paint.inverse_level {
        return format!("{time} {level} {rest}");
    }
    let (on, off) = if paint.inverse_level {
        (sgr::INVERSE, sgr::NO_INVERSE)
    } else {
        ("", "")
    };
    format!(
        "{line}{time} {on}{level}{off} {rest}{reset}",
        line = paint.line,
        reset = sgr::RESET
    )
}

/// The text with control characters escaped (`\u{1b}`, `\n`), so that what a process controls
/// cannot drive the terminal.
fn clean(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// An argument as a shell would take it back: bare when it holds only safe characters, else
/// in single quotes.
fn quote(arg: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    if !arg.is_empty() && arg.chars().all(safe) {
        return arg.to_owned();
    }
    format!("'{}'", clean(&arg.replace('\'', r"'\''")))
}

/// At most [`TEXT_MAX`] characters, with `…` when cut.
fn shorten(text: String) -> String {
    match text.char_indices().nth(TEXT_MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::{
        event::{Lineage, Role},
        export::{record::Record as ExportRecord, schema::fixtures},
        rules::RuleSet,
        score::{Engine, ScoreConfig},
    };

    const PLAIN: Style = Style {
        color: false,
        offset: UtcOffset::UTC,
    };
    const COLOR: Style = Style {
        color: true,
        offset: UtcOffset::UTC,
    };

    /// The export tests' events of every kind, in a pod where theirs are.
    fn events() -> Vec<Event> {
        fixtures::all()
            .into_iter()
            .filter_map(|e| match e.record {
                ExportRecord::Event(event) => Some(event),
                _ => None,
            })
            .collect()
    }

    fn of_kind(kind: &str) -> Event {
        events()
            .into_iter()
            .find(|e| e.body.kind() == kind)
            .unwrap_or_else(|| panic!("no {kind} fixture"))
    }

    /// The records the default rules make of an event, at the thresholds given.
    fn scored(event: &Event, alert: f64, contain: f64) -> Vec<Record> {
        let config = ScoreConfig {
            alert,
            contain,
            ..ScoreConfig::default()
        };
        Engine::new(RuleSet::defaults().unwrap(), config).process(event)
    }

    fn shadow_read() -> Event {
        events()
            .into_iter()
            .find(|e| matches!(&e.body, Body::File(f) if f.path == "/etc/shadow"))
            .unwrap()
    }

    /// The default rules' alert for a read of /etc/shadow in a pod.
    fn shadow_alert() -> Alert {
        scored(&shadow_read(), 1000.0, 2000.0)
            .into_iter()
            .find_map(|r| match r {
                Record::Alert(a) if a.rule.id == "shadow-file-access" => Some(*a),
                _ => None,
            })
            .expect("a shadow-file-access alert")
    }

    fn subject() -> Subject {
        Subject {
            key: "pod:4f1c8a2e-7b3d-4e9a-9c51-2d6e8f0a1b3c".into(),
            namespace: Some("shop".into()),
            pod: Some("web-7d9f".into()),
            pod_uid: Some("4f1c8a2e-7b3d-4e9a-9c51-2d6e8f0a1b3c".into()),
            ..Subject::default()
        }
    }

    fn entry(kind: EntryKind) -> Entry {
        let mut entry = Entry::new("inc-1", kind);
        entry.ts = "2023-11-14T22:13:21.5Z".into();
        entry
    }

    #[test]
    fn an_alert_line_has_time_severity_pod_rule_technique_score_and_fact() {
        let alert = Record::Alert(Box::new(shadow_alert()));
        assert_eq!(
            record(&alert, PLAIN),
            "22:13:20.123 high      shop/web-7d9f  shadow-file-access T1003.008  score 40  open /etc/shadow  (sh pid 100)"
        );
        // Local time.
        let east = record(
            &alert,
            Style {
                offset: UtcOffset::from_hms(2, 0, 0).unwrap(),
                ..PLAIN
            },
        );
        assert!(east.starts_with("00:13:20.123 "), "{east}");
    }

    #[test]
    fn an_exec_alert_shows_the_executable_and_arguments_and_the_pod_falls_back() {
        let mut alert = shadow_alert();
        alert.event = of_kind("exec");
        let text = self::alert(&alert, PLAIN);
        assert!(
            text.contains("  exec /bin/sh -c id  (sh pid 100)"),
            "{text}"
        );
        // No pod name: the uid's start; no pod: the container's; neither: the process.
        alert.subject = Subject::default();
        alert.event.pod.as_mut().unwrap().name = None;
        assert!(self::alert(&alert, PLAIN).contains(" pod:4f1c8a2e  "));
        alert.event.pod = None;
        assert!(self::alert(&alert, PLAIN).contains(" container:c0ffee  "));
        alert.event.container = None;
        let text = self::alert(&alert, PLAIN);
        assert!(text.contains(" pid 100 sh  "), "{text}");
        assert!(!text.contains("(sh pid 100)"), "{text}");
    }

    #[test]
    fn a_connect_fact_is_the_address_and_port() {
        let mut connect = of_kind("connect");
        assert_eq!(fact(&connect), "connect tcp 10.0.0.9:443");
        if let Body::Connect(c) = &mut connect.body {
            c.daddr = "fd00::1".parse().unwrap();
            c.blocked = true;
        }
        assert_eq!(fact(&connect), "connect tcp [fd00::1]:443 (blocked)");
    }

    #[test]
    fn a_verdict_line_lists_the_rules_and_the_deciding_fact() {
        let records = scored(&shadow_read(), 1.0, 2000.0);
        let verdict = records
            .iter()
            .find_map(|r| match r {
                Record::Verdict(v) => Some(v),
                Record::Alert(_) => None,
            })
            .expect("a verdict at threshold 1");
        let text = self::verdict(verdict, PLAIN);
        assert!(
            text.starts_with("22:13:20.123 ALERT     shop/web-7d9f  "),
            "{text}"
        );
        let rule = &verdict.rules[0].rule;
        assert!(
            text.contains(&format!("{} {}", rule.id, rule.technique)),
            "{text}"
        );
        assert!(text.contains("  open /etc/shadow  ("), "{text}");
        assert!(text.ends_with(&format!("({})", verdict.reason)), "{text}");
        let mut contain = verdict.clone();
        contain.decision = Decision::Contain;
        let coloured = self::verdict(&contain, COLOR);
        assert!(
            coloured.starts_with("\x1b[1;31m22:13:20.123 \x1b[7mCONTAIN  \x1b[27m shop/"),
            "{coloured:?}"
        );
        assert!(coloured.ends_with("\x1b[0m"), "{coloured:?}");
    }

    #[test]
    fn severities_have_their_colours_and_none_without_colour() {
        let alert = shadow_alert();
        for (severity, code) in [
            (Severity::Low, "\x1b[2m"),
            (Severity::Medium, "\x1b[33m"),
            (Severity::High, "\x1b[31m"),
            (Severity::Critical, "\x1b[1;31m"),
        ] {
            let mut alert = alert.clone();
            alert.rule.severity = severity;
            let text = self::alert(&alert, COLOR);
            assert!(text.starts_with(code), "{text:?}");
            assert!(!self::alert(&alert, PLAIN).contains('\x1b'));
        }
    }

    #[test]
    fn containment_entries_each_have_a_line() {
        let cases = [
            (
                EntryKind::Opened {
                    subject: subject(),
                    node: "node-1".into(),
                    score: 115.2,
                    reason: "score 115.2 reached contain threshold 100.0".into(),
                    cgroup_ids: vec![4242],
                    event_ktime_ns: 42,
                    dry_run: false,
                    boot_id: None,
                    mode: Default::default(),
                },
                "opened    shop/web-7d9f  score 115  (score 115.2 reached contain threshold 100.0)  incident inc-1",
            ),
            (
                EntryKind::Step {
                    step: "kernel_block".into(),
                    outcome: StepOutcome::done("cgroups [4242] cut off the network"),
                },
                "done      shop/web-7d9f  kernel_block  cgroups [4242] cut off the network  incident inc-1",
            ),
            (
                EntryKind::Step {
                    step: "isolate_pod".into(),
                    outcome: StepOutcome::Failed {
                        error: "patch: 422".into(),
                    },
                },
                "failed    shop/web-7d9f  isolate_pod  patch: 422  incident inc-1",
            ),
            (
                EntryKind::Step {
                    step: "cordon_node".into(),
                    outcome: StepOutcome::not_applicable("no cluster"),
                },
                "n/a       shop/web-7d9f  cordon_node  no cluster  incident inc-1",
            ),
            (
                EntryKind::Step {
                    step: "label_pod".into(),
                    outcome: StepOutcome::DryRun {
                        calls: vec!["PATCH /api/v1/namespaces/shop/pods/web-7d9f".into()],
                    },
                },
                "dry-run   shop/web-7d9f  label_pod  would: PATCH /api/v1/namespaces/shop/pods/web-7d9f  incident inc-1",
            ),
            (
                EntryKind::Refused {
                    subject: subject(),
                    why: "protected namespace".into(),
                },
                "refused   shop/web-7d9f  not contained: protected namespace  incident inc-1",
            ),
            (
                EntryKind::Undo {
                    step: "label_pod".into(),
                    outcome: StepOutcome::done("label removed"),
                },
                "done      shop/web-7d9f  undo label_pod  label removed  incident inc-1",
            ),
            (
                EntryKind::Completed,
                "contained shop/web-7d9f  every step attempted  incident inc-1",
            ),
            (
                EntryKind::ReleaseRequested { by: "cli".into() },
                "release   shop/web-7d9f  release asked for by cli  incident inc-1",
            ),
            (
                EntryKind::Released,
                "released  shop/web-7d9f  released  incident inc-1",
            ),
        ];
        for (kind, expected) in cases {
            let text = action(&entry(kind), Some(&subject()), PLAIN);
            assert_eq!(text, format!("22:13:21.500 {expected}"));
        }
        let unknown = action(&entry(EntryKind::Completed), None, PLAIN);
        assert!(unknown.contains(" ? "), "{unknown}");
    }

    #[test]
    fn an_evidence_line_names_the_bundle_and_the_verdict() {
        let records = scored(&shadow_read(), 1.0, 2000.0);
        let Some(Record::Verdict(verdict)) = records.last() else {
            panic!("a verdict last");
        };
        let notice = Notice::Evidence(Box::new(EvidenceNotice {
            time: OffsetDateTime::from_unix_timestamp(1_700_000_002).unwrap(),
            incident: "pod-4f1c-1700000000".into(),
            verdict: Verdict::clone(verdict),
            dir: PathBuf::from("/var/lib/detector/evidence/pod-4f1c-1700000000"),
            complete: false,
            artifacts: 12,
        }));
        let text = self::notice(&notice, PLAIN);
        assert!(
            text.starts_with("22:13:22.000 evidence  shop/web-7d9f  "),
            "{text}"
        );
        assert!(
            text.contains(&format!("{} ", verdict.rules[0].rule.id)),
            "{text}"
        );
        assert!(
            text.ends_with(
                "bundle /var/lib/detector/evidence/pod-4f1c-1700000000 (incomplete, 12 artifacts)  incident pod-4f1c-1700000000"
            ),
            "{text}"
        );
    }

    #[test]
    fn an_event_line_is_kind_pid_comm_what_and_role() {
        let mut exec = of_kind("exec");
        exec.lineage = Some(Lineage {
            role: Role::ExecSession,
            tty: true,
            leader: true,
        });
        assert_eq!(
            event(&exec, PLAIN),
            "22:13:20.123 exec          100 sh              /bin/sh -c id  role=exec_session  shop/web-7d9f"
        );
        let egress = of_kind("egress");
        assert_eq!(
            event(&egress, PLAIN),
            "22:13:20.123 egress          - -               1500 B in 1000 ms (9000 B in all)  cgroup:7"
        );
        // Every kind has a line, none coloured.
        for e in events() {
            let text = event(&e, COLOR);
            assert!(text.starts_with("22:13:20.123 "), "{text}");
            assert!(!text.contains('\x1b'), "{text}");
        }
    }

    /// The fixture event whose compact line's `what` starts with `start`.
    fn what_starting(start: &str) -> String {
        events()
            .iter()
            .map(what)
            .find(|w| w.starts_with(start))
            .unwrap_or_else(|| panic!("no event whose line starts with {start:?}"))
    }

    #[test]
    fn a_syscall_line_is_the_operation_its_object_tags_and_failure() {
        let setuid = events()
            .into_iter()
            .find(|e| matches!(&e.body, Body::Syscall(c) if c.op.as_str() == "setuid"))
            .unwrap();
        assert_eq!(
            event(&setuid, PLAIN),
            "22:13:20.123 syscall       100 sh              setuid euid 0 [to_root from_non_root]  role=exec_session  shop/web-7d9f"
        );
        // The operation leads the fact, as a file event's.
        assert_eq!(fact(&setuid), "setuid euid 0 [to_root from_non_root]");
        for line in [
            "ptrace pid 4242 [attach]",
            "ptrace [traceme]",
            "socket [inet raw] (failed: errno 1)",
            "mount /host [bind rec fstype:none]",
            "umount /proc [detach]",
            "pivot_root /new (failed: errno 1)",
            "setns fd 3 [newnet]",
            "memfd_create x [cloexec]",
            "module_load fd 5 [finit_module]",
            "module_load [init_module] (failed: errno 1)",
            "bpf_prog_load [kprobe]",
            "dup_socket fd 3 -> 0 [stdin]",
            "io_uring_setup entries 64",
            "mknod /dev/sda [block]",
        ] {
            assert_eq!(what_starting(line), line);
        }
        // A name the process chose is quoted and escaped.
        let mut memfd = Syscall::new(
            crate::event::SyscallOperation::MemfdCreate,
            "memfd_create",
            3,
        );
        memfd.name = Some("a b\x1b[2J".into());
        assert_eq!(syscall(&memfd), r"memfd_create 'a b\u{1b}[2J'");
        memfd.result = i64::MIN;
        assert!(syscall(&memfd).ends_with("(failed: errno 9223372036854775808)"));
    }

    #[test]
    fn new_file_operations_and_exec_flags_are_shown() {
        assert_eq!(
            what_starting("truncate"),
            "truncate /var/log/auth.log (+2 repeats) (log) (io_uring) (unresolved)"
        );
        assert_eq!(
            what_starting("link"),
            "link /etc/shadow -> /tmp/s (+2 repeats) (io_uring) (unresolved)"
        );
        assert_eq!(
            what_starting("symlink"),
            "symlink /etc/shadow -> /tmp/l (+2 repeats) (io_uring) (unresolved)"
        );
        assert_eq!(
            what_starting("/bin/sh -c id ("),
            "/bin/sh -c id (fileless) (stdin socket)"
        );
    }

    #[test]
    fn what_a_process_controls_cannot_drive_the_terminal() {
        let mut exec = of_kind("exec");
        exec.process.comm = Some("x\x1b[2J".into());
        if let Body::Exec(e) = &mut exec.body {
            e.filename = "/tmp/\x1b]0;owned\x07".into();
            e.argv = vec!["a".into(), "it's here".into(), "\n".into()];
            e.argv_truncated = true;
        }
        let text = event(&exec, PLAIN);
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert!(text.contains(r"x\u{1b}[2J"), "{text}");
        assert!(
            text.contains(r"/tmp/\u{1b}]0;owned\u{7} 'it'\''s here' '\n' …"),
            "{text}"
        );
        let long = "/a".repeat(500);
        let mut file = shadow_read();
        if let Body::File(f) = &mut file.body {
            f.path = long;
        }
        assert!(fact(&file).chars().count() < TEXT_MAX + 10);
    }
}
