//! Problems found in spec files, with the place they were found.
//!
//! A run reports every problem at once, so that an operator fixes a spec set
//! in one edit instead of one error per run; each problem names the file, the
//! line and column, and the field path, in the `file:line:col:` form editors
//! and terminals turn into links.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

/// One problem in a spec file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// The file the problem is in; empty for problems of the set as a whole
    /// (e.g. no `Platform` anywhere).
    pub file: PathBuf,
    /// 1-based line; 0 when the problem is with the file as a whole (e.g. it
    /// cannot be read).
    pub line: usize,
    /// 1-based column, in characters; 0 together with `line`.
    pub column: usize,
    /// Field path inside the document, like `spec.environments[1].kind`;
    /// empty when the problem is not about a field (e.g. a YAML syntax error).
    pub path: String,
    /// What is wrong, in one line.
    pub message: String,
    /// A suggestion for the fix, e.g. `did you mean "production"?`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl Diagnostic {
    /// A diagnostic without help; see [`Diagnostic::with_help`].
    pub fn new(
        file: &Path,
        line: usize,
        column: usize,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic {
            file: file.to_path_buf(),
            line,
            column,
            path: path.into(),
            message: message.into(),
            help: None,
        }
    }

    /// Builder-style: attach a help line.
    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    /// Builder-style: attach a help line if there is one.
    pub fn with_help_opt(mut self, help: Option<String>) -> Diagnostic {
        self.help = help;
        self
    }

    /// `file:line` (or just `file`), the way other messages point at a place.
    pub fn location(&self) -> String {
        location(&self.file, self.line)
    }
}

/// `file:line`, or `file` when there is no line.
pub(crate) fn location(file: &Path, line: usize) -> String {
    if line == 0 {
        file.display().to_string()
    } else {
        format!("{}:{}", file.display(), line)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.file.as_os_str().is_empty() {
            f.write_str("error: ")?;
        } else if self.line == 0 {
            write!(f, "{}: ", self.file.display())?;
        } else {
            write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Every problem of a run, in file order, then line and column.
///
/// This is the error type of [`crate::load`]: a spec set is either entirely
/// valid or comes back with all of its problems.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// How many distinct files the problems are in.
    pub fn file_count(&self) -> usize {
        self.0
            .iter()
            .filter(|d| !d.file.as_os_str().is_empty())
            .map(|d| &d.file)
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// The closing line, e.g. `error: 3 problems in 2 files`.
    pub fn summary(&self) -> String {
        let n = self.0.len();
        let files = self.file_count();
        let problems = if n == 1 { "problem" } else { "problems" };
        match files {
            0 => format!("error: {n} {problems}"),
            1 => format!("error: {n} {problems} in 1 file"),
            _ => format!("error: {n} {problems} in {files} files"),
        }
    }
}

impl std::ops::Deref for Diagnostics {
    type Target = Vec<Diagnostic>;

    fn deref(&self) -> &Vec<Diagnostic> {
        &self.0
    }
}

impl IntoIterator for Diagnostics {
    type Item = Diagnostic;
    type IntoIter = std::vec::IntoIter<Diagnostic>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Diagnostics {
    type Item = &'a Diagnostic;
    type IntoIter = std::slice::Iter<'a, Diagnostic>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl From<Vec<Diagnostic>> for Diagnostics {
    fn from(v: Vec<Diagnostic>) -> Diagnostics {
        Diagnostics(v)
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        f.write_str(&self.summary())
    }
}

impl std::error::Error for Diagnostics {}

/// `{"errors": 3, "files": 2, "diagnostics": [...]}` — the shape of
/// `--output json`, so tools need not parse the text form.
impl Serialize for Diagnostics {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Diagnostics", 3)?;
        s.serialize_field("errors", &self.0.len())?;
        s.serialize_field("files", &self.file_count())?;
        s.serialize_field("diagnostics", &self.0)?;
        s.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_a_compiler() {
        let d = Diagnostic::new(
            Path::new("examples/x/tenants.yaml"),
            12,
            9,
            "spec.environments[1].kind",
            "unknown variant \"prod\", expected one of dev, test",
        )
        .with_help("did you mean \"production\"?");
        assert_eq!(
            d.to_string(),
            "examples/x/tenants.yaml:12:9: spec.environments[1].kind: unknown variant \"prod\", \
             expected one of dev, test\n  help: did you mean \"production\"?"
        );
        let set = Diagnostic::new(Path::new(""), 0, 0, "", "no Platform document");
        assert_eq!(set.to_string(), "error: no Platform document");
        let file = Diagnostic::new(Path::new("a.yaml"), 0, 0, "", "cannot read");
        assert_eq!(file.to_string(), "a.yaml: cannot read");
    }

    #[test]
    fn summary_counts_problems_and_files() {
        let a = Diagnostic::new(Path::new("a.yaml"), 1, 1, "", "x");
        let b = Diagnostic::new(Path::new("b.yaml"), 1, 1, "", "y");
        let all = Diagnostics(vec![a.clone(), a.clone(), b]);
        assert_eq!(all.summary(), "error: 3 problems in 2 files");
        assert_eq!(Diagnostics(vec![a]).summary(), "error: 1 problem in 1 file");
        assert!(all.to_string().ends_with("\nerror: 3 problems in 2 files"));
    }

    #[test]
    fn serializes_to_json() {
        let d = Diagnostic::new(Path::new("a.yaml"), 2, 3, "spec", "bad");
        let v = serde_json::to_value(Diagnostics(vec![d])).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "errors": 1,
                "files": 1,
                "diagnostics": [{"file": "a.yaml", "line": 2, "column": 3, "path": "spec", "message": "bad"}]
            })
        );
    }
}
