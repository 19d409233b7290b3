//! The executor against a fake target: an in-memory [`Driver`] that records
//! what it was asked to do, can fail any action or any readiness wait, and
//! keeps "started" resources pending until they are finished. These prove
//! the executor's own rules — order by needs, refusals before any change,
//! resuming after an interruption, a failed wait of one of many, the
//! driver's concurrency window — in milliseconds, without servers; the CLI
//! tests prove the same on real ones.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use careplane_engine::{
    Action, ApplyOptions, Credentials, Driver, Engine, EngineError, Ensured, Plan, Started, Status,
};
use careplane_model::Kind;
use careplane_state::{ResourceRecord, ResourceStatus, Store};

/// Two tenants, one shared with three environments, one on a cluster of
/// its own; `DATA_DIR` is replaced.
const SPECS: &str = include_str!("fixtures/platform.yaml");

/// What the fake was asked, and how it should misbehave.
#[derive(Default)]
struct Script {
    log: Vec<String>,
    fail_ensure: Option<String>,
    fail_wait: Option<String>,
    refuse: Vec<String>,
    /// Started and not yet finished, now and at most.
    started: usize,
    most_started: usize,
}

struct Fake {
    data_dir: std::path::PathBuf,
    script: Arc<Mutex<Script>>,
    window: usize,
}

impl Fake {
    fn store(&self) -> Store {
        Store::open(&self.data_dir).expect("state store")
    }
}

impl Driver for Fake {
    fn preflight(&mut self, _: &Plan, _: &ApplyOptions) -> Result<Vec<String>, EngineError> {
        Ok(self.script.lock().unwrap().refuse.clone())
    }

    fn observe(&mut self, _: &[ResourceRecord]) -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    fn ensure(&mut self, a: &Action) -> Result<Ensured, EngineError> {
        let mut s = self.script.lock().unwrap();
        s.log.push(format!("ensure {}", a.id));
        let store = self.store();
        let rec =
            careplane_engine::prepare(&store, &self.data_dir, a, |_| Ok(serde_json::json!({})))?;
        if s.fail_ensure.as_deref() == Some(&a.id) {
            return Err(EngineError::inconsistent(format!("{} broke", a.id)));
        }
        if a.kind != Kind::OdooEnv {
            careplane_engine::finish(&store, a, rec)?;
            return Ok(Ensured::Ready);
        }
        s.started += 1;
        s.most_started = s.most_started.max(s.started);
        let fails = s.fail_wait.as_deref() == Some(&a.id);
        let id = a.id.clone();
        Ok(Ensured::Started(Started {
            wait: Box::new(move || match fails {
                true => Err(EngineError::inconsistent(format!("{id} never answered"))),
                false => Ok(()),
            }),
            token: Box::new(rec),
        }))
    }

    fn finish_started(
        &mut self,
        a: &Action,
        token: Box<dyn Any + Send>,
    ) -> Result<(), EngineError> {
        let mut s = self.script.lock().unwrap();
        s.started -= 1;
        s.log.push(format!("ready {}", a.id));
        let rec = token.downcast::<ResourceRecord>().expect("our token");
        careplane_engine::finish(&self.store(), a, *rec)
    }

    fn delete(&mut self, a: &Action) -> Result<(), EngineError> {
        self.script
            .lock()
            .unwrap()
            .log
            .push(format!("delete {}", a.id));
        let store = self.store();
        if careplane_engine::mark_deleting(&store, a)?.is_some() {
            store.delete_resource(&a.id)?;
        }
        Ok(())
    }

    fn window(&self, kind: Kind) -> usize {
        match kind {
            Kind::OdooEnv => self.window,
            _ => 0,
        }
    }

