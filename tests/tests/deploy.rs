//! The manifests in deploy/ checked the way a cluster takes them, and against the daemon's own
//! configuration.
//!
//! - As applied: `kubectl kustomize` (the kustomize inside `kubectl apply -k`) renders deploy/
//!   and each component from a kustomization such as a user writes, and every rendered object is
//!   validated against the OpenAPI schemas of the oldest and the newest supported Kubernetes
//!   (1.26 and 1.34, from the PyPI package `kubernetes-validate`) with unknown fields refused,
//!   as the API server's strict decoding refuses them. A kind without a schema needs a CRD: the
//!   base must have none, each component only the ones it declares. The tools come with
//!   `cargo xtask test` (kubectl from npm, the schemas in the project's Python environment);
//!   without them these tests fail under `CI=true` and say why they skip elsewhere.
//! - As files: every document parses into its k8s-openapi type and reserializes to the same tree
//!   (k8s-openapi ignores unknown fields, so a difference is a misspelled or unknown field), the
//!   ServiceMonitor (a CRD) has its required structure, and the pieces fit together (config,
//!   ports, probes, mounts, the downward API the guards read).

use std::{
    collections::BTreeSet,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use detector::config::Config;
use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Namespace, Service, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::Value;

const NAMESPACE: &str = "detector-system";
/// The ServiceMonitor, in the component that adds it.
const SERVICE_MONITOR: &str = "components/servicemonitor/servicemonitor.yaml";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every YAML document of a file, as JSON trees (comments and empty documents dropped).
fn documents(file: &str) -> Vec<Value> {
    let path = deploy_dir().join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|err| panic!("{file}: {err}")))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The document as its typed object, failing on any field the type does not know.
fn typed<T: DeserializeOwned + serde::Serialize>(file: &str, doc: &Value) -> T {
    let object: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|err| panic!("{file}: not a valid {}: {err}", kind(doc)));
    let back = serde_json::to_value(&object).unwrap();
    let mut differences = Vec::new();
    diff(doc, &back, String::new(), &mut differences);
    assert!(
        differences.is_empty(),
        "{file}: {} has fields its schema does not know (misspelled?):\n  {}",
        kind(doc),
        differences.join("\n  ")
    );
    object
}

fn kind(doc: &Value) -> String {
    format!(
        "{}/{}",
        doc["kind"].as_str().unwrap_or("?"),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// Where `original` and `reserialized` differ, as dotted paths.
fn diff(original: &Value, reserialized: &Value, at: String, out: &mut Vec<String>) {
    match (original, reserialized) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let here = format!("{at}.{key}");
                match b.get(key) {
                    Some(other) => diff(value, other, here, out),
                    None => out.push(format!("{here} (dropped: unknown field)")),
                }
            }
            for key in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{at}.{key} (added)"));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(x, y, format!("{at}[{i}]"), out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{at}: {a} became {b}")),
    }
}

fn the_one<T: DeserializeOwned + serde::Serialize>(file: &str, kind: &str) -> T {
    let docs: Vec<_> = documents(file)
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .collect();
    assert_eq!(docs.len(), 1, "{file}: expected one {kind}");
    typed(file, &docs[0])
}

fn node_config() -> Config {
    let map: ConfigMap = the_one("configmap.yaml", "ConfigMap");
    let text = map
        .data
        .as_ref()
        .and_then(|d| d.get("config.yaml"))
        .expect("configmap.yaml has data.config.yaml");
    Config::parse(text, Path::new("configmap.yaml: data.config.yaml"))
        .unwrap_or_else(|err| panic!("{err}"))
}

fn daemonset() -> DaemonSet {
    the_one("daemonset.yaml", "DaemonSet")
}

#[test]
fn every_manifest_fits_its_schema() {
    let namespace: Namespace = the_one("namespace.yaml", "Namespace");
    assert_eq!(namespace.metadata.name.as_deref(), Some(NAMESPACE));
    let _: ConfigMap = the_one("configmap.yaml", "ConfigMap");
    let _: DaemonSet = the_one("daemonset.yaml", "DaemonSet");
    let _: Service = the_one("service.yaml", "Service");
    for file in [
        "configmap.yaml",
        "daemonset.yaml",
        "service.yaml",
        SERVICE_MONITOR,
    ] {
        for doc in documents(file) {
            assert_eq!(
                doc["metadata"]["namespace"],
                NAMESPACE,
                "{file}: {} is not in {NAMESPACE}",
                kind(&doc)
            );
        }
    }
}

