//! Wire → domain at the edge of the replay service: every check a chunk must pass before it can
//! reach the table. A refused chunk names its field; nothing malformed is ever stored.

use proto::{pb, unpack_f32, FieldViolation};
use tonic::Code;

use crate::shard::{Refused, Shard};
use crate::table::{ChunkData, StreamKey, StreamSpec};

/// A chunk may hold at most this many steps (a 64 MiB message of 50-float steps is ≈ 330k).
pub const MAX_CHUNK_STEPS: u32 = 65_536;
/// An observation may have at most this many floats.
pub const MAX_OBS_DIM: u32 = 1 << 16;

pub fn stream_key(field: &'static str, id: Option<&pb::StreamId>) -> Result<StreamKey, Refused> {
    let id = id.ok_or_else(|| Refused::new(Code::InvalidArgument, field, "missing"))?;
    Ok(StreamKey { actor_id: id.actor_id, incarnation: id.incarnation, env_index: id.env_index })
}

pub fn header(h: &pb::StreamHeader) -> Result<(StreamKey, StreamSpec), Refused> {
    let key = stream_key("open.stream", h.stream.as_ref())?;
    if h.obs_dim == 0 || h.obs_dim > MAX_OBS_DIM {
        return Err(Refused::new(
            Code::InvalidArgument,
            "open.obs_dim",
            format!("must be in 1..={MAX_OBS_DIM}, got {}", h.obs_dim),
        ));
    }
    if h.action_dim > MAX_OBS_DIM {
        return Err(Refused::new(Code::InvalidArgument, "open.action_dim", format!("must be at most {MAX_OBS_DIM}")));
    }
    Ok((key, StreamSpec { obs_dim: h.obs_dim as usize, action_dim: h.action_dim as usize, has_rewards: h.has_rewards }))
}

fn violation(field: &'static str) -> impl Fn(FieldViolation) -> Refused {
    move |v| Refused::new(Code::InvalidArgument, field, v.description)
}

/// Checks a chunk against its stream's declared shape and turns it into table data. The sequence
/// number is checked again by the shard under its lock. A chunk below the next sequence number (a
/// resend) passes here like any other and is then acknowledged by the shard as a duplicate.
pub fn chunk(shard: &Shard, c: pb::Chunk) -> Result<(StreamKey, ChunkData), Refused> {
    let key = stream_key("chunk.stream", c.stream.as_ref())?;
    let cursor = shard
        .cursor(&key)
        .ok_or_else(|| Refused::new(Code::FailedPrecondition, "chunk.stream", "stream was never opened"))?;
    if c.seq > cursor.next_seq {
        return Err(Refused::new(
            Code::OutOfRange,
            "chunk.seq",
            format!("sequence gap: expected {}, got {}", cursor.next_seq, c.seq),
        ));
    }
    if c.steps == 0 || c.steps > MAX_CHUNK_STEPS {
        return Err(Refused::new(
            Code::InvalidArgument,
            "chunk.steps",
            format!("must be in 1..={MAX_CHUNK_STEPS}, got {}", c.steps),
        ));
    }
    let t = c.steps as usize;
    let spec = cursor.spec;
    let observations =
        unpack_f32("chunk.observations", &c.observations, t * spec.obs_dim).map_err(violation("chunk.observations"))?;
    if c.step_types.len() != t {
        return Err(Refused::new(
            Code::InvalidArgument,
            "chunk.step_types",
            format!("expected {t} step types, got {}", c.step_types.len()),
        ));
    }
    if let Some(i) = c.step_types.iter().position(|&s| s > 2) {
        return Err(Refused::new(
            Code::InvalidArgument,
            "chunk.step_types",
            format!("step {i} has unknown step type {} (0 FIRST, 1 MID, 2 LAST)", c.step_types[i]),
        ));
    }
    let actions = unpack_f32("chunk.actions", &c.actions, t * spec.action_dim).map_err(violation("chunk.actions"))?;
    let rewards = unpack_f32("chunk.rewards", &c.rewards, if spec.has_rewards { t } else { 0 })
        .map_err(violation("chunk.rewards"))?;
    Ok((key, ChunkData { first_seq: c.seq, steps: t, observations, step_types: c.step_types, actions, rewards }))
}
