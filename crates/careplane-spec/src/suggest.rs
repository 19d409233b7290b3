//! "Did you mean" suggestions.

/// The candidate closest to `word`, if one is close enough to be a likely
/// typo: same letters ignoring case and `-`/`_` (`service_tier` for
/// `serviceTier`), a high Jaro-Winkler similarity (`enviroments`), or `word`
/// being a recognisable part of the candidate (`tier` in `serviceTier`).
pub(crate) fn did_you_mean<'a, I>(word: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let w = normalize(word);
    if w.is_empty() {
        return None;
    }
    let mut best: Option<(f64, &'a str)> = None;
    for cand in candidates {
        if cand == word {
            continue;
        }
        let c = normalize(cand);
        let score = if c == w {
            2.0
        } else if w.chars().count() >= 4 && (c.contains(&w) || w.contains(&c)) && !c.is_empty() {
            1.0
        } else {
            // Jaro-Winkler misses transpositions in short words ("dve" for
            // "dev"); an edit distance of one catches those.
            let edits = strsim::osa_distance(&w, &c);
            let close = edits <= 1 || (edits <= 2 && w.chars().count() >= 6);
            let by_edits = if close { 0.9 } else { 0.0 };
            strsim::jaro_winkler(&w, &c).max(by_edits)
        };
        if score >= 0.84 && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, cand));
        }
    }
    best.map(|(_, c)| c)
}

fn normalize(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '-' && *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// `did you mean "x"?`, or else the list of what would be accepted.
pub(crate) fn help_for(word: &str, candidates: &[&str], what: &str) -> Option<String> {
    if let Some(s) = did_you_mean(word, candidates.iter().copied()) {
        Some(format!("did you mean \"{s}\"?"))
    } else if candidates.is_empty() {
        None
    } else {
        Some(format!("{what}: {}", candidates.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_typos() {
        let fields = ["name", "kind", "modules", "sizing"];
        assert_eq!(did_you_mean("knd", fields), Some("kind"));
        assert_eq!(did_you_mean("module", fields), Some("modules"));
        assert_eq!(did_you_mean("Sizing", fields), Some("sizing"));
        assert_eq!(did_you_mean("replicas", fields), None);
        let envs = [
            "dev",
            "test",
            "uat",
            "training",
            "staging",
            "production",
            "dr",
        ];
        assert_eq!(did_you_mean("prod", envs), Some("production"));
        assert_eq!(did_you_mean("stagin", envs), Some("staging"));
        assert_eq!(
            did_you_mean("service_tier", ["serviceTier", "sizing"]),
            Some("serviceTier")
        );
        assert_eq!(
            did_you_mean("tier", ["serviceTier", "sizing"]),
            Some("serviceTier")
        );
        assert_eq!(did_you_mean("", envs), None);
        assert_eq!(did_you_mean("dve", envs), Some("dev"));
        assert_eq!(did_you_mean("x", envs), None);
    }
}
