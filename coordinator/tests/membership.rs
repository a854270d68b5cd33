//! Membership and the shard map over RPC: replay nodes take slots, bad registrations are refused
//! with the right code naming the field, an expired lease takes a node out of the map (bumping
//! its version), and a node restarted at the same address takes its slot back at once.

use std::time::{Duration, Instant};

use common::config::ConfigDoc;
use coordinator::experiment::Experiment;
use coordinator::server::{serve, ServeOptions};
use proto::pb::coordinator_client::CoordinatorClient;
use proto::pb::{self, Role};
use tonic::transport::Channel;
use tonic::Code;

/// A coordinator with 3 slots, 1 hosted, and 1 s leases.
async fn start() -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let config =
        "[experiment]\nenv = \"pendulum\"\n[replay]\nshards = 3\nlease_seconds = 1.0\nheartbeat_seconds = 0.25\n";
    let experiment = Experiment::new(ConfigDoc::parse(config, "test").unwrap()).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = ServeOptions { advertise: addr.clone(), hosted_shards: Some(1), workdir: None };
    tokio::spawn(serve(listener, options, experiment, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

async fn client(addr: &str) -> CoordinatorClient<Channel> {
    CoordinatorClient::new(Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap())
}

fn replay(advertise: &str, shard_id: Option<u32>) -> pb::RegisterRequest {
    pb::RegisterRequest { role: Role::Replay as i32, advertise: advertise.into(), shard_id, ..Default::default() }
}

async fn map(c: &mut CoordinatorClient<Channel>) -> pb::ShardMap {
    c.get_shard_map(pb::GetShardMapRequest {}).await.unwrap().into_inner()
}

#[tokio::test]
async fn replay_nodes_take_slots_and_leave_the_map_when_their_lease_expires() {
    let (addr, _stop) = start().await;
    let mut c = client(&addr).await;
    let m = map(&mut c).await;
    assert_eq!(m.slots.len(), 3);
    assert_eq!(m.slots[0].address, addr, "slot 0 is hosted");
    assert!(m.slots[1].address.is_empty() && m.slots[2].address.is_empty());

    let err = c.register(replay("", None)).await.unwrap_err();
    assert!(err.code() == Code::InvalidArgument && err.message().contains("advertise"), "{err:?}");
    let err = c.register(replay("r:1", Some(0))).await.unwrap_err();
    assert!(err.code() == Code::FailedPrecondition && err.message().contains("shard_id"), "{err:?}");
    let err = c.register(replay("r:1", Some(7))).await.unwrap_err();
    assert!(err.code() == Code::InvalidArgument && err.message().contains("shard_id"), "{err:?}");

    let a = c.register(replay("r:1", Some(2))).await.unwrap().into_inner();
    assert_eq!((a.shard_id, a.num_shards), (2, 3));
    let b = c.register(replay("r:2", None)).await.unwrap().into_inner();
    assert_eq!(b.shard_id, 1, "the lowest free slot");
    let err = c.register(replay("r:3", None)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    let err = c.register(replay("r:3", Some(2))).await.unwrap_err();
    assert!(err.code() == Code::AlreadyExists && err.message().contains("r:1"), "{err:?}");
    let m = map(&mut c).await;
    assert_eq!((m.slots[1].address.as_str(), m.slots[2].address.as_str()), ("r:2", "r:1"));
    assert_eq!((m.slots[1].node_id, m.slots[2].node_id), (b.node_id, a.node_id));

    // The node at r:1 restarts (same address): it takes slot 2 back without waiting for the lease.
    let a2 = c.register(replay("r:1", Some(2))).await.unwrap().into_inner();
    assert_eq!(a2.shard_id, 2);
    assert_ne!(a2.node_id, a.node_id);
    let err = c.heartbeat(pb::HeartbeatRequest { node_id: a.node_id }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "the old registration is gone");

    // Only a2 heartbeats: b's lease (1 s) runs out and slot 1 becomes unserved.
    let version = map(&mut c).await.version;
    let start = Instant::now();
    loop {
        c.heartbeat(pb::HeartbeatRequest { node_id: a2.node_id }).await.unwrap();
        let m = map(&mut c).await;
        if m.slots[1].address.is_empty() {
            assert!(m.version > version, "a change of the map bumps its version");
            assert_eq!(m.slots[2].address, "r:1", "the live node keeps its slot");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "b's lease never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let err = c.heartbeat(pb::HeartbeatRequest { node_id: b.node_id }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Another node may now take the freed slot.
    assert_eq!(c.register(replay("r:3", None)).await.unwrap().into_inner().shard_id, 1);
}
