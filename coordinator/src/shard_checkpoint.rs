//! A replay shard's checkpoints on disk: the durable state ([`ShardSnapshot`]), its binary form,
//! and the directory of checkpoints ([`CheckpointDir`]).
//!
//! # Layout
//!
//! ```text
//! <dir>/ckpt-<unix ms, 20 digits>-<counter, 6 digits>/
//!     shard.bin   the snapshot (format below)
//!     DONE        written last: without it the directory is ignored
//! ```
//!
//! A write goes to `<name>.tmp/`: `shard.bin` is written and fsynced, the directory is renamed to
//! `<name>/` and the parent fsynced, then `DONE` is written and fsynced (and the directory again).
//! A crash at any point leaves either a `.tmp` directory, a directory without `DONE`, or a complete
//! checkpoint; loading skips the first two, and a checkpoint whose file fails its length or
//! checksum, with one line each, and takes the newest complete one (or none: the shard starts
//! empty). After a write the newest [`KEEP`] complete checkpoints are kept; older ones, and
//! interrupted writes older than the newest complete one, are deleted. Names only grow: a clock
//! that went back reuses the newest name's milliseconds with the next counter.
//!
//! # `shard.bin` (format version 1; every number little-endian)
//!
//! ```text
//! header   magic "DSMSHARD", version u32, shard_id u32, window u64, max_size u64,
//!          spec: present u8, obs_dim u64, action_dim u64, has_rewards u8,
//!          limiter: samples_per_insert f64, min_size_to_sample u64, min_diff f64, max_diff f64,
//!                   insert_count u64, sample_count u64, delete_count u64,
//!          table counters: inserted_steps u64, evicted_steps u64, evicted_chunks u64,
//!          shard counters: sampled_windows u64, refused_chunks u64, lost_steps u64,
//!                          duplicate_chunks u64
//! cursors  n u64, then n × (actor_id u64, incarnation u64, env_index u32, next_seq u64,
//!                           next_step u64), sorted
//! slots    slots u64; free n u64, n × slot u64 (reuse order);
//!          ranges n u64, n × (slot u64, actor_id u64, incarnation u64, env_index u32,
//!                             flags u8 (1 open, 2 segment, 4 has last_seq),
//!                             first_step u64, next_step u64, last_seq u64)
//! chunks   n u64, then in FIFO order (oldest first) n × (slot u64, start u64, first_seq u64,
//!          steps u64, observations f32 × steps·obs_dim, step_types u8 × steps,
//!          actions f32 × steps·action_dim, rewards f32 × (steps if has_rewards))
//! footer   body length u64, FNV-1a-64 of the body u64, magic "DSMSHEND"
//! ```
//!
//! The footer's length is checked against the file's size before anything is parsed, so a
//! truncated file is refused at once; the checksum catches the rest. The payloads are raw f32s:
//! the file is about the size of the stored data (a 1M-step riab shard: ~200 MB).
//!
//! Domain code: std only, no tokio. The caller (`checkpointer`) takes the snapshot under the
//! shard's lock and runs [`CheckpointDir::write`] on a blocking thread.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::rate_limiter::LimiterState;
use crate::table::{ChunkData, ChunkSnapshot, RangeSnapshot, StreamKey, StreamSpec, TableSnapshot};

/// The data file in each checkpoint directory.
pub const DATA_FILE: &str = "shard.bin";
/// The marker written last.
pub const DONE: &str = "DONE";
/// Complete checkpoints kept after a write: the newest, and one to fall back to should the newest
/// turn out unreadable.
pub const KEEP: usize = 2;

const MAGIC: &[u8; 8] = b"DSMSHARD";
const END_MAGIC: &[u8; 8] = b"DSMSHEND";
const FORMAT_VERSION: u32 = 1;
const FOOTER_BYTES: u64 = 24;
const PREFIX: &str = "ckpt-";
const TMP_SUFFIX: &str = ".tmp";

/// The counters a checkpoint keeps besides the table's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SavedCounters {
    pub sampled_windows: u64,
    pub refused_chunks: u64,
    /// Steps writers had acknowledged that the shard does not have (see `shard`'s module doc).
    pub lost_steps: u64,
    /// Resent chunks acknowledged without being stored again.
    pub duplicate_chunks: u64,
}

/// Where one stream stands (the shard's cursor, without the connection that held it open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SavedCursor {
    pub key: StreamKey,
    pub next_seq: u64,
    pub next_step: u64,
}

