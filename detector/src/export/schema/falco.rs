//! Falco-compatible JSON output, as `falco` writes with `json_output: true`: `time`, `rule`,
//! `priority`, `output`, `output_fields`, `hostname`, `source`, `tags` (and `uuid`), so that a
//! Falcosidekick deployment forwards it unchanged.
//!
//! Field names in `output_fields` are Falco's (`proc.name`, `container.id`, `k8s.pod.name`,
//! `fd.name`...); findings keep their own data, flattened into dotted keys.
//!
//! Every value in `output_fields` is a string, a number, a boolean or null, as in Falco's own
//! output: Falcosidekick's outputs (Slack, Teams, Mattermost, Loki labels, Prometheus labels...)
//! print each field as one value. Nested data is flattened (`flatten`): an object becomes
//! dotted keys; a list of scalars one string of its items joined with `,` (an `argv` with
//! spaces, as `proc.cmdline`); a list of flat objects one such string per member
//! (`mitre.tactic`, `mitre.technique`; `ancestry.pid`, `ancestry.exe`, as Falco's `proc.apid`
//! and `proc.aexepath` walk the ancestors); any other list (objects holding lists or objects) its
//! JSON text.

use serde_json::{Map, Value, json};
use time::format_description::well_known::Rfc3339;

use super::{Context, command_line, put};
use crate::{
    event::{Body, Event},
    export::record::{Envelope, Record, Severity},
};

/// Falco's priority name for a severity.
pub fn priority(severity: Severity) -> &'static str {
    match severity {
        Severity::Info => "Informational",
        Severity::Low => "Notice",
        Severity::Medium => "Warning",
        Severity::High => "Error",
        Severity::Critical => "Critical",
    }
}

/// The record as one Falco output line.
pub fn map(envelope: &Envelope, ctx: &Context) -> Value {
    let record = &envelope.record;
    let time = record.time();
    let priority = priority(record.severity());
    let mut fields = Map::new();
    let (rule, text, source, mut tags) = match record {
        Record::Event(event) => {
            let (rule, text) = event_fields(event, &mut fields);
            (
                rule.to_owned(),
                text,
                "syscall",
                vec!["detector".to_owned()],
            )
        }
        Record::Verdict(f) | Record::Action(f) | Record::Evidence(f) => {
            flatten("", &f.data, &mut fields);
            (
                f.name.clone(),
                f.summary.clone(),
                "syscall",
                vec!["detector".to_owned()],
            )
        }
    };
    tags.push(format!("{:?}", record.kind()).to_lowercase());
    put(
        &mut fields,
        "evt.time",
        i64::try_from(time.unix_timestamp_nanos()).unwrap_or(i64::MAX),
    );
    put(&mut fields, "detector.uid", envelope.uid.as_str());
    let clock = format!(
        "{:02}:{:02}:{:02}.{:09}",
        time.hour(),
        time.minute(),
        time.second(),
        time.nanosecond()
    );
    json!({
        "uuid": envelope.uid,
        "time": time.format(&Rfc3339).unwrap_or_default(),
        "rule": rule,
        "priority": priority,
        "output": format!("{clock}: {priority} {text}"),
        "output_fields": fields,
        "hostname": ctx.host,
        "source": source,
        "tags": tags,
    })
}

