//! The rendered odoo.conf carries every hardening option, no secret, and
//! refuses values that would weaken or corrupt it.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use careplane_odoo::{
    dbfilter_for, hash_admin_password_with, render_config, try_render_config, write_configs,
    EnvConfig, ExposeSecret, Limits, OdooError, ProcessEnv, RedisSettings, Role, SecretString,
};

const DB_PASSWORD: &str = "db-Secret-4f1c9e";
const REDIS_PASSWORD: &str = "redis-Secret-77ab";
const ADMIN_PASSWORD: &str = "master-Secret-0d2e";

fn sample(data_dir: &Path) -> EnvConfig {
    EnvConfig {
        database: "stmarys-production.v2".into(),
        db_host: "pg.careplane.internal".into(),
        db_port: 5433,
        db_user: "stmarys_production".into(),
        db_sslmode: "verify-full".into(),
        data_dir: data_dir.to_path_buf(),
        http_interface: "127.0.0.1".into(),
        http_port: 18069,
        gevent_port: 18072,
        workers: 3,
        cron_threads: 2,
        limits: Limits {
            memory_soft: 1_500_000_000,
            memory_hard: 2_000_000_000,
            time_cpu: 90,
            time_real: 180,
            request: 4096,
        },
        // Low rounds keep the test fast; the format is the same.
        admin_passwd_hash: hash_admin_password_with(
            &SecretString::from(ADMIN_PASSWORD.to_string()),
            b"0123456789abcdef",
            1000,
        ),
        server_wide_modules: vec!["base".into(), "web".into()],
        addons_paths: vec![
            PathBuf::from("/opt/odoo/addons"),
            PathBuf::from("/opt/careplane/addons"),
        ],
        redis: Some(RedisSettings {
            host: "127.0.0.1".into(),
            port: 6390,
            user: "stmarys_production".into(),
            key_prefix: "stmarys_production:".into(),
        }),
        base_url: "http://stmarys-production.localhost:18069".into(),
    }
}

/// Python's RawConfigParser reading of the `[options]` section, strict
/// enough for these files: `key = value` lines, `#`/`;` comments, and no
/// duplicate keys.
fn parse_ini(text: &str) -> BTreeMap<String, String> {
    let mut section = None;
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        assert!(
            !line.starts_with(char::is_whitespace),
            "continuation line {line:?}"
        );
        if t.starts_with('[') {
            section = Some(t.to_string());
            continue;
        }
        assert_eq!(
            section.as_deref(),
            Some("[options]"),
            "line outside [options]: {line}"
        );
        let (k, v) = t
            .split_once('=')
            .unwrap_or_else(|| panic!("not key = value: {line}"));
        let old = map.insert(k.trim().to_string(), v.trim().to_string());
        assert!(old.is_none(), "duplicate key {k}");
    }
    map
}

fn check_common(o: &BTreeMap<String, String>, cfg: &EnvConfig) {
    assert_eq!(o["list_db"], "False");
    assert_eq!(o["db_name"], cfg.database);
    // Empty: with db_name alone Odoo selects the database without reading
    // pg_database, which shared clusters hide from tenants.
    assert_eq!(o["dbfilter"], "");
    assert!(!o["db_name"].contains(','), "db_name is one database");
    assert_eq!(o["proxy_mode"], "True");
    assert_eq!(o["http_interface"], "127.0.0.1");
    assert_eq!(o["http_port"], "18069");
    assert_eq!(o["admin_passwd"], cfg.admin_passwd_hash);
    assert!(o["admin_passwd"].starts_with("$pbkdf2-sha512$1000$"));
    assert_eq!(o["db_user"], "stmarys_production");
    assert_eq!(o["db_host"], "pg.careplane.internal");
    assert_eq!(o["db_port"], "5433");
    assert_eq!(o["db_password"], "False");
    assert_eq!(o["db_sslmode"], "verify-full");
    assert_eq!(o["data_dir"], cfg.data_dir.display().to_string());
    assert_eq!(o["limit_memory_soft"], "1500000000");
    assert_eq!(o["limit_memory_hard"], "2000000000");
    assert_eq!(o["limit_time_cpu"], "90");
    assert_eq!(o["limit_time_real"], "180");
    assert_eq!(o["limit_request"], "4096");
    assert_eq!(o["without_demo"], "True");
    assert_eq!(o["server_wide_modules"], "base,web");
    assert_eq!(o["addons_path"], "/opt/odoo/addons,/opt/careplane/addons");
    assert_eq!(o["redis_host"], "127.0.0.1");
    assert_eq!(o["redis_port"], "6390");
    assert_eq!(o["redis_user"], "stmarys_production");
    assert_eq!(o["redis_prefix"], "stmarys_production:");
    assert!(!o.contains_key("unaccent"));
    assert!(
        !o.contains_key("logfile"),
        "output goes to the supervisor's pipe"
    );
}

