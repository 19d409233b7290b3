//! What careplane does inside an Odoo database, through a connection the
//! caller opens **as the database's own tenant role** (never a superuser:
//! the tenant owns every table here and could swap one for a view that runs
//! its own functions). Names are schema-qualified, and the caller pins
//! `search_path`, so the statements mean what they say; whatever a tenant
//! planted can at worst run with its own rights.
//!
//! Only tables and keys that every Odoo since 9 has are touched:
//! `ir_module_module`, `ir_config_parameter` and `res_users`.

use postgres::Client;

use crate::{OdooError, Result};

fn db_err(what: &str, e: postgres::Error) -> OdooError {
    OdooError::Database {
        context: what.to_string(),
        message: crate::error::pg_message(&e),
    }
}

/// Whether the connected database holds an initialized Odoo (`-i base` ran).
pub fn is_initialized(c: &mut Client) -> Result<bool> {
    let row = c
        .query_one(
            "SELECT pg_catalog.to_regclass('public.ir_module_module') IS NOT NULL \
             AND pg_catalog.to_regclass('public.ir_config_parameter') IS NOT NULL",
            &[],
        )
        .map_err(|e| db_err("checking whether the database holds Odoo", e))?;
    Ok(row.get(0))
}

/// The key that records which environment a database's identity belongs to.
pub const IDENTITY_KEY: &str = "careplane.identity";

/// Gives a database cloned from a template its own identity, once: new
/// `database.uuid` and `database.secret` (Odoo signs sessions and tokens with
/// the secret: clones must never share it), `database.create_date` now,
/// `web.base.url` of the environment, and the `admin` user's password hash.
/// Everything happens in one transaction together with [`IDENTITY_KEY`] =
/// `owner`, so a crash leaves either the template's values (and the next run
/// redoes it) or the new ones (and the next run leaves them alone). Returns
/// whether it changed anything.
pub fn make_unique(
    c: &mut Client,
    owner: &str,
    base_url: &str,
    admin_password_hash: &str,
) -> Result<bool> {
    let mut tx = c
        .transaction()
        .map_err(|e| db_err("starting the identity transaction", e))?;
    let current: Option<String> = tx
        .query_opt(
            "SELECT value FROM public.ir_config_parameter WHERE key = $1",
            &[&IDENTITY_KEY],
        )
        .map_err(|e| db_err("reading careplane.identity", e))?
        .map(|r| r.get(0));
    if current.as_deref() == Some(owner) {
        return Ok(false);
    }
    // Values computed by PostgreSQL: gen_random_uuid() is built in since 13.
    let params: [(&str, &str, Option<&str>); 5] = [
        ("database.uuid", "pg_catalog.gen_random_uuid()::text", None),
        (
            "database.secret",
            "pg_catalog.gen_random_uuid()::text",
            None,
        ),
        (
            "database.create_date",
            "pg_catalog.to_char(pg_catalog.now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')",
            None,
        ),
        ("web.base.url", "$2", Some(base_url)),
        (IDENTITY_KEY, "$2", Some(owner)),
    ];
    for (key, expr, arg) in params {
        let what = format!("setting {key}");
        let updated = match arg {
            Some(v) => tx.execute(
                &format!("UPDATE public.ir_config_parameter SET value = {expr} WHERE key = $1"),
                &[&key, &v],
            ),
            None => tx.execute(
                &format!("UPDATE public.ir_config_parameter SET value = {expr} WHERE key = $1"),
                &[&key],
            ),
        }
        .map_err(|e| db_err(&what, e))?;
        if updated == 0 {
            match arg {
                Some(v) => tx.execute(
                    &format!(
                        "INSERT INTO public.ir_config_parameter (key, value) VALUES ($1, {expr})"
                    ),
                    &[&key, &v],
                ),
                None => tx.execute(
                    &format!(
                        "INSERT INTO public.ir_config_parameter (key, value) VALUES ($1, {expr})"
                    ),
                    &[&key],
                ),
            }
            .map_err(|e| db_err(&what, e))?;
        }
    }
    tx.execute(
        "UPDATE public.res_users SET password = $1 WHERE login = 'admin'",
        &[&admin_password_hash],
    )
    .map_err(|e| db_err("resetting the admin user's password", e))?;
    tx.commit()
        .map_err(|e| db_err("committing the new identity", e))?;
    Ok(true)
}

/// `database.uuid` and `database.secret` of the connected database (for
/// tests and audits: two environments must never share them).
pub fn identity(c: &mut Client) -> Result<(String, String)> {
    let get = |c: &mut Client, key: &str| -> Result<String> {
        c.query_opt(
            "SELECT value FROM public.ir_config_parameter WHERE key = $1",
            &[&key],
        )
        .map_err(|e| db_err("reading the database identity", e))?
        .map(|r| r.get(0))
        .ok_or_else(|| OdooError::Database {
            context: "reading the database identity".into(),
            message: format!("{key} is not set"),
        })
    };
    Ok((get(c, "database.uuid")?, get(c, "database.secret")?))
}

/// Which of `modules` are not `installed` in the connected database. Odoo's
/// `-i`/`-u` of an unknown name only logs `invalid module names, ignored`
/// and exits 0, so careplane asks the database afterwards.
pub fn missing_modules(c: &mut Client, modules: &[String]) -> Result<Vec<String>> {
    let installed: Vec<String> = c
        .query(
            "SELECT name::text FROM public.ir_module_module \
             WHERE state = 'installed' AND name = ANY($1)",
            &[&modules],
        )
        .map_err(|e| db_err("listing installed modules", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(modules
        .iter()
        .filter(|m| !installed.contains(m))
        .cloned()
        .collect())
}
