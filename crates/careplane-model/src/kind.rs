/// What kind of thing a resource is; decides which driver call applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// The platform's certificate authority (signs every server certificate).
    Ca,
    PgCluster,
    PgDatabase,
    RedisServer,
    RedisUser,
    /// A database initialized once per (cluster, Odoo, modules) that
    /// environments are cloned from.
    OdooTemplate,
    /// An environment's Odoo: configuration, database content, supervised
    /// web and cron processes.
    OdooEnv,
    /// The platform's HTTPS reverse proxy in front of every environment.
    Ingress,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Ca,
        Kind::PgCluster,
        Kind::PgDatabase,
        Kind::RedisServer,
        Kind::RedisUser,
        Kind::OdooTemplate,
        Kind::OdooEnv,
        Kind::Ingress,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ca => "ca",
            Kind::PgCluster => "pg-cluster",
            Kind::PgDatabase => "pg-database",
            Kind::RedisServer => "redis-server",
            Kind::RedisUser => "redis-user",
            Kind::OdooTemplate => "odoo-template",
            Kind::OdooEnv => "odoo-env",
            Kind::Ingress => "ingress",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Display order among resources with no dependency between them (the
    /// plan's order is by [`crate::Props::needs`] first): servers before
    /// what lives on them, so plans read top-down as they always have.
    pub fn rank(self) -> u8 {
        match self {
            Kind::Ca => 0,
            Kind::PgCluster | Kind::RedisServer => 1,
            Kind::PgDatabase | Kind::RedisUser => 2,
            Kind::OdooTemplate => 3,
            Kind::OdooEnv => 4,
            Kind::Ingress => 5,
        }
    }
}
