//! Compact storage of probe results: per series (tenant, environment, probe) and UTC month,
//! 2 bits per minute in memory and a run-length encoded file on disk, plus a latency
//! histogram, with a journal that makes each batch of results durable with one fsync. See
//! docs/design/0009 ("Storage") for the formats.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::account::{Observation, Timeline};
use crate::calendar::Month;
use crate::model::{Outcome, ProbeResult};
use crate::Error;

const MAGIC: &[u8; 8] = b"CPSLAM1\n";

/// Which series a result belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SeriesKey {
    pub tenant: String,
    pub environment: String,
    pub probe: String,
}

impl SeriesKey {
    pub fn new(tenant: &str, environment: &str, probe: &str) -> Self {
        SeriesKey {
            tenant: tenant.into(),
            environment: environment.into(),
            probe: probe.into(),
        }
    }

    /// Names become directory names: only what is safe as one path component.
    fn check(&self) -> Result<(), Error> {
        for (field, v) in [
            ("tenant", &self.tenant),
            ("environment", &self.environment),
            ("probe", &self.probe),
        ] {
            let ok = !v.is_empty()
                && v.len() <= 100
                && !v.starts_with('.')
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !ok {
                return Err(Error::invalid(
                    format!("probe result {field}"),
                    format!("{v:?} is not a name (letters, digits, '-', '_', '.'; not starting with '.')"),
                ));
            }
        }
        Ok(())
    }
}

/// Log-linear latency histogram: exact below 8 ms, then 4 buckets per power of two (at most
/// 12.5 % wide), up to `u32::MAX` ms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    counts: BTreeMap<u8, u64>,
}

const EXACT: u32 = 8;

fn bucket(ms: u32) -> u8 {
    if ms < EXACT {
        return ms as u8;
    }
    let e = 31 - ms.leading_zeros(); // ≥ 3
    let sub = (ms >> (e - 2)) & 3;
    (EXACT + (e - 3) * 4 + sub) as u8
}

fn bucket_upper(b: u8) -> u32 {
    let b = u32::from(b);
    if b < EXACT {
        return b;
    }
    let (e, sub) = ((b - EXACT) / 4 + 3, (b - EXACT) % 4);
    let lower = (4 + sub) << (e - 2);
    lower.saturating_add((1u32 << (e - 2)) - 1)
}

impl LatencyHistogram {
    pub fn record(&mut self, ms: u32) {
        *self.counts.entry(bucket(ms)).or_insert(0) += 1;
    }

    pub fn count(&self) -> u64 {
        self.counts.values().sum()
    }

    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (&b, &c) in &other.counts {
            *self.counts.entry(b).or_insert(0) += c;
        }
    }

    /// The upper bound (ms) of the bucket holding the `q`-quantile (`q` in per mille), so the
    /// true value is at most this; `None` when empty.
    pub fn quantile_permille(&self, q: u32) -> Option<u32> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        // Rank of the q-quantile, 1-based, rounded up.
        let rank = (u128::from(n) * u128::from(q.min(1000)))
            .div_ceil(1000)
            .max(1) as u64;
        let mut seen = 0;
        for (&b, &c) in &self.counts {
            seen += c;
            if seen >= rank {
                return Some(bucket_upper(b));
            }
        }
        self.counts.keys().last().map(|&b| bucket_upper(b))
    }
}

/// One series' month in memory: 2 bits per minute of the UTC month.
#[derive(Clone, Debug)]
struct MonthData {
    start: i64,
    minutes: u32,
    bits: Vec<u8>,
    hist: LatencyHistogram,
    dirty: bool,
}

impl MonthData {
    fn empty(month: Month) -> Self {
        let (s, e) = month.utc_span();
        let minutes = ((e.as_second() - s.as_second()) / 60) as u32;
        MonthData {
            start: s.as_second(),
            minutes,
            bits: vec![0; minutes.div_ceil(4) as usize],
            hist: LatencyHistogram::default(),
            dirty: false,
        }
    }

    #[inline]
    fn get(&self, i: u32) -> Observation {
        Observation::from_code(self.bits[(i / 4) as usize] >> ((i % 4) * 2))
    }

    #[inline]
    fn merge(&mut self, i: u32, o: Observation) {
        let (byte, shift) = ((i / 4) as usize, (i % 4) * 2);
        let cur = (self.bits[byte] >> shift) & 3;
        let new = cur.max(o as u8);
        self.bits[byte] = (self.bits[byte] & !(3 << shift)) | (new << shift);
    }
}