#[test]
fn web_and_cron_configs_carry_every_hardening_option() {
    let cfg = sample(Path::new("/var/lib/careplane/envs/stmarys/production/data"));
    let web = parse_ini(&render_config(&cfg, Role::Web));
    check_common(&web, &cfg);
    assert_eq!(web["workers"], "3");
    assert_eq!(web["max_cron_threads"], "0");
    assert_eq!(web["gevent_port"], "18072");
    assert!(!web.contains_key("http_enable"));

    let cron = parse_ini(&render_config(&cfg, Role::Cron));
    check_common(&cron, &cfg);
    assert_eq!(cron["workers"], "0");
    assert_eq!(cron["max_cron_threads"], "2");
    assert_eq!(cron["http_enable"], "False");
    assert!(!cron.contains_key("gevent_port"));
}

#[test]
fn threaded_web_has_no_gevent_port_and_redis_is_optional() {
    let mut cfg = sample(Path::new("/d"));
    cfg.workers = 0;
    cfg.redis = None;
    let web = parse_ini(&render_config(&cfg, Role::Web));
    assert_eq!(web["workers"], "0");
    assert!(!web.contains_key("gevent_port"));
    assert!(!web.keys().any(|k| k.starts_with("redis")));
}

fn regex_match(filter: &str, name: &str) -> bool {
    regex::Regex::new(filter).unwrap().is_match(name)
}

#[test]
fn dbfilter_matches_only_the_database() {
    for db in ["stmarys", "stmarys-production.v2", "a_b", "x1"] {
        let f = dbfilter_for(db);
        assert!(f.starts_with('^') && f.ends_with('$'), "{f}");
        assert!(regex_match(&f, db), "{f} must match {db}");
        for other in [
            format!("{db}x"),
            format!("x{db}"),
            format!("{db}\nx"),
            db.replace('.', "X"),
            db.replace('-', "_"),
            String::new(),
        ] {
            if other != db {
                assert!(!regex_match(&f, &other), "{f} must not match {other:?}");
            }
        }
    }
    // `.` is escaped: it must not match any character.
    assert!(!regex_match(&dbfilter_for("a.b"), "aXb"));
    // `%` never forms Odoo's %h/%d placeholders.
    assert_eq!(dbfilter_for("a%d"), "^a[%]d$");
}

/// Odoo applies the filter with Python's `re.match` after substituting
/// `%h`/`%d`; check with the real thing when python3 is around.
#[test]
fn dbfilter_behaves_in_pythons_re_like_odoo_uses_it() {
    let dbs = ["stmarys", "stmarys-production.v2", "a%d"];
    let mut script = String::from("import re\nok = True\n");
    for db in dbs {
        let f = dbfilter_for(db);
        script.push_str(&format!(
            "r = {f:?}.replace('%h', re.escape('host.example')).replace('%d', re.escape('example'))\n\
             ok &= bool(re.match(r, {db:?}))\n\
             ok &= not re.match(r, {x1:?}) and not re.match(r, {x2:?})\n",
            x1 = format!("{db}x"),
            x2 = format!("x{db}"),
        ));
    }
    script.push_str("print('OK' if ok else 'MISMATCH')\n");
    match Command::new("python3").arg("-c").arg(&script).output() {
        Ok(out) if out.status.success() => {
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                "OK",
                "{script}"
            )
        }
        _ => eprintln!("note: python3 not available, Python re check skipped"),
    }
}

