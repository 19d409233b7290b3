//! `odoo-standin`: a **test double** for Odoo's `odoo-bin`, for careplane's
//! tests. Odoo is on no package registry, so careplane's code paths, which
//! must run a real `odoo-bin` unchanged, are exercised against this program
//! instead. It plays Odoo's part exactly where careplane touches Odoo and
//! nowhere else: it is not an ERP.
//!
//! # Where it mirrors Odoo (16–19)
//!
//! * **Command line** ([`options`]): an optparse-compatible subset of the
//!   `server` command's options (`--opt=value`, `--opt value`, `-cFILE`,
//!   `-c FILE`; an optional leading `server` command). optparse's errors
//!   and exit status 2: `odoo-bin: error: no such option: --foo`. Command
//!   line values override the configuration file.
//! * **Configuration file**: the `[options]` section read like
//!   `RawConfigParser`; `False` (or empty) means unset; unknown keys (e.g.
//!   `redis_*`) are kept and ignored.
//! * **Start-up**: `Running as user 'root' is a security risk.`; exit 1 for
//!   `db_user = postgres`; then, for every database in `db_name`, Odoo's
//!   `_create_empty_database`: **connect to the `postgres` maintenance
//!   database** and create the database if absent (`base` is then
//!   installed). A connection failure there is an uncaught exception in
//!   Odoo: traceback on stderr (not the logfile), exit 1.
//! * **Database access** ([`pg`]): `db_host`/`db_port`/`db_user`,
//!   `db_password` or else `PGPASSWORD`, libpq's `sslmode` semantics with
//!   `PGSSLROOTCERT` (or `~/.postgresql/root.crt`), `application_name =
//!   odoo-<pid>`.
//! * **Module loading** ([`modules`]): `-i`/`-u` with Odoo-like tables
//!   (`ir_module_module`, `ir_config_parameter` with `database.uuid`,
//!   `database.secret`, `database.create_date`, `web.base.url`, `res_users`
//!   with a passlib `pbkdf2_sha512` `admin` password, `ir_attachment`), a
//!   filestore in Odoo's `<data_dir>/filestore/<db>/<2 hex>/<sha1>` layout,
//!   Odoo's log lines and its `invalid module names, ignored: …` warning. A
//!   failure is `Failed to initialize database` (CRITICAL); with
//!   `--stop-after-init` Odoo's `sys.exit(-1)`, i.e. **exit status 255**.
//! * **Serving** ([`http`]): `HTTP service (werkzeug) running on host:port`,
//!   `/web/health` without database access (`?db_server_status=1` connects
//!   to `postgres`), `/web/login` with Odoo's database selection (`dbfilter`
//!   with `%h`/`%d` matched against the databases the user owns, else
//!   `db_name`; none → 303 to the selector), `list_db = False` notice on
//!   the database manager (200, as Odoo renders it), `proxy_mode`
//!   `X-Forwarded-Host`/`-Proto`, the gevent port with `/websocket` when
//!   `workers > 0`. A bind failure kills only the HTTP thread of a
//!   single-process Odoo (the process keeps running) but is fatal (exit 1)
//!   for a multi-worker one.
//! * **Cron**: with `max_cron_threads ≥ 1` (also next to HTTP, as in Odoo)
//!   the cron thread first connects to `postgres` and `LISTEN`s on
//!   `cron_trigger`, then runs a heartbeat job in each loaded database.
//! * **Signals**: SIGTERM/SIGINT → `Initiating shutdown`, exit 0; a second
//!   one → `Forced shutdown.`.
//!
//! # Stand-in additions (not in Odoo)
//!
//! * Refuses to start (exit 1) when the configuration *file* lacks
//!   `db_host`, `db_port`, `db_user`, `db_name`, `data_dir`, `admin_passwd`,
//!   or `http_port` when HTTP will be served; refuses non-boolean values
//!   for boolean keys and non-integers for integer keys.
//! * An install writes `ODOO_STANDIN_ROWS_PER_MODULE` (default 20000) rows
//!   into `standin_<module>` so that installing costs real work.
//! * A serving process probes its database (`standin_probe` table: create,
//!   insert, read back) and filestore at start; a failing probe is treated
//!   like a failed registry load (`/web/login` answers 500).
//! * `standin_cron(ts, pid)` heartbeat rows every
//!   `ODOO_STANDIN_CRON_INTERVAL_MS` (default 2000).
//! * `ODOO_STANDIN_FAIL_AFTER_MS`: a long-running process (HTTP, cron or
//!   idle) exits with status 1 after that long, for supervisor tests.
//!
//! # Known deviations from Odoo
//!
//! * Long options cannot be abbreviated (optparse accepts unique prefixes);
//!   Odoo options outside the subset are "no such option".
//! * `database.uuid` is a version 4 UUID (Odoo: `uuid1`); the `admin`
//!   password hash uses 25000 rounds (Odoo ≥ 17: 600000; both verify).
//! * One cron loop whatever `max_cron_threads` (≥ 1) says; no sessions,
//!   cookies or POST handling; `?db=` selects without Odoo's redirect; the
//!   websocket is closed right after the handshake.
//! * No `~/.pgpass`; a 30 s connect timeout (libpq has none); `sslmode =
//!   allow` is emulated (plain, then TLS); `addons_path` is not checked.
//! * Signals during `--stop-after-init` keep their default action.

