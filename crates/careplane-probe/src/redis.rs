//! Redis as the tenant's ACL user: `AUTH user password` then `PING`, in RESP over one
//! connection (two commands do not need a client library).

use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::{Failure, Found, Result};

#[derive(Clone, Debug)]
pub struct RedisCheck {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: SecretString,
}

fn bulk(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(format!("${}\r\n", s.len()).as_bytes());
    out.extend_from_slice(s);
    out.extend_from_slice(b"\r\n");
}

impl RedisCheck {
    pub(crate) async fn run(&self) -> Result<Found> {
        let addr = crate::resolve(&self.host, self.port).await?;
        let at = format!("{addr} as {}", self.user);
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| Failure::Down(format!("connecting to {addr}: {e}")))?;
        let mut cmd = b"*3\r\n".to_vec();
        bulk(&mut cmd, b"AUTH");
        bulk(&mut cmd, self.user.as_bytes());
        bulk(&mut cmd, self.password.expose_secret().as_bytes());
        cmd.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
        s.write_all(&cmd)
            .await
            .map_err(|e| Failure::Down(format!("{at}: writing: {e}")))?;
        drop(cmd);
        let mut r = BufReader::new(s);
        for (what, want) in [("AUTH", "+OK"), ("PING", "+PONG")] {
            let mut line = String::new();
            // Bounded: a line longer than 4 KiB is not an answer to these.
            let n = (&mut r)
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
            if line != want {
                // Redis error replies name the error (WRONGPASS, NOPERM), never the password.
                let shown: String = line.chars().take(200).collect();
                return Err(Failure::Down(format!("{at}: {what} answered {shown:?}")));
            }
        }
        Ok(Found::default())
    }
}
