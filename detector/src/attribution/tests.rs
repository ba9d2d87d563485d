//! Tests of the enricher's pure core: hand-made events, a map for cgroup paths, injected time.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use time::OffsetDateTime;

use super::{
    pods::{ContainerInfo, PodIndex, PodInfo, SharedPodIndex},
    *,
};
use crate::event::{
    Exec, Exit, FileActivity, FileOperation, Owner, ProcessFields, Syscall, SyscallOperation,
};

const UID: &str = "1f2e3d4c-5b6a-4789-9abc-def012345678";

fn container_id(n: usize) -> String {
    format!("{n:064x}")
}

fn pod_uid(n: usize) -> String {
    format!("{n:08x}-0000-4000-8000-{n:012x}")
}

fn cgroup_path(uid: &str, container: &str) -> String {
    format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{container}.scope",
        uid.replace('-', "_")
    )
}

fn event(pid: u32, ppid: u32, cgroup_id: u64, body: Body) -> Event {
    Event {
        time: OffsetDateTime::UNIX_EPOCH,
        ktime_ns: 0,
        process: ProcessFields {
            pid: Some(pid),
            tid: Some(pid),
            ppid: Some(ppid),
            uid: Some(0),
            gid: Some(0),
            ns_pid: None,
            comm: Some("x".into()),
        },
        cgroup_id: Some(cgroup_id),
        container: None,
        pod: None,
        ancestry: Vec::new(),
        lineage: None,
        body,
    }
}

fn exec(filename: &str) -> Body {
    Body::Exec(Exec {
        filename: filename.into(),
        argv: vec![filename.into()],
        argv_truncated: false,
        filename_truncated: false,
        tty: false,
        parent_cgroup_id: None,
        fileless: false,
        stdin_socket: false,
        stdout_socket: false,
        deleted: false,
    })
}

fn open(path: &str) -> Body {
    Body::File(FileActivity {
        op: FileOperation::Open,
        path: path.into(),
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
    })
}

fn pod_info(uid: &str, container: &str) -> PodInfo {
    PodInfo {
        uid: uid.into(),
        namespace: "shop".into(),
        name: "web-5d4f8b9c7-abcde".into(),
        labels: BTreeMap::from([("app".into(), "web".into())]),
        owner: Some(Owner {
            kind: "Deployment".into(),
            name: "web".into(),
        }),
        node: Some("node-1".into()),
        containers: vec![ContainerInfo {
            probes: Vec::new(),
            id: container.into(),
            runtime: "containerd".into(),
            name: "nginx".into(),
            image: "nginx:1.27".into(),
        }],
        ..PodInfo::default()
    }
}

fn setup(watching: bool) -> (Enricher, SharedPodIndex) {
    let config = AttributionConfig::default();
    let index = PodIndex::shared(config.pod_limits());
    index.write().unwrap().set_watching(watching);
    let cgroups: HashMap<u64, String> = HashMap::from([
        (7, cgroup_path(UID, &container_id(1))),
        (8, "/user.slice/user-0.slice/session-1.scope".to_owned()),
        (9, format!("/system.slice/docker-{}.scope", container_id(2))),
    ]);
    (
        Enricher::new(Box::new(cgroups), index.clone(), &config),
        index,
    )
}

