//! `careplane serve`, `careplane token ...`, `careplane sla report` and
//! `careplane incident ...` (issue 17): argument parsing and rendering over
//! `careplane-server`, which holds the logic.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use careplane_server::incidents::{self, Action};
use careplane_server::tokens::{self, Scope};
use clap::{Args, Subcommand, ValueEnum};
use jiff::Timestamp;

#[derive(Args, Clone)]
pub struct Files {
    /// Spec file or directory of *.yaml files (repeatable).
    #[arg(short = 'f', long = "file", required = true, value_name = "PATH")]
    files: Vec<PathBuf>,
}

impl Files {
    fn specs(&self) -> Result<careplane_spec::SpecSet> {
        careplane_spec::load(&self.files).map_err(|d| anyhow::anyhow!("{d}"))
    }
    fn data_dir(&self) -> Result<PathBuf> {
        Ok(careplane_engine::Engine::data_dir_of(&self.specs()?))
    }
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    #[default]
    Text,
    Json,
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Html,
    Json,
    /// The HTML report printed by headless Chromium.
    Pdf,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the probes of every environment, the SLA result store, incident
    /// detection and the API (`/v1/...`, `/openapi.json`, `/metrics`) in the
    /// foreground, on loopback unless told otherwise. SIGTERM stops it after
    /// storing every result received. API calls need a token (`careplane token create`).
    ///
    /// Incidents are sent to the Platform's `notifications.channels` (webhook,
    /// Alertmanager, or `smtp` e-mail; an SMTP password is read from the
    /// environment variable its channel's `passwordEnv` names, so set it in
    /// serve's environment: the unit of `--print-systemd-unit` reads
    /// `/etc/careplane/serve.env`). Every delivery
    /// attempt, failed or not, is recorded on the incident (`careplane incident
    /// list --output json`, `deliveries`).
    Serve {
        #[command(flatten)]
        files: Files,
        #[arg(long, default_value = "127.0.0.1:8470", value_name = "ADDR")]
        listen: SocketAddr,
        /// Print a hardened systemd unit for this platform and exit.
        #[arg(long)]
        print_systemd_unit: bool,
        /// Seconds between two runs of a probe.
        #[arg(long, default_value_t = 60, value_name = "SECONDS")]
        probe_interval: u64,
        /// Seconds a probe run may take before it counts as failed.
        #[arg(long, default_value_t = 10, value_name = "SECONDS")]
        probe_timeout: u64,
        /// Probe runs in flight at most.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Seconds between two reads of the environment list.
        #[arg(long, default_value_t = 60, value_name = "SECONDS")]
        refresh: u64,
        /// Serve HTTPS with this PEM certificate chain (with --tls-key).
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The certificate's PEM private key.
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Serve HTTPS with a certificate the platform CA issues at start for the
        /// listen address and loopback (kept in memory only; clients trust the
        /// platform's CA certificate, as for PostgreSQL). Required to listen on
        /// anything but loopback unless --tls-cert is given.
        #[arg(long, conflicts_with = "tls_cert")]
        tls_platform_ca: bool,
        /// Seconds between two checks of what the backup policies make due: base
        /// backups by their schedule (each proven by a restore verification),
        /// scheduled verifications and pruning, as `careplane backup run-due` does.
        /// 0 turns it off (when cron or a systemd timer runs `backup run-due`).
        #[arg(long, default_value_t = 60, value_name = "SECONDS")]
        backups_every: u64,
        /// Stamp results on a clock running this many times faster, starting 6 hours
        /// behind the wall clock (tests, demos).
        #[arg(long, hide = true)]
        time_scale: Option<u32>,
    },
    /// API tokens: scoped (read, operate), expiring, stored hashed, revocable.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Service-level reports from the stored probe results (with --server
    /// URL, from that server's `/v1/reports`, rendered here).
    Sla {
        #[command(subcommand)]
        command: SlaCommand,
    },
    /// Incidents opened by `careplane serve`: list, acknowledge, annotate,
    /// resolve. Acting needs tenant-operator of the incident's tenant,
    /// platform-operator or platform-admin (root on the host is the local
    /// root operator) and is audited; with --server URL it goes through
    /// that server's API as the signed-in user.
    Incident {
        #[command(subcommand)]
        command: IncidentCommand,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it once (it is stored only as a SHA-256 hash).
    Create {
        #[command(flatten)]
        files: Files,
        /// Who or what uses it (the audit log's actor: `token:<name>`).
        #[arg(long)]
        name: String,
        /// The service identity's role: read is viewer, operate is
        /// platform-operator (incident actions). People use their OIDC
        /// token instead (`careplane login`'s session works as a bearer).
        #[arg(long, value_parser = ["read", "operate"], default_value = "read")]
        scope: String,
        /// Lifetime, e.g. `30d`, `12h`, `90m`.
        #[arg(long, default_value = "90d")]
        ttl: String,
    },
    /// Tokens, without their secrets.
    List {
        #[command(flatten)]
        files: Files,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Revoke a token by id (from `token list`); takes effect at the next request.
    Revoke {
        #[command(flatten)]
        files: Files,
        id: String,
    },
}

#[derive(Subcommand)]
pub enum SlaCommand {
    /// Availability, downtime, error budget, incidents and credits per
    /// environment for one month.
    Report {
        #[command(flatten)]
        files: Files,
        /// `YYYY-MM`.
        #[arg(long)]
        month: String,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, value_enum, default_value = "html")]
        format: ReportFormat,
        /// Write here instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum IncidentCommand {
    /// Incidents, oldest first.
    List {
        #[command(flatten)]
        files: Files,
        /// Only open ones.
        #[arg(long)]
        open: bool,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Acknowledge: stops the acknowledge clock and the escalation.
    Ack {
        #[command(flatten)]
        files: Files,
        id: String,
    },
    /// Add a note.
    Note {
        #[command(flatten)]
        files: Files,
        id: String,
        text: String,
    },
    /// Resolve with a summary.
    Resolve {
        #[command(flatten)]
        files: Files,
        id: String,
        #[arg(long)]
        summary: String,
    },
}

/// `30d`, `12h`, `90m`, `45s`.
fn parse_ttl(s: &str) -> Result<jiff::SignedDuration> {
    let (n, unit) = s.split_at(s.len().saturating_sub(1));
    let n: i64 = n
        .parse()
        .with_context(|| format!("--ttl {s:?}: a number and d, h, m or s, e.g. 30d"))?;
    let secs = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => bail!("--ttl {s:?}: a number and d, h, m or s, e.g. 30d"),
    };
    Ok(jiff::SignedDuration::from_secs(n.saturating_mul(secs)))
}

/// `incident ack|note|resolve` on the host: the caller (root without a
/// session is the local root operator) passes the API's check —
/// `incident.update` on the incident's tenant — and the action is one audit
/// entry with that actor, refused, failed or succeeded, as through serve.
fn act_on_host(files: &Files, id: &str, action: Action) -> Result<careplane_sla::Incident> {
    use careplane_engine::careplane_audit::{Outcome, Status};
    let engine = careplane_target_local::engine(files.specs()?);
    let data = engine.data_dir().to_path_buf();
    let who = crate::access::caller(&engine);
    let tenant = incidents::load(&data)?
        .into_iter()
        .find(|i| i.id == id)
        .map(|i| i.tenant);
    let on = match &tenant {
        Some(t) => careplane_identity::Target::tenant(t, false),
        None => careplane_identity::Target::platform(false),
    };
    let name = match &action {
        Action::Acknowledge => "incident.ack",
        Action::Note(_) => "incident.note",
        Action::Resolve(_) => "incident.resolve",
    };
    let target = format!("incident {id}");
    let record = |status, message| {
        engine.audit_record_as(
            who.actor(),
            name,
            &target,
            tenant.as_deref(),
            serde_json::Value::Null,
            Outcome { status, message },
        )
    };
    let d = careplane_identity::authorize(&who, careplane_identity::Action::IncidentUpdate, &on);
    if !d.allowed {
        record(Status::Refused, Some(d.reason.clone()))?;
        bail!("refused: {}", d.reason);
    }
    // The incident names who acted as the server's API does; the local root
    // operator by the OS user behind it (sudo's too).
    let label = match who.auth.as_str() {
        "local-root" => format!("{} (local-root)", actor()),
        _ => format!("{} ({})", who.id, who.auth),
    };
    let r = incidents::act(&data, id, &label, &action, Timestamp::now());
    match &r {
        Ok(_) => record(Status::Succeeded, None)?,
        Err(e) => record(Status::Failed, Some(e.to_string()))?,
    }
    Ok(r?)
}

fn actor() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| format!("uid {}", unsafe { libc::getuid() }));
    format!("cli:{user}")
}

