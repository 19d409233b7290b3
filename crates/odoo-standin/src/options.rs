//! The command line (an optparse-compatible subset of `odoo-bin`'s) and the
//! configuration file (`[options]` section of an INI file read the way
//! Python's `RawConfigParser` reads it), merged into [`Options`], then
//! validated into [`Settings`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::pg::{PgSettings, SslMode};

/// What `--log-level` accepts (Odoo's list).
const LOG_LEVELS: &[&str] = &[
    "info",
    "debug_rpc",
    "warn",
    "test",
    "critical",
    "runbot",
    "debug_sql",
    "error",
    "debug",
    "debug_rpc_answer",
    "notset",
];

/// What `--db_sslmode` accepts (libpq's modes).
const SSL_MODES: &[&str] = &[
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

#[derive(Clone, Copy)]
enum Kind {
    /// Takes no value; sets the key to this value.
    Flag(&'static str),
    /// Takes a string.
    Str,
    /// Takes an integer.
    Int,
    /// Takes one of these strings.
    Choice(&'static [&'static str]),
}

struct Spec {
    short: Option<char>,
    long: &'static str,
    /// The configuration key the option sets (Odoo's `dest`).
    key: &'static str,
    kind: Kind,
}

const fn opt(short: Option<char>, long: &'static str, key: &'static str, kind: Kind) -> Spec {
    Spec {
        short,
        long,
        key,
        kind,
    }
}

/// The options the stand-in knows; anything else is "no such option", as
/// optparse says (this includes real Odoo options outside this subset).
const SPECS: &[Spec] = &[
    opt(Some('c'), "--config", "config", Kind::Str),
    opt(Some('d'), "--database", "db_name", Kind::Str),
    opt(Some('i'), "--init", "init", Kind::Str),
    opt(Some('u'), "--update", "update", Kind::Str),
    opt(
        None,
        "--stop-after-init",
        "stop_after_init",
        Kind::Flag("True"),
    ),
    opt(None, "--no-http", "http_enable", Kind::Flag("False")),
    opt(None, "--http-interface", "http_interface", Kind::Str),
    opt(Some('p'), "--http-port", "http_port", Kind::Int),
    opt(None, "--gevent-port", "gevent_port", Kind::Int),
    opt(None, "--longpolling-port", "gevent_port", Kind::Int),
    opt(None, "--workers", "workers", Kind::Int),
    opt(None, "--max-cron-threads", "max_cron_threads", Kind::Int),
    opt(None, "--without-demo", "without_demo", Kind::Str),
    opt(None, "--with-demo", "with_demo", Kind::Flag("True")),
    opt(None, "--log-level", "log_level", Kind::Choice(LOG_LEVELS)),
    opt(None, "--logfile", "logfile", Kind::Str),
    opt(None, "--log-handler", "log_handler", Kind::Str),
    opt(None, "--syslog", "syslog", Kind::Flag("True")),
    opt(Some('D'), "--data-dir", "data_dir", Kind::Str),
    opt(None, "--addons-path", "addons_path", Kind::Str),
    opt(None, "--upgrade-path", "upgrade_path", Kind::Str),
    opt(None, "--load", "server_wide_modules", Kind::Str),
    opt(None, "--db-filter", "dbfilter", Kind::Str),
    opt(None, "--no-database-list", "list_db", Kind::Flag("False")),
    opt(None, "--proxy-mode", "proxy_mode", Kind::Flag("True")),
    opt(None, "--pidfile", "pidfile", Kind::Str),
    opt(None, "--db_host", "db_host", Kind::Str),
    opt(None, "--db_port", "db_port", Kind::Int),
    opt(Some('r'), "--db_user", "db_user", Kind::Str),
    opt(Some('w'), "--db_password", "db_password", Kind::Str),
    opt(None, "--db_sslmode", "db_sslmode", Kind::Choice(SSL_MODES)),
    opt(None, "--db_maxconn", "db_maxconn", Kind::Int),
    opt(None, "--db-template", "db_template", Kind::Str),
    opt(None, "--pg_path", "pg_path", Kind::Str),
    opt(None, "--unaccent", "unaccent", Kind::Flag("True")),
    opt(None, "--limit-memory-soft", "limit_memory_soft", Kind::Int),
    opt(None, "--limit-memory-hard", "limit_memory_hard", Kind::Int),
    opt(None, "--limit-time-cpu", "limit_time_cpu", Kind::Int),
    opt(None, "--limit-time-real", "limit_time_real", Kind::Int),
    opt(
        None,
        "--limit-time-real-cron",
        "limit_time_real_cron",
        Kind::Int,
    ),
    opt(None, "--limit-request", "limit_request", Kind::Int),
    opt(Some('h'), "--help", "help", Kind::Flag("True")),
    opt(None, "--version", "version", Kind::Flag("True")),
];

/// Why the command line was not accepted.
#[derive(Debug, PartialEq)]
pub enum ArgsError {
    /// An optparse error: the caller prints usage + `prog: error: MSG`, exit 2.
    Usage(String),
    /// A first argument naming a command other than `server` (exit 1).
    UnknownCommand(String),
}

/// The parsed command line: configuration keys given explicitly.
#[derive(Debug, Default)]
pub struct Args {
    pub values: BTreeMap<&'static str, String>,
}

/// Parses the arguments after the program name.
pub fn parse_args(args: &[String]) -> Result<Args, ArgsError> {
    let mut args = args;
    // `odoo-bin [COMMAND] [options]`: the default command is `server`.
    if let Some(first) = args.first() {
        if !first.starts_with('-') {
            if first != "server" {
                return Err(ArgsError::UnknownCommand(first.clone()));
            }
            args = &args[1..];
        }
    }
    let mut out = Args::default();
    let mut positional = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            positional.extend(args[i..].iter().cloned());
            break;
        }
        let (spec, name, inline) = if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (format!("--{n}"), Some(v.to_string())),
                None => (arg.clone(), None),
            };
            let spec = SPECS.iter().find(|s| s.long == name);
            let Some(spec) = spec else {
                return Err(ArgsError::Usage(format!("no such option: {name}")));
            };
            if inline.is_some() && matches!(spec.kind, Kind::Flag(_)) {
                return Err(ArgsError::Usage(format!(
                    "{name} option does not take a value"
                )));
            }
            (spec, name, inline)
        } else if arg.len() > 1 && arg.starts_with('-') {
            let c = arg[1..].chars().next().unwrap_or('-');
            let name = format!("-{c}");
            let Some(spec) = SPECS.iter().find(|s| s.short == Some(c)) else {
                return Err(ArgsError::Usage(format!("no such option: {name}")));
            };
            let rest = &arg[1 + c.len_utf8()..];
            if matches!(spec.kind, Kind::Flag(_)) && !rest.is_empty() {
                // Grouped short flags (`-hx`): only -h is a short flag here.
                return Err(ArgsError::Usage(format!(
                    "no such option: -{}",
                    rest.chars().next().unwrap_or('-')
                )));
            }
            let inline = (!rest.is_empty()).then(|| rest.to_string());
            (spec, name, inline)
        } else {
            positional.push(arg.clone());
            continue;
        };
        let value = match spec.kind {
            Kind::Flag(v) => v.to_string(),
            _ => match inline {
                Some(v) => v,
                None => {
                    let Some(v) = args.get(i) else {
                        return Err(ArgsError::Usage(format!(
                            "{name} option requires 1 argument"
                        )));
                    };
                    i += 1;
                    v.clone()
                }
            },
        };
        match spec.kind {
            Kind::Int if value.trim().parse::<i64>().is_err() => {
                return Err(ArgsError::Usage(format!(
                    "option {name}: invalid integer value: '{value}'"
                )));
            }
            Kind::Choice(choices) if !choices.contains(&value.as_str()) => {
                let list: Vec<String> = choices.iter().map(|c| format!("'{c}'")).collect();
                return Err(ArgsError::Usage(format!(
                    "option {name}: invalid choice: '{value}' (choose from {})",
                    list.join(", ")
                )));
            }
            _ => {}
        }
        out.values.insert(spec.key, value);
    }
    if !positional.is_empty() {
        return Err(ArgsError::Usage(format!(
            "unrecognized parameters: '{}'",
            positional.join(" ")
        )));
    }
    Ok(out)
}