/// A shard's whole durable state, taken under its lock in O(streams + chunks) (chunk payloads are
/// shared, not copied; see [`TableSnapshot`]), to be written out after the lock is released.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardSnapshot {
    pub shard_id: u32,
    pub table: TableSnapshot,
    /// The limiter's settings and counters as they were.
    pub limiter: LimiterState,
    /// Every stream's cursor (their shapes are the table's spec).
    pub cursors: Vec<SavedCursor>,
    pub counters: SavedCounters,
}

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// The file is shorter or longer than its footer says, or fails its checksum, or holds
    /// something this format cannot (an interrupted or damaged write).
    #[error("{}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    /// A complete checkpoint of another shard: the directory was mixed up, which a fallback would
    /// only hide.
    #[error("{} holds shard {found}'s checkpoint, not shard {expected}'s (check --workdir)", path.display())]
    ShardMismatch { path: PathBuf, expected: u32, found: u32 },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_path_buf(), source }
}

/// What [`CheckpointDir::write`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// The complete checkpoint directory.
    pub path: PathBuf,
    pub stored_steps: u64,
    pub chunks: u64,
    /// Size of the data file.
    pub bytes: u64,
    /// Old checkpoints that could not be deleted (the write itself succeeded).
    pub warnings: Vec<String>,
}

/// A checkpoint directory that loading passed over, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// A complete checkpoint, read.
#[derive(Debug)]
pub struct Checkpoint {
    pub path: PathBuf,
    pub snapshot: ShardSnapshot,
    pub bytes: u64,
}

/// What [`CheckpointDir::load_latest`] found: the newest readable checkpoint, if any, and every
/// newer directory it had to skip (for the caller to report).
#[derive(Debug, Default)]
pub struct Loaded {
    pub checkpoint: Option<Checkpoint>,
    pub skipped: Vec<Skipped>,
}

/// One entry of the directory: a checkpoint (or an attempt at one) and its place in the order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    unix_ms: u64,
    counter: u64,
    tmp: bool,
    path: PathBuf,
}

impl Entry {
    fn complete(&self) -> bool {
        !self.tmp && self.path.join(DONE).is_file()
    }
}

/// One shard's checkpoint directory (`<workdir>/shards/shard-<id>/` in a coordinator or replay
/// process). One writer at a time: the caller serialises writes.
#[derive(Debug, Clone)]
pub struct CheckpointDir {
    root: PathBuf,
    keep: usize,
}

impl CheckpointDir {
    /// The directory at `root` (created on the first write), keeping the newest `keep` complete
    /// checkpoints (at least 1).
    pub fn new(root: impl Into<PathBuf>, keep: usize) -> Self {
        CheckpointDir { root: root.into(), keep: keep.max(1) }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every `ckpt-*` entry, oldest first; other names are not ours and are left alone.
    fn entries(&self) -> Result<Vec<Entry>, CheckpointError> {
        let read = match fs::read_dir(&self.root) {
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_at(&self.root)(e)),
        };
        let mut entries = Vec::new();
        for item in read {
            let item = item.map_err(io_at(&self.root))?;
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(rest) = name.strip_prefix(PREFIX) else { continue };
            let (rest, tmp) = match rest.strip_suffix(TMP_SUFFIX) {
                Some(rest) => (rest, true),
                None => (rest, false),
            };
            let Some((ms, counter)) = rest.split_once('-') else { continue };
            let (Ok(unix_ms), Ok(counter)) = (ms.parse(), counter.parse()) else { continue };
            if item.path().is_dir() {
                entries.push(Entry { unix_ms, counter, tmp, path: item.path() });
            }
        }
        entries.sort();
        Ok(entries)
    }

    /// Paths of the complete checkpoints, oldest first.
    pub fn complete(&self) -> Result<Vec<PathBuf>, CheckpointError> {
        Ok(self.entries()?.into_iter().filter(Entry::complete).map(|e| e.path).collect())
    }

    /// When the newest complete checkpoint was written (Unix ms, from its name).
    pub fn newest_complete(&self) -> Result<Option<u64>, CheckpointError> {
        Ok(self.entries()?.into_iter().filter(Entry::complete).map(|e| e.unix_ms).max())
    }

