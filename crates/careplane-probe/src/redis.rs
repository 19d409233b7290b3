//! Redis as the tenant's ACL user: `AUTH user password` then `PING`, in RESP over one
//! connection (a few commands do not need a client library). Optionally the server's
//! memory headroom: `INFO memory` (`used_memory` against `maxmemory`) on a second
//! connection as careplane's own user, never the tenant's: tenants may not run `INFO`
//! (docs/design/0012, "Redis memory headroom").

use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::{Failure, Found, MemoryUse, Result};

#[derive(Clone, Debug)]
pub struct RedisCheck {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: SecretString,
    /// Read the server's memory headroom too; `None`: only `AUTH` + `PING`.
    pub memory: Option<RedisMemory>,
}

/// How to read a Redis server's memory: as careplane's own ACL user (one allowed to run
/// `INFO`), and the least headroom (`maxmemory − used_memory`, in percent of `maxmemory`)
/// below which the probe is down.
#[derive(Clone, Debug)]
pub struct RedisMemory {
    pub user: String,
    pub password: SecretString,
    pub min_headroom_percent: u8,
}

/// Default least headroom: a Redis within 10 % of `maxmemory` is evicting (cache) or about
/// to refuse writes (`volatile-lru` sessions without volatile keys left).
pub const DEFAULT_MIN_HEADROOM_PERCENT: u8 = 10;

fn bulk(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(format!("${}\r\n", s.len()).as_bytes());
    out.extend_from_slice(s);
    out.extend_from_slice(b"\r\n");
}

fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        bulk(out, a);
    }
}

/// The largest reply read: `INFO memory` is about 1.5 KB.
const MAX_REPLY: u64 = 64 * 1024;

/// Reads one reply: a simple string, an error (`Err` with its text), or a bulk string.
async fn reply(r: &mut BufReader<TcpStream>, at: &str, what: &str) -> Result<String> {
    let mut line = String::new();
    // Bounded: a line longer than 4 KiB is not an answer to these.
    let n = (&mut *r)
        .take(4096)
        .read_line(&mut line)
        .await
        .map_err(|e| Failure::Down(format!("{at}: reading the {what} answer: {e}")))?;
    if n == 0 {
        return Err(Failure::Down(format!(
            "{at}: connection closed before the {what} answer"
        )));
    }
    let line = line.trim_end();
    if let Some(len) = line.strip_prefix('$') {
        let len: u64 = len
            .parse()
            .ok()
            .filter(|l| *l <= MAX_REPLY)
            .ok_or_else(|| Failure::Down(format!("{at}: {what} answered a bad length {len:?}")))?;
        let mut buf = vec![0u8; len as usize + 2];
        r.read_exact(&mut buf)
            .await
            .map_err(|e| Failure::Down(format!("{at}: reading the {what} answer: {e}")))?;
        buf.truncate(len as usize);
        return Ok(String::from_utf8_lossy(&buf).into_owned());
    }
    Ok(line.to_string())
}

fn expect(at: &str, what: &str, got: &str, want: &str) -> Result<()> {
    if got == want {
        return Ok(());
    }
    // Redis error replies name the error (WRONGPASS, NOPERM), never the password.
    let shown: String = got.chars().take(200).collect();
    Err(Failure::Down(format!("{at}: {what} answered {shown:?}")))
}

async fn connect(host: &str, port: u16, user: &str) -> Result<(BufReader<TcpStream>, String)> {
    let addr = crate::resolve(host, port).await?;
    let at = format!("{addr} as {user}");
    let s = TcpStream::connect(addr)
        .await
        .map_err(|e| Failure::Down(format!("connecting to {addr}: {e}")))?;
    Ok((BufReader::new(s), at))
}

async fn send(r: &mut BufReader<TcpStream>, at: &str, cmd: Vec<u8>) -> Result<()> {
    let mut cmd = cmd;
    let w = r.get_mut().write_all(&cmd).await;
    // The buffer held the password.
    cmd.iter_mut().for_each(|b| *b = 0);
    w.map_err(|e| Failure::Down(format!("{at}: writing: {e}")))
}

/// `used_memory` and `maxmemory` of an `INFO memory` answer.
pub(crate) fn parse_memory(info: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        info.lines().find_map(|l| {
            let (k, v) = l.trim_end().split_once(':')?;
            (k == name).then(|| v.parse::<u64>().ok())?
        })
    };
    Some((field("used_memory")?, field("maxmemory")?))
}

fn mib(b: u64) -> String {
    format!("{}.{} MiB", b / (1 << 20), (b % (1 << 20)) * 10 / (1 << 20))
}

impl RedisCheck {
    pub(crate) async fn run(&self) -> Result<Found> {
        let (mut r, at) = connect(&self.host, self.port, &self.user).await?;
        let mut cmd = Vec::new();
        command(
            &mut cmd,
            &[
                b"AUTH",
                self.user.as_bytes(),
                self.password.expose_secret().as_bytes(),
            ],
        );
        command(&mut cmd, &[b"PING"]);
        send(&mut r, &at, cmd).await?;
        for (what, want) in [("AUTH", "+OK"), ("PING", "+PONG")] {
            let got = reply(&mut r, &at, what).await?;
            expect(&at, what, &got, want)?;
        }
        drop(r);
        let Some(m) = &self.memory else {
            return Ok(Found::default());
        };
        let memory = self.memory(m).await?;
        if let Some(permille) = memory.used_permille {
            let headroom = 1000u32.saturating_sub(permille);
            if headroom < u32::from(m.min_headroom_percent) * 10 {
                return Err(Failure::Down(format!(
                    "memory headroom {}.{}% (used {} of maxmemory {}) is below the minimum {}%",
                    headroom / 10,
                    headroom % 10,
                    mib(memory.used_bytes),
                    mib(memory.max_bytes),
                    m.min_headroom_percent
                )));
            }
        }
        Ok(Found {
            memory: Some(memory),
            ..Found::default()
        })
    }

    async fn memory(&self, m: &RedisMemory) -> Result<MemoryUse> {
        let (mut r, at) = connect(&self.host, self.port, &m.user).await?;
        let mut cmd = Vec::new();
        command(
            &mut cmd,
            &[
                b"AUTH",
                m.user.as_bytes(),
                m.password.expose_secret().as_bytes(),
            ],
        );
        command(&mut cmd, &[b"INFO", b"memory"]);
        send(&mut r, &at, cmd).await?;
        let got = reply(&mut r, &at, "AUTH").await?;
        // careplane's own credential failing says nothing about the tenant's service.
        expect(&at, "AUTH", &got, "+OK").map_err(|e| Failure::Unknown(e.to_string()))?;
        let info = reply(&mut r, &at, "INFO memory").await?;
        let (used, max) = parse_memory(&info).ok_or_else(|| {
            let shown: String = info.chars().take(200).collect();
            Failure::Unknown(format!(
                "{at}: INFO memory has no used_memory/maxmemory: {shown:?}"
            ))
        })?;
        Ok(MemoryUse {
            used_bytes: used,
            max_bytes: max,
            used_permille: (max > 0).then(|| (used.saturating_mul(1000) / max).min(1000) as u32),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_fields_are_read_from_info() {
        let info = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\nmaxmemory:2097152\r\nmaxmemory_human:2.00M\r\n";
        assert_eq!(super::parse_memory(info), Some((1_048_576, 2_097_152)));
        assert_eq!(super::parse_memory("used_memory_peak:5\r\n"), None);
    }
}