#[test]
fn the_node_configuration_is_valid_and_is_deploy_config_yaml() {
    let config = node_config();
    assert_eq!(config.sensors.watch, detector::config::Watch::Containers);
    assert!(config.attribution.kubernetes, "cluster mode on a node");
    assert!(config.metrics.enabled);
    let map: ConfigMap = the_one("configmap.yaml", "ConfigMap");
    let embedded = &map.data.unwrap()["config.yaml"];
    let file = std::fs::read_to_string(deploy_dir().join("config.yaml")).unwrap();
    assert_eq!(
        embedded, &file,
        "configmap.yaml must embed deploy/config.yaml as it is"
    );
}

#[test]
fn the_daemonset_fits_the_daemon() {
    let config = node_config();
    let ds = daemonset();
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.host_pid, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some("detector"));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert!(
        pod.tolerations.as_ref().is_some_and(|t| t
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none())),
        "tolerates every taint"
    );
    assert_eq!(
        pod.enable_service_links,
        Some(false),
        "service links would inject DETECTOR_* variables"
    );
    let [container] = pod.containers.as_slice() else {
        panic!("one container");
    };

    // Least privilege: capabilities, not privileged; read-only root.
    let security = container.security_context.as_ref().unwrap();
    assert_ne!(security.privileged, Some(true));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    let capabilities = security.capabilities.as_ref().unwrap();
    assert_eq!(capabilities.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    let added: BTreeSet<_> = capabilities
        .add
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    let expected = BTreeSet::from([
        "BPF",
        "PERFMON",
        "NET_ADMIN",
        "SYS_ADMIN",
        "SYS_PTRACE",
        "DAC_READ_SEARCH",
        "SYS_RESOURCE",
    ]);
    assert_eq!(added, expected);

    // The metrics port is the configured one, and the probes hit it.
    let ports = container.ports.as_ref().unwrap();
    let metrics_port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("a port named metrics");
    assert_eq!(
        metrics_port.container_port,
        i32::from(config.metrics.listen.port())
    );
    let probe_target = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        let port_ok = match &get.port {
            IntOrString::Int(n) => *n == metrics_port.container_port,
            IntOrString::String(name) => name == "metrics",
        };
        assert!(port_ok, "probe port {:?}", get.port);
        get.path.clone().unwrap()
    };
    assert_eq!(probe_target(&container.liveness_probe), "/healthz");
    assert_eq!(probe_target(&container.readiness_probe), "/readyz");

    // The node's name and the daemon's own pod from the downward API: the guards that keep
    // containment off the detector's own pod and namespace read them (`OwnPod::from_env`).
    for (variable, path) in [
        ("NODE_NAME", "spec.nodeName"),
        ("POD_NAMESPACE", "metadata.namespace"),
        ("POD_NAME", "metadata.name"),
        ("POD_UID", "metadata.uid"),
    ] {
        let var = container
            .env
            .iter()
            .flatten()
            .find(|e| e.name == variable)
            .unwrap_or_else(|| panic!("{variable} is not set"));
        let field = var
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .unwrap_or_else(|| panic!("{variable} is not from a field"));
        assert_eq!(field.field_path, path, "{variable}");
    }

    // Every mount has its volume, and the host paths the daemon reads are mounted.
    let volumes = pod.volumes.unwrap_or_default();
    let declared: BTreeSet<_> = volumes.iter().map(|v| v.name.as_str()).collect();
    let mounts = container.volume_mounts.clone().unwrap_or_default();
    for mount in &mounts {
        assert!(
            declared.contains(mount.name.as_str()),
            "mount {} has no volume",
            mount.name
        );
    }
    let mounted_at = |path: &str| mounts.iter().find(|m| m.mount_path == path);
    let host_path = |mount: &str| {
        let m = mounted_at(mount).unwrap_or_else(|| panic!("nothing mounted at {mount}"));
        volumes
            .iter()
            .find(|v| v.name == m.name)
            .and_then(|v| v.host_path.as_ref())
            .map(|h| h.path.clone())
            .unwrap_or_else(|| panic!("{mount} is not a host path"))
    };
    for (mount, host) in [
        ("/sys/kernel/btf", "/sys/kernel/btf"),
        ("/sys/kernel/tracing", "/sys/kernel/tracing"),
        ("/sys/fs/cgroup", "/sys/fs/cgroup"),
        ("/sys/fs/bpf", "/sys/fs/bpf"),
        ("/host/proc", "/proc"),
        ("/var/run/docker.sock", "/var/run/docker.sock"),
        (
            "/run/containerd/containerd.sock",
            "/run/containerd/containerd.sock",
        ),
        ("/var/lib/detector", "/var/lib/detector"),
    ] {
        assert_eq!(host_path(mount), host, "{mount}");
    }
    assert_eq!(mounted_at("/sys/kernel/btf").unwrap().read_only, Some(true));
    // The configured BTF, evidence directory and Docker socket are where the mounts put them.
    assert!(config.sensors.btf_path.starts_with("/sys/kernel/btf"));
    // The quarantine is pinned on the node's bpffs, where it outlives the pod.
    assert!(
        config
            .sensors
            .pin_dir
            .as_ref()
            .is_some_and(|dir| dir.starts_with("/sys/fs/bpf")),
        "{:?}",
        config.sensors.pin_dir
    );
    assert!(config.evidence.out_dir.starts_with("/var/lib/detector"));
    assert!(mounted_at(&config.evidence.docker_socket.to_string_lossy()).is_some());
    // The evidence signing key's Secret is optional (an install without a key starts) and
    // readable by its owner only.
    let key = mounted_at("/etc/detector-evidence-key").expect("evidence key mounted");
    assert_eq!(key.read_only, Some(true));
    let secret = volumes
        .iter()
        .find(|v| v.name == key.name)
        .and_then(|v| v.secret.as_ref())
        .expect("the evidence key is a Secret");
    assert_eq!(secret.secret_name.as_deref(), Some("detector-evidence-key"));
    assert_eq!(secret.optional, Some(true));
    assert_eq!(secret.default_mode, Some(0o400));

    // The config file the container is told to read is the ConfigMap's.
    let args = container.args.clone().unwrap_or_default();
    let at = args.iter().position(|a| a == "--config").unwrap();
    let file = Path::new(&args[at + 1]);
    let dir = mounted_at(&file.parent().unwrap().to_string_lossy()).expect("config mounted");
    let volume = volumes.iter().find(|v| v.name == dir.name).unwrap();
    assert_eq!(
        volume.config_map.as_ref().map(|c| c.name.as_str()),
        Some("detector-config")
    );
    assert_eq!(file.file_name().unwrap(), "config.yaml");
}

