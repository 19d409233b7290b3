//! Rules beyond types: names, ranges, formats — checked per document once it
//! type-checks. Rules that span documents (references, uniqueness, derived
//! names, connection budgets) live in [`crate::load`] and `crate::derived`.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::connections::BUDGET_SETTINGS;
use crate::decode::{key, quoted, Ctx};
use crate::model::{
    BackupPolicySpec, Kind, MaintenanceWindowSpec, Metadata, PlatformSpec, ServiceTierSpec, Sizing,
    TenantSpec, WindowType, MAX_ENVIRONMENT_NAME, MAX_TENANT_NAME, ODOO_VERSIONS,
    PROTECTED_PG_SETTINGS, WEEKDAYS,
};
use crate::yaml::Seg;

/// Parses durations like `30s`, `15m`, `4h`, `1d`, or combinations such as
/// `1h30m`, as written in RTO/RPO objectives. Units: `s`, `m`, `h`, `d`.
///
/// The error is a sentence meant for a diagnostic.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration; write e.g. 30s, 15m, 4h or 1d".into());
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "invalid duration {}: expected a number, e.g. 30s, 15m, 4h or 1d",
                quoted(text)
            ));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("duration {} is too large", quoted(text)))?;
        rest = &rest[digits..];
        let unit = rest.chars().next();
        let seconds = match unit {
            Some('s') => 1,
            Some('m') => 60,
            Some('h') => 3600,
            Some('d') => 86_400,
            None => {
                return Err(format!(
                    "duration {} has no unit; write e.g. {}s, {}m or {}h",
                    quoted(text),
                    number,
                    number,
                    number
                ))
            }
            Some(u) => {
                return Err(format!(
                    "duration {} has unknown unit {}; use s, m, h or d",
                    quoted(text),
                    quoted(&u.to_string())
                ))
            }
        };
        rest = &rest[unit.map_or(0, char::len_utf8)..];
        total = number
            .checked_mul(seconds)
            .and_then(|n| total.checked_add(n))
            .ok_or_else(|| format!("duration {} is too large", quoted(text)))?;
    }
    Ok(Duration::from_secs(total))
}

/// The ingress domain is the tail of every environment's host name, and
/// the two ports must differ.
fn check_ingress(cx: &mut Ctx<'_>, ingress: &crate::model::IngressSettings) {
    if let Some(domain) = &ingress.domain {
        let ok = domain.len() <= 200 && domain.split('.').all(|l| l.len() <= 63 && is_dns_label(l));
        if !ok {
            cx.at_value(
                &[key("spec"), key("ingress"), key("domain")],
                format!(
                    "{} is not a lower-case DNS name (labels of a-z, 0-9 and '-', at most 200 characters)",
                    quoted(domain)
                ),
                Some("write e.g. careplane.localhost or odoo.example.org".into()),
            );
        }
    }
    for (name, port) in [
        ("httpsPort", ingress.https_port),
        ("httpPort", ingress.http_port),
    ] {
        if port == Some(0) {
            cx.at_value(
                &[key("spec"), key("ingress"), key(name)],
                "port 0 is not a port; leave the field out to have one allocated",
                None,
            );
        }
    }
    if ingress.https_port.is_some() && ingress.https_port == ingress.http_port {
        cx.at_value(
            &[key("spec"), key("ingress"), key("httpPort")],
            "httpPort and httpsPort must differ",
            None,
        );
    }
    for (i, path) in ingress.admin_paths.iter().enumerate() {
        if !path.starts_with('/')
            || path
                .chars()
                .any(|c| c.is_whitespace() || c == '?' || c == '#')
        {
            cx.at_value(
                &[
                    key("spec"),
                    key("ingress"),
                    key("adminPaths"),
                    Seg::Index(i),
                ],
                format!("{} is not a path prefix", quoted(path)),
                Some("write e.g. /odoo/settings".into()),
            );
        }
    }
    for (i, net) in ingress.admin_allow.iter().enumerate() {
        if !is_cidr(net) {
            cx.at_value(
                &[
                    key("spec"),
                    key("ingress"),
                    key("adminAllow"),
                    Seg::Index(i),
                ],
                format!("{} is not an address or CIDR", quoted(net)),
                Some("write e.g. 10.20.0.0/16 or 192.0.2.7".into()),
            );
        }
    }
    if ingress.admin_paths.is_empty() != ingress.admin_allow.is_empty() {
        let (field, other) = if ingress.admin_allow.is_empty() {
            ("adminPaths", "adminAllow")
        } else {
            ("adminAllow", "adminPaths")
        };
        cx.at_value(
            &[key("spec"), key("ingress"), key(field)],
            format!("{field} without {other} says nothing; give both or neither"),
            None,
        );
    }
    for (i, c) in ingress.certificates.iter().enumerate() {
        for (field, file) in [("certFile", &c.cert_file), ("keyFile", &c.key_file)] {
            if !file.is_absolute() {
                cx.at_value(
                    &[
                        key("spec"),
                        key("ingress"),
                        key("certificates"),
                        Seg::Index(i),
                        key(field),
                    ],
                    format!(
                        "{} is not an absolute path",
                        quoted(&file.display().to_string())
                    ),
                    None,
                );
            }
        }
        if ingress.certificates[..i].iter().any(|o| o.host == c.host) {
            cx.at_value(
                &[
                    key("spec"),
                    key("ingress"),
                    key("certificates"),
                    Seg::Index(i),
                    key("host"),
                ],
                format!("a second certificate for {}", quoted(&c.host)),
                None,
            );
        }
    }
}

/// An IPv4/IPv6 address, optionally with a prefix length in range.
fn is_cidr(text: &str) -> bool {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (text, None),
    };
    let Ok(ip) = addr.parse::<std::net::IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    len.is_none_or(|l| l.parse::<u8>().is_ok_and(|l| l <= max))
}

/// Whether `name` is an RFC 1123 DNS label (length aside).
pub(crate) fn is_dns_label(name: &str) -> bool {
    let b = name.as_bytes();
    let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty() && ok(&b[0]) && ok(&b[b.len() - 1]) && b.iter().all(|c| ok(c) || *c == b'-')
}

