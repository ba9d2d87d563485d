//! The manifests in deploy/ checked against the Kubernetes schemas (k8s-openapi types) and
//! against the daemon's own configuration: every document parses into its typed object and
//! reserializes to the same tree (k8s-openapi ignores unknown fields, so a difference is a
//! misspelled or unknown field), the ServiceMonitor (a CRD) has its required structure, and
//! the pieces fit together (config, ports, probes, mounts, kustomization).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
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
        "servicemonitor.yaml",
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
    assert!(config.evidence.out_dir.starts_with("/var/lib/detector"));
    assert!(mounted_at(&config.evidence.docker_socket.to_string_lossy()).is_some());

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
    let [monitor] = documents("servicemonitor.yaml").try_into().unwrap();
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
        "servicemonitor.yaml",
    ] {
        assert!(resources.contains(&file), "kustomization lacks {file}");
    }
    for file in resources {
        assert!(
            deploy_dir().join(file).is_file(),
            "kustomization.yaml lists {file}, which does not exist"
        );
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
