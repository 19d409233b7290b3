//! Set-level rules about what careplane derives from the specs: names that
//! two spec locations would share, clusters whose roles may open more
//! connections than they can serve, and socket paths too long to use. See
//! [`crate::names`] and [`crate::connections`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use crate::connections::{budget, effective_sizing};
use crate::decode::{key, quoted};
use crate::diagnostic::Diagnostic;
use crate::load::ParsedDocument;
use crate::model::{AnyDocument, Document, PlatformSpec, TenantSpec};
use crate::names::{env_db_name, pg_scope};
use crate::validate::{absolute_data_dir, is_dns_label};
use crate::yaml::{path_string, Pos, Seg};

/// `file:line:column`.
fn at(file: &Path, pos: Pos) -> String {
    format!("{}:{}:{}", file.display(), pos.line, pos.column)
}

fn env_name_path(i: usize) -> [Seg; 4] {
    [key("spec"), key("environments"), Seg::Index(i), key("name")]
}

/// One tenant environment, with where its name is written.
struct EnvAt<'a> {
    file: &'a Path,
    tenant: &'a str,
    env: &'a str,
    pos: Pos,
}

/// An environment, its tenant's document and its index there.
type Env<'a> = (EnvAt<'a>, &'a Document<TenantSpec>, usize);

/// Every environment of every tenant document (the first document of each
/// tenant name only: duplicates are reported elsewhere) whose names are
/// valid (invalid ones are reported elsewhere too).
fn environments<'a>(docs: &[(&'a Path, &'a ParsedDocument)]) -> Vec<Env<'a>> {
    let mut out = Vec::new();
    let mut tenants = HashSet::new();
    for (file, d) in docs {
        let AnyDocument::Tenant(t) = &d.document else {
            continue;
        };
        let tenant = t.metadata.name.as_str();
        if !is_dns_label(tenant) || !tenants.insert(tenant) {
            continue;
        }
        for (i, env) in t.spec.environments.iter().enumerate() {
            if !is_dns_label(&env.name) {
                continue;
            }
            let pos = d.tree.value_pos(&env_name_path(i));
            out.push((
                EnvAt {
                    file,
                    tenant,
                    env: &env.name,
                    pos,
                },
                t,
                i,
            ));
        }
    }
    out
}

/// Two (tenant, environment) pairs must not make the same database, role and
/// Redis user name `<tenant>-<environment>`.
pub(crate) fn check_names(docs: &[(&Path, &ParsedDocument)], diags: &mut Vec<Diagnostic>) {
    let mut first: HashMap<String, EnvAt<'_>> = HashMap::new();
    for (e, _, i) in environments(docs) {
        let name = env_db_name(e.tenant, e.env);
        match first.get(&name) {
            Some(f) if (f.tenant, f.env) != (e.tenant, e.env) => diags.push(
                Diagnostic::new(
                    e.file,
                    e.pos.line,
                    e.pos.column,
                    path_string(&env_name_path(i)),
                    format!(
                        "tenant {} environment {} at {} and tenant {} environment {} at {} \
                         both become database, role and Redis user {}",
                        quoted(f.tenant),
                        quoted(f.env),
                        at(f.file, f.pos),
                        quoted(e.tenant),
                        quoted(e.env),
                        at(e.file, e.pos),
                        quoted(&name)
                    ),
                )
                .with_help(
                    "\"<tenant>-<environment>\" names must be unique on a platform; \
                     rename one of the environments or tenants",
                ),
            ),
            Some(_) => {}
            None => {
                first.insert(name, e);
            }
        }
    }
}

