//! The learner's `CheckpointStore` gRPC service and its client: complete checkpoints, read-only,
//! for evaluators on other machines (`proto/dsm/v1/checkpoint.proto`).
//!
//! The server serves only direct children of its checkpoint directory that have a `DONE` marker,
//! and refuses any other path — `..`, symlinks out, absolute paths elsewhere — with
//! PERMISSION_DENIED before reading anything. Each file goes as a header (name, size, SHA-256)
//! and chunks; the client writes into a partial directory, checks every file's size and checksum
//! as it arrives (and the manifest's checksums, which the server sends first), and renames the
//! directory into place only when `DONE` arrived last. So a fetched checkpoint is byte-for-byte the
//! learner's, or absent.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::Stream;
use proto::pb;
use proto::pb::checkpoint_chunk::Part;
use proto::pb::checkpoint_store_client::CheckpointStoreClient;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::train::checkpoint_v2::MANIFEST;

/// Bytes per `data` part.
pub const CHUNK_BYTES: usize = 1 << 20;
/// The largest message either side accepts: one chunk and its framing.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;
/// The largest checkpoint a client accepts (the Pendulum δ-model's is about 100 MB).
pub const MAX_CHECKPOINT_BYTES: u64 = 64 << 30;
const DONE: &str = "DONE";

pub struct CheckpointStoreService {
    /// The checkpoint directory, canonical.
    root: PathBuf,
}

impl CheckpointStoreService {
    pub fn new(root: &Path) -> std::io::Result<CheckpointStoreService> {
        Ok(CheckpointStoreService { root: root.canonicalize()? })
    }

    pub fn server(self) -> pb::checkpoint_store_server::CheckpointStoreServer<CheckpointStoreService> {
        pb::checkpoint_store_server::CheckpointStoreServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The complete checkpoint directory `requested` names, or the status to answer.
    pub fn resolve(&self, requested: &str) -> Result<PathBuf, Status> {
        let text = requested.strip_prefix("file://").unwrap_or(requested);
        if text.is_empty() {
            return Err(Status::invalid_argument("checkpoint: must not be empty"));
        }
        let outside = || {
            Status::permission_denied(format!(
                "checkpoint: {requested:?} is outside the learner's checkpoint directory"
            ))
        };
        let path = Path::new(text);
        let candidate = if path.is_absolute() {
            path.to_path_buf()
        } else if path.components().count() == 1 && matches!(path.components().next(), Some(Component::Normal(_))) {
            self.root.join(path)
        } else {
            return Err(outside());
        };
        // Lexically first (no file system access for paths elsewhere), then after resolving links.
        if candidate.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
            return Err(outside());
        }
        let canonical = match candidate.canonicalize() {
            Ok(c) => c,
            Err(_) if candidate.parent() == Some(self.root.as_path()) => {
                return Err(Status::not_found(format!("checkpoint: {requested:?} does not exist (pruned?)")))
            }
            Err(_) => return Err(outside()),
        };
        if canonical.parent() != Some(self.root.as_path()) || !canonical.is_dir() {
            return Err(outside());
        }
        if !canonical.join(DONE).is_file() {
            return Err(Status::not_found(format!("checkpoint: {requested:?} is not complete (no DONE marker)")));
        }
        Ok(canonical)
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::CheckpointChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::checkpoint_store_server::CheckpointStore for CheckpointStoreService {
    type FetchCheckpointStream = ChunkStream;

    async fn fetch_checkpoint(
        &self,
        request: Request<pb::FetchCheckpointRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let dir = self.resolve(&request.into_inner().checkpoint)?;
        let files = files_of(&dir).map_err(|e| Status::not_found(format!("checkpoint: {e:#}")))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            for (name, sha256) in files {
                if let Err(e) = send_file(&dir, &name, &sha256, &tx) {
                    let _ = tx.blocking_send(Err(Status::not_found(format!(
                        "{}: {e:#} (deleted while being fetched?)",
                        name
                    ))));
                    return;
                }
            }
        });
        metrics::counter!("dsm_learner_checkpoint_fetches_total").increment(1);
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

/// The files to send, in order, with their checksums: the manifest, its files, `DONE`.
fn files_of(dir: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(dir.join(MANIFEST)).context("reading manifest.json")?;
    let manifest: serde_json::Value = serde_json::from_str(&text).context("manifest.json is not JSON")?;
    let listed = manifest["files"].as_object().context("manifest.json has no files")?;
    let mut out = vec![(MANIFEST.to_string(), sha256_of(&dir.join(MANIFEST))?)];
    for (name, sha) in listed {
        check_name(name)?;
        out.push((name.clone(), sha.as_str().context("manifest.json: a checksum is not a string")?.to_string()));
    }
    out.push((DONE.to_string(), sha256_of(&dir.join(DONE))?));
    Ok(out)
}

fn send_file(
    dir: &Path,
    name: &str,
    sha256: &str,
    tx: &tokio::sync::mpsc::Sender<Result<pb::CheckpointChunk, Status>>,
) -> Result<()> {
    let path = dir.join(name);
    let mut f = std::fs::File::open(&path)?;
    let size = f.metadata()?.len();
    let header = pb::CheckpointFile { name: name.to_string(), size, sha256: sha256.to_string() };
    let send = |part| {
        tx.blocking_send(Ok(pb::CheckpointChunk { part: Some(part) })).map_err(|_| anyhow::anyhow!("client gone"))
    };
    send(Part::File(header))?;
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut sent = 0u64;
    while sent < size {
        let n = f.read(&mut buf)?;
        if n == 0 {
            bail!("shorter than its {size} bytes");
        }
        send(Part::Data(buf[..n].to_vec()))?;
        sent += n as u64;
    }
    Ok(())
}

fn sha256_of(path: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    std::io::copy(&mut f, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A file name a checkpoint may hold: one plain component.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && Path::new(name).components().count() == 1;
    if !ok {
        bail!("{name:?} is not a plain file name");
    }
    Ok(())
}

/// Serves the checkpoints under `root` on `listen` (HOST:PORT; port 0 picks a free one) in a task
/// of the current runtime, with `grpc.health.v1`; returns the bound address.
pub async fn serve(listen: &str, root: &Path) -> Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("checkpoint store: listening on {listen}"))?;
    let bound = listener.local_addr()?;
    let service = CheckpointStoreService::new(root).with_context(|| format!("checkpoint store: {}", root.display()))?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<pb::checkpoint_store_server::CheckpointStoreServer<CheckpointStoreService>>().await;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(service.server())
            .serve_with_incoming(incoming);
        if let Err(e) = served.await {
            eprintln!("warning: the checkpoint store stopped: {e}");
        }
    });
    Ok(bound)
}

