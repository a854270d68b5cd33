//! Sending one shard's chunks over one bidirectional `Insert` stream, with a bounded number of
//! unacknowledged chunks in flight.
//!
//! The writer takes a chunk from its queue only while fewer than `max_in_flight` are
//! unacknowledged, so a slow shard or a blocking rate limiter stalls the queue, the queue's
//! bounded capacity stalls the simulation thread, and nothing buffers without bound.

use std::collections::BTreeMap;
use std::time::Duration;

use proto::pb::replay_client::ReplayClient;
use proto::pb::{self, insert_request::Kind};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::chunker::Chunk;

/// What a writer did, for the shutdown log and the tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriterReport {
    pub shard_id: u32,
    pub acked_chunks: u64,
    pub acked_steps: u64,
    pub refused_chunks: u64,
    /// (env index, seq) of chunks sent but never acknowledged.
    pub unacknowledged: Vec<(u32, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("shard {shard}: {status}")]
    Rpc { shard: u32, status: tonic::Status },
    #[error("shard {shard} refused stream {env_index}: {field}: {message}")]
    OpenRefused { shard: u32, env_index: u32, field: String, message: String },
    #[error("shard {shard} closed the insert stream with {in_flight} chunks unacknowledged")]
    Closed { shard: u32, in_flight: usize },
}

pub struct ShardWriter {
    pub shard_id: u32,
    pub actor_id: u64,
    pub incarnation: u64,
    pub env_id: String,
    pub obs_dim: u32,
    pub action_dim: u32,
    pub has_rewards: bool,
    pub max_in_flight: usize,
}

impl ShardWriter {
    fn stream_id(&self, env_index: u32) -> pb::StreamId {
        pb::StreamId { actor_id: self.actor_id, incarnation: self.incarnation, env_index }
    }

    fn to_request(&self, c: Chunk) -> pb::InsertRequest {
        pb::InsertRequest {
            shard_id: self.shard_id,
            kind: Some(Kind::Chunk(pb::Chunk {
                stream: Some(self.stream_id(c.env_index)),
                seq: c.seq,
                steps: c.steps,
                observations: proto::pack_f32(&c.observations),
                step_types: c.step_types,
                actions: proto::pack_f32(&c.actions),
                rewards: proto::pack_f32(&c.rewards),
            })),
        }
    }

    /// Opens `envs`' streams, then sends every chunk from `chunks` until it closes and every
    /// chunk sent is acknowledged, or until `drain` has passed after it closed.
    pub async fn run(
        self,
        mut client: ReplayClient<Channel>,
        envs: Vec<u32>,
        mut chunks: mpsc::Receiver<Chunk>,
        drain: Duration,
    ) -> Result<WriterReport, WriterError> {
        let shard = self.shard_id;
        let (tx, rx) = mpsc::channel::<pb::InsertRequest>(self.max_in_flight + envs.len());
        for &e in &envs {
            let open = pb::InsertRequest {
                shard_id: shard,
                kind: Some(Kind::Open(pb::StreamHeader {
                    stream: Some(self.stream_id(e)),
                    obs_dim: self.obs_dim,
                    action_dim: self.action_dim,
                    has_rewards: self.has_rewards,
                    first_seq: 0,
                    env_id: self.env_id.clone(),
                })),
            };
            tx.send(open).await.expect("the receiver is alive");
        }
        let mut responses = client
            .insert(ReceiverStream::new(rx))
            .await
            .map_err(|status| WriterError::Rpc { shard, status })?
            .into_inner();
        let mut report = WriterReport { shard_id: shard, ..Default::default() };
        let mut opens_pending = envs.len();
        // (env, seq) → steps of every chunk sent and not yet acknowledged.
        let mut in_flight: BTreeMap<(u32, u64), u32> = BTreeMap::new();
        let mut input_open = true;
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        let mut tx = Some(tx);
        loop {
            if !input_open && in_flight.is_empty() && opens_pending == 0 {
                break;
            }
            let can_send = input_open && opens_pending == 0 && in_flight.len() < self.max_in_flight;
            let deadline =
                drain_deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600 * 24));
            tokio::select! {
                next = chunks.recv(), if can_send => match next {
                    Some(c) => {
                        in_flight.insert((c.env_index, c.seq), c.steps);
                        metrics::counter!("dsm_actor_chunks_sent_total").increment(1);
                        let request = self.to_request(c);
                        if let Some(t) = &tx {
                            if t.send(request).await.is_err() {
                                return Err(WriterError::Closed { shard, in_flight: in_flight.len() });
                            }
                        }
                    }
                    None => {
                        input_open = false;
                        drain_deadline = Some(tokio::time::Instant::now() + drain);
                    }
                },
                msg = responses.message() => match msg {
                    Ok(Some(r)) => {
                        let env_index = r.stream.as_ref().map(|s| s.env_index).unwrap_or(u32::MAX);
                        if opens_pending > 0 {
                            // Opens were sent first, and responses come in request order.
                            opens_pending -= 1;
                            if let Some(refusal) = r.refusal {
                                return Err(WriterError::OpenRefused { shard, env_index, field: refusal.field, message: refusal.message });
                            }
                            continue;
                        }
                        let steps = in_flight.remove(&(env_index, r.seq)).unwrap_or(0);
                        match r.refusal {
                            None => {
                                report.acked_chunks += 1;
                                report.acked_steps += u64::from(steps);
                                metrics::counter!("dsm_actor_acked_steps_total").increment(u64::from(steps));
                            }
                            Some(refusal) => {
                                report.refused_chunks += 1;
                                metrics::counter!("dsm_actor_refused_chunks_total").increment(1);
                                if report.refused_chunks <= 5 {
                                    eprintln!("shard {shard} refused chunk {} of env {env_index}: {}: {}", r.seq, refusal.field, refusal.message);
                                }
                            }
                        }
                    }
                    Ok(None) => return Err(WriterError::Closed { shard, in_flight: in_flight.len() }),
                    Err(status) => return Err(WriterError::Rpc { shard, status }),
                },
                _ = tokio::time::sleep_until(deadline), if drain_deadline.is_some() => break,
            }
            if !input_open && in_flight.is_empty() {
                // Everything acknowledged: close our half so the server ends the stream.
                tx = None;
            }
        }
        report.unacknowledged = in_flight.into_keys().collect();
        Ok(report)
    }
}