    /// Writes `snapshot` as a new checkpoint (see the module doc for the steps), then prunes.
    /// `now_unix_ms` names it. On error nothing complete was added, and what was written is left
    /// for the next write's pruning.
    pub fn write(&self, snapshot: &ShardSnapshot, now_unix_ms: u64) -> Result<Written, CheckpointError> {
        fs::create_dir_all(&self.root).map_err(io_at(&self.root))?;
        let newest = self.entries()?.into_iter().filter(|e| !e.tmp).map(|e| (e.unix_ms, e.counter)).max();
        let (unix_ms, counter) = match newest {
            Some((ms, counter)) if ms >= now_unix_ms => (ms, counter + 1),
            _ => (now_unix_ms, 0),
        };
        let name = format!("{PREFIX}{unix_ms:020}-{counter:06}");
        let tmp = self.root.join(format!("{name}{TMP_SUFFIX}"));
        let path = self.root.join(&name);
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_at(&tmp))?;
        }
        fs::create_dir(&tmp).map_err(io_at(&tmp))?;
        let data = tmp.join(DATA_FILE);
        let file = File::create(&data).map_err(io_at(&data))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let bytes = encode(snapshot, &mut out).map_err(io_at(&data))?;
        let file = out.into_inner().map_err(|e| io_at(&data)(e.into_error()))?;
        file.sync_all().map_err(io_at(&data))?;
        drop(file);
        fs::rename(&tmp, &path).map_err(io_at(&path))?;
        sync_dir(&self.root)?;
        let stored_steps = snapshot.table.stored_steps();
        let chunks = snapshot.table.chunks.len() as u64;
        let done = path.join(DONE);
        let mut marker = File::create(&done).map_err(io_at(&done))?;
        let summary =
            format!("shard {}\nstored_steps {stored_steps}\nchunks {chunks}\nbytes {bytes}\n", snapshot.shard_id);
        marker.write_all(summary.as_bytes()).map_err(io_at(&done))?;
        marker.sync_all().map_err(io_at(&done))?;
        sync_dir(&path)?;
        let warnings = self.prune();
        Ok(Written { path, stored_steps, chunks, bytes, warnings })
    }

    /// Deletes complete checkpoints beyond the newest `keep`, and every interrupted write older
    /// than the newest complete checkpoint. Returns what could not be deleted.
    fn prune(&self) -> Vec<String> {
        let entries = match self.entries() {
            Ok(entries) => entries,
            Err(e) => return vec![format!("listing old checkpoints: {e}")],
        };
        let Some(newest) = entries.iter().rposition(Entry::complete) else { return Vec::new() };
        let mut kept = 0;
        let mut warnings = Vec::new();
        for (i, entry) in entries.iter().enumerate().rev() {
            let delete = if entry.complete() {
                kept += 1;
                kept > self.keep
            } else {
                i < newest
            };
            if delete {
                if let Err(e) = fs::remove_dir_all(&entry.path) {
                    warnings.push(format!("deleting {}: {e}", entry.path.display()));
                }
            }
        }
        warnings
    }

    /// Reads the newest complete checkpoint of shard `shard_id`, passing over (and listing in
    /// [`Loaded::skipped`]) newer directories without `DONE`, interrupted `.tmp` writes, and
    /// checkpoints whose file is truncated or corrupt. No checkpoint at all (or no directory) is
    /// not an error: the shard starts empty. Errors: a directory that cannot be listed or a file
    /// that cannot be opened (the disk, not the data, is at fault), and a complete checkpoint of
    /// another shard.
    pub fn load_latest(&self, shard_id: u32) -> Result<Loaded, CheckpointError> {
        let mut loaded = Loaded::default();
        for entry in self.entries()?.into_iter().rev() {
            let skip = |reason: &str| Skipped { path: entry.path.clone(), reason: reason.to_string() };
            if entry.tmp {
                loaded.skipped.push(skip("an interrupted write (never renamed from .tmp)"));
                continue;
            }
            if !entry.path.join(DONE).is_file() {
                loaded.skipped.push(skip("no DONE marker (an interrupted write)"));
                continue;
            }
            match read(&entry.path.join(DATA_FILE), Some(shard_id)) {
                Ok((snapshot, bytes)) => {
                    loaded.checkpoint = Some(Checkpoint { path: entry.path, snapshot, bytes });
                    return Ok(loaded);
                }
                Err(CheckpointError::Corrupt { reason, .. }) => loaded.skipped.push(skip(&reason)),
                Err(CheckpointError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    loaded.skipped.push(skip(&format!("no {DATA_FILE}")))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(loaded)
    }
}

/// Makes a directory's entries (a rename, a new file) durable.
fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_at(dir))
}

/// FNV-1a-64, fed piecewise; equal to `common::rng::fnv1a64` over the concatenation.
#[derive(Debug, Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01B3);
        }
        self.0 = h;
    }
}

/// Counts and hashes what goes through it.
struct Body<W> {
    out: W,
    hash: Fnv,
    len: u64,
    /// Scratch for f32 → little-endian conversion.
    buf: Vec<u8>,
}

