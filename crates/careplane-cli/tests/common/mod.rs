//! Test harness: a temp platform, the real `careplane` binary, and cleanup
//! that stops every server even when a test fails.

#![allow(dead_code)]

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub struct Platform {
    pub dir: tempfile::TempDir,
    pub specs: PathBuf,
}

pub const PLATFORM: &str = r#"
apiVersion: careplane.dev/v1alpha1
kind: Platform
metadata:
  name: testgroup
spec:
  target: local
  dataDir: DATA_DIR
  defaults:
    serviceTier: standard
---
apiVersion: careplane.dev/v1alpha1
kind: ServiceTier
metadata:
  name: standard
spec:
  availability: 99.5
  rto: 4h
  rpo: 1h
  supportHours: business-hours
"#;

impl Platform {
    /// A temp dir holding `specs/platform.yaml` and the data dir `data/`.
    pub fn new(tenants_yaml: &str) -> Platform {
        let dir = tempfile::Builder::new()
            .prefix("careplane-test-")
            .tempdir()
            .expect("tempdir");
        // The PostgreSQL service user must be able to traverse into the data dir.
        set_mode(dir.path(), 0o711);
        let specs = dir.path().join("specs");
        std::fs::create_dir(&specs).unwrap();
        let data = dir.path().join("data");
        std::fs::write(
            specs.join("platform.yaml"),
            PLATFORM.replace("DATA_DIR", &data.display().to_string()),
        )
        .unwrap();
        let p = Platform { dir, specs };
        p.write_tenants(tenants_yaml);
        p
    }

    /// Like [`Platform::new`], with the Odoo stand-in as the platform's
    /// `odoo.command`.
    pub fn with_odoo(tenants_yaml: &str) -> Platform {
        let p = Platform::new(tenants_yaml);
        let file = p.specs.join("platform.yaml");
        let text = std::fs::read_to_string(&file).unwrap().replacen(
            "  defaults:",
            &format!(
                "  odoo:\n    command: {}\n    version: 18\n  defaults:",
                p.standin().display()
            ),
            1,
        );
        std::fs::write(file, text).unwrap();
        p
    }

    /// The stand-in binary, copied into the platform's directory. Always
    /// (re)built: a stale stand-in from an earlier build would test old
    /// behaviour (a no-op when `cargo test --workspace` already built it).
    /// Copied because the Odoo service user (when the tests run as root) may
    /// not reach the target directory, e.g. under a 0700 `/root`.
    pub fn standin(&self) -> PathBuf {
        let exe = PathBuf::from(env!("CARGO_BIN_EXE_careplane"));
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "careplane-odoo-standin"])
            .status()
            .expect("cargo build");
        assert!(status.success(), "building odoo-standin");
        let bin = self.dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        set_mode(&bin, 0o755);
        let copy = bin.join("odoo-standin");
        if !copy.exists() {
            std::fs::copy(exe.with_file_name("odoo-standin"), &copy).unwrap();
        }
        set_mode(&copy, 0o755);
        copy
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn write_tenants(&self, yaml: &str) {
        std::fs::write(self.specs.join("tenants.yaml"), yaml).unwrap();
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_careplane"));
        c.args(args);
        c.arg("-f").arg(&self.specs);
        c.env_remove("CAREPLANE_CRASH_AT");
        c
    }

    /// Runs careplane and returns its output, whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("spawn careplane")
    }

    /// Runs careplane and fails the test (with its output) unless it succeeds.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "careplane {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["--output", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("json output")
    }

    /// `--output json` of a command that may exit non-zero (status with servers down).
    pub fn json_allow_fail(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["--output", "json"]);
        let out = self.run(&a);
        serde_json::from_slice(&out.stdout).expect("json output")
    }

    pub fn plan(&self) -> Value {
        self.json(&["plan"])
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        // Stop whatever is recorded; then make sure no server outlives the test.
        if self.data_dir().join("state.db").exists() {
            let _ = self.run(&["stop"]);
        }
        kill_processes_under(&self.data_dir());
    }
}

pub fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Processes whose command line mentions `needle` (PostgreSQL postmasters are
/// started with `-D <dir>`; Redis servers with their config file path).
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) && !cmdline.contains("careplane-test-runner") {
            pids.push(pid);
        }
    }
    pids
}

