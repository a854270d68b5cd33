//! Registered nodes and their leases.
//!
//! A node registers with its role and advertised address and holds a lease it renews by heartbeat.
//! Time is passed in, never read here, so lease expiry is tested without waiting.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What a node does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    Actor,
    Replay,
    Learner,
    Evaluator,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub id: u64,
    pub role: NodeRole,
    pub advertise: String,
    pub actor_id: Option<u64>,
    pub incarnation: u64,
    pub expires: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    #[error("node_id: no node {0} is registered (its lease may have expired); register again")]
    UnknownNode(u64),
}

#[derive(Debug)]
pub struct Membership {
    lease: Duration,
    next_id: u64,
    nodes: BTreeMap<u64, Node>,
}

impl Membership {
    pub fn new(lease: Duration) -> Self {
        Self::with_first_id(lease, 1)
    }

    /// Ids start at `first`. A coordinator starts from a random point, so that after a restart a
    /// node's old id is unknown (its heartbeat gets NOT_FOUND and it registers again) instead of
    /// silently naming another node.
    pub fn with_first_id(lease: Duration, first: u64) -> Self {
        Self { lease, next_id: first.max(1), nodes: BTreeMap::new() }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Registers a node; a re-registration of the same actor incarnation replaces the old entry.
    pub fn register(
        &mut self,
        role: NodeRole,
        advertise: String,
        actor_id: Option<u64>,
        incarnation: u64,
        now: Instant,
    ) -> u64 {
        if let Some(actor) = actor_id {
            self.nodes.retain(|_, n| !(n.actor_id == Some(actor) && n.incarnation == incarnation));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.nodes.insert(id, Node { id, role, advertise, actor_id, incarnation, expires: now + self.lease });
        id
    }

    /// Renews a lease.
    pub fn heartbeat(&mut self, id: u64, now: Instant) -> Result<(), MembershipError> {
        let lease = self.lease;
        let node = self.nodes.get_mut(&id).ok_or(MembershipError::UnknownNode(id))?;
        node.expires = now + lease;
        Ok(())
    }

    /// Removes a node at once (a replay node that restarted at the same address replaces its
    /// previous registration without waiting for the lease to run out).
    pub fn remove(&mut self, id: u64) -> Option<Node> {
        self.nodes.remove(&id)
    }

    pub fn get(&self, id: u64) -> Option<&Node> {
        self.nodes.get(&id)
    }

    /// Removes and returns the nodes whose lease ran out before `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<Node> {
        let expired: Vec<u64> = self.nodes.values().filter(|n| n.expires < now).map(|n| n.id).collect();
        expired.into_iter().filter_map(|id| self.nodes.remove(&id)).collect()
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_expire_unless_renewed() {
        let t0 = Instant::now();
        let mut m = Membership::new(Duration::from_secs(10));
        let a = m.register(NodeRole::Actor, String::new(), Some(1), 7, t0);
        let b = m.register(NodeRole::Replay, "h:1".into(), None, 0, t0);
        m.heartbeat(a, t0 + Duration::from_secs(8)).unwrap();
        assert!(m.expire(t0 + Duration::from_secs(10)).is_empty(), "exactly at the lease: still alive");
        let gone = m.expire(t0 + Duration::from_secs(11));
        assert_eq!(gone.iter().map(|n| n.id).collect::<Vec<_>>(), [b]);
        assert_eq!(m.heartbeat(b, t0), Err(MembershipError::UnknownNode(b)));
        assert!(m.expire(t0 + Duration::from_secs(18)).is_empty(), "renewed at 8 s: alive until 18 s");
        assert_eq!(m.expire(t0 + Duration::from_secs(18) + Duration::from_millis(1)).len(), 1);
        assert!(m.is_empty());
    }

    #[test]
    fn re_registering_an_actor_incarnation_replaces_it() {
        let t0 = Instant::now();
        let mut m = Membership::new(Duration::from_secs(10));
        m.register(NodeRole::Actor, String::new(), Some(1), 7, t0);
        m.register(NodeRole::Actor, String::new(), Some(1), 7, t0);
        m.register(NodeRole::Actor, String::new(), Some(1), 8, t0);
        assert_eq!(m.len(), 2);
    }
}
