//! The smallest HTTP client that reading `/metrics` and Prometheus's API needs: one blocking
//! HTTP/1.0 GET per connection, so the body ends where the server closes it and no chunked
//! encoding or keep-alive has to be understood. Everything it talks to is on the local network.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// A response: its status code and body.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// Resolves `HOST:PORT` (an `http://` prefix and a trailing `/` are accepted) to its first
/// address, with an error naming the address.
pub fn resolve(address: &str) -> Result<SocketAddr, String> {
    let host_port = address.trim_start_matches("http://").trim_end_matches('/');
    host_port
        .to_socket_addrs()
        .map_err(|e| format!("{address}: not a HOST:PORT that resolves ({e})"))?
        .next()
        .ok_or_else(|| format!("{address}: resolves to no address"))
}

/// GETs `path` (with its query string, already encoded) from `addr`, each step bounded by
/// `timeout`. An error says what failed: connecting, sending, reading, or a reply that is not HTTP.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response, String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|_| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    // One write: a request split over packets is fine for HTTP but needless.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| format!("sending to {addr}: {e}"))?;
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).map_err(|e| format!("reading from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&bytes);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("{addr}: the reply is not HTTP"))?;
    let status = head
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("{addr}: the reply is not HTTP: {}", head.lines().next().unwrap_or("")))?;
    Ok(Response { status, body: body.to_string() })
}

/// Percent-encodes a query-string value (RFC 3986 unreserved characters stay as they are).
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-shot server that answers `reply` and hands back the request it read.
    fn serve_once(reply: &'static str) -> (SocketAddr, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "the request ended early");
                request.extend_from_slice(&buf[..n]);
            }
            s.write_all(reply.as_bytes()).unwrap();
            String::from_utf8_lossy(&request).to_string()
        });
        (addr, handle)
    }

    #[test]
    fn gets_status_and_body() {
        let (addr, server) = serve_once("HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\n\r\nbad query");
        let r = get(addr, "/api/v1/query?query=up", Duration::from_secs(5)).unwrap();
        assert_eq!(r, Response { status: 400, body: "bad query".into() });
        assert!(server.join().unwrap().starts_with("GET /api/v1/query?query=up HTTP/1.0\r\n"));
    }

    #[test]
    fn a_reply_that_is_not_http_is_an_error() {
        let (addr, _server) = serve_once("SSH-2.0-OpenSSH\r\n\r\n");
        let e = get(addr, "/", Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("not HTTP"), "{e}");
    }

    #[test]
    fn encodes_promql() {
        assert_eq!(encode("rate(x{a=\"b\"}[1m])"), "rate%28x%7Ba%3D%22b%22%7D%5B1m%5D%29");
        assert_eq!(encode("a-b_c.d~"), "a-b_c.d~");
    }

    #[test]
    fn resolves_with_or_without_a_scheme() {
        assert_eq!(resolve("http://127.0.0.1:9090/").unwrap(), "127.0.0.1:9090".parse().unwrap());
        assert!(resolve("nohost").unwrap_err().contains("nohost"));
    }
}
