//! Privileged: the container harnesses with the realistic Debian image. On a private dockerd and
//! a private containerd, a Python web server runs in a kubepods-style cgroup with no network but
//! loopback, `curl` from an exec in the same container fetches its page, every process of the
//! container sits in the cgroup2 directory the daemon attributes to the pod and the container,
//! and removing the container removes that directory; a container left running is removed with
//! the daemon. Needs root; under `CI=true` a missing runtime or image fails the test instead of
//! skipping it.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use detector::{
    attribution::{
        CgroupLookup as _,
        cgroup_ids::CgroupPaths,
        cgroup_path::{Qos, Runtime, parse, path_from_proc_cgroup},
    },
    cgroup::{cgroup_id, cgroup2_mount, container_roots},
};
use tests::{
    containerd::{Containerd, KubePod, random_container_id},
    docker::Dockerd,
    image::{DebianImage, normalize_reference},
};

const TAG: &str = "detector-debian:runtimes";
const SERVER: &[&str] = &[
    "python3",
    "-m",
    "http.server",
    "8080",
    "--bind",
    "127.0.0.1",
];
const FETCH: &[&str] = &["curl", "-s", "127.0.0.1:8080/"];

/// Runs `fetch` until it returns the server's directory listing (the server needs a moment to
/// bind), or panics with the last answer and `logs`.
fn wait_for_page(mut fetch: impl FnMut() -> anyhow::Result<String>, logs: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = fetch();
        if page
            .as_ref()
            .is_ok_and(|p| p.contains("Directory listing for /"))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no page from the server: {page:?}\nlogs: {}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Checks that every pid is in `expected` (its cgroup2 line, the one the daemon reads), that
/// the directory exists under the cgroup2 mount and lies below a root `watch: containers`
/// watches, and that the daemon's own lookup (cgroup id to path, path to identity) gives the
/// pod and the container. Returns the cgroup2 directory.
fn assert_attributed(
    pids: &[u32],
    expected: &str,
    pod: &KubePod,
    container_id: &str,
    runtime: Runtime,
) -> PathBuf {
    assert!(!pids.is_empty(), "no processes in the container");
    for pid in pids {
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        eprintln!("/proc/{pid}/cgroup:\n{text}");
        assert_eq!(
            path_from_proc_cgroup(&text),
            Some(expected),
            "pid {pid}:\n{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("0::") && l.ends_with(expected)),
            "{text}"
        );
    }
    let cgroup2 = cgroup2_mount().expect("a cgroup2 mount");
    let dir = cgroup2.join(expected.trim_start_matches('/'));
    let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap();
    assert!(
        procs.lines().any(|l| l.trim() == pids[0].to_string()),
        "{procs}"
    );
    let id = cgroup_id(&dir).unwrap();
    let path = CgroupPaths::new(&cgroup2)
        .path(id, Instant::now())
        .expect("the daemon finds the cgroup by id");
    assert_eq!(&*path, expected);
    let identity = parse(&path).unwrap();
    let found_pod = identity.pod.expect("a pod");
    assert_eq!(found_pod.uid, pod.uid());
    assert_eq!(found_pod.qos, Qos::BestEffort);
    let container = identity.container.expect("a container");
    assert_eq!(container.id, container_id);
    assert_eq!(container.runtime, runtime);
    let top = Path::new(expected.trim_start_matches('/'))
        .components()
        .next()
        .unwrap();
    let root_id = cgroup_id(&cgroup2.join(top)).unwrap();
    assert!(
        container_roots(&cgroup2).contains(&root_id),
        "{} is not a watched container root",
        top.as_os_str().to_string_lossy()
    );
    dir
}

#[test]
fn docker_runs_the_debian_image_in_a_kubepods_cgroup() {
    let test = "runtimes_docker";
    let Some(image) = DebianImage::for_test(test) else {
        return;
    };
    let Some(mut dockerd) = Dockerd::start(test) else {
        return;
    };
    let started = Instant::now();
    image.import_docker(&dockerd, TAG).unwrap();
    eprintln!("docker import: {:.1} s", started.elapsed().as_secs_f64());

    let pod = KubePod::new();
    let parent = dockerd.cgroup_parent(&pod.cgroupfs_parent());
    let mut run = vec![
        "run",
        "-d",
        "--network",
        "none",
        "--cgroup-parent",
        &parent,
        TAG,
    ];
    run.extend(SERVER);
    let id = dockerd.cli(&run).unwrap();
    let mut exec = vec!["exec", id.as_str()];
    exec.extend(FETCH);
    wait_for_page(
        || dockerd.cli(&exec),
        || dockerd.cli(&["logs", &id]).unwrap_or_default(),
    );

    // `docker top` lists the container's processes (PID is the second column).
    let top = dockerd.cli(&["top", &id]).unwrap();
    let pids: Vec<u32> = top
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    let main: u32 = dockerd
        .cli(&["inspect", "-f", "{{.State.Pid}}", &id])
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(pids.first(), Some(&main), "{top}");
    let expected = format!("{parent}/{id}");
    let dir = assert_attributed(&pids, &expected, &pod, &id, Runtime::Unknown);

    dockerd.cli(&["rm", "-f", &id]).unwrap();
    assert_eq!(dockerd.cli(&["ps", "-aq"]).unwrap(), "");
    assert!(!dir.exists(), "{} is left after docker rm", dir.display());
}

#[test]
fn containerd_runs_the_debian_image_in_a_kubepods_cgroup() {
    let test = "runtimes_containerd";
    let Some(image) = DebianImage::for_test(test) else {
        return;
    };
    let Some(mut containerd) = Containerd::start(test) else {
        return;
    };
    let started = Instant::now();
    let archive = image.oci_archive(TAG).unwrap();
    eprintln!("OCI archive: {:.1} s", started.elapsed().as_secs_f64());
    let started = Instant::now();
    let name = normalize_reference(TAG);
    containerd.import(&archive, &name).unwrap();
    eprintln!(
        "ctr images import: {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let pod = KubePod::new();
    let id = random_container_id();
    let cgroup = pod.containerd_scope(&id);
    containerd.run(&id, &name, &cgroup, SERVER).unwrap();
    assert_eq!(containerd.cgroup_path(&id), Some(cgroup.as_str()));
    let mut attempt = 0;
    wait_for_page(
        || {
            attempt += 1;
            let out = containerd.exec(&id, &format!("fetch-{attempt}"), FETCH)?;
            anyhow::ensure!(out.status.success(), "curl: {}", out.status);
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        },
        || containerd.logs(&id),
    );

    let pids = containerd.pids(&id).unwrap();
    let main = containerd.pid(&id).unwrap();
    assert!(pids.contains(&main), "{pids:?} lacks {main}");
    let mut ordered = vec![main];
    ordered.extend(pids.iter().filter(|&&p| p != main));
    let dir = assert_attributed(&ordered, &cgroup, &pod, &id, Runtime::Containerd);

    containerd.stop(&id, Duration::from_secs(5)).unwrap();
    assert_ne!(containerd.status(&id).unwrap().as_deref(), Some("RUNNING"));
    containerd.rm(&id).unwrap();
    assert_eq!(containerd.ctr(&["containers", "ls", "-q"]).unwrap(), "");
    assert!(!dir.exists(), "{} is left after ctr rm", dir.display());
    let pod_dir = dir.parent().unwrap();
    assert!(!pod_dir.exists(), "{} is left", pod_dir.display());

    // What a failing test leaves behind goes on drop: a running container, its snapshot and
    // its cgroups, the daemon's directory and mounts.
    let left = random_container_id();
    let left_cgroup = pod.containerd_scope(&left);
    containerd
        .run(&left, &name, &left_cgroup, &["sleep", "600"])
        .unwrap();
    let left_pid = containerd.pid(&left).unwrap();
    let state = containerd.socket().parent().unwrap().to_owned();
    drop(containerd);
    assert!(
        !Path::new(&format!("/proc/{left_pid}")).exists(),
        "the container's process outlived the daemon"
    );
    let cgroup2 = cgroup2_mount().unwrap();
    let left_dir = cgroup2.join(left_cgroup.trim_start_matches('/'));
    assert!(!left_dir.exists(), "{} is left", left_dir.display());
    assert!(!pod_dir.exists(), "{} is left", pod_dir.display());
    assert!(!state.exists(), "{} is left", state.display());
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(&*state.to_string_lossy()),
        "mounts left under {}",
        state.display()
    );
}
