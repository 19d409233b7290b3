//! PostgreSQL access the way Odoo's psycopg2/libpq does it: the `db_*`
//! settings, `PGPASSWORD` when there is no password, libpq's `sslmode`
//! semantics (with `PGSSLROOTCERT` or `~/.postgresql/root.crt` as the root
//! certificate), `application_name = odoo-<pid>`; plus the start-up steps
//! of Odoo that touch the `postgres` maintenance database.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use postgres::config::SslMode as PgSslMode;
use postgres::error::SqlState;
use postgres::{Client, NoTls};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::log;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The connection settings (`db_host`, `db_port`, `db_user`, password,
/// `db_sslmode`).
#[derive(Debug, Clone)]
pub struct PgSettings {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub sslmode: SslMode,
    pub application_name: String,
}

/// A failed database operation, described like psycopg2 would.
#[derive(Debug)]
pub struct DbError {
    /// The Python exception class, e.g. `psycopg2.OperationalError`.
    pub class: &'static str,
    pub message: String,
    pub code: Option<SqlState>,
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.class, self.message)
    }
}

impl DbError {
    /// An error from a query on an open connection.
    pub fn query(e: &postgres::Error) -> DbError {
        let code = e.code().cloned();
        let class = match code {
            Some(SqlState::INSUFFICIENT_PRIVILEGE) => "psycopg2.errors.InsufficientPrivilege",
            Some(SqlState::UNDEFINED_TABLE) => "psycopg2.errors.UndefinedTable",
            _ if e.as_db_error().is_none() => "psycopg2.OperationalError",
            _ => "psycopg2.DatabaseError",
        };
        let message = match e.as_db_error() {
            Some(db) => db.message().to_string(),
            None => chain(e),
        };
        DbError {
            class,
            message,
            code,
        }
    }
}