/// The closest valid DNS label, for a "try ..." hint.
fn dns_label_like(name: &str, max: usize) -> Option<String> {
    let mut out = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if !(c == '-' && (out.is_empty() || out.ends_with('-'))) {
            out.push(c);
        }
    }
    out.truncate(max);
    let out = out.trim_end_matches('-').to_string();
    (is_dns_label(&out) && out != name).then_some(out)
}

/// Checks a name that ends up in database, role and host names.
fn check_name(cx: &mut Ctx<'_>, path: &[Seg], name: &str, max: usize, why_max: &str) {
    if name.is_empty() {
        cx.at_value(path, "name must not be empty", None);
        return;
    }
    if !is_dns_label(name) {
        let help = dns_label_like(name, max).map(|s| format!("try {}", quoted(&s)));
        cx.at_value(
            path,
            format!(
                "invalid name {}: use lowercase letters, digits and '-', starting and ending with a letter or digit",
                quoted(name)
            ),
            help.or_else(|| Some("names become database, role and host names, so they must be DNS labels".into())),
        );
        return;
    }
    let len = name.len();
    if len > max {
        cx.at_value(
            path,
            format!(
                "name {} is {len} characters long, more than the {max} allowed",
                quoted(name)
            ),
            Some(why_max.to_string()),
        );
    }
}

// "<tenant>-<environment>" must fit PostgreSQL's 63-byte identifiers.
const _: () = assert!(MAX_TENANT_NAME + 1 + MAX_ENVIRONMENT_NAME <= 63);

const PG_IDENTIFIER_WHY: &str =
    "tenant and environment names are joined into PostgreSQL identifiers \
     \"<tenant>-<environment>\", which are limited to 63 bytes";

/// `kind` is `None` when it is unknown; the name is still checked then.
pub(crate) fn metadata(cx: &mut Ctx<'_>, kind: Option<Kind>, m: &Metadata) {
    let path = [key("metadata"), key("name")];
    let why = match kind {
        Some(Kind::Tenant) => PG_IDENTIFIER_WHY,
        _ => "names must be DNS labels, which are limited to 63 characters",
    };
    let max = kind.map_or(crate::model::MAX_NAME, Kind::max_name_len);
    check_name(cx, &path, &m.name, max, why);
    if kind == Some(Kind::Tenant) {
        if let Some(why) = crate::names::reserved_tenant_name(&m.name) {
            cx.at_value(
                &path,
                format!("the tenant name {} is reserved", quoted(&m.name)),
                Some(why),
            );
        }
    }
}

fn is_module_name(m: &str) -> bool {
    !m.is_empty()
        && m.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
}

