//! Sending one shard's chunks over one bidirectional `Insert` stream, with a bounded number of
//! unacknowledged chunks in flight, and recovering when that stream breaks.
//!
//! The writer takes a chunk from its queue only while fewer than `max_in_flight` are
//! unacknowledged, so a slow shard or a blocking rate limiter stalls the queue, the queue's
//! bounded capacity stalls the simulation thread, and nothing buffers without bound.
//!
//! It is a small state machine:
//!
//! - **Down** (at start, and after a failure): one connection attempt is under way: wait the
//!   backoff delay (none at start), ask the [`ShardResolver`] for the slot's address (re-fetching
//!   the shard map after a failure), open the `Insert` stream and queue on it, in order, a
//!   `StreamHeader` per env (at its oldest unacknowledged chunk, or its next new one) and every
//!   unacknowledged chunk. A failed attempt starts the next one, with a doubled, jittered delay
//!   (100 ms up to 2 s). Nothing is read from the queue meanwhile: the simulation waits.
//! - **Up**: chunks go out while fewer than `max_in_flight` are unacknowledged; each response
//!   settles one of them (an ack, a duplicate ack — the shard had stored it before the stream
//!   broke — or a refusal). A transport error, the server ending the stream, or a node that does
//!   not serve this slot any more (a stale map) sends it back to Down, keeping every
//!   unacknowledged chunk for the resend.
//! - **Draining** (after shutdown or the end of the simulation) is either state with a deadline:
//!   the writer stops when its queue is closed and every chunk is acknowledged, or at the deadline,
//!   reporting what was left.
//!
//! Sequence numbers make the resend idempotent: the shard answers chunks it already holds as
//! duplicates and stores them once, so the store has no duplicates and no gaps among acknowledged
//! chunks. An outage is logged once when it starts and once when it ends, not per attempt.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use client::backoff::Backoff;
use proto::pb::{self, insert_request::Kind};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::chunker::Chunk;
use super::resolver::ShardResolver;

/// First delay before reconnecting; it doubles per failed attempt.
const RECONNECT_BASE: Duration = Duration::from_millis(100);
/// Longest delay between reconnection attempts: short, because the simulation waits meanwhile.
const RECONNECT_CAP: Duration = Duration::from_secs(2);
/// Deadline for opening the `Insert` stream (the stream itself is long-lived and has none; HTTP/2
/// keepalive detects a dead peer, see [`client::connect::endpoint`]).
const OPEN_DEADLINE: Duration = Duration::from_secs(10);

/// What a writer did, for the shutdown log and the tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriterReport {
    pub shard_id: u32,
    /// Chunks acknowledged, duplicate acknowledgements included.
    pub acked_chunks: u64,
    /// Steps of the acknowledged chunks.
    pub acked_steps: u64,
    /// Acknowledgements of chunks the shard already held (a resend after a lost acknowledgement).
    pub duplicate_acks: u64,
    pub refused_chunks: u64,
    /// Chunks sent again after a reconnection.
    pub resent_chunks: u64,
    /// Insert streams re-established after a failure.
    pub reconnects: u64,
    /// (env index, seq) of chunks sent or queued but never acknowledged.
    pub unacknowledged: Vec<(u32, u64)>,
}

/// Only a refused stream header ends a writer early: it means the actor and the shard disagree
/// about the stream (a bug), and resending would be refused again. Everything else is retried.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("shard {shard} refused stream {env_index}: {field}: {message}")]
    OpenRefused { shard: u32, env_index: u32, field: String, message: String },
}

/// Where a writer reopens one stream: the `first_seq` and `first_step` of its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReopenPoint {
    pub env_index: u32,
    pub first_seq: u64,
    pub first_step: u64,
}

/// The chunks a writer has sent and not yet seen settled, and where each of its streams goes on:
/// everything a reconnection needs. Pure; at most `max_in_flight` chunks.
#[derive(Debug, Clone, Default)]
pub struct Outstanding {
    /// Sent, not yet acknowledged or refused, in the order sent (so per env in seq order).
    sent: VecDeque<Chunk>,
    /// Per env of this writer: (seq, first step) of its next new chunk.
    next: BTreeMap<u32, (u64, u64)>,
}

impl Outstanding {
    /// The book of a writer whose `envs` open fresh streams (seq 0, step 0).
    pub fn new(envs: &[u32]) -> Outstanding {
        Outstanding { sent: VecDeque::new(), next: envs.iter().map(|&e| (e, (0, 0))).collect() }
    }