/// An error and its sources, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The root certificate file libpq would use: `PGSSLROOTCERT`, else
/// `~/.postgresql/root.crt`.
fn root_cert_path() -> PathBuf {
    if let Some(p) = std::env::var_os("PGSSLROOTCERT").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    PathBuf::from(home).join(".postgresql/root.crt")
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any certificate but still checks the handshake signatures:
/// libpq's `require`/`prefer` without a root certificate.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Checks the chain against the roots but not the host name: `verify-ca`.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The rustls connector for a TLS-using `sslmode`. As libpq does, an
/// existing root certificate file makes `allow`/`prefer`/`require` verify
/// the chain too; `verify-*` without one is an error.
fn tls_connector(mode: SslMode) -> Result<MakeRustlsConnect, String> {
    let path = root_cert_path();
    let verify_name = mode == SslMode::VerifyFull;
    let verifier: Arc<dyn ServerCertVerifier> = if path.exists() {
        let pem = std::fs::read(&path).map_err(|e| {
            format!(
                "could not read root certificate file \"{}\": {e}",
                path.display()
            )
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| {
                format!(
                    "could not read root certificate file \"{}\": {e}",
                    path.display()
                )
            })?;
            roots.add(cert).map_err(|e| {
                format!(
                    "could not load root certificate file \"{}\": {e}",
                    path.display()
                )
            })?;
        }
        if roots.is_empty() {
            return Err(format!(
                "could not read root certificate file \"{}\": no certificate found",
                path.display()
            ));
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| format!("could not load root certificates: {e}"))?;
        if verify_name {
            webpki
        } else {
            Arc::new(ChainOnly(webpki))
        }
    } else if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) {
        return Err(format!(
            "root certificate file \"{}\" does not exist\nEither provide the file, use the system's \
             trusted roots with sslrootcert=system, or change sslmode to disable server certificate verification.",
            path.display()
        ));
    } else {
        Arc::new(AcceptAnyCert(provider()))
    };
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("configuring TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

impl PgSettings {
    fn where_(&self) -> String {
        if self.host.starts_with('/') {
            format!(
                "connection to server on socket \"{}/.s.PGSQL.{}\" failed",
                self.host, self.port
            )
        } else {
            format!(
                "connection to server at \"{}\", port {} failed",
                self.host, self.port
            )
        }
    }

    fn connect_error(&self, e: &postgres::Error) -> DbError {
        let detail = match e.as_db_error() {
            Some(db) => format!("{}:  {}", db.severity(), db.message()),
            None => chain(e),
        };
        DbError {
            class: "psycopg2.OperationalError",
            message: format!("{}: {detail}", self.where_()),
            code: e.code().cloned(),
        }
    }

    fn config(&self, dbname: &str, ssl: PgSslMode) -> postgres::Config {
        let mut cfg = postgres::Config::new();
        cfg.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(dbname)
            .application_name(&self.application_name)
            .ssl_mode(ssl)
            .connect_timeout(Duration::from_secs(30));
        if let Some(p) = &self.password {
            cfg.password(p);
        }
        cfg
    }

    /// Opens a connection to `dbname`.
    pub fn connect(&self, dbname: &str) -> Result<Client, DbError> {
        let tls_error = |msg: String| DbError {
            class: "psycopg2.OperationalError",
            message: format!("{}: {msg}", self.where_()),
            code: None,
        };
        let result = match self.sslmode {
            SslMode::Disable => self.config(dbname, PgSslMode::Disable).connect(NoTls),
            // libpq's allow: plain first, TLS if the server refuses that.
            SslMode::Allow => match self.config(dbname, PgSslMode::Disable).connect(NoTls) {
                Ok(c) => Ok(c),
                Err(_) => {
                    let tls = tls_connector(self.sslmode).map_err(tls_error)?;
                    self.config(dbname, PgSslMode::Require).connect(tls)
                }
            },
            SslMode::Prefer => {
                let tls = tls_connector(self.sslmode).map_err(tls_error)?;
                self.config(dbname, PgSslMode::Prefer).connect(tls)
            }
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                let tls = tls_connector(self.sslmode).map_err(tls_error)?;
                self.config(dbname, PgSslMode::Require).connect(tls)
            }
        };
        result.map_err(|e| self.connect_error(&e))
    }
}

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Odoo's `_create_empty_database(name)`, run by `odoo-bin` at start for
/// every database in `db_name`: connect to the `postgres` database, create
/// the database if absent (`InsufficientPrivilege` is logged and ignored).
/// Returns whether the database was created (Odoo then installs `base`).
/// Errors are fatal in Odoo (uncaught exception, exit 1).
pub fn create_empty_database(pg: &PgSettings, name: &str, template: &str) -> Result<bool, DbError> {
    let mut c = pg.connect("postgres")?;
    // Odoo runs the check and the CREATE inside one `except
    // InsufficientPrivilege` (odoo/cli/server.py): a role that may not read
    // pg_database or create databases gets an INFO line and Odoo goes on.
    let skip = |e: postgres::Error| -> Result<bool, DbError> {
        let err = DbError::query(&e);
        if err.code != Some(SqlState::INSUFFICIENT_PRIVILEGE) {
            return Err(err);
        }
        log::info(
            None,
            "odoo",
            &format!(
                "Could not determine if database {name} exists, skipping auto-creation: {}",
                err.message
            ),
        );
        Ok(false)
    };
    let rows = match c.query(
        "SELECT datname FROM pg_database WHERE datname = $1",
        &[&name],
    ) {
        Ok(rows) => rows,
        Err(e) => return skip(e),
    };
    if !rows.is_empty() {
        return Ok(false);
    }
    let collate = if template == "template0" {
        "LC_COLLATE 'C'"
    } else {
        ""
    };
    let sql = format!(
        "CREATE DATABASE {} ENCODING 'unicode' {collate} TEMPLATE {}",
        quote_ident(name),
        quote_ident(template)
    );
    if let Err(e) = c.batch_execute(&sql) {
        return skip(e);
    }
    drop(c);
    let mut c = pg.connect(name)?;
    if let Err(e) = c.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_trgm") {
        log::warning(
            None,
            "odoo.service.db",
            &format!(
                "Unable to create PostgreSQL extensions : {}",
                DbError::query(&e).message
            ),
        );
    }
    if let Err(e) = c.batch_execute("GRANT CREATE ON SCHEMA PUBLIC TO PUBLIC") {
        log::warning(
            None,
            "odoo.service.db",
            &format!(
                "Unable to make public schema public-accessible: {}",
                DbError::query(&e).message
            ),
        );
    }
    Ok(true)
}

