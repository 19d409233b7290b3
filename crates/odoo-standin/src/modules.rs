//! Odoo's `load_modules` as far as careplane can see it: `-i` installs
//! (creating Odoo's core tables on first init), `-u` updates, both in one
//! transaction; the filestore gets one attachment per installed module.
//! Also the stand-in's start-up probe of a database and its filestore.

use std::path::{Path, PathBuf};
use std::time::Instant;

use postgres::{Client, Transaction};

use crate::log;
use crate::pg::{quote_ident, DbError};
use crate::util;

/// The Odoo series the stand-in claims to be.
pub const SERIE: &str = "18.0";

/// The version written to `latest_version` (Odoo: `<serie>.<manifest version>`).
pub fn module_version() -> String {
    format!("{SERIE}.1.0")
}

const LOADING: &str = "odoo.modules.loading";

/// What to load into a database.
pub struct Request<'a> {
    pub init: &'a [String],
    pub update: &'a [String],
    pub http_port: u16,
    pub data_dir: &'a Path,
    pub rows_per_module: i32,
}

/// The database's state after loading.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// No `ir_module_module` table and nothing to install: Odoo logs an error.
    NotInitialized,
    Loaded,
}

fn q(e: postgres::Error) -> String {
    DbError::query(&e).to_string()
}

/// Odoo's `is_initialized`: the `ir_module_module` table exists.
pub fn is_initialized(c: &mut Client) -> Result<bool, String> {
    let row = c
        .query_one("SELECT to_regclass('ir_module_module') IS NOT NULL", &[])
        .map_err(q)?;
    Ok(row.get(0))
}

/// `<data_dir>/filestore/<db>`.
pub fn filestore(data_dir: &Path, db: &str) -> PathBuf {
    data_dir.join("filestore").join(db)
}

