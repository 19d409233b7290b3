//! Attacks of a tenant on careplane's superuser and root work, replayed
//! against real servers (issue 14, items 1 and 2). A tenant controls its
//! database's content and settings and its environment's `data/` tree; a
//! routine `careplane apply` by the operator must not run the tenant's code
//! as a superuser, nor follow the tenant's symlinks as root.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::*;

const TENANT: &str = r#"
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: mallory
spec:
  tenancy: shared
  environments:
    - name: production
      kind: production
      sizing:
        workers: WORKERS
"#;

fn platform(workers: u32) -> Platform {
    Platform::with_odoo(&TENANT.replace("WORKERS", &workers.to_string()))
}

fn env_root(p: &Platform) -> PathBuf {
    p.data_dir().join("odoo/envs/mallory/production")
}

/// The tenant's trap: a function that, whenever it is called, records who
/// called it and, if that is a superuser, makes the tenant a superuser and
/// runs a shell command as the PostgreSQL server's OS user.
fn plant_trap(c: &mut careplane_local::postgres::Client, marker: &Path) {
    let role: String = c
        .query_one("SELECT current_user::text", &[])
        .unwrap()
        .get(0);
    c.batch_execute(&format!(
        r#"
        CREATE TABLE public.trap_calls (who text, superuser boolean);
        CREATE FUNCTION public.trap() RETURNS boolean LANGUAGE plpgsql AS $f$
        BEGIN
            INSERT INTO public.trap_calls
                VALUES (current_user, current_setting('is_superuser') = 'on');
            IF current_setting('is_superuser') = 'on' THEN
                EXECUTE 'ALTER ROLE "{role}" SUPERUSER';
                BEGIN
                    EXECUTE 'COPY (SELECT 1) TO PROGRAM ''touch {marker}''';
                EXCEPTION WHEN OTHERS THEN NULL;
                END;
            END IF;
            RETURN true;
        END $f$;
        -- 1. ir_config_parameter becomes a view whose WHERE runs the trap.
        ALTER TABLE public.ir_config_parameter RENAME TO ir_config_parameter_real;
        CREATE VIEW public.ir_config_parameter AS
            SELECT * FROM public.ir_config_parameter_real WHERE public.trap();
        -- 2. Unqualified function names resolve to the tenant's first.
        CREATE FUNCTION public.to_regclass(text) RETURNS regclass LANGUAGE plpgsql AS $f$
        BEGIN PERFORM public.trap(); RETURN pg_catalog.to_regclass($1); END $f$;
        CREATE FUNCTION public.gen_random_uuid() RETURNS uuid LANGUAGE plpgsql AS $f$
        BEGIN PERFORM public.trap(); RETURN pg_catalog.gen_random_uuid(); END $f$;
        ALTER DATABASE "mallory-production" SET search_path = public, pg_catalog;
        ALTER ROLE CURRENT_USER SET search_path = public, pg_catalog;
        "#,
        marker = marker.display(),
        role = role,
    ))
    .unwrap();
}

fn is_superuser(c: &mut careplane_local::postgres::Client) -> bool {
    c.query_one(
        "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user",
        &[],
    )
    .unwrap()
    .get(0)
}