#[test]
fn the_service_and_the_service_monitor_reach_the_pods() {
    let ds = daemonset();
    let pod_labels = ds.spec.unwrap().template.metadata.unwrap().labels.unwrap();
    let service: Service = the_one("service.yaml", "Service");
    let spec = service.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"), "headless");
    for (key, value) in spec.selector.unwrap() {
        assert_eq!(pod_labels.get(&key), Some(&value), "selector {key}");
    }
    let port = spec
        .ports
        .unwrap()
        .into_iter()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("a port named metrics");
    assert_eq!(
        port.target_port,
        Some(IntOrString::String("metrics".into()))
    );

    // The ServiceMonitor is a CRD: its required structure, checked by hand.
    let [monitor] = documents(SERVICE_MONITOR).try_into().unwrap();
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["kind"], "ServiceMonitor");
    assert!(monitor["metadata"]["name"].is_string());
    let spec = &monitor["spec"];
    let known = BTreeSet::from([
        "selector",
        "namespaceSelector",
        "endpoints",
        "jobLabel",
        "targetLabels",
        "podTargetLabels",
        "sampleLimit",
    ]);
    for key in spec.as_object().unwrap().keys() {
        assert!(
            known.contains(key.as_str()),
            "unknown ServiceMonitor field spec.{key}"
        );
    }
    let service_labels = service.metadata.labels.unwrap();
    for (key, value) in spec["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            service_labels.get(key).map(String::as_str),
            value.as_str(),
            "ServiceMonitor selects {key}"
        );
    }
    assert_eq!(spec["namespaceSelector"]["matchNames"][0], NAMESPACE);
    let endpoints = spec["endpoints"].as_array().expect("spec.endpoints");
    assert!(!endpoints.is_empty());
    let endpoint_keys = BTreeSet::from([
        "port",
        "path",
        "interval",
        "scrapeTimeout",
        "scheme",
        "relabelings",
        "metricRelabelings",
        "honorLabels",
    ]);
    for endpoint in endpoints {
        for key in endpoint.as_object().unwrap().keys() {
            assert!(
                endpoint_keys.contains(key.as_str()),
                "unknown ServiceMonitor endpoint field {key}"
            );
        }
        assert_eq!(endpoint["port"], "metrics");
        assert_eq!(endpoint["path"], "/metrics");
    }
}

