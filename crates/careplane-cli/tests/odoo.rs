//! Odoo for every tenant environment, with the stand-in playing odoo-bin:
//! hardened config, template clones with their own identity, isolated
//! filestores, supervision (kill → restart), modules, stop/start, destroy.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const TENANTS_ODOO: &str = r#"
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: alpha
spec:
  tenancy: shared
  modules: [sale]
  environments:
    - name: production
      kind: production
    - name: dev
      kind: dev
---
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: beta
spec:
  tenancy: dedicated-env
  environments:
    - name: staging
      kind: staging
"#;

fn odoo_platform() -> Platform {
    Platform::with_odoo(TENANTS_ODOO)
}

fn conf(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn get<'a>(c: &'a [(String, String)], k: &str) -> &'a str {
    c.iter()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("{k} missing from odoo.conf"))
}

fn env_root(p: &Platform, tenant: &str, env: &str) -> PathBuf {
    p.data_dir().join("odoo/envs").join(tenant).join(env)
}

fn param(c: &mut careplane_local::postgres::Client, key: &str) -> String {
    c.query_one(
        "SELECT value FROM ir_config_parameter WHERE key = $1",
        &[&key],
    )
    .unwrap()
    .get(0)
}

fn web_pid(p: &Platform, tenant: &str, env: &str) -> Option<u32> {
    let st = p.json_allow_fail(&["status"]);
    let e = st["environments"]
        .as_array()?
        .iter()
        .find(|e| e["tenant"] == tenant && e["environment"] == env)?
        .clone();
    let procs = e["odooProcesses"]["processes"].as_array()?.clone();
    procs
        .iter()
        .find(|x| x["name"] == "web")
        .and_then(|x| x["pid"].as_u64())
        .map(|p| p as u32)
}