    fn lifecycle(
        &mut self,
        _: bool,
        _: &mut dyn FnMut(careplane_engine::Event<'_>),
    ) -> Result<i64, EngineError> {
        Err(unsupported())
    }
    fn status(&mut self) -> Result<Status, EngineError> {
        Err(unsupported())
    }
    fn credentials(&mut self, _: &str, _: &str) -> Result<Credentials, EngineError> {
        Err(unsupported())
    }
    fn modules(&mut self, _: &str, _: &str, _: bool, _: &[String]) -> Result<(), EngineError> {
        Err(unsupported())
    }
}

fn unsupported() -> EngineError {
    EngineError::Unsupported {
        what: "not in the fake target".into(),
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    data_dir: std::path::PathBuf,
    script: Arc<Mutex<Script>>,
    engine: Engine,
}

fn setup(window: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let specs_dir = dir.path().join("specs");
    std::fs::create_dir(&specs_dir).unwrap();
    std::fs::write(
        specs_dir.join("platform.yaml"),
        SPECS.replace("DATA_DIR", &data_dir.display().to_string()),
    )
    .unwrap();
    let specs = careplane_spec::load(&[specs_dir]).expect("specs validate");
    let script = Arc::new(Mutex::new(Script::default()));
    let fake = Fake {
        data_dir: data_dir.clone(),
        script: script.clone(),
        window,
    };
    let engine = Engine::new(specs, Box::new(fake));
    Setup {
        _dir: dir,
        data_dir,
        script,
        engine,
    }
}

/// The host's root operator, as the CLI passes it without a session.
fn root() -> careplane_engine::Principal {
    careplane_engine::Principal::local_root(0)
}

fn apply(s: &mut Setup) -> Result<Vec<String>, EngineError> {
    s.engine
        .apply(&root(), &ApplyOptions::default(), &mut |_| {})
        .map(|r| r.applied)
}

fn records(s: &Setup) -> BTreeMap<String, ResourceStatus> {
    Store::open(&s.data_dir)
        .unwrap()
        .resources()
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.status))
        .collect()
}

fn take_log(s: &Setup) -> Vec<String> {
    std::mem::take(&mut s.script.lock().unwrap().log)
}

/// Every resource is ensured after everything it needs is ready, and a
/// second apply has nothing to do.
#[test]
fn actions_run_after_what_they_need() {
    let mut s = setup(2);
    let desired = careplane_model::desired(s.engine.specs());
    apply(&mut s).unwrap();
    let log = take_log(&s);
    let done_at = |id: &str| {
        log.iter()
            .position(|l| *l == format!("ready {id}") || *l == format!("ensure {id}"))
            .unwrap_or_else(|| panic!("{id} never ensured: {log:?}"))
    };
    for r in &desired {
        let started = log
            .iter()
            .position(|l| *l == format!("ensure {}", r.id))
            .unwrap();
        for need in r.typed().unwrap().needs() {
            // Ready before the dependent starts: for a started kind, its
            // `ready` line; otherwise its `ensure`.
            let ready = log
                .iter()
                .position(|l| *l == format!("ready {need}"))
                .unwrap_or_else(|| done_at(&need));
            assert!(
                ready < started,
                "{} started before {need} was ready: {log:?}",
                r.id
            );
        }
    }
    assert_eq!(records(&s).len(), desired.len());
    assert!(records(&s).values().all(|st| *st == ResourceStatus::Ready));
    assert!(s.engine.plan().unwrap().is_empty());
}