/// The connection limits of each cluster's roles must add up to no more than
/// the cluster can serve.
pub(crate) fn check_connection_budget(
    docs: &[(&Path, &ParsedDocument)],
    diags: &mut Vec<Diagnostic>,
) {
    let mut platforms = docs.iter().filter_map(|(file, d)| match &d.document {
        AnyDocument::Platform(p) => Some((*file, *d, p)),
        _ => None,
    });
    let (Some((pfile, pdoc, platform)), None) = (platforms.next(), platforms.next()) else {
        return;
    };
    let platform: &Document<PlatformSpec> = platform;
    // A setting that is not a number is reported with the platform.
    let Ok(budget) = budget(&platform.spec.postgres.settings) else {
        return;
    };
    let usable = budget.usable();
    let mut clusters: BTreeMap<String, Vec<(EnvAt<'_>, u32)>> = BTreeMap::new();
    for (e, t, i) in environments(docs) {
        let limit = effective_sizing(&t.spec, &t.spec.environments[i]).db_connections;
        clusters
            .entry(pg_scope(e.tenant, &t.spec))
            .or_default()
            .push((e, limit));
    }
    for (scope, mut roles) in clusters {
        let total: u64 = roles.iter().map(|(_, n)| u64::from(*n)).sum();
        if total <= u64::from(usable) {
            continue;
        }
        roles.sort_by_key(|r| std::cmp::Reverse(r.1));
        const SHOWN: usize = 5;
        let mut list: Vec<String> = roles
            .iter()
            .take(SHOWN)
            .map(|(e, n)| {
                format!(
                    "{} {n} ({})",
                    env_db_name(e.tenant, e.env),
                    at(e.file, e.pos)
                )
            })
            .collect();
        if roles.len() > SHOWN {
            list.push(format!("and {} more", roles.len() - SHOWN));
        }
        // Point at max_connections when it is set, else at the nearest parent.
        let setting = platform
            .spec
            .postgres
            .settings
            .keys()
            .rev()
            .find(|k| k.trim().eq_ignore_ascii_case("max_connections"))
            .cloned()
            .unwrap_or_else(|| "max_connections".into());
        let path = [key("spec"), key("postgres"), key("settings"), key(&setting)];
        let (node, found) = pdoc.tree.find(&path);
        let shown_path = if found {
            path_string(&path)
        } else {
            "spec.postgres.settings.max_connections".to_string()
        };
        diags.push(
            Diagnostic::new(
                pfile,
                node.pos.line,
                node.pos.column,
                shown_path,
                format!(
                    "PostgreSQL cluster {} is over-committed: the connection limits of its {} \
                     roles add up to {total}, more than the {usable} it can serve",
                    quoted(&scope),
                    roles.len()
                ),
            )
            .with_help(format!(
                "{}; largest limits: {}; raise max_connections here, or lower \
                 sizing.dbConnections or workers (a role without dbConnections gets \
                 2 per worker + 3 per cron thread + 6)",
                budget.explain(),
                list.join(", ")
            )),
        );
    }
}

/// Longest unix socket path (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Each cluster's unix socket, `<dataDir>/pg/<scope>/run/.s.PGSQL.<port>`,
/// must fit a unix socket path, or PostgreSQL cannot start.
pub(crate) fn check_socket_paths(docs: &[(&Path, &ParsedDocument)], diags: &mut Vec<Diagnostic>) {
    let mut platforms = docs.iter().filter_map(|(file, d)| match &d.document {
        AnyDocument::Platform(p) => Some((*file, p)),
        _ => None,
    });
    let (Some((pfile, platform)), None) = (platforms.next(), platforms.next()) else {
        return;
    };
    if platform.spec.data_dir.as_os_str().is_empty() {
        return;
    }
    let dir = absolute_data_dir(pfile, &platform.spec.data_dir);
    let longest = docs
        .iter()
        .filter_map(|(_, d)| match &d.document {
            AnyDocument::Tenant(t) if is_dns_label(&t.metadata.name) => {
                Some(pg_scope(&t.metadata.name, &t.spec))
            }
            _ => None,
        })
        .max_by_key(String::len);
    let Some(scope) = longest else { return };
    // Ports careplane allocates have at most 5 digits.
    let socket = dir
        .join("pg")
        .join(&scope)
        .join("run")
        .join(".s.PGSQL.65535");
    let len = socket.as_os_str().len();
    if len <= MAX_SOCKET_PATH {
        return;
    }
    let path = [key("spec"), key("dataDir")];
    let Some(pdoc) = docs
        .iter()
        .find(|(_, d)| matches!(d.document, AnyDocument::Platform(_)))
    else {
        return;
    };
    let pos = pdoc.1.tree.value_pos(&path);
    diags.push(
        Diagnostic::new(
            pfile,
            pos.line,
            pos.column,
            path_string(&path),
            format!(
                "dataDir {} is too long: the socket of PostgreSQL cluster {} would be {} \
                 ({len} bytes), over the {MAX_SOCKET_PATH}-byte limit of unix socket paths",
                quoted(&dir.display().to_string()),
                quoted(&scope),
                socket.display()
            ),
        )
        .with_help(format!(
            "use a dataDir of at most {} bytes",
            dir.as_os_str().len() - (len - MAX_SOCKET_PATH)
        )),
    );
}

/// `careplaneKey: false` promises that only the customer can read a
/// tenant's backups. A shared tenant's database is backed up as WAL and
/// base backups of the shared cluster, in a repository that holds every
/// shared tenant's data and so is encrypted to careplane's key: the promise
/// could not be kept, so it is refused at the tenant.
pub(crate) fn check_customer_keys(docs: &[(&Path, &ParsedDocument)], diags: &mut Vec<Diagnostic>) {
    let default_tier = docs.iter().find_map(|(_, d)| match &d.document {
        AnyDocument::Platform(p) => p.spec.defaults.service_tier.clone(),
        _ => None,
    });
    let tier_policy = |tier: &str| {
        docs.iter().find_map(|(_, d)| match &d.document {
            AnyDocument::ServiceTier(t) if t.metadata.name == tier => t.spec.backup_policy.clone(),
            _ => None,
        })
    };
    let customer_only = |policy: &str| {
        docs.iter().any(|(_, d)| {
            matches!(&d.document, AnyDocument::BackupPolicy(b)
                if b.metadata.name == policy && b.spec.careplane_key == Some(false))
        })
    };
    for (file, d) in docs {
        let AnyDocument::Tenant(t) = &d.document else {
            continue;
        };
        if t.spec.tenancy != crate::model::Tenancy::Shared {
            continue;
        }
        let Some(tier) = t.spec.service_tier.clone().or(default_tier.clone()) else {
            continue;
        };
        let Some(policy) = tier_policy(&tier).filter(|p| customer_only(p)) else {
            continue;
        };
        let path = [key("spec"), key("tenancy")];
        let pos = d.tree.value_pos(&path);
        diags.push(
            Diagnostic::new(
                file,
                pos.line,
                pos.column,
                path_string(&path),
                format!(
                    "tenant {} is shared, but its service tier {} backs up with BackupPolicy {}, \
                     which has careplaneKey: false: a shared tenant's database is backed up in \
                     the shared cluster's repository, which holds every shared tenant's data \
                     and is encrypted to careplane's key",
                    quoted(&t.metadata.name),
                    quoted(&tier),
                    quoted(&policy)
                ),
            )
            .with_help(
                "use `tenancy: dedicated-db` (its own cluster, whose WAL and base backups are \
                 encrypted to the policy's recipients only), or remove `careplaneKey: false`",
            ),
        );
    }
}
