//! PHI-safe access log: one JSON line per request, written by a thread of
//! its own so a slow disk never holds a request. A record has no field that
//! could carry a body, a cookie, an authorization value or a query string.
//!
//! Requests append their line to a shared buffer and go on; the writer thread
//! is woken only when the buffer goes from empty to non-empty, then lets lines
//! gather for [`FLUSH_INTERVAL`] and writes them with one system call. Waking
//! it for every line (a futex wake and a write per request) cost more CPU than
//! the rest of the logging. So a line reaches the file at most
//! `FLUSH_INTERVAL` (plus the write) after its request ended, at once on
//! [`AccessLog::flush`], and on shutdown (drop).

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;

use crate::Error;

/// The longest a finished request's line waits in memory.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);

/// Past this many bytes waiting, the writer is woken before the interval.
const HIGH_WATER: usize = 256 << 10;

/// What one request leaves in the log.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    pub time: &'a str,
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
    pub client: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked: Option<&'a str>,
}

impl Record<'_> {
    /// The record as one JSON object, byte for byte what `serde_json` makes
    /// of it (a test holds the two together). Written by hand because
    /// serde's per-field dispatch and escaping were ~5% of the proxy's
    /// instructions per request.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"time\":");
        json_str(out, self.time);
        out.extend_from_slice(b",\"id\":");
        json_str(out, self.id);
        out.extend_from_slice(b",\"route\":");
        json_str(out, self.route);
        out.extend_from_slice(b",\"host\":");
        json_str(out, self.host);
        out.extend_from_slice(b",\"method\":");
        json_str(out, self.method);
        out.extend_from_slice(b",\"path\":");
        json_str(out, self.path);
        out.extend_from_slice(b",\"proto\":");
        json_str(out, self.proto);
        out.extend_from_slice(b",\"status\":");
        decimal(out, u64::from(self.status));
        out.extend_from_slice(b",\"bytes_in\":");
        decimal(out, self.bytes_in);
        out.extend_from_slice(b",\"bytes_out\":");
        decimal(out, self.bytes_out);
        out.extend_from_slice(b",\"duration_ms\":");
        millis(out, self.duration_ms);
        out.extend_from_slice(b",\"client\":\"");
        match self.client {
            IpAddr::V4(a) => {
                for (i, o) in a.octets().into_iter().enumerate() {
                    if i > 0 {
                        out.push(b'.');
                    }
                    decimal(out, u64::from(o));
                }
            }
            // Only hex digits and colons: nothing to escape.
            IpAddr::V6(a) => {
                let _ = write!(out, "{a}");
            }
        }
        out.push(b'"');
        if let Some(b) = self.blocked {
            out.extend_from_slice(b",\"blocked\":");
            json_str(out, b);
        }
        out.push(b'}');
    }
}

