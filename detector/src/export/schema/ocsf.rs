//! OCSF 1.3 mapping.
//!
//! | record | class | activity |
//! | --- | --- | --- |
//! | exec, exit | Process Activity (1007) | Launch (1), Terminate (2) |
//! | file | File System Activity (1001) | Open (14), Delete (4), Set Security (7), Rename (5), Update (3, truncate), Create (1, link, symlink) |
//! | connect, egress | Network Activity (4001) | Open (1), Traffic (6) |
//! | syscall: ptrace | Process Activity (1007) | Open (3) the target process; Other (99) for `traceme` |
//! | syscall: setuid | Process Activity (1007) | Set User ID (5) |
//! | syscall: unshare, setns, dup_socket | Process Activity (1007) | Other (99) |
//! | syscall: mount, umount, pivot_root | File System Activity (1001) | Mount (12), Unmount (13), Other (99) |
//! | syscall: memfd_create, mknod | File System Activity (1001) | Create (1) |
//! | syscall: socket | Network Activity (4001) | Other (99) |
//! | syscall: module_load | Kernel Extension Activity (1002) | Load (1) |
//! | syscall: bpf_prog_load, io_uring_setup | Kernel Activity (1003) | Create (1) |
//! | loss | Base Event (0) | Other (99) |
//! | verdict | Detection Finding (2004) | Create (1) |
//! | evidence | Detection Finding (2004) | Update (2), the manifest in `evidences` |
//! | action | Remediation Activity (7001) | Isolate (1), Evict (2), Other (99) |
//!
//! A syscall event's `status` says whether the call succeeded (`status_code` the `-errno`);
//! its activity name for Other (99) is the operation. What has no OCSF attribute (pod
//! metadata, cgroup id, kernel time, file and exec flags, a syscall's arguments and tags,
//! whole, under `unmapped.syscall`) goes to `unmapped`, so a record is never poorer in OCSF
//! than in the native form.

use serde_json::{Map, Value, json};

use super::{Context, basename, command_line, epoch_ms, event_extras, put};
use crate::{
    event::{Body, Event, FileOperation, Syscall, SyscallOperation},
    export::record::{Envelope, Finding, Record},
};

/// The OCSF schema version the mapping follows.
pub const VERSION: &str = "1.3.0";

struct Class {
    uid: u32,
    name: &'static str,
    category_uid: u32,
    category_name: &'static str,
}

const PROCESS_ACTIVITY: Class = Class {
    uid: 1007,
    name: "Process Activity",
    category_uid: 1,
    category_name: "System Activity",
};
const FILE_ACTIVITY: Class = Class {
    uid: 1001,
    name: "File System Activity",
    category_uid: 1,
    category_name: "System Activity",
};
const KERNEL_EXTENSION_ACTIVITY: Class = Class {
    uid: 1002,
    name: "Kernel Extension Activity",
    category_uid: 1,
    category_name: "System Activity",
};
const KERNEL_ACTIVITY: Class = Class {
    uid: 1003,
    name: "Kernel Activity",
    category_uid: 1,
    category_name: "System Activity",
};
const NETWORK_ACTIVITY: Class = Class {
    uid: 4001,
    name: "Network Activity",
    category_uid: 4,
    category_name: "Network Activity",
};
const BASE_EVENT: Class = Class {
    uid: 0,
    name: "Base Event",
    category_uid: 0,
    category_name: "Uncategorized",
};
const DETECTION_FINDING: Class = Class {
    uid: 2004,
    name: "Detection Finding",
    category_uid: 2,
    category_name: "Findings",
};
const REMEDIATION_ACTIVITY: Class = Class {
    uid: 7001,
    name: "Remediation Activity",
    category_uid: 7,
    category_name: "Remediation",
};