    pub fn len(&self) -> usize {
        self.sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// Records a chunk as sent. Chunks of one env come in seq order from the chunker.
    pub fn record(&mut self, chunk: Chunk) {
        let next = self.next.get_mut(&chunk.env_index).expect("a chunk of one of this writer's envs");
        debug_assert_eq!(*next, (chunk.seq, chunk.first_step), "chunks of env {} out of order", chunk.env_index);
        *next = (chunk.seq + 1, chunk.first_step + u64::from(chunk.steps));
        self.sent.push_back(chunk);
    }

    /// Removes the chunk a response names (an ack, a duplicate ack or a refusal alike) and
    /// returns it; `None` if it is not outstanding.
    pub fn settle(&mut self, env_index: u32, seq: u64) -> Option<Chunk> {
        let i = self.sent.iter().position(|c| c.env_index == env_index && c.seq == seq)?;
        self.sent.remove(i)
    }

    /// Per env: its oldest unacknowledged chunk, or its next new chunk when none is outstanding.
    pub fn reopen_points(&self) -> Vec<ReopenPoint> {
        self.next
            .iter()
            .map(|(&env_index, &(seq, step))| {
                let (first_seq, first_step) =
                    self.sent.iter().find(|c| c.env_index == env_index).map_or((seq, step), |c| (c.seq, c.first_step));
                ReopenPoint { env_index, first_seq, first_step }
            })
            .collect()
    }

    /// The chunks to resend after reopening, in the order they were first sent.
    pub fn unacknowledged(&self) -> impl Iterator<Item = &Chunk> {
        self.sent.iter()
    }

    /// (env index, seq) of every outstanding chunk.
    pub fn keys(&self) -> Vec<(u32, u64)> {
        self.sent.iter().map(|c| (c.env_index, c.seq)).collect()
    }
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

/// One open `Insert` stream.
struct Link {
    address: String,
    tx: mpsc::Sender<pb::InsertRequest>,
    responses: tonic::Streaming<pb::InsertResponse>,
    /// Headers not yet answered; they were queued first, and responses come in request order.
    opens_pending: usize,
    /// Whether anything came back yet: the first response resets the backoff (a server that
    /// accepts the stream and drops it at once must not be retried at full speed).
    answered: bool,
}

type Attempt = Pin<Box<dyn Future<Output = Result<Box<Link>, String>> + Send>>;

enum State {
    /// Boxed: a `Link` is large, and one allocation per connection is nothing.
    Up(Box<Link>),
    Down(Attempt),
}

/// A failure being retried: since when, how many attempts failed, and the latest reason.
struct Outage {
    since: Instant,
    failed_attempts: u32,
    why: String,
}

enum Event {
    Input(Option<Chunk>),
    Response(Result<Option<pb::InsertResponse>, tonic::Status>),
    Connected(Result<Box<Link>, String>),
    DrainStarts,
    DrainOver,
}

impl ShardWriter {
    fn stream_id(&self, env_index: u32) -> pb::StreamId {
        pb::StreamId { actor_id: self.actor_id, incarnation: self.incarnation, env_index }
    }

    fn open_request(&self, p: ReopenPoint) -> pb::InsertRequest {
        pb::InsertRequest {
            shard_id: self.shard_id,
            kind: Some(Kind::Open(pb::StreamHeader {
                stream: Some(self.stream_id(p.env_index)),
                obs_dim: self.obs_dim,
                action_dim: self.action_dim,
                has_rewards: self.has_rewards,
                first_seq: p.first_seq,
                env_id: self.env_id.clone(),
                first_step: p.first_step,
            })),
        }
    }

    fn chunk_request(&self, c: &Chunk) -> pb::InsertRequest {
        pb::InsertRequest {
            shard_id: self.shard_id,
            kind: Some(Kind::Chunk(pb::Chunk {
                stream: Some(self.stream_id(c.env_index)),
                seq: c.seq,
                steps: c.steps,
                observations: proto::pack_f32(&c.observations),
                step_types: c.step_types.clone(),
                actions: proto::pack_f32(&c.actions),
                rewards: proto::pack_f32(&c.rewards),
            })),
        }
    }

    /// What a new `Insert` stream starts with: one header per env, then every unacknowledged
    /// chunk in the order first sent.
    pub fn reconnect_requests(&self, book: &Outstanding) -> Vec<pb::InsertRequest> {
        let opens = book.reopen_points().into_iter().map(|p| self.open_request(p));
        opens.chain(book.unacknowledged().map(|c| self.chunk_request(c))).collect()
    }

    /// One connection attempt, after `delay`; `refresh` re-fetches the shard map first.
    fn attempt(&self, resolver: &Arc<ShardResolver>, book: &Outstanding, delay: Duration, refresh: bool) -> Attempt {
        let (shard, resolver) = (self.shard_id, resolver.clone());
        let first = self.reconnect_requests(book);
        let opens = book.reopen_points().len();
        // Room for every header and every chunk that may be in flight, so no send ever waits.
        let capacity = self.max_in_flight + opens;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            let address = resolver.address(shard, refresh).await?;
            let mut client = resolver.client(&address)?;
            let (tx, rx) = mpsc::channel(capacity);
            for r in first {
                tx.try_send(r).expect("the queue holds every header and every chunk in flight");
            }
            let call = client.insert(ReceiverStream::new(rx));
            let responses = tokio::time::timeout(OPEN_DEADLINE, call)
                .await
                .map_err(|_| format!("{address}: no answer to Insert within {OPEN_DEADLINE:?}"))?
                .map_err(|s| format!("{address}: {} ({:?})", s.message(), s.code()))?
                .into_inner();
            Ok(Box::new(Link { address, tx, responses, opens_pending: opens, answered: false }))
        })
    }

