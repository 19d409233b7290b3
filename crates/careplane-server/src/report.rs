//! Monthly SLA reports over the result store: what `careplane sla report` prints and
//! `GET /v1/reports` answers.

use std::path::{Path, PathBuf};

use careplane_sla::{
    month_latency, month_timeline, monthly_report, Incident, Month, MonthSpan, MonthlyReport,
    ReportInput, SeriesKey, Store,
};
use careplane_spec::SpecSet;
use jiff::Timestamp;

use crate::calendar::calendar_of;
use crate::slo::{critical_probe, environment_kind, environments, slo_for};
use crate::Error;

pub fn store_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("sla")
}

/// Reports of `month` for every environment of the specs (or of `tenant`).
pub fn reports(
    store: &mut Store,
    specs: &SpecSet,
    incidents: &[Incident],
    month: Month,
    tenant: Option<&str>,
    now: Timestamp,
) -> Result<Vec<MonthlyReport>, Error> {
    if let Some(t) = tenant {
        if !specs.tenants.iter().any(|x| x.metadata.name == t) {
            return Err(Error::NotFound(format!("tenant {t:?} in the specs")));
        }
    }
    let mut out = Vec::new();
    for (t, e) in environments(specs, tenant) {
        // Each tenant's month is counted in its own zone, minus its approved maintenance.
        let cal = calendar_of(specs, &t, &e)?;
        let span = MonthSpan::new(month, &cal.zone)?;
        let slo = slo_for(specs, &t)?;
        let key = SeriesKey::new(&t, &e, critical_probe(specs));
        let timeline = month_timeline(store, &key, &span, &slo)?;
        let latency = month_latency(store, &key, &span)?;
        out.push(monthly_report(&ReportInput {
            tenant: &t,
            environment: &e,
            environment_kind: environment_kind(specs, &t, &e),
            time_zone: &cal.zone_name,
            month,
            slo: &slo,
            calendar: &cal.entries,
            timeline: &timeline,
            incidents,
            latency: Some(&latency),
            monthly_fee_cents: None,
            now,
        })?);
    }
    Ok(out)
}

/// A private copy of the store directory, removed on drop: the CLI reads a snapshot so that
/// it never replays or compacts the journal a running server appends to.
pub struct Snapshot {
    pub dir: PathBuf,
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn copy_tree(from: &Path, to: &Path, top: bool) -> Result<(), Error> {
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let entry = entry.map_err(|e| Error::io(from, e))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let ft = entry.file_type().map_err(|e| Error::io(&src, e))?;
        if ft.is_dir() {
            copy_tree(&src, &dst, false)?;
        } else if ft.is_file() && !(top && entry.file_name() == ".journal") {
            std::fs::copy(&src, &dst).map_err(|e| Error::io(&src, e))?;
        }
    }
    Ok(())
}

/// Opens a snapshot of the platform's store (an empty one when nothing was stored yet).
pub fn open_snapshot(data_dir: &Path) -> Result<(Snapshot, Store), Error> {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).map_err(|e| Error::Invalid(format!("no randomness: {e}")))?;
    let snap = Snapshot {
        dir: std::env::temp_dir().join(format!("careplane-sla-{}", hex::encode(b))),
    };
    let src = store_dir(data_dir);
    if src.is_dir() {
        // The journal first: a compaction that runs meanwhile writes the month files before
        // it empties the journal, so the copy misses nothing either way (replaying a result
        // a month file already holds changes no minute).
        std::fs::create_dir_all(&snap.dir).map_err(|e| Error::io(&snap.dir, e))?;
        let j = src.join(".journal");
        if j.exists() {
            std::fs::copy(&j, snap.dir.join(".journal")).map_err(|e| Error::io(&j, e))?;
        }
        copy_tree(&src, &snap.dir, true)?;
    }
    let store = Store::open(&snap.dir)?;
    Ok((snap, store))
}

/// How long Chromium may take to print a report.
const PDF_DEADLINE: std::time::Duration = std::time::Duration::from_secs(90);

/// The headless Chromium that prints PDF reports: `$CAREPLANE_CHROMIUM`, else the first of
/// `chromium`, `chromium-browser`, `google-chrome` on `PATH`.
pub fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CAREPLANE_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|b| {
            std::env::split_paths(&path)
                .map(|d| d.join(b))
                .find(|c| c.is_file())
        })
}

/// The HTML report printed to PDF by headless Chromium (the page is careplane's own,
/// self-contained: no script, no remote resource). The work directory is private (0700) and
/// removed afterwards.
pub fn render_pdf(html: &str) -> Result<Vec<u8>, Error> {
    use std::os::unix::fs::DirBuilderExt;
    let bin = chromium().ok_or_else(|| {
        Error::Invalid(
            "a PDF report needs headless Chromium: install chromium (Debian) or set \
             CAREPLANE_CHROMIUM to its path, or use --format html"
                .into(),
        )
    })?;
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).map_err(|e| Error::Invalid(format!("no randomness: {e}")))?;
    let dir = std::env::temp_dir().join(format!("careplane-pdf-{}", hex::encode(b)));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::io(&dir, e))?;
    let _cleanup = Snapshot { dir: dir.clone() };
    let page = dir.join("report.html");
    let pdf = dir.join("report.pdf");
    std::fs::write(&page, html).map_err(|e| Error::io(&page, e))?;
    let mut cmd = std::process::Command::new(&bin);
    cmd.args([
        "--headless",
        "--disable-gpu",
        "--disable-background-networking",
        "--no-pdf-header-footer",
    ]);
    // Chromium refuses to run as root with its sandbox; the page it renders is the one
    // written just above, with nothing from outside.
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        cmd.arg("--no-sandbox");
    }
    let mut child = cmd
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(format!("--print-to-pdf={}", pdf.display()))
        .arg(format!("file://{}", page.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| Error::io(&bin, e))?;
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| Error::io(&bin, e))? {
            break s;
        }
        if started.elapsed() > PDF_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Invalid(format!(
                "{} did not print the report within {} s",
                bin.display(),
                PDF_DEADLINE.as_secs()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    match std::fs::read(&pdf) {
        Ok(bytes) if bytes.starts_with(b"%PDF-") => Ok(bytes),
        _ => Err(Error::Invalid(format!(
            "{} printed no PDF ({status})",
            bin.display()
        ))),
    }
}