#[test]
fn standalone_events_get_cgroup_identity_and_ancestry() {
    let (mut enricher, _) = setup(false);
    let t0 = Instant::now();
    let events = vec![
        event(200, 100, 7, exec("/usr/sbin/nginx")),
        event(300, 200, 7, exec("/bin/sh")),
        event(400, 300, 7, exec("/usr/bin/curl")),
        event(400, 300, 7, open("/var/run/secrets/token")),
        event(500, 1, 8, exec("/usr/bin/ls")),
        event(600, 1, 9, exec("/bin/true")),
    ];
    let out = enricher.process(events, t0);
    assert_eq!(out.len(), 6, "nothing is held without a watcher");
    let curl = &out[3];
    let container = curl.container.as_ref().unwrap();
    assert_eq!(
        (container.id.as_str(), container.runtime.as_str()),
        (container_id(1).as_str(), "containerd")
    );
    let pod = curl.pod.as_ref().unwrap();
    assert_eq!(
        (pod.uid.as_str(), pod.qos.as_deref(), pod.resolved),
        (UID, Some("burstable"), false)
    );
    let chain: Vec<_> = curl.ancestry.iter().map(|a| a.exe.as_str()).collect();
    assert_eq!(chain, ["/bin/sh", "/usr/sbin/nginx"]);
    assert!(out[4].container.is_none() && out[4].pod.is_none());
    assert_eq!(out[5].container.as_ref().unwrap().runtime, "docker");
    assert!(out[5].pod.is_none());
    let json = serde_json::to_value(curl).unwrap();
    assert_eq!(json["pod"]["uid"], UID);
    assert_eq!(json["container"]["id"], container_id(1));
    assert_eq!(json["ancestry"][0]["exe"], "/bin/sh");
}

#[test]
fn known_pods_fill_metadata_at_once() {
    let (mut enricher, index) = setup(true);
    index
        .write()
        .unwrap()
        .apply(pod_info(UID, &container_id(1)));
    let out = enricher.process(vec![event(10, 1, 7, exec("/bin/sh"))], Instant::now());
    assert_eq!(out.len(), 1);
    let pod = out[0].pod.as_ref().unwrap();
    assert!(pod.resolved);
    assert_eq!(pod.namespace.as_deref(), Some("shop"));
    assert_eq!(pod.labels["app"], "web");
    assert_eq!(pod.owner.as_ref().unwrap().kind, "Deployment");
    let container = out[0].container.as_ref().unwrap();
    assert_eq!(container.name.as_deref(), Some("nginx"));
    assert_eq!(container.image.as_deref(), Some("nginx:1.27"));
}

#[test]
fn unknown_pods_are_held_then_resolved_in_order() {
    let (mut enricher, index) = setup(true);
    let t0 = Instant::now();
    let first = enricher.process(
        vec![
            event(10, 1, 7, exec("/bin/sh")),
            event(10, 1, 7, open("/etc/passwd")),
            event(11, 1, 8, exec("/bin/ls")),
        ],
        t0,
    );
    // The host process passes; the pod's two events wait.
    assert_eq!(first.len(), 1);
    assert_eq!(enricher.held(), 2);
    assert!(enricher.tick(t0 + Duration::from_millis(500)).is_empty());
    index
        .write()
        .unwrap()
        .apply(pod_info(UID, &container_id(1)));
    let released = enricher.tick(t0 + Duration::from_millis(600));
    assert_eq!(released.len(), 2);
    assert!(matches!(released[0].body, Body::Exec(_)));
    assert!(released.iter().all(|e| e.pod.as_ref().unwrap().resolved));
    assert_eq!(enricher.stats().unresolved, 0);
}

#[test]
fn held_events_leave_unresolved_after_the_bound() {
    let (mut enricher, _) = setup(true);
    let t0 = Instant::now();
    assert!(
        enricher
            .process(vec![event(10, 1, 7, exec("/bin/sh"))], t0)
            .is_empty()
    );
    let hold = Duration::from_millis(AttributionConfig::default().hold_ms);
    assert!(
        enricher
            .tick(t0 + hold - Duration::from_millis(1))
            .is_empty()
    );
    let out = enricher.tick(t0 + hold);
    assert_eq!(out.len(), 1);
    let pod = out[0].pod.as_ref().unwrap();
    assert!(!pod.resolved);
    assert_eq!(pod.uid, UID);
    assert!(pod.name.is_none());
    assert_eq!(out[0].container.as_ref().unwrap().id, container_id(1));
    assert_eq!(enricher.stats().unresolved, 1);
}

