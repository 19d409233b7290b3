//! Long-running modes against a real PostgreSQL: HTTP (single process and
//! multi-worker), cron, idle; signals and the crash switch.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{
    get, http_get, listening_ports, run_to_end, set, spawn, standin, wait_for_http, wait_until,
    write_config, PgServer, Running,
};

/// Installs base into the tenant database.
fn init(work: &Path, conf: &Path) {
    let mut cmd = standin(work);
    cmd.arg("-c")
        .arg(conf)
        .args(["-i", "base", "--stop-after-init"])
        .env("ODOO_STANDIN_ROWS_PER_MODULE", "10");
    let (code, stderr) = run_to_end(cmd, work, "init");
    assert_eq!(code, Some(0), "{stderr}");
}

fn serve(work: &Path, conf: &Path, args: &[&str], env: &[(&str, &str)], name: &str) -> Running {
    let mut cmd = standin(work);
    cmd.arg("-c").arg(conf).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    spawn(cmd, work, name)
}

fn terminate(r: &mut Running) {
    r.signal(libc::SIGTERM);
    let status = r.wait_exit();
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGTERM; stderr:\n{}",
        r.stderr()
    );
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn http_mode_serves_odoo_routes_and_probes_database_and_filestore() {
    let pg = PgServer::start();
    let t = pg.create_tenant("tenant_a", "");
    let work = pg.workdir("http");
    let conf = work.join("odoo.conf");
    let logfile = work.join("log/odoo.log");
    let mut config = pg.config(&t, &work);
    set(&mut config, "logfile", logfile.to_str().unwrap());
    write_config(&conf, &config);
    let port: u16 = get(&config, "http_port").parse().unwrap();
    let log = || std::fs::read_to_string(&logfile).unwrap_or_default();

    // An uninitialized database: health passes, the login page fails.
    let mut r = serve(&work, &conf, &[], &[], "uninit");
    wait_for_http(&mut r, port);
    assert_eq!(http_get(port, "/web/login", &[]).unwrap().status, 500);
    assert!(log().contains("Database tenant_a not initialized, you can force it with `-i base`"));
    terminate(&mut r);

    init(&work, &conf);

    // A database the probe cannot write to fails like a registry that does
    // not load: CRITICAL, health still passes, the login page fails.
    let mut c = pg.admin("tenant_a");
    c.batch_execute("DROP TABLE standin_probe; CREATE TABLE standin_probe (id serial PRIMARY KEY, pid integer NOT NULL, created_at timestamptz NOT NULL DEFAULT now())")
        .unwrap();
    let mut r = serve(&work, &conf, &[], &[], "noprobe");
    wait_for_http(&mut r, port);
    assert_eq!(http_get(port, "/web/login", &[]).unwrap().status, 500);
    let text = log();
    assert!(
        text.contains(
            "CRITICAL tenant_a odoo.service.server: Failed to initialize database `tenant_a`."
        ),
        "{text}"
    );
    assert!(
        text.contains("permission denied for table standin_probe"),
        "{text}"
    );
    terminate(&mut r);
    c.batch_execute("DROP TABLE standin_probe").unwrap();

    let mut r = serve(&work, &conf, &[], &[], "serve");
    wait_for_http(&mut r, port);

    let health = http_get(port, "/web/health", &[]).unwrap();
    assert_eq!(health.status, 200);
    assert_eq!(health.body, r#"{"status": "pass"}"#);
    assert_eq!(health.headers["content-type"], "application/json");
    assert_eq!(health.headers["connection"], "close");
    assert_eq!(
        health.headers["content-length"],
        health.body.len().to_string()
    );
    let db_status = http_get(port, "/web/health?db_server_status=1", &[]).unwrap();
    assert_eq!(db_status.status, 200);
    assert_eq!(
        db_status.body,
        r#"{"status": "pass", "db_server_status": true}"#
    );

    let login = http_get(port, "/web/login", &[]).unwrap();
    assert_eq!(login.status, 200, "{}", login.body);
    assert!(login.body.contains("<form"), "{}", login.body);
    assert!(login.body.contains("value=\"tenant_a\""), "{}", login.body);
    assert!(login
        .body
        .contains(&format!("data-web-base-url=\"http://localhost:{port}\"")));
    let proxied = http_get(
        port,
        "/web/login",
        &[
            ("X-Forwarded-Host", "erp.example.org"),
            ("X-Forwarded-Proto", "https"),
        ],
    )
    .unwrap();
    assert!(
        proxied
            .body
            .contains("<base href=\"https://erp.example.org/\"/>"),
        "{}",
        proxied.body
    );

    for path in ["/web/database/manager", "/web/database/selector"] {
        let page = http_get(port, path, &[]).unwrap();
        assert_eq!(page.status, 200);
        assert!(page
            .body
            .contains("The database manager has been disabled by the administrator"));
        assert!(!page.body.contains("Manage Databases"));
    }
    assert_eq!(
        http_get(port, "/web/nothing-here", &[]).unwrap().status,
        404
    );

    // Single-process Odoo serves the websocket on the HTTP port.
    let ws = http_get(
        port,
        "/websocket",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
    )
    .unwrap();
    assert_eq!(ws.status, 101);
    assert_eq!(
        ws.headers["sec-websocket-accept"],
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );

    // The probe wrote into the database and the filestore.
    let probes: i64 = c
        .query_one(
            "SELECT count(*) FROM standin_probe WHERE pid = $1",
            &[&(r.pid() as i32)],
        )
        .unwrap()
        .get(0);
    assert_eq!(probes, 1);
    let data = work.join("data");
    assert_eq!(mode(&data.join("filestore/tenant_a")), 0o700);
    assert_eq!(mode(&data.join("sessions")), 0o700);
    assert!(
        std::fs::read_dir(data.join("filestore/tenant_a"))
            .unwrap()
            .count()
            >= 2
    );

    assert_eq!(listening_ports(r.pid()), vec![port]);
    let text = log();
    assert!(
        text.contains(&format!(
            "INFO ? odoo.service.server: HTTP service (werkzeug) running on 127.0.0.1:{port}"
        )),
        "{text}"
    );
    assert!(text.contains("werkzeug: 127.0.0.1 - - ["), "{text}");
    assert!(text.contains(&format!(" {} INFO ", r.pid())), "{text}");
    terminate(&mut r);
    assert!(log().contains("odoo.service.server: Initiating shutdown"));
    assert!(
        http_get(port, "/web/health", &[]).is_none(),
        "nothing listens after exit"
    );
}

#[test]
fn multi_worker_mode_serves_the_gevent_port_and_selects_databases() {
    let pg = PgServer::start();
    let t = pg.create_tenant("tenant_a", "");
    let work = pg.workdir("prefork");
    let conf = work.join("odoo.conf");
    let mut config = pg.config(&t, &work);
    set(&mut config, "workers", "2");
    set(&mut config, "list_db", "True");
    set(&mut config, "dbfilter", "False");
    write_config(&conf, &config);
    init(&work, &conf);
    let port: u16 = get(&config, "http_port").parse().unwrap();
    let gevent: u16 = get(&config, "gevent_port").parse().unwrap();

    let mut r = serve(&work, &conf, &[], &[], "prefork");
    wait_for_http(&mut r, port);
    wait_until("the gevent port", || {
        http_get(gevent, "/web/health", &[]).is_some()
    });
    assert_eq!(http_get(gevent, "/web/health", &[]).unwrap().status, 200);
    let bad = http_get(gevent, "/websocket", &[]).unwrap();
    assert_eq!(bad.status, 400);
    assert!(
        bad.body.contains("Empty or missing header(s)"),
        "{}",
        bad.body
    );
    let ws = http_get(
        gevent,
        "/websocket",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "keep-alive, Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
    )
    .unwrap();
    assert_eq!(ws.status, 101);
    let on_http = http_get(port, "/websocket", &[]).unwrap();
    assert_eq!(on_http.status, 400);
    assert!(
        on_http.body.contains(&format!("evented port ({gevent})")),
        "{}",
        on_http.body
    );
    // list_db = True: the manager lists the database (db_name, no dbfilter).
    let manager = http_get(port, "/web/database/manager", &[]).unwrap();
    assert_eq!(manager.status, 200);
    assert!(manager.body.contains(">tenant_a</a>"), "{}", manager.body);
    let mut ports = listening_ports(r.pid());
    ports.sort();
    let mut expected = vec![port, gevent];
    expected.sort();
    assert_eq!(ports, expected);
    assert!(r.stderr().contains(&format!(
        "Evented Service (longpolling) running on 127.0.0.1:{gevent}"
    )));
    terminate(&mut r);

    // dbfilter matching none of the user's databases: no database, so the
    // login page redirects to the selector; %d takes the host's first label.
    for (filter, host, expected) in [
        ("^nomatch$", "127.0.0.1", 303),
        ("^%d$", "tenant_a.example.org", 200),
    ] {
        set(&mut config, "dbfilter", filter);
        write_config(&conf, &config);
        let mut r = serve(&work, &conf, &[], &[], "filter");
        wait_for_http(&mut r, port);
        let login = http_get(port, "/web/login", &[("Host", host)]).unwrap();
        assert_eq!(login.status, expected, "{filter}: {}", login.body);
        if expected == 303 {
            assert_eq!(login.headers["location"], "/web/database/selector");
        }
        terminate(&mut r);
    }
}

#[test]
fn cron_mode_writes_heartbeats_and_listens_nowhere() {
    let pg = PgServer::start();
    let t = pg.create_tenant("tenant_a", "");
    let work = pg.workdir("cron");
    let conf = work.join("odoo.conf");
    let mut config = pg.config(&t, &work);
    set(&mut config, "max_cron_threads", "1");
    set(&mut config, "http_port", "False"); // not needed without HTTP
    write_config(&conf, &config);
    init(&work, &conf);

    let mut r = serve(
        &work,
        &conf,
        &["--no-http"],
        &[("ODOO_STANDIN_CRON_INTERVAL_MS", "100")],
        "cron",
    );
    let pid = r.pid() as i32;
    let mut c = pg.admin("tenant_a");
    wait_until("three heartbeat rows", || {
        assert!(r.is_running(), "exited early: {}", r.stderr());
        c.query_one("SELECT count(*) FROM standin_cron WHERE pid = $1", &[&pid])
            .map(|row| row.get::<_, i64>(0) >= 3)
            .unwrap_or(false)
    });
    assert!(
        listening_ports(r.pid()).is_empty(),
        "cron mode must not listen"
    );
    // Like Odoo's cron thread: LISTEN cron_trigger on the postgres database.
    let mut admin = pg.admin("postgres");
    let listening: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'postgres' AND application_name = $1",
            &[&format!("odoo-{pid}")],
        )
        .unwrap()
        .get(0);
    assert_eq!(listening, 1);
    assert!(r
        .stderr()
        .contains("odoo.addons.base.models.ir_cron: Job done: `standin heartbeat`"));
    terminate(&mut r);
}

