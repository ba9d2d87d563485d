//! Evidence capture against a real dockerd and a real S3-compatible server, both started by
//! the test. Root; under `CI=true` nothing here may skip.

use std::{
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use detector::{
    cgroup::cgroup2_mount,
    evidence::{
        CaptureRequest, EvidenceConfig, Target,
        bundle::{self, Manifest},
        capture,
        config::S3Config,
        oci,
        procfs::ProcessInfo,
        runtime::FsChange,
        store::{S3Store, StoreError},
    },
};
use sha2::{Digest as _, Sha256};
use tests::{
    TestCgroup,
    containerd::{Containerd, KubePod, NAMESPACE, random_container_id},
    docker::{Dockerd, busybox_rootfs},
    image::{DebianImage, normalize_reference},
    privileged,
    s3::MotoServer,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The `detector` binary cargo built beside this test, when it did.
fn detector_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("detector");
    bin.exists().then_some(bin)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// What the capture did to the container, and whether it worked, in order.
fn actions(manifest: &Manifest) -> Vec<(&str, bool)> {
    manifest
        .actions
        .iter()
        .map(|a| (a.action.as_str(), a.ok))
        .collect()
}

/// The names in a tar archive, one a line, as `tar -t` lists them.
fn tar_listing(tar: &Path) -> String {
    let out = Command::new("tar").arg("-tf").arg(tar).output().unwrap();
    assert!(out.status.success(), "tar -tf {}", tar.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The content of `member` of a tar archive.
fn tar_member(tar: &Path, member: &str) -> String {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(tar)
        .arg(member)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn docker_capture_changes_export_image_proc_and_verify() {
    let Some(mut dockerd) = Dockerd::start("docker_capture") else {
        return;
    };
    let image = "detector-test-busybox:1";
    dockerd
        .import_busybox(image, &[("/etc/victim", b"delete me\n")])
        .unwrap();
    let me = std::process::id();
    let parent = dockerd.cgroup_parent(&format!("/detector-test-kubepods-{me}/besteffort/pod{me}"));
    let id = dockerd
        .cli(&[
            "run",
            "-d",
            "--network",
            "none",
            "--cgroup-parent",
            &parent,
            "-e",
            "API_TOKEN=hunter2",
            image,
            "sh",
            "-c",
            "echo implant > /tmp/implant; rm /etc/victim; touch /tmp/ready; exec sleep 600",
        ])
        .unwrap();
    wait_for("the container to drop its implant", || {
        dockerd
            .cli(&["diff", &id])
            .is_ok_and(|d| d.contains("/tmp/ready"))
    });
    let pid: u32 = dockerd
        .cli(&["inspect", "-f", "{{.State.Pid}}", &id])
        .unwrap()
        .parse()
        .unwrap();

    let out = tempfile::tempdir().unwrap();
    let config = EvidenceConfig {
        docker_socket: dockerd.socket(),
        node_name: Some("test-node".into()),
        ..EvidenceConfig::default()
    };
    let incident = format!("it-{me}");
    let outcome = runtime()
        .block_on(capture(
            &config,
            out.path(),
            CaptureRequest {
                target: Target::Container(id.clone()),
                incident: Some(incident.clone()),
                recent_events: Some(Vec::new()),
            },
        ))
        .unwrap();
    let dir = &outcome.dir;
    let manifest = &outcome.manifest;
    assert!(manifest.complete, "{manifest:#?}");
    assert_eq!(manifest.node, "test-node");
    assert_eq!(manifest.target.container_id.as_deref(), Some(id.as_str()));
    assert!(manifest.target.cgroup.as_deref().unwrap().contains(&id));
    assert_eq!(
        actions(manifest),
        [("freeze", true), ("image", true), ("thaw", true)]
    );
    assert_eq!(
        dockerd
            .cli(&["inspect", "-f", "{{.State.Status}}", &id])
            .unwrap(),
        "running"
    );

    // The change list, read from the container's overlay layers, has the implant and the
    // deleted file, as `docker diff` has them.
    let changes: Vec<FsChange> = read_json(&dir.join("node/changes.json"));
    let docker_diff = dockerd.cli(&["diff", &id]).unwrap();
    for line in docker_diff.lines() {
        let (kind, path) = line.split_once(' ').unwrap();
        assert!(
            changes
                .iter()
                .any(|c| c.kind.to_string() == kind && c.path == path),
            "docker diff has {line:?}, the bundle's list does not: {changes:?}"
        );
    }
    assert!(
        changes.contains(&FsChange {
            kind: 'A',
            path: "/tmp/implant".into()
        }),
        "{changes:?}"
    );
    assert!(
        changes.contains(&FsChange {
            kind: 'D',
            path: "/etc/victim".into()
        }),
        "{changes:?}"
    );

    // The export holds the implant, with its content, and not the deleted file.
    let tar = dir.join("node/filesystem.tar");
    let listing = tar_listing(&tar);
    assert!(
        listing
            .lines()
            .any(|l| l.trim_start_matches("./") == "tmp/implant"),
        "{listing}"
    );
    assert!(
        !listing.lines().any(|l| l.ends_with("etc/victim")),
        "{listing}"
    );
    assert_eq!(tar_member(&tar, "tmp/implant"), "implant\n");

    // The preserved image loads into Docker, named after the incident, and runs with the
    // implant in it and without the deleted file.
    let image_tar = dir.join("node/image.oci.tar");
    dockerd
        .cli(&["load", "-i", &image_tar.display().to_string()])
        .unwrap();
    let image_name = format!("localhost/evidence-it-{me}:{}", &id[..12]);
    let inside = dockerd
        .cli(&[
            "run",
            "--rm",
            "--network",
            "none",
            &image_name,
            "sh",
            "-c",
            "cat /tmp/implant; test -e /etc/victim && echo victim-present || echo victim-gone",
        ])
        .unwrap();
    assert_eq!(inside, "implant\nvictim-gone", "{inside}");

    // The /proc artifacts list the container's process, with its secret redacted.
    let processes: Vec<ProcessInfo> = read_json(&dir.join("proc/processes.json"));
    let sleeper = processes
        .iter()
        .find(|p| p.pid == pid)
        .unwrap_or_else(|| panic!("{processes:#?}"));
    assert_eq!(sleeper.name.as_deref(), Some("sleep"));
    assert!(
        sleeper.environ.contains(&"API_TOKEN=<redacted>".to_owned()),
        "{:?}",
        sleeper.environ
    );
    assert!(sleeper.exe_sha256.as_deref().is_some_and(|h| h.len() == 64));
    assert!(dir.join(format!("proc/{pid}/maps")).exists());
    assert!(!sleeper.ancestry.is_empty());
    let top = fs::read_to_string(dir.join("runtime/top.json")).unwrap();
    assert!(top.contains("sleep 600"), "{top}");

    // The bundle verifies, and no longer does after one byte of the export changed.
    let report = bundle::verify(dir, None).unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.checked, manifest.artifacts.len());
    let bin = detector_bin();
    if let Some(bin) = &bin {
        let status = Command::new(bin)
            .args(["evidence", "verify"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success());
    }
    let mut bytes = fs::read(&tar).unwrap();
    bytes[100] ^= 1;
    fs::write(&tar, bytes).unwrap();
    let report = bundle::verify(dir, None).unwrap();
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert!(
        report.problems[0].starts_with("node/filesystem.tar: sha256"),
        "{report:?}"
    );
    if let Some(bin) = &bin {
        let out = Command::new(bin)
            .args(["evidence", "verify"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("MISMATCH node/filesystem.tar"));
    }

    // Capture time of a container whose filesystem is about 10 MB.
    let big = dockerd
        .cli(&[
            "run", "-d", "--network", "none", image, "sh", "-c",
            "dd if=/dev/urandom of=/payload bs=1M count=8 2>/dev/null; touch /tmp/ready; exec sleep 600",
        ])
        .unwrap();
    wait_for("the payload", || {
        dockerd
            .cli(&["diff", &big])
            .is_ok_and(|d| d.contains("/tmp/ready"))
    });
    let outcome = runtime()
        .block_on(capture(
            &config,
            out.path(),
            CaptureRequest {
                target: Target::Container(big),
                incident: Some(format!("it-{me}-10mb")),
                recent_events: Some(Vec::new()),
            },
        ))
        .unwrap();
    assert!(outcome.manifest.complete, "{:#?}", outcome.manifest);
    let export = outcome
        .manifest
        .artifacts
        .iter()
        .find(|a| a.path == "node/filesystem.tar")
        .unwrap();
    assert!(export.size > 9 << 20, "{export:?}");
    println!(
        "evidence capture of a {:.1} MB container filesystem on Docker (freeze, /proc, inspect, top, changes, logs, export, OCI image, thaw, manifest): {} ms",
        export.size as f64 / (1 << 20) as f64,
        outcome.elapsed.as_millis()
    );
}

#[test]
fn cgroup_capture_without_runtime_degrades_and_uploads_to_s3() {
    if !privileged("cgroup_capture_without_runtime") {
        return;
    }
    let Some(moto) = MotoServer::start("cgroup_capture_without_runtime") else {
        return;
    };
    // A cgroup named as containerd names a container's: no Docker socket can answer for it.
    let container_id = format!("{:064x}", u128::from(std::process::id()));
    let cgroup = TestCgroup::create(&format!(
        "detector-test/cri-containerd-{container_id}.scope"
    ))
    .unwrap();
    let mut child = cgroup
        .command("sleep")
        .unwrap()
        .arg("60")
        .env("DB_PASSWORD", "hunter2")
        .spawn()
        .unwrap();
    let sleeper = child.id();

    moto.create_bucket("evidence").unwrap();
    let out = tempfile::tempdir().unwrap();
    let config = EvidenceConfig {
        docker_socket: out.path().join("no-docker.sock"),
        containerd_socket: out.path().join("no-containerd.sock"),
        crio_socket: out.path().join("no-crio.sock"),
        s3: Some(S3Config {
            bucket: "evidence".into(),
            endpoint: Some(moto.endpoint()),
            allow_http: true,
            access_key_id: Some("test".into()),
            secret_access_key: Some("test".into()),
            ..S3Config::default()
        }),
        ..EvidenceConfig::default()
    };
    let rt = runtime();
    let outcome = rt.block_on(capture(
        &config,
        out.path(),
        CaptureRequest {
            target: Target::Cgroup(cgroup.path().to_owned()),
            incident: Some("no-runtime".into()),
            recent_events: None,
        },
    ));
    let _ = child.kill();
    let _ = child.wait();
    let outcome = outcome.unwrap();
    let manifest = &outcome.manifest;
    assert!(!manifest.complete);
    assert_eq!(manifest.target.runtime, "containerd");
    assert!(!manifest.target.runtime_used);
    assert_eq!(
        manifest.target.container_id.as_deref(),
        Some(container_id.as_str())
    );
    let not_captured = |artifact: &str| {
        manifest
            .not_captured
            .iter()
            .find(|n| n.artifact == artifact)
            .unwrap_or_else(|| panic!("{artifact} is not listed as not captured: {manifest:#?}"))
            .reason
            .clone()
    };
    assert!(not_captured("runtime/inspect.json").contains("containerd"));
    // The process shares the host's root: no container filesystem to export or preserve, and
    // the host's own is not taken for it.
    assert!(
        not_captured("node/filesystem.tar").contains("the host's"),
        "{manifest:#?}"
    );
    assert!(
        not_captured("node/image.oci.tar").contains("overlay"),
        "{manifest:#?}"
    );
    assert!(
        not_captured("node/changes.json").contains("overlay"),
        "{manifest:#?}"
    );
    // The container was frozen and thawed, and runs on.
    assert_eq!(actions(manifest), [("freeze", true), ("thaw", true)]);
    assert!(
        manifest
            .not_captured
            .iter()
            .any(|n| n.artifact == "events.jsonl")
    );
    let processes: Vec<ProcessInfo> = read_json(&outcome.dir.join("proc/processes.json"));
    let p = processes.iter().find(|p| p.pid == sleeper).unwrap();
    assert!(
        p.environ.contains(&"DB_PASSWORD=<redacted>".to_owned()),
        "{:?}",
        p.environ
    );
    assert!(bundle::verify(&outcome.dir, None).unwrap().ok());

    // Uploaded and confirmed; the local bundle is kept (not configured to delete it).
    let upload = outcome.upload.as_ref().unwrap();
    let files = bundle::files_below(&outcome.dir, &outcome.dir).unwrap();
    assert_eq!(upload.objects, files.len());
    assert!(!upload.deleted_local && outcome.dir.exists());
    let store = S3Store::new(config.s3.as_ref().unwrap()).unwrap();
    let remote = rt
        .block_on(store.fetch("no-runtime", "manifest.json"))
        .unwrap();
    assert_eq!(
        remote.as_ref(),
        fs::read(outcome.dir.join("manifest.json")).unwrap()
    );

    // A bucket that cannot be reached: retried, reported, and the local bundle stays.
    let unreachable = S3Config {
        endpoint: Some("http://127.0.0.1:9".into()),
        attempts: 2,
        ..config.s3.clone().unwrap()
    };
    let err = rt
        .block_on(
            S3Store::new(&unreachable)
                .unwrap()
                .upload(&outcome.dir, "no-runtime", true),
        )
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Upload { attempts: 2, .. }),
        "{err}"
    );
    assert!(outcome.dir.join("manifest.json").exists());
}

/// Runs the real `detector` with `args`; whether it succeeded, and its stdout then stderr.
fn detector(bin: &Path, args: &[&OsStr]) -> (bool, String) {
    let out = Command::new(bin).args(args).output().unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// What an attacker who can write the bundle but has no key does: change an artifact, put its
/// new size and hash in the manifest and recompute `manifest.json.sha256`.
fn forge_artifact(dir: &Path, artifact: &str) {
    let path = dir.join(artifact);
    let mut bytes = fs::read(&path).unwrap();
    bytes.extend_from_slice(b"\n");
    fs::write(&path, &bytes).unwrap();
    let (size, sha256) = bundle::hash_file(&path).unwrap();
    let mut manifest: serde_json::Value = read_json(&dir.join(bundle::MANIFEST));
    let entry = manifest["artifacts"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|a| a["path"] == artifact)
        .unwrap();
    entry["size"] = size.into();
    entry["sha256"] = sha256.into();
    let text = serde_json::to_vec_pretty(&manifest).unwrap();
    fs::write(dir.join(bundle::MANIFEST), &text).unwrap();
    let digest = format!("{:x}", Sha256::digest(&text));
    fs::write(
        dir.join(bundle::MANIFEST_SHA256),
        format!("{digest}  {}\n", bundle::MANIFEST),
    )
    .unwrap();
}

/// Writes the `evidence:` configuration of the signed-capture test, signing with `key`.
fn signing_config(tmp: &Path, key: &Path) -> PathBuf {
    let config = tmp.join("config.yaml");
    let yaml = serde_json::json!({
        "evidence": {
            "out_dir": tmp.join("out"),
            "docker_socket": tmp.join("no-docker.sock"),
            "signing_key": key,
        }
    });
    fs::write(&config, serde_yaml_ng::to_string(&yaml).unwrap()).unwrap();
    config
}

#[test]
fn signed_capture_verifies_with_its_key_and_a_forged_artifact_does_not() {
    if !privileged("signed_capture") {
        return;
    }
    let bin = tests::daemon::binary();
    if !bin.is_file() {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "signed_capture: no detector binary at {} and CI=true",
            bin.display()
        );
        eprintln!(
            "skipped signed_capture: no detector binary at {} (cargo build -p detector)",
            bin.display()
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys");
    let (ok, text) = detector(
        &bin,
        &[
            "evidence".as_ref(),
            "keygen".as_ref(),
            "--out".as_ref(),
            keys.as_os_str(),
        ],
    );
    assert!(ok, "{text}");
    let public = keys.join("ed25519.pub.pem");
    let cgroup = TestCgroup::for_test("signed-capture").unwrap();
    let capture = |config: &Path, incident: &str| {
        let args = ["evidence", "capture", "--incident", incident, "--cgroup"].map(OsStr::new);
        let config_args = [OsStr::new("--config"), config.as_os_str()];
        detector(
            &bin,
            &[&args[..], &[cgroup.path().as_os_str()], &config_args].concat(),
        )
    };

    // A key file that is not there is refused before anything is captured, naming the file.
    let missing = tmp.path().join("missing.pem");
    let (ok, text) = capture(&signing_config(tmp.path(), &missing), "refused");
    assert!(!ok, "{text}");
    assert!(text.contains("evidence.signing_key"), "{text}");
    assert!(text.contains(&missing.display().to_string()), "{text}");
    assert!(!tmp.path().join("out/refused").exists());

    // Signed with the key the configuration names; verifies against the public key.
    let config = signing_config(tmp.path(), &keys.join("ed25519.pem"));
    let mut child = cgroup.command("sleep").unwrap().arg("60").spawn().unwrap();
    let captured = capture(&config, "signed");
    let _ = child.kill();
    let _ = child.wait();
    let (ok, text) = captured;
    assert!(ok, "{text}");
    assert!(text.contains("signed by key sha256:"), "{text}");
    let dir = tmp.path().join("out/signed");
    assert!(dir.join("manifest.json.sig").is_file());
    let verify = |key: Option<&Path>| {
        let mut args = vec!["evidence".as_ref(), "verify".as_ref(), dir.as_os_str()];
        if let Some(key) = key {
            args.extend(["--key".as_ref(), key.as_os_str()]);
        }
        detector(&bin, &args)
    };
    let (ok, text) = verify(Some(&public));
    assert!(ok, "{text}");
    assert!(
        text.contains("signature: valid, by the given key"),
        "{text}"
    );
    let (ok, text) = verify(None);
    assert!(ok, "{text}");
    assert!(text.contains("not pinned"), "{text}");

    // The hashes of a forged artifact check out; the signature does not.
    forge_artifact(&dir, "proc/processes.json");
    let (ok, text) = verify(Some(&public));
    assert!(!ok, "{text}");
    assert!(
        text.contains("MISMATCH manifest.json.sig: the signature does not match"),
        "{text}"
    );
    assert!(!text.contains("MISMATCH proc/processes.json"), "{text}");
    assert!(!text.contains("MISMATCH manifest.json:"), "{text}");
}

/// The Debian image the containerd capture runs (the realistic userland the corpora use).
const DEBIAN_TAG: &str = "detector-debian:evidence";

/// What the suspect does before the capture: a line of output, an implant in /tmp, a deleted system file, an
/// 8 MiB payload (about the 10 MB container of the Docker test, over a Debian userland).
const SUSPECT: &str = "echo suspect started; echo implant > /tmp/implant; rm /etc/debian_version; \
    head -c 8388608 /dev/urandom > /payload; touch /tmp/ready; exec sleep 600";

/// A tmpfs of `size` at a fresh directory, unmounted on drop: a disk that fills.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs: {status}");
        Self { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn containerd_capture_changes_export_image_proc_and_verify() {
    let test = "evidence_containerd";
    let Some(image) = DebianImage::for_test(test) else {
        return;
    };
    let Some(mut containerd) = Containerd::start(test) else {
        return;
    };
    let name = normalize_reference(DEBIAN_TAG);
    containerd
        .import(&image.oci_archive(DEBIAN_TAG).unwrap(), &name)
        .unwrap();
    let pod = KubePod::new();
    let id = random_container_id();
    let scope = pod.containerd_scope(&id);
    containerd
        .run(&id, &name, &scope, &["sh", "-c", SUSPECT])
        .unwrap();
    let pid = containerd.pid(&id).unwrap();
    wait_for("the suspect's implant", || {
        Path::new(&format!("/proc/{pid}/root/tmp/ready")).exists()
    });
    let cgroup_dir = cgroup2_mount().unwrap().join(scope.trim_start_matches('/'));
    let out = tempfile::tempdir().unwrap();
    let config = EvidenceConfig {
        docker_socket: out.path().join("no-docker.sock"),
        containerd_socket: containerd.socket(),
        crio_socket: out.path().join("no-crio.sock"),
        node_name: Some("test-node".into()),
        ..EvidenceConfig::default()
    };
    let me = std::process::id();
    let request = |incident: String| CaptureRequest {
        target: Target::Cgroup(cgroup_dir.clone()),
        incident: Some(incident),
        recent_events: Some(Vec::new()),
    };
    let outcome = runtime()
        .block_on(capture(&config, out.path(), request(format!("ctr-{me}"))))
        .unwrap();
    let (dir, manifest) = (&outcome.dir, &outcome.manifest);
    assert_eq!(manifest.target.runtime, "containerd");
    assert_eq!(manifest.target.container_id.as_deref(), Some(id.as_str()));
    assert_eq!(
        actions(manifest),
        [("freeze", true), ("image", true), ("thaw", true)]
    );
    assert_eq!(containerd.status(&id).unwrap().as_deref(), Some("RUNNING"));
    assert!(manifest.target.runtime_used);
    assert!(manifest.not_captured.is_empty(), "{manifest:#?}");
    assert!(manifest.complete, "{manifest:#?}");

    // containerd's own record: the container in the namespace that holds it, its image,
    // snapshotter and task (paused by the freezer while it was asked, or running).
    let inspect: serde_json::Value = read_json(&dir.join("runtime/inspect.json"));
    let record = &inspect["containerd"];
    assert_eq!(record["namespace"], NAMESPACE, "{inspect:#}");
    assert_eq!(record["container"]["id"], id.as_str());
    assert_eq!(record["container"]["image"], name.as_str());
    assert_eq!(record["container"]["snapshotter"], "overlayfs");
    assert_eq!(record["container"]["spec"]["process"]["args"][0], "sh");
    assert_eq!(record["task"]["pid"], pid);
    assert!(
        ["running", "paused"].contains(&record["task"]["status"].as_str().unwrap_or("")),
        "{inspect:#}"
    );
    assert_eq!(record["image"]["name"], name.as_str());
    assert!(
        record["image"]["target"]["digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:"))
    );
    let top: serde_json::Value = read_json(&dir.join("runtime/top.json"));
    assert!(
        top["pids"]
            .as_array()
            .is_some_and(|pids| pids.iter().any(|p| p["pid"] == pid)),
        "{top:#}"
    );
    // The output went to a file (`ctr run --log-uri file://`), named by the task.
    assert!(containerd.logs(&id).contains("suspect started"));
    assert_eq!(
        fs::read_to_string(dir.join("runtime/container.log")).unwrap(),
        containerd.logs(&id)
    );

    // The change list has the implant, the payload and the deleted file.
    let changes: Vec<FsChange> = read_json(&dir.join("node/changes.json"));
    for (kind, path) in [
        ('A', "/tmp/implant"),
        ('A', "/payload"),
        ('D', "/etc/debian_version"),
    ] {
        assert!(
            changes.contains(&FsChange {
                kind,
                path: path.into()
            }),
            "{kind} {path} missing: {changes:?}"
        );
    }

    // The export holds the implant with its content, not the deleted file.
    let tar = dir.join("node/filesystem.tar");
    assert_eq!(tar_member(&tar, "tmp/implant"), "implant\n");
    let listing = tar_listing(&tar);
    assert!(
        listing
            .lines()
            .any(|l| l == "bin/bash" || l == "usr/bin/bash"),
        "no Debian userland in the export"
    );
    assert!(
        !listing.lines().any(|l| l.ends_with("etc/debian_version")),
        "{listing}"
    );

    // The image imports back into containerd and runs: implant in, deleted file out.
    let reference = format!("localhost/evidence-ctr-{me}:{}", &id[..12]);
    containerd
        .import(&dir.join("node/image.oci.tar"), &reference)
        .unwrap();
    let check = random_container_id();
    containerd
        .run(
            &check,
            &reference,
            &pod.containerd_scope(&check),
            &[
                "sh",
                "-c",
                "cat /tmp/implant; test -e /etc/debian_version && echo present || echo gone",
            ],
        )
        .unwrap();
    wait_for("the preserved image's container to answer", || {
        containerd.logs(&check).contains("gone") || containerd.logs(&check).contains("present")
    });
    assert_eq!(containerd.logs(&check).trim(), "implant\ngone");

    // The /proc artifacts, and the bundle verifies.
    let processes: Vec<ProcessInfo> = read_json(&dir.join("proc/processes.json"));
    assert!(processes.iter().any(|p| p.pid == pid), "{processes:#?}");
    let report = bundle::verify(dir, None).unwrap();
    assert!(report.ok(), "{report:?}");
    let size = |rel: &str| {
        manifest
            .artifacts
            .iter()
            .find(|a| a.path == rel)
            .map_or(0, |a| a.size)
    };
    println!(
        "evidence capture on containerd of a Debian container with an 8 MiB payload (freeze, /proc, changes, export {:.1} MB, OCI image {:.1} MB, thaw, manifest): {} ms",
        size("node/filesystem.tar") as f64 / 1e6,
        size("node/image.oci.tar") as f64 / 1e6,
        outcome.elapsed.as_millis()
    );

    // Capture time of a container whose filesystem is about 10 MB, as in the Docker test: a
    // busybox image (made with the collector's own OCI writer from a plain directory) and an
    // 8 MiB payload.
    let small = tempfile::tempdir().unwrap();
    let (rootfs, upper) = (small.path().join("rootfs"), small.path().join("upper"));
    busybox_rootfs(&rootfs, &[]).unwrap();
    fs::create_dir(&upper).unwrap();
    let busybox = normalize_reference("detector-busybox:evidence");
    let archive = small.path().join("busybox.oci.tar");
    oci::write_image(
        std::slice::from_ref(&rootfs),
        &upper,
        fs::File::create(&archive).unwrap(),
        &busybox,
        &oci::ImageMeta::for_this_node(time::OffsetDateTime::now_utc(), "busybox"),
        oci::Staging {
            dir: small.path(),
            max_bytes: u64::MAX,
        },
    )
    .unwrap();
    containerd.import(&archive, &busybox).unwrap();
    let small_id = random_container_id();
    let small_scope = pod.containerd_scope(&small_id);
    containerd
        .run(
            &small_id,
            &busybox,
            &small_scope,
            &["sh", "-c", "dd if=/dev/urandom of=/payload bs=1M count=8 2>/dev/null; touch /tmp/ready; exec sleep 600"],
        )
        .unwrap();
    let small_pid = containerd.pid(&small_id).unwrap();
    wait_for("the payload", || {
        Path::new(&format!("/proc/{small_pid}/root/tmp/ready")).exists()
    });
    let outcome = runtime()
        .block_on(capture(
            &config,
            out.path(),
            CaptureRequest {
                target: Target::Cgroup(
                    cgroup2_mount()
                        .unwrap()
                        .join(small_scope.trim_start_matches('/')),
                ),
                incident: Some(format!("ctr-{me}-10mb")),
                recent_events: Some(Vec::new()),
            },
        ))
        .unwrap();
    let export = outcome
        .manifest
        .artifacts
        .iter()
        .find(|a| a.path == "node/filesystem.tar")
        .unwrap_or_else(|| panic!("{:#?}", outcome.manifest));
    assert!(export.size > 9 << 20, "{export:?}");
    println!(
        "evidence capture of a {:.1} MB container filesystem on containerd (freeze, /proc, changes, export, OCI image, thaw, manifest): {} ms",
        export.size as f64 / (1 << 20) as f64,
        outcome.elapsed.as_millis()
    );

    // A disk that fills between the freeze and the thaw: the big artifacts are given up, the
    // bundle says why, and the container runs on.
    let disk = SmallDisk::mount("4m");
    let outcome = runtime()
        .block_on(capture(
            &config,
            disk.dir.path(),
            request(format!("ctr-{me}-full")),
        ))
        .unwrap();
    let manifest = &outcome.manifest;
    assert!(!manifest.complete);
    for artifact in ["node/filesystem.tar", "node/image.oci.tar"] {
        let entry = manifest
            .not_captured
            .iter()
            .find(|n| n.artifact == artifact)
            .unwrap_or_else(|| panic!("{artifact} not listed as not captured: {manifest:#?}"));
        assert!(
            entry.reason.contains("No space left on device") || entry.reason.contains("size limit"),
            "{entry:?}"
        );
        assert!(
            !outcome.dir.join(artifact).exists(),
            "the partial {artifact} was kept"
        );
    }
    assert!(outcome.dir.join("proc/processes.json").exists());
    assert_eq!(containerd.status(&id).unwrap().as_deref(), Some("RUNNING"));
    assert!(
        manifest.actions.iter().any(|a| a.action == "thaw" && a.ok),
        "{manifest:#?}"
    );
    assert!(bundle::verify(&outcome.dir, None).unwrap().ok());
    drop(outcome);
    drop(disk);
}