fn out(text: &str) -> Result<()> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    o.write_all(text.as_bytes())?;
    Ok(())
}

/// `sla report`'s output (to stdout or `file`), here and with --server.
pub fn write_report(
    reports: &[careplane_sla::MonthlyReport],
    format: ReportFormat,
    file: Option<PathBuf>,
) -> Result<()> {
    let bytes = match format {
        ReportFormat::Json => (careplane_sla::render_json(reports) + "\n").into_bytes(),
        ReportFormat::Html => careplane_sla::render_html(reports)?.into_bytes(),
        ReportFormat::Pdf => {
            careplane_server::report::render_pdf(&careplane_sla::render_html(reports)?)?
        }
    };
    match file {
        Some(f) => std::fs::write(&f, bytes).with_context(|| format!("writing {}", f.display())),
        None => {
            use std::io::Write as _;
            let mut o = std::io::stdout().lock();
            o.write_all(&bytes)
                .and_then(|_| o.flush())
                .context("writing the report")
        }
    }
}

/// `incident list`'s output, here and with --server.
pub fn print_incidents(all: &[careplane_sla::Incident], output: Output) -> Result<()> {
    if output == Output::Json {
        return out(&format!("{}\n", serde_json::to_string_pretty(all)?));
    }
    for i in all {
        let state = if let Some(r) = &i.resolved {
            format!("resolved {}", r.at)
        } else if let Some(a) = &i.acknowledged {
            format!("acknowledged by {}", a.actor)
        } else {
            "open".into()
        };
        out(&format!(
            "{}  {:?}  {}/{}  {} since {}  {state}\n",
            i.id, i.severity, i.tenant, i.environment, i.probe, i.started_at
        ))?;
    }
    Ok(())
}