mod http;
mod jsonrpc;
mod log;
mod modules;
mod options;
mod orm;
mod pg;
mod util;

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use http::{App, DbState, DbStates, Port};
use options::{ArgsError, Options, Settings};
use pg::DbError;

/// Set by SIGTERM/SIGINT: stop serving and exit 0.
pub static STOP: AtomicBool = AtomicBool::new(false);
static SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_signal(_sig: libc::c_int) {
    if SIGNALS.fetch_add(1, Ordering::SeqCst) >= 1 {
        let msg = b"Forced shutdown.\n";
        // SAFETY: write(2) and _exit(2) are async-signal-safe.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(0);
        }
    }
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int);
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only touches atomics and async-signal-safe calls.
        unsafe {
            libc::signal(sig, handler as libc::sighandler_t);
        }
    }
}

/// Tunables of the stand-in (environment variables).
struct Tunables {
    rows_per_module: i32,
    cron_interval: Duration,
    fail_after: Option<Duration>,
}

fn env_number<T: std::str::FromStr>(name: &str) -> Result<Option<T>, String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{name}: not a valid number: {v:?}")),
        _ => Ok(None),
    }
}

impl Tunables {
    fn from_env() -> Result<Tunables, String> {
        let rows: i32 = env_number("ODOO_STANDIN_ROWS_PER_MODULE")?.unwrap_or(20_000);
        if rows < 0 {
            return Err("ODOO_STANDIN_ROWS_PER_MODULE must not be negative".into());
        }
        let cron: u64 = env_number("ODOO_STANDIN_CRON_INTERVAL_MS")?.unwrap_or(2000);
        let fail: Option<u64> = env_number("ODOO_STANDIN_FAIL_AFTER_MS")?;
        Ok(Tunables {
            rows_per_module: rows,
            cron_interval: Duration::from_millis(cron.max(1)),
            fail_after: fail.map(Duration::from_millis),
        })
    }
}

fn main() {
    std::process::exit(run());
}