impl<W: Write> Body<W> {
    fn bytes(&mut self, b: &[u8]) -> io::Result<()> {
        self.hash.update(b);
        self.len += b.len() as u64;
        self.out.write_all(b)
    }

    fn u8(&mut self, v: u8) -> io::Result<()> {
        self.bytes(&[v])
    }

    fn u32(&mut self, v: u32) -> io::Result<()> {
        self.bytes(&v.to_le_bytes())
    }

    fn u64(&mut self, v: u64) -> io::Result<()> {
        self.bytes(&v.to_le_bytes())
    }

    fn f64(&mut self, v: f64) -> io::Result<()> {
        self.bytes(&v.to_le_bytes())
    }

    fn key(&mut self, k: &StreamKey) -> io::Result<()> {
        self.u64(k.actor_id)?;
        self.u64(k.incarnation)?;
        self.u32(k.env_index)
    }

    fn f32s(&mut self, values: &[f32]) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        let result = self.bytes(&buf);
        self.buf = buf;
        result
    }
}

/// Writes `snapshot` in the format of the module doc; returns the bytes written (footer included).
pub fn encode<W: Write>(snapshot: &ShardSnapshot, out: W) -> io::Result<u64> {
    let mut b = Body { out, hash: Fnv::new(), len: 0, buf: Vec::new() };
    let t = &snapshot.table;
    b.bytes(MAGIC)?;
    b.u32(FORMAT_VERSION)?;
    b.u32(snapshot.shard_id)?;
    b.u64(t.window as u64)?;
    b.u64(t.max_size as u64)?;
    let spec = t.spec.unwrap_or(StreamSpec { obs_dim: 0, action_dim: 0, has_rewards: false });
    b.u8(u8::from(t.spec.is_some()))?;
    b.u64(spec.obs_dim as u64)?;
    b.u64(spec.action_dim as u64)?;
    b.u8(u8::from(spec.has_rewards))?;
    let l = &snapshot.limiter;
    b.f64(l.samples_per_insert)?;
    b.u64(l.min_size_to_sample)?;
    b.f64(l.min_diff)?;
    b.f64(l.max_diff)?;
    b.u64(l.insert_count)?;
    b.u64(l.sample_count)?;
    b.u64(l.delete_count)?;
    b.u64(t.inserted_steps_total)?;
    b.u64(t.evicted_steps_total)?;
    b.u64(t.evicted_chunks_total)?;
    let c = &snapshot.counters;
    for v in [c.sampled_windows, c.refused_chunks, c.lost_steps, c.duplicate_chunks] {
        b.u64(v)?;
    }
    // Sorted, so that equal states make equal files.
    let mut cursors = snapshot.cursors.clone();
    cursors.sort_unstable();
    b.u64(cursors.len() as u64)?;
    for c in &cursors {
        b.key(&c.key)?;
        b.u64(c.next_seq)?;
        b.u64(c.next_step)?;
    }
    b.u64(t.slots as u64)?;
    b.u64(t.free_slots.len() as u64)?;
    for &slot in &t.free_slots {
        b.u64(slot as u64)?;
    }
    b.u64(t.ranges.len() as u64)?;
    for r in &t.ranges {
        b.u64(r.slot as u64)?;
        b.key(&r.key)?;
        b.u8(u8::from(r.open) | u8::from(r.segment) << 1 | u8::from(r.last_seq.is_some()) << 2)?;
        b.u64(r.first_step)?;
        b.u64(r.next_step)?;
        b.u64(r.last_seq.unwrap_or(0))?;
    }
    b.u64(t.chunks.len() as u64)?;
    for c in &t.chunks {
        let d = &c.data;
        b.u64(c.slot as u64)?;
        b.u64(c.start)?;
        b.u64(d.first_seq)?;
        b.u64(d.steps as u64)?;
        b.f32s(&d.observations)?;
        b.bytes(&d.step_types)?;
        b.f32s(&d.actions)?;
        b.f32s(&d.rewards)?;
    }
    let (len, hash) = (b.len, b.hash.0);
    let mut out = b.out;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&hash.to_le_bytes())?;
    out.write_all(END_MAGIC)?;
    out.flush()?;
    Ok(len + FOOTER_BYTES)
}

/// Reads and hashes the body, refusing to read past its declared end.
struct Source<R> {
    input: R,
    hash: Fnv,
    left: u64,
    path: PathBuf,
}

impl<R: Read> Source<R> {
    fn corrupt(&self, reason: impl Into<String>) -> CheckpointError {
        CheckpointError::Corrupt { path: self.path.clone(), reason: reason.into() }
    }

