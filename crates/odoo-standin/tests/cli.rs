//! Command line and configuration checks that need no database.

mod common;

use common::{run_to_end, set, standin, write_config};

fn full_config(dir: &std::path::Path) -> Vec<(String, String)> {
    [
        ("db_host", "127.0.0.1"),
        // Nothing listens on port 1: a run that got past the checks fails
        // to connect instead.
        ("db_port", "1"),
        ("db_user", "tenant"),
        ("db_password", "secret"),
        ("db_name", "tenant"),
        ("data_dir", dir.join("data").to_str().unwrap()),
        ("admin_passwd", "x"),
        ("http_port", "18069"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[test]
fn refuses_to_start_when_required_keys_are_missing() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("odoo.conf");
    let mut config = full_config(dir.path());
    config.retain(|(k, _)| k != "db_host" && k != "admin_passwd");
    set(&mut config, "db_name", "False"); // False means unset
    write_config(&conf, &config);
    let mut cmd = standin(dir.path());
    cmd.args(["-c", conf.to_str().unwrap(), "-d", "tenant"]);
    let (code, stderr) = run_to_end(cmd, dir.path(), "missing");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("lacks required option(s)"), "{stderr}");
    for key in ["db_host", "admin_passwd", "db_name"] {
        assert!(stderr.contains(key), "{key} not named in: {stderr}");
    }
    assert!(!stderr.contains("http_port"), "{stderr}");

    // http_port is only required when HTTP is served.
    let mut config = full_config(dir.path());
    config.retain(|(k, _)| k != "http_port");
    write_config(&conf, &config);
    let mut cmd = standin(dir.path());
    cmd.args(["-c", conf.to_str().unwrap(), "--no-http"]);
    let (code, stderr) = run_to_end(cmd, dir.path(), "no-http");
    assert_eq!(
        code,
        Some(1),
        "fails connecting, not on the check: {stderr}"
    );
    assert!(!stderr.contains("lacks required"), "{stderr}");
    assert!(stderr.contains("psycopg2.OperationalError"), "{stderr}");
    let mut cmd = standin(dir.path());
    cmd.args(["-c", conf.to_str().unwrap()]);
    let (code, stderr) = run_to_end(cmd, dir.path(), "http");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("lacks required option(s): http_port"),
        "{stderr}"
    );

    // No configuration file at all.
    let (code, stderr) = run_to_end(standin(dir.path()), dir.path(), "none");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no configuration file"), "{stderr}");
}

#[test]
fn rejects_bad_command_lines_like_optparse() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], i32, &str)] = &[
        (&["--foo"], 2, "error: no such option: --foo"),
        (
            &["-c", "x", "--bogus=1"],
            2,
            "error: no such option: --bogus",
        ),
        (&["--workers", "many"], 2, "invalid integer value: 'many'"),
        (
            &["--stop-after-init=yes"],
            2,
            "option does not take a value",
        ),
        (&["--db_sslmode", "always"], 2, "invalid choice: 'always'"),
        (&["-d"], 2, "-d option requires 1 argument"),
        (
            &["-d", "db", "extra"],
            2,
            "unrecognized parameters: 'extra'",
        ),
        (&["shell"], 1, "Unknown command 'shell'"),
    ];
    for (args, expected, message) in cases {
        let mut cmd = standin(dir.path());
        cmd.args(*args);
        let (code, stderr) = run_to_end(cmd, dir.path(), "args");
        assert_eq!(code, Some(*expected), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        if *expected == 2 {
            assert!(stderr.contains("Usage: odoo-standin [options]"), "{stderr}");
        }
    }
    let mut cmd = standin(dir.path());
    cmd.arg("--version");
    let out = cmd.output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Odoo Server 18.0"));
}

#[test]
fn refuses_bad_values_and_the_postgres_user() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("odoo.conf");
    let cases = [
        ("list_db", "0", "expected True or False"),
        ("workers", "four", "invalid integer value"),
        ("db_sslmode", "sometimes", "invalid choice"),
        (
            "db_user",
            "postgres",
            "Using the database user 'postgres' is a security risk, aborting.",
        ),
    ];
    for (key, value, message) in cases {
        let mut config = full_config(dir.path());
        set(&mut config, key, value);
        write_config(&conf, &config);
        let mut cmd = standin(dir.path());
        cmd.args(["-c", conf.to_str().unwrap()]);
        let (code, stderr) = run_to_end(cmd, dir.path(), key);
        assert_eq!(code, Some(1), "{key}: {stderr}");
        assert!(stderr.contains(message), "{key}: {stderr}");
    }
    // A broken configuration file is fatal, as for RawConfigParser.
    std::fs::write(&conf, "db_host = x\n").unwrap();
    let mut cmd = standin(dir.path());
    cmd.args(["-c", conf.to_str().unwrap()]);
    let (code, stderr) = run_to_end(cmd, dir.path(), "broken");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no section headers"), "{stderr}");
}