/// Fetches `checkpoint` from the `CheckpointStore` at `address` into `dest` (which must not exist),
/// checking every file; returns `dest`. `timeout` bounds the whole transfer.
pub async fn fetch(address: &str, checkpoint: &str, dest: &Path, timeout: Duration) -> Result<PathBuf> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .with_context(|| format!("checkpoint store address {address:?}"))?
        .connect_timeout(Duration::from_secs(10));
    let work = async {
        let channel =
            endpoint.connect().await.with_context(|| format!("connecting to the checkpoint store at {address}"))?;
        let mut client = CheckpointStoreClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let mut stream = client
            .fetch_checkpoint(pb::FetchCheckpointRequest { checkpoint: checkpoint.to_string() })
            .await
            .map_err(|s| anyhow::anyhow!("fetching {checkpoint} from {address}: {}", s.message()))?
            .into_inner();
        let partial = dest.with_extension("partial");
        if partial.exists() {
            std::fs::remove_dir_all(&partial)?;
        }
        std::fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
        let mut writer = Receiver::new(&partial);
        while let Some(chunk) =
            stream.message().await.map_err(|s| anyhow::anyhow!("fetching {checkpoint}: {}", s.message()))?
        {
            writer.take(chunk.part.context("a chunk without a part")?)?;
        }
        writer.finish()?;
        std::fs::rename(&partial, dest).with_context(|| format!("renaming into {}", dest.display()))?;
        Ok(dest.to_path_buf())
    };
    tokio::time::timeout(timeout, work).await.with_context(|| format!("fetching {checkpoint} took over {timeout:?}"))?
}

/// The client's side of the stream: files written as they arrive, each checked on completion.
struct Receiver<'a> {
    dir: &'a Path,
    current: Option<(pb::CheckpointFile, std::fs::File, Sha256, u64)>,
    /// Checksums the manifest promises, once it has arrived.
    promised: Option<BTreeMap<String, String>>,
    received: Vec<String>,
    total: u64,
}

impl<'a> Receiver<'a> {
    fn new(dir: &'a Path) -> Self {
        Receiver { dir, current: None, promised: None, received: Vec::new(), total: 0 }
    }

    fn take(&mut self, part: Part) -> Result<()> {
        match part {
            Part::File(header) => {
                self.close()?;
                check_name(&header.name).context("the store sent a bad file name")?;
                if self.received.iter().any(|n| n == &header.name) {
                    bail!("the store sent {} twice", header.name);
                }
                if self.received.last().map(String::as_str) == Some(DONE) {
                    bail!("the store sent {} after DONE", header.name);
                }
                self.total = self.total.saturating_add(header.size);
                if self.total > MAX_CHECKPOINT_BYTES {
                    bail!("the checkpoint exceeds {MAX_CHECKPOINT_BYTES} bytes");
                }
                let f = std::fs::File::create(self.dir.join(&header.name))?;
                self.current = Some((header, f, Sha256::new(), 0));
            }
            Part::Data(bytes) => {
                let (header, f, hasher, got) = self.current.as_mut().context("data before any file header")?;
                *got += bytes.len() as u64;
                if *got > header.size {
                    bail!("{} is longer than its announced {} bytes", header.name, header.size);
                }
                hasher.update(&bytes);
                f.write_all(&bytes)?;
            }
        }
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        let Some((header, f, hasher, got)) = self.current.take() else { return Ok(()) };
        f.sync_all()?;
        if got != header.size {
            bail!("{} arrived with {got} of its {} bytes", header.name, header.size);
        }
        let sha = hex(&hasher.finalize());
        if sha != header.sha256 {
            bail!("{} fails its checksum", header.name);
        }
        match &self.promised {
            None if header.name != MANIFEST => bail!("the store sent {} before manifest.json", header.name),
            None => {
                let text = std::fs::read_to_string(self.dir.join(MANIFEST))?;
                let manifest: serde_json::Value = serde_json::from_str(&text).context("manifest.json is not JSON")?;
                let files = manifest["files"].as_object().context("manifest.json has no files")?;
                self.promised =
                    Some(files.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect());
            }
            Some(promised) => {
                if header.name != DONE && promised.get(&header.name) != Some(&sha) {
                    bail!("{} does not match the manifest's checksum", header.name);
                }
            }
        }
        self.received.push(header.name);
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        self.close()?;
        if self.received.last().map(String::as_str) != Some(DONE) {
            bail!("the transfer ended before DONE (the learner may have pruned the checkpoint)");
        }
        let promised = self.promised.as_ref().context("no manifest arrived")?;
        if let Some(missing) = promised.keys().find(|k| !self.received.contains(k)) {
            bail!("{missing} never arrived");
        }
        Ok(())
    }
}