fn event_fields(event: &Event, fields: &mut Map<String, Value>) -> (&'static str, String) {
    let p = &event.process;
    put(fields, "proc.pid", p.pid);
    put(fields, "proc.tid", p.tid);
    put(fields, "proc.ppid", p.ppid);
    put(fields, "proc.name", p.comm.clone());
    put(fields, "user.uid", p.uid);
    put(fields, "group.gid", p.gid);
    if let Some(first) = event.ancestry.first() {
        put(fields, "proc.pexepath", first.exe.as_str());
    }
    if let Some(c) = &event.container {
        put(fields, "container.id", c.id.as_str());
        put(fields, "container.name", c.name.clone());
        put(fields, "container.image", c.image.clone());
    }
    if let Some(pod) = &event.pod {
        put(fields, "k8s.ns.name", pod.namespace.clone());
        put(fields, "k8s.pod.name", pod.name.clone());
        put(fields, "k8s.pod.uid", pod.uid.as_str());
    }
    let who = format!(
        "(proc.name={} proc.pid={} container.id={} k8s.pod.name={})",
        p.comm.as_deref().unwrap_or("<NA>"),
        p.pid.map_or("<NA>".to_owned(), |pid| pid.to_string()),
        event.container.as_ref().map_or("host", |c| c.id.as_str()),
        event
            .pod
            .as_ref()
            .and_then(|pod| pod.name.as_deref())
            .unwrap_or("<NA>"),
    );
    match &event.body {
        Body::Exec(exec) => {
            put(fields, "evt.type", "execve");
            put(fields, "proc.exepath", exec.filename.as_str());
            put(fields, "proc.cmdline", command_line(&exec.argv));
            put(fields, "proc.is_exe_from_memfd", exec.fileless);
            put(fields, "detector.exec.fileless", exec.fileless);
            put(fields, "detector.exec.stdin_socket", exec.stdin_socket);
            put(fields, "detector.exec.stdout_socket", exec.stdout_socket);
            (
                "Detector process launched",
                format!("Process launched {} {who}", exec.filename),
            )
        }
        Body::Exit(exit) => {
            put(fields, "evt.type", "procexit");
            put(fields, "evt.arg.status", exit.exit_status);
            put(fields, "evt.arg.sig", exit.signal);
            ("Detector process exited", format!("Process exited {who}"))
        }
        Body::File(file) => {
            let op = serde_json::to_value(file.op).unwrap_or_default();
            let op = op.as_str().unwrap_or("file").to_owned();
            put(fields, "evt.type", op.clone());
            put(fields, "fd.name", file.path.as_str());
            put(fields, "evt.arg.flags", file.flags);
            put(fields, "evt.arg.newpath", file.target.clone());
            put(fields, "detector.file.log", file.log);
            put(fields, "detector.file.unresolved", file.unresolved);
            put(fields, "detector.file.io_uring", file.io_uring);
            (
                "Detector file activity",
                format!("File {op} {} {who}", file.path),
            )
        }
        Body::Connect(connect) => {
            put(fields, "evt.type", "connect");
            put(fields, "fd.rip", connect.daddr.to_string());
            put(fields, "fd.rport", connect.dport);
            put(fields, "fd.l4proto", connect.protocol.as_str());
            put(
                fields,
                "fd.name",
                format!("{}:{}", connect.daddr, connect.dport),
            );
            (
                "Detector outbound connection",
                format!("Connect to {}:{} {who}", connect.daddr, connect.dport),
            )
        }
        Body::Syscall(call) => {
            put(fields, "evt.type", call.syscall.as_str());
            put(fields, "evt.rawres", call.result);
            put(fields, "evt.failed", call.result < 0);
            put(fields, "detector.syscall.op", call.op.as_str());
            put(fields, "detector.syscall.tags", call.tags.join(","));
            // The typed arguments, under Falco's `evt.arg.` prefix with the native names.
            if let Ok(Value::Object(native)) = serde_json::to_value(call) {
                for (key, value) in native {
                    if !matches!(key.as_str(), "op" | "syscall" | "result" | "tags") {
                        put(fields, &format!("evt.arg.{key}"), value);
                    }
                }
            }
            (
                "Detector system call",
                format!(
                    "System call {} ({}) [{}] {who}",
                    call.syscall,
                    call.op.as_str(),
                    call.tags.join(" ")
                ),
            )
        }
        Body::Egress(egress) => {
            put(fields, "detector.egress.bytes", egress.bytes);
            put(fields, "detector.egress.packets", egress.packets);
            put(fields, "detector.egress.interval_ms", egress.interval_ms);
            put(fields, "detector.cgroup_id", event.cgroup_id);
            (
                "Detector egress volume",
                format!(
                    "{} bytes sent in {} ms {who}",
                    egress.bytes, egress.interval_ms
                ),
            )
        }
        Body::Loss(loss) => {
            put(fields, "detector.loss.source", loss.source.as_str());
            put(fields, "detector.loss.kind", loss.lost_kind.as_str());
            put(fields, "detector.loss.count", loss.count);
            put(fields, "detector.loss.total", loss.total);
            (
                "Detector records lost",
                format!(
                    "{} {} records lost ({})",
                    loss.count, loss.lost_kind, loss.source
                ),
            )
        }
    }
}

