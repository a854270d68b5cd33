//! The shard map: which node serves each of the experiment's K shard slots.
//!
//! K is fixed per experiment (a stream's shard is `hash(stream id) mod K`, so K can never change
//! under running actors). A slot is served by the coordinator itself (in-process shards share its
//! port), by a registered `replay` node, or by nobody: a node whose lease expires leaves the map,
//! and its slot stays unserved until a node registers for it again (normally the same shard
//! restarted from its checkpoint, which asks for its old slot). Every change bumps the version;
//! clients re-fetch the map when a call to a shard fails.

use std::fmt;

/// Who serves one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Server {
    /// An in-process shard of the coordinator, at the coordinator's own address.
    Hosted(String),
    /// A standalone `replay` node: its id and advertised address.
    Node { id: u64, address: String },
    /// Nobody, for now.
    Unserved,
}

impl Server {
    /// The address clients should call; `None` while unserved.
    pub fn address(&self) -> Option<&str> {
        match self {
            Server::Hosted(a) | Server::Node { address: a, .. } => Some(a),
            Server::Unserved => None,
        }
    }

    /// The serving node's id (0 for hosted and unserved slots, as on the wire).
    pub fn node_id(&self) -> u64 {
        match self {
            Server::Node { id, .. } => *id,
            _ => 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardMapError {
    #[error("shard_id: {wanted} is not a slot of this experiment (it has {slots} slots: 0..{slots})")]
    NoSuchSlot { wanted: u32, slots: u32 },
    #[error("shard_id: slot {0} is served by the coordinator itself (start it with fewer --hosted-shards)")]
    Hosted(u32),
    #[error("shard_id: slot {slot} is already served by node {node} at {address}")]
    Taken { slot: u32, node: u64, address: String },
    #[error("all {0} shard slots are served; this experiment has no room for another replay node")]
    Full(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    version: u64,
    slots: Vec<Server>,
}

impl ShardMap {
    /// `num_slots` slots, the first `hosted` of them served in-process at `advertise`.
    pub fn new(num_slots: u32, hosted: u32, advertise: &str) -> ShardMap {
        assert!(hosted <= num_slots, "cannot host more shards than there are slots");
        let slots = (0..num_slots)
            .map(|i| if i < hosted { Server::Hosted(advertise.to_string()) } else { Server::Unserved })
            .collect();
        ShardMap { version: 1, slots }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn slots(&self) -> &[Server] {
        &self.slots
    }

    pub fn num_slots(&self) -> u32 {
        self.slots.len() as u32
    }

    /// Gives node `id` (reachable at `address`) a slot: `wanted` if it asks for one (a restarted
    /// shard asks for the slot its checkpoint belongs to), else the lowest unserved slot.
    ///
    /// A node may take over a slot its own earlier registration held (re-registration after a
    /// coordinator restart or a lease hiccup), which the caller signals by releasing it first.
    pub fn assign(&mut self, id: u64, address: &str, wanted: Option<u32>) -> Result<u32, ShardMapError> {
        let slot = match wanted {
            Some(w) => {
                let server = self
                    .slots
                    .get(w as usize)
                    .ok_or(ShardMapError::NoSuchSlot { wanted: w, slots: self.num_slots() })?;
                match server {
                    Server::Hosted(_) => return Err(ShardMapError::Hosted(w)),
                    Server::Node { id: other, address } => {
                        return Err(ShardMapError::Taken { slot: w, node: *other, address: address.clone() })
                    }
                    Server::Unserved => w,
                }
            }
            None => {
                self.slots.iter().position(|s| *s == Server::Unserved).ok_or(ShardMapError::Full(self.num_slots()))?
                    as u32
            }
        };
        self.slots[slot as usize] = Server::Node { id, address: address.to_string() };
        self.version += 1;
        Ok(slot)
    }

    /// Frees every slot node `id` serves (its lease expired, or it registered again); returns them.
    pub fn release(&mut self, id: u64) -> Vec<u32> {
        let mut freed = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.node_id() == id && id != 0 {
                *s = Server::Unserved;
                freed.push(i as u32);
            }
        }
        if !freed.is_empty() {
            self.version += 1;
        }
        freed
    }

    /// Slots nobody serves.
    pub fn unserved(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots.iter().enumerate().filter(|(_, s)| **s == Server::Unserved).map(|(i, _)| i as u32)
    }
}

impl fmt::Display for ShardMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard map v{}:", self.version)?;
        for (i, s) in self.slots.iter().enumerate() {
            match s {
                Server::Hosted(a) => write!(f, " {i}=hosted@{a}")?,
                Server::Node { id, address } => write!(f, " {i}=node{id}@{address}")?,
                Server::Unserved => write!(f, " {i}=unserved")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_take_free_slots_and_leave_them_on_release() {
        let mut m = ShardMap::new(3, 1, "c:1");
        assert_eq!(m.version(), 1);
        assert_eq!(m.slots()[0].address(), Some("c:1"));
        assert_eq!(m.unserved().collect::<Vec<_>>(), [1, 2]);
        assert_eq!(m.assign(7, "r:7", None), Ok(1));
        assert_eq!(m.assign(8, "r:8", None), Ok(2));
        assert_eq!(m.version(), 3);
        assert_eq!(m.assign(9, "r:9", None), Err(ShardMapError::Full(3)));
        assert_eq!(m.release(7), [1]);
        assert_eq!(m.version(), 4);
        assert!(m.release(7).is_empty(), "releasing twice changes nothing");
        assert_eq!(m.version(), 4);
        assert_eq!(m.slots()[1], Server::Unserved);
        assert_eq!(m.slots()[2].node_id(), 8);
    }

    #[test]
    fn a_wanted_slot_must_exist_be_free_and_not_hosted() {
        let mut m = ShardMap::new(3, 1, "c:1");
        assert_eq!(m.assign(5, "r:5", Some(2)), Ok(2));
        assert_eq!(m.assign(6, "r:6", Some(3)), Err(ShardMapError::NoSuchSlot { wanted: 3, slots: 3 }));
        assert_eq!(m.assign(6, "r:6", Some(0)), Err(ShardMapError::Hosted(0)));
        let taken = m.assign(6, "r:6", Some(2)).unwrap_err();
        assert!(taken.to_string().contains("node 5 at r:5"), "{taken}");
        // The same node registering again releases its slot first, then gets it back.
        m.release(5);
        assert_eq!(m.assign(5, "r:5b", Some(2)), Ok(2));
        assert_eq!(m.slots()[2].address(), Some("r:5b"));
    }

    #[test]
    fn hosted_slots_are_never_released() {
        let mut m = ShardMap::new(2, 2, "c:1");
        assert!(m.release(0).is_empty());
        assert_eq!(m.unserved().count(), 0);
    }
}