/// The `--help` text.
pub fn help(prog: &str) -> String {
    let mut out = format!(
        "Usage: {prog} [options]\n\nOdoo stand-in (careplane test double); accepted options:\n"
    );
    for s in SPECS {
        let short = s.short.map(|c| format!("-{c}, ")).unwrap_or_default();
        let arg = match s.kind {
            Kind::Flag(_) => String::new(),
            _ => format!(" {}", s.key.to_uppercase()),
        };
        out.push_str(&format!("  {short}{}{arg}\n", s.long));
    }
    out
}

/// Reads the `[options]` section of an Odoo configuration file the way
/// `RawConfigParser` (strict) does: `key = value` or `key: value`, keys
/// lower-cased, values stripped, `#`/`;` comment lines, indented
/// continuation lines; a line outside any section or a duplicate key or
/// section is an error.
pub fn parse_config_file(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut options = BTreeMap::new();
    let mut sections: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    let mut seen_keys: Vec<String> = Vec::new();
    let mut last_key: Option<String> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        let stripped = line.trim();
        if stripped.is_empty() {
            last_key = None;
            continue;
        }
        if stripped.starts_with('#') || stripped.starts_with(';') {
            continue;
        }
        if line.starts_with([' ', '\t']) && last_key.is_some() {
            if let (Some(key), Some("options")) = (&last_key, current.as_deref()) {
                let value: &mut String = options.get_mut(key).expect("continued key exists");
                value.push('\n');
                value.push_str(stripped);
            }
            continue;
        }
        if let Some(name) = stripped.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            if sections.iter().any(|s| s == name) {
                return Err(format!("line {}: section '{name}' already exists", n + 1));
            }
            sections.push(name.to_string());
            current = Some(name.to_string());
            seen_keys.clear();
            last_key = None;
            continue;
        }
        let Some(section) = &current else {
            return Err(format!(
                "line {}: file contains no section headers: {stripped:?}",
                n + 1
            ));
        };
        let split = stripped.find(['=', ':']);
        let Some(pos) = split else {
            return Err(format!("line {}: parsing error: {stripped:?}", n + 1));
        };
        let key = stripped[..pos].trim().to_lowercase();
        let value = stripped[pos + 1..].trim().to_string();
        if seen_keys.contains(&key) {
            return Err(format!(
                "line {}: option '{key}' in section '{section}' already exists",
                n + 1
            ));
        }
        seen_keys.push(key.clone());
        if section == "options" {
            options.insert(key.clone(), value);
        }
        last_key = Some(key);
    }
    Ok(options)
}

