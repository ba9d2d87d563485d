//! The detector daemon: loads the kernel sensors, decodes their records into typed events and
//! writes them out.
//!
//! The core is sans-IO: [`decode`], [`config`] validation and the [`cgroup`] and
//! [`sensors::path_class_entries`] helpers are pure functions tested without root. [`sensors`]
//! and [`pipeline`] are the parts that touch the kernel.

pub mod attribution;
pub mod btf;
pub mod cgroup;
pub mod clock;
pub mod config;
pub mod contain;
pub mod daemon;
pub mod decode;
pub mod event;
pub mod evidence;
pub mod export;
pub mod metrics;
pub mod output;
pub mod paths;
pub mod pipeline;
pub mod quarantine;
pub mod respond;
pub mod rules;
pub mod score;
pub mod sensors;
