//! Hashing and parsing many entries on all cores. Leaves and the fields a
//! pass reads are independent per line; only the tree and the chain need
//! order, so those stay sequential in the callers.

use std::num::NonZeroUsize;

/// Below this many lines a second thread costs more than it saves.
const MIN_PARALLEL: usize = 4096;

fn threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .min(8)
}

/// `f` of every line, in order, computed on up to `threads()` threads.
pub(crate) fn map_lines<T: Send>(lines: &[&[u8]], f: impl Fn(&[u8]) -> T + Sync) -> Vec<T> {
    let n = threads();
    if n <= 1 || lines.len() < MIN_PARALLEL {
        return lines.iter().map(|l| f(l)).collect();
    }
    let per = lines.len().div_ceil(n);
    let f = &f;
    std::thread::scope(|s| {
        let parts: Vec<_> = lines
            .chunks(per)
            .map(|part| s.spawn(move || part.iter().map(|l| f(l)).collect::<Vec<T>>()))
            .collect();
        let mut out = Vec::with_capacity(lines.len());
        for p in parts {
            // A panic in `f` is a bug of ours; surface it as one.
            out.extend(p.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
        }
        out
    })
}

/// The complete lines of `data` (without their '\n'), and the offset just
/// after the last one.
pub(crate) fn split_lines(data: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut lines = Vec::with_capacity(data.len() / 256 + 1);
    let mut pos = 0;
    for nl in memchr::memchr_iter(b'\n', data) {
        lines.push(&data[pos..nl]);
        pos = nl + 1;
    }
    (lines, pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_lines_keeps_order_on_many_threads() {
        let text: String = (0..10_000).map(|i| format!("{i}\n")).collect();
        let (lines, end) = split_lines(text.as_bytes());
        assert_eq!(end, text.len());
        let got = map_lines(&lines, |l| {
            std::str::from_utf8(l).unwrap().parse::<u32>().unwrap()
        });
        assert_eq!(got, (0..10_000).collect::<Vec<u32>>());
    }

    #[test]
    fn split_lines_leaves_an_incomplete_tail() {
        let (lines, end) = split_lines(b"a\nbc\nd");
        assert_eq!(lines, vec![&b"a"[..], &b"bc"[..]]);
        assert_eq!(end, 5);
    }
}
