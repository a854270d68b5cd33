//! The `Replay` gRPC service over the shards this process hosts (addressed by shard id).

use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::pb::replay_server::{Replay, ReplayServer};
use proto::pb::{self, insert_request::Kind};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use super::validate;
use crate::checkpointer::Checkpointer;
use crate::shard::{Inserted, PackedWindows, Refused, Shard};
use crate::table::StreamKey;

/// Most windows one `Sample` call may ask for.
pub const MAX_SAMPLE_COUNT: u32 = 65_536;
/// Responses queued per insert stream before the server stops reading requests.
const INSERT_RESPONSE_QUEUE: usize = 128;

#[derive(Clone)]
pub struct ReplayService {
    shards: Arc<Vec<Arc<Shard>>>,
    /// Turns true when the server shuts down: long-lived insert streams end then, or a graceful
    /// shutdown would wait for every connected actor.
    closing: watch::Receiver<bool>,
    /// The hosted shards' checkpointers, by shard id (none when the process keeps nothing on disk).
    checkpointers: Arc<Vec<(u32, Checkpointer)>>,
}

impl ReplayService {
    pub fn new(shards: Vec<Arc<Shard>>, closing: watch::Receiver<bool>) -> Self {
        Self { shards: Arc::new(shards), closing, checkpointers: Arc::default() }
    }

    /// Serves `Checkpoint` for shard `shard_id` through `checkpointer`; a shard without one
    /// answers FAILED_PRECONDITION.
    pub fn with_checkpointer(mut self, shard_id: u32, checkpointer: Checkpointer) -> Self {
        Arc::make_mut(&mut self.checkpointers).push((shard_id, checkpointer));
        self
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> ReplayServer<ReplayService> {
        ReplayServer::new(self)
    }

    fn shard(shards: &[Arc<Shard>], id: u32) -> Result<&Arc<Shard>, Refused> {
        // A coordinator hosts slots 0..N in order; a `replay` node hosts one arbitrary slot.
        shards.get(id as usize).filter(|s| s.id() == id).or_else(|| shards.iter().find(|s| s.id() == id)).ok_or_else(
            || {
                let here: Vec<u32> = shards.iter().map(|s| s.id()).collect();
                Refused::new(Code::NotFound, "shard_id", format!("no shard {id} here (this process serves {here:?})"))
            },
        )
    }

    fn shard_status(&self, id: u32) -> Result<&Arc<Shard>, Status> {
        Self::shard(&self.shards, id).map_err(refused_status)
    }
}

fn refused_status(r: Refused) -> Status {
    Status::new(r.code, format!("{}: {}", r.field, r.message))
}

fn pb_stream(key: &StreamKey) -> pb::StreamId {
    pb::StreamId { actor_id: key.actor_id, incarnation: key.incarnation, env_index: key.env_index }
}

/// Ids for insert connections: a stream stays open until the connection that opened it last ends
/// (see [`Shard::release`]).
static NEXT_WRITER: AtomicU64 = AtomicU64::new(1);

/// The streams one insert connection opened, to close when it ends.
struct Writer {
    id: u64,
    opened: Vec<(Arc<Shard>, StreamKey)>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        for (shard, key) in &self.opened {
            shard.release(self.id, key);
        }
    }
}

/// Handles one insert-stream message; never fails the stream, only the message.
async fn handle(shards: &[Arc<Shard>], writer: &mut Writer, msg: pb::InsertRequest) -> pb::InsertResponse {
    let mut response = pb::InsertResponse::default();
    let result: Result<(), Refused> = async {
        let shard = ReplayService::shard(shards, msg.shard_id)?;
        match msg.kind {
            None => Err(Refused::new(Code::InvalidArgument, "kind", "neither open nor chunk")),
            Some(Kind::Open(h)) => {
                response.stream = h.stream;
                response.seq = h.first_seq;
                let (key, spec) = validate::header(&h)?;
                shard.open(writer.id, key, spec, h.first_seq, h.first_step)?;
                if !writer.opened.iter().any(|(s, k)| s.id() == shard.id() && *k == key) {
                    writer.opened.push((Arc::clone(shard), key));
                }
                Ok(())
            }
            Some(Kind::Chunk(c)) => {
                response.stream = c.stream;
                response.seq = c.seq;
                let (key, data) = validate::chunk(shard, c).inspect_err(|_| shard.count_refusal())?;
                let inserted = shard.insert(key, data, None).await.inspect_err(|_| shard.count_refusal())?;
                response.duplicate = inserted == Inserted::Duplicate;
                Ok(())
            }
        }
    }
    .await;
    if let Err(r) = result {
        response.refusal = Some(pb::Refusal { code: r.code as i32, field: r.field.to_string(), message: r.message });
    }
    response
}

#[tonic::async_trait]
impl Replay for ReplayService {
    type InsertStream = ReceiverStream<Result<pb::InsertResponse, Status>>;