#[test]
fn the_kustomization_lists_files_that_exist() {
    let [kustomization] = documents("kustomization.yaml").try_into().unwrap();
    assert_eq!(
        kustomization["apiVersion"],
        "kustomize.config.k8s.io/v1beta1"
    );
    assert_eq!(kustomization["kind"], "Kustomization");
    assert_eq!(kustomization["namespace"], NAMESPACE);
    let resources: Vec<&str> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for file in [
        "namespace.yaml",
        "rbac.yaml",
        "configmap.yaml",
        "daemonset.yaml",
        "service.yaml",
    ] {
        assert!(resources.contains(&file), "kustomization lacks {file}");
    }
    for file in resources {
        assert!(
            deploy_dir().join(file).is_file(),
            "kustomization.yaml lists {file}, which does not exist"
        );
    }
    for (component, _) in COMPONENTS {
        let [doc] = documents(&format!("components/{component}/kustomization.yaml"))
            .try_into()
            .unwrap();
        assert_eq!(doc["kind"], "Component", "components/{component}");
    }
}

#[test]
fn rbac_names_the_service_account_the_daemonset_uses() {
    let docs = documents("rbac.yaml");
    let mut accounts = Vec::new();
    for doc in &docs {
        match doc["kind"].as_str() {
            Some("ServiceAccount") => {
                let account: ServiceAccount = typed("rbac.yaml", doc);
                accounts.push((account.metadata.name, account.metadata.namespace));
            }
            Some("ClusterRole") => {
                let _: ClusterRole = typed("rbac.yaml", doc);
            }
            Some("ClusterRoleBinding") => {
                let _: ClusterRoleBinding = typed("rbac.yaml", doc);
            }
            _ => {}
        }
    }
    let pod = daemonset().spec.unwrap().template.spec.unwrap();
    assert!(
        accounts.contains(&(pod.service_account_name.clone(), Some(NAMESPACE.to_owned()))),
        "rbac.yaml has no ServiceAccount {:?} in {NAMESPACE}",
        pod.service_account_name
    );
}

// As applied: rendered by kubectl's kustomize, validated against each supported version.

/// The oldest and the newest Kubernetes the manifests are for.
const VERSIONS: [&str; 2] = ["1.26", "1.34"];

/// The ServiceMonitor's CRD kind (`apiVersion kind`).
const SERVICE_MONITOR_CRD: &str = "monitoring.coreos.com/v1 ServiceMonitor";

/// Each component of deploy/components, with the kinds it adds that need a CRD
/// (`apiVersion kind`).
const COMPONENTS: [(&str, &[&str]); 3] = [
    (
        "servicemonitor",
        &["monitoring.coreos.com/v1 ServiceMonitor"],
    ),
    ("apparmor-field", &[]),
    ("revoke-credentials", &[]),
];

/// Validates the objects of a JSON request `{"versions": [...], "objects": [...]}` against the
/// strict schemas of each version (unknown fields refused); prints one result per object and
/// version: `ok`, `no-schema` (not a built-in kind: a CRD) or `invalid` with the path.
const VALIDATE_PY: &str = r#"
import json, sys
from kubernetes_validate import utils
request = json.load(sys.stdin)
results = []
for obj in request["objects"]:
    for version in request["versions"]:
        try:
            utils.validate(obj, version + ".0", strict=True)
            results.append({"result": "ok"})
        except utils.SchemaNotFoundError as e:
            results.append({"result": "no-schema", "message": e.message})
        except utils.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            results.append({"result": "invalid", "message": path + ": " + e.message})