/// Configuration keys whose absence makes the stand-in refuse to start
/// (stricter than Odoo, to catch careplane forgetting one).
const REQUIRED: &[&str] = &[
    "db_host",
    "db_port",
    "db_user",
    "db_name",
    "data_dir",
    "admin_passwd",
];

/// The configuration file's options overlaid with the command line's.
#[derive(Debug, Default)]
pub struct Options {
    pub config_file: Option<PathBuf>,
    pub file: BTreeMap<String, String>,
    pub cli: BTreeMap<&'static str, String>,
}

/// Odoo's reading of a configuration value: `False`/`false` (and an empty
/// value) mean unset.
fn is_unset(value: &str) -> bool {
    value.is_empty() || value == "False" || value == "false"
}

impl Options {
    /// The value of `key` (command line first), `None` when unset.
    pub fn str(&self, key: &str) -> Option<&str> {
        let v = self.cli.get(key).or_else(|| self.file.get(key))?;
        (!is_unset(v)).then_some(v.as_str())
    }

    /// A boolean (`True`/`true`, `False`/`false`); anything else is refused.
    pub fn bool(&self, key: &str, default: bool) -> Result<bool, String> {
        match self
            .cli
            .get(key)
            .or_else(|| self.file.get(key))
            .map(String::as_str)
        {
            None | Some("") => Ok(default),
            Some("True" | "true") => Ok(true),
            Some("False" | "false") => Ok(false),
            Some(other) => Err(format!(
                "option {key}: expected True or False, got {other:?}"
            )),
        }
    }

