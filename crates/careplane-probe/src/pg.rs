//! PostgreSQL as the tenant's application connects: TLS verified against the platform CA,
//! SCRAM with channel binding, the tenant's own role. `SELECT 1`, then how close the role is
//! to its connection limit.

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::config::{ChannelBinding, SslMode};

use crate::{millis, Failure, Found, Result, StepTiming};

/// tokio-postgres displays a server error as just "db error": name the server's message.
fn pg_err(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{}: {}", d.code().code(), d.message()),
        None => e.to_string(),
    }
}

#[derive(Clone, Debug)]
pub struct PgCheck {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub role: String,
    pub password: SecretString,
    pub ca_pem: String,
}

impl PgCheck {
    /// Connects as the tenant's application does; the connection task is aborted when the
    /// returned guard is dropped.
    async fn connect(&self) -> Result<(tokio_postgres::Client, AbortOnDrop, StepTiming, String)> {
        let tls = crate::client_tls(&self.ca_pem, &[]).map_err(Failure::Unknown)?;
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new((*tls).clone());
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&self.host)
            .port(self.port)
            .user(&self.role)
            .password(self.password.expose_secret())
            .dbname(&self.database)
            .ssl_mode(SslMode::Require)
            .channel_binding(ChannelBinding::Require)
            .application_name("careplane-probe")
            .connect_timeout(Duration::from_secs(10));
        let at = format!(
            "{}:{} database {} as {}",
            self.host, self.port, self.database, self.role
        );
        let t = Instant::now();
        let (client, conn) = cfg
            .connect(tls)
            .await
            .map_err(|e| Failure::Down(format!("connecting to {at}: {}", pg_err(&e))))?;
        let conn = AbortOnDrop(tokio::spawn(conn));
        let step = StepTiming {
            name: "connect".into(),
            ms: millis(t.elapsed()),
            ok: true,
        };
        Ok((client, conn, step, at))
    }

    /// Odoo's scheduled actions as the tenant sees them: any active one more than
    /// [`CRON_GRACE_MINUTES`] past its `nextcall` means the cron worker is stuck or gone;
    /// where OCA's `queue_job` is installed, jobs waiting that long are a backlog. Down with
    /// the counts; up with "no ir_cron" on a database that is not Odoo's.
    pub(crate) async fn run_cron(&self) -> Result<Found> {
        let (client, _conn, connect, at) = self.connect().await?;
        let t = Instant::now();
        // Odoo stores nextcall as UTC without a zone.
        let row = client
            .query_one(
                "SELECT pg_catalog.to_regclass('public.ir_cron') IS NOT NULL,                         pg_catalog.to_regclass('public.queue_job') IS NOT NULL",
                &[],
            )
            .await
            .map_err(|e| Failure::Down(format!("{at}: {}", pg_err(&e))))?;
        let (has_cron, has_queue): (bool, bool) = (row.get(0), row.get(1));
        let mut problems = Vec::new();
        if has_cron {
            let r = client
                .query_one(
                    &format!(
                        "SELECT count(*)::int8, min(nextcall)::text FROM public.ir_cron \
                         WHERE active AND nextcall < (pg_catalog.now() AT TIME ZONE 'UTC') \
                               - interval '{CRON_GRACE_MINUTES} minutes'"
                    ),
                    &[],
                )
                .await
                .map_err(|e| Failure::Down(format!("{at}: reading ir_cron: {}", pg_err(&e))))?;
            let (n, oldest): (i64, Option<String>) = (r.get(0), r.get(1));
            if n > 0 {
                problems.push(format!(
                    "{n} scheduled action(s) overdue, the oldest due {} UTC",
                    oldest.unwrap_or_default()
                ));
            }
        }
        if has_queue {
            let r = client
                .query_one(
                    &format!(
                        "SELECT count(*)::int8 FROM public.queue_job \
                         WHERE state IN ('pending', 'enqueued') \
                           AND date_created < (pg_catalog.now() AT TIME ZONE 'UTC') \
                               - interval '{CRON_GRACE_MINUTES} minutes'"
                    ),
                    &[],
                )
                .await
                .map_err(|e| Failure::Down(format!("{at}: reading queue_job: {}", pg_err(&e))))?;
            let n: i64 = r.get(0);
            if n > 0 {
                problems.push(format!("{n} queued job(s) waiting"));
            }
        }
        let step = StepTiming {
            name: "cron".into(),
            ms: millis(t.elapsed()),
            ok: problems.is_empty(),
        };
        if !problems.is_empty() {
            return Err(Failure::Down(problems.join("; ")));
        }
        Ok(Found {
            steps: vec![connect, step],
            ..Found::default()
        })
    }

    pub(crate) async fn run(&self) -> Result<Found> {
        let (client, _conn, connect, at) = self.connect().await?;
        let mut steps = vec![connect];
        let t = Instant::now();
        let r = async {
            client
                .simple_query("SELECT 1")
                .await
                .map_err(|e| Failure::Down(format!("{at}: SELECT 1: {}", pg_err(&e))))?;
            steps.push(StepTiming {
                name: "select".into(),
                ms: millis(t.elapsed()),
                ok: true,
            });
            // pg_stat_activity is hidden from tenants on careplane's clusters (it names other
            // databases); the per-backend stat functions give the role's own session count.
            let row = client
                .query_one(
                    "SELECT (SELECT count(*) FROM pg_catalog.pg_stat_get_backend_idset() AS b \
                             WHERE pg_catalog.pg_stat_get_backend_userid(b) = \
                                   (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user))::int8, \
                            (SELECT rolconnlimit FROM pg_catalog.pg_roles \
                             WHERE rolname = current_user)::int8, \
                            current_setting('max_connections')::int8",
                    &[],
                )
                .await
                .map_err(|e| Failure::Down(format!("{at}: reading connection counts: {}", pg_err(&e))))?;
            let (used, limit, max): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
            let limit = if limit > 0 { limit } else { max };
            Ok::<_, Failure>((used * 1000 / limit.max(1)) as u32)
        }
        .await;
        drop(client);
        let saturation = r?;
        Ok(Found {
            steps,
            saturation_permille: Some(saturation),
            ..Found::default()
        })
    }
}

/// Minutes past `nextcall` before a scheduled action counts as overdue (Odoo's cron worker
/// polls every minute; a long job delays the others).
pub const CRON_GRACE_MINUTES: u32 = 15;

/// Aborts the connection task when the check ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<std::result::Result<(), tokio_postgres::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