/// `value` as scalar fields under `prefix`: objects become dotted keys, lists strings (see the
/// module's documentation); a scalar without a prefix goes under `data`.
fn flatten(prefix: &str, value: &Value, out: &mut Map<String, Value>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&key, value, out);
            }
        }
        Value::Array(items) => {
            let prefix = if prefix.is_empty() { "data" } else { prefix };
            let separator = if prefix.rsplit('.').next() == Some("argv") {
                " "
            } else {
                ","
            };
            if items.iter().all(is_scalar) {
                out.insert(prefix.to_owned(), join(items.iter(), separator).into());
            } else if let Some(members) = flat_members(items) {
                for member in members {
                    let column = items
                        .iter()
                        .map(|item| item.get(member).unwrap_or(&Value::Null));
                    out.insert(format!("{prefix}.{member}"), join(column, ",").into());
                }
            } else {
                out.insert(prefix.to_owned(), value.to_string().into());
            }
        }
        other if !prefix.is_empty() => {
            out.insert(prefix.to_owned(), other.clone());
        }
        other => {
            out.insert("data".into(), other.clone());
        }
    }
}

fn is_scalar(value: &Value) -> bool {
    !matches!(value, Value::Array(_) | Value::Object(_))
}

/// Scalars as one string: strings as they are, null as nothing, the others as JSON.
fn join<'a>(items: impl Iterator<Item = &'a Value>, separator: &str) -> String {
    let text: Vec<String> = items
        .map(|item| match item {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        })
        .collect();
    text.join(separator)
}

