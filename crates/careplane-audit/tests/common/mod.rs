#![allow(dead_code)]

use std::path::Path;

use careplane_audit::{
    Actor, ActorKind, AuditLog, Event, Options, Outcome, SigningKey, Status, Witness,
};
use serde_json::json;

pub fn key() -> SigningKey {
    SigningKey::from_bytes(&[42u8; 32])
}

pub fn event(i: u64) -> Event {
    let tenant = ["stmarys", "northside", "eastgate"][(i % 3) as usize];
    Event {
        actor: Actor {
            kind: if i.is_multiple_of(5) {
                ActorKind::Service
            } else {
                ActorKind::User
            },
            id: format!("user{}@example.org", i % 4),
            auth: "oidc".into(),
            mfa: i.is_multiple_of(2),
            elevation: None,
        },
        action: ["apply", "start", "stop", "modules.install"][(i % 4) as usize].into(),
        target: format!("odoo-env/{tenant}/production"),
        tenant: Some(tenant.into()),
        parameters: json!({"i": i, "modules": ["base", "contacts"], "note": "plain text"}),
        result: Outcome {
            status: if i % 7 == 3 {
                Status::Failed
            } else {
                Status::Succeeded
            },
            message: None,
        },
        operation: Some(format!("op-{i}")),
    }
}

/// Options without automatic checkpoints, so tests choose where they fall.
pub fn manual(witness: Option<&Path>) -> Options {
    Options {
        witness: witness.map(|w| Witness::Directory(w.to_path_buf())),
        checkpoint_every: 0,
        checkpoint_interval: None,
        ..Options::default()
    }
}

pub fn lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("entries.jsonl"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

pub fn write_lines(dir: &Path, lines: &[String]) {
    let mut s = lines.join("\n");
    if !lines.is_empty() {
        s.push('\n');
    }
    std::fs::write(dir.join("entries.jsonl"), s).unwrap();
}

pub fn open(dir: &Path, witness: Option<&Path>) -> AuditLog {
    AuditLog::open_with(dir, key(), manual(witness)).unwrap()
}