fn run() -> i32 {
    let argv: Vec<String> = std::env::args().collect();
    let prog = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "odoo-bin".into());
    let mut cli = match options::parse_args(argv.get(1..).unwrap_or_default()) {
        Ok(a) => a.values,
        Err(ArgsError::Usage(msg)) => {
            eprintln!("Usage: {prog} [options]\n\n{prog}: error: {msg}");
            return 2;
        }
        Err(ArgsError::UnknownCommand(c)) => {
            eprintln!("Unknown command '{c}'");
            return 1;
        }
    };
    if cli.contains_key("help") {
        print!("{}", options::help(&prog));
        return 0;
    }
    if cli.contains_key("version") {
        println!("Odoo Server {}", modules::SERIE);
        return 0;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        eprintln!("Running as user 'root' is a security risk.");
    }

    let config_file = cli.remove("config").map(PathBuf::from);
    let mut note = String::new();
    let file = match &config_file {
        // Like RawConfigParser.read: an unreadable file is silently skipped.
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => match options::parse_config_file(&text) {
                Ok(map) => map,
                Err(e) => {
                    eprintln!(
                        "{prog}: error in configuration file {}: {e}",
                        path.display()
                    );
                    return 1;
                }
            },
            Err(e) => {
                note = format!(
                    " (configuration file {} could not be read: {e})",
                    path.display()
                );
                BTreeMap::new()
            }
        },
        None => {
            note = " (no configuration file: use -c/--config)".into();
            BTreeMap::new()
        }
    };
    let opts = Options {
        config_file,
        file,
        cli,
    };
    let serving = match (
        opts.bool("http_enable", true),
        opts.bool("stop_after_init", false),
    ) {
        (Ok(http), Ok(stop)) => http && !stop,
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{prog}: {e}");
            return 1;
        }
    };
    let missing = opts.missing_required(serving);
    if !missing.is_empty() {
        eprintln!(
            "odoo-standin: refusing to start: the configuration lacks required option(s): {}{note}",
            missing.join(", ")
        );
        return 1;
    }
    let settings = match Settings::from_options(&opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{prog}: {e}");
            return 1;
        }
    };
    let tunables = match Tunables::from_env() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("odoo-standin: {e}");
            return 1;
        }
    };
    if let Err(e) = log::init(&settings.log_level, settings.logfile.as_deref()) {
        eprintln!("{}", log::traceback(&format!("OSError: {e}")));
        return 1;
    }
    if settings.pg.user == "postgres" {
        eprintln!("Using the database user 'postgres' is a security risk, aborting.");
        return 1;
    }
    report_configuration(&settings);
    start(settings, tunables)
}

fn report_configuration(s: &Settings) {
    log::info(
        None,
        "odoo",
        &format!("Odoo version {} (odoo-standin)", modules::SERIE),
    );
    if let Some(path) = s.config_file.as_ref().filter(|p| p.is_file()) {
        log::info(
            None,
            "odoo",
            &format!("Using configuration file at {}", path.display()),
        );
    }
    let paths: Vec<String> = s.addons_path.iter().map(|p| format!("'{p}'")).collect();
    log::info(
        None,
        "odoo",
        &format!("addons paths: [{}]", paths.join(", ")),
    );
    log::info(
        None,
        "odoo",
        &format!("database: {}@{}:{}", s.pg.user, s.pg.host, s.pg.port),
    );
}

/// Loads one database at start (Odoo's `preload_registries` for it), plus
/// the stand-in's probe when the process goes on serving.
fn preload(s: &Settings, t: &Tunables, db: &str, init: &[String], serving: bool) -> bool {
    let fail = |error: &str| {
        log::critical(
            Some(db),
            "odoo.service.server",
            &format!(
                "Failed to initialize database `{db}`.\n{}",
                log::traceback(error)
            ),
        );
        false
    };
    let mut client = match s.pg.connect(db) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    let request = modules::Request {
        init,
        update: &s.update,
        http_port: s.http_port,
        data_dir: &s.data_dir,
        rows_per_module: t.rows_per_module,
    };
    if let Err(e) = modules::load(&mut client, db, &request) {
        return fail(&e);
    }
    if serving {
        if let Err(e) = modules::probe(&mut client, db, &s.data_dir) {
            return fail(&e);
        }
        log::info(
            Some(db),
            "odoo-standin",
            "probe passed: table standin_probe written and read back, filestore writable",
        );
    }
    true
}

