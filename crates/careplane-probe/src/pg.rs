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
    pub(crate) async fn run(&self) -> Result<Found> {
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
        let conn = tokio::spawn(conn);
        let mut steps = vec![StepTiming {
            name: "connect".into(),
            ms: millis(t.elapsed()),
            ok: true,
        }];
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
        conn.abort();
        let saturation = r?;
        Ok(Found {
            steps,
            saturation_permille: Some(saturation),
            ..Found::default()
        })
    }
}
