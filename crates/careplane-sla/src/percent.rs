use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A percentage held exactly in parts per million (`100 %` = 1,000,000), written as a decimal
/// string with at most four decimals (`"99.95"`). Thresholds and credits are compared and
/// multiplied as integers, so `99.9` means exactly 99.9 %, never 99.899999…
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Percent(u32);

impl Percent {
    /// 100 %.
    pub const FULL: u32 = 1_000_000;

    /// From parts per million; `None` above 100 %.
    pub fn from_ppm(ppm: u32) -> Option<Self> {
        (ppm <= Self::FULL).then_some(Percent(ppm))
    }

    /// Parts per million.
    pub fn ppm(self) -> u32 {
        self.0
    }

    /// Parses `"99.95"` (also `"99.95%"`); refuses more than four decimals, signs,
    /// exponents and values above 100.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim().trim_end_matches('%').trim_end();
        let (int, frac) = t.split_once('.').unwrap_or((t, ""));
        let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
        if int.is_empty() || !digits(int) || !digits(frac) || (t.contains('.') && frac.is_empty()) {
            return Err(format!("{s:?} is not a percentage like \"99.95\""));
        }
        if frac.len() > 4 {
            return Err(format!("{s:?} has more than four decimals"));
        }
        let int: u64 = int
            .parse()
            .map_err(|_| format!("{s:?} is not a percentage like \"99.95\""))?;
        let mut f: u64 = if frac.is_empty() {
            0
        } else {
            frac.parse().unwrap_or(0)
        };
        for _ in frac.len()..4 {
            f *= 10;
        }
        // Units of 1/10_000 % are parts per million.
        let ppm = int
            .saturating_mul(10_000)
            .saturating_add(f)
            .min(u64::from(u32::MAX));
        match u32::try_from(ppm).ok().and_then(Percent::from_ppm) {
            Some(p) => Ok(p),
            None => Err(format!("{s:?} is above 100 %")),
        }
    }
}

impl fmt::Display for Percent {
    /// The shortest exact decimal: `99.95`, `100`, `0.0001`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let int = self.0 / 10_000;
        let frac = self.0 % 10_000;
        if frac == 0 {
            return write!(f, "{int}");
        }
        let s = format!("{frac:04}");
        write!(f, "{int}.{}", s.trim_end_matches('0'))
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Accept numbers too (`99.9` in YAML), going through their shortest decimal text so
        // that `99.9` is 99.9 and not the float's binary expansion.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            U(u64),
            F(f64),
        }
        let text = match Raw::deserialize(d)? {
            Raw::S(s) => s,
            Raw::U(u) => u.to_string(),
            Raw::F(x) => x.to_string(),
        };
        Percent::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exactly_and_prints_back() {
        for (s, ppm) in [
            ("99.9", 999_000),
            ("99.95", 999_500),
            ("99.9999", 999_999),
            ("100", 1_000_000),
            ("0", 0),
            ("0.0001", 1),
            ("10%", 100_000),
        ] {
            let p = Percent::parse(s).unwrap();
            assert_eq!(p.ppm(), ppm, "{s}");
            assert_eq!(Percent::parse(&p.to_string()).unwrap(), p);
        }
        assert_eq!(Percent::parse("99.90").unwrap().to_string(), "99.9");
    }

    #[test]
    fn refuses_what_is_not_an_exact_percentage() {
        for bad in [
            "", "abc", "-1", "1e2", "99.99999", "100.0001", "101", "99.", ".5", "9 9",
        ] {
            assert!(Percent::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn numbers_in_json_are_read_as_their_decimal_text() {
        let p: Percent = serde_json::from_str("99.9").unwrap();
        assert_eq!(p.ppm(), 999_000);
        let p: Percent = serde_json::from_str("\"99.95\"").unwrap();
        assert_eq!(p.ppm(), 999_500);
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"99.95\"");
    }
}