/// The member names, in order of appearance, when every item is an object of scalars.
fn flat_members(items: &[Value]) -> Option<Vec<&str>> {
    let mut members: Vec<&str> = Vec::new();
    for item in items {
        let Value::Object(map) = item else {
            return None;
        };
        for (key, value) in map {
            if !is_scalar(value) {
                return None;
            }
            if !members.contains(&key.as_str()) {
                members.push(key);
            }
        }
    }
    Some(members)
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::*;
    use crate::export::schema::fixtures;

    #[test]
    fn has_every_field_falcosidekick_reads() {
        let ctx = Context::new("node-1");
        for envelope in fixtures::all() {
            let v = map(&envelope, &ctx);
            for key in [
                "rule",
                "priority",
                "output",
                "output_fields",
                "time",
                "hostname",
                "source",
                "tags",
            ] {
                assert!(v.get(key).is_some(), "{key} missing in {v}");
            }
        }
        let exec = map(&fixtures::all()[0], &ctx);
        assert_eq!(exec["priority"], "Informational");
        assert_eq!(exec["output_fields"]["proc.cmdline"], "sh -c id");
        assert_eq!(exec["output_fields"]["k8s.ns.name"], "shop");
        assert!(
            exec["output"]
                .as_str()
                .unwrap()
                .starts_with("22:13:20.123456789: Informational Process launched /bin/sh")
        );
        let verdict = map(&fixtures::all()[7], &ctx);
        assert_eq!(verdict["rule"], "shell_in_container");
        assert_eq!(verdict["priority"], "Error");
        assert_eq!(verdict["output_fields"]["pod.name"], "web-7d9f");
    }

    /// Falco's priority names, as `falco_common` writes them and Falcosidekick reads them
    /// (case-insensitively; anything else is its `Default`, which it refuses).
    const FALCO_PRIORITIES: [&str; 8] = [
        "Emergency",
        "Alert",
        "Critical",
        "Error",
        "Warning",
        "Notice",
        "Informational",
        "Debug",
    ];

    #[test]
    fn output_fields_are_scalars_and_the_rest_is_falcos_shape() {
        let ctx = Context::new("node-1");
        let all: Vec<Envelope> = fixtures::all()
            .into_iter()
            .chain(fixtures::rich())
            .collect();
        let mut kinds = std::collections::HashSet::new();
        for envelope in &all {
            kinds.insert(envelope.record.kind());
            let v = map(envelope, &ctx);
            let doc = v.as_object().unwrap();
            // Falco's keys and `uuid` (which Falcosidekick's payload also has), nothing else.
            let keys: Vec<&str> = doc.keys().map(String::as_str).collect();
            assert_eq!(
                keys,
                [
                    "hostname",
                    "output",
                    "output_fields",
                    "priority",
                    "rule",
                    "source",
                    "tags",
                    "time",
                    "uuid"
                ],
                "{v}"
            );
            for key in ["hostname", "output", "rule", "source", "uuid"] {
                assert!(
                    doc[key].as_str().is_some_and(|s| !s.is_empty()),
                    "{key} in {v}"
                );
            }
            let time = doc["time"].as_str().unwrap();
            OffsetDateTime::parse(time, &Rfc3339).unwrap_or_else(|e| panic!("{time}: {e}"));
            assert!(
                FALCO_PRIORITIES.contains(&doc["priority"].as_str().unwrap()),
                "{v}"
            );
            let tags = doc["tags"].as_array().unwrap();
            assert!(tags.iter().all(Value::is_string), "{v}");
            let fields = doc["output_fields"].as_object().unwrap();
            assert!(
                !fields.is_empty(),
                "Falcosidekick refuses empty output_fields"
            );
            for (key, value) in fields {
                assert!(
                    !matches!(value, Value::Array(_) | Value::Object(_)),
                    "output_fields.{key} is not a scalar in {:?}: {value}",
                    envelope.record.kind()
                );
            }
            // Falcosidekick asserts these are strings (a type assertion that panics otherwise).
            for key in ["k8s.ns.name", "k8s.pod.name"] {
                assert!(fields.get(key).is_none_or(|v| v.is_string() || v.is_null()));
            }
        }
        assert_eq!(kinds.len(), 10, "every record kind: {kinds:?}");
        // The lists flattened: columns for lists of flat objects, joined scalars, argv with
        // spaces, and the JSON text of what is deeper.
        let docs: Vec<Value> = fixtures::rich().iter().map(|e| map(e, &ctx)).collect();
        let alert = &docs[1]["output_fields"];
        assert_eq!(alert["event.argv"], "sh -c id");
        assert_eq!(alert["event.ancestry.pid"], "1,90");
        assert_eq!(
            alert["event.ancestry.exe"],
            "/usr/bin/containerd-shim,/usr/sbin/nginx"
        );
        assert_eq!(alert["event.pod.labels.app.kubernetes.io/name"], "web");
        assert_eq!(alert["rule.technique"], "T1059");
        let verdict = &docs[2]["output_fields"];
        assert_eq!(verdict["mitre.tactic"], "execution,privilege-escalation");
        assert_eq!(verdict["mitre.technique"], "T1059,T1611");
        assert_eq!(verdict["subject.namespace"], "shop");
        let rules: Value = serde_json::from_str(verdict["rules"].as_str().unwrap()).unwrap();
        assert_eq!(rules[1]["rule"]["id"], "host_mount");
        let evidence = &docs[4]["output_fields"];
        assert_eq!(
            evidence["artifacts.path"],
            "container/inspect.json,logs/web.log"
        );
        assert_eq!(evidence["artifacts.partial_reason"], ",cut at 100 bytes");
        assert_eq!(evidence["incomplete_reasons"], "memory: not captured");
    }

    #[test]
    fn syscalls_have_their_name_result_and_arguments() {
        let ctx = Context::new("node-1");
        let docs: Vec<Value> = fixtures::all().iter().map(|e| map(e, &ctx)).collect();
        let setuid = docs
            .iter()
            .find(|d| d["output_fields"]["detector.syscall.op"] == "setuid")
            .expect("a setuid");
        let fields = &setuid["output_fields"];
        assert_eq!(setuid["rule"], "Detector system call");
        assert_eq!(setuid["priority"], "Notice");
        assert_eq!(fields["evt.type"], "setresuid");
        assert_eq!(fields["evt.rawres"], 0);
        assert_eq!(fields["evt.failed"], false);
        assert_eq!(fields["evt.arg.euid"], 0);
        assert!(fields.get("evt.arg.ruid").is_none());
        assert_eq!(fields["detector.syscall.tags"], "to_root,from_non_root");
        assert_eq!(fields["k8s.ns.name"], "shop");
        assert!(
            setuid["output"]
                .as_str()
                .unwrap()
                .contains("System call setresuid (setuid) [to_root from_non_root]"),
            "{setuid}"
        );
        let mount = docs
            .iter()
            .find(|d| d["output_fields"]["evt.type"] == "mount")
            .expect("a mount");
        assert_eq!(mount["output_fields"]["evt.arg.path"], "/host");
        assert_eq!(mount["output_fields"]["evt.arg.fstype"], "none");
        let fileless = docs
            .iter()
            .find(|d| d["output_fields"]["proc.is_exe_from_memfd"] == true)
            .expect("a fileless exec");
        assert_eq!(
            fileless["output_fields"]["detector.exec.stdin_socket"],
            true
        );
    }
}
