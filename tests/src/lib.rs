//! Test support shared by the workspace's integration tests.
//!
//! - [`apiserver`]: a small stateful Kubernetes API server over real HTTP on loopback, for
//!   testing kube-rs code without a cluster.

pub mod apiserver;