fn check_modules(cx: &mut Ctx<'_>, path: &[Seg], modules: &[String]) {
    for (i, m) in modules.iter().enumerate() {
        if is_module_name(m) {
            continue;
        }
        let mut p = path.to_vec();
        p.push(Seg::Index(i));
        let fixed: String = m
            .trim()
            .chars()
            .flat_map(char::to_lowercase)
            .map(|c| {
                if c.is_ascii_lowercase() || c.is_ascii_digit() {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let help =
            (is_module_name(&fixed) && fixed != *m).then(|| format!("try {}", quoted(&fixed)));
        cx.at_value(
            &p,
            format!(
                "invalid module name {}: Odoo technical names use lowercase letters, digits and '_'",
                quoted(m)
            ),
            help,
        );
    }
}

fn check_sizing(cx: &mut Ctx<'_>, path: &[Seg], sizing: &Sizing) {
    let at = |cx: &mut Ctx<'_>, field: &str, msg: String, help: Option<String>| {
        let mut p = path.to_vec();
        p.push(key(field));
        cx.at_value(&p, msg, help);
    };
    if sizing.workers == Some(0) {
        at(cx, "workers", "workers must be at least 1".into(), None);
    }
    if sizing.db_connections == Some(0) {
        at(
            cx,
            "dbConnections",
            "dbConnections must be at least 1".into(),
            None,
        );
    }
    if let Some(mem) = &sizing.worker_memory {
        if let Err(e) = parse_quantity(mem) {
            at(
                cx,
                "workerMemory",
                e,
                Some("write e.g. 512Mi or 2Gi".into()),
            );
        }
    }
}

/// Kubernetes-style memory quantities: `512Mi`, `2Gi`, `1G`, `1500000`.
pub(crate) fn parse_quantity(text: &str) -> Result<u64, String> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let factor: u64 = match unit {
        "" => 1,
        "k" | "K" => 1000,
        "M" => 1000u64.pow(2),
        "G" => 1000u64.pow(3),
        "T" => 1000u64.pow(4),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return Err(format!("invalid memory size {}", quoted(text))),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid memory size {}", quoted(text)))?;
    let bytes = n
        .checked_mul(factor)
        .ok_or_else(|| format!("memory size {} is too large", quoted(text)))?;
    if bytes == 0 {
        return Err("memory size must be more than 0".into());
    }
    Ok(bytes)
}

/// Redis `maxmemory` units: `256mb`, `1gb`, `100kb`, plain bytes.
fn check_redis_memory(text: &str) -> Result<(), String> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let unit_ok = matches!(
        unit.to_ascii_lowercase().as_str(),
        "" | "b" | "k" | "kb" | "m" | "mb" | "g" | "gb"
    );
    match number.parse::<u64>() {
        Ok(n) if unit_ok && n > 0 => Ok(()),
        Ok(0) if unit_ok => Err("maxMemory must be more than 0".into()),
        _ => Err(format!("invalid Redis memory size {}", quoted(text))),
    }
}

/// Whether `key` (trimmed and lowercased, as careplane writes it) is a
/// setting careplane enforces: [`PROTECTED_PG_SETTINGS`] and every `ssl_*`.
pub fn is_protected_pg_setting(key: &str) -> bool {
    let k = key.trim().to_ascii_lowercase();
    PROTECTED_PG_SETTINGS.contains(&k.as_str()) || k.starts_with("ssl_")
}

/// Settings that keep data intact; the rest of [`PROTECTED_PG_SETTINGS`]
/// harden access, TLS, logging and where configuration comes from.
const INTEGRITY_PG_SETTINGS: &[&str] = &[
    "fsync",
    "full_page_writes",
    "ignore_checksum_failure",
    "zero_damaged_pages",
    "allow_system_table_mods",
];

/// Settings careplane's WAL archiving owns (docs/design/0010): an operator's
/// value would be overridden, or would send WAL where no restore looks.
const ARCHIVE_PG_SETTINGS: &[&str] = &[
    "archive_mode",
    "archive_command",
    "archive_library",
    "restore_command",
];

fn check_pg_settings(cx: &mut Ctx<'_>, settings: &std::collections::BTreeMap<String, String>) {
    let at = |name: &str| [key("spec"), key("postgres"), key("settings"), key(name)];
    for (name, value) in settings {
        let k = name.trim().to_ascii_lowercase();
        let well_formed = k.starts_with(|c: char| c.is_ascii_lowercase())
            && k.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.');
        if !well_formed {
            cx.at_key(
                &at(name),
                format!("invalid PostgreSQL setting name {}", quoted(name)),
                Some(
                    "setting names are letters, digits, '_' and '.', starting with a letter".into(),
                ),
            );
            continue;
        }
        if is_protected_pg_setting(&k) {
            let help = if INTEGRITY_PG_SETTINGS.contains(&k.as_str()) {
                "careplane enforces it so that data survives crashes and corruption is detected"
            } else {
                "careplane sets it to harden every cluster"
            };
            cx.at_key(
                &at(name),
                format!("{} cannot be set here", quoted(name)),
                Some(help.into()),
            );
            continue;
        }
        if ARCHIVE_PG_SETTINGS.contains(&k.as_str()) {
            cx.at_key(
                &at(name),
                format!("{} cannot be set here", quoted(name)),
                Some("careplane archives every cluster's WAL into its backup repository (BackupPolicy)".into()),
            );
            continue;
        }
        if value.contains(['\n', '\r', '\0']) {
            cx.at_value(
                &at(name),
                format!("the value of {} contains a line break or NUL", quoted(name)),
                Some("it would start another line of postgresql.conf".into()),
            );
            continue;
        }
        if BUDGET_SETTINGS.contains(&k.as_str()) && value.trim().parse::<u32>().is_err() {
            cx.at_value(
                &at(name),
                format!("{name} {} is not a whole number", quoted(value)),
                None,
            );
        }
    }
}

/// Directories careplane must never use as its data directory, nor anything
/// under them: the system's programs, libraries, configuration and kernel
/// interfaces.
const SYSTEM_TREES: &[&str] = &[
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sbin",
    "/sys", "/usr",
];

/// Shared directories careplane must not take over as a whole (a directory
/// of its own below them is fine).
const SHARED_DIRS: &[&str] = &[
    "/", "/home", "/media", "/mnt", "/opt", "/root", "/run", "/srv", "/tmp", "/var", "/var/lib",
    "/var/log", "/var/run", "/var/tmp",
];

/// `p` made absolute against the directory of `file` (its canonical path,
/// so that a spec reached through `../..` or a symlink does not lengthen
/// the socket paths below it), then with `.` and `..` resolved: the path
/// `careplane` uses.
pub(crate) fn absolute_data_dir(file: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        return normalize(p);
    }
    let parent = file.parent().unwrap_or(Path::new(""));
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let base = std::fs::canonicalize(parent)
        .or_else(|_| std::path::absolute(parent))
        .unwrap_or_else(|_| parent.to_path_buf());
    normalize(&base.join(p))
}

/// An absolute `p` with `.` and `..` resolved lexically: the directory it
/// names (symbolic links aside).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// Why the resolved data directory `dir` cannot be used, if it cannot.
fn data_dir_problem(dir: &Path) -> Option<(String, Option<String>)> {
    let shown = quoted(&dir.display().to_string());
    let own = "careplane keeps its state, keys, clusters and logs there and sets its mode; \
               use a directory of its own, e.g. /var/lib/careplane";
    if let Some(sys) = SYSTEM_TREES.iter().find(|s| dir.starts_with(s)) {
        return Some((
            format!("dataDir {shown} is in the system directory {sys}"),
            Some(own.into()),
        ));
    }
    if SHARED_DIRS.iter().any(|s| dir == Path::new(s)) {
        return Some((
            format!("dataDir {shown} is a shared system directory"),
            Some(own.into()),
        ));
    }
    // The one look outside the spec files: a file in the way fails every apply.
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Some((
            format!("dataDir {shown} exists and is not a directory"),
            Some("point dataDir at a directory, or at a path that does not exist yet".into()),
        )),
        _ => None,
    }
}

/// A path that goes into a configuration file or a command line.
fn check_path(cx: &mut Ctx<'_>, path: &[Seg], p: &Path, in_list: bool) {
    let s = p.to_string_lossy();
    let shown = quoted(&s);
    if s.is_empty() {
        cx.at_value(path, "path must not be empty", None);
    } else if s.chars().any(char::is_control) {
        cx.at_value(
            path,
            format!("path {shown} contains a control character"),
            Some("paths are written into configuration files, where a line break would start another option".into()),
        );
    } else if s.trim() != s {
        cx.at_value(
            path,
            format!("path {shown} starts or ends with whitespace"),
            None,
        );
    } else if in_list && s.contains(',') {
        cx.at_value(
            path,
            format!("path {shown} contains a comma"),
            Some("Odoo's addons_path is a comma-separated list: the comma would split this path in two".into()),
        );
    }
}

fn check_paths(cx: &mut Ctx<'_>, path: &[Seg], paths: &[PathBuf]) {
    for (i, p) in paths.iter().enumerate() {
        let mut at = path.to_vec();
        at.push(Seg::Index(i));
        check_path(cx, &at, p, true);
    }
}