fn shutdown(s: &Settings) {
    log::info(None, "odoo.service.server", "Initiating shutdown");
    log::info(
        None,
        "odoo.service.server",
        "Hit CTRL-C again or send a second signal to force the shutdown.",
    );
    if let Some(p) = &s.pidfile {
        let _ = std::fs::remove_file(p);
    }
}

fn start(settings: Settings, tunables: Tunables) -> i32 {
    // Odoo's addons_data_dir: created at start, errors ignored.
    let addons = settings.data_dir.join("addons");
    let _ = util::make_dirs(&addons, 0o700)
        .and_then(|_| util::make_dirs(&addons.join(modules::SERIE), 0o500));

    let mut init = settings.init.clone();
    for db in &settings.db_names {
        match pg::create_empty_database(&settings.pg, db, &settings.db_template) {
            Ok(true) => {
                if !init.iter().any(|m| m == "base") {
                    init.push("base".into());
                }
            }
            Ok(false) => {}
            Err(e) => {
                eprintln!("{}", log::traceback(&e.to_string()));
                return 1;
            }
        }
    }
    if let Some(p) = &settings.pidfile {
        if let Err(e) = std::fs::write(p, std::process::id().to_string()) {
            eprintln!(
                "{}",
                log::traceback(&format!("OSError: {}: {e}", p.display()))
            );
            return 1;
        }
    }

    if settings.stop_after_init {
        let mut rc = 0;
        for db in &settings.db_names {
            if !preload(&settings, &tunables, db, &init, false) {
                rc = 255; // Odoo: sys.exit(-1)
                break;
            }
        }
        shutdown(&settings);
        return rc;
    }

    install_signal_handlers();
    let settings = Arc::new(settings);
    let states = Arc::new(DbStates::default());
    for db in &settings.db_names {
        states.set(db, DbState::Loading);
    }
    let app = Arc::new(App {
        settings: settings.clone(),
        states: states.clone(),
    });
    let iface = settings.http_interface.as_str();
    if settings.http_enable {
        let sessions = settings.data_dir.join("sessions");
        if let Err(e) = util::make_dirs(&sessions, 0o700) {
            log::error(
                None,
                "odoo.http",
                &format!("{}: directory is not writable: {e}", sessions.display()),
            );
        }
        match TcpListener::bind((iface, settings.http_port)) {
            Ok(listener) => {
                log::info(
                    None,
                    "odoo.service.server",
                    &format!(
                        "HTTP service (werkzeug) running on {iface}:{}",
                        settings.http_port
                    ),
                );
                http::serve(listener, app.clone(), Port::Http);
            }
            Err(e) => {
                let tb = log::traceback(&format!("OSError: {e}"));
                if settings.workers > 0 {
                    eprintln!("{tb}");
                    return 1;
                }
                // A single-process Odoo loses only its HTTP thread.
                eprintln!("Exception in thread odoo.service.httpd:\n{tb}");
            }
        }
    }

    for db in &settings.db_names {
        let ok = preload(&settings, &tunables, db, &init, true);
        states.set(db, if ok { DbState::Ready } else { DbState::Failed });
    }

    if settings.http_enable && settings.workers > 0 {
        match TcpListener::bind((iface, settings.gevent_port)) {
            Ok(listener) => {
                log::info(
                    None,
                    "odoo.service.server",
                    &format!(
                        "Evented Service (longpolling) running on {iface}:{}",
                        settings.gevent_port
                    ),
                );
                http::serve(listener, app.clone(), Port::Gevent);
            }
            Err(e) => log::error(
                None,
                "odoo.service.server",
                &format!(
                    "Evented Service (longpolling): uncaught error during main loop\n{}",
                    log::traceback(&format!("OSError: {e}"))
                ),
            ),
        }
    }

    if let Some(after) = tunables.fail_after {
        thread::spawn(move || {
            thread::sleep(after);
            log::critical(
                None,
                "odoo-standin",
                &format!(
                    "ODOO_STANDIN_FAIL_AFTER_MS={} elapsed: exiting with status 1",
                    after.as_millis()
                ),
            );
            std::process::exit(1);
        });
    }

    if settings.max_cron_threads > 0 {
        let (s, st, interval) = (settings.clone(), states.clone(), tunables.cron_interval);
        thread::spawn(move || cron(&s, &st, interval));
    } else if !settings.http_enable {
        log::info(
            None,
            "odoo-standin",
            "no HTTP (--no-http) and max_cron_threads = 0: nothing to do, idling until signalled",
        );
    }

    while !STOP.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(50));
    }
    shutdown(&settings);
    0
}

