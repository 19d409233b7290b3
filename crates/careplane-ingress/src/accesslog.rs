//! PHI-safe access log: one JSON line per request, written by a thread of
//! its own so a slow disk never holds a request. A record has no field that
//! could carry a body, a cookie, an authorization value or a query string.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use serde::Serialize;

use crate::Error;

/// What one request leaves in the log.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    pub time: String,
    pub id: &'a str,
    pub route: &'a str,
    pub host: &'a str,
    pub method: &'a str,
    /// The request path, never its query string.
    pub path: &'a str,
    pub proto: &'a str,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: f64,
    pub client: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked: Option<&'a str>,
}

enum Msg {
    Line(String),
    Reopen(Option<PathBuf>, mpsc::Sender<Result<(), String>>),
    Flush(mpsc::Sender<()>),
}

pub struct AccessLog {
    tx: mpsc::Sender<Msg>,
}

fn open(path: Option<&Path>) -> Result<Box<dyn Write + Send>, std::io::Error> {
    Ok(match path {
        Some(p) => {
            let f: File = OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o640)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(p)?;
            Box::new(f)
        }
        None => Box::new(std::io::stdout()),
    })
}

impl AccessLog {
    pub fn start(path: Option<&Path>) -> Result<AccessLog, Error> {
        let out = open(path).map_err(|e| Error::Io {
            path: path.map(Path::to_owned).unwrap_or_default(),
            what: "opening the access log",
            source: e,
        })?;
        let (tx, rx) = mpsc::channel::<Msg>();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(out, rx))
            .expect("spawn access log thread");
        Ok(AccessLog { tx })
    }

    pub fn write(&self, r: &Record<'_>) {
        let mut line = serde_json::to_string(r).expect("record serializes");
        line.push('\n');
        let _ = self.tx.send(Msg::Line(line));
    }

    /// Reopens (after rotation, or at a new path from a reload); on failure
    /// the old file stays in use.
    pub fn reopen(&self, path: Option<&Path>) -> Result<(), String> {
        let (tx, rx) = mpsc::channel();
        let _ = self.tx.send(Msg::Reopen(path.map(Path::to_owned), tx));
        rx.recv().unwrap_or(Ok(()))
    }

    /// Returns once every line sent before it is written.
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv();
        }
    }
}

fn writer(out: Box<dyn Write + Send>, rx: mpsc::Receiver<Msg>) {
    let mut out = BufWriter::with_capacity(64 << 10, out);
    let handle = |msg: Msg, out: &mut BufWriter<Box<dyn Write + Send>>| match msg {
        Msg::Line(l) => {
            let _ = out.write_all(l.as_bytes());
        }
        Msg::Reopen(p, ack) => {
            let _ = out.flush();
            let r = match open(p.as_deref()) {
                Ok(w) => {
                    *out = BufWriter::with_capacity(64 << 10, w);
                    Ok(())
                }
                Err(e) => Err(format!(
                    "opening the access log {}: {e}",
                    p.map(|p| p.display().to_string()).unwrap_or_default()
                )),
            };
            let _ = ack.send(r);
        }
        Msg::Flush(ack) => {
            let _ = out.flush();
            let _ = ack.send(());
        }
    };
    while let Ok(msg) = rx.recv() {
        handle(msg, &mut out);
        // Write what queued up meanwhile, then flush once per batch.
        while let Ok(msg) = rx.try_recv() {
            handle(msg, &mut out);
        }
        let _ = out.flush();
    }
}
