//! Issue 14.8, the catalog leak: on a shared cluster a tenant's role must
//! not read the other hospitals' database names from PostgreSQL's catalog,
//! neither in its own database nor in `postgres` (where every tenant role
//! may connect), and its Odoo must keep working without them.

mod common;

use careplane_local::postgres::Client;
use common::*;

const TENANTS: &str = r#"
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: stmarys
spec:
  tenancy: shared
  environments:
    - name: dev
      kind: dev
---
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: northside
spec:
  tenancy: shared
  environments:
    - name: dev
      kind: dev
"#;

/// What must stay hidden from stmarys: northside's database is
/// `northside-dev`, and its owner wrote its name where an owner may.
const OTHER: &str = "northside";

/// `tenant`/`env`'s role connected to `database` (its own, or `postgres`)
/// with its own credentials over verified TLS, as its Odoo connects.
fn client_in(p: &Platform, tenant: &str, env: &str, database: &str) -> Client {
    tenant_client_in(p, tenant, env, Some(database))
}

/// Every way we know to read database names (or what an owner wrote about
/// its database) from the catalog; each column is text.
const DATABASE_PROBES: &[&str] = &[
    "SELECT datname::text FROM pg_catalog.pg_database",
    // psql's \l
    "SELECT d.datname::text, pg_catalog.pg_get_userbyid(d.datdba)::text, \
     pg_catalog.pg_encoding_to_char(d.encoding)::text, d.datcollate::text, d.datctype::text, \
     pg_catalog.array_to_string(d.datacl, E'\\n') FROM pg_catalog.pg_database d ORDER BY 1",
    "SELECT datname::text, usename::text, application_name FROM pg_catalog.pg_stat_activity",
    "SELECT datname::text FROM pg_catalog.pg_stat_database",
    "SELECT datname::text FROM pg_catalog.pg_stat_database_conflicts",
    "SELECT datname::text FROM pg_catalog.pg_stat_progress_vacuum",
    "SELECT datname::text FROM pg_catalog.pg_stat_progress_analyze",
    "SELECT datname::text FROM pg_catalog.pg_stat_progress_cluster",
    "SELECT datname::text FROM pg_catalog.pg_stat_progress_create_index",
    "SELECT datname::text FROM pg_catalog.pg_stat_progress_copy",
    "SELECT database::text FROM pg_catalog.pg_replication_slots",
    "SELECT database::text, owner::text FROM pg_catalog.pg_prepared_xacts",
    "SELECT setdatabase::text, setconfig::text FROM pg_catalog.pg_db_role_setting",
    "SELECT description FROM pg_catalog.pg_shdescription",
    "SELECT objname FROM pg_catalog.pg_seclabels",
    // Database oids are still public (pg_shdepend, pg_stat_get_activity):
    // nothing may turn them into names or comments.
    "SELECT dbid::text FROM pg_catalog.pg_shdepend",
    "SELECT datid::text, application_name FROM pg_catalog.pg_stat_get_activity(NULL)",
    "SELECT pg_catalog.shobj_description(d, 'pg_database') \
     FROM pg_catalog.generate_series(1, 70000) d",
    "SELECT pg_catalog.pg_describe_object(1262, d, 0) FROM pg_catalog.generate_series(1, 70000) d",
    "SELECT pg_catalog.pg_identify_object(1262, d, 0)::text \
     FROM pg_catalog.generate_series(1, 70000) d",
    "SELECT pg_catalog.pg_identify_object_as_address(1262, d, 0)::text \
     FROM pg_catalog.generate_series(1, 70000) d",
];

/// The same for role names. PostgreSQL cannot hide them: `regrole`'s
/// output function (a type's I/O function, never privilege-checked) prints
/// any role's name for its oid, and oids are sequential. Only opaque role
/// names would help; see [`role_names_reveal_no_tenant`].
const ROLE_PROBES: &[&str] = &[
    "SELECT rolname::text FROM pg_catalog.pg_roles",
    "SELECT usename::text FROM pg_catalog.pg_user",
    "SELECT groname::text FROM pg_catalog.pg_group",
    "SELECT rolname::text FROM pg_catalog.pg_authid",
    "SELECT usename::text FROM pg_catalog.pg_shadow",
    "SELECT roleid::regrole::text, member::regrole::text FROM pg_catalog.pg_auth_members",
    "SELECT refobjid::regrole::text FROM pg_catalog.pg_shdepend WHERE refclassid = 1260",
    "SELECT usesysid::regrole::text FROM pg_catalog.pg_stat_get_activity(NULL)",
    "SELECT pg_catalog.pg_get_userbyid(r)::text FROM pg_catalog.generate_series(1, 70000) r",
    "SELECT r::oid::regrole::text FROM pg_catalog.generate_series(1, 70000) r",
];

