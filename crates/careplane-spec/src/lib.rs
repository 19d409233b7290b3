//! The careplane spec model.
//!
//! Specs are YAML documents in the Kubernetes style (`apiVersion`, `kind`,
//! `metadata`, `spec`). This crate owns their types, turns files into a
//! validated [`SpecSet`], and produces the JSON Schema editors use. It depends
//! on nothing else of careplane's: everything downstream reads specs through
//! the types here.
//!
//! Loading is all-or-nothing and reports every problem at once: [`load`]
//! returns either a [`SpecSet`] in which every reference resolves, or
//! [`Diagnostics`] naming each problem by file, line, column and field path,
//! with a "did you mean" where one is likely.
//!
//! ```
//! use std::path::Path;
//!
//! let text = "apiVersion: careplane.dev/v1alpha1\nkind: Tenant\nmetadata: {name: a}\nspec: {environmets: []}\n";
//! let err = careplane_spec::load_str(Path::new("t.yaml"), text).unwrap_err();
//! assert!(err.to_string().contains("t.yaml:4:8: spec.environmets: unknown field \"environmets\""));
//! ```

pub mod connections;
mod decode;
mod derived;
mod diagnostic;
pub mod kubernetes;
mod load;
pub mod model;
pub mod names;
mod schema;
mod suggest;
mod validate;
mod yaml;

pub use diagnostic::{Diagnostic, Diagnostics};
pub use kubernetes::KubernetesSettings;
pub use load::{
    documents_as_json, load, load_sources, load_str, parse_documents, validate_set, ParsedDocument,
    ParsedFile,
};
pub use model::*;
pub use schema::json_schema;
pub use validate::{is_protected_pg_setting, parse_duration};