/// A refusal comes before the first action: nothing recorded, nothing asked.
#[test]
fn a_refused_plan_changes_nothing() {
    let mut s = setup(2);
    s.script.lock().unwrap().refuse = vec!["no PostgreSQL here".into()];
    let err = apply(&mut s).unwrap_err();
    assert!(matches!(err, EngineError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("no PostgreSQL here"), "{err}");
    assert!(take_log(&s).is_empty());
    assert!(records(&s).is_empty());
}

/// An environment under a change freeze (docs/design/0014) refuses a plan that changes it
/// before the first action, naming the freeze; an override with a reason lets it through.
#[test]
fn a_frozen_environment_refuses_the_plan_unless_overridden() {
    let s = setup(2);
    let why = "alpha/dev is frozen by MaintenanceWindow \"close\" until 2026-12-31T23:00:00Z";
    let frozen = ApplyOptions {
        frozen: vec![("alpha".into(), "dev".into(), why.into())],
        ..ApplyOptions::default()
    };
    let err = s.engine.apply(&root(), &frozen, &mut |_| {}).unwrap_err();
    assert!(matches!(err, EngineError::Refused { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(why), "{msg}");
    assert!(msg.contains("--override-freeze"), "{msg}");
    assert_eq!(msg.matches(why).count(), 1, "one line per freeze: {msg}");
    assert!(take_log(&s).is_empty());
    assert!(records(&s).is_empty());

    let overridden = ApplyOptions {
        override_freeze: Some("CAB emergency change 42".into()),
        ..frozen.clone()
    };
    s.engine.apply(&root(), &overridden, &mut |_| {}).unwrap();
    assert!(s.engine.plan().unwrap().is_empty());
    // With nothing to change, the freeze refuses nothing.
    s.engine.apply(&root(), &frozen, &mut |_| {}).unwrap();
}

/// An apply that stops at any action (an error here; a kill in the CLI's
/// crash tests) is finished by the next one, which redoes only what was
/// not recorded ready.
#[test]
fn an_interrupted_apply_is_finished_by_the_next() {
    let all: Vec<String> = {
        let s = setup(2);
        careplane_model::desired(s.engine.specs())
            .into_iter()
            .map(|r| r.id)
            .collect()
    };
    for broken in &all {
        let mut s = setup(2);
        s.script.lock().unwrap().fail_ensure = Some(broken.clone());
        let err = apply(&mut s).unwrap_err();
        assert!(err.to_string().contains(broken.as_str()), "{err}");
        let before = records(&s);
        assert_eq!(before.get(broken), Some(&ResourceStatus::Pending));
        take_log(&s);

        s.script.lock().unwrap().fail_ensure = None;
        apply(&mut s).unwrap();
        let redone: Vec<String> = take_log(&s)
            .into_iter()
            .filter_map(|l| l.strip_prefix("ensure ").map(str::to_string))
            .collect();
        for id in &redone {
            assert_ne!(before.get(id), Some(&ResourceStatus::Ready), "{id} redone");
        }
        assert!(redone.contains(broken));
        assert!(records(&s).values().all(|st| *st == ResourceStatus::Ready));
        assert_eq!(records(&s).len(), all.len());
    }
}

/// One environment that never answers fails the apply, the others that
/// were started are still recorded ready, and the next apply redoes only
/// it.
#[test]
fn a_failed_wait_fails_one_and_keeps_the_others() {
    let mut s = setup(8);
    s.script.lock().unwrap().fail_wait = Some("odoo-env/alpha/test".into());
    let mut failed = Vec::new();
    let err = s
        .engine
        .apply(&root(), &ApplyOptions::default(), &mut |e| {
            if let careplane_engine::Event::Failed { action, error, .. } = e {
                failed.push((action.id.clone(), error));
            }
        })
        .unwrap_err()
        .to_string();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, "odoo-env/alpha/test");
    assert!(failed[0].1.contains("never answered"), "{failed:?}");
    assert!(err.contains("odoo-env/alpha/test"), "{err}");
    assert!(err.contains("never answered"), "{err}");
    let rec = records(&s);
    assert_eq!(rec["odoo-env/alpha/test"], ResourceStatus::Pending);
    for ok in [
        "odoo-env/alpha/dev",
        "odoo-env/alpha/uat",
        "odoo-env/beta/dev",
    ] {
        assert_eq!(rec[ok], ResourceStatus::Ready, "{ok}");
    }
    take_log(&s);
    s.script.lock().unwrap().fail_wait = None;
    apply(&mut s).unwrap();
    assert_eq!(
        take_log(&s),
        ["ensure odoo-env/alpha/test", "ready odoo-env/alpha/test"]
    );
}

/// Never more started-and-unfinished resources than the driver's window,
/// and the window is used.
#[test]
fn started_resources_stay_within_the_window() {
    for window in [1, 2, 3] {
        let mut s = setup(window);
        apply(&mut s).unwrap();
        assert_eq!(
            s.script.lock().unwrap().most_started,
            window,
            "window {window}"
        );
    }
}

/// Deletes run dependents first.
#[test]
fn destroy_removes_dependents_first() {
    let mut s = setup(2);
    apply(&mut s).unwrap();
    take_log(&s);
    s.engine
        .destroy(
            &root(),
            &[],
            &ApplyOptions {
                delete_data: true,
                confirm: vec![],
                final_backup: false,
                ..ApplyOptions::default()
            },
            &mut |_| {},
        )
        .unwrap();
    let log = take_log(&s);
    let at = |id: &str| {
        log.iter()
            .position(|l| *l == format!("delete {id}"))
            .unwrap()
    };
    assert!(at("odoo-env/alpha/dev") < at("pg-database/alpha/dev"));
    assert!(at("pg-database/alpha/dev") < at("pg-cluster/shared"));
    assert!(at("pg-cluster/shared") < at("ca/platform"));
    assert!(records(&s).is_empty());
}

/// The engine is shared by reference across threads (a server's handlers):
/// `plan` from several threads at once, while an apply holds the lock,
/// gives the same answer.
#[test]
fn one_engine_serves_several_threads() {
    fn shared<T: Send + Sync>(_: &T) {}
    let s = setup(2);
    shared(&s.engine);
    let engine = &s.engine;
    let all = careplane_model::desired(engine.specs()).len();
    std::thread::scope(|scope| {
        let applying = scope.spawn(|| engine.apply(&root(), &ApplyOptions::default(), &mut |_| {}));
        let planners: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| engine.plan().map(|p| p.counts())))
            .collect();
        applying.join().unwrap().unwrap();
        for p in planners {
            // Before the apply, everything to create; after it, nothing.
            let c = p.join().unwrap().unwrap();
            assert!(c.create == 0 || c.create == all, "{c:?}");
        }
    });
    assert!(engine.plan().unwrap().is_empty());
}