    /// An integer; unset gives `default`.
    pub fn int(&self, key: &str, default: i64) -> Result<i64, String> {
        match self.str(key) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| format!("option {key}: invalid integer value: {v:?}")),
        }
    }

    /// A comma-separated list, items trimmed, empty items dropped.
    pub fn list(&self, key: &str) -> Vec<String> {
        self.str(key)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Required keys the configuration *file* lacks (or sets to `False`);
    /// `http_port` only counts when HTTP will be served.
    pub fn missing_required(&self, http: bool) -> Vec<&'static str> {
        let extra: &[&'static str] = if http { &["http_port"] } else { &[] };
        REQUIRED
            .iter()
            .chain(extra)
            .copied()
            .filter(|k| self.file.get(*k).is_none_or(|v| is_unset(v)))
            .collect()
    }
}

/// Everything the stand-in acts on, validated.
#[derive(Debug)]
pub struct Settings {
    pub config_file: Option<PathBuf>,
    pub db_names: Vec<String>,
    pub init: Vec<String>,
    pub update: Vec<String>,
    pub stop_after_init: bool,
    pub http_enable: bool,
    pub http_interface: String,
    pub http_port: u16,
    pub gevent_port: u16,
    pub workers: i64,
    pub max_cron_threads: i64,
    pub data_dir: PathBuf,
    pub list_db: bool,
    pub dbfilter: Option<String>,
    pub proxy_mode: bool,
    pub logfile: Option<PathBuf>,
    pub log_level: String,
    pub pidfile: Option<PathBuf>,
    pub db_template: String,
    pub addons_path: Vec<String>,
    pub pg: PgSettings,
}

fn port(opts: &Options, key: &str, default: i64) -> Result<u16, String> {
    let v = opts.int(key, default)?;
    u16::try_from(v).map_err(|_| format!("option {key}: {v} is not a valid port"))
}

/// `~` or `~/…` expanded like Python's `os.path.expanduser`.
fn expand_user(path: &str) -> PathBuf {
    match (path.strip_prefix('~'), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => {
            PathBuf::from(format!("{}{rest}", home.to_string_lossy()))
        }
        _ => PathBuf::from(path),
    }
}