#[test]
fn a_routine_apply_runs_no_tenant_code_as_superuser() {
    let p = platform(1);
    p.ok(&["apply"]);
    // Where the PostgreSQL server's OS user can write, so the attack would
    // fully succeed if careplane let it run.
    let marker = std::env::temp_dir().join(format!(
        "careplane-escape-{}-{}",
        std::process::id(),
        p.dir.path().file_name().unwrap().to_string_lossy()
    ));
    {
        let mut c = tenant_client(&p, "mallory", "production");
        plant_trap(&mut c, &marker);
        assert!(!is_superuser(&mut c));
    }
    // Routine change: a second worker. The apply re-checks and re-identifies
    // the environment's database, which is where the old code ran its
    // queries as the cluster's superuser.
    p.write_tenants(&TENANT.replace("WORKERS", "2"));
    let out = p.run(&["apply"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut c = tenant_client(&p, "mallory", "production");
    let calls: Vec<(String, bool)> = c
        .query("SELECT who, superuser FROM public.trap_calls", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        calls.iter().all(|(_, su)| !su),
        "tenant code ran as a superuser: {calls:?}\n{text}"
    );
    assert!(!is_superuser(&mut c), "the tenant became superuser\n{text}");
    let ran = marker.exists();
    let _ = std::fs::remove_file(&marker);
    assert!(!ran, "COPY TO PROGRAM ran\n{text}");
    // And the attempt did not cost the operator the apply: it converged.
    assert!(out.status.success(), "{text}");
    assert_eq!(p.plan()["actions"].as_array().map(Vec::len), Some(0));
}

/// A directory only root may change, standing for `/etc`.
fn victim(p: &Platform) -> (PathBuf, u32, u32) {
    let v = p.dir.path().join("victim");
    std::fs::create_dir(&v).unwrap();
    std::fs::write(v.join("keep"), "root's").unwrap();
    set_mode(&v, 0o755);
    let m = std::fs::metadata(&v).unwrap();
    (v, m.uid(), m.mode() & 0o7777)
}

fn assert_untouched(v: &Path, uid: u32, mode: u32, text: &str) {
    let m = std::fs::metadata(v).unwrap();
    assert_eq!(m.uid(), uid, "owner of {} changed\n{text}", v.display());
    assert_eq!(
        m.mode() & 0o7777,
        mode,
        "mode of {} changed\n{text}",
        v.display()
    );
    assert_eq!(std::fs::read_to_string(v.join("keep")).unwrap(), "root's");
    let entries: Vec<_> = std::fs::read_dir(v)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?} appeared in {}", v.display());
}

fn empty_database(p: &Platform) {
    // The tenant empties its database, so the next apply clones again and
    // copies the template's filestore.
    tenant_client(p, "mallory", "production")
        .batch_execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        .unwrap();
}

fn apply_text(p: &Platform) -> (bool, String) {
    let out = p.run(&["apply"]);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn root_follows_no_symlink_a_tenant_plants() {
    let p = platform(1);
    p.ok(&["apply"]);
    let root = env_root(&p);
    let data = root.join("data");
    let filestore = data.join("filestore");
    let (v, uid, mode) = victim(&p);

    // 1. data/filestore is a link to the victim.
    std::fs::rename(&filestore, data.join("filestore.real")).unwrap();
    std::os::unix::fs::symlink(&v, &filestore).unwrap();
    empty_database(&p);
    p.write_tenants(&TENANT.replace("WORKERS", "2"));
    let (ok, text) = apply_text(&p);
    assert_untouched(&v, uid, mode, &text);
    assert!(!ok, "the apply went on through a link\n{text}");
    assert!(text.contains("symbolic link"), "{text}");
    assert!(
        text.contains("filestore"),
        "the error names the path: {text}"
    );

    // 2. data/filestore/<db> is a link to the victim: replaced, never followed.
    std::fs::remove_file(&filestore).unwrap();
    std::fs::rename(data.join("filestore.real"), &filestore).unwrap();
    let db_dir = filestore.join("mallory-production");
    std::fs::remove_dir_all(&db_dir).unwrap();
    std::os::unix::fs::symlink(&v, &db_dir).unwrap();
    let (ok, text) = apply_text(&p);
    assert_untouched(&v, uid, mode, &text);
    assert!(ok, "{text}");
    let m = std::fs::symlink_metadata(&db_dir).unwrap();
    assert!(m.is_dir(), "the filestore is a directory again");
    assert_eq!(m.mode() & 0o7777, 0o700);

    // 3. Destroying the environment removes its tree without following a
    //    link left inside it.
    std::os::unix::fs::symlink(&v, db_dir.join("escape")).unwrap();
    p.ok(&[
        "destroy",
        "--tenant",
        "mallory",
        "--confirm",
        "mallory",
        "--delete-data",
    ]);
    assert_untouched(&v, uid, mode, "after destroy");
    assert!(!root.exists());
}

#[test]
fn odoo_cannot_rewrite_its_own_configuration() {
    let p = platform(1);
    p.ok(&["apply"]);
    let root = env_root(&p);
    for name in ["odoo-web.conf", "odoo-cron.conf"] {
        let m = std::fs::metadata(root.join(name)).unwrap();
        if careplane_local::system::is_root() {
            assert_eq!(m.uid(), 0, "{name} belongs to root");
        }
        assert_eq!(
            m.mode() & 0o022,
            0,
            "{name} is writable by others: {:o}",
            m.mode()
        );
    }
    let m = std::fs::metadata(&root).unwrap();
    assert_eq!(m.mode() & 0o022, 0, "{} writable by others", root.display());
    // Changed behind careplane's back anyway (here by root): status says so
    // and exits non-zero.
    let conf = root.join("odoo-web.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, format!("{text}list_db = True\n")).unwrap();
    let out = p.run(&["status"]);
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{shown}");
    assert!(
        shown.contains("differ from what careplane wrote"),
        "{shown}"
    );
}

/// Item 12: no secret in clear on disk. The database and Redis passwords
/// reach Odoo through its supervisor's memory, not an environment file.
#[test]
fn no_plaintext_secret_under_the_data_directory() {
    let p = platform(1);
    p.ok(&["apply"]);
    let c = p.json(&["credentials", "mallory", "production"]);
    let mut secrets = vec![c["postgres"]["password"].as_str().unwrap().to_string()];
    let redis = &c["redis"];
    secrets.extend(redis["password"].as_str().map(str::to_string));
    assert_eq!(secrets.len(), 2, "{c}");
    assert!(!env_root(&p).join("process.env").exists());
    let mut stack = vec![p.data_dir()];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                files += 1;
                let bytes = std::fs::read(e.path()).unwrap_or_default();
                for s in &secrets {
                    assert!(
                        !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                        "a password in clear in {}",
                        e.path().display()
                    );
                }
            }
        }
    }
    assert!(files > 100, "walked only {files} files");
    // And Odoo still got them: it is healthy, which needs the database.
    let st = p.json(&["status"]);
    assert_eq!(st["environments"][0]["odooHealth"]["ok"], true, "{st}");
}