/// Runs every probe; each must be refused (42501) or, when PostgreSQL lacks
/// the view (42P01), absent, or answer without naming `other`.
fn leaks(c: &mut Client, probes: &[&str], other: &str) -> Vec<String> {
    let mut found = Vec::new();
    for probe in probes {
        match c.simple_query(probe) {
            Ok(messages) => {
                for m in messages {
                    if let careplane_local::postgres::SimpleQueryMessage::Row(row) = m {
                        for i in 0..row.len() {
                            let cell = row.get(i).unwrap_or_default();
                            if cell.to_lowercase().contains(other) {
                                found.push(format!("{probe}: {cell}"));
                            }
                        }
                    }
                }
            }
            Err(e) => {
                let code = e.code().map(|c| c.code().to_string());
                assert!(
                    matches!(code.as_deref(), Some("42501" | "42P01")),
                    "{probe}: {e}"
                );
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// stmarys's role in its own database and in `postgres`, while northside
/// is connected to both and has commented on its database: no probe names
/// northside's database. The Odoo stand-in of both environments is healthy
/// (Odoo's start-up check of `pg_database` is allowed to fail, and with
/// `db_name` and no `dbfilter` it never lists databases).
#[test]
fn a_tenant_reads_no_other_database_names() {
    let p = Platform::with_odoo(TENANTS);
    p.ok(&["apply"]);

    let mut b = client_in(&p, OTHER, "dev", "northside-dev");
    b.batch_execute(
        "COMMENT ON DATABASE \"northside-dev\" IS 'northside hospital'; \
         ALTER DATABASE \"northside-dev\" SET search_path = '\"$user\"', public, 'northside'",
    )
    .unwrap();
    let _b_in_postgres = client_in(&p, OTHER, "dev", "postgres");

    for database in ["stmarys-dev", "postgres"] {
        let mut a = client_in(&p, "stmarys", "dev", database);
        let found = leaks(&mut a, DATABASE_PROBES, OTHER);
        assert!(
            found.is_empty(),
            "stmarys in {database} reads:\n{}",
            found.join("\n")
        );
        // Its own database's name it may know.
        let own: String = a
            .query_one("SELECT pg_catalog.current_database()::text", &[])
            .unwrap()
            .get(0);
        assert_eq!(own, database);
        // Probing a guessed name cannot be prevented (has_database_privilege,
        // COMMENT/ALTER DATABASE answer "does not exist" for a wrong guess),
        // so names must not be guessable secrets; listing them is what is
        // closed here.
    }

    // Both Odoo environments run and answer (the stand-in plays Odoo's
    // start-up and database selection against the hidden catalog).
    let st = p.json(&["status"]);
    let envs = st["environments"].as_array().unwrap();
    assert_eq!(envs.len(), 2, "{st}");
    for e in envs {
        assert_eq!(e["odooHealth"]["ok"], true, "{e}");
    }
    p.ok(&["stop"]);
    p.ok(&["start"]);
    let st = p.json(&["status"]);
    for e in st["environments"].as_array().unwrap() {
        assert_eq!(e["odooHealth"]["ok"], true, "after a restart: {e}");
    }
}

/// Role names are readable by every role (see [`ROLE_PROBES`]), so
/// careplane gives each environment's role an opaque name (recorded in
/// state, reported by `credentials`): none names another hospital.
#[test]
fn role_names_reveal_no_tenant() {
    let p = Platform::with_odoo(TENANTS);
    p.ok(&["apply"]);
    let _b = client_in(&p, OTHER, "dev", "northside-dev");
    for database in ["stmarys-dev", "postgres"] {
        let mut a = client_in(&p, "stmarys", "dev", database);
        let found = leaks(&mut a, ROLE_PROBES, OTHER);
        assert!(
            found.is_empty(),
            "stmarys in {database} reads:\n{}",
            found.join("\n")
        );
    }
}

/// A platform made before role names were opaque has roles named
/// `<tenant>-<env>`, recorded in its records' props. Made here from a
/// current platform: its roles renamed back (as the superuser) and its
/// records rewritten as the previous version wrote them. The next plan
/// updates each database and environment; the apply renames the roles in
/// place, Odoo comes back on the new names, and nothing names a tenant.
#[test]
fn an_older_platforms_named_roles_are_renamed_by_the_next_apply() {
    let p = Platform::with_odoo(TENANTS);
    p.ok(&["apply"]);
    let store = careplane_state::Store::open(&p.data_dir()).unwrap();
    let records = store.resources().unwrap();
    let mut admin = admin_client(&p, "pg-cluster/shared");
    let mut legacy = Vec::new();
    for mut rec in records.clone() {
        let named = rec.props["database"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        match rec.kind.as_str() {
            "pg-database" => {
                let opaque = rec.observed["role"].as_str().unwrap().to_string();
                assert!(
                    opaque.starts_with('r') && opaque.len() == 25 && !opaque.contains('-'),
                    "{opaque}"
                );
                admin
                    .batch_execute(&format!("ALTER ROLE \"{opaque}\" RENAME TO \"{named}\""))
                    .unwrap();
                rec.observed.as_object_mut().unwrap().remove("role");
                rec.props["role"] = named.clone().into();
                legacy.push(named);
            }
            "odoo-env" => rec.props["role"] = named.into(),
            _ => continue,
        }
        store.put_resource(&rec).unwrap();
    }
    drop(store);
    assert_eq!(legacy.len(), 2);

    let mut updates = action_ids(&p.plan());
    updates.sort();
    assert_eq!(
        updates,
        [
            "odoo-env/northside/dev",
            "odoo-env/stmarys/dev",
            "pg-database/northside/dev",
            "pg-database/stmarys/dev",
        ]
    );
    p.ok(&["apply"]);
    assert_eq!(action_ids(&p.plan()), Vec::<String>::new());
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_roles WHERE rolname = ANY($1)",
            &[&legacy],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "roles still named {legacy:?}");
    let st = p.json(&["status"]);
    for e in st["environments"].as_array().unwrap() {
        assert_eq!(e["pgHealth"]["ok"], true, "{e}");
        assert_eq!(e["odooHealth"]["ok"], true, "{e}");
    }
    let _b = client_in(&p, OTHER, "dev", "northside-dev");
    let mut a = client_in(&p, "stmarys", "dev", "postgres");
    let found = leaks(&mut a, ROLE_PROBES, OTHER);
    assert!(found.is_empty(), "{}", found.join("\n"));
}