/// Odoo's `list_dbs(force=True)`: without `dbfilter` but with `db_name`,
/// the `db_name` list; otherwise the databases owned by the user, read from
/// the `postgres` database (`[]` when that fails).
pub fn list_dbs(
    pg: &PgSettings,
    dbfilter: Option<&str>,
    db_names: &[String],
    template: &str,
) -> Vec<String> {
    if dbfilter.is_none() && !db_names.is_empty() {
        let mut dbs = db_names.to_vec();
        dbs.sort();
        return dbs;
    }
    let query = "SELECT datname FROM pg_database \
                 WHERE datdba = (SELECT usesysid FROM pg_user WHERE usename = current_user) \
                 AND NOT datistemplate AND datallowconn AND datname <> ALL($1) ORDER BY datname";
    let excluded = vec!["postgres".to_string(), template.to_string()];
    match pg.connect("postgres") {
        Ok(mut c) => match c.query(query, &[&excluded]) {
            Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
            Err(e) => {
                log::error(
                    None,
                    "odoo.service.db",
                    &format!(
                        "Listing databases failed:\n{}",
                        log::traceback(&DbError::query(&e).to_string())
                    ),
                );
                Vec::new()
            }
        },
        Err(_) => Vec::new(),
    }
}

/// Odoo's `db_filter(dbs, host)`: `dbfilter` (with `%h` = host, `%d` = its
/// first label, `www.` dropped) matched at the start of each name, as
/// Python's `re.match` does; without it, `db_name` restricts the list.
pub fn db_filter(
    dbs: &[String],
    host: &str,
    dbfilter: Option<&str>,
    db_names: &[String],
) -> Vec<String> {
    if let Some(filter) = dbfilter {
        let host = host.split(':').next().unwrap_or("");
        let host = host.strip_prefix("www.").unwrap_or(host);
        let domain = host.split('.').next().unwrap_or("");
        let pattern = filter
            .replace("%h", &regex::escape(host))
            .replace("%d", &regex::escape(domain));
        return match regex::Regex::new(&format!(r"\A(?:{pattern})")) {
            Ok(re) => dbs.iter().filter(|d| re.is_match(d)).cloned().collect(),
            Err(e) => {
                log::error(
                    None,
                    "odoo.http",
                    &format!("invalid dbfilter {filter:?}: {e}"),
                );
                Vec::new()
            }
        };
    }
    if !db_names.is_empty() {
        let mut out: Vec<String> = dbs
            .iter()
            .filter(|d| db_names.contains(d))
            .cloned()
            .collect();
        out.sort();
        out.dedup();
        return out;
    }
    dbs.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn dbfilter_like_python_re_match() {
        let dbs = v(&["acme", "acme_test", "other"]);
        assert_eq!(db_filter(&dbs, "x", Some("^acme$"), &[]), v(&["acme"]));
        // re.match anchors at the start only.
        assert_eq!(
            db_filter(&dbs, "x", Some("acme"), &[]),
            v(&["acme", "acme_test"])
        );
        assert_eq!(db_filter(&dbs, "x", Some("cme"), &[]), Vec::<String>::new());
        assert_eq!(
            db_filter(&dbs, "www.acme.example.com:8069", Some("^%d$"), &[]),
            v(&["acme"])
        );
        assert_eq!(db_filter(&dbs, "other", Some("%h"), &[]), v(&["other"]));
        assert_eq!(
            db_filter(&dbs, "x", None, &v(&["other", "nope"])),
            v(&["other"])
        );
        assert_eq!(db_filter(&dbs, "x", None, &[]), dbs);
    }

    #[test]
    fn verify_modes_need_a_root_certificate() {
        // Only this test reads PGSSLROOTCERT.
        std::env::set_var("PGSSLROOTCERT", "/nonexistent/root.crt");
        let err = tls_connector(SslMode::VerifyFull).err().expect("must fail");
        assert!(err.contains("root certificate file \"/nonexistent/root.crt\" does not exist"));
        assert!(tls_connector(SslMode::Require).is_ok());
    }
}