/// Processes whose working directory is inside `dir`: PostgreSQL and Redis
/// both chdir into their data directories, children included.
pub fn processes_in(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) {
            if cwd.starts_with(dir) {
                pids.push(pid);
            }
        }
    }
    pids
}

fn kill_processes_under(dir: &Path) {
    for pid in processes_in(dir) {
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
}

/// Tenants used by several tests: one per tenancy tier, production and not.
pub const TENANTS: &str = r#"
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: alpha
spec:
  tenancy: shared
  environments:
    - name: production
      kind: production
    - name: dev
      kind: dev
---
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: beta
spec:
  tenancy: dedicated-db
  environments:
    - name: test
      kind: test
---
apiVersion: careplane.dev/v1alpha1
kind: Tenant
metadata:
  name: gamma
spec:
  tenancy: dedicated-env
  environments:
    - name: uat
      kind: uat
"#;

/// A connection into `tenant`/`env`'s database exactly as its Odoo makes
/// one: its own role and password (from `careplane credentials`), TLS
/// verified against the platform CA.
pub fn tenant_client(p: &Platform, tenant: &str, env: &str) -> careplane_local::postgres::Client {
    tenant_client_in(p, tenant, env, None)
}

/// [`tenant_client`] into `database` (its own when `None`), e.g. `postgres`.
pub fn tenant_client_in(
    p: &Platform,
    tenant: &str,
    env: &str,
    database: Option<&str>,
) -> careplane_local::postgres::Client {
    let c = p.json(&["credentials", tenant, env]);
    let ca = std::fs::read_to_string(p.data_dir().join("pki/ca.crt")).unwrap();
    let pw = careplane_local::SecretString::from(
        c["postgres"]["password"].as_str().unwrap().to_string(),
    );
    careplane_local::pg::connect_tenant(
        c["postgres"]["port"].as_u64().unwrap() as u16,
        database.unwrap_or_else(|| c["postgres"]["database"].as_str().unwrap()),
        c["postgres"]["role"].as_str().unwrap(),
        &pw,
        &ca,
    )
    .unwrap()
}

/// The superuser of `cluster_id` (e.g. `pg-cluster/shared`) on the
/// maintenance database, over its unix socket, with the password from
/// careplane's vault: what an operator (or an attacker with root) could do
/// behind careplane's back.
pub fn admin_client(p: &Platform, cluster_id: &str) -> careplane_local::postgres::Client {
    let store = careplane_state::Store::open(&p.data_dir()).unwrap();
    let cluster = store
        .resource(cluster_id)
        .unwrap()
        .expect("the cluster's record");
    let password = store
        .secret(cluster_id, "admin-password")
        .unwrap()
        .expect("the cluster's admin password");
    careplane_local::postgres::Config::new()
        .host_path(cluster.observed["root"].as_str().unwrap().to_string() + "/run")
        .port(cluster.observed["port"].as_u64().unwrap() as u16)
        .user("careplane_admin")
        .password(careplane_local::ExposeSecret::expose_secret(&password))
        .dbname("postgres")
        .connect(careplane_local::postgres::NoTls)
        .unwrap()
}

/// The ids of a plan's actions, in order.
pub fn action_ids(plan: &Value) -> Vec<String> {
    plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect()
}

/// Runs `args` with a crash injected at `at`, and insists the process died by SIGKILL.
pub fn crash(p: &Platform, args: &[&str], at: &str) {
    let out = p
        .cmd(args)
        .env("CAREPLANE_CRASH_AT", at)
        .output()
        .expect("spawn");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "expected careplane {args:?} to be killed at {at}, got {}:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The sorted entry names of `dir` (none when it is missing).
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A free TCP port on loopback (bound and released; the caller binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process (a `careplane serve`) killed and reaped on drop, also
/// when the test fails.
pub struct Serve(pub std::process::Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where the cluster `cluster_id` archives its WAL, for a `file://` repository.
pub fn archived_wal_dir(p: &Platform, cluster_id: &str) -> PathBuf {
    let store = careplane_state::Store::open(&p.data_dir()).unwrap();
    let cluster = store.resource(cluster_id).unwrap().unwrap();
    let repo = cluster.observed["archive"]["repository"]
        .as_str()
        .unwrap()
        .strip_prefix("file://")
        .expect("a file:// cluster repository");
    PathBuf::from(repo).join("wal")
}
