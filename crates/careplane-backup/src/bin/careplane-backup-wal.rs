//! `archive_command` / `restore_command` for PostgreSQL until the careplane
//! CLI has `careplane backup wal-push|wal-fetch`:
//!
//! ```text
//! careplane-backup-wal archive <keys.json> <repository-url> %p %f
//! careplane-backup-wal restore <keys.json> <repository-url> %f %p
//! ```
//!
//! `keys.json` is `{"secret": "<64 hex>", "recipients": ["age1…"],
//! "identities": ["AGE-SECRET-KEY-1…"]}` (identities only for restore), a
//! file only the PostgreSQL service user can read. Exit 0 on success, 1 when
//! `restore` finds no such WAL file, 2 on any error (message on stderr).

use std::path::Path;
use std::process::ExitCode;

use careplane_backup::{error_chain, Archived, RepoKeys, Repository, SecretString};

#[derive(serde::Deserialize)]
struct KeysFile {
    secret: String,
    recipients: Vec<String>,
    #[serde(default)]
    identities: Vec<String>,
}

fn run(args: &[String]) -> Result<ExitCode, String> {
    let [cmd, keys, url, a, b] = args else {
        return Err(
            "usage: careplane-backup-wal archive|restore <keys.json> <url> <arg> <arg>".into(),
        );
    };
    let text = std::fs::read_to_string(keys).map_err(|e| format!("reading {keys}: {e}"))?;
    let k: KeysFile = serde_json::from_str(&text)
        .map_err(|e| format!("{keys}: not a keys file: {}", e.classify_name()))?;
    let keys = RepoKeys {
        secret: SecretString::from(k.secret),
        recipients: k.recipients,
        identities: k.identities.into_iter().map(SecretString::from).collect(),
    };
    let repo = Repository::open(url, &keys).map_err(|e| error_chain(&e))?;
    match cmd.as_str() {
        "archive" => match repo.archive_wal(Path::new(a), b) {
            Ok(Archived::Stored | Archived::AlreadyArchived) => Ok(ExitCode::SUCCESS),
            Err(e) => Err(error_chain(&e)),
        },
        "restore" => match repo.restore_wal(a, Path::new(b)) {
            Ok(true) => Ok(ExitCode::SUCCESS),
            Ok(false) => Ok(ExitCode::from(1)),
            Err(e) => Err(error_chain(&e)),
        },
        other => Err(format!("unknown command {other:?} (archive or restore)")),
    }
}

trait Classify {
    fn classify_name(&self) -> &'static str;
}

impl Classify for serde_json::Error {
    // The file holds a secret: report where it is malformed, never its text.
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "JSON syntax error",
            serde_json::error::Category::Data => "missing or mistyped field",
            serde_json::error::Category::Eof => "truncated",
        }
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
