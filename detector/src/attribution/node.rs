//! Node identity: which node this daemon runs on, for the `spec.nodeName` pod watch and for
//! events.

/// Where the node name came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeNameSource {
    /// `attribution.node_name` in the configuration.
    Config,
    /// The `NODE_NAME` environment variable (the downward API's `spec.nodeName`).
    Environment,
    /// The host name (the kubelet's default node name).
    Hostname,
}

/// The node name and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeName {
    /// The name.
    pub name: String,
    /// Its source.
    pub source: NodeNameSource,
}

/// The environment variable the DaemonSet sets from the downward API.
pub const NODE_NAME_ENV: &str = "NODE_NAME";

/// No source gave a node name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot tell the node name: set attribution.node_name, the NODE_NAME environment variable (downward API spec.nodeName) or a host name"
)]
pub struct NoNodeName;

/// Picks the node name: the configured one, else the environment's, else the host name. Blank
/// values are skipped; the kubelet lowercases host names, so the host name is lowercased too.
pub fn node_name(
    configured: Option<&str>,
    environment: Option<&str>,
    hostname: Option<&str>,
) -> Result<NodeName, NoNodeName> {
    if let Some(name) = pick(configured) {
        return Ok(NodeName {
            name: name.to_owned(),
            source: NodeNameSource::Config,
        });
    }
    if let Some(name) = pick(environment) {
        return Ok(NodeName {
            name: name.to_owned(),
            source: NodeNameSource::Environment,
        });
    }
    pick(hostname)
        .map(|name| NodeName {
            name: name.to_lowercase(),
            source: NodeNameSource::Hostname,
        })
        .ok_or(NoNodeName)
}

fn pick(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

/// [`node_name`] from this process's environment and the kernel's host name.
pub fn detect(configured: Option<&str>) -> Result<NodeName, NoNodeName> {
    let environment = std::env::var(NODE_NAME_ENV).ok();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    node_name(configured, environment.as_deref(), hostname.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_then_environment_then_hostname() {
        let got = node_name(Some("cfg"), Some("env"), Some("host")).unwrap();
        assert_eq!(
            (got.name.as_str(), got.source),
            ("cfg", NodeNameSource::Config)
        );
        let got = node_name(Some("  "), Some("env"), Some("host")).unwrap();
        assert_eq!(
            (got.name.as_str(), got.source),
            ("env", NodeNameSource::Environment)
        );
        let got = node_name(None, None, Some("Worker-1\n")).unwrap();
        assert_eq!(
            (got.name.as_str(), got.source),
            ("worker-1", NodeNameSource::Hostname)
        );
        assert_eq!(node_name(None, Some(""), None), Err(NoNodeName));
    }

    #[test]
    fn detect_finds_something_here() {
        assert!(!detect(None).unwrap().name.is_empty());
    }
}
