//! Pure mappers from an [`Envelope`] to each SIEM schema's JSON; chosen per sink.
//!
//! No I/O and no clock: the host name and the product version come in a [`Context`], times come
//! from the record, so every mapping is a unit-tested function of its input.

pub(crate) mod ecs;
pub(crate) mod falco;
pub mod ocsf;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::record::Envelope;
use crate::event::Event;

/// The output schema of a sink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schema {
    /// The detector's own JSON (the event form of `event.rs`, with `uid` and `record`).
    Native,
    /// OCSF 1.3: Process Activity, File System Activity, Network Activity, Detection Finding,
    /// Remediation Activity.
    #[default]
    Ocsf,
    /// Elastic Common Schema 8.
    Ecs,
    /// Falco's JSON output (rule, priority, output, output_fields, time, hostname, source,
    /// tags), for Falcosidekick.
    Falco,
}

/// What the mappers need besides the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// This node's host name.
    pub host: String,
    /// The detector's version.
    pub version: String,
}

impl Context {
    /// A context for this build on `host`.
    pub fn new(host: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

impl Schema {
    /// The record in this schema.
    pub fn render(self, envelope: &Envelope, ctx: &Context) -> Value {
        match self {
            Self::Native => serde_json::to_value(envelope).unwrap_or(Value::Null),
            Self::Ocsf => ocsf::map(envelope, ctx),
            Self::Ecs => ecs::map(envelope, ctx),
            Self::Falco => falco::map(envelope, ctx),
        }
    }
}

/// Last path component, for `name` fields.
pub(crate) fn basename(path: &str) -> &str {
    path.rsplit('/').find(|s| !s.is_empty()).unwrap_or(path)
}

/// Inserts `value` under `key` unless it is null.
pub(crate) fn put(map: &mut Map<String, Value>, key: &str, value: impl Into<Value>) {
    let value = value.into();
    if !value.is_null() {
        map.insert(key.to_owned(), value);
    }
}

/// Milliseconds since the epoch (OCSF `timestamp_t`).
pub(crate) fn epoch_ms(time: time::OffsetDateTime) -> i64 {
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// The command line from argv, for `cmd_line`/`command_line` fields.
pub(crate) fn command_line(argv: &[String]) -> String {
    argv.join(" ")
}

/// The fields of an event no schema field holds, kept so nothing is lost.
pub(crate) fn event_extras(event: &Event) -> Value {
    let mut extras = Map::new();
    put(&mut extras, "ktime_ns", event.ktime_ns);
    put(&mut extras, "cgroup_id", event.cgroup_id);
    if let Some(pod) = &event.pod {
        put(
            &mut extras,
            "pod",
            serde_json::to_value(pod).unwrap_or(Value::Null),
        );
    }
    put(&mut extras, "ns_pid", event.process.ns_pid);
    if let Some(lineage) = &event.lineage {
        put(
            &mut extras,
            "lineage",
            serde_json::to_value(lineage).unwrap_or(Value::Null),
        );
    }
    Value::Object(extras)
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Events of every kind, for the mapper tests and the schema validation tests.

    use std::{collections::BTreeMap, net::IpAddr};

    use time::OffsetDateTime;

    use crate::{
        contain::{
            StepOutcome,
            journal::{Entry, EntryKind},
        },
        event::{
            Ancestor, Body, Connect, Container, Egress, Event, Exec, Exit, FileActivity,
            FileOperation, Lineage, Loss, Owner, Pod, ProcessFields, Role, Syscall,
            SyscallOperation,
        },
        export::record::{Envelope, Finding, Record, Severity},
        score::Subject,
    };

    fn event(body: Body, in_pod: bool) -> Event {
        Event {
            time: OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap(),
            ktime_ns: 42,
            process: ProcessFields {
                pid: Some(100),
                tid: Some(101),
                ppid: Some(1),
                uid: Some(0),
                gid: Some(0),
                ns_pid: in_pod.then_some(7),
                comm: Some("sh".into()),
            },
            cgroup_id: Some(7),
            container: in_pod.then(|| Container {
                id: "c0ffee".into(),
                runtime: "containerd".into(),
                name: Some("web".into()),
                image: Some("nginx:1.27".into()),
            }),
            pod: in_pod.then(|| Pod {
                uid: "4f1c8a2e-7b3d-4e9a-9c51-2d6e8f0a1b3c".into(),
                namespace: Some("shop".into()),
                name: Some("web-7d9f".into()),
                labels: BTreeMap::from([("app".into(), "web".into())]),
                owner: Some(Owner {
                    kind: "Deployment".into(),
                    name: "web".into(),
                }),
                node: Some("node-1".into()),
                qos: Some("burstable".into()),
                resolved: true,
            }),
            ancestry: vec![Ancestor {
                pid: 1,
                exe: "/usr/bin/containerd-shim".into(),
            }],
            lineage: in_pod.then_some(Lineage {
                role: Role::ExecSession,
                tty: false,
                leader: true,
            }),
            body,
        }
    }

    fn finding(severity: Severity, name: &str) -> Finding {
        Finding {
            time: OffsetDateTime::from_unix_timestamp(1_700_000_001).unwrap(),
            severity,
            name: name.into(),
            summary: format!("{name} happened"),
            data: serde_json::json!({"score": 80, "pod": {"name": "web-7d9f"}}),
        }
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

    /// A containment journal entry, as the daemon exports it.
    fn action(kind: EntryKind) -> Finding {
        let mut entry = Entry::new("inc-20231114t221320-1-0", kind);
        entry.ts = "2023-11-14T22:13:21Z".into();
        crate::respond::action_finding(&entry, Some(&subject()))
    }

    /// A syscall of `op` by the pod's shell, with `tags`, `result` and the arguments `set`
    /// gives it.
    fn syscall(
        op: SyscallOperation,
        syscall: &str,
        tags: &[&str],
        result: i64,
        set: impl FnOnce(&mut Syscall),
    ) -> Event {
        let mut call = Syscall::new(op, syscall, result);
        call.tags = tags.iter().map(|t| (*t).to_owned()).collect();
        set(&mut call);
        event(Body::Syscall(call), true)
    }

    /// An exec, file events of the operations and flags the first kinds lacked, and a syscall
    /// event of each operation (and each mapping of an operation), after [`all`]'s first
    /// twelve records.
    pub fn newer_events() -> Vec<Event> {
        use SyscallOperation as Op;
        let Record::Event(mut exec) = all_first()[0].clone() else {
            unreachable!("the first record is an exec")
        };
        if let Body::Exec(e) = &mut exec.body {
            (e.fileless, e.stdin_socket, e.stdout_socket) = (true, true, false);
        }
        let file = |op: FileOperation, path: &str, target: Option<&str>| {
            let Record::Event(mut e) = all_first()[3].clone() else {
                unreachable!("the fourth record is a rename")
            };
            if let Body::File(f) = &mut e.body {
                (f.op, f.path, f.target) = (op, path.into(), target.map(Into::into));
                (f.log, f.unresolved, f.io_uring) = (op == FileOperation::Truncate, true, true);
            }
            e
        };
        vec![
            exec,
            file(FileOperation::Truncate, "/var/log/auth.log", None),
            file(FileOperation::Link, "/etc/shadow", Some("/tmp/s")),
            file(FileOperation::Symlink, "/etc/shadow", Some("/tmp/l")),
            syscall(Op::Ptrace, "ptrace", &["attach"], 0, |c| {
                (c.request, c.target_pid) = (Some("attach".into()), Some(4242));
            }),
            syscall(Op::Ptrace, "ptrace", &["traceme"], 0, |c| {
                c.request = Some("traceme".into());
            }),
            syscall(Op::Socket, "socket", &["packet", "raw"], 3, |c| {
                (c.family, c.socket_type, c.protocol) = (Some(17), Some(3), Some(0x0300));
            }),
            syscall(Op::Socket, "socket", &["inet", "raw", "refused"], -1, |c| {
                (c.family, c.socket_type, c.protocol) = (Some(2), Some(3), Some(1));
            }),
            syscall(
                Op::Mount,
                "mount",
                &["bind", "rec", "fstype:none"],
                0,
                |c| {
                    c.path = Some("/host".into());
                    c.fstype = Some("none".into());
                    c.flags = Some(4096 | 16384);
                },
            ),
            syscall(Op::Umount, "umount2", &["detach"], 0, |c| {
                (c.path, c.flags) = (Some("/proc".into()), Some(2));
            }),
            syscall(Op::PivotRoot, "pivot_root", &["refused"], -1, |c| {
                c.path = Some("/new".into());
            }),
            syscall(Op::Unshare, "unshare", &["newns", "newuser"], 0, |c| {
                c.flags = Some(0x1002_0000);
            }),
            syscall(Op::Setns, "setns", &["newnet"], 0, |c| {
                (c.fd, c.flags) = (Some(3), Some(0x4000_0000));
            }),
            syscall(Op::MemfdCreate, "memfd_create", &["cloexec"], 4, |c| {
                (c.name, c.flags) = (Some("x".into()), Some(1));
            }),
            syscall(Op::ModuleLoad, "finit_module", &["finit_module"], 0, |c| {
                (c.fd, c.flags) = (Some(5), Some(0));
            }),
            syscall(
                Op::ModuleLoad,
                "init_module",
                &["init_module", "refused"],
                -1,
                |c| {
                    c.length = Some(4096);
                },
            ),
            syscall(Op::BpfProgLoad, "bpf", &["kprobe"], 7, |c| {
                c.prog_type = Some(2);
            }),
            syscall(
                Op::Setuid,
                "setresuid",
                &["to_root", "from_non_root"],
                0,
                |c| {
                    c.euid = Some(0);
                },
            ),
            syscall(Op::DupSocket, "dup2", &["stdin"], 0, |c| {
                (c.old_fd, c.new_fd, c.family) = (Some(3), Some(0), Some(2));
            }),
            syscall(Op::IoUringSetup, "io_uring_setup", &[], 4, |c| {
                (c.entries, c.flags) = (Some(64), Some(0));
            }),
            syscall(Op::Mknod, "mknodat", &["block"], 0, |c| {
                (c.path, c.mode, c.dev) = (Some("/dev/sda".into()), Some(0o060_600), Some(0x800));
            }),
        ]
    }

    /// Records as the daemon makes them, holding what the simple fixtures lack: an exec in a pod
    /// labelled with dotted keys (`app.kubernetes.io/name` beside `app`), the alert and the
    /// verdict the scoring stage makes of it (lists of rules, MITRE tags, events with their
    /// argv and ancestry), a containment step whose undo keeps the removed labels, and an
    /// evidence manifest with its artifacts.
    pub fn rich() -> Vec<Envelope> {
        use crate::{
            rules::{RuleMeta, Severity as RuleSeverity},
            score::record::{Alert, Contribution, Decision, MitreTag, Record as Scored, Verdict},
        };
        let Record::Event(mut exec) = all_first()[0].clone() else {
            unreachable!("the first record is an exec")
        };
        if let Some(pod) = &mut exec.pod {
            pod.labels = BTreeMap::from([
                ("app".into(), "web".into()),
                ("app.kubernetes.io/name".into(), "web".into()),
                ("app.kubernetes.io/part-of".into(), "shop".into()),
                ("pod-template-hash".into(), "7d9f".into()),
            ]);
        }
        exec.ancestry.push(Ancestor {
            pid: 90,
            exe: "/usr/sbin/nginx".into(),
        });
        let rule = |id: &str, tactic: &str, technique: &str| RuleMeta {
            id: id.into(),
            description: format!("{id} matched"),
            tactic: tactic.into(),
            technique: technique.into(),
            severity: RuleSeverity::High,
            weight: 40.0,
            contain_immediately: false,
        };
        let shell = rule("shell_in_container", "execution", "T1059");
        let escape = rule("host_mount", "privilege-escalation", "T1611");
        let alert = Scored::Alert(Box::new(Alert {
            time: exec.time,
            ktime_ns: exec.ktime_ns,
            subject: subject(),
            rule: shell.clone(),
            score: 40.0,
            decision: Decision::Log,
            detail: None,
            event: exec.clone(),
        }));
        let verdict = Scored::Verdict(Box::new(Verdict {
            time: exec.time,
            ktime_ns: exec.ktime_ns,
            subject: subject(),
            score: 80.0,
            decision: Decision::Alert,
            reason: "a shell, then a host mount".into(),
            mitre: vec![
                MitreTag {
                    tactic: "execution".into(),
                    technique: "T1059".into(),
                },
                MitreTag {
                    tactic: "privilege-escalation".into(),
                    technique: "T1611".into(),
                },
            ],
            rules: vec![
                Contribution {
                    rule: shell,
                    matches: 1,
                    events: vec![exec.clone()],
                },
                Contribution {
                    rule: escape,
                    matches: 2,
                    events: Vec::new(),
                },
            ],
            omitted_rules: 0,
        }));
        let time = exec.time;
        let finding = |severity: Severity, name: &str, data: serde_json::Value| Finding {
            time,
            severity,
            name: name.into(),
            summary: format!("{name} happened"),
            data,
        };
        let mut step = Entry::new(
            "inc-20231114t221320-1-0",
            EntryKind::Step {
                step: "remove_from_service".into(),
                outcome: StepOutcome::Done {
                    detail: "removed labels app, app.kubernetes.io/name".into(),
                    undo: serde_json::json!({"labels": {
                        "app": "web",
                        "app.kubernetes.io/name": "web",
                    }}),
                },
            },
        );
        step.ts = "2023-11-14T22:13:21Z".into();
        let manifest = serde_json::json!({
            "format": 1,
            "incident": "inc-20231114t221320-1-0",
            "collector": {"name": "detector", "version": "0.1.0"},
            "node": "node-1",
            "started_at": "2023-11-14T22:13:21Z",
            "finished_at": "2023-11-14T22:13:25Z",
            "complete": false,
            "incomplete_reasons": ["memory: not captured"],
            "artifacts": [
                {"path": "container/inspect.json", "size": 2048, "sha256": "ab".repeat(32),
                 "captured_at": "2023-11-14T22:13:22Z", "source": "containerd"},
                {"path": "logs/web.log", "size": 100, "sha256": "cd".repeat(32),
                 "captured_at": "2023-11-14T22:13:23Z", "source": "cri", "partial_reason": "cut at 100 bytes"},
            ],
            "not_captured": [{"artifact": "memory", "reason": "not supported"}],
        });
        [
            Record::Event(exec),
            Record::Verdict(finding(
                Severity::High,
                "shell_in_container",
                serde_json::to_value(&alert).unwrap(),
            )),
            Record::Verdict(finding(
                Severity::High,
                "verdict_alert",
                serde_json::to_value(&verdict).unwrap(),
            )),
            Record::Action(crate::respond::action_finding(&step, Some(&subject()))),
            Record::Evidence(finding(Severity::High, "evidence_bundle", manifest)),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, record)| Envelope {
            uid: format!("rich-{i}"),
            record,
        })
        .collect()
    }

    /// One envelope of each record kind, then [`newer_events`].
    pub fn all() -> Vec<Envelope> {
        all_first()
            .into_iter()
            .chain(newer_events().into_iter().map(Record::Event))
            .enumerate()
            .map(|(i, record)| Envelope {
                uid: format!("test-{i}"),
                record,
            })
            .collect()
    }

    /// The first twelve records: one of each kind.
    fn all_first() -> Vec<Record> {
        let node = |body: Body| Event {
            process: ProcessFields::default(),
            ancestry: Vec::new(),
            lineage: None,
            ..event(body, false)
        };
        vec![
            Record::Event(event(
                Body::Exec(Exec {
                    filename: "/bin/sh".into(),
                    argv: vec!["sh".into(), "-c".into(), "id".into()],
                    argv_truncated: false,
                    filename_truncated: false,
                    tty: false,
                    parent_cgroup_id: None,
                    fileless: false,
                    stdin_socket: false,
                    stdout_socket: false,
                    deleted: false,
                }),
                true,
            )),
            Record::Event(event(
                Body::Exit(Exit {
                    exit_code: 256,
                    exit_status: Some(1),
                    signal: None,
                }),
                false,
            )),
            Record::Event(event(
                Body::File(FileActivity {
                    op: FileOperation::Open,
                    path: "/etc/shadow".into(),
                    flags: 0,
                    write: false,
                    sensitive: false,
                    read_sensitive: true,
                    relative: false,
                    dirfd: None,
                    path_truncated: false,
                    target: None,
                    suppressed: 0,
                    result: None,
                    resolved: false,
                    outside_root: false,
                    joined: false,
                    original_path: None,
                    original_target: None,
                    self_path: None,
                    log: false,
                    unresolved: false,
                    io_uring: false,
                }),
                true,
            )),
            Record::Event(event(
                Body::File(FileActivity {
                    op: FileOperation::Rename,
                    path: "/etc/a".into(),
                    flags: 0,
                    write: true,
                    sensitive: true,
                    read_sensitive: false,
                    relative: false,
                    dirfd: None,
                    path_truncated: false,
                    target: Some("/etc/b".into()),
                    suppressed: 2,
                    result: None,
                    resolved: false,
                    outside_root: false,
                    joined: false,
                    original_path: None,
                    original_target: None,
                    self_path: None,
                    log: false,
                    unresolved: false,
                    io_uring: false,
                }),
                false,
            )),
            Record::Event(event(
                Body::Connect(Connect {
                    family: "ipv4".into(),
                    protocol: "tcp".into(),
                    daddr: "10.0.0.9".parse::<IpAddr>().unwrap(),
                    dport: 443,
                    blocked: false,
                }),
                true,
            )),
            Record::Event(node(Body::Egress(Egress {
                bytes: 1500,
                packets: 3,
                interval_ms: 1000,
                total_bytes: 9000,
            }))),
            Record::Event(node(Body::Loss(Loss {
                source: "ring_buffer".into(),
                lost_kind: "file".into(),
                count: 5,
                total: 9,
                reason: None,
            }))),
            Record::Verdict(finding(Severity::High, "shell_in_container")),
            Record::Action(action(EntryKind::Step {
                step: "kernel_block".into(),
                outcome: StepOutcome::done("cgroups [4242] cut off the network"),
            })),
            Record::Action(action(EntryKind::Refused {
                subject: subject(),
                why: "protected namespace kube-system".into(),
            })),
            Record::Action(action(EntryKind::Undo {
                step: "network_policy".into(),
                outcome: StepOutcome::Failed {
                    error: "patch: 422 invalid".into(),
                },
            })),
            Record::Evidence(finding(Severity::Medium, "evidence_manifest")),
        ]
    }
}
