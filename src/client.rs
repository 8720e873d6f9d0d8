//! A minimal blocking HTTP/1.1 client over `std::net::TcpStream`, for the client commands
//! (`aiop status`) and the integration tests: one request per connection (`Connection: close`),
//! bodies framed by `Content-Length`, chunked encoding, or the end of the stream.
//!
//! Invariants: every call is bounded by its timeout (connect, read and write), and running out
//! of it is [`ClientError::Timeout`]; a response that is not well-formed HTTP/1.x is an error,
//! never a partial [`Response`]. Paths are sent as given: encode ids with [`path_segment`].

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Errors of talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{addr}: {error}")]
    Io { addr: String, error: std::io::Error },
    /// Connected (or connecting) but no progress within the timeout: a daemon that hangs, or
    /// something else listening there.
    #[error("{addr}: timed out after {} s {during}", after.as_secs_f64())]
    Timeout {
        addr: String,
        after: Duration,
        during: &'static str,
    },
    #[error("{addr}: malformed HTTP response: {message}")]
    Malformed { addr: String, message: String },
}

/// `s` as one path segment of a URL: every byte but the unreserved `A-Z a-z 0-9 - . _ ~`
/// percent-encoded, so that a space, `?`, `#` or `/` in an id stays part of the segment.
pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A response: status, headers (names lower-cased), body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Send one request to `addr` (`host:port`) and read the whole response.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let io = |source| ClientError::Io {
        addr: addr.to_string(),
        error: source,
    };
    // An I/O error during a step, a timeout (a socket timeout reads as WouldBlock) said as one.
    let step = |during: &'static str| {
        move |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ClientError::Timeout {
                addr: addr.to_string(),
                after: timeout,
                during,
            },
            _ => io(e),
        }
    };
    let sock: SocketAddr = addr
        .to_socket_addrs()
        .map_err(io)?
        .next()
        .ok_or_else(|| io(std::io::Error::other("no address")))?;
    let mut s = TcpStream::connect_timeout(&sock, timeout).map_err(step("connecting"))?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())
        .map_err(step("sending the request"))?;
    if let Some(b) = body {
        // The server may answer (413) and close before reading a large body: not an error here.
        if let Err(e) = s.write_all(b) {
            if e.kind() != std::io::ErrorKind::BrokenPipe
                && e.kind() != std::io::ErrorKind::ConnectionReset
            {
                return Err(step("sending the request")(e));
            }
        }
    }
    let mut raw = Vec::new();
    if let Err(e) = s.read_to_end(&mut raw) {
        if raw.is_empty() || e.kind() != std::io::ErrorKind::ConnectionReset {
            return Err(step("waiting for the response")(e));
        }
    }
    parse(addr, &raw)
}

fn parse(addr: &str, raw: &[u8]) -> Result<Response, ClientError> {
    let bad = |message: &str| ClientError::Malformed {
        addr: addr.to_string(),
        message: message.to_string(),
    };
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(bad("no HTTP/1.x status line"));
    }
    let status: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let find = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    let body = if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        dechunk(rest).ok_or_else(|| bad("bad chunked body"))?
    } else if let Some(len) = find("content-length") {
        let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
        rest.get(..len)
            .ok_or_else(|| bad("body shorter than content-length"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_txt = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_txt.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_and_chunked_bodies() {
        let r = parse(
            "x",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nhi",
        )
        .unwrap();
        assert_eq!(
            (r.status, r.text().as_str(), r.header("x-a")),
            (200, "hi", Some("b"))
        );
        let r = parse(
            "x",
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.text().as_str()), (404, "abcde"));
        assert!(parse("x", b"garbage").is_err());
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(path_segment("t-seg-0123abcd"), "t-seg-0123abcd");
        assert_eq!(path_segment("a b?c/d#e%"), "a%20b%3Fc%2Fd%23e%25");
        assert_eq!(path_segment("é~._"), "%C3%A9~._");
    }
}
