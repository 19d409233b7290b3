//! Minimal HTTP/1.1 `GET` against a local Odoo process, for health checks.
//!
//! Only the status line matters and the peer is always 127.0.0.1, so a plain
//! `TcpStream` does the job; an HTTP client crate would add a dependency
//! tree (and TLS stacks) for nothing.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::error::{OdooError, Result};

fn url(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}

/// `GET http://127.0.0.1:<port><path>` with `Connection: close`; returns the
/// response's status code. `timeout` bounds the whole exchange (connect,
/// send, and reading the status line).
pub fn http_get(port: u16, path: &str, timeout: Duration) -> Result<u16> {
    let err = |message: String| OdooError::Http {
        url: url(port, path),
        message,
    };
    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(err(
            "the path must start with / and contain no spaces or control characters".into(),
        ));
    }
    let deadline = Instant::now() + timeout;
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| err(e.to_string()))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: careplane\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    );
    let t = remaining().ok_or_else(|| err("timed out".into()))?;
    stream
        .set_write_timeout(Some(t))
        .map_err(|e| err(e.to_string()))?;
    stream
        .write_all(request.as_bytes())
        .map_err(|e| err(format!("sending the request: {e}")))?;

    // Read until the status line is complete.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 8192 {
        let t = remaining().ok_or_else(|| err("timed out waiting for the response".into()))?;
        stream
            .set_read_timeout(Some(t))
            .map_err(|e| err(e.to_string()))?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(err("timed out waiting for the response".into()))
            }
            Err(e) => return Err(err(format!("reading the response: {e}"))),
        }
    }
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = String::from_utf8_lossy(&buf[..line_end]);
    let mut parts = line.split_ascii_whitespace();
    match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") && code.len() == 3 => code
            .parse::<u16>()
            .map_err(|_| err(format!("malformed status line {:?}", line.trim_end()))),
        _ if buf.is_empty() => Err(err("connection closed without a response".into())),
        _ => Err(err(format!("malformed status line {:?}", line.trim_end()))),
    }
}

/// Polls `GET path` until it answers 200 or `deadline` (from now) passes.
/// The error names the URL and the last failure (a status code or a
/// connection error), which is what an operator needs to tell "Odoo is not
/// listening" from "Odoo answers 500".
pub fn wait_healthy(port: u16, path: &str, deadline: Duration) -> Result<()> {
    let end = Instant::now() + deadline;
    let mut last;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let attempt = left.clamp(Duration::from_millis(100), Duration::from_secs(5));
        last = match http_get(port, path, attempt) {
            Ok(200) => return Ok(()),
            Ok(code) => format!("status {code}"),
            Err(OdooError::Http { message, .. }) => message,
            Err(e) => e.to_string(),
        };
        if Instant::now() >= end {
            break;
        }
        std::thread::sleep(
            Duration::from_millis(200).min(end.saturating_duration_since(Instant::now())),
        );
    }
    Err(OdooError::Http {
        url: url(port, path),
        message: format!(
            "not healthy after {:.1}s; last result: {last}",
            deadline.as_secs_f64()
        ),
    })
}