/// The rendered file read the way Odoo 16–18 read it (`RawConfigParser`,
/// then `odoo/tools/config.py`'s `True`/`False` conversion), and Odoo's
/// database selection replayed: `list_dbs` (odoo/service/db.py) must
/// answer from `db_name` without a query (a query would read pg_database,
/// hidden on shared clusters), and `db_filter` (odoo/http.py) must keep
/// exactly the environment's database, whatever a client asks for.
#[test]
fn odoo_selects_its_one_database_without_listing_the_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = sample(dir.path());
    let conf = dir.path().join("odoo.conf");
    fs::write(&conf, render_config(&cfg, Role::Web)).unwrap();
    let script = format!(
        r#"
import configparser, re, sys
p = configparser.RawConfigParser()
p.read({conf:?})
config = {{}}
for name, value in p.items('options'):
    if value in ('True', 'true'): value = True
    if value in ('False', 'false'): value = False
    config[name] = value
queried = []
def list_dbs(force=False):
    if not config['list_db'] and not force:
        return 'AccessDenied'
    if not config['dbfilter'] and config['db_name']:
        return sorted(db.strip() for db in config['db_name'].split(','))
    queried.append('pg_database')
    return []
def db_filter(dbs):
    if config['dbfilter']:
        return [db for db in dbs if re.match(config['dbfilter'], db)]
    if config['db_name']:
        exposed = {{db.strip() for db in config['db_name'].split(',')}}
        return sorted(exposed.intersection(dbs))
    return list(dbs)
db = {db:?}
ok = list_dbs() == 'AccessDenied'
ok &= db_filter(list_dbs(force=True)) == [db]
for other in ['postgres', 'template1', db + 'x', 'x' + db, 'other-production']:
    ok &= db_filter([other]) == []
ok &= db_filter([db]) == [db]
ok &= not queried
print('OK' if ok else 'MISMATCH %r' % (config,))
"#,
        conf = conf.display().to_string(),
        db = cfg.database,
    );
    match Command::new("python3").arg("-c").arg(&script).output() {
        Ok(out) if out.status.success() => assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "OK",
            "{script}"
        ),
        Ok(out) => panic!("{}", String::from_utf8_lossy(&out.stderr)),
        Err(_) => eprintln!("note: python3 not available, Odoo's selection not replayed"),
    }
}

#[test]
fn no_secret_in_either_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = sample(&tmp.path().join("data"));
    let redis = cfg.redis.clone().unwrap();
    let db_pw = SecretString::from(DB_PASSWORD.to_string());
    let redis_pw = SecretString::from(REDIS_PASSWORD.to_string());
    let env = ProcessEnv::for_odoo(
        &cfg.data_dir,
        &db_pw,
        Some(Path::new("/etc/careplane/ca.pem")),
        Some((&redis, &redis_pw)),
    );
    // The secrets are in the environment...
    assert_eq!(env.get("PGPASSWORD").unwrap().expose_secret(), DB_PASSWORD);
    assert_eq!(
        env.get("PGSSLROOTCERT").unwrap().expose_secret(),
        "/etc/careplane/ca.pem"
    );
    assert!(env
        .get("CAREPLANE_REDIS_URL")
        .unwrap()
        .expose_secret()
        .contains(REDIS_PASSWORD));
    assert_eq!(
        env.get("ODOO_REDIS_PASSWORD").unwrap().expose_secret(),
        REDIS_PASSWORD
    );
    assert_eq!(env.get("LANG").unwrap().expose_secret(), "C.UTF-8");
    // ...and nowhere in the files.
    let (web, cron) = write_configs(tmp.path(), &cfg, None).unwrap();
    for path in [&web, &cron] {
        let text = fs::read_to_string(path).unwrap();
        for secret in [DB_PASSWORD, REDIS_PASSWORD, ADMIN_PASSWORD] {
            assert!(
                !text.contains(secret),
                "{} contains a secret",
                path.display()
            );
        }
    }
    // Debug output of the environment does not leak either.
    let debug = format!("{env:?}");
    assert!(!debug.contains(DB_PASSWORD) && !debug.contains(REDIS_PASSWORD));
}

