//! Pods run through the Kubernetes CRI API of a real, private containerd (its CRI plugin on),
//! as a kubelet runs them, and an evidence capture of one of their containers that asks the
//! runtime about it. Root; under `CI=true` nothing here may skip.

use std::{fs, path::Path};

use detector::{
    cgroup::cgroup2_mount,
    evidence::{CaptureRequest, EvidenceConfig, Target, bundle, capture},
};
use k8s_cri::v1::ContainerState;
use serde_json::Value;
use tests::{
    containerd::{Containerd, KubePod, random_container_id},
    cri::{ContainerSpec, Cri},
    host::mounts,
};

/// The busybox image the pods' containers run.
const IMAGE: &str = "localhost/detector-test-busybox:cri";

/// A marker of this run, for the container's log and labels.
fn marker() -> String {
    random_container_id()[..16].to_owned()
}

#[test]
fn cri_pod_runs_in_kubepods_cgroup() {
    let Some(containerd) = Containerd::start_with_cri("cri_pod_kubepods") else {
        return;
    };
    containerd.import_busybox(IMAGE, &[]).unwrap();
    let cri = Cri::connect(&containerd).unwrap();
    let pod = KubePod::new();
    let mut sandbox = cri.run_pod(&pod, "infra", "default").unwrap();
    let marker = marker();
    let script = format!("echo hello-{marker}; exec sleep 1000");
    let container = sandbox
        .start_container(&ContainerSpec {
            name: "app",
            image: IMAGE,
            command: &["sh", "-c", &script],
            ..ContainerSpec::default()
        })
        .unwrap();

    // runc's cgroupfs manager takes the kubelet's parent literally, in the unified hierarchy
    // and in each v1 one alike.
    let path = format!("/kubepods/besteffort/pod{}/{}", pod.uid(), container.id);
    assert_eq!(
        container.cgroup,
        cgroup2_mount().unwrap().join(&path[1..]),
        "{container:?}"
    );
    let cgroups = fs::read_to_string(format!("/proc/{}/cgroup", container.pid)).unwrap();
    for line in cgroups.lines() {
        assert!(line.ends_with(&format!(":{path}")), "{cgroups}");
    }

    // The runtime lists it running, with the kubelet's labels; its log is in the CRI format.
    let listed = cri.containers().unwrap();
    let listed = listed.iter().find(|c| c.id == container.id).unwrap();
    assert_eq!(listed.state(), ContainerState::ContainerRunning);
    assert_eq!(listed.pod_sandbox_id, sandbox.id());
    assert_eq!(listed.labels["io.kubernetes.pod.uid"], pod.uid());
    assert_eq!(listed.labels["io.kubernetes.container.name"], "app");
    assert!(
        container
            .log
            .ends_with(format!("default_infra_{}/app/0.log", pod.uid()))
    );
    let log = container.wait_for_log(&format!("hello-{marker}")).unwrap();
    let line = log.lines().next().unwrap();
    let fields: Vec<&str> = line.splitn(4, ' ').collect();
    assert_eq!(
        fields[1..],
        ["stdout", "F", &format!("hello-{marker}")],
        "{log}"
    );
    time::OffsetDateTime::parse(fields[0], &time::format_description::well_known::Rfc3339).unwrap();

    // Dropping the sandbox removes the container, the sandbox and the pod's cgroups.
    drop(sandbox);
    assert_eq!(cri.containers().unwrap(), []);
    assert_eq!(cri.sandboxes().unwrap(), []);
    assert!(!Path::new(&format!("/proc/{}", container.pid)).exists());
    let pod_dir = format!("kubepods/besteffort/pod{}", pod.uid());
    for root in mounts(|_, fstype| fstype == "cgroup" || fstype == "cgroup2") {
        assert!(!root.join(&pod_dir).exists(), "{} left", root.display());
    }
    drop(cri);
    let dir = containerd.dir().to_owned();
    drop(containerd);
    assert!(!dir.exists(), "{} left", dir.display());
}