fn check_channels(cx: &mut Ctx<'_>, n: &crate::model::NotificationSettings) {
    for (i, c) in n.channels.iter().enumerate() {
        let base = [
            key("spec"),
            key("notifications"),
            key("channels"),
            Seg::Index(i),
        ];
        if n.channels[..i].iter().any(|o| o.name == c.name) {
            let mut p = base.to_vec();
            p.push(key("name"));
            cx.at_value(
                &p,
                format!("channel {} is defined twice", quoted(&c.name)),
                None,
            );
        }
        let kinds = [
            c.webhook.is_some(),
            c.alertmanager.is_some(),
            c.smtp.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            cx.at_value(
                &base,
                "a channel has exactly one of `webhook`, `alertmanager` and `smtp`",
                None,
            );
            continue;
        }
        if let Some(smtp) = &c.smtp {
            let mut p = base.to_vec();
            p.push(key("smtp"));
            check_smtp(cx, &p, smtp);
            continue;
        }
        match (&c.webhook, &c.alertmanager) {
            (None, None) | (Some(_), Some(_)) => {}
            (Some(u), None) | (None, Some(u)) => {
                if !(u.starts_with("http://") || u.starts_with("https://"))
                    || u.contains(char::is_whitespace)
                {
                    let mut p = base.to_vec();
                    p.push(key(if c.webhook.is_some() {
                        "webhook"
                    } else {
                        "alertmanager"
                    }));
                    cx.at_value(&p, "not an http:// or https:// URL", None);
                }
            }
        }
    }
}

/// A plain `local@domain` address: no display name, spaces, angle brackets or
/// separators (one address per list entry, so nothing can smuggle in a header).
fn is_mail_address(a: &str) -> bool {
    let Some((local, domain)) = a.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && domain.len() <= 253
        && domain
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c))
}