    async fn insert(
        &self,
        request: Request<Streaming<pb::InsertRequest>>,
    ) -> Result<Response<Self::InsertStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(INSERT_RESPONSE_QUEUE);
        let shards = self.shards.clone();
        let mut closing = self.closing.clone();
        tokio::spawn(async move {
            // Dropped when this task ends, however it ends: the connection's streams close then.
            let mut writer = Writer { id: NEXT_WRITER.fetch_add(1, AtomicOrdering::Relaxed), opened: Vec::new() };
            // One message at a time: while a chunk waits for the rate limiter, the next is not
            // read, so HTTP/2 flow control pushes back on the writer.
            loop {
                let msg = tokio::select! {
                    _ = closing.wait_for(|c| *c) => break,
                    msg = inbound.message() => match msg {
                        Ok(Some(msg)) => msg,
                        _ => break, // the client finished or went away
                    },
                };
                let response = tokio::select! {
                    _ = closing.wait_for(|c| *c) => break,
                    r = handle(&shards, &mut writer, msg) => r,
                };
                if tx.send(Ok(response)).await.is_err() {
                    break; // the client went away
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn sample(&self, request: Request<pb::SampleRequest>) -> Result<Response<pb::SampleResponse>, Status> {
        let req = request.into_inner();
        let shard = self.shard_status(req.shard_id)?;
        if req.count == 0 || req.count > MAX_SAMPLE_COUNT {
            return Err(Status::invalid_argument(format!(
                "count: must be in 1..={MAX_SAMPLE_COUNT}, got {}",
                req.count
            )));
        }
        let deadline = Instant::now() + Duration::from_millis(req.timeout_ms);
        let mut windows = PackedWindows::default();
        shard.sample(req.count as usize, deadline, &mut windows).await.map_err(refused_status)?;
        let out = pb::SampleResponse {
            windows: windows.len() as u32,
            window_steps: shard.window() as u32,
            obs_dim: windows.obs_dim as u32,
            action_dim: windows.action_dim as u32,
            observations: proto::pack_f32(&windows.observations),
            step_types: windows.step_types,
            actions: proto::pack_f32(&windows.actions),
            rewards: proto::pack_f32(&windows.rewards),
            streams: windows.metas.iter().map(|m| pb_stream(&m.key)).collect(),
            start_steps: windows.metas.iter().map(|m| m.start_step).collect(),
        };
        Ok(Response::new(out))
    }

    /// Snapshot under the shard's lock, write on a blocking thread, answer once `DONE` is written.
    /// A request while a checkpoint of the same shard is being written waits for it, then writes.
    async fn checkpoint(
        &self,
        request: Request<pb::CheckpointRequest>,
    ) -> Result<Response<pb::CheckpointResponse>, Status> {
        let id = request.into_inner().shard_id;
        self.shard_status(id)?;
        let (_, checkpointer) = self.checkpointers.iter().find(|(shard, _)| *shard == id).ok_or_else(|| {
            Status::failed_precondition(format!(
                "shard_id: shard {id} has no checkpoint directory (this process was started without a workdir)"
            ))
        })?;
        let written = checkpointer
            .checkpoint()
            .await
            .map_err(|e| Status::internal(format!("checkpoint of shard {id} failed: {e:#}")))?;
        Ok(Response::new(pb::CheckpointResponse {
            path: written.path.display().to_string(),
            stored_steps: written.stored_steps,
            chunks: written.chunks,
            bytes: written.bytes,
        }))
    }

    async fn stats(&self, request: Request<pb::StatsRequest>) -> Result<Response<pb::StatsResponse>, Status> {
        let shard = self.shard_status(request.into_inner().shard_id)?;
        let s = shard.stats();
        let l = s.limiter;
        Ok(Response::new(pb::StatsResponse {
            shard_id: s.shard_id,
            size_steps: s.size_steps,
            max_size_steps: s.max_size_steps,
            inserted_steps_total: s.inserted_steps,
            evicted_steps_total: s.evicted_steps,
            sampled_windows_total: s.counters.sampled_windows,
            refused_chunks_total: s.counters.refused_chunks,
            stored_bytes: s.stored_bytes,
            valid_window_starts: s.valid_window_starts,
            streams: s.streams,
            insert_blocked_seconds_total: s.counters.insert_blocked.as_secs_f64(),
            sample_blocked_seconds_total: s.counters.sample_blocked.as_secs_f64(),
            limiter: Some(pb::LimiterState {
                samples_per_insert: l.samples_per_insert,
                min_size_to_sample: l.min_size_to_sample,
                min_diff: l.min_diff,
                max_diff: l.max_diff,
                insert_count: l.insert_count,
                sample_count: l.sample_count,
                delete_count: l.delete_count,
            }),
            open_streams: s.open_streams,
            lost_steps_total: s.counters.lost_steps,
            duplicate_chunks_total: s.counters.duplicate_chunks,
            restored_from: s.restored_from.unwrap_or_default(),
            checkpoints_total: s.counters.checkpoints,
            last_checkpoint_unix_ms: s.counters.last_checkpoint_unix_ms,
        }))
    }
}
