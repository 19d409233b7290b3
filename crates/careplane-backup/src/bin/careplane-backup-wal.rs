//! `archive_command` / `restore_command` for PostgreSQL until the careplane
//! CLI has `careplane backup wal-push|wal-fetch`:
//!
//! ```text
//! careplane-backup-wal archive <wal-keys.json> <repository-url> %p %f
//! careplane-backup-wal restore <wal-keys.json> <repository-url> %f %p
//! ```
//!
//! `wal-keys.json` is written by `WalKeys::write_file` (0600, owned by the
//! PostgreSQL service user): the WAL key only, never the repository secret.
//! Identities are needed only for `restore`. For s3:// the endpoint, region
//! and credentials come from the environment (`AWS_*`). Exit 0 on success, 1
//! when `restore` finds no such WAL file, 2 on any error (on stderr).

use std::path::Path;
use std::process::ExitCode;

use careplane_backup::{error_chain, WalArchive, WalKeys};

fn run(args: &[String]) -> Result<ExitCode, String> {
    let [cmd, keys, url, a, b] = args else {
        return Err(
            "usage: careplane-backup-wal archive|restore <wal-keys.json> <url> <arg> <arg>".into(),
        );
    };
    let keys = WalKeys::read_file(Path::new(keys)).map_err(|e| error_chain(&e))?;
    let archive = WalArchive::open(url, &keys, &[]).map_err(|e| error_chain(&e))?;
    match cmd.as_str() {
        "archive" => archive
            .archive_wal(Path::new(a), b)
            .map(|_| ExitCode::SUCCESS)
            .map_err(|e| error_chain(&e)),
        "restore" => match archive.restore_wal(a, Path::new(b)) {
            Ok(true) => Ok(ExitCode::SUCCESS),
            Ok(false) => Ok(ExitCode::from(1)),
            Err(e) => Err(error_chain(&e)),
        },
        other => Err(format!("unknown command {other:?} (archive or restore)")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("careplane-backup-wal: {msg}");
            ExitCode::from(2)
        }
    }
}