impl Settings {
    /// Validates the merged options (call after [`Options::missing_required`]).
    pub fn from_options(opts: &Options) -> Result<Settings, String> {
        let sslmode = match opts.str("db_sslmode").unwrap_or("prefer") {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "option db_sslmode: invalid choice: {other:?} (choose from {})",
                    SSL_MODES.join(", ")
                ))
            }
        };
        let log_level = opts.str("log_level").unwrap_or("info").to_string();
        if !LOG_LEVELS.contains(&log_level.as_str()) {
            return Err(format!("option log_level: invalid choice: {log_level:?}"));
        }
        let password = match opts.str("db_password") {
            Some(p) => Some(p.to_string()),
            // Like libpq: no password given, PGPASSWORD is used.
            None => std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty()),
        };
        let pg = PgSettings {
            host: opts.str("db_host").unwrap_or("localhost").to_string(),
            port: port(opts, "db_port", 5432)?,
            user: opts.str("db_user").unwrap_or_default().to_string(),
            password,
            sslmode,
            application_name: format!("odoo-{}", std::process::id()),
        };
        Ok(Settings {
            config_file: opts.config_file.clone(),
            db_names: opts.list("db_name"),
            init: opts.list("init"),
            update: opts.list("update"),
            stop_after_init: opts.bool("stop_after_init", false)?,
            http_enable: opts.bool("http_enable", true)?,
            http_interface: opts.str("http_interface").unwrap_or("0.0.0.0").to_string(),
            http_port: port(opts, "http_port", 8069)?,
            gevent_port: port(opts, "gevent_port", 8072)?,
            workers: opts.int("workers", 0)?,
            max_cron_threads: opts.int("max_cron_threads", 2)?,
            data_dir: expand_user(opts.str("data_dir").unwrap_or("~/.local/share/Odoo")),
            list_db: opts.bool("list_db", true)?,
            dbfilter: opts.str("dbfilter").map(String::from),
            proxy_mode: opts.bool("proxy_mode", false)?,
            logfile: opts.str("logfile").map(expand_user),
            log_level,
            pidfile: opts.str("pidfile").map(PathBuf::from),
            db_template: opts.str("db_template").unwrap_or("template0").to_string(),
            addons_path: opts.list("addons_path"),
            pg,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, ArgsError> {
        parse_args(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn long_and_short_forms() {
        let a = args(&[
            "server",
            "-c",
            "/etc/odoo.conf",
            "--database=db1",
            "-ibase,stock",
            "--stop-after-init",
            "--http-port",
            "8070",
            "-p8071",
            "--no-http",
        ])
        .unwrap();
        assert_eq!(a.values["config"], "/etc/odoo.conf");
        assert_eq!(a.values["db_name"], "db1");
        assert_eq!(a.values["init"], "base,stock");
        assert_eq!(a.values["stop_after_init"], "True");
        assert_eq!(a.values["http_port"], "8071", "last occurrence wins");
        assert_eq!(a.values["http_enable"], "False");
    }

    #[test]
    fn optparse_errors() {
        let usage = |l: &[&str]| match args(l) {
            Err(ArgsError::Usage(m)) => m,
            other => panic!("expected a usage error, got {other:?}"),
        };
        assert_eq!(usage(&["--foo"]), "no such option: --foo");
        assert_eq!(usage(&["--foo=1"]), "no such option: --foo");
        assert_eq!(usage(&["-x"]), "no such option: -x");
        assert_eq!(usage(&["-c"]), "-c option requires 1 argument");
        assert_eq!(
            usage(&["--stop-after-init=1"]),
            "--stop-after-init option does not take a value"
        );
        assert_eq!(
            usage(&["--workers", "two"]),
            "option --workers: invalid integer value: 'two'"
        );
        assert!(usage(&["--log-level=loud"]).starts_with("option --log-level: invalid choice"));
        assert_eq!(
            usage(&["-d", "x", "stray"]),
            "unrecognized parameters: 'stray'"
        );
        assert_eq!(
            args(&["shell"]).unwrap_err(),
            ArgsError::UnknownCommand("shell".into())
        );
    }

    #[test]
    fn option_values_may_start_with_a_dash() {
        // optparse takes the next argument whatever it looks like.
        let a = args(&["--db-filter", "-weird"]).unwrap();
        assert_eq!(a.values["dbfilter"], "-weird");
    }

    #[test]
    fn config_file_like_raw_config_parser() {
        let text = "# comment\n[options]\nDB_HOST = 127.0.0.1\ndb_port: 5433\n; other comment\n\
                    db_password = False\naddons_path = /a,\n  /b\nredis_host = r\n\n[other]\ndb_host = no\n";
        let o = parse_config_file(text).unwrap();
        assert_eq!(o["db_host"], "127.0.0.1");
        assert_eq!(o["db_port"], "5433");
        assert_eq!(o["db_password"], "False");
        assert_eq!(o["addons_path"], "/a,\n/b");
        assert_eq!(o["redis_host"], "r", "unknown keys are kept");
        assert!(
            parse_config_file("db_host = x\n").is_err(),
            "no section header"
        );
        assert!(
            parse_config_file("[options]\na = 1\na = 2\n").is_err(),
            "duplicate"
        );
        assert!(parse_config_file("[options]\njunk\n").is_err());
    }

    #[test]
    fn false_means_unset_and_cli_overrides_file() {
        let mut o = Options {
            file: parse_config_file(
                "[options]\ndb_password = False\nhttp_port = 8069\nlist_db = False\nworkers = x\n",
            )
            .unwrap(),
            ..Default::default()
        };
        assert_eq!(o.str("db_password"), None);
        assert!(!o.bool("list_db", true).unwrap());
        assert!(o.int("workers", 0).is_err());
        o.cli.insert("http_port", "9000".into());
        assert_eq!(o.int("http_port", 0).unwrap(), 9000);
        let missing = o.missing_required(true);
        assert!(missing.contains(&"db_host") && !missing.contains(&"http_port"));
        o.file.insert("list_db".into(), "0".into());
        assert!(o.bool("list_db", true).is_err(), "non-boolean refused");
    }
}