#[test]
fn odoo_environments() {
    let p = odoo_platform();
    let plan = p.plan();
    let ids: Vec<&str> = plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    // One template per cluster and module set: alpha's two environments share one.
    let templates: Vec<&&str> = ids
        .iter()
        .filter(|i| i.starts_with("odoo-template/"))
        .collect();
    assert_eq!(templates.len(), 2, "{ids:?}");
    assert!(ids.contains(&"odoo-env/alpha/production") && ids.contains(&"odoo-env/beta/staging"));

    let first = p.ok(&["apply"]);
    assert_eq!(
        p.plan()["actions"],
        Value::Array(vec![]),
        "second apply plans nothing"
    );
    // Captured output gets each new environment's URL, never its password.
    let creds = p.json(&["credentials", "alpha", "dev"]);
    assert!(
        first.contains(creds["odoo"]["url"].as_str().unwrap()),
        "{first}"
    );
    assert!(!first.contains(creds["odoo"]["password"].as_str().unwrap()));

    let st = p.json(&["status"]);
    for e in st["environments"].as_array().unwrap() {
        assert_eq!(e["odooHealth"]["ok"], true, "{e}");
        assert!(
            e["odooUrl"].as_str().unwrap().ends_with("/web/login"),
            "{e}"
        );
    }

    // Hardened configuration, read back from the generated files.
    let root = env_root(&p, "alpha", "production");
    let alpha_role = p.json(&["credentials", "alpha", "production"])["postgres"]["role"]
        .as_str()
        .unwrap()
        .to_string();
    let web = conf(&root.join("odoo-web.conf"));
    let cron = conf(&root.join("odoo-cron.conf"));
    for c in [&web, &cron] {
        assert_eq!(get(c, "list_db"), "False");
        assert_eq!(get(c, "proxy_mode"), "True");
        assert_eq!(get(c, "http_interface"), "127.0.0.1");
        assert_eq!(get(c, "db_name"), "alpha-production");
        // The role's name is opaque (tenants of a shared cluster can read
        // every role name): the one `credentials` reports.
        assert_eq!(get(c, "db_user"), alpha_role);
        assert!(!alpha_role.contains("alpha"), "{alpha_role}");
        assert_eq!(get(c, "db_password"), "False");
        assert_eq!(get(c, "db_sslmode"), "verify-full");
        assert!(get(c, "admin_passwd").starts_with("$pbkdf2-sha512$"));
        assert!(get(c, "without_demo") == "all" || get(c, "without_demo") == "True");
        assert_eq!(get(c, "server_wide_modules"), "base,web");
        assert_eq!(get(c, "dbfilter"), "", "db_name alone selects the database");
        assert!(get(c, "data_dir").starts_with(&root.display().to_string()));
        for k in [
            "limit_memory_soft",
            "limit_memory_hard",
            "limit_time_cpu",
            "limit_time_real",
            "limit_request",
        ] {
            assert!(get(c, k).parse::<u64>().unwrap() > 0, "{k}");
        }
        assert!(get(c, "redis_user").starts_with("alpha-production"));
    }
    assert_eq!(get(&web, "max_cron_threads"), "0");
    assert_eq!(
        get(&web, "workers"),
        "2",
        "production defaults to 2 workers"
    );
    assert!(get(&web, "gevent_port").parse::<u16>().unwrap() > 0);
    assert!(get(&cron, "max_cron_threads").parse::<u32>().unwrap() >= 1);
    assert_eq!(get(&cron, "workers"), "0");
    let dev = conf(&env_root(&p, "alpha", "dev").join("odoo-web.conf"));
    assert_eq!(get(&dev, "workers"), "1", "dev has one worker");

    // Secrets: none in any config, supervisor spec or log.
    let creds = p.json(&["credentials", "alpha", "production"]);
    let secrets: Vec<String> = [
        &creds["postgres"]["password"],
        &creds["redis"]["password"],
        &creds["odoo"]["password"],
        &creds["odoo"]["masterPassword"],
    ]
    .iter()
    .map(|v| v.as_str().unwrap().to_string())
    .collect();
    for f in [
        "odoo-web.conf",
        "odoo-cron.conf",
        "supervisor.json",
        "logs/web.log",
        "logs/cron.log",
    ] {
        let text = std::fs::read_to_string(root.join(f)).unwrap_or_default();
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "secret in {f}");
        }
    }

    // Clones never share identity; each knows its own URL; admin password reset.
    let mut seen = BTreeSet::new();
    for (t, e) in [
        ("alpha", "production"),
        ("alpha", "dev"),
        ("beta", "staging"),
    ] {
        let mut c = tenant_client(&p, t, e);
        let uuid = param(&mut c, "database.uuid");
        let secret = param(&mut c, "database.secret");
        assert!(seen.insert(uuid), "{t}/{e} shares database.uuid");
        assert!(seen.insert(secret), "{t}/{e} shares database.secret");
        let url = p.json(&["credentials", t, e])["odoo"]["url"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(url.starts_with(&param(&mut c, "web.base.url")), "{url}");
        let hash: String = c
            .query_one("SELECT password FROM res_users WHERE login = 'admin'", &[])
            .unwrap()
            .get(0);
        let pw = p.json(&["credentials", t, e])["odoo"]["password"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(careplane_odoo::verify_admin_password(
            &careplane_odoo::SecretString::from(pw),
            &hash
        ));
        // The clone's tables belong to the environment's role.
        let owner: String = c
            .query_one(
                "SELECT tableowner::text FROM pg_tables WHERE tablename = 'ir_module_module'",
                &[],
            )
            .unwrap()
            .get(0);
        let me: String = c
            .query_one("SELECT current_user::text", &[])
            .unwrap()
            .get(0);
        assert_eq!(owner, me);
        assert!(!owner.contains(t), "{owner}");
        // Filestore: its own, private, holding the template's files.
        let fs = env_root(&p, t, e)
            .join("data/filestore")
            .join(format!("{t}-{e}"));
        assert!(fs.is_dir(), "{}", fs.display());
        let data = env_root(&p, t, e).join("data");
        assert_eq!(
            std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    // Environments of one tenant are isolated like tenants: alpha/dev's role
    // cannot open alpha/production's database, nor its Redis user touch
    // production's keys, and the two filestores are different directories.
    let dev = p.json(&["credentials", "alpha", "dev"]);
    let ca = std::fs::read_to_string(p.data_dir().join("pki/ca.crt")).unwrap();
    let refused = careplane_local::pg::connect_tenant(
        dev["postgres"]["port"].as_u64().unwrap() as u16,
        "alpha-production",
        dev["postgres"]["role"].as_str().unwrap(),
        &careplane_local::SecretString::from(
            dev["postgres"]["password"].as_str().unwrap().to_string(),
        ),
        &ca,
    );
    assert!(
        refused.is_err(),
        "alpha/dev opened alpha/production's database"
    );
    let redis_cli = |key: &str| {
        let out = std::process::Command::new("redis-cli")
            .args([
                "--no-auth-warning",
                "-p",
                &dev["redis"]["port"].to_string(),
                "--user",
                dev["redis"]["user"].as_str().unwrap(),
                "--pass",
                dev["redis"]["password"].as_str().unwrap(),
                "SET",
                key,
                "x",
            ])
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    assert!(redis_cli("alpha:dev:k").contains("OK"), "own prefix");
    assert!(
        redis_cli("alpha:production:k").contains("NOPERM"),
        "other environment's prefix"
    );
    assert_ne!(
        get(
            &conf(&env_root(&p, "alpha", "dev").join("odoo-web.conf")),
            "data_dir"
        ),
        get(&web, "data_dir")
    );

    // Supervision: kill -9 the web process, the supervisor starts a new one.
    let before = web_pid(&p, "alpha", "dev").expect("web pid in status");
    unsafe {
        libc::kill(before as i32, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = web_pid(&p, "alpha", "dev");
        let healthy = p.json_allow_fail(&["status"])["environments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| {
                e["tenant"] == "alpha" && e["environment"] == "dev" && e["odooHealth"]["ok"] == true
            });
        if now.is_some() && now != Some(before) && healthy {
            break;
        }
        assert!(Instant::now() < deadline, "web process was not restarted");
        std::thread::sleep(Duration::from_millis(200));
    }

    // As root, each environment's Odoo runs as a uid of its own, without an
    // account (so neither the database user nor another environment), and
    // that uid owns everything under its data directory.
    if unsafe { libc::geteuid() } == 0 {
        let st = p.json(&["status"]);
        let mut uids = BTreeSet::new();
        for e in st["environments"].as_array().unwrap() {
            let uid = e["odooUid"].as_u64().expect("odooUid as root") as u32;
            assert!(uids.insert(uid), "two environments share uid {uid}");
            assert!(!careplane_local::system::uid_has_account(uid).unwrap());
            let (t, n) = (
                e["tenant"].as_str().unwrap(),
                e["environment"].as_str().unwrap(),
            );
            let pid = web_pid(&p, t, n).unwrap();
            assert_eq!(proc_uid(pid), uid, "{t}/{n} web process uid");
            let mut stack = vec![env_root(&p, t, n).join("data")];
            while let Some(path) = stack.pop() {
                let meta = std::fs::symlink_metadata(&path).unwrap();
                assert_eq!(
                    meta.uid(),
                    uid,
                    "{} not owned by {t}/{n}'s uid",
                    path.display()
                );
                if meta.is_dir() {
                    stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                }
            }
            for f in ["odoo-web.conf", "odoo-cron.conf"] {
                let meta = std::fs::metadata(env_root(&p, t, n).join(f)).unwrap();
                // Readable by the environment's uid (its group), written
                // only by root: Odoo cannot rewrite its own hardening.
                assert_eq!(
                    (meta.uid(), meta.gid(), meta.mode() & 0o777),
                    (0, uid, 0o640),
                    "{t}/{n} {f}"
                );
            }
        }
        let pg = careplane_local::system::lookup_user("postgres")
            .unwrap()
            .unwrap();
        assert!(!uids.contains(&pg.uid));

        // The kernel enforces it: as alpha/dev's uid, alpha/production's
        // filestore cannot be read; as production's own uid it can.
        let uid_of = |env: &str| {
            st["environments"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["tenant"] == "alpha" && e["environment"] == env)
                .unwrap()["odooUid"]
                .as_u64()
                .unwrap()
                .to_string()
        };
        let mut stack = vec![env_root(&p, "alpha", "production").join("data/filestore")];
        let mut file = None;
        while let Some(path) = stack.pop() {
            if path.is_dir() {
                stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            } else {
                file = Some(path);
            }
        }
        let file = file.expect("a file in production's filestore");
        let cat_as = |uid: String| {
            std::process::Command::new("setpriv")
                .args([
                    &format!("--reuid={uid}"),
                    &format!("--regid={uid}"),
                    "--clear-groups",
                    "cat",
                ])
                .arg(&file)
                .output()
                .expect("setpriv (util-linux)")
        };
        let denied = cat_as(uid_of("dev"));
        assert!(
            !denied.status.success(),
            "alpha/dev read production's filestore"
        );
        assert!(
            String::from_utf8_lossy(&denied.stderr).contains("Permission denied"),
            "{}",
            String::from_utf8_lossy(&denied.stderr)
        );
        assert!(cat_as(uid_of("production")).status.success());
    }

    // Modules as a managed, journaled operation.
    p.ok(&["modules", "install", "alpha", "dev", "stock"]);
    let mut c = tenant_client(&p, "alpha", "dev");
    let state: String = c
        .query_one(
            "SELECT state FROM ir_module_module WHERE name = 'stock'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(state, "installed");
    let journal = serde_json::to_string(&p.json(&["journal"])).unwrap();
    assert!(
        journal.contains("modules install odoo-env/alpha/dev stock"),
        "{journal}"
    );

    // Adding a module in the spec: a template for the new module set, the
    // running environments get the module installed in place (their data
    // kept, their identity unchanged), and the old template is dropped.
    let mut c = tenant_client(&p, "alpha", "production");
    c.batch_execute(
        "CREATE TABLE patient_note (body text); INSERT INTO patient_note VALUES ('kept')",
    )
    .unwrap();
    let uuid_before = param(&mut c, "database.uuid");
    drop(c);
    let templates_before = p.json(&["status"])["servers"].clone();
    p.write_tenants(&TENANTS_ODOO.replace("modules: [sale]", "modules: [sale, purchase]"));
    let plan = p.plan();
    let ops: Vec<String> = plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{} {}",
                a["op"].as_str().unwrap(),
                a["id"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        ops.iter().any(|o| o == "update odoo-env/alpha/production"),
        "{ops:?}"
    );
    assert!(
        ops.iter()
            .any(|o| o.starts_with("create odoo-template/shared/")),
        "{ops:?}"
    );
    assert!(
        ops.iter()
            .any(|o| o.starts_with("delete odoo-template/shared/")),
        "{ops:?}"
    );
    assert!(
        !ops.iter().any(|o| o.contains("beta")),
        "beta is unchanged: {ops:?}"
    );
    p.ok(&["apply"]);
    let mut c = tenant_client(&p, "alpha", "production");
    let state: String = c
        .query_one(
            "SELECT state FROM ir_module_module WHERE name = 'purchase'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(state, "installed");
    let kept: String = c
        .query_one("SELECT body FROM patient_note", &[])
        .unwrap()
        .get(0);
    assert_eq!(kept, "kept");
    assert_eq!(param(&mut c, "database.uuid"), uuid_before, "identity kept");
    drop(c);
    let shared = |servers: &Value| -> Vec<String> {
        servers
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == "pg-cluster/shared")
            .map(|s| {
                let mut t: Vec<String> = s["templates"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap().to_string())
                    .collect();
                t.sort();
                t
            })
            .unwrap()
    };
    let st = p.json(&["status"]);
    let (old, new) = (shared(&templates_before), shared(&st["servers"]));
    assert_eq!(new.len(), 1, "{new:?}");
    assert_ne!(old, new, "a new template for the new module set");
    let members = st["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "pg-cluster/shared")
        .unwrap()["members"]
        .clone();
    assert!(
        !members
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == old[0].as_str()),
        "old template still on the cluster: {members}"
    );
    for e in st["environments"].as_array().unwrap() {
        assert_eq!(e["odooHealth"]["ok"], true, "{e}");
    }

    // stop: no supervisor or Odoo process left; start: healthy again.
    let pids: Vec<u32> = ["production", "dev"]
        .iter()
        .filter_map(|e| web_pid(&p, "alpha", e))
        .collect();
    p.ok(&["stop"]);
    for pid in &pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists() || is_zombie(*pid),
            "odoo {pid} survived stop"
        );
    }
    assert_eq!(
        processes_in(&p.data_dir()),
        Vec::<u32>::new(),
        "processes left after stop"
    );
    p.ok(&["start"]);
    let st = p.json(&["status"]);
    for e in st["environments"].as_array().unwrap() {
        assert_eq!(e["odooHealth"]["ok"], true, "{e}");
    }

    // A multi-worker environment whose evented (websocket) server cannot run
    // is not healthy: here its port is taken by something that closes every
    // connection, so the stand-in's evented server fails to bind, as Odoo's
    // would. `start` says so and names the port; `status` shows it DOWN.
    p.ok(&["stop"]);
    let gport: u16 = get(&web, "gevent_port").parse().unwrap();
    let squatter = Squatter::on(gport);
    let out = p.run(&["start"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "start succeeded with a dead evented server"
    );
    assert!(
        err.contains("evented") && err.contains(&gport.to_string()),
        "{err}"
    );
    let st = p.json_allow_fail(&["status"]);
    // The failure did not keep the other environments down.
    for e in st["environments"].as_array().unwrap() {
        if e["environment"] != "production" {
            assert_eq!(e["odooHealth"]["ok"], true, "{e}");
        }
    }
    let prod = st["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["tenant"] == "alpha" && e["environment"] == "production")
        .unwrap()
        .clone();
    assert_eq!(prod["odooHealth"]["ok"], false, "{prod}");
    assert!(
        prod["odooHealth"]["detail"]
            .as_str()
            .unwrap()
            .contains("evented server"),
        "{prod}"
    );
    drop(squatter);
    p.ok(&["stop"]);
    p.ok(&["start"]);
    let st = p.json(&["status"]);
    for e in st["environments"].as_array().unwrap() {
        assert_eq!(e["odooHealth"]["ok"], true, "{e}");
    }

    // On a terminal, a new environment's admin password is shown once: by the
    // apply that creates it, not by the next.
    p.write_tenants(&TENANTS_ODOO.replace(
        "    - name: dev\n      kind: dev\n",
        "    - name: dev\n      kind: dev\n    - name: training\n      kind: training\n",
    ));
    let on_tty = |p: &Platform| {
        let cmd = format!(
            "{} apply -f {}",
            env!("CARGO_BIN_EXE_careplane"),
            p.specs.display()
        );
        let out = std::process::Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .output()
            .expect("script(1) from util-linux");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let shown = on_tty(&p);
    let pw = p.json(&["credentials", "alpha", "training"])["odoo"]["password"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(shown.matches(pw.as_str()).count(), 1, "{shown}");
    let other = p.json(&["credentials", "alpha", "dev"])["odoo"]["password"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !shown.contains(other.as_str()),
        "only new environments are shown"
    );
    assert!(!on_tty(&p).contains(pw.as_str()), "shown twice");

    p.ok(&["destroy", "--confirm", "alpha", "--delete-data"]);
    assert_eq!(processes_in(&p.data_dir()), Vec::<u32>::new());
    assert!(!p.data_dir().join("odoo/envs/alpha").exists());
}

/// The real uid of a process, from /proc.
fn proc_uid(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .expect("Uid line")
}

/// A platform that names Odoo 17 but points at an 18 (`odoo-bin --version`)
/// is refused before anything is created.
#[test]
fn odoo_version_mismatch_is_refused() {
    let p = odoo_platform();
    let file = p.specs.join("platform.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replace("    version: 18\n", "    version: 17\n"),
    )
    .unwrap();
    let out = p.run(&["apply"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.odoo.version is 17 but") && err.contains("is Odoo 18"),
        "{err}"
    );
    assert!(
        !p.data_dir().join("pg").exists(),
        "a refused apply created something"
    );
}

/// When careplane runs as root, an Odoo command the Odoo user cannot execute
/// (here: 0700 in a root-owned directory) is refused before anything is
/// created, naming the file.
#[test]
fn odoo_command_the_service_user_cannot_run_is_refused() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only meaningful when careplane runs as root");
        return;
    }
    let p = odoo_platform();
    let exe = p.dir.path().join("bin/odoo-standin");
    set_mode(&exe, 0o700);
    let out = p.run(&["apply"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot execute") && err.contains(&exe.display().to_string()),
        "{err}"
    );
    assert!(
        !p.data_dir().join("pg").exists() && processes_in(&p.data_dir()).is_empty(),
        "a refused apply created something"
    );
    set_mode(&exe, 0o755);
    p.ok(&["apply"]);
    p.ok(&["destroy", "--confirm", "alpha", "--delete-data"]);
}

/// Something on a port that accepts and closes every connection, as a
/// process that is not Odoo would; the port is freed on drop.
struct Squatter {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Squatter {
    fn on(port: u16) -> Squatter {
        // A process just killed may hold the port for a moment longer.
        let mut tries = 0;
        let listener = loop {
            match std::net::TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => break l,
                Err(e) if tries < 100 => {
                    tries += 1;
                    eprintln!("port {port}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("port {port} stays taken: {e}"),
            }
        };
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let accept = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    drop(conn);
                }
            })
        };
        Squatter {
            port,
            stop,
            accept: Some(accept),
        }
    }
}

impl Drop for Squatter {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// `apply` spawns every new environment and waits for them together: one
/// that does not come up fails the apply, naming it, while the others are
/// recorded ready, so the next apply redoes only the failed one.
#[test]
fn apply_records_every_environment_that_came_up_when_one_did_not() {
    let p = odoo_platform();
    // A first apply killed once everything has been spawned and answered,
    // before alpha/production is recorded: its odoo.conf now names the
    // evented port the next apply will use again.
    let out = p
        .cmd(&["apply"])
        .env("CAREPLANE_CRASH_AT", "odoo-env/alpha/production@executed")
        .output()
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(libc::SIGKILL),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let web = conf(&env_root(&p, "alpha", "production").join("odoo-web.conf"));
    let gport: u16 = get(&web, "gevent_port").parse().unwrap();
    // The killed apply left its processes running; take the port from them.
    for pid in processes_in(&env_root(&p, "alpha", "production")) {
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
    let squatter = Squatter::on(gport);

    let out = p.run(&["apply"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "apply succeeded: {err}");
    assert!(
        err.contains("odoo-env/alpha/production")
            && err.contains("evented")
            && err.contains(&gport.to_string()),
        "{err}"
    );
    // Every other environment came up and is recorded: only the failed one
    // is left to do.
    let left: Vec<String> = p.plan()["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, vec!["odoo-env/alpha/production".to_string()]);
    let st = p.json_allow_fail(&["status"]);
    for e in st["environments"].as_array().unwrap() {
        if e["environment"] != "production" {
            assert_eq!(e["odooHealth"]["ok"], true, "{e}");
        }
    }
    let journal = p.json(&["journal"]);
    let failed: Vec<&Value> = journal
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["error"].is_string())
        .collect();
    assert_eq!(failed.len(), 1, "{journal}");
    assert_eq!(failed[0]["action"], "create odoo-env/alpha/production");

    drop(squatter);
    p.ok(&["apply"]);
    assert_eq!(p.plan()["actions"], Value::Array(vec![]));
    let st = p.json(&["status"]);
    for e in st["environments"].as_array().unwrap() {
        assert_eq!(e["odooHealth"]["ok"], true, "{e}");
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.contains(") Z "))
        .unwrap_or(true)
}