/// Stores `content` like an Odoo attachment (`<2 hex>/<sha1>`, directories
/// 0700); returns the store name.
fn store_file(data_dir: &Path, db: &str, content: &[u8]) -> Result<String, String> {
    let sha = util::sha1_hex(content);
    let fname = format!("{}/{sha}", &sha[..2]);
    let path = filestore(data_dir, db).join(&fname);
    let dir = path.parent().expect("has a parent");
    util::make_dirs(dir, 0o700).map_err(|e| format!("OSError: {}: {e}", dir.display()))?;
    // Like Odoo: write to a temporary name and rename, so a concurrent
    // writer of the same content (web and cron start together) never
    // exposes a half-written file.
    let tmp = dir.join(format!(".{sha}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, content).map_err(|e| format!("OSError: {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("OSError: {}: {e}", path.display()))?;
    Ok(fname)
}

const CORE_TABLES: &str = "
CREATE TABLE IF NOT EXISTS ir_module_module (
    id serial PRIMARY KEY, name text NOT NULL UNIQUE, state text NOT NULL, latest_version text);
CREATE TABLE IF NOT EXISTS ir_config_parameter (
    id serial PRIMARY KEY, key text NOT NULL UNIQUE, value text NOT NULL);
CREATE TABLE IF NOT EXISTS res_users (
    id serial PRIMARY KEY, login text NOT NULL UNIQUE, password text, active boolean NOT NULL DEFAULT true);
CREATE TABLE IF NOT EXISTS ir_attachment (
    id serial PRIMARY KEY, name text NOT NULL, res_model text, store_fname text, checksum text, file_size integer);
CREATE TABLE IF NOT EXISTS res_groups (
    id serial PRIMARY KEY, name text NOT NULL);
CREATE TABLE IF NOT EXISTS res_groups_users_rel (
    gid integer NOT NULL, uid integer NOT NULL, PRIMARY KEY (gid, uid));
CREATE TABLE IF NOT EXISTS ir_model_data (
    id serial PRIMARY KEY, module text NOT NULL, name text NOT NULL, model text NOT NULL,
    res_id integer NOT NULL, UNIQUE (module, name));
CREATE TABLE IF NOT EXISTS res_partner (
    id serial PRIMARY KEY, name text NOT NULL);
CREATE TABLE IF NOT EXISTS ir_cron (
    id serial PRIMARY KEY, cron_name text NOT NULL, active boolean NOT NULL DEFAULT true,
    nextcall timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'));
";

/// The tables of `purchase` (and of `product`, which it depends on).
const PURCHASE_TABLES: &str = "
CREATE TABLE IF NOT EXISTS product_product (
    id serial PRIMARY KEY, name text NOT NULL, default_code text, purchase_ok boolean NOT NULL DEFAULT true);
CREATE TABLE IF NOT EXISTS purchase_order (
    id serial PRIMARY KEY, name text NOT NULL, state text NOT NULL DEFAULT 'draft',
    partner_id integer NOT NULL, amount_total float8 NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS purchase_order_line (
    id serial PRIMARY KEY, order_id integer NOT NULL, product_id integer NOT NULL,
    product_qty float8 NOT NULL, price_unit float8 NOT NULL);
";

/// A group with XML id `module.name`, and its members.
fn add_group(
    tx: &mut Transaction,
    module: &str,
    name: &str,
    members: &[&str],
) -> Result<(), String> {
    let id: i32 = match tx
        .query_opt(
            "SELECT res_id FROM ir_model_data WHERE module = $1 AND name = $2",
            &[&module, &name],
        )
        .map_err(q)?
    {
        Some(r) => r.get(0),
        None => {
            let id: i32 = tx
                .query_one(
                    "INSERT INTO res_groups (name) VALUES ($1) RETURNING id",
                    &[&format!("{module}.{name}")],
                )
                .map_err(q)?
                .get(0);
            tx.execute(
                "INSERT INTO ir_model_data (module, name, model, res_id) VALUES ($1, $2, 'res.groups', $3)",
                &[&module, &name, &id],
            )
            .map_err(q)?;
            id
        }
    };
    for login in members {
        tx.execute(
            "INSERT INTO res_groups_users_rel (gid, uid) SELECT $1, id FROM res_users WHERE login = $2
             ON CONFLICT DO NOTHING",
            &[&id, login],
        )
        .map_err(q)?;
    }
    Ok(())
}

/// Odoo 18 Community modules the stand-in "ships", like the addons paths
/// of a real installation: `-i` of any other name is Odoo's `invalid module
/// names, ignored` warning, and nothing is installed for it.
const AVAILABLE: &[&str] = &[
    "account",
    "base",
    "base_setup",
    "board",
    "calendar",
    "contacts",
    "crm",
    "event",
    "fleet",
    "hr",
    "hr_expense",
    "hr_holidays",
    "hr_timesheet",
    "im_livechat",
    "lunch",
    "mail",
    "maintenance",
    "mass_mailing",
    "mrp",
    "note",
    "point_of_sale",
    "product",
    "project",
    "purchase",
    "repair",
    "sale",
    "sale_management",
    "stock",
    "survey",
    "web",
    "website",
];

fn available(name: &str) -> bool {
    AVAILABLE.contains(&name)
}

fn valid_module_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 50
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Installs one module: its state, a table of `rows` rows (the "work" of an
/// install) and an attachment in the filestore.
fn install(tx: &mut Transaction, db: &str, name: &str, req: &Request) -> Result<(), String> {
    let version = module_version();
    tx.execute(
        "INSERT INTO ir_module_module (name, state, latest_version) VALUES ($1, 'installed', $2)
         ON CONFLICT (name) DO UPDATE SET state = 'installed', latest_version = $2",
        &[&name, &version],
    )
    .map_err(q)?;
    if name == "purchase" {
        // Like Odoo: the module's models, its groups (the admin is a purchase manager),
        // and, unlike an Odoo without demo data, one confirmed order, so the journey's
        // report step has a record.
        tx.batch_execute(PURCHASE_TABLES).map_err(q)?;
        add_group(tx, "purchase", "group_purchase_user", &["admin"])?;
        add_group(tx, "purchase", "group_purchase_manager", &["admin"])?;
        tx.execute(
            "INSERT INTO purchase_order (name, state, partner_id, amount_total)
             SELECT 'P00001', 'purchase', min(id), 100 FROM res_partner
             WHERE NOT EXISTS (SELECT 1 FROM purchase_order)",
            &[],
        )
        .map_err(q)?;
    }
    let table = quote_ident(&format!("standin_{name}"));
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {table} (id integer PRIMARY KEY, name text NOT NULL, payload text NOT NULL)"
    ))
    .map_err(q)?;
    tx.execute(
        &format!(
            "INSERT INTO {table} SELECT i, 'record ' || i, md5(i::text) FROM generate_series(1, $1::integer) AS i
             ON CONFLICT (id) DO NOTHING"
        ),
        &[&req.rows_per_module],
    )
    .map_err(q)?;
    let content = format!("odoo-standin: attachment of module {name}\n");
    let fname = store_file(req.data_dir, db, content.as_bytes())?;
    let sha = util::sha1_hex(content.as_bytes());
    tx.execute(
        "INSERT INTO ir_attachment (name, res_model, store_fname, checksum, file_size)
         VALUES ($1, 'ir.module.module', $2, $3, $4)",
        &[
            &format!("{name}.txt"),
            &fname,
            &sha,
            &(content.len() as i32),
        ],
    )
    .map_err(q)?;
    Ok(())
}

/// Loads `db` like `odoo-bin -d db [-i …] [-u …]` does.
pub fn load(c: &mut Client, db: &str, req: &Request) -> Result<Outcome, String> {
    let started = Instant::now();
    let dbl = Some(db);
    let initialized = is_initialized(c)?;
    let update_module = !req.init.is_empty() || !req.update.is_empty();
    if !initialized && !update_module {
        log::error(
            dbl,
            LOADING,
            &format!("Database {db} not initialized, you can force it with `-i base`"),
        );
        return Ok(Outcome::NotInitialized);
    }
    let mut tx = c.transaction().map_err(q)?;
    if !initialized {
        log::info(dbl, LOADING, "init db");
        tx.batch_execute(CORE_TABLES).map_err(q)?;
    }
    log::info(dbl, LOADING, "loading 1 modules...");
    log::info(dbl, LOADING, "Loading module base (1/1)");
    if update_module {
        log::info(dbl, LOADING, "updating modules list");
        // ir.config_parameter's defaults: only missing keys are set.
        let params = [
            ("database.secret", util::uuid4()),
            ("database.uuid", util::uuid4()),
            ("database.create_date", util::utc_datetime()),
            (
                "web.base.url",
                format!("http://localhost:{}", req.http_port),
            ),
            ("base.login_cooldown_after", "10".to_string()),
            ("base.login_cooldown_duration", "60".to_string()),
        ];
        for (key, value) in &params {
            tx.execute(
                "INSERT INTO ir_config_parameter (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                &[key, value],
            )
            .map_err(q)?;
        }
        if !initialized {
            tx.execute(
                "INSERT INTO res_users (login, password, active) VALUES ('__system__', NULL, false), ('admin', $1, true)
                 ON CONFLICT (login) DO NOTHING",
                &[&util::pbkdf2_sha512("admin")],
            )
            .map_err(q)?;
            // base's groups; the admin has them all (Settings implies Access Rights).
            add_group(&mut tx, "base", "group_user", &["admin"])?;
            add_group(&mut tx, "base", "group_erp_manager", &["admin"])?;
            add_group(&mut tx, "base", "group_system", &["admin"])?;
            tx.execute("INSERT INTO res_partner (name) VALUES ('My Company')", &[])
                .map_err(q)?;
        }

        let mut invalid: Vec<String> = Vec::new();
        let mut wanted: Vec<String> = Vec::new();
        if !initialized {
            wanted.push("base".into());
        }
        for m in req.init.iter().filter(|m| *m != "all") {
            if !valid_module_name(m) || !available(m) {
                invalid.push(m.clone());
            } else if !wanted.contains(m) {
                wanted.push(m.clone());
            }
        }
        let mut installed_now = Vec::new();
        for m in &wanted {
            let state: Option<String> = tx
                .query_opt("SELECT state FROM ir_module_module WHERE name = $1", &[m])
                .map_err(q)?
                .map(|r| r.get(0));
            if state.as_deref() != Some("installed") {
                log::info(
                    dbl,
                    "odoo.modules.registry",
                    &format!("module {m}: creating or updating database tables"),
                );
                install(&mut tx, db, m, req)?;
                installed_now.push(m.clone());
            }
        }

        let mut updated = Vec::new();
        let installed: Vec<String> = tx
            .query(
                "SELECT name FROM ir_module_module WHERE state = 'installed' ORDER BY id",
                &[],
            )
            .map_err(q)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let known: Vec<String> = tx
            .query("SELECT name FROM ir_module_module", &[])
            .map_err(q)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for m in req.update {
            if m == "all" {
                updated.extend(
                    installed
                        .iter()
                        .filter(|i| !updated.contains(*i))
                        .cloned()
                        .collect::<Vec<_>>(),
                );
            } else if !known.contains(m) {
                invalid.push(m.clone());
            } else if installed.contains(m) && !updated.contains(m) {
                updated.push(m.clone());
            }
        }
        for m in &updated {
            log::info(
                dbl,
                "odoo.modules.registry",
                &format!("module {m}: creating or updating database tables"),
            );
            tx.execute(
                "UPDATE ir_module_module SET latest_version = $2 WHERE name = $1",
                &[m, &module_version()],
            )
            .map_err(q)?;
        }
        if !invalid.is_empty() {
            log::warning(
                dbl,
                LOADING,
                &format!("invalid module names, ignored: {}", invalid.join(", ")),
            );
        }
        let n = installed_now.len() + updated.len();
        log::info(
            dbl,
            LOADING,
            &format!(
                "{n} modules loaded in {:.2}s, 0 queries (+0 extra)",
                started.elapsed().as_secs_f64()
            ),
        );
    } else {
        log::info(
            dbl,
            LOADING,
            &format!(
                "1 modules loaded in {:.2}s, 0 queries (+0 extra)",
                started.elapsed().as_secs_f64()
            ),
        );
    }
    tx.commit().map_err(q)?;
    log::info(dbl, LOADING, "Modules loaded.");
    log::info(
        dbl,
        "odoo.modules.registry",
        &format!("Registry loaded in {:.3}s", started.elapsed().as_secs_f64()),
    );
    Ok(Outcome::Loaded)
}

/// The stand-in's start-up check of a serving database: create a table,
/// write a row and read it back; write a file into the filestore and read
/// it back (directories 0700).
pub fn probe(c: &mut Client, db: &str, data_dir: &Path) -> Result<(), String> {
    // Web and cron start together: CREATE TABLE IF NOT EXISTS is not safe
    // against a concurrent twin (unique violation in pg_class), so serialize.
    c.batch_execute(
        "BEGIN; SELECT pg_advisory_xact_lock(hashtext('standin_probe'));
         CREATE TABLE IF NOT EXISTS standin_probe (
             id serial PRIMARY KEY, pid integer NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
         COMMIT",
    )
    .map_err(q)?;
    let pid = std::process::id() as i32;
    let id: i32 = c
        .query_one(
            "INSERT INTO standin_probe (pid) VALUES ($1) RETURNING id",
            &[&pid],
        )
        .map_err(q)?
        .get(0);
    let back: i32 = c
        .query_one("SELECT pid FROM standin_probe WHERE id = $1", &[&id])
        .map_err(q)?
        .get(0);
    if back != pid {
        return Err(format!(
            "AssertionError: standin_probe row {id} reads back pid {back}, not {pid}"
        ));
    }
    let fs = filestore(data_dir, db);
    util::make_dirs(&fs, 0o700).map_err(|e| format!("OSError: {}: {e}", fs.display()))?;
    let content = b"odoo-standin filestore probe\n";
    let fname = store_file(data_dir, db, content)?;
    let path = fs.join(&fname);
    match std::fs::read(&path) {
        Ok(read) if read == content => Ok(()),
        Ok(_) => Err(format!(
            "AssertionError: {} reads back different content",
            path.display()
        )),
        Err(e) => Err(format!("OSError: {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names() {
        assert!(valid_module_name("stock_account"));
        assert!(!valid_module_name("Stock"));
        assert!(!valid_module_name("a;drop"));
        assert!(!valid_module_name(""));
    }
}