#[test]
fn cri_containerd_capture_has_runtime_metadata_and_logs() {
    let test = "evidence_cri";
    let Some(containerd) = Containerd::start_with_cri(test) else {
        return;
    };
    containerd.import_busybox(IMAGE, &[]).unwrap();
    let cri = Cri::connect(&containerd).unwrap();
    let pod = KubePod::new();
    let mut sandbox = cri.run_pod(&pod, "suspect", "default").unwrap();
    let marker = marker();
    let script = format!(
        "echo started-{marker}; echo implant > /tmp/implant; touch /tmp/ready; exec sleep 1000"
    );
    let container = sandbox
        .start_container(&ContainerSpec {
            name: "suspect",
            image: IMAGE,
            command: &["sh", "-c", &script],
            labels: &[("detector.test/marker", &marker)],
            ..ContainerSpec::default()
        })
        .unwrap();
    container.wait_for_file("/tmp/ready").unwrap();
    let (id, pid) = (container.id.as_str(), container.pid);

    let out = tempfile::tempdir().unwrap();
    let config = EvidenceConfig {
        docker_socket: out.path().join("no-docker.sock"),
        containerd_socket: containerd.socket(),
        crio_socket: out.path().join("no-crio.sock"),
        node_name: Some("test-node".into()),
        ..EvidenceConfig::default()
    };
    let outcome = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(capture(
            &config,
            out.path(),
            CaptureRequest {
                target: Target::Cgroup(container.cgroup.clone()),
                incident: Some(format!("cri-{}", std::process::id())),
                recent_events: Some(Vec::new()),
            },
        ))
        .unwrap();
    let (dir, manifest) = (&outcome.dir, &outcome.manifest);

    // The container runs on after the capture, and the bundle verifies.
    assert_eq!(cri.state(id).unwrap(), ContainerState::ContainerRunning);
    let report = bundle::verify(dir, None).unwrap();
    assert!(report.ok(), "{report:?}");

    // The runtime was found and asked: nothing is missing.
    assert_eq!(manifest.target.runtime, "containerd", "{manifest:#?}");
    assert!(manifest.target.runtime_used, "{manifest:#?}");
    assert_eq!(manifest.target.container_id.as_deref(), Some(id));
    assert!(manifest.not_captured.is_empty(), "{manifest:#?}");

    // containerd's record of the container and its task, and the CRI status.
    let inspect: Value =
        serde_json::from_slice(&fs::read(dir.join("runtime/inspect.json")).unwrap()).unwrap();
    let ctrd = &inspect["containerd"];
    assert_eq!(ctrd["namespace"], "k8s.io", "{inspect:#}");
    let record = &ctrd["container"];
    assert_eq!(record["id"], id, "{inspect:#}");
    assert_eq!(record["image"], IMAGE, "{inspect:#}");
    assert_eq!(record["snapshotter"], "overlayfs", "{inspect:#}");
    assert_eq!(
        record["labels"]["detector.test/marker"], *marker,
        "{inspect:#}"
    );
    assert_eq!(
        record["labels"]["io.kubernetes.pod.uid"],
        pod.uid(),
        "{inspect:#}"
    );
    assert_eq!(ctrd["task"]["pid"], pid, "{inspect:#}");
    // The capture asks while the cgroup is frozen.
    assert!(
        ["running", "paused"].contains(&ctrd["task"]["status"].as_str().unwrap_or_default()),
        "{inspect:#}"
    );
    assert_eq!(ctrd["image"]["name"], IMAGE, "{inspect:#}");
    let status = &inspect["cri"]["status"];
    assert_eq!(status["id"], id, "{inspect:#}");
    assert_eq!(status["metadata"]["name"], "suspect", "{inspect:#}");
    let log_path = status["logPath"]
        .as_str()
        .or_else(|| status["log_path"].as_str())
        .unwrap_or_default();
    assert!(log_path.ends_with("0.log"), "{inspect:#}");

    // The processes as the runtime lists them, and the container's log.
    let top: Value =
        serde_json::from_slice(&fs::read(dir.join("runtime/top.json")).unwrap()).unwrap();
    assert!(
        top["pids"]
            .as_array()
            .is_some_and(|pids| pids.iter().any(|p| p["pid"] == pid)),
        "{top:#}"
    );
    let log = fs::read_to_string(dir.join("runtime/container.log")).unwrap();
    assert!(log.contains(&format!("started-{marker}")), "{log}");
    // The CRI's view adds the pod sandbox: the pod as the kubelet named it.
    assert_eq!(inspect["cri"]["state"], "CONTAINER_RUNNING", "{inspect:#}");
    let sandbox_meta = &inspect["cri"]["sandbox"]["status"]["metadata"];
    assert_eq!(sandbox_meta["uid"], pod.uid(), "{inspect:#}");
    assert_eq!(sandbox_meta["namespace"], "default", "{inspect:#}");

    // Named by its id alone (`detector evidence capture --container`): containerd says which
    // process is the container's, whose cgroup is captured.
    let by_id = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(capture(
            &config,
            out.path(),
            CaptureRequest {
                target: Target::Container(id.to_owned()),
                incident: Some(format!("cri-by-id-{}", std::process::id())),
                recent_events: Some(Vec::new()),
            },
        ))
        .unwrap();
    assert_eq!(by_id.manifest.target.runtime, "containerd");
    let cgroup = by_id.manifest.target.cgroup.clone().unwrap_or_default();
    assert!(
        container.cgroup.ends_with(cgroup.trim_start_matches('/')),
        "{cgroup} is not {}",
        container.cgroup.display()
    );
    assert!(
        by_id.manifest.not_captured.is_empty(),
        "{:#?}",
        by_id.manifest
    );

    // The CRI API alone, as on a CRI-O node: containerd's CRI plugin stands in for CRI-O (the
    // same `runtime.v1` service), reached as the CRI-O socket while containerd's own API is
    // not there. The status and the log file come from the CRI; the CRI lists no processes,
    // and the manifest says so.
    let config = EvidenceConfig {
        containerd_socket: out.path().join("no-containerd.sock"),
        crio_socket: containerd.socket(),
        ..config
    };
    let outcome = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(capture(
            &config,
            out.path(),
            CaptureRequest {
                target: Target::Cgroup(container.cgroup.clone()),
                incident: Some(format!("cri-only-{}", std::process::id())),
                recent_events: Some(Vec::new()),
            },
        ))
        .unwrap();
    let (dir, manifest) = (&outcome.dir, &outcome.manifest);
    assert_eq!(manifest.target.runtime, "cri-o", "{manifest:#?}");
    assert!(manifest.target.runtime_used, "{manifest:#?}");
    let missing: Vec<(&str, &str)> = manifest
        .not_captured
        .iter()
        .map(|n| (n.artifact.as_str(), n.reason.as_str()))
        .collect();
    assert_eq!(missing.len(), 1, "{manifest:#?}");
    assert_eq!(missing[0].0, "runtime/top.json");
    assert!(missing[0].1.contains("lists no processes"), "{manifest:#?}");
    let inspect: Value =
        serde_json::from_slice(&fs::read(dir.join("runtime/inspect.json")).unwrap()).unwrap();
    assert!(inspect.get("containerd").is_none(), "{inspect:#}");
    assert_eq!(inspect["cri"]["status"]["id"], id, "{inspect:#}");
    // The verbose record, under its "info" key as containerd and CRI-O both name it.
    assert_eq!(inspect["cri"]["info"]["info"]["pid"], pid, "{inspect:#}");
    assert_eq!(
        inspect["cri"]["sandbox"]["status"]["metadata"]["uid"],
        pod.uid(),
        "{inspect:#}"
    );
    let log = fs::read_to_string(dir.join("runtime/container.log")).unwrap();
    assert!(log.contains(&format!("started-{marker}")), "{log}");
    assert!(bundle::verify(dir, None).unwrap().ok());
    assert_eq!(cri.state(id).unwrap(), ContainerState::ContainerRunning);
}
