//! Cutting each env's stream into chunks of consecutive steps. Pure: no I/O, no async.
//!
//! Every env of an actor is one stream; its rows are appended to that env's open chunk, and a
//! chunk is handed out when it holds `chunk_steps` steps (or on `flush`, at shutdown). Chunks of
//! one stream carry consecutive sequence numbers from 0, and each knows the index of its first
//! step within the stream, which a writer needs to reopen a stream after a failure.

use crate::envs::{EnvShape, Frame};

/// Consecutive steps of one env, in the layout the wire uses (row-major, f32).
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub env_index: u32,
    pub seq: u64,
    /// Index (within the stream, from 0) of the chunk's first step: the `first_step` of the
    /// stream header a writer sends when it reopens the stream at this chunk.
    pub first_step: u64,
    pub steps: u32,
    pub observations: Vec<f32>,
    pub step_types: Vec<u8>,
    pub actions: Vec<f32>,
    pub rewards: Vec<f32>,
}

impl Chunk {
    fn with_capacity(env_index: u32, seq: u64, first_step: u64, steps: usize, shape: &EnvShape) -> Chunk {
        Chunk {
            env_index,
            seq,
            first_step,
            steps: 0,
            observations: Vec::with_capacity(steps * shape.obs_dim),
            step_types: Vec::with_capacity(steps),
            actions: Vec::with_capacity(steps * shape.action_dim),
            rewards: Vec::with_capacity(if shape.has_rewards { steps } else { 0 }),
        }
    }

    /// The empty chunk that follows this one in its stream.
    fn successor(&self, steps: usize, shape: &EnvShape) -> Chunk {
        Chunk::with_capacity(self.env_index, self.seq + 1, self.first_step + u64::from(self.steps), steps, shape)
    }
}

pub struct Chunker {
    chunk_steps: usize,
    shape: EnvShape,
    open: Vec<Chunk>,
}

impl Chunker {
    pub fn new(num_envs: usize, shape: EnvShape, chunk_steps: usize) -> Chunker {
        assert!(chunk_steps > 0);
        let open = (0..num_envs).map(|e| Chunk::with_capacity(e as u32, 0, 0, chunk_steps, &shape)).collect();
        Chunker { chunk_steps, shape, open }
    }

    /// Appends every env's row of `frame`; each chunk that fills is passed to `emit`.
    pub fn push(&mut self, frame: &Frame, mut emit: impl FnMut(Chunk)) {
        let (s, a) = (self.shape.obs_dim, self.shape.action_dim);
        for (e, chunk) in self.open.iter_mut().enumerate() {
            chunk.observations.extend_from_slice(&frame.observations[e * s..(e + 1) * s]);
            chunk.step_types.push(frame.step_types[e] as u8);
            chunk.actions.extend_from_slice(&frame.actions[e * a..(e + 1) * a]);
            if self.shape.has_rewards {
                chunk.rewards.push(frame.rewards[e]);
            }
            chunk.steps += 1;
            if chunk.steps as usize == self.chunk_steps {
                let next = chunk.successor(self.chunk_steps, &self.shape);
                emit(std::mem::replace(chunk, next));
            }
        }
    }

    /// Hands out every non-empty open chunk (at shutdown).
    pub fn flush(&mut self, mut emit: impl FnMut(Chunk)) {
        for chunk in &mut self.open {
            if chunk.steps > 0 {
                let next = chunk.successor(self.chunk_steps, &self.shape);
                emit(std::mem::replace(chunk, next));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envs::{EnvConfig, EnvId, VecEnv};

    #[test]
    fn chunks_are_consecutive_rows_of_one_env() {
        let mut env = VecEnv::new(&EnvConfig::defaults(EnvId::Pendulum), 0, 0, 3, None).unwrap();
        let mut frame = env.new_frame();
        let mut chunker = Chunker::new(3, env.shape(), 4);
        let mut rows: Vec<Vec<f32>> = vec![Vec::new(); 3];
        let mut out = Vec::new();
        for _ in 0..10 {
            env.step(&mut frame);
            for (e, row) in rows.iter_mut().enumerate() {
                row.extend_from_slice(&frame.observations[e * 3..(e + 1) * 3]);
            }
            chunker.push(&frame, |c| out.push(c));
        }
        assert_eq!(out.len(), 6, "two full chunks per env");
        chunker.flush(|c| out.push(c));
        assert_eq!(out.len(), 9);
        for e in 0..3u32 {
            let mine: Vec<&Chunk> = out.iter().filter(|c| c.env_index == e).collect();
            assert_eq!(mine.iter().map(|c| c.seq).collect::<Vec<_>>(), [0, 1, 2]);
            assert_eq!(mine.iter().map(|c| c.steps).collect::<Vec<_>>(), [4, 4, 2]);
            assert_eq!(mine.iter().map(|c| c.first_step).collect::<Vec<_>>(), [0, 4, 8]);
            let joined: Vec<f32> = mine.iter().flat_map(|c| c.observations.iter().copied()).collect();
            assert_eq!(joined, rows[e as usize]);
            assert!(mine.iter().all(|c| c.actions.len() == c.steps as usize && c.rewards.len() == c.steps as usize));
            assert_eq!(mine[0].step_types[0], 0, "a stream starts with FIRST");
        }
        let mut again = Vec::new();
        chunker.flush(|c| again.push(c));
        assert!(again.is_empty());
    }
}