fn is_env_name(n: &str) -> bool {
    !n.is_empty()
        && !n.starts_with(|c: char| c.is_ascii_digit())
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_smtp(cx: &mut Ctx<'_>, base: &[Seg], smtp: &crate::model::SmtpChannel) {
    let at = |k: &str| {
        let mut p = base.to_vec();
        p.push(key(k));
        p
    };
    if smtp.host_port().is_none() {
        cx.at_value(
            &at("server"),
            format!("{} is not `host` or `host:port`", quoted(&smtp.server)),
            Some("e.g. `smtp.example.org:587`, `127.0.0.1:25`, `[::1]:25`".into()),
        );
    } else if smtp.tls == crate::model::SmtpTls::None && !smtp.is_loopback() {
        cx.at_value(
            &at("tls"),
            format!(
                "`tls: none` sends mail (and any password) in clear: only allowed for a relay \
                 on loopback, not {}",
                quoted(&smtp.server)
            ),
            Some("use `starttls` (the default) or `implicit`".into()),
        );
    }
    if !is_mail_address(&smtp.from) {
        cx.at_value(
            &at("from"),
            format!("{} is not an e-mail address", quoted(&smtp.from)),
            Some("a plain address such as `careplane@example.org`".into()),
        );
    }
    if smtp.to.is_empty() {
        cx.at_value(&at("to"), "at least one recipient is needed", None);
    }
    for (i, a) in smtp.to.iter().enumerate() {
        if !is_mail_address(a) {
            let mut p = at("to");
            p.push(Seg::Index(i));
            cx.at_value(
                &p,
                format!("{} is not an e-mail address", quoted(a)),
                Some("one plain address per entry, such as `oncall@example.org`".into()),
            );
        }
    }
    match (&smtp.username, &smtp.password_env) {
        (Some(_), None) => cx.at_value(
            &at("username"),
            "a `username` needs `passwordEnv`, the environment variable holding its password",
            None,
        ),
        (None, Some(_)) => {
            cx.at_value(&at("passwordEnv"), "`passwordEnv` needs a `username`", None)
        }
        _ => {}
    }
    if let Some(ca) = &smtp.ca_file {
        if smtp.tls == crate::model::SmtpTls::None {
            cx.at_value(
                &at("caFile"),
                "`caFile` says which CA to trust over TLS, and this relay has `tls: none`",
                Some("use `starttls` or `implicit`, or leave `caFile` out".into()),
            );
        } else if !ca.is_absolute() {
            cx.at_value(
                &at("caFile"),
                format!(
                    "{} is not an absolute path",
                    quoted(&ca.display().to_string())
                ),
                Some("`careplane serve` reads it, from whatever directory it runs in".into()),
            );
        }
    }
    if let Some(env) = &smtp.password_env {
        if !is_env_name(env) {
            cx.at_value(
                &at("passwordEnv"),
                // Not echoed: someone may have put the password itself here.
                "not an environment variable name (letters, digits, `_`)",
                Some("name the variable holding the password, e.g. `CAREPLANE_SMTP_PASSWORD`; the password itself never goes in the spec".into()),
            );
        }
    }
}

pub(crate) fn platform(cx: &mut Ctx<'_>, spec: &PlatformSpec) {
    if let Some(n) = &spec.notifications {
        check_channels(cx, n);
    }
    let spec_path = [key("spec")];
    let data_dir_path = [key("spec"), key("dataDir")];
    if spec.data_dir.as_os_str().is_empty() {
        cx.at_value(&data_dir_path, "dataDir must not be empty", None);
    } else {
        let before = cx.diags.len();
        check_path(cx, &data_dir_path, &spec.data_dir, false);
        if cx.diags.len() == before {
            if let Some((msg, help)) = data_dir_problem(&absolute_data_dir(cx.file, &spec.data_dir))
            {
                cx.at_value(&data_dir_path, msg, help);
            }
        }
    }
    if let Some(user) = &spec.run_as {
        check_user_name(cx, &[key("spec"), key("runAs")], user, "postgres");
    }
    if let Some(dir) = &spec.postgres.bin_dir {
        check_path(
            cx,
            &[key("spec"), key("postgres"), key("binDir")],
            dir,
            false,
        );
    }
    check_pg_settings(cx, &spec.postgres.settings);
    if let Some(server) = &spec.redis.server {
        check_path(
            cx,
            &[key("spec"), key("redis"), key("server")],
            server,
            false,
        );
    }
    if let Some(mem) = &spec.redis.max_memory {
        if let Err(e) = check_redis_memory(mem) {
            cx.at_value(
                &[key("spec"), key("redis"), key("maxMemory")],
                e,
                Some("write e.g. 256mb or 1gb".into()),
            );
        }
    }
    if let Some(ingress) = &spec.ingress {
        check_ingress(cx, ingress);
    }
    if let Some(k) = &spec.kubernetes {
        crate::kubernetes::check(cx, k);
    }
    if let Some(odoo) = &spec.odoo {
        if !ODOO_VERSIONS.contains(&odoo.version) {
            cx.at_value(
                &[key("spec"), key("odoo"), key("version")],
                format!(
                    "Odoo version {} is not supported, expected {} to {}",
                    odoo.version,
                    ODOO_VERSIONS.start(),
                    ODOO_VERSIONS.end()
                ),
                None,
            );
        }
        if let Some(r) = &odoo.uids {
            let path = [key("spec"), key("odoo"), key("uids")];
            if r.first < 1000 {
                cx.at_value(
                    &[key("spec"), key("odoo"), key("uids"), key("first")],
                    format!(
                        "uid {} is a system account's; Odoo needs uids of its own",
                        r.first
                    ),
                    Some("use a range no account uses, e.g. first: 1900000000".into()),
                );
            } else if r.count == 0
                || u64::from(r.first) + u64::from(r.count) > u64::from(u32::MAX - 1)
            {
                cx.at_value(
                    &path,
                    format!(
                        "uid range {}+{} is empty or runs past the largest uid",
                        r.first, r.count
                    ),
                    None,
                );
            }
        }
        if odoo.command.as_os_str().is_empty() {
            cx.at_value(
                &[key("spec"), key("odoo"), key("command")],
                "command must not be empty",
                None,
            );
        } else {
            check_path(
                cx,
                &[key("spec"), key("odoo"), key("command")],
                &odoo.command,
                false,
            );
        }
        if let Some(python) = &odoo.python {
            check_path(
                cx,
                &[key("spec"), key("odoo"), key("python")],
                python,
                false,
            );
        }
        check_paths(
            cx,
            &[key("spec"), key("odoo"), key("addonsPaths")],
            &odoo.addons_paths,
        );
    }
    let mut defaults = spec_path.to_vec();
    defaults.extend([key("defaults"), key("modules")]);
    check_modules(cx, &defaults, &spec.defaults.modules);
}

/// A system user name as `useradd` accepts it.
fn check_user_name(cx: &mut Ctx<'_>, path: &[Seg], user: &str, example: &str) {
    let ok = !user.is_empty()
        && user.len() <= 32
        && user.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && user
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-');
    if !ok {
        cx.at_value(
            path,
            format!("invalid user name {}", quoted(user)),
            Some(format!("a system user such as \"{example}\"")),
        );
    }
}

pub(crate) fn service_tier(cx: &mut Ctx<'_>, spec: &ServiceTierSpec) {
    let a = spec.availability;
    if !(a > 0.0 && a < 100.0) {
        cx.at_value(
            &[key("spec"), key("availability")],
            format!("availability {a} is out of range: it is a percentage above 0 and below 100"),
            Some("e.g. 99.9 for \"three nines\"".into()),
        );
    }
    let rto = parse_duration(&spec.rto);
    if let Err(e) = &rto {
        cx.at_value(&[key("spec"), key("rto")], e.clone(), None);
    }
    if rto == Ok(Duration::ZERO) {
        cx.at_value(
            &[key("spec"), key("rto")],
            "rto must be more than 0: no recovery is instantaneous",
            None,
        );
    }
    if let Err(e) = parse_duration(&spec.rpo) {
        cx.at_value(&[key("spec"), key("rpo")], e, None);
    }
    if spec.support_hours.trim().is_empty() {
        cx.at_value(
            &[key("spec"), key("supportHours")],
            "supportHours must not be empty",
            Some("e.g. \"24x7\" or \"business-hours\"".into()),
        );
    }
    if let Some(slo) = &spec.slo {
        slo_spec(cx, slo);
    }
}

/// The percentages the SLA arithmetic holds exactly: above 0, at most 100, four decimals.
fn exact_percent(v: f64) -> bool {
    v > 0.0 && v <= 100.0 && ((v * 10_000.0).round() - v * 10_000.0).abs() < 1e-6
}

fn slo_spec(cx: &mut Ctx<'_>, slo: &crate::model::SloSpec) {
    let base = [key("spec"), key("slo")];
    if slo.bad_minute_after == Some(0) {
        let mut p = base.to_vec();
        p.push(key("badMinuteAfter"));
        cx.at_value(&p, "badMinuteAfter must be at least 1", None);
    }
    for (i, t) in slo.targets.iter().enumerate() {
        let mut p = base.to_vec();
        p.extend([key("targets"), Seg::Index(i), key("severity")]);
        if !matches!(t.severity.as_str(), "P1" | "P2" | "P3" | "P4") {
            cx.at_value(
                &p,
                format!("unknown severity {:?}", t.severity),
                Some("P1, P2, P3 or P4".into()),
            );
        } else if slo.targets[..i].iter().any(|o| o.severity == t.severity) {
            cx.at_value(&p, format!("severity {} is listed twice", t.severity), None);
        }
    }
    for (i, e) in slo.escalation.iter().enumerate() {
        let mut p = base.to_vec();
        p.extend([key("escalation"), Seg::Index(i), key("severity")]);
        if !matches!(e.severity.as_str(), "P1" | "P2" | "P3" | "P4") {
            cx.at_value(
                &p,
                format!("unknown severity {:?}", e.severity),
                Some("P1, P2, P3 or P4".into()),
            );
        } else if slo.escalation[..i].iter().any(|o| o.severity == e.severity) {
            cx.at_value(&p, format!("severity {} is listed twice", e.severity), None);
        }
        if e.steps
            .windows(2)
            .any(|w| w[1].after_minutes <= w[0].after_minutes)
        {
            p.pop();
            p.push(key("steps"));
            cx.at_value(&p, "steps must be in increasing afterMinutes", None);
        }
    }
    for (i, c) in slo.credits.iter().enumerate() {
        for (field, v) in [("below", c.below), ("credit", c.credit)] {
            if !exact_percent(v) {
                let mut p = base.to_vec();
                p.extend([key("credits"), Seg::Index(i), key(field)]);
                cx.at_value(
                    &p,
                    format!("{field} {v} is not a percentage above 0 and at most 100 with at most four decimals"),
                    None,
                );
            }
        }
    }
}

/// Whether `name` is a time zone careplane knows (IANA names from the bundled
/// database), with a hint when it is not.
pub fn check_time_zone(name: &str) -> Result<(), (String, Option<String>)> {
    match jiff::tz::TimeZone::get(name) {
        Ok(_) => Ok(()),
        Err(_) => Err((
            format!("{} is not an IANA time zone", quoted(name)),
            Some("write e.g. Europe/Berlin, America/New_York or UTC".into()),
        )),
    }
}

/// `HH:MM`.
pub(crate) fn parse_local_time(text: &str) -> Result<jiff::civil::Time, String> {
    jiff::civil::Time::strptime("%H:%M", text)
        .map_err(|_| format!("{} is not a time of day HH:MM (00:00-23:59)", quoted(text)))
}

/// `YYYY-MM-DDTHH:MM`.
pub(crate) fn parse_local_datetime(text: &str) -> Result<jiff::civil::DateTime, String> {
    jiff::civil::DateTime::strptime("%Y-%m-%dT%H:%M", text).map_err(|_| {
        format!(
            "{} is not a local date and time YYYY-MM-DDTHH:MM",
            quoted(text)
        )
    })
}

pub(crate) fn maintenance_window(cx: &mut Ctx<'_>, spec: &MaintenanceWindowSpec) {
    match (&spec.weekly, &spec.once) {
        (None, None) => cx.at_value(
            &[key("spec")],
            "a window needs `weekly` or `once`",
            Some("e.g. `weekly: {days: [sunday], start: \"02:00\", end: \"04:00\"}`".into()),
        ),
        (Some(_), Some(_)) => cx.at_value(
            &[key("spec"), key("once")],
            "a window is either `weekly` or `once`, not both",
            Some("write two MaintenanceWindow documents".into()),
        ),
        _ => {}
    }
    if let Some(w) = &spec.weekly {
        if w.days.is_empty() {
            cx.at_value(
                &[key("spec"), key("weekly"), key("days")],
                "lists no day",
                None,
            );
        }
        for (i, d) in w.days.iter().enumerate() {
            if !WEEKDAYS.contains(&d.as_str()) {
                let help = match crate::suggest::did_you_mean(d, WEEKDAYS.iter().copied()) {
                    Some(s) => format!("did you mean {}?", quoted(s)),
                    None => format!("one of {}", WEEKDAYS.join(", ")),
                };
                cx.at_value(
                    &[key("spec"), key("weekly"), key("days"), Seg::Index(i)],
                    format!("{} is not a weekday", quoted(d)),
                    Some(help),
                );
            }
        }
        for (field, v) in [("start", &w.start), ("end", &w.end)] {
            if let Err(e) = parse_local_time(v) {
                cx.at_value(&[key("spec"), key("weekly"), key(field)], e, None);
            }
        }
    }
    if let Some(o) = &spec.once {
        let start = parse_local_datetime(&o.start);
        let end = parse_local_datetime(&o.end);
        for (field, r) in [("start", &start), ("end", &end)] {
            if let Err(e) = r {
                cx.at_value(&[key("spec"), key("once"), key(field)], e.clone(), None);
            }
        }
        if let (Ok(s), Ok(e)) = (start, end) {
            if e <= s {
                cx.at_value(
                    &[key("spec"), key("once"), key("end")],
                    format!(
                        "{} is not after the start {}",
                        quoted(&o.end),
                        quoted(&o.start)
                    ),
                    None,
                );
            }
        }
    }
    if spec.window_type == WindowType::Freeze && spec.approved_by.is_some() {
        cx.at_value(
            &[key("spec"), key("approvedBy")],
            "a freeze needs no approval: it restricts changes whoever approved it",
            Some("remove approvedBy, or make the window `type: maintenance`".into()),
        );
    }
}

pub(crate) fn backup_policy(cx: &mut Ctx<'_>, spec: &BackupPolicySpec) {
    if let Err((msg, help)) = check_cron(&spec.schedule) {
        cx.at_value(&[key("spec"), key("schedule")], msg, help);
    }
    let r = &spec.retention;
    if r.daily == 0 && r.weekly == 0 && r.monthly == 0 && r.yearly == 0 && spec.keep_last == Some(0)
    {
        cx.at_value(
            &[key("spec"), key("keepLast")],
            "keepLast is 0 and retention keeps no backups: nothing would be kept",
            Some("keep at least one, e.g. `keepLast: 1` or `retention: {daily: 7}`".into()),
        );
    } else if r.daily == 0
        && r.weekly == 0
        && r.monthly == 0
        && r.yearly == 0
        && spec.keep_last.is_none()
    {
        cx.at_value(
            &[key("spec"), key("retention")],
            "retention keeps no backups",
            Some("set at least one of daily, weekly, monthly, yearly, e.g. `retention: {daily: 7}`, or `keepLast`".into()),
        );
    }
    if let Some(verify) = &spec.verify {
        if let Err((msg, help)) = check_cron(verify) {
            cx.at_value(&[key("spec"), key("verify")], msg, help);
        }
    }
    if let Some(w) = &spec.pitr_window {
        if let Err(e) = parse_duration(w) {
            cx.at_value(&[key("spec"), key("pitrWindow")], e, None);
        }
    }
    if let Some(level) = spec.compression_level {
        if !(1..=19).contains(&level) {
            cx.at_value(
                &[key("spec"), key("compressionLevel")],
                format!("compressionLevel {level} is out of range: zstd levels are 1 to 19"),
                Some("3 is the default; higher is smaller and slower".into()),
            );
        }
    }
    for (i, r) in spec.recipients.iter().enumerate() {
        // Bech32: "age1" then lowercase data characters; the driver parses
        // the key fully and names it again if it is not a valid X25519 key.
        let ok = r.len() > 10
            && r.starts_with("age1")
            && r[4..]
                .chars()
                .all(|c| "qpzry9x8gf2tvdw0s3jn54khce6mua7l".contains(c));
        if !ok {
            cx.at_value(
                &[key("spec"), key("recipients"), Seg::Index(i)],
                format!("{} is not an age public key", quoted(r)),
                Some("age X25519 recipients look like `age1…` (see `age-keygen -y`)".into()),
            );
        }
    }
    if spec.careplane_key == Some(false) && spec.recipients.is_empty() {
        let (name, _) = cx.root.find(&[key("metadata"), key("name")]);
        let policy = name.as_str().map(quoted).unwrap_or_else(|| "?".into());
        cx.at_value(
            &[key("spec"), key("careplaneKey")],
            format!(
                "BackupPolicy {policy}: careplaneKey is false and recipients is empty: \
                 its backups would be encrypted to nobody"
            ),
            Some(
                "add the customer's age public key to `recipients` (`age-keygen -y key.txt`), \
                 or remove `careplaneKey: false`"
                    .into(),
            ),
        );
    }
    let s3 = match spec.repository.as_deref() {
        None => false,
        Some(url) => match check_repository_url(url) {
            Ok(s3) => s3,
            Err(msg) => {
                cx.at_value(
                    &[key("spec"), key("repository")],
                    msg,
                    Some("`file:///var/backups/careplane` or `s3://bucket/prefix`".into()),
                );
                true
            }
        },
    };
    if let Some(lock) = &spec.immutability {
        let (name, _) = cx.root.find(&[key("metadata"), key("name")]);
        let policy = name.as_str().map(quoted).unwrap_or_else(|| "?".into());
        if !(1..=36500).contains(&lock.days) {
            cx.at_value(
                &[key("spec"), key("immutability"), key("days")],
                format!(
                    "BackupPolicy {policy}: immutability.days {} is out of range: 1 to 36500 (100 years)",
                    lock.days
                ),
                Some("how long each backup stays locked after it is taken, e.g. `days: 30`".into()),
            );
        }
        if !s3 {
            let repo = spec
                .repository
                .as_deref()
                .map(quoted)
                .unwrap_or_else(|| "the default file://<dataDir>/backups".into());
            cx.at_value(
                &[key("spec"), key("immutability")],
                format!(
                    "BackupPolicy {policy}: immutability needs an s3:// repository (S3 Object Lock), \
                     but the repository is {repo}"
                ),
                Some(
                    "set `repository: s3://bucket/prefix` on a bucket created with Object Lock \
                     enabled, or remove immutability"
                        .into(),
                ),
            );
        }
    }
    for (field, value) in [("endpoint", &spec.endpoint), ("region", &spec.region)] {
        let Some(value) = value else { continue };
        if !s3 {
            cx.at_value(
                &[key("spec"), key(field)],
                format!("{field} is only for s3:// repositories"),
                Some("remove it, or set `repository: s3://bucket/prefix`".into()),
            );
        } else if field == "endpoint"
            && !(value.starts_with("https://") || value.starts_with("http://"))
        {
            cx.at_value(
                &[key("spec"), key(field)],
                format!("endpoint {} is not an http(s) URL", quoted(value)),
                Some("e.g. `https://s3.example.net`".into()),
            );
        } else if value.trim().is_empty() || value.contains(char::is_whitespace) {
            cx.at_value(
                &[key("spec"), key(field)],
                format!("{field} {} is empty or has spaces", quoted(value)),
                None,
            );
        }
    }
}

/// `Ok(true)` for an `s3://bucket[/prefix]`, `Ok(false)` for a `file:///absolute/path`.
fn check_repository_url(url: &str) -> Result<bool, String> {
    if let Some(rest) = url.strip_prefix("s3://") {
        let bucket = rest.split('/').next().unwrap_or("");
        let ok = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !ok {
            return Err(format!(
                "repository {}: bucket {} is not a valid S3 bucket name",
                quoted(url),
                quoted(bucket)
            ));
        }
        if rest.contains(char::is_whitespace) || rest.contains("//") || rest.contains("..") {
            return Err(format!(
                "repository {}: the prefix has spaces, `//` or `..`",
                quoted(url)
            ));
        }
        return Ok(true);
    }
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') || path.contains(['\n', '\r', '\0', ' ', '\'', '"', '%']) {
            return Err(format!(
                "repository {}: a file:// repository needs an absolute path without spaces, quotes or `%`",
                quoted(url)
            ));
        }
        return Ok(false);
    }
    Err(format!(
        "repository {}: only file:// and s3:// repositories are supported",
        quoted(url)
    ))
}

