//! Privileged: real sensors, real processes in kubepods-style cgroups, attribution checked end to
//! end with the pod served by the test API server. Needs root; under `CI=true` a missing
//! privilege fails the test instead of skipping it.

use std::{
    ffi::CString,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use detector::{
    attribution::{AttributionConfig, Enricher, pod_watch::watch_pods, pods::PodIndex},
    cgroup,
    config::Config,
    event::{Body, Event},
    pipeline::Pipeline,
    sensors::{ProgramSet, Sensors},
};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use tests::apiserver::ApiServer;

const NODE: &str = "node-priv";
const UID: &str = "5e5e5e5e-1111-4222-8333-444455556666";

fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "privileged test needs root and CI=true forbids skipping it"
    );
    eprintln!("skipped: needs root (load eBPF programs, create cgroups)");
    false
}

/// A cgroup tree created for the test, removed deepest first on drop.
struct CgroupTree {
    dirs: Vec<PathBuf>,
}

impl CgroupTree {
    fn create(root: &Path, relative: &str) -> Self {
        let mut dirs = Vec::new();
        let mut at = root.to_path_buf();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            at.push(part);
            match std::fs::create_dir(&at) {
                Ok(()) => dirs.push(at.clone()),
                // A shared parent made by an earlier tree; that tree removes it.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => panic!("mkdir {}: {e}", at.display()),
            }
        }
        Self { dirs }
    }

    fn leaf(&self) -> &Path {
        self.dirs.last().unwrap()
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        for dir in self.dirs.iter().rev() {
            // Exited processes leave the cgroup a moment after they are reaped.
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Runs `sh -c script` inside the cgroup, moved there between fork and exec.
fn run_in(cgroup: &Path, script: &str) {
    let procs = CString::new(
        cgroup
            .join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    let mut command = Command::new("/bin/sh");
    command.args(["-c", script]);
    // SAFETY: the closure only calls async-signal-safe functions (open, write, close) on
    // memory allocated before the fork.
    unsafe {
        command.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // "0" moves the writing process itself.
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if written != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = command.status().expect("run the workload");
    assert!(status.success(), "{status}");
}

fn pod_object(container: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-7c9d8b6f5-q2x4z", "namespace": "shop", "uid": UID,
            "labels": {"app": "web"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "web", "uid": "d", "controller": true}]},
        "spec": {"nodeName": NODE, "containers": [{"name": "nginx", "image": "nginx:1.27"}]},
        "status": {"containerStatuses": [{"name": "nginx", "image": "nginx:1.27", "imageID": "",
            "ready": true, "restartCount": 0, "containerID": format!("containerd://{container}")}]}
    }))
    .unwrap()
}

/// Enriched events of one cgroup until `until` returns true on them or time runs out.
async fn collect(
    batches: &mut tokio::sync::mpsc::Receiver<detector::pipeline::Batch>,
    enricher: &mut Enricher,
    cgroup_id: u64,
    mut until: impl FnMut(&[Event]) -> bool,
) -> Vec<Event> {
    let mut mine = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !until(&mine) {
        let batch = tokio::time::timeout(Duration::from_millis(100), batches.recv())
            .await
            .ok()
            .flatten()
            .map(detector::pipeline::Batch::into_events)
            .unwrap_or_default();
        let out = enricher.process(batch, Instant::now());
        mine.extend(out.into_iter().filter(|e| e.cgroup_id == Some(cgroup_id)));
    }
    mine
}

fn has_exec(events: &[Event], filename: &str) -> bool {
    events
        .iter()
        .any(|e| matches!(&e.body, Body::Exec(x) if x.filename == filename))
}

/// Every process that exec'd has exited (the whole workload is over).
fn all_exited(events: &[Event]) -> bool {
    let exits: Vec<_> = events
        .iter()
        .filter(|e| matches!(e.body, Body::Exit(_)))
        .map(|e| e.process.pid)
        .collect();
    events
        .iter()
        .filter(|e| matches!(e.body, Body::Exec(_)))
        .all(|e| exits.contains(&e.process.pid))
}

