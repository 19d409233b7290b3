//! Logging in Odoo's format:
//! `%(asctime)s %(pid)s %(levelname)s %(dbname)s %(name)s: %(message)s`,
//! local time with milliseconds (`2026-11-23 12:00:00,123`), `?` when no
//! database is involved. To the `logfile` (appended, parent directories
//! created like Odoo does) or else to stderr.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use crate::util;

pub const DEBUG: u8 = 10;
pub const INFO: u8 = 20;
pub const WARNING: u8 = 30;
pub const ERROR: u8 = 40;
pub const CRITICAL: u8 = 50;

struct Logger {
    min: u8,
    file: Option<Mutex<std::fs::File>>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Sets the level (`--log-level` value) and the destination.
pub fn init(log_level: &str, logfile: Option<&Path>) -> io::Result<()> {
    let min = match log_level {
        "warn" => WARNING,
        "error" => ERROR,
        "critical" => CRITICAL,
        l if l.starts_with("debug") || l == "test" || l == "notset" => DEBUG,
        _ => INFO,
    };
    let file = match logfile {
        Some(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let f = OpenOptions::new().create(true).append(true).open(path)?;
            Some(Mutex::new(f))
        }
        None => None,
    };
    let _ = LOGGER.set(Logger { min, file });
    Ok(())
}

fn level_name(level: u8) -> &'static str {
    match level {
        DEBUG => "DEBUG",
        INFO => "INFO",
        WARNING => "WARNING",
        ERROR => "ERROR",
        _ => "CRITICAL",
    }
}

/// Writes one record (multi-line messages are written as one record, like
/// Python's logging does with tracebacks).
pub fn log(level: u8, db: Option<&str>, name: &str, msg: &str) {
    let logger = LOGGER.get();
    if level < logger.map_or(INFO, |l| l.min) {
        return;
    }
    let line = format!(
        "{} {} {} {} {name}: {msg}\n",
        util::log_timestamp(),
        std::process::id(),
        level_name(level),
        db.unwrap_or("?"),
    );
    match logger.and_then(|l| l.file.as_ref()) {
        Some(file) => {
            let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
            let _ = f.write_all(line.as_bytes());
        }
        None => {
            let _ = io::stderr().lock().write_all(line.as_bytes());
        }
    }
}

pub fn info(db: Option<&str>, name: &str, msg: &str) {
    log(INFO, db, name, msg)
}
pub fn warning(db: Option<&str>, name: &str, msg: &str) {
    log(WARNING, db, name, msg)
}
pub fn error(db: Option<&str>, name: &str, msg: &str) {
    log(ERROR, db, name, msg)
}
pub fn critical(db: Option<&str>, name: &str, msg: &str) {
    log(CRITICAL, db, name, msg)
}

/// A Python-style traceback tail for `exc_info=True` records and uncaught
/// exceptions: the stand-in has no Python stack, only the exception line.
pub fn traceback(exception: &str) -> String {
    format!("Traceback (most recent call last):\n  File \"odoo-standin\", in <module>\n{exception}")
}
