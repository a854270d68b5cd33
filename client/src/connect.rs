//! Channels to our servers, with the transport settings every role shares, and the deadline every
//! unary call carries (Conventions: "every RPC has a deadline"; "gRPC message limits are set
//! explicitly").
//!
//! A tonic [`Channel`] reconnects by itself after its connection breaks, so a process makes one
//! per server address and keeps it across a server restart at that address; what a caller retries
//! is the *call*, with [`crate::backoff::Backoff`]. HTTP/2 keepalive pings are what detect a peer
//! that vanished without closing its socket (a killed VM, a partition): long-lived streams (an
//! actor's inserts, a registry watch) have no deadline of their own, so without them a client
//! could wait forever for messages that will never come.

use std::time::{Duration, Instant};

use proto::pb::coordinator_client::CoordinatorClient;
use proto::pb::replay_client::ReplayClient;
use proto::MAX_MESSAGE_BYTES;
use tonic::transport::{Channel, Endpoint};

use crate::backoff::Backoff;

/// Deadline of every unary call to the coordinator and of a shard's `Stats`: control-plane calls
/// that answer in microseconds, so only a dead or partitioned server ever reaches it.
pub const RPC_DEADLINE: Duration = Duration::from_secs(10);
/// How long one connection attempt (TCP and the HTTP/2 handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Keepalive ping period on idle connections, and how long a ping may go unanswered before the
/// connection counts as dead.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("bad address {address:?}: {message}")]
    BadAddress { address: String, message: String },
    #[error("{address} is not reachable after {patience:?}: {cause}")]
    Unreachable { address: String, patience: Duration, cause: String },
}

/// An endpoint for `addr` (`HOST:PORT`, or a URI with a scheme) with the shared settings:
/// [`CONNECT_TIMEOUT`], TCP_NODELAY (without it Nagle's algorithm and delayed ACKs cap a stream
/// of small messages at a few hundred per second), an adaptive HTTP/2 window, keepalive pings.
/// Callers may adjust it further (the sampling client connects with a shorter timeout).
pub fn endpoint(addr: &str) -> Result<Endpoint, ConnectError> {
    let uri = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    Ok(Endpoint::from_shared(uri)
        .map_err(|e| ConnectError::BadAddress { address: addr.to_string(), message: e.to_string() })?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_adaptive_window(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// Connects to `addr`, retrying with `backoff` while attempts fail, for at most `patience`
/// (zero: one attempt). Each retry is logged on stderr with its delay, as "`what` `addr` not
/// reachable (cause); retrying in …" (`what` names the server: "coordinator").
pub async fn connect_patiently(
    what: &str,
    addr: &str,
    patience: Duration,
    backoff: &mut Backoff,
) -> Result<Channel, ConnectError> {
    let endpoint = endpoint(addr)?;
    let start = Instant::now();
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(e) if start.elapsed() < patience => {
                let delay = backoff.next_delay();
                eprintln!("{what} {addr} not reachable ({}); retrying in {delay:.1?}", error_chain(&e));
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                return Err(ConnectError::Unreachable { address: addr.to_string(), patience, cause: error_chain(&e) })
            }
        }
    }
}

/// A channel to `addr` that connects on its first call: a server that is down shows up as an
/// error of that call, not here. Must be called within a tokio runtime.
pub fn connect_lazy(addr: &str) -> Result<Channel, ConnectError> {
    Ok(endpoint(addr)?.connect_lazy())
}

/// A `Coordinator` client on `channel`, with the message limits set both ways.
pub fn coordinator_client(channel: Channel) -> CoordinatorClient<Channel> {
    CoordinatorClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// A `Replay` client on `channel`, with the message limits set both ways.
pub fn replay_client(channel: Channel) -> ReplayClient<Channel> {
    ReplayClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// `message` as a request with `deadline` (sent as `grpc-timeout`, so the server gives up too).
pub fn with_deadline<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(deadline);
    r
}

/// `message` as a request with [`RPC_DEADLINE`].
pub fn request<T>(message: T) -> tonic::Request<T> {
    with_deadline(message, RPC_DEADLINE)
}

/// "what: message (Code)": one log line for a failed call.
pub fn status_line(what: &str, s: &tonic::Status) -> String {
    format!("{what}: {} ({:?})", s.message(), s.code())
}

/// An error and its sources on one line, "a: b: c" (tonic's transport error says only
/// "transport error"; the cause is in its sources).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        line.push_str(": ");
        line.push_str(&s.to_string());
        source = s.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_get_a_scheme_and_bad_ones_are_named() {
        assert_eq!(endpoint("127.0.0.1:50051").unwrap().uri().to_string(), "http://127.0.0.1:50051/");
        assert_eq!(endpoint("http://h:1").unwrap().uri().to_string(), "http://h:1/");
        let err = endpoint("not an address").unwrap_err().to_string();
        assert!(err.contains("\"not an address\""), "{err}");
    }

    /// A refused connection is retried until the patience runs out, and the error names the
    /// address and the cause.
    #[tokio::test]
    async fn an_unreachable_server_is_retried_then_reported() {
        // A port that was free a moment ago: connections are refused.
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(20), 1);
        let start = Instant::now();
        let err = connect_patiently("test server", &addr, Duration::from_millis(100), &mut backoff).await.unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(100), "gave up after {:?}", start.elapsed());
        let text = err.to_string();
        assert!(text.contains(&addr) && text.contains("not reachable after"), "{text}");
    }
}