print(json.dumps(results))
"#;

/// kubectl (its `kustomize`) and a Python with `kubernetes-validate`, both from PATH
/// (`cargo xtask test` puts the project's first).
struct Tools {
    kubectl: PathBuf,
    python: PathBuf,
}

impl Tools {
    /// The tools, or why not: `None` skips the test (a failure under `CI=true`).
    fn find(test: &str) -> Option<Self> {
        let found = Self::locate();
        match found {
            Ok(tools) => Some(tools),
            Err(why) => {
                assert!(
                    std::env::var("CI").ok().as_deref() != Some("true"),
                    "{test}: {why}, and CI=true (cargo xtask test installs both)"
                );
                eprintln!("skipped {test}: {why} (cargo xtask test installs both)");
                None
            }
        }
    }

    fn locate() -> Result<Self, String> {
        let on_path = |name: &str| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        };
        let kubectl = on_path("kubectl").ok_or("no kubectl on PATH")?;
        let python = on_path("python3").ok_or("no python3 on PATH")?;
        let probe = Command::new(&python)
            .args(["-c", "import kubernetes_validate"])
            .output()
            .map_err(|err| format!("cannot run {}: {err}", python.display()))?;
        if !probe.status.success() {
            return Err(format!(
                "{} has no kubernetes_validate (PyPI kubernetes-validate)",
                python.display()
            ));
        }
        Ok(Self { kubectl, python })
    }

    /// `kubectl kustomize DIR`: the objects `kubectl apply -k DIR` sends, or kustomize's error.
    fn render(&self, dir: &Path) -> Result<Vec<Value>, String> {
        let out = Command::new(&self.kubectl)
            .arg("kustomize")
            .arg(dir)
            .output()
            .map_err(|err| format!("cannot run {}: {err}", self.kubectl.display()))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(serde_yaml_ng::Deserializer::from_str(&text)
            .map(|doc| Value::deserialize(doc).expect("kustomize prints YAML"))
            .filter(|doc| !doc.is_null())
            .collect())
    }

    /// Every problem a cluster of each supported version has with the objects: a field its
    /// schema does not know, a wrong type, a missing required field, or a kind it does not
    /// have (`needs a CRD`). CRD kinds listed in `crds` are expected, not problems.
    fn problems(&self, objects: &[Value], crds: &[&str]) -> Vec<String> {
        let request = serde_json::json!({"versions": VERSIONS, "objects": objects});
        let mut child = Command::new(&self.python)
            .args(["-c", VALIDATE_PY])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the schema check");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(request.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "the schema check failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let results: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(results.len(), objects.len() * VERSIONS.len());
        let mut problems = Vec::new();
        for (i, result) in results.iter().enumerate() {
            let object = &objects[i / VERSIONS.len()];
            let version = VERSIONS[i % VERSIONS.len()];
            let type_name = format!(
                "{} {}",
                object["apiVersion"].as_str().unwrap_or("?"),
                object["kind"].as_str().unwrap_or("?")
            );
            match result["result"].as_str() {
                Some("ok") => {}
                Some("no-schema") if crds.contains(&type_name.as_str()) => {}
                Some("no-schema") => problems.push(format!(
                    "{}: needs a CRD ({type_name} is not a kind of Kubernetes {version})",
                    kind(object)
                )),
                _ => problems.push(format!(
                    "{} on Kubernetes {version}: {}",
                    kind(object),
                    result["message"].as_str().unwrap_or("?")
                )),
            }
        }
        problems
    }
}

/// A kustomization as a user writes it, in a directory of its own: deploy/ as its resource
/// (by a relative path: kustomize takes no absolute one), the given components of
/// deploy/components, and extra files of its own listed as resources.
fn user_kustomization(components: &[&str], own: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let deploy = deploy_from(&root);
    let mut text = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {deploy}\n"
    );
    for (file, content) in own {
        std::fs::write(root.join(file), content).unwrap();
        text += &format!("  - {file}\n");
    }
    if !components.is_empty() {
        text += "components:\n";
        for component in components {
            text += &format!("  - {deploy}/components/{component}\n");
        }
    }
    std::fs::write(root.join("kustomization.yaml"), text).unwrap();
    dir
}