#[test]
fn a_pod_deleted_a_second_ago_still_attributes() {
    let (mut enricher, index) = setup(true);
    let t0 = Instant::now();
    index
        .write()
        .unwrap()
        .apply(pod_info(UID, &container_id(1)));
    index.write().unwrap().delete(UID, t0);
    let later = t0 + Duration::from_secs(1);
    let out = enricher.process(
        vec![
            event(10, 1, 7, exec("/bin/sh")),
            event(
                10,
                1,
                7,
                Body::Exit(Exit {
                    exit_code: 0,
                    exit_status: Some(0),
                    signal: None,
                }),
            ),
        ],
        later,
    );
    assert_eq!(out.len(), 2);
    for e in &out {
        let pod = e.pod.as_ref().unwrap();
        assert!(pod.resolved);
        assert_eq!(pod.name.as_deref(), Some("web-5d4f8b9c7-abcde"));
    }
}

#[test]
fn container_missing_from_status_waits_then_goes_with_the_pod() {
    let (mut enricher, index) = setup(true);
    let t0 = Instant::now();
    index
        .write()
        .unwrap()
        .apply(pod_info(UID, &container_id(99)));
    assert!(
        enricher
            .process(vec![event(10, 1, 7, exec("/bin/sh"))], t0)
            .is_empty()
    );
    let out = enricher.tick(t0 + Duration::from_secs(3));
    let pod = out[0].pod.as_ref().unwrap();
    assert!(pod.resolved);
    assert!(out[0].container.as_ref().unwrap().name.is_none());
}

#[test]
fn held_events_are_bounded() {
    let config = AttributionConfig {
        max_held_events: 10,
        ..AttributionConfig::default()
    };
    let index = PodIndex::shared(config.pod_limits());
    index.write().unwrap().set_watching(true);
    let cgroups: HashMap<u64, String> = HashMap::from([(7, cgroup_path(UID, &container_id(1)))]);
    let mut enricher = Enricher::new(Box::new(cgroups), index, &config);
    let batch = (0..25).map(|i| event(10 + i, 1, 7, open("/x"))).collect();
    let out = enricher.process(batch, Instant::now());
    assert_eq!(out.len(), 15);
    assert_eq!(enricher.held(), 10);
    assert_eq!(enricher.drain().len(), 10);
}

/// Fills the caches for 250 pods x 50 processes and reports their approximate size.
#[test]
fn memory_for_250_pods_of_50_processes() {
    let config = AttributionConfig::default();
    let index = PodIndex::shared(config.pod_limits());
    index.write().unwrap().set_watching(true);
    let mut cgroups = HashMap::new();
    for p in 0..250 {
        let uid = pod_uid(p);
        cgroups.insert(1000 + p as u64, cgroup_path(&uid, &container_id(p)));
        let mut info = pod_info(&uid, &container_id(p));
        info.name = format!("web-{p}-5d4f8b9c7-abcde");
        info.annotations = BTreeMap::from([
            (
                "kubernetes.io/config.seen".into(),
                "2026-11-23T07:55:00.000000000Z".into(),
            ),
            ("prometheus.io/scrape".into(), "true".into()),
        ]);
        info.labels
            .insert("pod-template-hash".into(), "5d4f8b9c7".into());
        index.write().unwrap().apply(info);
    }
    let mut enricher = Enricher::new(Box::new(cgroups), index.clone(), &config);
    let t0 = Instant::now();
    let exes = [
        "/usr/sbin/nginx",
        "/bin/sh",
        "/usr/bin/curl",
        "/usr/bin/python3",
        "/app/server",
    ];
    for p in 0..250u32 {
        let batch = (0..50u32)
            .map(|i| {
                let pid = 10_000 + p * 50 + i;
                let ppid = if i == 0 { 1 } else { pid - 1 };
                event(
                    pid,
                    ppid,
                    1000 + u64::from(p),
                    exec(exes[i as usize % exes.len()]),
                )
            })
            .collect();
        let out = enricher.process(batch, t0);
        assert_eq!(out.len(), 50);
        assert!(out.iter().all(|e| e.pod.as_ref().unwrap().resolved));
    }
    assert_eq!(enricher.processes().len(), 250 * 50);
    let processes = enricher.processes().approx_bytes();
    let pods = index.read().unwrap().approx_bytes();
    let total = enricher.approx_bytes();
    eprintln!(
        "memory for 250 pods x 50 processes: process table {} KiB, pod index {} KiB, enricher total {} KiB",
        processes / 1024,
        pods / 1024,
        total / 1024
    );
    assert!(processes < 2 << 20, "{processes}");
    assert!(pods < 1 << 20, "{pods}");
    assert!(total < 4 << 20, "{total}");
}

