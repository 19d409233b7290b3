//! Set-level rules about what careplane derives from the specs: names that
//! two spec locations would share. See [`crate::names`].

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::decode::{key, quoted};
use crate::diagnostic::Diagnostic;
use crate::load::ParsedDocument;
use crate::model::{AnyDocument, Document, TenantSpec};
use crate::names::env_db_name;
use crate::validate::is_dns_label;
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