/// Checks a 5-field cron expression (minute hour day-of-month month
/// day-of-week), with lists, ranges, steps and month/day names.
fn check_cron(schedule: &str) -> Result<(), (String, Option<String>)> {
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    if let Some(macro_) = fields.first().filter(|f| f.starts_with('@')) {
        let equivalent = match *macro_ {
            "@hourly" => Some("0 * * * *"),
            "@daily" | "@midnight" => Some("0 0 * * *"),
            "@weekly" => Some("0 0 * * 0"),
            "@monthly" => Some("0 0 1 * *"),
            "@yearly" | "@annually" => Some("0 0 1 1 *"),
            _ => None,
        };
        return Err((
            format!(
                "{} is not supported; schedules are 5-field cron expressions",
                quoted(macro_)
            ),
            equivalent.map(|e| format!("write {}", quoted(e))),
        ));
    }
    if fields.len() != 5 {
        return Err((
            format!(
                "schedule {} has {} fields, expected 5 (minute hour day-of-month month day-of-week)",
                quoted(schedule),
                fields.len()
            ),
            Some("e.g. \"0 2 * * *\" for 02:00 UTC every day".into()),
        ));
    }
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
    let specs: [(&str, u32, u32, &[&str], u32); 5] = [
        ("minute", 0, 59, &[], 0),
        ("hour", 0, 23, &[], 0),
        ("day-of-month", 1, 31, &[], 0),
        ("month", 1, 12, &MONTHS, 1),
        ("day-of-week", 0, 7, &DAYS, 0),
    ];
    for (field, (name, min, max, names, first)) in fields.iter().zip(specs) {
        let value = |s: &str| -> Option<u32> {
            if let Ok(n) = s.parse::<u32>() {
                return (min..=max).contains(&n).then_some(n);
            }
            let lower = s.to_ascii_lowercase();
            names
                .iter()
                .position(|n| *n == lower)
                .map(|i| i as u32 + first)
        };
        let bad = || {
            Err((
                format!(
                    "invalid {name} field {} in schedule {}",
                    quoted(field),
                    quoted(schedule)
                ),
                Some(format!(
                    "{name} takes *, a value {min}-{max}, a range a-b, a list a,b, or a step */n"
                )),
            ))
        };
        for item in field.split(',') {
            let (range, step) = match item.split_once('/') {
                Some((r, s)) => (r, Some(s)),
                None => (item, None),
            };
            if let Some(step) = step {
                if !matches!(step.parse::<u32>(), Ok(n) if n >= 1 && n <= max.max(1)) {
                    return bad();
                }
            }
            let ok = match range {
                "*" => true,
                r => match r.split_once('-') {
                    Some((a, b)) => matches!((value(a), value(b)), (Some(a), Some(b)) if a <= b),
                    None => value(r).is_some(),
                },
            };
            if !ok {
                return bad();
            }
        }
    }
    Ok(())
}