/// Sleeps up to `d`; false when a stop was requested meanwhile.
fn sleep_unless_stopped(d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if STOP.load(Ordering::SeqCst) {
            return false;
        }
        thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    !STOP.load(Ordering::SeqCst)
}

/// The cron thread: Odoo's `LISTEN cron_trigger` on the `postgres`
/// database, then a heartbeat job per loaded database every interval.
fn cron(s: &Settings, states: &DbStates, interval: Duration) {
    let listen = s.pg.connect("postgres").and_then(|mut c| {
        c.batch_execute("LISTEN cron_trigger")
            .map(|_| c)
            .map_err(|e| DbError::query(&e))
    });
    let _listen = match listen {
        Ok(c) => c,
        Err(e) => {
            // An exception kills Odoo's cron thread, not the process.
            eprintln!(
                "Exception in thread odoo.service.cron.cron0:\n{}",
                log::traceback(&e.to_string())
            );
            return;
        }
    };
    let mut conns: HashMap<String, postgres::Client> = HashMap::new();
    while sleep_unless_stopped(interval) {
        for db in &s.db_names {
            if states.get(db) != Some(DbState::Ready) {
                continue;
            }
            let started = Instant::now();
            match heartbeat(s, &mut conns, db) {
                Ok(true) => log::info(
                    Some(db),
                    "odoo.addons.base.models.ir_cron",
                    &format!(
                        "Job done: `standin heartbeat` ({:.3}s).",
                        started.elapsed().as_secs_f64()
                    ),
                ),
                Ok(false) => log::warning(
                    Some(db),
                    "odoo.addons.base.models.ir_cron",
                    &format!("Tried to poll an undefined table on database {db}."),
                ),
                Err(e) => {
                    conns.remove(db);
                    log::warning(
                        Some(db),
                        "odoo.service.server",
                        &format!("cron0 encountered an Exception:\n{}", log::traceback(&e)),
                    );
                }
            }
        }
    }
}

/// Inserts one `standin_cron` row; `Ok(false)` when the database is not
/// initialized.
fn heartbeat(
    s: &Settings,
    conns: &mut HashMap<String, postgres::Client>,
    db: &str,
) -> Result<bool, String> {
    if !conns.contains_key(db) {
        let mut c = s.pg.connect(db).map_err(|e| e.to_string())?;
        if !modules::is_initialized(&mut c)? {
            return Ok(false);
        }
        c.batch_execute(
            "BEGIN; SELECT pg_advisory_xact_lock(hashtext('standin_cron'));
             CREATE TABLE IF NOT EXISTS standin_cron (ts timestamptz NOT NULL DEFAULT now(), pid integer NOT NULL);
             COMMIT",
        )
        .map_err(|e| DbError::query(&e).to_string())?;
        conns.insert(db.to_string(), c);
    }
    let c = conns.get_mut(db).expect("just inserted");
    c.execute(
        "INSERT INTO standin_cron (ts, pid) VALUES (now(), $1)",
        &[&(std::process::id() as i32)],
    )
    .map_err(|e| DbError::query(&e).to_string())?;
    Ok(true)
}