/// A setuid call to root by `pid` as real uid `uid` after it, returning `result`.
fn setuid(pid: u32, uid: u32, result: i64) -> Event {
    let mut call = Syscall::new(SyscallOperation::Setuid, "setresuid", result);
    call.tags = vec!["to_root".into()];
    if result < 0 {
        call.tags.push("refused".into());
    }
    let mut e = event(pid, 1, 7, Body::Syscall(call));
    e.process.uid = Some(uid);
    e
}

fn tags(event: &Event) -> Vec<&str> {
    match &event.body {
        Body::Syscall(call) => call.tags.iter().map(String::as_str).collect(),
        other => panic!("not a syscall: {other:?}"),
    }
}

#[test]
fn setuid_to_root_says_whether_the_caller_was_root_before() {
    let (mut enricher, _) = setup(false);
    let t0 = Instant::now();
    let with_uid = |mut e: Event, uid| {
        e.process.uid = Some(uid);
        e
    };
    let out = enricher.process(
        vec![
            // A process of uid 1000 gets root: the exploit's shape.
            with_uid(event(20, 1, 7, exec("/tmp/exploit")), 1000),
            setuid(20, 0, 0),
            // Root already, asking for root again: nothing more.
            setuid(20, 0, 0),
            // A refused call changed nothing: its own header says who asked.
            setuid(30, 1000, -1),
            // A child forked without exec has its parent's uid.
            with_uid(event(40, 1, 7, exec("/usr/bin/python3")), 33),
            setuid(41, 0, 0),
            // First seen at the call, no parent known: nothing to say.
            setuid(50, 0, 0),
        ]
        .into_iter()
        .map(|mut e| {
            if e.process.pid == Some(41) {
                e.process.ppid = Some(40);
            }
            e
        })
        .collect(),
        t0,
    );
    let got: Vec<Vec<&str>> = out
        .iter()
        .filter(|e| matches!(e.body, Body::Syscall(_)))
        .map(tags)
        .collect();
    assert_eq!(
        got,
        [
            vec!["to_root", "from_non_root"],
            vec!["to_root"],
            vec!["to_root", "from_non_root", "refused"],
            vec!["to_root", "from_non_root"],
            vec!["to_root"],
        ]
    );
    // The tag is a fact of the event: enriching it again does not add it twice.
    let mut again = out[1].clone();
    if let Body::Syscall(call) = &mut again.body {
        tag_from_non_root(call, Some(1000), 0);
    }
    assert_eq!(tags(&again), ["to_root", "from_non_root"]);
}

#[test]
fn the_start_up_scan_gives_the_processes_uids() {
    let (mut enricher, _) = setup(false);
    let scanned = ScannedProcess {
        pid: 60,
        ppid: 1,
        exe: "/usr/bin/python3".into(),
        comm: "python3".into(),
        uid: Some(1000),
        ..ScannedProcess::default()
    };
    enricher.seed_processes([(scanned, None)], Instant::now());
    let out = enricher.process(vec![setuid(60, 0, 0)], Instant::now());
    assert_eq!(tags(&out[0]), ["to_root", "from_non_root"]);
}