struct Series {
    key: SeriesKey,
    months: BTreeMap<Month, MonthData>,
    /// The month the last result went to: (month, its first second, its end second).
    cur: Option<(Month, i64, i64)>,
}

/// Handle of a series inside a [`Store`], for the ingest fast path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeriesId(u32);

/// The result store of one platform: `<dir>/<tenant>/<environment>/<probe>/<YYYY-MM>.cpm`.
///
/// Results are merged into memory by `record` and made durable by [`Store::flush`], which
/// appends them to one journal with one fsync (the server acknowledges a result only after a
/// flush that followed it returned); [`Store::compact`] rewrites the changed month files and
/// empties the journal.
pub struct Store {
    dir: PathBuf,
    series: Vec<Series>,
    index: HashMap<String, HashMap<String, HashMap<String, u32>>>,
    /// `<dir>/.journal`: results since the last compaction, appended by `flush`.
    journal: std::fs::File,
    /// Encoded results not yet flushed to the journal.
    pending: Vec<u8>,
    /// Which series the journal already defines (ids are the store's).
    in_journal: Vec<bool>,
}

const JOURNAL: &str = ".journal";
const TAG_SERIES: u64 = 0;
const TAG_RESULT: u64 = 1;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Store {
    /// Opens (creating) the store directory. Results a previous process flushed to the
    /// journal but did not compact are replayed and compacted into month files (a torn
    /// batch at the journal's end, never acknowledged, is dropped). Months are read lazily.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Store, Error> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let jpath = dir.join(JOURNAL);
        let old = match std::fs::read(&jpath) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(&jpath)(e)),
        };
        let journal = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&jpath)
            .map_err(io(&jpath))?;
        let mut store = Store {
            dir,
            series: Vec::new(),
            index: HashMap::new(),
            journal,
            pending: Vec::new(),
            in_journal: Vec::new(),
        };
        if !old.is_empty() {
            store.replay(&jpath, &old)?;
            store.compact()?;
        }
        Ok(store)
    }

    fn replay(&mut self, path: &Path, bytes: &[u8]) -> Result<(), Error> {
        let mut pos = 0;
        let mut ids: HashMap<u64, SeriesId> = HashMap::new();
        // Frames: u32 length, u64 FNV-1a, payload. Stop at the first incomplete or bad one:
        // its flush never returned.
        while pos + 12 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4")) as usize;
            let sum = u64::from_le_bytes(bytes[pos + 4..pos + 12].try_into().expect("8"));
            let Some(payload) = bytes.get(pos + 12..pos + 12 + len) else {
                break;
            };
            if fnv1a(payload) != sum {
                break;
            }
            let mut r = Reader {
                path,
                bytes: payload,
                pos: 0,
            };
            while r.pos < payload.len() {
                match r.varint()? {
                    TAG_SERIES => {
                        let jid = r.varint()?;
                        let key = SeriesKey {
                            tenant: r.string()?,
                            environment: r.string()?,
                            probe: r.string()?,
                        };
                        ids.insert(jid, self.series(&key)?);
                    }
                    TAG_RESULT => {
                        let jid = r.varint()?;
                        let id = *ids.get(&jid).ok_or_else(|| {
                            r.corrupt(format!("result for undefined series {jid}"))
                        })?;
                        let sec = r.varint()? as i64;
                        let code = r.varint()?;
                        let lat = r.varint()? as u32;
                        let at = Timestamp::from_second(sec)
                            .map_err(|_| r.corrupt("time out of range"))?;
                        let outcome = match code {
                            1 => Outcome::Unknown,
                            2 => Outcome::Up,
                            3 => Outcome::Down,
                            _ => return Err(r.corrupt(format!("outcome code {code}"))),
                        };
                        self.apply(id, at, outcome, lat)?;
                    }
                    t => return Err(r.corrupt(format!("unknown journal tag {t}"))),
                }
            }
            pos += 12 + len;
        }
        Ok(())
    }

    /// The series of `key`, registering it (no I/O).
    pub fn series(&mut self, key: &SeriesKey) -> Result<SeriesId, Error> {
        if let Some(&i) = self
            .index
            .get(&key.tenant)
            .and_then(|e| e.get(&key.environment))
            .and_then(|p| p.get(&key.probe))
        {
            return Ok(SeriesId(i));
        }
        key.check()?;
        let i = self.series.len() as u32;
        self.in_journal.push(false);
        self.series.push(Series {
            key: key.clone(),
            months: BTreeMap::new(),
            cur: None,
        });
        self.index
            .entry(key.tenant.clone())
            .or_default()
            .entry(key.environment.clone())
            .or_default()
            .insert(key.probe.clone(), i);
        Ok(SeriesId(i))
    }

    fn path(&self, key: &SeriesKey, month: Month) -> PathBuf {
        self.dir
            .join(&key.tenant)
            .join(&key.environment)
            .join(&key.probe)
            .join(format!("{month}.cpm"))
    }

    /// The month's data, read from its file the first time.
    fn month_mut(&mut self, id: SeriesId, month: Month) -> Result<&mut MonthData, Error> {
        let s = &self.series[id.0 as usize];
        if !s.months.contains_key(&month) {
            let path = self.path(&s.key, month);
            let data = read_month(&path, &s.key, month)?.unwrap_or_else(|| MonthData::empty(month));
            self.series[id.0 as usize].months.insert(month, data);
        }
        Ok(self.series[id.0 as usize]
            .months
            .get_mut(&month)
            .expect("inserted"))
    }

    /// Records one result (the fast path: the server keeps a `SeriesId` per probe). It is
    /// durable once a later [`Store::flush`] returns.
    pub fn record(
        &mut self,
        id: SeriesId,
        at: Timestamp,
        outcome: Outcome,
        latency_ms: u32,
    ) -> Result<(), Error> {
        self.apply(id, at, outcome, latency_ms)?;
        let i = id.0 as usize;
        if !self.in_journal[i] {
            let k = &self.series[i].key;
            put_varint(&mut self.pending, TAG_SERIES);
            put_varint(&mut self.pending, u64::from(id.0));
            for s in [&k.tenant, &k.environment, &k.probe] {
                put_varint(&mut self.pending, s.len() as u64);
                self.pending.extend_from_slice(s.as_bytes());
            }
            self.in_journal[i] = true;
        }
        put_varint(&mut self.pending, TAG_RESULT);
        put_varint(&mut self.pending, u64::from(id.0));
        put_varint(&mut self.pending, at.as_second() as u64);
        put_varint(&mut self.pending, Observation::from(outcome) as u64);
        put_varint(&mut self.pending, u64::from(latency_ms));
        Ok(())
    }

    fn apply(
        &mut self,
        id: SeriesId,
        at: Timestamp,
        outcome: Outcome,
        latency_ms: u32,
    ) -> Result<(), Error> {
        let sec = at.as_second();
        let s = &mut self.series[id.0 as usize];
        let month = match s.cur {
            Some((m, a, b)) if (a..b).contains(&sec) => m,
            _ => {
                let m = Month::of_utc(at);
                let (a, b) = m.utc_span();
                s.cur = Some((m, a.as_second(), b.as_second()));
                m
            }
        };
        let data = self.month_mut(id, month)?;
        let i = ((sec - data.start) / 60) as u32;
        data.merge(i, outcome.into());
        if outcome != Outcome::Unknown {
            data.hist.record(latency_ms);
        }
        data.dirty = true;
        Ok(())
    }

    /// Records one result by its names.
    pub fn ingest(&mut self, r: &ProbeResult) -> Result<(), Error> {
        let id = self.series(&SeriesKey::new(&r.tenant, &r.environment, &r.probe))?;
        self.record(id, r.at, r.outcome, r.latency_ms)
    }

    /// Makes every result recorded so far durable: one append and one fsync of the journal,
    /// whatever the number of series. The server acknowledges results after this returns.
    pub fn flush(&mut self) -> Result<(), Error> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(JOURNAL);
        let mut frame = Vec::with_capacity(self.pending.len() + 12);
        frame.extend_from_slice(&(self.pending.len() as u32).to_le_bytes());
        frame.extend_from_slice(&fnv1a(&self.pending).to_le_bytes());
        frame.extend_from_slice(&self.pending);
        use std::io::Write;
        self.journal.write_all(&frame).map_err(io(&path))?;
        self.journal.sync_data().map_err(io(&path))?;
        self.pending.clear();
        Ok(())
    }

    /// Writes every changed month file atomically (temporary file, fsync, rename) and empties
    /// the journal. Returns the number of files written. Call it now and then (hourly, at a
    /// month's end, at shutdown); `open` does it after a crash.
    pub fn compact(&mut self) -> Result<usize, Error> {
        let mut written = 0;
        for s in &mut self.series {
            for (&month, data) in s.months.iter_mut().filter(|(_, d)| d.dirty) {
                let path = self
                    .dir
                    .join(&s.key.tenant)
                    .join(&s.key.environment)
                    .join(&s.key.probe)
                    .join(format!("{month}.cpm"));
                let parent = path.parent().expect("has a parent");
                std::fs::create_dir_all(parent).map_err(io(parent))?;
                careplane_sys::atomic_write(&path, &encode(&s.key, month, data), 0o640, None)
                    .map_err(io(&path))?;
                data.dirty = false;
                written += 1;
            }
        }
        // Everything recorded is in the month files now, pending results included.
        let path = self.dir.join(JOURNAL);
        self.journal.set_len(0).map_err(io(&path))?;
        self.journal.sync_all().map_err(io(&path))?;
        self.pending.clear();
        self.in_journal.iter_mut().for_each(|j| *j = false);
        Ok(written)
    }

    /// Drops months before `month` from memory (after a compaction; their files stay).
    pub fn evict_before(&mut self, month: Month) {
        for s in &mut self.series {
            s.months.retain(|&m, d| m >= month || d.dirty);
        }
    }

    /// Observations of `key` for `minutes` minutes from the minute containing `from`,
    /// read from the UTC months they overlap (no data where nothing was stored).
    pub fn timeline(
        &mut self,
        key: &SeriesKey,
        from: Timestamp,
        minutes: u32,
    ) -> Result<Timeline, Error> {
        let id = self.series(key)?;
        let mut t = Timeline::empty(from, minutes);
        let (first, last) = (t.start, t.end());
        let mut m = Month::of_utc(first);
        while m.utc_span().0 < last {
            let data = self.month_mut(id, m)?;
            let lo = (first.as_second() - data.start).max(0) / 60;
            let hi = ((last.as_second() - data.start) / 60).min(i64::from(data.minutes));
            let offset = (data.start - first.as_second()) / 60; // index in t of the month's minute 0
            for i in lo..hi.max(lo) {
                let o = data.get(i as u32);
                t.obs[(offset + i) as usize] = o;
            }
            m = m.next();
        }
        Ok(t)
    }

    /// The latency histogram of `key` over the UTC months `from..=to`.
    pub fn histogram(
        &mut self,
        key: &SeriesKey,
        from: Month,
        to: Month,
    ) -> Result<LatencyHistogram, Error> {
        let id = self.series(key)?;
        let mut h = LatencyHistogram::default();
        let mut m = from;
        while m <= to {
            h.merge(&self.month_mut(id, m)?.hist);
            m = m.next();
        }
        Ok(h)
    }

    /// Every series key with at least one stored month or result, from memory and disk.
    pub fn keys(&self) -> Result<Vec<SeriesKey>, Error> {
        let mut keys: Vec<SeriesKey> = self.series.iter().map(|s| s.key.clone()).collect();
        let list = |p: &Path| -> Result<Vec<String>, Error> {
            let mut v = Vec::new();
            for e in std::fs::read_dir(p).map_err(io(p))? {
                let e = e.map_err(io(p))?;
                if e.file_type().map_err(io(p))?.is_dir() {
                    v.push(e.file_name().to_string_lossy().into_owned());
                }
            }
            Ok(v)
        };
        for t in list(&self.dir)? {
            for e in list(&self.dir.join(&t))? {
                for p in list(&self.dir.join(&t).join(&e))? {
                    keys.push(SeriesKey::new(&t, &e, &p));
                }
            }
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn encode(key: &SeriesKey, month: Month, d: &MonthData) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    for s in [&key.tenant, &key.environment, &key.probe] {
        put_varint(&mut out, s.len() as u64);
        out.extend_from_slice(s.as_bytes());
    }
    put_varint(&mut out, month.year as u64);
    put_varint(&mut out, month.month as u64);
    put_varint(&mut out, u64::from(d.minutes));
    let mut runs: Vec<(u64, u8)> = Vec::new();
    for i in 0..d.minutes {
        let c = d.get(i) as u8;
        match runs.last_mut() {
            Some((n, last)) if *last == c => *n += 1,
            _ => runs.push((1, c)),
        }
    }
    put_varint(&mut out, runs.len() as u64);
    for (n, c) in runs {
        put_varint(&mut out, (n << 2) | u64::from(c));
    }
    put_varint(&mut out, d.hist.counts.len() as u64);
    for (&b, &c) in &d.hist.counts {
        put_varint(&mut out, u64::from(b));
        put_varint(&mut out, c);
    }
    let sum = fnv1a(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

struct Reader<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn corrupt(&self, message: impl Into<String>) -> Error {
        Error::Corrupt {
            path: self.path.to_path_buf(),
            offset: self.pos,
            message: message.into(),
        }
    }

    fn varint(&mut self) -> Result<u64, Error> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .bytes
                .get(self.pos)
                .ok_or_else(|| self.corrupt("truncated number"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.corrupt("number longer than 64 bits"))
    }

    fn string(&mut self) -> Result<String, Error> {
        let n = self.varint()? as usize;
        let s = self
            .bytes
            .get(self.pos..self.pos.saturating_add(n))
            .ok_or_else(|| self.corrupt("truncated name"))?;
        self.pos += n;
        String::from_utf8(s.to_vec()).map_err(|_| self.corrupt("name is not UTF-8"))
    }
}

fn read_month(path: &Path, key: &SeriesKey, month: Month) -> Result<Option<MonthData>, Error> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    decode(path, &bytes, key, month).map(Some)
}

fn decode(path: &Path, bytes: &[u8], key: &SeriesKey, month: Month) -> Result<MonthData, Error> {
    let mut r = Reader {
        path,
        bytes,
        pos: 0,
    };
    if bytes.len() < MAGIC.len() + 8 || &bytes[..8] != MAGIC {
        return Err(r.corrupt("not a careplane probe-month file (bad magic)"));
    }
    let body = &bytes[..bytes.len() - 8];
    let stored = u64::from_le_bytes(bytes[bytes.len() - 8..].try_into().expect("8 bytes"));
    if fnv1a(body) != stored {
        r.pos = body.len();
        return Err(r.corrupt("checksum mismatch"));
    }
    r.bytes = body;
    r.pos = MAGIC.len();
    let names = [r.string()?, r.string()?, r.string()?];
    if names
        != [
            key.tenant.clone(),
            key.environment.clone(),
            key.probe.clone(),
        ]
    {
        return Err(r.corrupt(format!(
            "holds series {}/{}/{}, not the one its path names",
            names[0], names[1], names[2]
        )));
    }
    let (y, m) = (r.varint()?, r.varint()?);
    if (y, m) != (month.year as u64, month.month as u64) {
        return Err(r.corrupt(format!("holds month {y:04}-{m:02}, not {month}")));
    }
    let mut d = MonthData::empty(month);
    let minutes = r.varint()?;
    if minutes != u64::from(d.minutes) {
        return Err(r.corrupt(format!("{minutes} minutes where {month} has {}", d.minutes)));
    }
    let runs = r.varint()?;
    let mut at: u64 = 0;
    for _ in 0..runs {
        let v = r.varint()?;
        let (n, c) = (v >> 2, Observation::from_code((v & 3) as u8));
        if n == 0 || at + n > minutes {
            return Err(r.corrupt("runs do not add up to the month's minutes"));
        }
        if c != Observation::NoData {
            for i in at..at + n {
                d.merge(i as u32, c);
            }
        }
        at += n;
    }
    if at != minutes {
        return Err(r.corrupt("runs do not add up to the month's minutes"));
    }
    let buckets = r.varint()?;
    for _ in 0..buckets {
        let (b, c) = (r.varint()?, r.varint()?);
        if b > u64::from(bucket(u32::MAX)) {
            return Err(r.corrupt(format!("latency bucket {b} out of range")));
        }
        d.hist.counts.insert(b as u8, c);
    }
    if r.pos != body.len() {
        return Err(r.corrupt("trailing bytes"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_bound_their_values() {
        let mut prev_upper = None;
        for b in 0..=bucket(u32::MAX) {
            let up = bucket_upper(b);
            if let Some(p) = prev_upper {
                assert_eq!(bucket(p + 1), b, "gap before bucket {b}");
            }
            assert_eq!(bucket(up), b);
            prev_upper = Some(up);
        }
        assert_eq!(prev_upper, Some(u32::MAX));
        for v in [0, 7, 8, 9, 100, 1000, 123_456] {
            let up = bucket_upper(bucket(v));
            assert!(
                up >= v && (up - v) as f64 <= v.max(8) as f64 * 0.25,
                "{v} -> {up}"
            );
        }
    }

    #[test]
    fn quantiles_come_from_the_right_bucket() {
        let mut h = LatencyHistogram::default();
        for v in 1..=100 {
            h.record(v * 10);
        }
        // p50 is 500 ms: the bucket [448, 511].
        assert_eq!(h.quantile_permille(500), Some(511));
        assert_eq!(h.quantile_permille(1000), Some(1023));
        assert_eq!(h.quantile_permille(0), Some(10 + 1)); // [10, 11]
        assert_eq!(LatencyHistogram::default().quantile_permille(500), None);
    }
}
