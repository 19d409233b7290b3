//! Size-based log rotation for the supervised processes' output.
//!
//! Odoo logs to stderr when no `logfile` is configured; the supervisor pipes
//! that into `<name>.log` itself rather than letting Odoo write files, so the
//! log survives crashes that happen before Odoo's logging is set up (import
//! errors, a bad config), and rotation needs no cooperation from the child
//! (no `SIGHUP`/`copytruncate` races, no logrotate dependency).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// An append-only log file rotated at `max_bytes`: `name.log` →
/// `name.log.1` → … → `name.log.<keep>` (the oldest is deleted).
#[derive(Debug)]
pub(crate) struct RotatingLog {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: Option<File>,
    size: u64,
}

impl RotatingLog {
    /// Opens (creating 0600: Odoo logs can contain patient data in
    /// tracebacks) `path` for appending.
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> io::Result<Self> {
        let mut log = RotatingLog {
            path: path.to_path_buf(),
            max_bytes: max_bytes.max(1),
            keep,
            file: None,
            size: 0,
        };
        log.reopen()?;
        Ok(log)
    }

    fn reopen(&mut self) -> io::Result<()> {
        let f = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)?;
        self.size = f.metadata()?.len();
        self.file = Some(f);
        Ok(())
    }

    fn numbered(&self, n: u32) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        if self.keep == 0 {
            let _ = fs::remove_file(&self.path);
        } else {
            let _ = fs::remove_file(self.numbered(self.keep));
            for n in (1..self.keep).rev() {
                let from = self.numbered(n);
                if from.exists() {
                    fs::rename(&from, self.numbered(n + 1))?;
                }
            }
            fs::rename(&self.path, self.numbered(1))?;
        }
        self.reopen()
    }

    /// Appends `data`, rotating so that no file exceeds `max_bytes`: what
    /// does not fit goes to the next file, cut after the last complete line
    /// that fits (a single line longer than `max_bytes` is split).
    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let room = self.max_bytes.saturating_sub(self.size) as usize;
            if data.len() <= room {
                return self.append(data);
            }
            let cut = data[..room]
                .iter()
                .rposition(|&b| b == b'\n')
                .map(|i| i + 1);
            match cut {
                Some(n) => {
                    self.append(&data[..n])?;
                    data = &data[n..];
                }
                None if self.size == 0 => {
                    self.append(&data[..room])?;
                    data = &data[room..];
                }
                None => {}
            }
            self.rotate()?;
        }
        Ok(())
    }

    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        if self.file.is_none() {
            self.reopen()?;
        }
        let f = self.file.as_mut().expect("log file open");
        f.write_all(data)?;
        self.size += data.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_and_keeps_at_most_keep_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.log");
        let mut log = RotatingLog::open(&path, 100, 3).unwrap();
        for i in 0..50 {
            log.write(format!("line {i:04} ----------------\n").as_bytes())
                .unwrap();
        }
        assert!(path.exists());
        for n in 1..=3 {
            let p = dir.path().join(format!("web.log.{n}"));
            let len = fs::metadata(&p).unwrap().len();
            assert!(len > 0 && len <= 100, "{} has {len} bytes", p.display());
        }
        assert!(!dir.path().join("web.log.4").exists());
        // The newest lines are in the current file, the older ones in .1.
        let current = fs::read_to_string(&path).unwrap();
        assert!(current.contains("line 0049"), "{current}");
        let older = fs::read_to_string(dir.path().join("web.log.1")).unwrap();
        assert!(!older.contains("line 0049"));
    }

    #[test]
    fn large_writes_are_split_at_line_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.log");
        let mut log = RotatingLog::open(&path, 64, 10).unwrap();
        let mut big = Vec::new();
        for i in 0..20 {
            big.extend_from_slice(format!("line {i:02} xxxxxxxxxx\n").as_bytes());
        }
        big.extend_from_slice(&[b'y'; 150]);
        log.write(&big).unwrap();
        let mut all = Vec::new();
        for n in (1..=10).rev() {
            let p = dir.path().join(format!("web.log.{n}"));
            if let Ok(b) = fs::read(&p) {
                assert!(b.len() <= 64, "{} has {} bytes", p.display(), b.len());
                all.extend(b);
            }
        }
        let cur = fs::read(&path).unwrap();
        assert!(cur.len() <= 64);
        all.extend(cur);
        assert_eq!(all, big, "nothing lost or reordered");
    }

    #[test]
    fn keep_zero_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cron.log");
        let mut log = RotatingLog::open(&path, 10, 0).unwrap();
        log.write(b"0123456789").unwrap();
        log.write(b"abc").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "abc");
        assert!(!dir.path().join("cron.log.1").exists());
    }
}