    fn bytes(&mut self, n: u64) -> Result<Vec<u8>, CheckpointError> {
        if n > self.left {
            return Err(self.corrupt(format!("a field needs {n} bytes, but {} are left in the body", self.left)));
        }
        let mut buf = vec![0; n as usize];
        self.input.read_exact(&mut buf).map_err(io_at(&self.path))?;
        self.hash.update(&buf);
        self.left -= n;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CheckpointError> {
        Ok(self.bytes(N as u64)?.try_into().expect("N bytes were read"))
    }

    fn u8(&mut self) -> Result<u8, CheckpointError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, CheckpointError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, CheckpointError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn f64(&mut self) -> Result<f64, CheckpointError> {
        Ok(f64::from_le_bytes(self.array()?))
    }

    /// A count or index that must fit in memory and in what is left of the body at `each` bytes
    /// per item (so a damaged count cannot ask for a huge allocation).
    fn count(&mut self, what: &str, each: u64) -> Result<usize, CheckpointError> {
        let n = self.u64()?;
        if n.checked_mul(each).is_none_or(|bytes| bytes > self.left) {
            return Err(self.corrupt(format!("{what}: {n} entries cannot fit in the {} bytes left", self.left)));
        }
        Ok(n as usize)
    }

    fn key(&mut self) -> Result<StreamKey, CheckpointError> {
        Ok(StreamKey { actor_id: self.u64()?, incarnation: self.u64()?, env_index: self.u32()? })
    }

    /// `rows × width` f32s.
    fn f32s(&mut self, rows: u64, width: u64) -> Result<Vec<f32>, CheckpointError> {
        let bytes = rows.checked_mul(width).and_then(|n| n.checked_mul(4));
        let bytes = bytes.ok_or_else(|| self.corrupt("an array length overflows"))?;
        let raw = self.bytes(bytes)?;
        Ok(raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }
}

/// Reads the data file at `path`: footer first (length against the file's size, so truncation is
/// caught before parsing), then the body, then the checksum. With `shard_id`, a file of another
/// shard is refused as soon as its header is read. Returns the snapshot and the file's size.
pub fn read(path: &Path, shard_id: Option<u32>) -> Result<(ShardSnapshot, u64), CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt { path: path.to_path_buf(), reason };
    let mut file = File::open(path).map_err(io_at(path))?;
    let size = file.metadata().map_err(io_at(path))?.len();
    if size < FOOTER_BYTES + MAGIC.len() as u64 {
        return Err(corrupt(format!("truncated: {size} bytes, less than a header and a footer")));
    }
    file.seek(SeekFrom::Start(size - FOOTER_BYTES)).map_err(io_at(path))?;
    let mut footer = [0u8; FOOTER_BYTES as usize];
    file.read_exact(&mut footer).map_err(io_at(path))?;
    let word = |i: usize| u64::from_le_bytes(footer[i..i + 8].try_into().expect("8 bytes"));
    let (body_len, checksum) = (word(0), word(8));
    if &footer[16..] != END_MAGIC || body_len != size - FOOTER_BYTES {
        return Err(corrupt(format!(
            "truncated or damaged: {size} bytes, and the footer does not describe them (an interrupted write?)"
        )));
    }
    file.seek(SeekFrom::Start(0)).map_err(io_at(path))?;
    let mut s = Source {
        input: BufReader::with_capacity(1 << 20, file),
        hash: Fnv::new(),
        left: body_len,
        path: path.to_path_buf(),
    };
    if &s.array::<8>()? != MAGIC {
        return Err(s.corrupt("not a shard checkpoint (bad magic)"));
    }
    let version = s.u32()?;
    if version != FORMAT_VERSION {
        return Err(s.corrupt(format!("format version {version}; this build reads version {FORMAT_VERSION}")));
    }
    let found = s.u32()?;
    if let Some(expected) = shard_id.filter(|&e| e != found) {
        return Err(CheckpointError::ShardMismatch { path: path.to_path_buf(), expected, found });
    }
    let window = s.u64()? as usize;
    let max_size = s.u64()? as usize;
    let has_spec = s.u8()? != 0;
    let (obs_dim, action_dim, has_rewards) = (s.u64()?, s.u64()?, s.u8()? != 0);
    let spec =
        has_spec.then_some(StreamSpec { obs_dim: obs_dim as usize, action_dim: action_dim as usize, has_rewards });
    let limiter = LimiterState {
        samples_per_insert: s.f64()?,
        min_size_to_sample: s.u64()?,
        min_diff: s.f64()?,
        max_diff: s.f64()?,
        insert_count: s.u64()?,
        sample_count: s.u64()?,
        delete_count: s.u64()?,
    };
    let (inserted_steps_total, evicted_steps_total, evicted_chunks_total) = (s.u64()?, s.u64()?, s.u64()?);
    let counters = SavedCounters {
        sampled_windows: s.u64()?,
        refused_chunks: s.u64()?,
        lost_steps: s.u64()?,
        duplicate_chunks: s.u64()?,
    };
    let n = s.count("cursors", 36)?;
    let mut cursors = Vec::with_capacity(n);
    for _ in 0..n {
        cursors.push(SavedCursor { key: s.key()?, next_seq: s.u64()?, next_step: s.u64()? });
    }
    let slots = s.u64()?;
    let n = s.count("free slots", 8)?;
    let mut free_slots = Vec::with_capacity(n);
    for _ in 0..n {
        free_slots.push(s.u64()? as usize);
    }
    let n = s.count("ranges", 53)?;
    let mut ranges = Vec::with_capacity(n);
    for _ in 0..n {
        let slot = s.u64()? as usize;
        let key = s.key()?;
        let flags = s.u8()?;
        let (first_step, next_step, last_seq) = (s.u64()?, s.u64()?, s.u64()?);
        ranges.push(RangeSnapshot {
            slot,
            key,
            open: flags & 1 != 0,
            segment: flags & 2 != 0,
            first_step,
            next_step,
            last_seq: (flags & 4 != 0).then_some(last_seq),
        });
    }
    if slots != (free_slots.len() + ranges.len()) as u64 {
        return Err(s.corrupt(format!("{slots} slots, but {} listed", free_slots.len() + ranges.len())));
    }
    let n = s.count("chunks", 33)?;
    if n > 0 && spec.is_none() {
        return Err(s.corrupt("chunks without a spec"));
    }
    let mut chunks = Vec::with_capacity(n);
    for _ in 0..n {
        let spec = spec.expect("checked above");
        let (slot, start, first_seq, steps) = (s.u64()? as usize, s.u64()?, s.u64()?, s.u64()?);
        if steps == 0 || steps > max_size as u64 {
            return Err(s.corrupt(format!("a chunk of {steps} steps in a table of {max_size}")));
        }
        let observations = s.f32s(steps, spec.obs_dim as u64)?;
        let step_types = s.bytes(steps)?;
        let actions = s.f32s(steps, spec.action_dim as u64)?;
        let rewards = s.f32s(steps, u64::from(spec.has_rewards))?;
        let data = ChunkData { first_seq, steps: steps as usize, observations, step_types, actions, rewards };
        chunks.push(ChunkSnapshot { slot, start, data: Arc::new(data) });
    }
    if s.left != 0 {
        return Err(s.corrupt(format!("{} bytes left over after the last chunk", s.left)));
    }
    if s.hash.0 != checksum {
        return Err(s.corrupt("checksum mismatch (the data was damaged)"));
    }
    let table = TableSnapshot {
        max_size,
        window,
        spec,
        slots: slots as usize,
        free_slots,
        ranges,
        chunks,
        inserted_steps_total,
        evicted_steps_total,
        evicted_chunks_total,
    };
    Ok((ShardSnapshot { shard_id: found, table, limiter, cursors, counters }, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Table;

    const SPEC: StreamSpec = StreamSpec { obs_dim: 3, action_dim: 1, has_rewards: true };

    fn key(i: u64) -> StreamKey {
        StreamKey { actor_id: i, incarnation: 0xfeed ^ i, env_index: (i % 3) as u32 }
    }

    fn chunk(table: &Table, k: StreamKey, steps: usize, salt: f32) -> ChunkData {
        let info = table.stream(&k).unwrap();
        let n = info.next_step as f32;
        ChunkData {
            first_seq: info.last_seq.map_or(0, |s| s + 1),
            steps,
            observations: (0..steps * 3).map(|i| n + i as f32 * 0.25 + salt).collect(),
            step_types: (0..steps).map(|i| (i % 3) as u8).collect(),
            actions: (0..steps).map(|i| -(i as f32) - salt).collect(),
            rewards: (0..steps).map(|i| i as f32 * 1e-3).collect(),
        }
    }

    /// A shard's worth of state: several streams, eviction, a gap (a segment), a closed stream,
    /// and counters that agree with the table. `salt` changes the payloads.
    fn snapshot(shard_id: u32, rounds: usize, salt: f32) -> ShardSnapshot {
        let mut t = Table::new(500, 7);
        let keys: Vec<StreamKey> = (0..5).map(key).collect();
        for &k in &keys {
            t.open_stream(k, SPEC).unwrap();
        }
        for round in 0..rounds {
            let k = keys[round % keys.len()];
            t.insert(k, chunk(&t, k, 1 + round % 13, salt)).unwrap();
            if round == rounds.saturating_sub(20) {
                let next = t.stream(&keys[1]).unwrap().next_step;
                t.continue_after_gap(keys[1], next + 9).unwrap();
            }
        }
        t.close_stream(keys[4]);
        let cursors = t
            .streams()
            .map(|i| SavedCursor { key: i.key, next_seq: i.last_seq.map_or(0, |s| s + 1), next_step: i.next_step })
            .collect();
        let limiter = LimiterState {
            samples_per_insert: 1.5,
            min_size_to_sample: 7,
            min_diff: f64::NEG_INFINITY,
            max_diff: 123.5,
            insert_count: t.inserted_steps(),
            sample_count: 17,
            delete_count: t.evicted_steps(),
        };
        let counters = SavedCounters { sampled_windows: 17, refused_chunks: 2, lost_steps: 9, duplicate_chunks: 4 };
        ShardSnapshot { shard_id, table: t.snapshot(), limiter, cursors, counters }
    }

    fn sorted(mut s: ShardSnapshot) -> ShardSnapshot {
        s.cursors.sort();
        s
    }

    fn dir() -> (tempfile::TempDir, CheckpointDir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CheckpointDir::new(tmp.path().join("shard-0"), KEEP);
        (tmp, dir)
    }

    #[test]
    fn fnv_fed_piecewise_equals_the_shard_hash() {
        let bytes: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut h = Fnv::new();
        for part in bytes.chunks(37) {
            h.update(part);
        }
        assert_eq!(h.0, common::rng::fnv1a64(&bytes));
    }

    #[test]
    fn a_checkpoint_round_trips_and_is_complete_only_with_done() {
        let (_tmp, dir) = dir();
        let snap = snapshot(0, 300, 0.0);
        assert!(snap.table.ranges.iter().any(|r| r.segment), "the state has a segment");
        assert!(snap.table.evicted_steps_total > 0);
        let written = dir.write(&snap, 1_700_000_000_123).unwrap();
        assert_eq!(written.path, dir.root().join("ckpt-00000001700000000123-000000"));
        assert!(written.path.join(DONE).is_file());
        assert_eq!(written.bytes, fs::metadata(written.path.join(DATA_FILE)).unwrap().len());
        assert_eq!((written.stored_steps, written.chunks), (snap.table.stored_steps(), snap.table.chunks.len() as u64));
        assert!(written.warnings.is_empty());
        let loaded = dir.load_latest(0).unwrap();
        assert!(loaded.skipped.is_empty());
        let ckpt = loaded.checkpoint.unwrap();
        assert_eq!((ckpt.path, ckpt.bytes), (written.path, written.bytes));
        assert_eq!(ckpt.snapshot, sorted(snap.clone()));
        // The restored table is the table.
        let back = Table::restore(ckpt.snapshot.table).unwrap();
        assert_eq!(back.snapshot(), snap.table);
        // Equal states make equal files.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        encode(&snap, &mut a).unwrap();
        let mut shuffled = snap;
        shuffled.cursors.reverse();
        encode(&shuffled, &mut b).unwrap();
        assert_eq!(a, b);
        assert_eq!(dir.newest_complete().unwrap(), Some(1_700_000_000_123));
    }

    #[test]
    fn an_empty_shard_round_trips() {
        let (_tmp, dir) = dir();
        let t = Table::new(100, 7);
        let limiter = LimiterState {
            samples_per_insert: 1.0,
            min_size_to_sample: 7,
            min_diff: f64::MIN,
            max_diff: f64::MAX,
            insert_count: 0,
            sample_count: 0,
            delete_count: 0,
        };
        let snap = ShardSnapshot {
            shard_id: 5,
            table: t.snapshot(),
            limiter,
            cursors: vec![],
            counters: SavedCounters::default(),
        };
        dir.write(&snap, 1).unwrap();
        assert_eq!(dir.load_latest(5).unwrap().checkpoint.unwrap().snapshot, snap);
    }

    #[test]
    fn a_missing_done_marker_falls_back_to_the_previous_checkpoint() {
        let (_tmp, dir) = dir();
        let older = dir.write(&snapshot(0, 100, 1.0), 1_000).unwrap();
        let newer = dir.write(&snapshot(0, 200, 2.0), 2_000).unwrap();
        // A crash after the rename, before DONE.
        fs::remove_file(newer.path.join(DONE)).unwrap();
        let loaded = dir.load_latest(0).unwrap();
        assert_eq!(loaded.checkpoint.unwrap().snapshot, sorted(snapshot(0, 100, 1.0)));
        assert_eq!(loaded.skipped.len(), 1);
        assert_eq!(loaded.skipped[0].path, newer.path);
        assert!(loaded.skipped[0].reason.contains("no DONE"), "{:?}", loaded.skipped);
        assert_eq!(dir.complete().unwrap(), vec![older.path]);
    }

    #[test]
    fn a_truncated_or_damaged_file_falls_back_to_the_previous_checkpoint() {
        for damage in ["truncate", "flip"] {
            let (_tmp, dir) = dir();
            dir.write(&snapshot(0, 100, 1.0), 1_000).unwrap();
            let newer = dir.write(&snapshot(0, 200, 2.0), 2_000).unwrap();
            let data = newer.path.join(DATA_FILE);
            let mut bytes = fs::read(&data).unwrap();
            let middle = bytes.len() / 2;
            match damage {
                "truncate" => bytes.truncate(middle),
                _ => bytes[middle] ^= 0x10,
            }
            fs::write(&data, &bytes).unwrap();
            let loaded = dir.load_latest(0).unwrap();
            assert_eq!(loaded.checkpoint.unwrap().snapshot, sorted(snapshot(0, 100, 1.0)), "{damage}");
            let reason = &loaded.skipped[0].reason;
            let expected = if damage == "truncate" { "truncated" } else { "checksum" };
            assert!(reason.contains(expected), "{damage}: {reason}");
        }
    }

    #[test]
    fn without_a_complete_checkpoint_the_shard_starts_empty() {
        let (tmp, dir) = dir();
        let loaded = dir.load_latest(0).unwrap();
        assert!(loaded.checkpoint.is_none() && loaded.skipped.is_empty(), "no directory at all");
        let only = dir.write(&snapshot(0, 50, 0.0), 1_000).unwrap();
        fs::remove_file(only.path.join(DONE)).unwrap();
        // An interrupted write that never got renamed.
        fs::create_dir_all(dir.root().join("ckpt-00000000000000002000-000000.tmp")).unwrap();
        // Something that is not ours: left alone.
        fs::create_dir_all(dir.root().join("notes")).unwrap();
        let loaded = dir.load_latest(0).unwrap();
        assert!(loaded.checkpoint.is_none());
        assert_eq!(loaded.skipped.len(), 2, "{:?}", loaded.skipped);
        assert!(loaded.skipped[0].reason.contains(".tmp"));
        assert_eq!(dir.newest_complete().unwrap(), None);
        drop(tmp);
    }

    #[test]
    fn another_shards_checkpoint_is_refused() {
        let (_tmp, dir) = dir();
        dir.write(&snapshot(1, 50, 0.0), 1_000).unwrap();
        let err = dir.load_latest(2).unwrap_err();
        assert!(matches!(err, CheckpointError::ShardMismatch { expected: 2, found: 1, .. }));
        assert!(err.to_string().contains("shard 1's checkpoint, not shard 2's"), "{err}");
    }

    #[test]
    fn writes_keep_the_newest_two_and_clear_interrupted_ones() {
        let (_tmp, dir) = dir();
        fs::create_dir_all(dir.root().join("ckpt-00000000000000000500-000000.tmp")).unwrap();
        fs::create_dir_all(dir.root().join("notes")).unwrap();
        let first = dir.write(&snapshot(0, 10, 0.0), 1_000).unwrap();
        fs::remove_file(first.path.join(DONE)).unwrap();
        let mut paths = Vec::new();
        for ms in [2_000, 3_000, 4_000] {
            paths.push(dir.write(&snapshot(0, 10, ms as f32), ms).unwrap().path);
        }
        let mut left: Vec<String> =
            fs::read_dir(dir.root()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["ckpt-00000000000000003000-000000", "ckpt-00000000000000004000-000000", "notes"]);
        assert_eq!(dir.complete().unwrap(), paths[1..].to_vec());
    }

    #[test]
    fn names_only_grow_even_when_the_clock_goes_back() {
        let (_tmp, dir) = dir();
        dir.write(&snapshot(0, 10, 1.0), 5_000).unwrap();
        let same_ms = dir.write(&snapshot(0, 10, 2.0), 5_000).unwrap();
        let earlier = dir.write(&snapshot(0, 10, 3.0), 4_000).unwrap();
        assert_eq!(same_ms.path.file_name().unwrap(), "ckpt-00000000000000005000-000001");
        assert_eq!(earlier.path.file_name().unwrap(), "ckpt-00000000000000005000-000002");
        assert_eq!(dir.load_latest(0).unwrap().checkpoint.unwrap().snapshot, sorted(snapshot(0, 10, 3.0)));
    }
}