/// deploy/ as a path relative to `dir` (kustomize takes no absolute one).
fn deploy_from(dir: &Path) -> String {
    let deploy = deploy_dir().canonicalize().unwrap();
    let up = "../".repeat(dir.components().count() - 1);
    format!("{up}{}", deploy.strip_prefix("/").unwrap().display())
}

fn the_daemonset_in(objects: &[Value]) -> &Value {
    let mut sets = objects.iter().filter(|o| o["kind"] == "DaemonSet");
    let set = sets.next().expect("a DaemonSet");
    assert!(sets.next().is_none(), "one DaemonSet");
    set
}

const APPARMOR_ANNOTATION: &str = "container.apparmor.security.beta.kubernetes.io/detector";

#[test]
fn the_base_applies_as_it_is_on_every_supported_version() {
    let Some(tools) = Tools::find("the_base_applies_as_it_is_on_every_supported_version") else {
        return;
    };
    let objects = tools
        .render(&deploy_dir())
        .unwrap_or_else(|err| panic!("{err}"));
    let problems = tools.problems(&objects, &[]);
    assert!(
        problems.is_empty(),
        "kubectl apply -k deploy/ would fail:\n  {}",
        problems.join("\n  ")
    );
    let kinds: BTreeSet<_> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            // The cluster budget's Lease, in the detector's namespace only.
            "Role",
            "RoleBinding",
            "ConfigMap",
            "DaemonSet",
            "Service",
        ])
    );
    for object in objects
        .iter()
        .filter(|o| o["metadata"].get("namespace").is_some())
    {
        assert_eq!(
            object["metadata"]["namespace"],
            NAMESPACE,
            "{}",
            kind(object)
        );
    }
    // AppArmor in the form every version takes: the annotation, unconfined.
    let set = the_daemonset_in(&objects);
    let template = &set["spec"]["template"];
    assert_eq!(
        template["metadata"]["annotations"][APPARMOR_ANNOTATION],
        "unconfined"
    );
    let container = &template["spec"]["containers"][0];
    assert_eq!(
        container["name"], "detector",
        "the annotation names this container"
    );
    assert!(
        container["securityContext"]
            .get("appArmorProfile")
            .is_none()
    );
    assert_eq!(container["image"], "detector:0.1.0");
}

#[test]
fn each_component_applies_on_the_versions_it_is_for() {
    let Some(tools) = Tools::find("each_component_applies_on_the_versions_it_is_for") else {
        return;
    };
    for (component, crds) in COMPONENTS {
        let dir = user_kustomization(&[component], &[]);
        let objects = tools
            .render(dir.path())
            .unwrap_or_else(|err| panic!("{component}: {err}"));
        let problems = tools.problems(&objects, crds);
        match component {
            // Needs 1.30 or later: 1.26 refuses the field, and only that.
            "apparmor-field" => {
                assert_eq!(problems.len(), 1, "{component}: {problems:#?}");
                assert!(
                    problems[0].contains("Kubernetes 1.26")
                        && problems[0].contains("'appArmorProfile' was unexpected"),
                    "{component}: {problems:#?}"
                );
                let template = &the_daemonset_in(&objects)["spec"]["template"];
                assert!(
                    template["metadata"]["annotations"]
                        .get(APPARMOR_ANNOTATION)
                        .is_none(),
                    "the deprecated annotation is replaced"
                );
                assert_eq!(
                    template["spec"]["containers"][0]["securityContext"]["appArmorProfile"],
                    serde_json::json!({"type": "Unconfined"})
                );
            }
            _ => assert!(problems.is_empty(), "{component}: {problems:#?}"),
        }
        let added: BTreeSet<String> = objects
            .iter()
            .map(|o| {
                format!(
                    "{} {}",
                    o["apiVersion"].as_str().unwrap(),
                    o["kind"].as_str().unwrap()
                )
            })
            .collect();
        for crd in crds {
            assert!(added.contains(*crd), "{component} adds no {crd}");
        }
    }
    // Both at once, as a cluster with the Prometheus Operator on 1.30+ takes them.
    let dir = user_kustomization(&["servicemonitor", "apparmor-field"], &[]);
    let objects = tools
        .render(dir.path())
        .unwrap_or_else(|err| panic!("{err}"));
    let monitor = objects
        .iter()
        .find(|o| o["kind"] == "ServiceMonitor")
        .unwrap();
    assert_eq!(monitor["metadata"]["namespace"], NAMESPACE);
}