/// The record as one OCSF event.
pub fn map(envelope: &Envelope, ctx: &Context) -> Value {
    let record = &envelope.record;
    let (class, activity_id, activity_name, mut fields) = match record {
        Record::Event(event) => event_fields(event, ctx),
        Record::Verdict(finding) => (
            &DETECTION_FINDING,
            1,
            "Create",
            finding_fields(finding, &envelope.uid, false),
        ),
        Record::Evidence(finding) => (
            &DETECTION_FINDING,
            2,
            "Update",
            finding_fields(finding, &envelope.uid, true),
        ),
        Record::Action(finding) => {
            let (id, name) = remediation_activity(&finding.name);
            (
                &REMEDIATION_ACTIVITY,
                id,
                name,
                action_fields(finding, &envelope.uid),
            )
        }
    };
    let severity = record.severity();
    let mut metadata = Map::new();
    metadata.insert("version".into(), VERSION.into());
    metadata.insert("uid".into(), envelope.uid.clone().into());
    metadata.insert(
        "product".into(),
        json!({"name": "detector", "vendor_name": "detector", "version": ctx.version}),
    );
    // Host: the node as `device` and the acting process as `actor` (a node agent); container:
    // the container on the process that runs in it. Base Event has neither: its node goes to
    // `unmapped.node`.
    let host = class.uid != BASE_EVENT.uid;
    let profiles: Vec<&str> = [
        host.then_some("host"),
        record_has_container(record).then_some("container"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !profiles.is_empty() {
        metadata.insert("profiles".into(), json!(profiles));
    }
    put(&mut fields, "activity_id", activity_id);
    put(&mut fields, "activity_name", activity_name);
    put(&mut fields, "category_uid", class.category_uid);
    put(&mut fields, "category_name", class.category_name);
    put(&mut fields, "class_uid", class.uid);
    put(&mut fields, "class_name", class.name);
    put(
        &mut fields,
        "type_uid",
        u64::from(class.uid) * 100 + u64::from(activity_id),
    );
    put(
        &mut fields,
        "type_name",
        format!("{}: {activity_name}", class.name),
    );
    put(&mut fields, "severity_id", severity.ocsf_id());
    put(&mut fields, "severity", severity.caption());
    put(&mut fields, "time", epoch_ms(record.time()));
    put(&mut fields, "metadata", Value::Object(metadata));
    if host {
        fields.entry("device").or_insert_with(|| device(&ctx.host));
    } else if let Some(Value::Object(unmapped)) = fields.get_mut("unmapped") {
        put(unmapped, "node", ctx.host.as_str());
    }
    Value::Object(fields)
}

/// Whether the mapping carries a container (on the event's process): the container profile.
fn record_has_container(record: &Record) -> bool {
    matches!(record, Record::Event(event) if event.container.is_some())
}

fn device(host: &str) -> Value {
    json!({"hostname": host, "name": host, "type_id": 1, "type": "Server"})
}

type Fields = Map<String, Value>;

fn event_fields(event: &Event, ctx: &Context) -> (&'static Class, u32, &'static str, Fields) {
    let mut fields = Map::new();
    let mut unmapped = event_extras(event);
    let process = process(event);
    let (class, activity_id, activity_name) = match &event.body {
        Body::Exec(exec) => {
            let mut process = process.unwrap_or_default();
            let mut file = Map::new();
            put(&mut file, "path", exec.filename.as_str());
            put(&mut file, "name", basename(&exec.filename));
            put(&mut file, "type_id", 1);
            put(&mut file, "type", "Regular File");
            process.insert("file".into(), Value::Object(file));
            process.insert("cmd_line".into(), command_line(&exec.argv).into());
            if let Value::Object(u) = &mut unmapped {
                put(u, "argv_truncated", exec.argv_truncated);
                put(u, "filename_truncated", exec.filename_truncated);
                put(u, "tty", exec.tty);
                put(u, "parent_cgroup_id", exec.parent_cgroup_id);
                put(u, "fileless", exec.fileless);
                put(u, "stdin_socket", exec.stdin_socket);
                put(u, "stdout_socket", exec.stdout_socket);
            }
            fields.insert("actor".into(), json!({"process": parent(event)}));
            fields.insert("process".into(), Value::Object(process));
            (&PROCESS_ACTIVITY, 1, "Launch")
        }
        Body::Exit(exit) => {
            let process = process.unwrap_or_default();
            put(
                &mut fields,
                "exit_code",
                exit.exit_status.unwrap_or(exit.exit_code),
            );
            if let Value::Object(u) = &mut unmapped {
                put(u, "raw_exit_code", exit.exit_code);
                put(u, "signal", exit.signal);
            }
            fields.insert(
                "actor".into(),
                json!({"process": Value::Object(process.clone())}),
            );
            fields.insert("process".into(), Value::Object(process));
            (&PROCESS_ACTIVITY, 2, "Terminate")
        }
        Body::File(file) => {
            let (id, name) = match file.op {
                FileOperation::Open => (14, "Open"),
                FileOperation::Unlink => (4, "Delete"),
                FileOperation::Chmod => (7, "Set Security"),
                FileOperation::Rename => (5, "Rename"),
                FileOperation::Truncate => (3, "Update"),
                // A new name: `file` the existing file (or what a symlink points to),
                // `file_result` the name created, as a rename's.
                FileOperation::Link | FileOperation::Symlink => (1, "Create"),
            };
            fields.insert("file".into(), file_object(&file.path));
            if let Some(target) = &file.target {
                fields.insert("file_result".into(), file_object(target));
            }
            fields.insert(
                "actor".into(),
                json!({"process": Value::Object(process.unwrap_or_default())}),
            );
            if let Value::Object(u) = &mut unmapped {
                put(u, "flags", file.flags);
                put(u, "write", file.write);
                put(u, "sensitive", file.sensitive);
                put(u, "read_sensitive", file.read_sensitive);
                put(u, "relative", file.relative);
                put(u, "dirfd", file.dirfd);
                put(u, "path_truncated", file.path_truncated);
                put(u, "suppressed", file.suppressed);
                put(u, "resolved", file.resolved);
                put(u, "outside_root", file.outside_root);
                put(u, "joined", file.joined);
                put(u, "original_path", file.original_path.clone());
                put(u, "original_target", file.original_target.clone());
                put(u, "self_path", file.self_path.clone());
                put(u, "operation", file.op.as_str());
                put(u, "log", file.log);
                put(u, "unresolved", file.unresolved);
                put(u, "io_uring", file.io_uring);
            }
            (&FILE_ACTIVITY, id, name)
        }
        Body::Syscall(call) => {
            if let Value::Object(u) = &mut unmapped {
                put(
                    u,
                    "syscall",
                    serde_json::to_value(call).unwrap_or(Value::Null),
                );
            }
            syscall_fields(event, call, process.unwrap_or_default(), ctx, &mut fields)
        }
        Body::Connect(connect) => {
            let (number, version) = (
                match connect.protocol.as_str() {
                    "tcp" => Some(6),
                    "udp" => Some(17),
                    other => other.parse::<u8>().ok(),
                },
                if connect.family == "ipv6" { 6 } else { 4 },
            );
            let mut info = Map::new();
            put(&mut info, "direction_id", 2);
            put(&mut info, "direction", "Outbound");
            put(&mut info, "protocol_name", connect.protocol.as_str());
            put(&mut info, "protocol_num", number);
            put(&mut info, "protocol_ver_id", version);
            fields.insert("connection_info".into(), Value::Object(info));
            fields.insert(
                "dst_endpoint".into(),
                json!({"ip": connect.daddr.to_string(), "port": connect.dport}),
            );
            fields.insert("src_endpoint".into(), source_endpoint(event, ctx));
            fields.insert(
                "actor".into(),
                json!({"process": Value::Object(process.unwrap_or_default())}),
            );
            (&NETWORK_ACTIVITY, 1, "Open")
        }
        Body::Egress(egress) => {
            fields.insert("src_endpoint".into(), source_endpoint(event, ctx));
            // Bytes are counted per cgroup, whatever the destination.
            fields.insert(
                "dst_endpoint".into(),
                json!({"name": "any", "type_id": 0, "type": "Unknown"}),
            );
            fields.insert(
                "traffic".into(),
                json!({"bytes_out": egress.bytes, "packets_out": egress.packets}),
            );
            put(&mut fields, "duration", egress.interval_ms);
            if let Value::Object(u) = &mut unmapped {
                put(u, "total_bytes", egress.total_bytes);
            }
            (&NETWORK_ACTIVITY, 6, "Traffic")
        }
        Body::Loss(loss) => {
            put(
                &mut fields,
                "message",
                format!(
                    "{} {} records lost ({}), {} since start",
                    loss.count, loss.lost_kind, loss.source, loss.total
                ),
            );
            put(&mut fields, "count", loss.count);
            if let Value::Object(u) = &mut unmapped {
                put(u, "source", loss.source.as_str());
                put(u, "lost_kind", loss.lost_kind.as_str());
                put(u, "total", loss.total);
                put(u, "reason", loss.reason.clone());
            }
            (&BASE_EVENT, 99, "Other")
        }
    };
    fields.insert("unmapped".into(), unmapped);
    (class, activity_id, activity_name, fields)
}

/// The class and activity of a syscall event, and its fields: the calling process as the
/// actor, what the call acted on in the class's own object, and whether it succeeded.
fn syscall_fields(
    event: &Event,
    call: &Syscall,
    caller: Map<String, Value>,
    ctx: &Context,
    fields: &mut Fields,
) -> (&'static Class, u32, &'static str) {
    let (status_id, status) = if call.result < 0 {
        (2, "Failure")
    } else {
        (1, "Success")
    };
    put(fields, "status_id", status_id);
    put(fields, "status", status);
    if call.result < 0 {
        put(fields, "status_code", call.result.to_string());
    }
    let mut message = call.syscall.clone();
    if !call.tags.is_empty() {
        message = format!("{message} {}", call.tags.join(" "));
    }
    put(fields, "message", message);
    fields.insert(
        "actor".into(),
        json!({"process": Value::Object(caller.clone())}),
    );
    let op = call.op.as_str();
    match call.op {
        SyscallOperation::Ptrace => {
            if let Some(pid) = call.target_pid {
                fields.insert("process".into(), json!({"pid": pid}));
                (&PROCESS_ACTIVITY, 3, "Open")
            } else {
                // PTRACE_TRACEME: the caller offers itself to its parent.
                fields.insert("process".into(), Value::Object(caller));
                (&PROCESS_ACTIVITY, 99, op)
            }
        }
        SyscallOperation::Setuid => {
            fields.insert("process".into(), Value::Object(caller));
            (&PROCESS_ACTIVITY, 5, "Set User ID")
        }
        SyscallOperation::Unshare | SyscallOperation::Setns | SyscallOperation::DupSocket => {
            fields.insert("process".into(), Value::Object(caller));
            (&PROCESS_ACTIVITY, 99, op)
        }
        SyscallOperation::Mount | SyscallOperation::Umount | SyscallOperation::PivotRoot => {
            let path = call.path.as_deref().unwrap_or_default();
            fields.insert(
                "file".into(),
                json!({"path": path, "name": basename(path), "type_id": 2, "type": "Folder"}),
            );
            match call.op {
                SyscallOperation::Mount => (&FILE_ACTIVITY, 12, "Mount"),
                SyscallOperation::Umount => (&FILE_ACTIVITY, 13, "Unmount"),
                _ => (&FILE_ACTIVITY, 99, op),
            }
        }
        SyscallOperation::MemfdCreate => {
            // An anonymous file: `memfd:<name>` is how the kernel names it in `/proc`.
            let name = format!("memfd:{}", call.name.as_deref().unwrap_or_default());
            fields.insert(
                "file".into(),
                json!({"name": name, "type_id": 1, "type": "Regular File"}),
            );
            (&FILE_ACTIVITY, 1, "Create")
        }
        SyscallOperation::Mknod => {
            let path = call.path.as_deref().unwrap_or_default();
            let (type_id, type_name) = if call.has_tag("block") {
                (4, "Block Device")
            } else if call.has_tag("char") {
                (3, "Character Device")
            } else {
                (0, "Unknown")
            };
            fields.insert(
                "file".into(),
                json!({"path": path, "name": basename(path), "type_id": type_id, "type": type_name}),
            );
            (&FILE_ACTIVITY, 1, "Create")
        }
        SyscallOperation::Socket => {
            let mut info = Map::new();
            put(&mut info, "direction_id", 0);
            put(&mut info, "direction", "Unknown");
            let version = match call.family {
                Some(2) => Some(4),
                Some(10) => Some(6),
                _ => None,
            };
            if let Some(version) = version {
                put(&mut info, "protocol_ver_id", version);
                put(&mut info, "protocol_num", call.protocol);
            }
            fields.insert("connection_info".into(), Value::Object(info));
            fields.insert("src_endpoint".into(), source_endpoint(event, ctx));
            // A socket being created has no peer yet.
            fields.insert(
                "dst_endpoint".into(),
                json!({"name": "any", "type_id": 0, "type": "Unknown"}),
            );
            (&NETWORK_ACTIVITY, 99, op)
        }
        SyscallOperation::ModuleLoad => {
            // The sensors see the descriptor or the length of the image, not a path.
            let file = match (call.fd, call.length) {
                (Some(fd), _) => {
                    json!({"name": format!("fd {fd}"), "type_id": 1, "type": "Regular File"})
                }
                (None, length) => {
                    let mut file = json!({"name": "module image", "type_id": 0, "type": "Unknown"});
                    if let Some(length) = length {
                        file["size"] = length.into();
                    }
                    file
                }
            };
            fields.insert("driver".into(), json!({ "file": file }));
            (&KERNEL_EXTENSION_ACTIVITY, 1, "Load")
        }
        SyscallOperation::BpfProgLoad | SyscallOperation::IoUringSetup => {
            let (name, kind) = if call.op == SyscallOperation::BpfProgLoad {
                let prog_type = call.tags.first().map_or("", String::as_str);
                (format!("{prog_type} program"), "BPF program")
            } else {
                ("io_uring".to_owned(), "io_uring instance")
            };
            fields.insert(
                "kernel".into(),
                json!({"name": name, "type_id": 99, "type": kind, "system_call": call.syscall}),
            );
            (&KERNEL_ACTIVITY, 1, "Create")
        }
    }
}

/// The sending side: the node, and the container when there is one.
fn source_endpoint(event: &Event, ctx: &Context) -> Value {
    let mut endpoint = Map::new();
    put(&mut endpoint, "hostname", ctx.host.as_str());
    if let Some(container) = container(event) {
        endpoint.insert("container".into(), container);
    }
    Value::Object(endpoint)
}

fn process(event: &Event) -> Option<Map<String, Value>> {
    let p = &event.process;
    p.pid?;
    let mut process = Map::new();
    put(&mut process, "pid", p.pid);
    put(&mut process, "tid", p.tid);
    put(&mut process, "name", p.comm.clone());
    if let Some(uid) = p.uid {
        let mut user = Map::new();
        put(&mut user, "uid", uid.to_string());
        if let Some(gid) = p.gid {
            user.insert("groups".into(), json!([{"uid": gid.to_string()}]));
        }
        process.insert("user".into(), Value::Object(user));
    }
    // The container profile puts the container on the process that runs in it.
    if let Some(container) = container(event) {
        process.insert("container".into(), container);
    }
    let parent = parent(event);
    if !parent.as_object().is_some_and(Map::is_empty) {
        process.insert("parent_process".into(), parent);
    }
    if !event.ancestry.is_empty() {
        process.insert(
            "lineage".into(),
            event.ancestry.iter().map(|a| a.exe.clone()).collect(),
        );
    }
    Some(process)
}

fn parent(event: &Event) -> Value {
    let mut parent = Map::new();
    put(&mut parent, "pid", event.process.ppid);
    if let Some(first) = event.ancestry.first() {
        parent.insert("file".into(), file_object(&first.exe));
    }
    Value::Object(parent)
}

fn file_object(path: &str) -> Value {
    // The sensors see the path, not the inode: the type is unknown.
    json!({"path": path, "name": basename(path), "type_id": 0, "type": "Unknown"})
}

fn container(event: &Event) -> Option<Value> {
    let c = event.container.as_ref()?;
    let mut container = Map::new();
    put(&mut container, "uid", c.id.as_str());
    put(&mut container, "runtime", c.runtime.as_str());
    put(&mut container, "name", c.name.clone());
    if let Some(image) = &c.image {
        container.insert("image".into(), json!({"name": image, "uid": image}));
    }
    if let Some(pod) = &event.pod {
        put(&mut container, "orchestrator", "kubernetes");
        // OCSF types `pod_uuid` as a UUID; static pods' UIDs are config hashes, so those stay
        // in `unmapped.pod` only.
        if is_uuid(&pod.uid) {
            put(&mut container, "pod_uuid", pod.uid.as_str());
        }
    }
    Some(Value::Object(container))
}

/// The 8-4-4-4-12 hex form OCSF's `uuid_t` requires.
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn finding_fields(finding: &Finding, uid: &str, evidence: bool) -> Fields {
    let mut fields = Map::new();
    fields.insert(
        "finding_info".into(),
        json!({"uid": uid, "title": finding.name, "desc": finding.summary,
               "created_time": epoch_ms(finding.time)}),
    );
    put(&mut fields, "message", finding.summary.as_str());
    put(&mut fields, "status_id", 1);
    put(&mut fields, "status", "New");
    if evidence {
        fields.insert("evidences".into(), json!([{"data": finding.data}]));
    } else {
        fields.insert("unmapped".into(), finding.data.clone());
    }
    fields
}

/// Remediation activity of a containment action: the kernel block, the NetworkPolicy, taking
/// the pod out of its Service, freezing it and cordoning its node isolate; killing evicts; an
/// undo or a release restores; the rest (labels, evicting the other pods, the incident's own
/// transitions) is other.
fn remediation_activity(name: &str) -> (u32, &'static str) {
    match name {
        "kernel_block" | "network_policy" | "remove_from_service" | "freeze" | "cordon_node" => {
            (1, "Isolate")
        }
        "kill" => (2, "Evict"),
        "incident_released" | "incident_expired" => (3, "Restore"),
        undo if undo.starts_with("undo_") => (3, "Restore"),
        _ => (99, "Other"),
    }
}

/// D3FEND countermeasure of an action, where one fits.
fn countermeasure(name: &str) -> Option<Value> {
    let (tactic, technique) = match name.strip_prefix("undo_").unwrap_or(name) {
        "kernel_block" | "network_policy" | "remove_from_service" => {
            ("Isolate", Some(("Network Isolation", "D3-NI")))
        }
        "freeze" => ("Isolate", Some(("Process Suspension", "D3-PS"))),
        "kill" => ("Evict", Some(("Process Termination", "D3-PT"))),
        "cordon_node" => ("Isolate", None),
        _ => return None,
    };
    let tactic = if name.starts_with("undo_") {
        "Restore"
    } else {
        tactic
    };
    let mut d3fend = json!({"d3f_tactic": {"name": tactic}});
    if let Some((name, uid)) = technique {
        d3fend["d3f_technique"] = json!({"name": name, "uid": uid});
    }
    Some(d3fend)
}

fn action_fields(finding: &Finding, uid: &str) -> Fields {
    let mut fields = Map::new();
    // One remediation command: the incident, whose steps share its id.
    let command = finding.data["incident"].as_str().unwrap_or(uid);
    put(&mut fields, "command_uid", command);
    put(&mut fields, "message", finding.summary.as_str());
    let outcome = finding.data["outcome"]["status"].as_str();
    let (status_id, status) = match (finding.data["entry"].as_str(), outcome) {
        (_, Some("done" | "already_done")) => (1, "Success"),
        (_, Some("failed")) => (2, "Failure"),
        (_, Some("not_applicable")) => (5, "Unsupported"),
        (_, Some(_)) | (Some("refused"), None) => (99, "Other"),
        (Some(_), None) => (1, "Success"),
        (None, None) => (0, "Unknown"),
    };
    put(&mut fields, "status_id", status_id);
    put(&mut fields, "status", status);
    if let Some(outcome) = outcome {
        put(&mut fields, "status_detail", outcome);
    }
    if let Some(countermeasure) = countermeasure(&finding.name) {
        fields.insert("countermeasures".into(), json!([countermeasure]));
    }
    fields.insert("unmapped".into(), finding.data.clone());
    fields
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::export::schema::fixtures;

    #[test]
    fn classes_and_type_uids() {
        let ctx = Context::new("node-1");
        let got: Vec<(u64, u64)> = fixtures::all()
            .iter()
            .map(|e| {
                let v = map(e, &ctx);
                (
                    v["class_uid"].as_u64().unwrap(),
                    v["type_uid"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (1007, 100_701),
                (1007, 100_702),
                (1001, 100_114),
                (1001, 100_105),
                (4001, 400_101),
                (4001, 400_106),
                (0, 99),
                (2004, 200_401),
                (7001, 700_101),
                (7001, 700_199),
                (7001, 700_103),
                (2004, 200_402),
                // The newer events: exec, truncate, link, symlink.
                (1007, 100_701),
                (1001, 100_103),
                (1001, 100_101),
                (1001, 100_101),
                // ptrace attach, traceme; two sockets; mount, umount, pivot_root.
                (1007, 100_703),
                (1007, 100_799),
                (4001, 400_199),
                (4001, 400_199),
                (1001, 100_112),
                (1001, 100_113),
                (1001, 100_199),
                // unshare, setns, memfd_create, finit_module, init_module, bpf.
                (1007, 100_799),
                (1007, 100_799),
                (1001, 100_101),
                (1002, 100_201),
                (1002, 100_201),
                (1003, 100_301),
                // setuid, dup_socket, io_uring_setup, mknod.
                (1007, 100_705),
                (1007, 100_799),
                (1003, 100_301),
                (1001, 100_101),
            ]
        );
    }

    /// The OCSF form of the first fixture that is a syscall of `op` (and `tag`, if given).
    fn syscall_doc(op: &str, tag: Option<&str>) -> Value {
        mapped_fixtures()
            .into_iter()
            .find(|d| {
                let call = &d["unmapped"]["syscall"];
                call["op"] == op
                    && tag.is_none_or(|t| call["tags"].as_array().unwrap().contains(&t.into()))
            })
            .unwrap_or_else(|| panic!("no {op} fixture"))
    }

    #[test]
    fn syscalls_carry_the_caller_what_they_acted_on_and_their_status() {
        let attach = syscall_doc("ptrace", Some("attach"));
        assert_eq!(attach["activity_name"], "Open");
        assert_eq!(attach["process"]["pid"], 4242);
        assert_eq!(attach["actor"]["process"]["pid"], 100);
        assert_eq!(attach["status"], "Success");
        assert_eq!(attach["message"], "ptrace attach");
        assert_eq!(attach["unmapped"]["syscall"]["target_pid"], 4242);
        let traceme = syscall_doc("ptrace", Some("traceme"));
        assert_eq!(traceme["activity_name"], "ptrace");
        assert_eq!(traceme["process"]["pid"], 100);

        let setuid = syscall_doc("setuid", None);
        assert_eq!(setuid["activity_name"], "Set User ID");
        assert_eq!(
            setuid["unmapped"]["syscall"]["tags"],
            json!(["to_root", "from_non_root"])
        );
        assert_eq!(setuid["unmapped"]["syscall"]["syscall"], "setresuid");
        assert_eq!(setuid["unmapped"]["syscall"]["euid"], 0);

        let refused = syscall_doc("socket", Some("refused"));
        assert_eq!(
            (refused["status_id"].clone(), refused["status"].clone()),
            (2.into(), "Failure".into())
        );
        assert_eq!(refused["status_code"], "-1");
        assert_eq!(refused["connection_info"]["protocol_ver_id"], 4);
        assert_eq!(refused["connection_info"]["protocol_num"], 1);
        assert_eq!(refused["src_endpoint"]["container"]["uid"], "c0ffee");

        let mount = syscall_doc("mount", None);
        assert_eq!(mount["activity_name"], "Mount");
        assert_eq!(mount["file"]["path"], "/host");
        assert_eq!(mount["file"]["type"], "Folder");
        assert_eq!(mount["unmapped"]["syscall"]["fstype"], "none");
        let mknod = syscall_doc("mknod", None);
        assert_eq!(
            (
                mknod["file"]["path"].clone(),
                mknod["file"]["type_id"].clone()
            ),
            ("/dev/sda".into(), 4.into())
        );
        assert_eq!(syscall_doc("memfd_create", None)["file"]["name"], "memfd:x");

        let finit = syscall_doc("module_load", Some("finit_module"));
        assert_eq!(finit["class_name"], "Kernel Extension Activity");
        assert_eq!(finit["driver"]["file"]["name"], "fd 5");
        let init = syscall_doc("module_load", Some("init_module"));
        assert_eq!(init["driver"]["file"]["size"], 4096);
        let bpf = syscall_doc("bpf_prog_load", None);
        assert_eq!(bpf["kernel"]["name"], "kprobe program");
        assert_eq!(bpf["kernel"]["system_call"], "bpf");
        assert_eq!(
            syscall_doc("io_uring_setup", None)["kernel"]["name"],
            "io_uring"
        );
        // Every syscall event says whether it succeeded, and keeps the whole native form.
        for doc in mapped_fixtures()
            .iter()
            .filter(|d| d["unmapped"]["syscall"].is_object())
        {
            assert!(doc["status_id"] == 1 || doc["status_id"] == 2, "{doc}");
            assert!(doc["unmapped"]["syscall"]["tags"].is_array(), "{doc}");
            assert_eq!(doc["severity"], "Low", "{doc}");
        }
    }

    #[test]
    fn new_file_operations_and_flags_are_kept() {
        let docs = mapped_fixtures();
        let by_op = |op: &str| {
            docs.iter()
                .find(|d| d["unmapped"]["operation"] == op)
                .unwrap_or_else(|| panic!("no {op} fixture"))
        };
        let truncate = by_op("truncate");
        assert_eq!(truncate["activity_name"], "Update");
        assert_eq!(truncate["unmapped"]["log"], true);
        assert_eq!(truncate["unmapped"]["io_uring"], true);
        assert_eq!(truncate["unmapped"]["unresolved"], true);
        for op in ["link", "symlink"] {
            let doc = by_op(op);
            assert_eq!(doc["activity_name"], "Create");
            assert_eq!(doc["file"]["path"], "/etc/shadow");
            assert!(
                doc["file_result"]["path"]
                    .as_str()
                    .unwrap()
                    .starts_with("/tmp/")
            );
        }
        let fileless = docs
            .iter()
            .find(|d| d["unmapped"]["fileless"] == true)
            .expect("a fileless exec");
        assert_eq!(fileless["activity_name"], "Launch");
        assert_eq!(fileless["unmapped"]["stdin_socket"], true);
        assert_eq!(fileless["unmapped"]["stdout_socket"], false);
    }

    #[test]
    fn exec_carries_process_container_and_time() {
        let ctx = Context::new("node-1");
        let v = map(&fixtures::all()[0], &ctx);
        assert_eq!(v["time"], 1_700_000_000_123_i64);
        assert_eq!(v["process"]["pid"], 100);
        assert_eq!(v["process"]["cmd_line"], "sh -c id");
        assert_eq!(v["process"]["file"]["path"], "/bin/sh");
        assert_eq!(v["process"]["user"]["uid"], "0");
        assert_eq!(v["actor"]["process"]["pid"], 1);
        assert_eq!(v["process"]["container"]["uid"], "c0ffee");
        assert_eq!(
            v["process"]["container"]["pod_uuid"],
            "4f1c8a2e-7b3d-4e9a-9c51-2d6e8f0a1b3c"
        );
        assert_eq!(v["metadata"]["profiles"], json!(["host", "container"]));
        assert_eq!(v["metadata"]["uid"], "test-0");
        assert_eq!(v["device"]["hostname"], "node-1");
        assert_eq!(v["unmapped"]["pod"]["namespace"], "shop");
        assert_eq!(v["unmapped"]["lineage"]["role"], "exec_session");
        assert_eq!(v["unmapped"]["ns_pid"], 7);
        assert_eq!(v["severity_id"], 1);
    }

    #[test]
    fn connect_has_endpoints_and_rename_a_result() {
        let ctx = Context::new("n");
        let all = fixtures::all();
        let rename = map(&all[3], &ctx);
        assert_eq!(rename["file_result"]["path"], "/etc/b");
        assert_eq!(rename["unmapped"]["suppressed"], 2);
        let connect = map(&all[4], &ctx);
        assert_eq!(connect["dst_endpoint"]["ip"], "10.0.0.9");
        assert_eq!(connect["dst_endpoint"]["port"], 443);
        assert_eq!(connect["connection_info"]["protocol_num"], 6);
    }

    #[test]
    fn containment_actions_are_remediation_activities_of_their_incident() {
        let docs = mapped_fixtures();
        let block = &docs[8];
        assert_eq!(block["activity_name"], "Isolate");
        assert_eq!(block["command_uid"], "inc-20231114t221320-1-0");
        assert_eq!(block["status"], "Success");
        assert_eq!(block["countermeasures"][0]["d3f_technique"]["uid"], "D3-NI");
        assert_eq!(block["unmapped"]["subject"]["pod"], "web-7d9f");
        assert_eq!(block["time"], 1_700_000_001_000_i64);
        let refused = &docs[9];
        assert_eq!(refused["activity_name"], "Other");
        assert_eq!(refused["status"], "Other");
        assert!(
            refused["message"]
                .as_str()
                .unwrap()
                .contains("protected namespace kube-system")
        );
        let undo = &docs[10];
        assert_eq!(undo["activity_name"], "Restore");
        assert_eq!(undo["status"], "Failure");
        assert_eq!(undo["countermeasures"][0]["d3f_tactic"]["name"], "Restore");
    }

    /// Generates JSON Schemas from the official OCSF export that the `ocsf-json-schema` package
    /// (PyPI) ships, one per class uid and profile set, embedding the objects they use.
    const GENERATE: &str = r#"
import json, sys
from ocsf_json_schema import get_ocsf_schema, OcsfJsonSchemaEmbedded
ocsf = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=sys.argv[1]))
out = {}
for uid, profiles in json.loads(sys.argv[2]):
    name = ocsf.lookup_class_name_from_uid(class_uid=uid)
    out[f"{uid}:{','.join(profiles)}"] = ocsf.get_class_schema(class_name=name, profiles=profiles)
json.dump(out, sys.stdout)
"#;

    fn schema_key(doc: &Value) -> (u64, Vec<String>) {
        let profiles = doc["metadata"]["profiles"]
            .as_array()
            .map(|p| {
                p.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        (doc["class_uid"].as_u64().unwrap(), profiles)
    }

    /// The official schemas for these docs' classes and profiles, by [`schema_key`].
    ///
    /// `cargo xtask test` installs the package into the project's virtualenv, whose `python3`
    /// comes first on the tests' PATH; without it this fails, naming the package.
    fn official_schemas(docs: &[Value]) -> BTreeMap<(u64, Vec<String>), Value> {
        let wanted: BTreeSet<(u64, Vec<String>)> = docs.iter().map(schema_key).collect();
        let output = std::process::Command::new("python3")
            .args(["-c", GENERATE, VERSION])
            .arg(serde_json::to_string(&wanted).unwrap())
            .output()
            .expect("run python3");
        assert!(
            output.status.success(),
            "generating the OCSF {VERSION} schemas needs the ocsf-json-schema package from PyPI \
             (`cargo xtask test` installs it): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let by_name: BTreeMap<String, Value> = serde_json::from_slice(&output.stdout).unwrap();
        wanted
            .into_iter()
            .map(|(uid, profiles)| {
                let schema = by_name[&format!("{uid}:{}", profiles.join(","))].clone();
                ((uid, profiles), schema)
            })
            .collect()
    }

    fn mapped_fixtures() -> Vec<Value> {
        let ctx = Context::new("node-1");
        fixtures::all().iter().map(|e| map(e, &ctx)).collect()
    }

    #[test]
    fn every_record_kind_validates_against_the_official_ocsf_schema() {
        let docs = mapped_fixtures();
        let schemas = official_schemas(&docs);
        for doc in &docs {
            let key = schema_key(doc);
            let validator = jsonschema::validator_for(&schemas[&key]).unwrap();
            let errors: Vec<String> = validator
                .iter_errors(doc)
                .map(|e| format!("{} at {}", e, e.instance_path()))
                .collect();
            assert!(errors.is_empty(), "{key:?}: {errors:#?}\n{doc:#}");
        }
    }

    #[test]
    fn the_schema_catches_a_broken_mapping() {
        let docs = mapped_fixtures();
        let mut doc = docs[0].clone();
        let schemas = official_schemas(&docs[..1]);
        let validator = jsonschema::validator_for(&schemas[&schema_key(&doc)]).unwrap();
        assert!(validator.is_valid(&doc));
        doc["process"]["pid"] = "100".into();
        assert!(!validator.is_valid(&doc));
        doc["process"]["pid"] = 100.into();
        doc["procss"] = json!({});
        assert!(!validator.is_valid(&doc));
        doc.as_object_mut().unwrap().remove("procss");
        doc.as_object_mut().unwrap().remove("actor");
        assert!(!validator.is_valid(&doc));
    }
}