pub(crate) fn tenant(cx: &mut Ctx<'_>, spec: &TenantSpec) {
    let envs_path = [key("spec"), key("environments")];
    if spec.environments.is_empty() {
        cx.at_value(
            &envs_path,
            "a tenant needs at least one environment",
            Some("e.g. `environments: [{name: production, kind: production}]`".into()),
        );
    }
    check_modules(cx, &[key("spec"), key("modules")], &spec.modules);
    check_paths(cx, &[key("spec"), key("addonsPaths")], &spec.addons_paths);
    if let Some(z) = &spec.time_zone {
        if let Err((msg, help)) = check_time_zone(z) {
            cx.at_value(&[key("spec"), key("timeZone")], msg, help);
        }
    }
    if let Some(s) = &spec.sizing {
        check_sizing(cx, &[key("spec"), key("sizing")], s);
    }
    let mut seen: Vec<(&str, usize)> = Vec::new();
    for (i, env) in spec.environments.iter().enumerate() {
        let base = [key("spec"), key("environments"), Seg::Index(i)];
        let mut name_path = base.to_vec();
        name_path.push(key("name"));
        check_name(
            cx,
            &name_path,
            &env.name,
            MAX_ENVIRONMENT_NAME,
            PG_IDENTIFIER_WHY,
        );
        if let Some((_, first)) = seen.iter().find(|(n, _)| *n == env.name) {
            let mut first_path = base.to_vec();
            first_path[2] = Seg::Index(*first);
            first_path.push(key("name"));
            let line = cx.root.value_pos(&first_path).line;
            cx.at_value(
                &name_path,
                format!("duplicate environment name {}", quoted(&env.name)),
                Some(format!("environments[{first}] at line {line} has the same name; names are unique within a tenant")),
            );
        } else {
            seen.push((&env.name, i));
        }
        let mut p = base.to_vec();
        p.push(key("modules"));
        check_modules(cx, &p, &env.modules);
        let mut p = base.to_vec();
        p.push(key("addonsPaths"));
        check_paths(cx, &p, &env.addons_paths);
        if let Some(s) = &env.sizing {
            let mut p = base.to_vec();
            p.push(key("sizing"));
            check_sizing(cx, &p, s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spec reached through `..` resolves its relative dataDir to the
    /// directory itself: CI's checkout under a longer path pushed the
    /// unresolved `crates/x/../../examples/...` over the socket-path limit.
    #[test]
    fn relative_data_dir_is_resolved_not_just_joined() {
        let here = std::env::current_dir().unwrap();
        let file = here.join("src/../src/../Cargo.toml");
        let dir = absolute_data_dir(&file, Path::new("./state/../.careplane"));
        assert_eq!(
            dir,
            std::fs::canonicalize(&here).unwrap().join(".careplane")
        );
        assert_eq!(
            absolute_data_dir(&file, Path::new("/var/lib/x/../careplane")),
            PathBuf::from("/var/lib/careplane")
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("4h"), Ok(Duration::from_secs(4 * 3600)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("30").unwrap_err().contains("no unit"));
        assert!(parse_duration("4w").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("-1h").is_err());
        assert!(parse_duration("99999999999999999999d")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_duration("999999999999999d")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn dns_labels() {
        assert!(is_dns_label("stmarys"));
        assert!(is_dns_label("a-1"));
        assert!(is_dns_label("1"));
        assert!(!is_dns_label(""));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label("a-"));
        assert!(!is_dns_label("St_Marys"));
        assert_eq!(dns_label_like("St_Marys", 40).as_deref(), Some("st-marys"));
        assert_eq!(dns_label_like("__", 40), None);
    }

    #[test]
    fn cron() {
        assert!(check_cron("0 2 * * *").is_ok());
        assert!(check_cron("*/15 0-6,22 1 jan-mar MON-FRI").is_ok());
        assert!(check_cron("0 2 * *")
            .unwrap_err()
            .0
            .contains("has 4 fields"));
        assert!(check_cron("60 2 * * *")
            .unwrap_err()
            .0
            .contains("invalid minute field"));
        assert!(check_cron("0 2 * * 8").is_err());
        assert!(check_cron("0 2 */0 * *").is_err());
        assert!(check_cron("0 5-2 * * *").is_err());
        assert_eq!(
            check_cron("@daily").unwrap_err().1.as_deref(),
            Some("write \"0 0 * * *\"")
        );
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("2Gi"), Ok(2 << 30));
        assert_eq!(parse_quantity("512Mi"), Ok(512 << 20));
        assert!(parse_quantity("0Gi").is_err());
        assert!(parse_quantity("2GB").is_err());
        assert!(parse_quantity("Gi").is_err());
        assert!(parse_quantity("99999999999999999Ti").is_err());
        assert!(check_redis_memory("256mb").is_ok());
        assert!(check_redis_memory("1GB").is_ok());
        assert!(check_redis_memory("0mb").is_err());
        assert!(check_redis_memory("lots").is_err());
    }
}
