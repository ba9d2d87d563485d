//! The in-kernel network quarantine: the fastest containment step, applied before any API call.
//!
//! A cgroup id in the `QUARANTINE` map, or any of its descendants, can no longer connect
//! (`EPERM` at once, from the `connect4`/`connect6` programs) nor send or receive packets (dropped
//! by the `cgroup_skb` egress and ingress programs), whatever the CNI does with NetworkPolicy.
//! Quarantining a pod's cgroup covers every container in it, restarted ones included.
//!
//! Pinned (`sensors.pin_dir`, see [`crate::sensors::pin`]), the map and its programs outlive the
//! daemon: the next start adopts the map with what it holds.

use std::collections::BTreeSet;

use aya::maps::{Array, HashMap, MapData, MapError};
use detector_common::{MAP_QUARANTINE, MAP_QUARANTINE_ACTIVE};

/// Failure to change the quarantine.
#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    /// The cgroup is one the daemon must never cut off: the root, or the daemon's own.
    #[error("refusing to quarantine cgroup {cgroup_id}: {why}")]
    Protected {
        /// The cgroup id.
        cgroup_id: u64,
        /// Why it is protected.
        why: &'static str,
    },
    /// The kernel map refused the update (full, or the map is gone).
    #[error("cannot update the {map} map: {source}")]
    Map {
        /// Which map.
        map: &'static str,
        /// What went wrong.
        #[source]
        source: MapError,
    },
}

/// Handle on the quarantine maps.
pub struct KernelQuarantine {
    map: HashMap<MapData, u64, u32>,
    active: Array<MapData, u32>,
    blocked: BTreeSet<u64>,
    own_cgroup: Option<u64>,
}

/// The cgroup2 root's id: quarantining it would cut off the whole node.
const ROOT_CGROUP_ID: u64 = 1;

impl KernelQuarantine {
    pub(crate) fn new(
        map: HashMap<MapData, u64, u32>,
        active: Array<MapData, u32>,
        own_cgroup: Option<u64>,
    ) -> Self {
        // A map adopted from the pin directory holds what an earlier run blocked.
        let blocked = map.keys().filter_map(Result::ok).collect();
        Self {
            map,
            active,
            blocked,
            own_cgroup,
        }
    }

    /// Cuts the cgroup (and its descendants) off the network. Idempotent.
    pub fn block(&mut self, cgroup_id: u64) -> Result<(), QuarantineError> {
        if cgroup_id == ROOT_CGROUP_ID {
            return Err(QuarantineError::Protected {
                cgroup_id,
                why: "it is the cgroup2 root",
            });
        }
        if self.own_cgroup == Some(cgroup_id) {
            return Err(QuarantineError::Protected {
                cgroup_id,
                why: "it is the daemon's own cgroup",
            });
        }
        self.map
            .insert(cgroup_id, 1, 0)
            .map_err(|source| QuarantineError::Map {
                map: MAP_QUARANTINE,
                source,
            })?;
        self.blocked.insert(cgroup_id);
        self.publish_count()
    }

    /// Lifts the quarantine of the cgroup. Idempotent.
    pub fn release(&mut self, cgroup_id: u64) -> Result<(), QuarantineError> {
        match self.map.remove(&cgroup_id) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(source) => {
                return Err(QuarantineError::Map {
                    map: MAP_QUARANTINE,
                    source,
                });
            }
        }
        self.blocked.remove(&cgroup_id);
        self.publish_count()
    }

    /// The quarantined cgroup ids.
    pub fn blocked(&self) -> &BTreeSet<u64> {
        &self.blocked
    }

    fn publish_count(&mut self) -> Result<(), QuarantineError> {
        self.active
            .set(0, self.blocked.len() as u32, 0)
            .map_err(|source| QuarantineError::Map {
                map: MAP_QUARANTINE_ACTIVE,
                source,
            })
    }
}