fn has_exit_of_exec(events: &[Event], filename: &str) -> bool {
    let Some(pid) = events.iter().find_map(|e| match &e.body {
        Body::Exec(x) if x.filename == filename => e.process.pid,
        _ => None,
    }) else {
        return false;
    };
    events
        .iter()
        .any(|e| matches!(e.body, Body::Exit(_)) && e.process.pid == Some(pid))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_processes_in_a_pod_cgroup_are_attributed() {
    if !privileged() {
        return;
    }
    let mount = cgroup::cgroup2_mount().expect("a cgroup2 mount");
    let container = format!("{:064x}", u128::from(std::process::id()) << 64 | 0xc0ffee);
    // Below a parent of the test's own, so parallel runs and real kubepods never collide.
    let relative = format!(
        "detector-test-{}/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{container}.scope",
        std::process::id(),
        UID.replace('-', "_")
    );
    let tree = CgroupTree::create(&mount, &relative);
    let cgroup_id = cgroup::cgroup_id(tree.leaf()).unwrap();

    let server = ApiServer::start().await.unwrap();
    server.put_pod(&pod_object(&container));
    let config = Config::default();
    let attribution = AttributionConfig::default();
    let index = PodIndex::shared(attribution.pod_limits());
    let client = detector::attribution::pod_watch::client_from(kube::Config::new(
        server.url().parse().unwrap(),
    ))
    .unwrap();
    let watcher = tokio::spawn(watch_pods(client, NODE, index.clone()));
    // The enricher is made after the cgroup exists only by chance of ordering: the cgroup2
    // walk runs again on the first unknown id anyway.
    let mut enricher = Enricher::for_node(&attribution, &mount, index.clone());
    let sensors = Sensors::load(&config.sensors, ProgramSet::Sensors).expect("load the sensors");
    let (pipeline, mut batches) = Pipeline::spawn(sensors, Duration::from_millis(200)).unwrap();

    run_in(
        tree.leaf(),
        "/bin/cat /etc/hostname >/dev/null; /bin/sh -c '/bin/true; cat /etc/shadow >/dev/null'",
    );
    let events = collect(&mut batches, &mut enricher, cgroup_id, |e| {
        has_exec(e, "/bin/true")
            && all_exited(e)
            && e.iter()
                .any(|e| matches!(&e.body, Body::File(f) if f.path == "/etc/shadow"))
    })
    .await;
    assert!(has_exec(&events, "/bin/true"), "{events:#?}");
    for event in &events {
        let pod = event
            .pod
            .as_ref()
            .unwrap_or_else(|| panic!("no pod: {event:?}"));
        let c = event
            .container
            .as_ref()
            .unwrap_or_else(|| panic!("no container: {event:?}"));
        assert_eq!((pod.uid.as_str(), c.id.as_str()), (UID, container.as_str()));
        assert!(pod.resolved, "{event:?}");
        assert_eq!(pod.namespace.as_deref(), Some("shop"));
        assert_eq!(pod.name.as_deref(), Some("web-7c9d8b6f5-q2x4z"));
        assert_eq!(pod.labels["app"], "web");
        assert_eq!(
            pod.owner.as_ref().map(|o| o.kind.as_str()),
            Some("DaemonSet")
        );
        assert_eq!(c.name.as_deref(), Some("nginx"));
    }
    // The inner /bin/true runs under the inner sh, itself under the outer sh, under this test.
    let t = events
        .iter()
        .find(|e| matches!(&e.body, Body::Exec(x) if x.filename == "/bin/true"))
        .unwrap();
    let chain: Vec<&str> = t.ancestry.iter().map(|a| a.exe.as_str()).collect();
    assert_eq!(&chain[..2], ["/bin/sh", "/bin/sh"], "{chain:?}");
    let me = std::fs::read_link("/proc/self/exe").unwrap();
    assert_eq!(chain[2], me.to_str().unwrap(), "{chain:?}");
    eprintln!(
        "{} events from the pod cgroup, all attributed; ancestry of /bin/true: {chain:?}",
        events.len()
    );

    // The pod is deleted; a second later its processes still run and are still attributed.
    assert!(server.delete_pod("shop", "web-7c9d8b6f5-q2x4z"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while index.read().unwrap().deleted_len() == 0 {
        assert!(Instant::now() < deadline, "the delete never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    run_in(tree.leaf(), "/bin/true");
    let late = collect(&mut batches, &mut enricher, cgroup_id, |e| {
        has_exit_of_exec(e, "/bin/true")
    })
    .await;
    assert!(has_exec(&late, "/bin/true"), "{late:#?}");
    for event in &late {
        let pod = event.pod.as_ref().unwrap();
        assert!(
            pod.resolved && pod.name.as_deref() == Some("web-7c9d8b6f5-q2x4z"),
            "{event:?}"
        );
    }
    // cgroupfs driver layout, for a pod the API never shows: held for the bound, then out
    // with the cgroup-derived pod UID and container id, marked unresolved.
    let other_uid = "7a7a7a7a-1111-4222-8333-444455556666";
    let other = CgroupTree::create(
        &mount,
        &format!(
            "detector-test-{}/kubepods/besteffort/pod{other_uid}/{container}",
            std::process::id()
        ),
    );
    let other_id = cgroup::cgroup_id(other.leaf()).unwrap();
    let started = Instant::now();
    run_in(other.leaf(), "/bin/true");
    let unknown = collect(&mut batches, &mut enricher, other_id, |e| {
        has_exit_of_exec(e, "/bin/true")
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(attribution.hold_ms),
        "released before the bound"
    );
    assert!(has_exec(&unknown, "/bin/true"), "{unknown:#?}");
    for event in &unknown {
        let pod = event.pod.as_ref().unwrap();
        assert_eq!(
            (pod.uid.as_str(), pod.qos.as_deref(), pod.resolved),
            (other_uid, Some("besteffort"), false)
        );
        assert_eq!(event.container.as_ref().unwrap().id, container);
    }
    drop(other);

    let stats = enricher.stats();
    eprintln!(
        "enricher: {stats:?}; approx bytes {}",
        enricher.approx_bytes()
    );

    pipeline.stop().await;
    watcher.abort();
    drop(tree);
}