    /// Opens `envs`' streams, then sends every chunk from `chunks` until it closes and every
    /// chunk sent is acknowledged. From the moment `drain` turns true (shutdown, or the end of the
    /// simulation) or `chunks` closes, it waits at most `drain_for` for that, reconnecting as
    /// needed.
    pub async fn run(
        self,
        resolver: Arc<ShardResolver>,
        envs: Vec<u32>,
        mut chunks: mpsc::Receiver<Chunk>,
        mut drain: watch::Receiver<bool>,
        drain_for: Duration,
    ) -> Result<WriterReport, WriterError> {
        let shard = self.shard_id;
        let mut report = WriterReport { shard_id: shard, ..Default::default() };
        let mut book = Outstanding::new(&envs);
        let mut backoff = Backoff::new(RECONNECT_BASE, RECONNECT_CAP, self.incarnation ^ u64::from(shard));
        let mut input_open = true;
        let mut drain_deadline: Option<Instant> = None;
        let mut ever_connected = false;
        let mut outage: Option<Outage> = None;
        let mut state = State::Down(self.attempt(&resolver, &book, Duration::ZERO, false));
        loop {
            if !input_open && book.is_empty() {
                break;
            }
            if matches!(state, State::Down(_)) && book.is_empty() && chunks.is_closed() && chunks.is_empty() {
                break; // nothing left to send: no need to reconnect
            }
            let draining = drain_deadline.is_some();
            let deadline = drain_deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
            let event = match &mut state {
                State::Up(link) => {
                    let can_send = input_open && link.opens_pending == 0 && book.len() < self.max_in_flight;
                    tokio::select! {
                        next = chunks.recv(), if can_send => Event::Input(next),
                        r = link.responses.message() => Event::Response(r),
                        _ = drain.wait_for(|d| *d), if !draining => Event::DrainStarts,
                        _ = tokio::time::sleep_until(deadline), if draining => Event::DrainOver,
                    }
                }
                State::Down(attempt) => tokio::select! {
                    r = attempt.as_mut() => Event::Connected(r),
                    _ = drain.wait_for(|d| *d), if !draining => Event::DrainStarts,
                    _ = tokio::time::sleep_until(deadline), if draining => Event::DrainOver,
                },
            };
            // Set when the stream broke: why.
            let mut broke: Option<String> = None;
            match event {
                Event::DrainStarts => drain_deadline = Some(Instant::now() + drain_for),
                Event::DrainOver => break,
                Event::Input(None) => {
                    input_open = false;
                    drain_deadline.get_or_insert_with(|| Instant::now() + drain_for);
                }
                Event::Input(Some(c)) => {
                    let State::Up(link) = &mut state else { unreachable!("input is read only while up") };
                    let request = self.chunk_request(&c);
                    book.record(c);
                    metrics::counter!("dsm_actor_chunks_sent_total").increment(1);
                    if link.tx.send(request).await.is_err() {
                        broke = Some("the connection closed".into());
                    }
                }
                Event::Connected(Ok(link)) => {
                    if ever_connected {
                        report.reconnects += 1;
                        metrics::counter!("dsm_actor_reconnects_total").increment(1);
                    }
                    report.resent_chunks += book.len() as u64;
                    metrics::counter!("dsm_actor_resent_chunks_total").increment(book.len() as u64);
                    if let Some(o) = outage.take() {
                        eprintln!(
                            "shard {shard}: {} {} after {:.1} s ({} failed attempts); resending {} chunks",
                            if ever_connected { "reconnected to" } else { "connected to" },
                            link.address,
                            o.since.elapsed().as_secs_f64(),
                            o.failed_attempts,
                            book.len()
                        );
                    }
                    ever_connected = true;
                    state = State::Up(link);
                }
                Event::Connected(Err(why)) => {
                    let o = outage.get_or_insert_with(|| {
                        eprintln!("shard {shard}: cannot open the insert stream ({why}); retrying with backoff");
                        Outage { since: Instant::now(), failed_attempts: 0, why: why.clone() }
                    });
                    o.failed_attempts += 1;
                    o.why = why;
                    state = State::Down(self.attempt(&resolver, &book, backoff.next_delay(), true));
                }
                Event::Response(Ok(Some(r))) => {
                    let State::Up(link) = &mut state else { unreachable!("responses are read only while up") };
                    if !link.answered {
                        link.answered = true;
                        backoff.reset();
                    }
                    let env_index = r.stream.as_ref().map_or(u32::MAX, |s| s.env_index);
                    if link.opens_pending > 0 {
                        link.opens_pending -= 1;
                        match r.refusal {
                            // The node does not host this slot (any more): the map was stale.
                            Some(refusal) if refusal.field == "shard_id" => {
                                broke = Some(format!("{}: {}", link.address, refusal.message));
                            }
                            Some(refusal) => {
                                return Err(WriterError::OpenRefused {
                                    shard,
                                    env_index,
                                    field: refusal.field,
                                    message: refusal.message,
                                })
                            }
                            None => {}
                        }
                    } else if let Some(chunk) = book.settle(env_index, r.seq) {
                        let steps = u64::from(chunk.steps);
                        match r.refusal {
                            None => {
                                report.acked_chunks += 1;
                                report.acked_steps += steps;
                                report.duplicate_acks += u64::from(r.duplicate);
                                metrics::counter!("dsm_actor_acked_steps_total").increment(steps);
                            }
                            // A bug (ours or the shard's): reported, never resent.
                            Some(refusal) => {
                                report.refused_chunks += 1;
                                metrics::counter!("dsm_actor_refused_chunks_total").increment(1);
                                if report.refused_chunks <= 5 {
                                    eprintln!(
                                        "shard {shard} refused chunk {} of env {env_index}: {}: {}",
                                        r.seq, refusal.field, refusal.message
                                    );
                                }
                            }
                        }
                    }
                }
                Event::Response(Ok(None)) => broke = Some("the shard ended the insert stream".into()),
                Event::Response(Err(s)) => broke = Some(format!("{} ({:?})", s.message(), s.code())),
            }
            if let Some(why) = broke {
                let address = match &state {
                    State::Up(link) => link.address.clone(),
                    State::Down(_) => String::new(),
                };
                eprintln!(
                    "shard {shard} at {address}: insert stream broke ({why}); {} chunks unacknowledged; reconnecting",
                    book.len()
                );
                outage = Some(Outage { since: Instant::now(), failed_attempts: 0, why });
                state = State::Down(self.attempt(&resolver, &book, backoff.next_delay(), true));
            }
        }
        report.unacknowledged = book.keys();
        // Whatever is still queued was never sent; closing the queue also wakes a simulation
        // thread blocked on it.
        chunks.close();
        while let Ok(c) = chunks.try_recv() {
            report.unacknowledged.push((c.env_index, c.seq));
        }
        if let (Some(o), false) = (&outage, report.unacknowledged.is_empty()) {
            eprintln!(
                "shard {shard}: gave up reconnecting at the drain deadline after {:.1} s: {}",
                o.since.elapsed().as_secs_f64(),
                o.why
            );
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(env_index: u32, seq: u64, first_step: u64, steps: u32) -> Chunk {
        Chunk {
            env_index,
            seq,
            first_step,
            steps,
            observations: vec![seq as f32; steps as usize],
            step_types: vec![1; steps as usize],
            actions: Vec::new(),
            rewards: Vec::new(),
        }
    }

    fn writer() -> ShardWriter {
        ShardWriter {
            shard_id: 1,
            actor_id: 3,
            incarnation: 9,
            env_id: "pendulum".into(),
            obs_dim: 1,
            action_dim: 0,
            has_rewards: false,
            max_in_flight: 8,
        }
    }

    fn point(env_index: u32, first_seq: u64, first_step: u64) -> ReopenPoint {
        ReopenPoint { env_index, first_seq, first_step }
    }

    #[test]
    fn fresh_streams_reopen_at_zero() {
        let book = Outstanding::new(&[0, 5]);
        assert_eq!(book.reopen_points(), [point(0, 0, 0), point(5, 0, 0)]);
        assert!(book.is_empty());
    }

    #[test]
    fn streams_reopen_at_their_oldest_unacknowledged_chunk_or_their_next_new_one() {
        let mut book = Outstanding::new(&[0, 5, 7]);
        // env 0: chunks 0, 1, 2 of 4, 4, 3 steps; env 5: chunk 0 of 4 steps; env 7: nothing.
        book.record(chunk(0, 0, 0, 4));
        book.record(chunk(5, 0, 0, 4));
        book.record(chunk(0, 1, 4, 4));
        book.record(chunk(0, 2, 8, 3));
        assert_eq!(book.reopen_points(), [point(0, 0, 0), point(5, 0, 0), point(7, 0, 0)]);
        assert_eq!(book.settle(0, 0).map(|c| c.steps), Some(4));
        assert_eq!(book.settle(5, 0).map(|c| c.steps), Some(4));
        assert_eq!(book.reopen_points(), [point(0, 1, 4), point(5, 1, 4), point(7, 0, 0)]);
        assert_eq!(book.keys(), [(0, 1), (0, 2)]);
        book.settle(0, 1);
        book.settle(0, 2);
        assert!(book.is_empty());
        assert_eq!(book.reopen_points(), [point(0, 3, 11), point(5, 1, 4), point(7, 0, 0)]);
    }

    #[test]
    fn resends_every_unacknowledged_chunk_in_the_order_sent() {
        let mut book = Outstanding::new(&[0, 1]);
        book.record(chunk(0, 0, 0, 2));
        book.record(chunk(1, 0, 0, 2));
        book.record(chunk(0, 1, 2, 2));
        book.record(chunk(1, 1, 2, 2));
        book.settle(1, 0);
        let order: Vec<(u32, u64)> = book.unacknowledged().map(|c| (c.env_index, c.seq)).collect();
        assert_eq!(order, [(0, 0), (0, 1), (1, 1)]);
    }

    #[test]
    fn a_second_answer_for_one_chunk_settles_nothing() {
        // A chunk acknowledged on the old stream just before it broke, and answered as a
        // duplicate after the resend: only the first answer counts.
        let mut book = Outstanding::new(&[0]);
        book.record(chunk(0, 0, 0, 4));
        assert!(book.settle(0, 0).is_some());
        assert!(book.settle(0, 0).is_none());
        assert!(book.settle(3, 0).is_none(), "an env of another writer");
    }

    #[test]
    fn a_refused_chunk_is_settled_and_not_resent() {
        let mut book = Outstanding::new(&[0]);
        book.record(chunk(0, 0, 0, 4));
        book.record(chunk(0, 1, 4, 4));
        book.settle(0, 0); // refused
        assert_eq!(book.keys(), [(0, 1)]);
        assert_eq!(book.reopen_points(), [point(0, 1, 4)]);
    }

    #[test]
    fn reconnect_requests_are_headers_then_the_resends() {
        let w = writer();
        let mut book = Outstanding::new(&[2, 4]);
        book.record(chunk(2, 0, 0, 3));
        book.record(chunk(4, 0, 0, 3));
        book.record(chunk(2, 1, 3, 3));
        book.settle(2, 0);
        let requests = w.reconnect_requests(&book);
        let summary: Vec<String> = requests
            .iter()
            .map(|r| {
                assert_eq!(r.shard_id, 1);
                match r.kind.as_ref().unwrap() {
                    Kind::Open(h) => {
                        let s = h.stream.unwrap();
                        assert_eq!((s.actor_id, s.incarnation, h.env_id.as_str()), (3, 9, "pendulum"));
                        format!("open {} at {}/{}", s.env_index, h.first_seq, h.first_step)
                    }
                    Kind::Chunk(c) => {
                        assert_eq!(proto::unpack_f32("x", &c.observations, 3).unwrap(), [c.seq as f32; 3]);
                        format!("chunk {} {}", c.stream.unwrap().env_index, c.seq)
                    }
                }
            })
            .collect();
        assert_eq!(summary, ["open 2 at 1/3", "open 4 at 0/0", "chunk 4 0", "chunk 2 1"]);
    }
}