/// A JSON string as `serde_json` escapes it.
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let b = s.as_bytes();
    // Nearly every value needs no escape; a pass without early exit (which
    // the compiler vectorizes) finds out, at a fraction of the loop below.
    let plain = b
        .iter()
        .fold(true, |ok, &c| ok & (c >= 0x20) & (c != b'"') & (c != b'\\'));
    if plain {
        out.extend_from_slice(b);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => {
                out.extend_from_slice(&b[start..i]);
                out.extend_from_slice(b"\\u00");
                out.push(b"0123456789abcdef"[usize::from(c >> 4)]);
                out.push(b"0123456789abcdef"[usize::from(c & 0xf)]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&b[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

fn decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Milliseconds with at most three decimals (what the proxy records), as
/// `serde_json` prints such an `f64`: `12.0`, `1.5`, `0.042`. Anything else
/// (not a whole number of microseconds, or huge) goes through `serde_json`.
fn millis(out: &mut Vec<u8>, ms: f64) {
    let micros = (ms * 1e3).round();
    if !(0.0..1e12).contains(&micros) || micros / 1e3 != ms {
        let _ = serde_json::to_writer(&mut *out, &ms);
        return;
    }
    let micros = micros as u64;
    decimal(out, micros / 1000);
    out.push(b'.');
    let frac = micros % 1000;
    let digits = [frac / 100, frac / 10 % 10, frac % 10];
    let keep = if frac.is_multiple_of(100) {
        1
    } else if frac.is_multiple_of(10) {
        2
    } else {
        3
    };
    for d in &digits[..keep] {
        out.push(b'0' + *d as u8);
    }
}

type Ack = mpsc::Sender<Result<(), String>>;

#[derive(Default)]
struct State {
    pending: Vec<u8>,
    reopen: Option<(Option<PathBuf>, Ack)>,
    /// Flushes asked for, and the last one done.
    flush_asked: u64,
    flush_done: u64,
    stop: bool,
}

impl State {
    /// Something the writer must not wait the interval for.
    fn urgent(&self) -> bool {
        self.stop
            || self.reopen.is_some()
            || self.flush_asked != self.flush_done
            || self.pending.len() >= HIGH_WATER
    }
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    /// Wakes the writer.
    work: Condvar,
    /// Wakes those waiting for a flush.
    flushed: Condvar,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct AccessLog {
    inner: Arc<Inner>,
    writer: Option<std::thread::JoinHandle<()>>,
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

thread_local! {
    /// A request thread's scratch line, so serializing allocates nothing.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

/// How long a flush or reopen waits for the writer before giving up.
const ACK_DEADLINE: Duration = Duration::from_secs(10);

impl AccessLog {
    pub fn start(path: Option<&Path>) -> Result<AccessLog, Error> {
        let out = open(path).map_err(|e| Error::Io {
            path: path.map(Path::to_owned).unwrap_or_default(),
            what: "opening the access log",
            source: e,
        })?;
        let inner = Arc::new(Inner::default());
        let w = inner.clone();
        let writer = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(out, &w))
            .map_err(|e| Error::Io {
                path: path.map(Path::to_owned).unwrap_or_default(),
                what: "starting the access log writer",
                source: e,
            })?;
        Ok(AccessLog {
            inner,
            writer: Some(writer),
        })
    }

    pub fn write(&self, r: &Record<'_>) {
        LINE.with_borrow_mut(|line| {
            line.clear();
            r.write_json(line);
            line.push(b'\n');
            let mut st = self.inner.lock();
            let was_empty = st.pending.is_empty();
            st.pending.extend_from_slice(line);
            let wake = was_empty || st.pending.len() >= HIGH_WATER;
            drop(st);
            if wake {
                self.inner.work.notify_one();
            }
        });
    }

    /// Reopens (after rotation, or at a new path from a reload); on failure
    /// the old file stays in use.
    pub fn reopen(&self, path: Option<&Path>) -> Result<(), String> {
        let (tx, rx) = mpsc::channel();
        self.inner.lock().reopen = Some((path.map(Path::to_owned), tx));
        self.inner.work.notify_one();
        match rx.recv_timeout(ACK_DEADLINE) {
            Ok(r) => r,
            Err(_) => Err(format!(
                "the access log writer did not reopen {} within {ACK_DEADLINE:?}",
                path.map(|p| p.display().to_string()).unwrap_or_default()
            )),
        }
    }

    /// Returns once every line written before it is in the file (or after
    /// 10 s, if the disk is that slow).
    pub fn flush(&self) {
        let mut st = self.inner.lock();
        st.flush_asked += 1;
        let mine = st.flush_asked;
        self.inner.work.notify_one();
        let _ = self
            .inner
            .flushed
            .wait_timeout_while(st, ACK_DEADLINE, |s| s.flush_done < mine);
    }
}

impl Drop for AccessLog {
    /// Writes what is left and stops the writer.
    fn drop(&mut self) {
        self.inner.lock().stop = true;
        self.inner.work.notify_one();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn writer(out: Box<dyn Write + Send>, inner: &Inner) {
    let mut out = BufWriter::with_capacity(64 << 10, out);
    let mut batch = Vec::new();
    loop {
        let mut st = inner.lock();
        // Idle until there is something to do.
        st = inner
            .work
            .wait_while(st, |s| s.pending.is_empty() && !s.urgent())
            .unwrap_or_else(|p| p.into_inner());
        if !st.urgent() {
            // Let the lines of the requests now finishing join this write.
            st = inner
                .work
                .wait_timeout_while(st, FLUSH_INTERVAL, |s| !s.urgent())
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        std::mem::swap(&mut batch, &mut st.pending);
        let reopen = st.reopen.take();
        let flush = st.flush_asked;
        let stop = st.stop;
        drop(st);

        let _ = out.write_all(&batch);
        let _ = out.flush();
        batch.clear();
        if let Some((p, ack)) = reopen {
            let r = match open(p.as_deref()) {
                Ok(w) => {
                    out = BufWriter::with_capacity(64 << 10, w);
                    Ok(())
                }
                Err(e) => Err(format!(
                    "opening the access log {}: {e}",
                    p.map(|p| p.display().to_string()).unwrap_or_default()
                )),
            };
            let _ = ack.send(r);
        }
        inner.lock().flush_done = flush;
        inner.flushed.notify_all();
        if stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(id: &'a str, time: &'a str) -> Record<'a> {
        Record {
            time,
            id,
            route: "a.example",
            host: "a.example",
            method: "GET",
            path: "/web",
            proto: "HTTP/1.1",
            status: 200,
            bytes_in: 0,
            bytes_out: 10,
            duration_ms: 1.5,
            client: "192.0.2.7".parse().unwrap(),
            blocked: None,
        }
    }

    fn lines(p: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    #[test]
    fn hand_written_json_is_what_serde_json_writes() {
        let paths = [
            "/web",
            "/a\"b\\c",
            "/ctl\u{0}\u{1}\u{8}\t\n\u{b}\u{c}\r\u{1f}\u{7f}",
            "/é/日本/😀",
            "",
        ];
        let durations = [
            0.0,
            0.001,
            0.01,
            0.042,
            0.1,
            1.5,
            12.0,
            12.34,
            999.999,
            1234567.891,
            0.0005,
            1e300,
            f64::NAN,
        ];
        let clients = [
            "192.0.2.7",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
            "::ffff:192.0.2.1",
        ];
        for (i, path) in paths.iter().enumerate() {
            for (j, d) in durations.iter().enumerate() {
                let client = clients[(i + j) % clients.len()];
                let mut r = record("00ab", "2026-12-02T06:00:00.000Z");
                r.path = path;
                r.host = path;
                r.duration_ms = *d;
                r.client = client.parse().unwrap();
                r.status = [200, 101, 404, 503][j % 4];
                r.bytes_in = [0, 9, 10, 18446744073709551615][j % 4];
                r.blocked = (j % 2 == 0).then_some("db-service");
                let mut mine = Vec::new();
                r.write_json(&mut mine);
                let theirs = serde_json::to_vec(&r).unwrap();
                assert_eq!(
                    String::from_utf8_lossy(&mine),
                    String::from_utf8_lossy(&theirs)
                );
            }
        }
    }

    #[test]
    fn lines_reach_the_file_without_a_flush_call() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("access.log");
        let log = AccessLog::start(Some(&p)).unwrap();
        log.write(&record("1", "2026-12-02T06:00:00.000Z"));
        // No flush: the writer must get there by itself (bounded wait).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lines(&p).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the line never reached {} without a flush",
                p.display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let got = lines(&p);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["id"], "1");
        assert_eq!(got[0]["client"], "192.0.2.7");
        assert!(got[0].get("blocked").is_none());
        drop(log);
    }

    #[test]
    fn flush_and_drop_write_every_line_from_every_thread() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("access.log");
        let log = Arc::new(AccessLog::start(Some(&p)).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..2000 {
                        log.write(&record(&format!("{t}-{i}"), "t"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        log.flush();
        assert_eq!(lines(&p).len(), 8000);

        for i in 0..100 {
            log.write(&record(&format!("last-{i}"), "t"));
        }
        drop(Arc::into_inner(log).expect("the only owner"));
        let got = lines(&p);
        assert_eq!(got.len(), 8100, "drop wrote what was left");
        let mut ids: Vec<&str> = got.iter().map(|v| v["id"].as_str().unwrap()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 8100, "no line lost or written twice");
    }

    #[test]
    fn reopen_moves_to_the_new_file_and_a_bad_path_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let (p1, p2) = (dir.path().join("1.log"), dir.path().join("2.log"));
        let log = AccessLog::start(Some(&p1)).unwrap();
        log.write(&record("a", "t"));
        log.reopen(Some(&p2)).unwrap();
        log.write(&record("b", "t"));
        let err = log
            .reopen(Some(&dir.path().join("missing/3.log")))
            .unwrap_err();
        assert!(err.contains("missing/3.log"), "{err}");
        log.write(&record("c", "t"));
        log.flush();
        let ids = |p: &Path| -> Vec<String> {
            lines(p)
                .iter()
                .map(|v| v["id"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(ids(&p1), ["a"]);
        assert_eq!(ids(&p2), ["b", "c"]);
    }
}
