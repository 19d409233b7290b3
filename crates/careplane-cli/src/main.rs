//! `careplane`: a declarative control plane that hosts Odoo for healthcare.
//!
//! The command is a thin layer: it parses arguments, loads specs through
//! `careplane-spec`, and calls `careplane-engine`. Output goes to stdout
//! (results, `--output json`) and stderr (progress, errors).

// The ingress proxy runs as `careplane ingress-run`: mimalloc took ~7 % of its
// instructions per request off glibc's malloc (docs/benchmarks.md, session 9), and
// `careplane serve` allocates per probe and per request the same way.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use careplane_engine::ExposeSecret;
use careplane_engine::{ApplyOptions, Engine, Event, Status};
use clap::{Args, Parser, Subcommand, ValueEnum};

mod serve;

#[derive(Parser)]
#[command(
    name = "careplane",
    version,
    about = "Host Odoo for healthcare with the controls built in",
    long_about = "careplane reads YAML specs (Platform, ServiceTier, BackupPolicy, Tenant), plans \
                  the difference between them and what it holds, and applies it: isolated, \
                  hardened PostgreSQL and Redis per tenant environment on the local target.\n\n\
                  Typical use:\n  careplane validate -f specs/\n  careplane plan -f specs/\n  \
                  careplane apply -f specs/\n  careplane status -f specs/\n\n\
                  Who acts: every operation (apply, destroy, start, stop, modules, credentials, \
                  export, import, backup) is authorized for the caller and audited with it. \
                  Signed in (`careplane login`), that is the provider's user with her role and \
                  approved elevations (`careplane access request`); production apply/destroy, \
                  import and approvals need MFA. Without a session, root on the host acts as \
                  the local root operator (platform-admin); other users must sign in.\n\n\
                  From another machine: `careplane login --server https://HOST:8470 --ca-cert ca.crt \
                  [--device]`, then `careplane --server https://HOST:8470 --ca-cert ca.crt status` \
                  (also incident list|ack|note|resolve, sla report) through `careplane serve`'s \
                  API, as the \
                  signed-in user or with an API token in CAREPLANE_TOKEN."
)]
struct Cli {
    /// Run against a remote `careplane serve` API instead of this host
    /// (status, incident list|ack|note|resolve, sla report, login). https://, or
    /// http:// to this host only. Without a session, CAREPLANE_TOKEN holds
    /// an API token (`careplane token create`). No -f needed.
    #[arg(long, global = true, env = "CAREPLANE_SERVER", value_name = "URL")]
    server: Option<String>,
    /// The CA certificate (PEM) that signed the server's certificate: the
    /// platform CA's, for `careplane serve --tls-platform-ca`.
    #[arg(long, global = true, env = "CAREPLANE_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Files {
    /// Spec file or directory of *.yaml files (repeatable).
    #[arg(short = 'f', long = "file", required = true, value_name = "PATH")]
    files: Vec<PathBuf>,
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum, Default)]
enum Output {
    #[default]
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Check specs: every error with file:line:column, field path and a hint.
    Validate {
        #[command(flatten)]
        files: Files,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Show what apply would create, change and delete. Changes nothing.
    Plan {
        #[command(flatten)]
        files: Files,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Make the platform match the specs. Safe to interrupt and re-run.
    ///
    /// Needs platform-operator or platform-admin (with MFA when the
    /// platform has a production or DR environment), or root on the host.
    Apply {
        #[command(flatten)]
        files: Files,
        #[command(flatten)]
        guards: Guards,
        /// Change environments under a change freeze (a MaintenanceWindow of type
        /// freeze in force now) anyway; the reason goes into the audit log.
        #[arg(long, value_name = "REASON")]
        override_freeze: Option<String>,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Every tenant environment: cluster, database, ports, health.
    Status {
        #[command(flatten)]
        files: Files,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Remove tenants (or, without --tenant, everything careplane holds).
    Destroy {
        #[command(flatten)]
        files: Files,
        /// Only this tenant (repeatable).
        #[arg(long = "tenant", value_name = "TENANT")]
        tenants: Vec<String>,
        #[command(flatten)]
        guards: Guards,
        /// Drop databases that hold data without backing them up first.
        #[arg(long)]
        no_final_backup: bool,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Start every server careplane holds (after `stop` or a reboot).
    Start {
        #[command(flatten)]
        files: Files,
    },
    /// Stop every server careplane holds, without losing data.
    Stop {
        #[command(flatten)]
        files: Files,
    },
    /// Print how to connect to a tenant environment, passwords included.
    ///
    /// The only command that shows a secret; use it deliberately.
    Credentials {
        #[command(flatten)]
        files: Files,
        tenant: String,
        environment: String,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Render the platform for another target: `--target kubernetes` writes
    /// a GitOps repository (kustomize, CloudNativePG, External Secrets,
    /// Argo CD and Flux objects) into --out, or with --check reports how a
    /// repository differs from the specs (exit 1 when it does). Needs no
    /// running platform. See docs/kubernetes.md.
    Render {
        #[command(flatten)]
        files: Files,
        /// The target to render for (only `kubernetes` so far).
        #[arg(long, value_enum)]
        target: RenderTarget,
        /// The repository directory to write (or check).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Compare --out with what the specs render; change nothing.
        #[arg(long)]
        check: bool,
        /// Odoo image; production and DR need it pinned (`repo@sha256:…`).
        #[arg(long, value_name = "IMAGE")]
        odoo_image: String,
        /// Redis image (pinned by digest for production and DR).
        #[arg(long, value_name = "IMAGE")]
        redis_image: String,
        /// PostgreSQL (CloudNativePG operand) image (pinned for production and DR).
        #[arg(long, value_name = "IMAGE")]
        postgres_image: String,
        /// Key that makes PostgreSQL role names opaque (at least 16
        /// characters; keep it stable and secret).
        #[arg(long, env = "CAREPLANE_ROLE_KEY", hide_env_values = true)]
        role_key: String,
        /// Git repository Argo CD and Flux sync from.
        #[arg(long, value_name = "URL")]
        repo_url: Option<String>,
        /// When the Platform keeps secrets in SOPS files
        /// (spec.kubernetes.secrets.sops): the secret values, a SOPS file
        /// (store key → property → value) that --age-identity decrypts.
        #[arg(long, value_name = "FILE", requires = "age_identity")]
        secret_values: Option<PathBuf>,
        /// age identity file (mode 0600) that decrypts --secret-values.
        #[arg(long, value_name = "FILE", env = "SOPS_AGE_KEY_FILE")]
        age_identity: Option<PathBuf>,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// The tamper-evident audit log: every apply, destroy, start, stop,
    /// modules run, credentials shown, export, import, backup and access
    /// change — also refused ones — who did it (identity, MFA, elevation)
    /// and how it ended.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Just-in-time elevation and access reviews: request a role for a
    /// while, approve someone else's request, list grants, review who holds
    /// what. See docs/design/0013-identity-and-access.md.
    Access {
        #[command(subcommand)]
        command: access::AccessCommand,
    },
    /// Sign in through the platform's OpenID provider: in a browser
    /// (authorization code flow with PKCE, loopback redirect) or, with
    /// --device, by entering a code on any device (RFC 8628). The session
    /// is kept in ~/.config/careplane/session.json (0600; $CAREPLANE_SESSION).
    /// With --server URL the provider is the one that server names, and
    /// no -f is needed.
    Login(access::LoginArgs),
    /// Recent operations and their steps, from the journal.
    Journal {
        #[command(flatten)]
        files: Files,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Install or upgrade Odoo modules in one environment (stop web, run
    /// `-i`/`-u --stop-after-init`, start, health check), journaled.
    Modules {
        #[command(flatten)]
        files: Files,
        #[arg(value_enum)]
        action: ModulesAction,
        tenant: String,
        environment: String,
        #[arg(required = true, value_name = "MODULE")]
        modules: Vec<String>,
    },
    /// Write one environment's database and filestore as the zip Odoo's own
    /// database manager restores (`dump.sql`, `filestore/`, `manifest.json`).
    /// The dump runs as the tenant's own role; nothing is at OUT unless the
    /// export completed. Restore it in any Odoo of the same major version
    /// (Manage Databases > Restore), e.g. to leave careplane or to debug.
    Export {
        #[command(flatten)]
        files: Files,
        tenant: String,
        environment: String,
        /// The archive to write (mode 0600: it holds the tenant's data).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Replace one environment's database and filestore with an Odoo backup
    /// zip (what Odoo's database manager or `careplane export` writes) or a
    /// `pg_dump --format=custom` file: the way in from another Odoo host.
    /// The environment is exported first (to `<dataDir>/exports/`), shows a
    /// maintenance page meanwhile, and is left as it was if the dump does
    /// not load. The database gets this environment's own identity (new
    /// `database.uuid`/`database.secret`) and careplane's admin password.
    Import {
        #[command(flatten)]
        files: Files,
        tenant: String,
        environment: String,
        /// The archive to load.
        file: PathBuf,
        /// Confirm that the environment's current data is replaced.
        #[arg(long)]
        replace: bool,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Print the JSON Schema of every spec kind (for editor completion).
    Schema,
    /// Run an environment's Odoo processes in the foreground (started by
    /// `apply`/`start`, detached; not for interactive use).
    #[command(hide = true)]
    Supervise { spec: PathBuf },
    /// Run the ingress proxy in the foreground (started by `apply`/`start`,
    /// detached; not for interactive use).
    #[command(hide = true)]
    IngressRun { config: PathBuf },
    /// serve, token, sla, incident (serve.rs).
    #[command(flatten)]
    Serve(serve::Command),
    /// Backups of tenant environments: create, list, show, verify, restore,
    /// prune, run-due (docs/design/0010, 0011).
    Backup {
        #[command(subcommand)]
        command: backup::BackupCommand,
    },
    /// PostgreSQL's archive_command / restore_command (set by apply; not
    /// for interactive use).
    #[command(hide = true)]
    BackupWal(backup::WalArgs),
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
enum ModulesAction {
    Install,
    Upgrade,
}

#[derive(Args, Clone, Default)]
struct Guards {
    /// Allow dropping databases that still hold data.
    #[arg(long)]
    delete_data: bool,
    /// Allow deleting this tenant's production/DR environments (repeatable).
    #[arg(long = "confirm", value_name = "TENANT")]
    confirm: Vec<String>,
}

impl Guards {
    fn options(&self) -> ApplyOptions {
        ApplyOptions {
            delete_data: self.delete_data,
            confirm: self.confirm.clone(),
            final_backup: false,
            ..ApplyOptions::default()
        }
    }
}

/// The change freezes in force now over the environments `plan` changes
/// (docs/design/0014).
fn freezes_over(
    engine: &Engine,
    plan: &careplane_engine::Plan,
) -> Result<Vec<careplane_server::calendar::Freeze>> {
    let mut envs: Vec<(String, String)> = Vec::new();
    for a in &plan.actions {
        if let (Some(t), Some(e)) = (a.tenant(), a.environment()) {
            let pair = (t.to_string(), e.to_string());
            if !envs.contains(&pair) {
                envs.push(pair);
            }
        }
    }
    Ok(careplane_server::calendar::freezes_at(
        engine.specs(),
        &envs,
        jiff::Timestamp::now(),
    )?)
}

/// `println!` to stdout; a closed stdout (`careplane journal | head`) ends
/// the process quietly, as it would a C tool killed by SIGPIPE.
macro_rules! outln {
    () => { write_out(format_args!("\n")) };
    ($($arg:tt)*) => { write_out(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` to stdout, with [`outln!`]'s handling of a closed stdout.
macro_rules! out {
    ($($arg:tt)*) => { write_out(format_args!($($arg)*)) };
}

/// `eprintln!` that never panics: progress and errors are not worth
/// aborting for (an apply goes on when its stderr was closed).
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Writes to stdout. SIGPIPE stays ignored (Rust's default) so that a peer
/// closing a socket is an error careplane handles, not its death; only a
/// broken stdout ends the process, with the shell's exit status for SIGPIPE.
fn write_out(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        errln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

mod access;
mod audit_verbs;
mod backup;
mod remote;

fn main() -> ExitCode {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let mut command = Cli::command();
    if remote::requested() {
        command = remote::without_specs(command);
    }
    let matches = command.get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // An empty CAREPLANE_SERVER (or CAREPLANE_CA_CERT) is an unset one.
    let r = match cli.server.clone().filter(|s| !s.is_empty()) {
        Some(server) => remote::run(
            &server,
            cli.ca_cert.as_deref().filter(|p| !p.as_os_str().is_empty()),
            cli.command,
            &remote::command_name(&matches),
        ),
        None => run(cli),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            errln!("error: {}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line. Most of careplane's errors already
/// end with their source's message (`{what}: {source}`), so anyhow's `{:#}`
/// would print each such cause twice: a cause whose message is already part
/// of the line is left out.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check every entry's hash chain and every signed checkpoint; exit 1
    /// naming the first bad sequence number when anything was changed,
    /// inserted, removed or reordered. See docs/audit.md.
    Verify {
        #[command(flatten)]
        files: Files,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// A tenant's entries with their inclusion proofs against the latest
    /// signed checkpoint, as JSON for the tenant's own auditor (checked with
    /// the script in docs/audit.md).
    ///
    /// With --format, every entry (or the tenant's) as JSON lines or RFC 5424
    /// syslog lines for a SIEM instead.
    Export {
        #[command(flatten)]
        files: Files,
        #[arg(long, required_unless_present = "format")]
        tenant: Option<String>,
        #[arg(long, value_enum)]
        format: Option<audit_verbs::ExportFormat>,
        /// Accepted for symmetry: the export is JSON either way.
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// The inclusion proof of entry SEQ against the latest signed checkpoint
    /// (or, with --consistency OLD, the proof that the log's first OLD
    /// entries are a prefix of it), as JSON; docs/audit.md shows how to
    /// check it.
    Prove {
        #[command(flatten)]
        files: Files,
        #[arg(required_unless_present = "consistency")]
        seq: Option<u64>,
        #[arg(long, value_name = "OLD_SIZE", conflicts_with = "seq")]
        consistency: Option<u64>,
    },
    /// Entries matching every given filter, oldest first.
    Query {
        #[command(flatten)]
        files: Files,
        /// The actor's id (as entries show it).
        #[arg(long)]
        actor: Option<String>,
        #[arg(long)]
        action: Option<String>,
        /// A target or anything below it (`odoo-env/stmarys`).
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        /// RFC 3339 time, inclusive.
        #[arg(long)]
        since: Option<String>,
        /// RFC 3339 time, exclusive.
        #[arg(long)]
        until: Option<String>,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Entries, oldest first (optionally only one action or tenant).
    Log {
        #[command(flatten)]
        files: Files,
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
}

/// Targets `careplane render` writes for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RenderTarget {
    Kubernetes,
}

fn load(files: &Files) -> Result<Engine, anyhow::Error> {
    match careplane_spec::load(&files.files) {
        Ok(specs) => Ok(careplane_target_local::engine(specs)),
        Err(diags) => Err(anyhow::anyhow!("{diags}")),
    }
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    outln!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// `audit log` and `audit query`: one line per entry, or JSON.
fn print_audit_entries(
    entries: &[careplane_engine::careplane_audit::Entry],
    output: Output,
) -> Result<()> {
    match output {
        Output::Json => print_json(&entries)?,
        Output::Text => {
            for e in entries {
                outln!(
                    "{:>6}  {}  {:<18} {:<16} {:<40} {:?}",
                    e.seq,
                    e.time,
                    e.actor.id,
                    e.action,
                    e.target,
                    e.result.status
                );
            }
        }
    }
    Ok(())
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve(c) => return serve::run(c),
        Command::Supervise { spec } => {
            careplane_target_local::supervise(&spec)?;
        }
        Command::IngressRun { config } => {
            careplane_ingress::serve(&config)?;
        }
        Command::Backup { command } => return backup::run(command),
        Command::BackupWal(w) => return Ok(backup::wal(&w)),
        Command::Modules {
            files,
            action,
            tenant,
            environment,
            modules,
        } => {
            let engine = load(&files)?;
            let install = action == ModulesAction::Install;
            errln!(
                "{} {} in {tenant}/{environment}: stopping web, running Odoo, starting again ...",
                if install { "installing" } else { "upgrading" },
                modules.join(",")
            );
            engine.modules(
                &access::caller(&engine),
                &tenant,
                &environment,
                install,
                &modules,
            )?;
            outln!(
                "done: {tenant}/{environment} is up with {}",
                modules.join(",")
            );
        }
        Command::Export {
            files,
            tenant,
            environment,
            out,
            output,
        } => {
            let engine = load(&files)?;
            errln!("exporting {tenant}/{environment} to {} ...", out.display());
            let r = engine
                .export(&access::caller(&engine), &tenant, &environment, &out)
                .with_context(|| format!("export of {tenant}/{environment}"))?;
            if output == Output::Json {
                print_json(&serde_json::to_value(&r)?)?;
            } else {
                outln!(
                    "wrote {} ({} bytes): database {} ({} bytes of SQL, {} modules, Odoo {}, PostgreSQL {}), \
                     {} filestore files ({} bytes)",
                    r.path.display(),
                    r.bytes,
                    r.database,
                    r.sql_bytes,
                    r.modules,
                    r.odoo_version,
                    r.postgres_version,
                    r.filestore_files,
                    r.filestore_bytes
                );
                if !r.skipped.is_empty() {
                    errln!(
                        "left out of the filestore (not regular files, e.g. symbolic links): {}",
                        r.skipped.join(", ")
                    );
                }
            }
        }
        Command::Import {
            files,
            tenant,
            environment,
            file,
            replace,
            output,
        } => {
            if !replace {
                anyhow::bail!(
                    "importing into {tenant}/{environment} replaces its database and filestore: \
                     pass --replace to confirm (the current data is exported first)"
                );
            }
            let engine = load(&files)?;
            errln!(
                "importing {} into {tenant}/{environment}: exporting the current data, \
                 loading the dump, starting Odoo ...",
                file.display()
            );
            let r = engine
                .import(&access::caller(&engine), &tenant, &environment, &file)
                .with_context(|| {
                    format!("import of {} into {tenant}/{environment}", file.display())
                })?;
            if output == Output::Json {
                print_json(&serde_json::to_value(&r)?)?;
            } else {
                outln!(
                    "imported {} ({}{}, {} filestore files) into {tenant}/{environment} (database {}); \
                     its data before is in {}",
                    file.display(),
                    r.format,
                    r.odoo_version
                        .as_deref()
                        .map(|v| format!(", Odoo {v}"))
                        .unwrap_or_default(),
                    r.filestore_files,
                    r.database,
                    r.previous.display()
                );
            }
        }
        Command::Schema => {
            print_json(&careplane_spec::json_schema())?;
        }
        Command::Validate { files, output } => match careplane_spec::load(&files.files) {
            Ok(specs) => {
                if output == Output::Json {
                    print_json(&serde_json::json!({ "valid": true, "diagnostics": [] }))?;
                } else {
                    outln!(
                        "ok: platform {}, {} service tiers, {} tenants, {} environments, {} maintenance windows",
                        specs.platform.metadata.name,
                        specs.service_tiers.len(),
                        specs.tenants.len(),
                        specs
                            .tenants
                            .iter()
                            .map(|t| t.spec.environments.len())
                            .sum::<usize>(),
                        specs.maintenance_windows.len()
                    );
                }
            }
            Err(diags) => {
                if output == Output::Json {
                    print_json(&serde_json::json!({ "valid": false, "diagnostics": diags }))?;
                } else {
                    errln!("{diags}");
                }
                return Ok(ExitCode::FAILURE);
            }
        },
        Command::Plan { files, output } => {
            let engine = load(&files)?;
            let plan = engine.plan()?;
            let freezes = freezes_over(&engine, &plan)?;
            match output {
                Output::Json => {
                    let mut v = plan.to_json();
                    if !freezes.is_empty() {
                        v["freezes"] = serde_json::to_value(&freezes)?;
                    }
                    print_json(&v)?
                }
                Output::Text => {
                    out!("{}", plan.render());
                    for f in &freezes {
                        outln!("frozen: {f}; apply needs --override-freeze <reason>");
                    }
                }
            }
        }
        Command::Apply {
            files,
            guards,
            override_freeze,
            output,
        } => {
            let engine = load(&files)?;
            // Planning observes every server; without a freeze window in the
            // specs there is nothing to ask it, and apply plans again anyway.
            let has_freezes = engine
                .specs()
                .maintenance_windows
                .iter()
                .any(|w| w.spec.window_type == careplane_spec::WindowType::Freeze);
            let frozen = if has_freezes {
                freezes_over(&engine, &engine.plan()?)?
                    .into_iter()
                    .map(|f| (f.tenant.clone(), f.environment.clone(), f.to_string()))
                    .collect()
            } else {
                Vec::new()
            };
            let opts = ApplyOptions {
                frozen,
                override_freeze,
                ..guards.options()
            };
            let who = access::caller(&engine);
            let report = with_progress(|p| engine.apply(&who, &opts, p))?;
            match output {
                Output::Json => print_json(&report)?,
                Output::Text => {
                    if report.applied.is_empty() {
                        outln!("No changes: the platform matches the specs.");
                    } else {
                        outln!(
                            "Applied {} actions (operation {}).",
                            report.applied.len(),
                            report.operation
                        );
                        outln!("Run `careplane status -f ...` to see every environment and its health.");
                        // New Odoo environments: where to log in.
                        let envs: Vec<(String, String)> = report
                            .created
                            .iter()
                            .filter_map(|id| id.strip_prefix("odoo-env/")?.split_once('/'))
                            .map(|(t, e)| (t.to_string(), e.to_string()))
                            .collect();
                        print_new_odoo_envs(&engine, &who, &envs)?;
                    }
                }
            }
        }
        Command::Destroy {
            files,
            tenants,
            guards,
            no_final_backup,
            output,
        } => {
            let engine = load(&files)?;
            // The same guards as apply: a database that holds data is
            // dropped only with --delete-data, production/DR only with
            // --confirm <tenant>; and it is backed up first.
            let opts = ApplyOptions {
                final_backup: !no_final_backup,
                ..guards.options()
            };
            let who = access::caller(&engine);
            let report = with_progress(|p| engine.destroy(&who, &tenants, &opts, p))?;
            match output {
                Output::Json => print_json(&report)?,
                Output::Text => outln!("Destroyed: {} actions.", report.applied.len()),
            }
        }
        Command::Status { files, output } => {
            let engine = load(&files)?;
            let status = engine.status()?;
            match output {
                Output::Json => print_json(&status)?,
                Output::Text => print_status(&status),
            }
            if !healthy(&status) {
                return Ok(ExitCode::from(3));
            }
        }
        Command::Start { files } => {
            let engine = load(&files)?;
            let who = access::caller(&engine);
            with_progress(|p| engine.start_all(&who, p))?;
        }
        Command::Stop { files } => {
            let engine = load(&files)?;
            let who = access::caller(&engine);
            with_progress(|p| engine.stop_all(&who, p))?;
        }
        Command::Credentials {
            files,
            tenant,
            environment,
            output,
        } => {
            let engine = load(&files)?;
            let c = engine
                .credentials(&access::caller(&engine), &tenant, &environment)
                .with_context(|| format!("credentials of {tenant}/{environment}"))?;
            let pg = &c.postgres;
            let port = pg.port.map(|p| p.to_string()).unwrap_or_default();
            let json = serde_json::json!({
                "postgres": {
                    "host": pg.host, "port": pg.port, "database": pg.database, "role": pg.role,
                    "sslmode": pg.sslmode, "sslrootcert": pg.sslrootcert,
                    "password": pg.password.expose_secret(),
                    "url": format!(
                        "postgresql://{}@{}:{port}/{}?sslmode={}&sslrootcert={}",
                        pg.role, pg.host, pg.database, pg.sslmode, pg.sslrootcert
                    ),
                },
                "odoo": c.odoo.as_ref().map(|o| serde_json::json!({
                    "url": o.url, "login": o.login,
                    "password": o.password.expose_secret(),
                    "masterPassword": o.master_password.expose_secret(),
                    "probe": o.probe.as_ref().map(|p| serde_json::json!({
                        "login": p.login, "password": p.password.expose_secret(),
                    })),
                })),
                "redis": c.redis.as_ref().map(|r| serde_json::json!({
                    "host": r.host, "port": r.port, "user": r.user, "keyPrefix": r.key_prefix,
                    "password": r.password.expose_secret(),
                })),
            });
            match output {
                Output::Json => print_json(&json)?,
                Output::Text => {
                    outln!(
                        "postgres  {}",
                        json["postgres"]["url"].as_str().unwrap_or_default()
                    );
                    outln!("password  {}", pg.password.expose_secret());
                    if let Some(r) = &c.redis {
                        let port = r.port.map(|p| p.to_string()).unwrap_or_default();
                        outln!(
                            "redis     {}:{port} user {} keys {}*",
                            r.host,
                            r.user,
                            r.key_prefix
                        );
                        outln!("password  {}", r.password.expose_secret());
                    }
                    if let Some(o) = &c.odoo {
                        outln!("odoo      {} login {}", o.url, o.login);
                        outln!("password  {}", o.password.expose_secret());
                        outln!(
                            "master    {}  (database manager)",
                            o.master_password.expose_secret()
                        );
                    }
                }
            }
        }
        Command::Render {
            files,
            target: RenderTarget::Kubernetes,
            out,
            check,
            odoo_image,
            redis_image,
            postgres_image,
            role_key,
            repo_url,
            secret_values,
            age_identity,
            output,
        } => {
            let specs = careplane_spec::load(&files.files).map_err(|d| anyhow::anyhow!("{d}"))?;
            let mut opts = careplane_render_k8s::RenderOptions::new(
                &odoo_image,
                &redis_image,
                &postgres_image,
                &role_key,
            );
            if let Some(url) = repo_url {
                opts.repo_url = url;
            }
            let values = match (&secret_values, &age_identity) {
                (Some(v), Some(i)) => Some(careplane_render_k8s::sops::load_values(v, i)?),
                _ => None,
            };
            if check {
                let drift = match &values {
                    Some(v) => careplane_render_k8s::check_with(&specs, &opts, v, &out)?,
                    None => careplane_render_k8s::check(&specs, &opts, &out)?,
                };
                match output {
                    Output::Json => {
                        print_json(&drift.iter().map(|d| d.to_string()).collect::<Vec<_>>())?
                    }
                    Output::Text if drift.is_empty() => {
                        outln!("{} matches the specs.", out.display())
                    }
                    Output::Text => {
                        for d in &drift {
                            outln!("{d}");
                        }
                        outln!("{} difference(s) from the specs.", drift.len());
                    }
                }
                if !drift.is_empty() {
                    return Ok(ExitCode::from(1));
                }
            } else {
                let report = match &values {
                    Some(v) => {
                        let now = jiff::Timestamp::now()
                            .strftime("%Y-%m-%dT%H:%M:%SZ")
                            .to_string();
                        careplane_render_k8s::write_with(&specs, &opts, v, &now, &out)?
                    }
                    None => careplane_render_k8s::write(&specs, &opts, &out)?,
                };
                match output {
                    Output::Json => print_json(&serde_json::json!({
                        "written": report.written,
                        "unchanged": report.unchanged,
                        "removed": report.removed,
                    }))?,
                    Output::Text => outln!(
                        "{}: {} file(s) written, {} unchanged, {} removed.",
                        out.display(),
                        report.written.len(),
                        report.unchanged,
                        report.removed.len()
                    ),
                }
            }
        }
        Command::Audit {
            command: AuditCommand::Verify { files, output },
        } => {
            let engine = load(&files)?;
            let report = engine.audit_verify()?;
            let ok = report.problems.is_empty();
            match output {
                Output::Json => print_json(&serde_json::json!({
                    "entries": report.entries,
                    "firstBadSeq": report.first_bad_seq,
                    "problems": report.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                    "checkpointsOk": report.checkpoints_ok,
                    "unsignedFrom": report.unsigned_from,
                }))?,
                Output::Text if ok => outln!(
                    "{}: {} entries, {} signed checkpoints, all verified.",
                    engine.audit_dir().display(),
                    report.entries,
                    report.checkpoints_ok
                ),
                Output::Text => {
                    for p in &report.problems {
                        outln!("{p}");
                    }
                    if let Some(seq) = report.first_bad_seq {
                        outln!("first bad entry: seq {seq}");
                    }
                }
            }
            if !ok {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Audit {
            command:
                AuditCommand::Export {
                    files,
                    tenant,
                    format,
                    ..
                },
        } => {
            let engine = load(&files)?;
            match (format, tenant) {
                (Some(format), tenant) => {
                    let filter = careplane_engine::careplane_audit::Filter {
                        tenant,
                        ..Default::default()
                    };
                    audit_verbs::export(&engine, format, &filter)?;
                }
                (None, Some(tenant)) => print_json(&engine.audit_export_tenant(&tenant)?)?,
                (None, None) => anyhow::bail!("audit export needs --tenant or --format"),
            }
        }
        Command::Audit {
            command:
                AuditCommand::Prove {
                    files,
                    seq,
                    consistency,
                },
        } => {
            let engine = load(&files)?;
            let proof = match (seq, consistency) {
                (_, Some(old)) => audit_verbs::prove_consistency(&engine, old)?,
                (Some(seq), None) => audit_verbs::prove_inclusion(&engine, seq)?,
                (None, None) => anyhow::bail!("audit prove needs SEQ or --consistency OLD_SIZE"),
            };
            print_json(&proof)?;
        }
        Command::Audit {
            command:
                AuditCommand::Query {
                    files,
                    actor,
                    action,
                    target,
                    tenant,
                    since,
                    until,
                    output,
                },
        } => {
            let engine = load(&files)?;
            let filter = audit_verbs::filter(actor, action, target, tenant, since, until)?;
            print_audit_entries(&engine.audit_entries(&filter)?, output)?;
        }
        Command::Access { command } => return access::run(command),
        Command::Login(args) => return access::login(args),
        Command::Audit {
            command:
                AuditCommand::Log {
                    files,
                    action,
                    tenant,
                    output,
                },
        } => {
            let engine = load(&files)?;
            let filter = careplane_engine::careplane_audit::Filter {
                action,
                tenant,
                ..Default::default()
            };
            print_audit_entries(&engine.audit_entries(&filter)?, output)?;
        }
        Command::Journal {
            files,
            limit,
            output,
        } => {
            let engine = load(&files)?;
            let steps = engine.journal(limit)?;
            match output {
                Output::Json => print_json(&steps)?,
                Output::Text => {
                    for s in steps {
                        let outcome = match (&s.finished_at, &s.error) {
                            (_, Some(e)) => format!("failed: {e}"),
                            (Some(_), None) => "done".to_string(),
                            (None, None) => "interrupted".to_string(),
                        };
                        outln!(
                            "{}  op {:>4}  {:<50} {}",
                            s.started_at,
                            s.op,
                            s.action,
                            outcome
                        );
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `f` with a progress display on stderr: a bar on a terminal, one line
/// per step otherwise (CI logs).
fn with_progress<T>(
    f: impl FnOnce(&mut dyn FnMut(Event<'_>)) -> Result<T, careplane_engine::EngineError>,
) -> Result<T> {
    let tty = std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::hidden();
    if tty {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
                .expect("static template"),
        );
    }
    let mut cb = |ev: Event<'_>| match ev {
        Event::Interrupted { actions } => {
            let msg = format!(
                "resuming an interrupted run; unfinished steps: {}",
                actions.join(", ")
            );
            if tty {
                bar.println(msg);
            } else {
                errln!("{msg}");
            }
        }
        Event::Started {
            index,
            total,
            action,
        } => {
            let msg = format!("{:?} {}", action.op, action.id).to_lowercase();
            if tty {
                // The position counts finished steps: Odoo environments
                // finish after later steps have started.
                bar.set_length(total as u64);
                bar.set_message(msg);
            } else {
                errln!("[{}/{}] {msg} ...", index + 1, total);
            }
        }
        Event::Finished { index, total, .. } => {
            if tty {
                bar.inc(1);
            } else if index + 1 == total {
                errln!("[{total}/{total}] done");
            }
        }
        // The error is the run's result, printed once at the end.
        Event::Failed { .. } => {}
        Event::Reached { verb, id, error } => {
            let msg = match error {
                None => format!("{verb} {id}"),
                Some(_) => format!("FAILED {id}"),
            };
            if tty {
                bar.println(msg);
            } else {
                errln!("{msg}");
            }
        }
        Event::Waiting { environments } => {
            let msg = format!(
                "waiting for {environments} Odoo environment{} to answer on /web/health and /web/login",
                if environments == 1 { "" } else { "s" }
            );
            if tty {
                bar.set_message(msg);
            } else {
                errln!("{msg} ...");
            }
        }
    };
    let r = f(&mut cb);
    bar.finish_and_clear();
    Ok(r?)
}

/// Prints rows under headers, each column as wide as its widest cell;
/// columns whose header is in `right` are right-aligned (numbers).
fn print_table(headers: &[&str], right: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([headers[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            let last = i + 1 == cells.len();
            if right.contains(&headers[i]) {
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            } else {
                out.push_str(cell);
                if !last {
                    out.push_str(&" ".repeat(pad));
                }
            }
            if !last {
                out.push_str("  ");
            }
        }
        outln!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// Every environment's checks pass and every cluster archives its WAL
/// (`status` exits 3 otherwise).
fn healthy(status: &Status) -> bool {
    status.environments.iter().all(|e| {
        e.pg_health.ok
            && e.redis_health.as_ref().is_none_or(|h| h.ok)
            && e.odoo_health.as_ref().is_none_or(|h| h.ok)
    }) && status
        .servers
        .iter()
        .all(|s| s.archiving.as_ref().is_none_or(|a| a.ok))
}

fn print_status(s: &Status) {
    outln!("platform {}  (data: {})", s.platform, s.data_dir);
    outln!();
    fn num(n: Option<impl ToString>) -> String {
        n.map(|p| p.to_string()).unwrap_or_default()
    }
    let servers: Vec<Vec<String>> = s
        .servers
        .iter()
        .map(|sv| {
            vec![
                sv.id.clone(),
                sv.state.clone(),
                num(sv.port),
                num(sv.pid),
                if sv.running { "yes" } else { "no" }.to_string(),
            ]
        })
        .collect();
    print_table(
        &["SERVER", "STATE", "PORT", "PID", "RUNNING"],
        &["PORT", "PID"],
        &servers,
    );
    outln!();
    let h = |ok: bool| if ok { "ok" } else { "DOWN" }.to_string();
    let envs: Vec<Vec<String>> = s
        .environments
        .iter()
        .map(|e| {
            vec![
                e.tenant.clone(),
                e.environment.clone(),
                e.kind.clone(),
                e.cluster.clone(),
                e.database.clone(),
                num(e.pg_port),
                h(e.pg_health.ok),
                num(e.redis_port),
                e.redis_health
                    .as_ref()
                    .map(|x| h(x.ok))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print_table(
        &[
            "TENANT",
            "ENV",
            "KIND",
            "CLUSTER",
            "DATABASE",
            "PG PORT",
            "PG",
            "REDIS PORT",
            "REDIS",
        ],
        &["PG PORT", "REDIS PORT"],
        &envs,
    );
    let odoo: Vec<Vec<String>> = s
        .environments
        .iter()
        .filter(|e| e.odoo_url.is_some())
        .map(|e| {
            let restarts: u64 = e
                .odoo_processes
                .as_ref()
                .and_then(|p| p["processes"].as_array())
                .map(|ps| ps.iter().filter_map(|p| p["restarts"].as_u64()).sum())
                .unwrap_or(0);
            vec![
                format!("{}/{}", e.tenant, e.environment),
                h(e.odoo_health.as_ref().is_some_and(|h| h.ok)),
                restarts.to_string(),
                e.odoo_url.clone().unwrap_or_default(),
            ]
        })
        .collect();
    if !odoo.is_empty() {
        outln!();
        print_table(
            &["ODOO", "HEALTH", "RESTARTS", "LOGIN"],
            &["RESTARTS"],
            &odoo,
        );
        outln!();
        outln!(
            "Admin login and passwords: careplane credentials -f <specs> <tenant> <environment>"
        );
    }
    backup::print_status(s);
    let down: Vec<_> = s
        .environments
        .iter()
        .flat_map(|e| {
            let mut v = Vec::new();
            if !e.pg_health.ok {
                v.push(format!(
                    "{}/{} postgres: {}",
                    e.tenant, e.environment, e.pg_health.detail
                ));
            }
            if let Some(h) = e.redis_health.as_ref().filter(|h| !h.ok) {
                v.push(format!(
                    "{}/{} redis: {}",
                    e.tenant, e.environment, h.detail
                ));
            }
            if let Some(h) = e.odoo_health.as_ref().filter(|h| !h.ok) {
                v.push(format!("{}/{} odoo: {}", e.tenant, e.environment, h.detail));
            }
            v
        })
        .collect();
    if !down.is_empty() {
        outln!();
        for d in down {
            outln!("  {d}");
        }
    }
}

/// Where to log in to each Odoo environment this apply created. The admin
/// password is shown here once, and only on a terminal: piped or captured
/// output (CI logs, files) never gets it; `careplane credentials` always can.
fn print_new_odoo_envs(
    engine: &Engine,
    who: &careplane_engine::Principal,
    created: &[(String, String)],
) -> anyhow::Result<()> {
    if created.is_empty() {
        return Ok(());
    }
    let show = std::io::stdout().is_terminal();
    let mut rows = Vec::new();
    for (tenant, env) in created {
        let Some(odoo) = engine.credentials(who, tenant, env)?.odoo else {
            continue;
        };
        let mut row = vec![format!("{tenant}/{env}"), odoo.url, odoo.login];
        if show {
            row.push(odoo.password.expose_secret().to_string());
        }
        rows.push(row);
    }
    outln!();
    let mut headers = vec!["NEW ODOO ENVIRONMENT", "LOGIN URL", "USER"];
    if show {
        headers.push("PASSWORD");
    }
    print_table(&headers, &[], &rows);
    if show {
        outln!(
            "These admin passwords are shown once; later only \
             `careplane credentials <tenant> <env>` shows them."
        );
    } else {
        outln!(
            "Admin passwords: `careplane credentials -f <specs> <tenant> <env>` \
             (not printed because the output is not a terminal)."
        );
    }
    Ok(())
}