#[test]
fn idle_mode_port_conflicts_and_the_crash_switch() {
    let pg = PgServer::start();
    let t = pg.create_tenant("tenant_a", "");
    let work = pg.workdir("idle");
    let conf = work.join("odoo.conf");
    let config = pg.config(&t, &work);
    write_config(&conf, &config);
    init(&work, &conf);

    let mut r = serve(
        &work,
        &conf,
        &["--no-http", "--max-cron-threads=0"],
        &[],
        "idle",
    );
    wait_until("the idle notice", || {
        assert!(r.is_running(), "exited early: {}", r.stderr());
        r.stderr().contains("nothing to do")
    });
    assert!(r.is_running());
    assert!(listening_ports(r.pid()).is_empty());
    terminate(&mut r);

    // The HTTP port taken: a single-process Odoo loses only its HTTP thread
    // and keeps running; a multi-worker one exits 1.
    let port: u16 = get(&config, "http_port").parse().unwrap();
    let taken = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let mut r = serve(&work, &conf, &[], &[], "taken");
    wait_until("the HTTP thread's exception", || {
        assert!(r.is_running(), "exited: {}", r.stderr());
        r.stderr()
            .contains("Exception in thread odoo.service.httpd")
    });
    assert!(r.stderr().contains("OSError"), "{}", r.stderr());
    assert!(r.is_running());
    terminate(&mut r);
    let mut r = serve(&work, &conf, &["--workers=2"], &[], "taken-prefork");
    assert_eq!(r.wait_exit().code(), Some(1), "{}", r.stderr());
    drop(taken);

    let mut r = serve(
        &work,
        &conf,
        &[],
        &[("ODOO_STANDIN_FAIL_AFTER_MS", "1500")],
        "crash",
    );
    let status = r.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", r.stderr());
    assert!(
        r.stderr()
            .contains("ODOO_STANDIN_FAIL_AFTER_MS=1500 elapsed"),
        "{}",
        r.stderr()
    );
    assert!(
        r.stderr().contains(&format!("running on 127.0.0.1:{port}")),
        "{}",
        r.stderr()
    );
    assert!(r.stdout().is_empty());
}
