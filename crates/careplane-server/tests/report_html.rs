//! The HTML SLA report as a person sees it: rendered by headless Chromium (Debian's) from a
//! store holding a day with a two-hour outage. The screenshot must be a real page (the size
//! asked for, far more content than a blank page), and the rendered DOM must hold the SVG
//! timeline with its down run. Skips without Chromium locally; fails in CI (CI=true).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use careplane_sla::{Month, Outcome, SeriesKey, Store};
use jiff::Timestamp;

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser"].iter().find_map(|b| {
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(b))
                .find(|c| c.is_file())
        })
    })
}

/// Runs Chromium headless with a deadline; returns its stdout.
fn run_chromium(bin: &Path, profile: &Path, args: &[String]) -> String {
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromium");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium {args:?} did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut out = String::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    out
}

/// Width and height from a PNG's IHDR.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

#[test]
fn chromium_renders_the_report_with_its_timeline() {
    let Some(bin) = chromium() else {
        let msg = "chromium is needed (apt-get install chromium; scripts/install-deps does it)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg}");
        }
        eprintln!("skipped: {msg}");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let specs_file = dir.path().join("specs.yaml");
    std::fs::write(
        &specs_file,
        "apiVersion: careplane.dev/v1alpha1\nkind: Platform\nmetadata:\n  name: p\nspec:\n  dataDir: ./data\n  defaults:\n    serviceTier: gold\n---\napiVersion: careplane.dev/v1alpha1\nkind: ServiceTier\nmetadata:\n  name: gold\nspec:\n  availability: 99.9\n  rto: 1h\n  rpo: 15m\n  supportHours: 24x7\n---\napiVersion: careplane.dev/v1alpha1\nkind: Tenant\nmetadata:\n  name: stmarys\nspec:\n  environments:\n    - name: prod\n      kind: production\n",
    )
    .unwrap();
    let specs = careplane_spec::load(&[specs_file]).unwrap();

    // 2026-11-03, every minute probed; 10:00-12:00 down.
    let mut store = Store::open(dir.path().join("sla")).unwrap();
    let key = SeriesKey::new(
        "stmarys",
        "prod",
        careplane_server::slo::critical_probe(&specs),
    );
    let id = store.series(&key).unwrap();
    let day: Timestamp = "2026-11-03T00:00:00Z".parse().unwrap();
    for m in 0..1440 {
        let at = Timestamp::from_second(day.as_second() + 60 * m).unwrap();
        let down = (600..720).contains(&m);
        let o = if down { Outcome::Down } else { Outcome::Up };
        store.record(id, at, o, 40).unwrap();
    }
    store.flush().unwrap();
    let now: Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
    let month = Month::parse("2026-11").unwrap();
    let reports =
        careplane_server::report::reports(&mut store, &specs, &[], month, None, now).unwrap();
    assert_eq!(reports[0].down_minutes, 120, "{:?}", reports[0]);
    let html = careplane_sla::render_html(&reports).unwrap();
    let page = dir.path().join("report.html");
    std::fs::write(&page, &html).unwrap();
    let blank = dir.path().join("blank.html");
    std::fs::write(&blank, "<!DOCTYPE html><html><body></body></html>").unwrap();

    let profile = dir.path().join("profile");
    let shot = |file: &Path, png: &Path| {
        run_chromium(
            &bin,
            &profile,
            &[
                format!("--screenshot={}", png.display()),
                "--window-size=1200,1400".into(),
                format!("file://{}", file.display()),
            ],
        );
        std::fs::read(png).unwrap_or_else(|e| panic!("no screenshot {}: {e}", png.display()))
    };
    let report_png = shot(&page, &dir.path().join("report.png"));
    let blank_png = shot(&blank, &dir.path().join("blank.png"));
    assert_eq!(png_size(&report_png), (1200, 1400));
    assert!(
        report_png.len() > 5 * blank_png.len(),
        "the report renders like a blank page: {} vs {} bytes",
        report_png.len(),
        blank_png.len()
    );
    let dom = run_chromium(
        &bin,
        &profile,
        &["--dump-dom".into(), format!("file://{}", page.display())],
    );
    assert!(
        dom.contains("aria-label=\"availability timeline\""),
        "no SVG timeline in the DOM"
    );
    assert!(
        dom.contains("down 120 min from 10:00 UTC"),
        "the outage run is not drawn: {dom}"
    );

    // `--format pdf`: the same page printed by Chromium.
    let pdf = careplane_server::report::render_pdf(&html).unwrap();
    assert!(pdf.starts_with(b"%PDF-"), "not a PDF");
    let pages = pdf.windows(11).filter(|w| w == b"/Type /Page").count();
    assert!(pages >= 1, "a PDF of no page ({} bytes)", pdf.len());
    assert!(
        pdf.len() > 5 * 1024,
        "the PDF is too small to hold the report: {} bytes",
        pdf.len()
    );
}