#[test]
fn write_configs_sets_modes_and_owner() {
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let data = tmp.path().join("envs/stmarys/data");
    let cfg = sample(&data);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let owner = root.then_some((65534, 65534));
    let (web, cron) = write_configs(tmp.path(), &cfg, owner).unwrap();
    assert_eq!(web, tmp.path().join("odoo-web.conf"));
    assert_eq!(cron, tmp.path().join("odoo-cron.conf"));
    for p in [&web, &cron] {
        let m = fs::metadata(p).unwrap();
        // Odoo (the owner's group) reads its configuration; only root writes it.
        if root {
            assert_eq!(m.mode() & 0o777, 0o640, "{}", p.display());
            assert_eq!((m.uid(), m.gid()), (0, 65534));
        } else {
            assert_eq!(m.mode() & 0o777, 0o600, "{}", p.display());
        }
    }
    let m = fs::metadata(&data).unwrap();
    assert!(m.is_dir());
    assert_eq!(m.mode() & 0o7777, 0o700);
    if root {
        assert_eq!((m.uid(), m.gid()), (65534, 65534));
    }
    // An existing data_dir with a loose mode is tightened; rewriting is fine.
    fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).unwrap();
    write_configs(tmp.path(), &cfg, owner).unwrap();
    assert_eq!(fs::metadata(&data).unwrap().mode() & 0o7777, 0o700);
    assert_eq!(
        parse_ini(&fs::read_to_string(&web).unwrap())["workers"],
        "3"
    );
}

#[test]
fn write_configs_reports_an_untraversable_directory() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("note: not root, ownership check skipped");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o700)).unwrap();
    let cfg = sample(&tmp.path().join("data"));
    let err = write_configs(&tmp.path().join("run"), &cfg, Some((65534, 65534))).unwrap_err();
    assert!(err.to_string().contains("not traversable"), "{err}");
}

fn rejected(mutate: impl FnOnce(&mut EnvConfig), needle: &str) {
    let mut cfg = sample(Path::new("/d"));
    mutate(&mut cfg);
    match try_render_config(&cfg, Role::Web) {
        Err(OdooError::InvalidConfig(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
        other => panic!("expected InvalidConfig containing {needle:?}, got {other:?}"),
    }
}

#[test]
fn unsafe_values_are_refused() {
    rejected(|c| c.db_host = "h\nlist_db = True".into(), "db_host");
    rejected(|c| c.db_user = "postgres".into(), "postgres");
    rejected(|c| c.db_sslmode = "prefer".into(), "weaker");
    rejected(|c| c.db_sslmode = "disable".into(), "weaker");
    rejected(|c| c.http_interface = "0.0.0.0".into(), "loopback");
    rejected(|c| c.http_interface = "10.0.0.5".into(), "loopback");
    rejected(|c| c.admin_passwd_hash = "plaintext-admin".into(), "pbkdf2");
    rejected(|c| c.cron_threads = 0, "cron_threads");
    rejected(|c| c.database = "bad name".into(), "database name");
    rejected(|c| c.database = "x\ndbfilter = .*".into(), "database name");
    rejected(|c| c.database = "-x".into(), "database name");
    rejected(|c| c.addons_paths.push("/a,/b".into()), "comma");
    rejected(|c| c.addons_paths.push("relative".into()), "absolute");
    rejected(|c| c.data_dir = "/d\n/e".into(), "data_dir");
    rejected(
        |c| c.server_wide_modules = vec!["base,web".into()],
        "module",
    );
    rejected(|c| c.server_wide_modules.clear(), "server_wide_modules");
    rejected(|c| c.gevent_port = c.http_port, "gevent_port");
    rejected(|c| c.limits.memory_hard = 1, "memory");
    rejected(
        |c| c.redis.as_mut().unwrap().key_prefix = "p\nadmin_passwd = x".into(),
        "redis",
    );
    // The plaintext value is not echoed back.
    let mut cfg = sample(Path::new("/d"));
    cfg.admin_passwd_hash = ADMIN_PASSWORD.into();
    let err = try_render_config(&cfg, Role::Cron).unwrap_err().to_string();
    assert!(!err.contains(ADMIN_PASSWORD), "{err}");
}

#[test]
#[should_panic(expected = "loopback")]
fn render_config_panics_on_invalid_config() {
    let mut cfg = sample(Path::new("/d"));
    cfg.http_interface = "0.0.0.0".into();
    render_config(&cfg, Role::Web);
}