fn person(
    id: &str,
    mfa: bool,
    bindings: Vec<careplane_engine::careplane_identity::Binding>,
) -> careplane_engine::Principal {
    careplane_engine::Principal {
        id: id.into(),
        kind: careplane_engine::careplane_audit::ActorKind::User,
        auth: "oidc".into(),
        mfa,
        bindings,
    }
}

/// docs/design/0013, "Where the one check goes": every operation asks
/// `authorize` once before any work; a refusal runs nothing at the target
/// and is one audit entry, refused, with the reason and the principal.
#[test]
fn the_one_check_refuses_before_any_work_and_each_call_is_one_entry() {
    use careplane_engine::careplane_identity::{Binding, Role, Scope, Source};
    let mut s = setup(8);
    apply(&mut s).unwrap();
    take_log(&s);
    // Drift, so that an allowed apply has work to do.
    Store::open(&s.data_dir)
        .unwrap()
        .delete_resource("odoo-env/alpha/dev")
        .unwrap();

    let viewer = person(
        "vera",
        true,
        vec![Binding {
            role: Role::Viewer,
            scope: Scope::All,
            source: Source::Group {
                group: "viewers".into(),
            },
        }],
    );
    let err = s
        .engine
        .apply(&viewer, &ApplyOptions::default(), &mut |_| {})
        .unwrap_err();
    assert!(matches!(err, EngineError::Denied { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("tenant-operator, platform-operator, platform-admin"),
        "{err}"
    );
    assert!(
        take_log(&s).is_empty(),
        "a refused apply reached the target"
    );

    // A tenant operator of alpha: beta is out of scope, the platform too.
    let alpha_op = person(
        "otto",
        true,
        vec![Binding {
            role: Role::TenantOperator,
            scope: Scope::Tenants(vec!["alpha".into()]),
            source: Source::Grant {
                id: "r1".into(),
                approved_by: "bob".into(),
                expires: "2099-01-01T00:00:00Z".into(),
                reason: "INC-1".into(),
            },
        }],
    );
    let no_opts = ApplyOptions::default();
    let err = s
        .engine
        .destroy(&alpha_op, &["beta".into()], &no_opts, &mut |_| {});
    assert!(err
        .unwrap_err()
        .to_string()
        .contains("limited to other tenants"));
    assert!(s.engine.stop_all(&alpha_op, &mut |_| {}).is_err());
    assert!(take_log(&s).is_empty());
    // Within scope the check passes and the target's own answer is what
    // fails (the fake has no credentials): audited as failed, not refused.
    let err = s.engine.credentials(&alpha_op, "alpha", "dev").unwrap_err();
    assert!(err.to_string().contains("not in the fake target"), "{err}");
    // The Redis monitor credentials read every tenant's server state (INFO): a
    // platform-wide credential, refused to a tenant's operator.
    let err = s.engine.redis_monitors(&alpha_op).unwrap_err();
    assert!(
        matches!(err, careplane_engine::EngineError::Denied { .. }),
        "{err}"
    );
    assert!(take_log(&s).is_empty());

    // Otto, also a platform operator through his IdP group, applies; the
    // grant in force is recorded as his elevation.
    let mut operator = alpha_op.clone();
    operator.bindings.push(Binding {
        role: Role::PlatformOperator,
        scope: Scope::All,
        source: Source::Group {
            group: "ops".into(),
        },
    });
    s.engine
        .apply(&operator, &ApplyOptions::default(), &mut |_| {})
        .unwrap();
    assert!(!take_log(&s).is_empty());

    let log = s
        .engine
        .audit_entries(&careplane_engine::careplane_audit::Filter::default())
        .unwrap();
    let rows: Vec<(&str, &str, &str)> = log
        .iter()
        .map(|e| {
            (
                e.action.as_str(),
                e.actor.id.as_str(),
                match e.result.status {
                    careplane_engine::careplane_audit::Status::Succeeded => "succeeded",
                    careplane_engine::careplane_audit::Status::Refused => "refused",
                    careplane_engine::careplane_audit::Status::Failed => "failed",
                },
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("apply", "uid:0", "succeeded"),
            ("apply", "vera", "refused"),
            ("destroy", "otto", "refused"),
            ("stop", "otto", "refused"),
            ("credentials.show", "otto", "failed"),
            ("credentials.monitor", "otto", "refused"),
            ("apply", "otto", "succeeded"),
        ]
    );
    let refused = log[1].result.message.as_deref().unwrap_or_default();
    assert!(refused.contains("vera may not apply"), "{refused}");
    let elevation = log[6].actor.elevation.as_ref().expect("elevation in force");
    assert_eq!(
        (elevation.role.as_str(), elevation.approved_by.as_deref()),
        ("tenant-operator", Some("bob"))
    );
    // The group role's use is known to access reviews.
    let review = careplane_engine::careplane_identity::Store::open(&s.data_dir)
        .unwrap()
        .review(i64::MAX / 2)
        .unwrap();
    assert!(
        review
            .iter()
            .any(|i| i.principal == "otto" && i.source == "group:ops" && i.last_used.is_some()),
        "{review:?}"
    );
}

/// Every role against every engine operation (the CLI's actions), against
/// this hand-written table from docs/design/0013 ("The one check"): `Y`
/// means the check lets it through (the fake driver may then fail it),
/// `-` means `EngineError::Denied` and nothing reached the driver.
#[test]
fn every_role_against_every_engine_operation() {
    use careplane_engine::careplane_identity::{Binding, Role, Scope, Source};
    const OPS: [&str; 15] = [
        "apply",
        "destroy",
        "start",
        "stop",
        "credentials",
        "modules",
        "export",
        "import",
        "backup.create",
        "backup.list",
        "backup.show",
        "backup.verify",
        "backup.prune",
        "backup.run-due",
        "backup.ship-filestore",
    ];
    // Columns in OPS order; the tenant-operator holds tenant alpha, every
    // tenant-level operation is on alpha/dev (not production).
    const TABLE: [(&str, &str); 6] = [
        ("viewer", "---------YYY---"),
        ("tenant-operator", "-Y--YYY-Y------"),
        ("platform-operator", "YYYYYYYYYYYYYYY"),
        ("security-officer", "---------YYY---"),
        ("platform-admin", "YYYYYYYYYYYYYYY"),
        // Without MFA: import is a restore, which always needs it.
        ("platform-admin-no-mfa", "YYYYYYY-YYYYYYY"),
    ];
    let mut s = setup(8);
    apply(&mut s).unwrap();
    let who = |row: &str| {
        let (role, mfa) = match row {
            "platform-admin-no-mfa" => (Role::PlatformAdmin, false),
            r => (r.parse::<Role>().unwrap(), true),
        };
        person(
            row,
            mfa,
            vec![Binding {
                role,
                scope: if role == Role::TenantOperator {
                    Scope::Tenants(vec!["alpha".into()])
                } else {
                    Scope::All
                },
                source: Source::Group {
                    group: format!("g-{row}"),
                },
            }],
        )
    };
    let out = s._dir.path().join("export.zip");
    let mut wrong = Vec::new();
    for (row, want) in TABLE {
        let p = who(row);
        let e = &s.engine;
        let none = |_: careplane_engine::BackupEvent| {};
        for (op, want) in OPS.iter().zip(want.chars()) {
            take_log(&s);
            let denied = |r: Result<(), EngineError>| matches!(r, Err(EngineError::Denied { .. }));
            let opts = ApplyOptions::default();
            let d = match *op {
                "apply" => denied(e.apply(&p, &opts, &mut |_| {}).map(drop)),
                "destroy" => denied(
                    e.destroy(&p, &["alpha".into()], &opts, &mut |_| {})
                        .map(drop),
                ),
                "start" => denied(e.start_all(&p, &mut |_| {}).map(drop)),
                "stop" => denied(e.stop_all(&p, &mut |_| {}).map(drop)),
                "credentials" => denied(e.credentials(&p, "alpha", "dev").map(drop)),
                "modules" => denied(e.modules(&p, "alpha", "dev", true, &["sale".into()])),
                "export" => denied(e.export(&p, "alpha", "dev", &out).map(drop)),
                "import" => denied(e.import(&p, "alpha", "dev", &out).map(drop)),
                "backup.create" => denied(e.backup_create(&p, "alpha", "dev", &none).map(drop)),
                "backup.list" => denied(e.backup_list(&p, None).map(drop)),
                "backup.show" => denied(e.backup_show(&p, "b1").map(drop)),
                "backup.verify" => denied(e.backup_verify(&p, "b1", false, &none).map(drop)),
                "backup.prune" => denied(e.backup_prune(&p, &none).map(drop)),
                "backup.run-due" => denied(e.backup_run_due(&p, &none).map(drop)),
                "backup.ship-filestore" => {
                    denied(e.backup_ship_filestore(&p, None, &none).map(drop))
                }
                other => unreachable!("{other}"),
            };
            if d && !take_log(&s).is_empty() {
                wrong.push(format!("{row} {op}: denied but reached the driver"));
            }
            if d != (want == '-') {
                wrong.push(format!("{row} {op}: denied={d}, table says {want}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // One audit entry per call, after the first apply.
    let entries = s
        .engine
        .audit_entries(&careplane_engine::careplane_audit::Filter::default())
        .unwrap();
    assert_eq!(entries.len(), 1 + TABLE.len() * OPS.len());
}

/// What counts as production for the check: an environment's kind, a
/// tenant or platform holding one, and — strictly — anything the specs do
/// not name (being removed).
#[test]
fn production_is_read_from_the_specs_and_unknown_counts_as_production() {
    let mut s = setup(8);
    assert!(
        !s.engine.production(None, None),
        "the fixture has no production"
    );
    assert!(!s.engine.production(Some("alpha"), Some("dev")));
    assert!(s.engine.production(Some("gone"), None));
    assert!(s.engine.production(Some("alpha"), Some("gone")));
    // With a production environment added to alpha.
    let dir = tempfile::tempdir().unwrap();
    let specs = include_str!("fixtures/platform.yaml")
        .replace("DATA_DIR", &s.data_dir.display().to_string())
        .replace(
            "    - {name: uat, kind: uat}",
            "    - {name: uat, kind: uat}\n    - {name: prod, kind: production}",
        );
    std::fs::write(dir.path().join("platform.yaml"), specs).unwrap();
    let specs = careplane_spec::load(&[dir.path().to_path_buf()]).expect("specs validate");
    let fake = Fake {
        data_dir: s.data_dir.clone(),
        script: s.script.clone(),
        window: 8,
    };
    s.engine = Engine::new(specs, Box::new(fake));
    assert!(s.engine.production(None, None));
    assert!(s.engine.production(Some("alpha"), None));
    assert!(s.engine.production(Some("alpha"), Some("prod")));
    assert!(!s.engine.production(Some("alpha"), Some("dev")));
    assert!(!s.engine.production(Some("beta"), None));
    // So a platform-operator without MFA may no longer apply.
    use careplane_engine::careplane_identity::{Binding, Role, Scope, Source};
    let op = person(
        "pat",
        false,
        vec![Binding {
            role: Role::PlatformOperator,
            scope: Scope::All,
            source: Source::Group {
                group: "ops".into(),
            },
        }],
    );
    let err = s
        .engine
        .apply(&op, &ApplyOptions::default(), &mut |_| {})
        .unwrap_err();
    assert!(err.to_string().contains("multi-factor"), "{err}");
    assert!(take_log(&s).is_empty());
    // Destroying everything is production whatever the specs say.
    let err = s
        .engine
        .destroy(&op, &[], &ApplyOptions::default(), &mut |_| {})
        .unwrap_err();
    assert!(err.to_string().contains("multi-factor"), "{err}");
}

/// An apply that removes an environment careplane still holds but the specs
/// no longer name may be removing production: it needs MFA.
#[test]
fn an_apply_that_removes_an_unnamed_environment_counts_as_production() {
    use careplane_engine::careplane_identity::{Binding, Role, Scope, Source};
    let mut s = setup(8);
    apply(&mut s).unwrap();
    let op = person(
        "pat",
        false,
        vec![Binding {
            role: Role::PlatformOperator,
            scope: Scope::All,
            source: Source::Group {
                group: "ops".into(),
            },
        }],
    );
    // Nothing removed: not production, no MFA needed.
    s.engine
        .apply(&op, &ApplyOptions::default(), &mut |_| {})
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let specs = include_str!("fixtures/platform.yaml")
        .replace("DATA_DIR", &s.data_dir.display().to_string())
        .replace("    - {name: uat, kind: uat}\n", "");
    std::fs::write(dir.path().join("platform.yaml"), specs).unwrap();
    let specs = careplane_spec::load(&[dir.path().to_path_buf()]).expect("specs validate");
    let fake = Fake {
        data_dir: s.data_dir.clone(),
        script: s.script.clone(),
        window: 8,
    };
    s.engine = Engine::new(specs, Box::new(fake));
    take_log(&s);
    let err = s
        .engine
        .apply(&op, &ApplyOptions::default(), &mut |_| {})
        .unwrap_err();
    assert!(err.to_string().contains("multi-factor"), "{err}");
    assert!(take_log(&s).is_empty());
}

/// `backup restore-cluster` replaces every tenant's data on a cluster: only
/// a platform operator or admin with MFA may ask, the cluster must be named
/// again, and every attempt is one audit entry.
#[test]
fn restore_cluster_needs_a_platform_restorer_and_the_cluster_named_again() {
    use careplane_engine::careplane_identity::{Binding, Role, Scope, Source};
    use careplane_engine::{ClusterRestoreRequest, RestorePoint};
    let mut s = setup(8);
    apply(&mut s).unwrap();
    take_log(&s);
    let req = |confirm: &str| ClusterRestoreRequest {
        scope: "shared".into(),
        point: Some(RestorePoint::Time("2026-01-01T00:00:00Z".into())),
        confirm: confirm.into(),
        force: false,
    };
    let with = |id: &str, mfa: bool, role: Role| {
        person(
            id,
            mfa,
            vec![Binding {
                role,
                scope: Scope::All,
                source: Source::Group { group: "g".into() },
            }],
        )
    };
    let restore = |who: &careplane_engine::Principal, confirm: &str| {
        s.engine.backup_restore_cluster(who, &req(confirm), &|_| {})
    };
    for who in [
        with("tina", true, Role::TenantOperator),
        with("paul", false, Role::PlatformOperator),
    ] {
        let err = restore(&who, "shared").unwrap_err();
        assert!(matches!(err, EngineError::Denied { .. }), "{err}");
    }
    let paula = with("paula", true, Role::PlatformOperator);
    let err = restore(&paula, "alpha").unwrap_err();
    assert!(matches!(err, EngineError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("--confirm shared"), "{err}");
    assert!(
        take_log(&s).is_empty(),
        "a refused restore reached the target"
    );
    // Past the checks, the target answers: the fake takes no backups.
    let err = restore(&paula, "shared").unwrap_err();
    assert!(matches!(err, EngineError::Unsupported { .. }), "{err}");

    let log = s
        .engine
        .audit_entries(&careplane_engine::careplane_audit::Filter::default())
        .unwrap();
    let rows: Vec<(&str, &str, careplane_engine::careplane_audit::Status)> = log
        .iter()
        .filter(|e| e.action == "backup.restore-cluster")
        .map(|e| (e.actor.id.as_str(), e.target.as_str(), e.result.status))
        .collect();
    use careplane_engine::careplane_audit::Status::{Failed, Refused};
    assert_eq!(
        rows,
        [
            ("tina", "cluster shared", Refused),
            ("paul", "cluster shared", Refused),
            ("paula", "cluster shared", Refused),
            ("paula", "cluster shared", Failed),
        ]
    );
}