/// The two ways the shipped deploy/ failed on real clusters, caught by the check: the
/// `appArmorProfile` field on 1.26 (`strict decoding error: unknown field`) and a ServiceMonitor
/// without its CRD (`no matches for kind "ServiceMonitor"`), which failed the whole apply.
#[test]
fn the_check_catches_what_failed_on_real_clusters() {
    let Some(tools) = Tools::find("the_check_catches_what_failed_on_real_clusters") else {
        return;
    };
    let mut objects = tools
        .render(&deploy_dir())
        .unwrap_or_else(|err| panic!("{err}"));
    let set = objects
        .iter_mut()
        .find(|o| o["kind"] == "DaemonSet")
        .unwrap();
    set["spec"]["template"]["spec"]["containers"][0]["securityContext"]["appArmorProfile"] =
        serde_json::json!({"type": "Unconfined"});
    let problems = tools.problems(&objects, &[]);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].starts_with(
            "DaemonSet/detector on Kubernetes 1.26: spec.template.spec.containers.0.securityContext"
        ) && problems[0].contains("'appArmorProfile' was unexpected"),
        "{problems:#?}"
    );

    // A ServiceMonitor among the base's resources.
    let monitor = std::fs::read_to_string(deploy_dir().join(SERVICE_MONITOR)).unwrap();
    let dir = user_kustomization(&[], &[("servicemonitor.yaml", &monitor)]);
    let objects = tools
        .render(dir.path())
        .unwrap_or_else(|err| panic!("{err}"));
    let problems = tools.problems(&objects, &[]);
    assert_eq!(
        problems,
        VERSIONS.map(|v| format!(
            "ServiceMonitor/detector: needs a CRD (monitoring.coreos.com/v1 ServiceMonitor is not a kind of Kubernetes {v})"
        ))
    );

    // Any unknown field, on every version: strict, as the API server decodes.
    let mut objects = tools
        .render(&deploy_dir())
        .unwrap_or_else(|err| panic!("{err}"));
    let service = objects.iter_mut().find(|o| o["kind"] == "Service").unwrap();
    service["spec"]["clusterIp"] = "None".into();
    let problems = tools.problems(&objects, &[]);
    assert_eq!(problems.len(), VERSIONS.len(), "{problems:#?}");
    assert!(
        problems
            .iter()
            .all(|p| p.contains("'clusterIp' was unexpected")),
        "{problems:#?}"
    );
}

/// The README's kustomization (deploy/ with both components and an image of one's own) renders
/// to what it says.
#[test]
fn the_readme_kustomization_is_real() {
    let Some(tools) = Tools::find("the_readme_kustomization_is_real") else {
        return;
    };
    let readme = std::fs::read_to_string(deploy_dir().join("../README.md")).unwrap();
    let section = &readme[readme.find("## Deploying").expect("a Deploying section")..];
    let section = &section[..section[3..]
        .find("\n## ")
        .map_or(section.len(), |end| end + 3)];
    let [block] = section
        .split("```yaml\n")
        .skip(1)
        .map(|block| &block[..block.find("```").expect("closed block")])
        .collect::<Vec<_>>()
        .try_into()
        .expect("one yaml block in Deploying");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let text = block.replace("../deploy", &deploy_from(&root));
    std::fs::write(root.join("kustomization.yaml"), text).unwrap();
    let objects = tools.render(&root).unwrap_or_else(|err| panic!("{err}"));
    assert!(objects.iter().any(|o| o["kind"] == "ServiceMonitor"));
    let container = &the_daemonset_in(&objects)["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.example.com/detector:0.1.0");
    assert_eq!(
        container["securityContext"]["appArmorProfile"]["type"],
        "Unconfined"
    );
    let problems = tools.problems(&objects, &[SERVICE_MONITOR_CRD]);
    assert!(
        problems.len() == 1 && problems[0].contains("Kubernetes 1.26"),
        "only 1.26 refuses it (the AppArmor field): {problems:#?}"
    );
}