pub fn run(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Serve {
            files,
            listen,
            print_systemd_unit,
            probe_interval,
            probe_timeout,
            concurrency,
            refresh,
            backups_every,
            time_scale,
            tls_cert,
            tls_key,
            tls_platform_ca,
        } => {
            let specs = files.specs()?;
            if !listen.ip().is_loopback() && !tls_platform_ca && tls_cert.is_none() {
                bail!(
                    "--listen {listen}: not loopback, and no TLS: pass --tls-platform-ca, or \
                     --tls-cert and --tls-key (API tokens must not cross a network in clear)"
                );
            }
            if print_systemd_unit {
                let exe = std::env::current_exe().context("locating the careplane binary")?;
                let data = careplane_engine::Engine::data_dir_of(&specs);
                out(&careplane_server::systemd_unit(
                    &exe,
                    &files.files,
                    &data,
                    listen,
                ))?;
                return Ok(ExitCode::SUCCESS);
            }
            if probe_interval == 0 || probe_timeout == 0 || refresh == 0 {
                bail!("--probe-interval, --probe-timeout and --refresh must be at least 1 second");
            }
            let mut opts = careplane_server::Options::new(listen);
            opts.probe_interval = Duration::from_secs(probe_interval);
            opts.probe_timeout = Duration::from_secs(probe_timeout);
            opts.concurrency = concurrency;
            opts.refresh = Duration::from_secs(refresh);
            opts.backups_every = Duration::from_secs(backups_every);
            opts.tls = tls_cert
                .zip(tls_key)
                .map(|(c, k)| careplane_server::Tls::Files(c, k));
            if let Some(s) = time_scale {
                opts.clock =
                    careplane_server::scaled_clock(s.max(1), Duration::from_secs(6 * 3600));
            }
            let engine = careplane_target_local::engine(specs);
            if tls_platform_ca {
                let hosts = vec![listen.ip().to_string()];
                let (cert, key) = engine
                    .service_certificate(
                        &careplane_engine::host_principal(),
                        "careplane serve",
                        &hosts,
                    )
                    .context("a certificate for the API from the platform CA")?;
                opts.tls = Some(careplane_server::Tls::Pem { cert, key });
            }
            careplane_server::run(engine, opts)?;
        }
        Command::Token { command } => match command {
            TokenCommand::Create {
                files,
                name,
                scope,
                ttl,
            } => {
                let scope: Scope = scope.parse().map_err(anyhow::Error::msg)?;
                let t = tokens::create(
                    &files.data_dir()?,
                    &name,
                    scope,
                    parse_ttl(&ttl)?,
                    Timestamp::now(),
                )?;
                eprintln!(
                    "token {} ({:?}, expires {}): shown once, keep it secret",
                    t.record.id, t.record.scope, t.record.expires_at
                );
                out(&format!("{}\n", tokens::reveal(&t)))?;
            }
            TokenCommand::List { files, output } => {
                let all = tokens::load(&files.data_dir()?)?;
                if output == Output::Json {
                    let v: Vec<_> = all
                        .iter()
                        .map(|t| {
                            serde_json::json!({
                                "id": t.id, "name": t.name, "scope": t.scope,
                                "createdAt": t.created_at, "expiresAt": t.expires_at,
                                "revokedAt": t.revoked_at,
                            })
                        })
                        .collect();
                    out(&format!("{}\n", serde_json::to_string_pretty(&v)?))?;
                } else {
                    let now = Timestamp::now();
                    for t in all {
                        let state = match t.revoked_at {
                            Some(at) => format!("revoked {at}"),
                            None if t.expires_at <= now => format!("expired {}", t.expires_at),
                            None => format!("expires {}", t.expires_at),
                        };
                        out(&format!(
                            "{}  {:<8} {}  {}\n",
                            t.id,
                            format!("{:?}", t.scope).to_lowercase(),
                            t.name,
                            state
                        ))?;
                    }
                }
            }
            TokenCommand::Revoke { files, id } => {
                let t = tokens::revoke(&files.data_dir()?, &id, Timestamp::now())?;
                out(&format!("revoked token {} ({})\n", t.id, t.name))?;
            }
        },
        Command::Sla {
            command:
                SlaCommand::Report {
                    files,
                    month,
                    tenant,
                    format,
                    out: file,
                },
        } => {
            let specs = files.specs()?;
            let month = careplane_sla::Month::parse(&month)?;
            let data = careplane_engine::Engine::data_dir_of(&specs);
            let (_snap, mut store) = careplane_server::report::open_snapshot(&data)?;
            let inc = incidents::load(&data)?;
            let reports = careplane_server::report::reports(
                &mut store,
                &specs,
                &inc,
                month,
                tenant.as_deref(),
                Timestamp::now(),
            )?;
            write_report(&reports, format, file)?;
        }
        Command::Incident { command } => match command {
            IncidentCommand::List {
                files,
                open,
                output,
            } => {
                let all: Vec<_> = incidents::load(&files.data_dir()?)?
                    .into_iter()
                    .filter(|i| !open || i.is_open())
                    .collect();
                print_incidents(&all, output)?;
            }
            IncidentCommand::Ack { files, id } => {
                let i = act_on_host(&files, &id, Action::Acknowledge)?;
                out(&format!("acknowledged {}\n", i.id))?;
            }
            IncidentCommand::Note { files, id, text } => {
                let i = act_on_host(&files, &id, Action::Note(text))?;
                out(&format!("noted on {}\n", i.id))?;
            }
            IncidentCommand::Resolve { files, id, summary } => {
                let i = act_on_host(&files, &id, Action::Resolve(summary))?;
                out(&format!("resolved {}\n", i.id))?;
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}
