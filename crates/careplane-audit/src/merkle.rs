//! RFC 9162 §2.1 Merkle tree hashing, proofs and their verification.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 || entry)`: the hash of one entry's exact bytes.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Lower- or upper-case hex of exactly `N` bytes.
pub fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != N * 2 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nibble(b[2 * i])? << 4) | nibble(b[2 * i + 1])?;
    }
    Some(out)
}

/// Largest power of two strictly smaller than `n` (n >= 2).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// Every complete, aligned power-of-two subtree of the leaves pushed so far:
/// `levels[h][i]` is the hash of leaves `i*2^h .. (i+1)*2^h`. Any root or
/// proof node is a fold of O(log n) of them.
#[derive(Clone, Default)]
pub struct Tree {
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    pub fn new() -> Self {
        Tree {
            levels: vec![Vec::new()],
        }
    }

    pub fn len(&self) -> u64 {
        self.levels[0].len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.levels[0].is_empty()
    }

    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.levels[0].get(index as usize).copied()
    }

    pub fn push(&mut self, leaf: Hash) {
        self.levels[0].push(leaf);
        let mut h = 0;
        while self.levels[h].len().is_multiple_of(2) {
            let l = &self.levels[h];
            let node = node_hash(&l[l.len() - 2], &l[l.len() - 1]);
            if self.levels.len() == h + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[h + 1].push(node);
            h += 1;
        }
    }

    /// Drops leaves beyond `size` (used when an unwritten batch is abandoned).
    pub fn truncate(&mut self, size: u64) {
        for (h, level) in self.levels.iter_mut().enumerate() {
            level.truncate((size >> h) as usize);
        }
    }

    /// MTH of leaves `start .. start+len`, where `start` is a multiple of
    /// the power of two covering `len` (true of every subtree RFC 9162's
    /// recursion names).
    fn mth(&self, start: u64, len: u64) -> Hash {
        if len == 0 {
            return empty_root();
        }
        if len.is_power_of_two() {
            let h = len.trailing_zeros() as usize;
            return self.levels[h][(start >> h) as usize];
        }
        let k = split(len);
        node_hash(&self.mth(start, k), &self.mth(start + k, len - k))
    }

    /// The root of the first `size` leaves.
    pub fn root(&self, size: u64) -> Option<Hash> {
        (size <= self.len()).then(|| self.mth(0, size))
    }

    /// RFC 9162 inclusion path of leaf `index` in the tree of `size` leaves.
    pub fn inclusion_path(&self, index: u64, size: u64) -> Option<Vec<Hash>> {
        if index >= size || size > self.len() {
            return None;
        }
        let mut path = Vec::new();
        self.path(index, 0, size, &mut path);
        Some(path)
    }

    fn path(&self, m: u64, start: u64, n: u64, out: &mut Vec<Hash>) {
        if n <= 1 {
            return;
        }
        let k = split(n);
        if m < k {
            self.path(m, start, k, out);
            out.push(self.mth(start + k, n - k));
        } else {
            self.path(m - k, start + k, n - k, out);
            out.push(self.mth(start, k));
        }
    }

    /// RFC 9162 consistency path from the tree of `first` leaves to the tree
    /// of `second` leaves (empty when `first` is 0 or equal to `second`).
    pub fn consistency_path(&self, first: u64, second: u64) -> Option<Vec<Hash>> {
        if first > second || second > self.len() {
            return None;
        }
        let mut out = Vec::new();
        if first > 0 && first < second {
            self.subproof(first, 0, second, true, &mut out);
        }
        Some(out)
    }

    fn subproof(&self, m: u64, start: u64, n: u64, complete: bool, out: &mut Vec<Hash>) {
        if m == n {
            if !complete {
                out.push(self.mth(start, n));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, start, k, complete, out);
            out.push(self.mth(start + k, n - k));
        } else {
            self.subproof(m - k, start + k, n - k, false, out);
            out.push(self.mth(start, k));
        }
    }
}

/// The right edge of a tree: the roots of its complete subtrees, largest
/// first. Enough to compute the root while streaming leaves, in O(log n)
/// memory (what `verify` uses).
#[derive(Default)]
pub struct Frontier {
    size: u64,
    stack: Vec<Hash>,
}

impl Frontier {
    pub fn push(&mut self, leaf: Hash) {
        let mut node = leaf;
        let mut s = self.size;
        while s & 1 == 1 {
            let left = self
                .stack
                .pop()
                .expect("frontier holds one subtree per set bit");
            node = node_hash(&left, &node);
            s >>= 1;
        }
        self.stack.push(node);
        self.size += 1;
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn root(&self) -> Hash {
        let mut it = self.stack.iter().rev();
        let Some(mut acc) = it.next().copied() else {
            return empty_root();
        };
        for left in it {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

/// An RFC 9162 inclusion proof (the fields of `InclusionProofDataV2` but the
/// log id), hashes as lower-case hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    pub leaf_index: u64,
    pub tree_size: u64,
    #[serde(with = "hex_list")]
    pub inclusion_path: Vec<Hash>,
}

/// An RFC 9162 consistency proof between two tree sizes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyProof {
    pub first: u64,
    pub second: u64,
    #[serde(with = "hex_list")]
    pub consistency_path: Vec<Hash>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProofError {
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("the proof does not lead to the expected root (path length {len})")]
    RootMismatch { len: usize },
    #[error("the proof's path has the wrong length for its sizes")]
    BadLength,
    #[error("first tree size {first} is larger than second tree size {second}")]
    SizesOutOfOrder { first: u64, second: u64 },
    #[error("the roots of equal-sized trees differ")]
    EqualSizesDiffer,
}

/// RFC 9162 §2.1.3.2: does `leaf` sit at `proof.leaf_index` of the tree of
/// `proof.tree_size` leaves whose root is `root`?
pub fn verify_inclusion(
    leaf: &Hash,
    proof: &InclusionProof,
    root: &Hash,
) -> Result<(), ProofError> {
    let (index, size) = (proof.leaf_index, proof.tree_size);
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in &proof.inclusion_path {
        if s == 0 {
            return Err(ProofError::BadLength);
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::BadLength);
    }
    if &r != root {
        return Err(ProofError::RootMismatch {
            len: proof.inclusion_path.len(),
        });
    }
    Ok(())
}

/// RFC 9162 §2.1.4.2: is the tree of `proof.first` leaves with root
/// `first_root` a prefix of the tree of `proof.second` leaves with root
/// `second_root`? A first size of 0 is a prefix of everything; equal sizes
/// need equal roots and an empty path.
pub fn verify_consistency(
    proof: &ConsistencyProof,
    first_root: &Hash,
    second_root: &Hash,
) -> Result<(), ProofError> {
    let (first, second) = (proof.first, proof.second);
    let path = &proof.consistency_path;
    if first > second {
        return Err(ProofError::SizesOutOfOrder { first, second });
    }
    if first == 0 || first == second {
        if !path.is_empty() {
            return Err(ProofError::BadLength);
        }
        if first == second && first_root != second_root {
            return Err(ProofError::EqualSizesDiffer);
        }
        return Ok(());
    }
    if path.is_empty() {
        return Err(ProofError::BadLength);
    }
    let mut path: Vec<Hash> = path.clone();
    if first.is_power_of_two() {
        path.insert(0, *first_root);
    }
    let (mut f, mut s) = (first - 1, second - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if s == 0 {
            return Err(ProofError::BadLength);
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::BadLength);
    }
    if &fr != first_root || &sr != second_root {
        return Err(ProofError::RootMismatch {
            len: proof.consistency_path.len(),
        });
    }
    Ok(())
}

mod hex_list {
    use super::{from_hex, to_hex, Hash};
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[Hash], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|h| to_hex(h)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Hash>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        v.iter()
            .enumerate()
            .map(|(i, s)| {
                from_hex::<32>(s)
                    .ok_or_else(|| D::Error::custom(format!("path[{i}] is not 64 hex digits")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9162's definition, recursively over leaf hashes, as the reference.
    fn reference_mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&reference_mth(&leaves[..k]), &reference_mth(&leaves[k..]))
            }
        }
    }

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(format!("entry {i}").as_bytes()))
            .collect()
    }

    #[test]
    fn roots_match_the_rfc_definition_and_the_frontier() {
        let all = leaves(70);
        let mut tree = Tree::new();
        let mut frontier = Frontier::default();
        assert_eq!(tree.root(0), Some(empty_root()));
        assert_eq!(frontier.root(), empty_root());
        for (i, l) in all.iter().enumerate() {
            tree.push(*l);
            frontier.push(*l);
            let want = reference_mth(&all[..=i]);
            assert_eq!(frontier.root(), want, "frontier at size {}", i + 1);
            for size in 0..=i + 1 {
                assert_eq!(tree.root(size as u64).unwrap(), reference_mth(&all[..size]));
            }
        }
        assert_eq!(tree.root(71), None);
    }

    /// The RFC 6962 §2.1.3 test vector: the root of the empty tree.
    #[test]
    fn empty_root_is_sha256_of_nothing() {
        assert_eq!(
            to_hex(&empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn every_inclusion_proof_verifies_and_fails_when_tampered() {
        let all = leaves(33);
        let mut tree = Tree::new();
        for l in &all {
            tree.push(*l);
        }
        for size in 1..=33u64 {
            let root = tree.root(size).unwrap();
            for index in 0..size {
                let proof = InclusionProof {
                    leaf_index: index,
                    tree_size: size,
                    inclusion_path: tree.inclusion_path(index, size).unwrap(),
                };
                verify_inclusion(&all[index as usize], &proof, &root)
                    .unwrap_or_else(|e| panic!("{index}/{size}: {e}"));
                // Wrong leaf, wrong index, a flipped path bit, a dropped node.
                assert!(verify_inclusion(&leaf_hash(b"forged"), &proof, &root).is_err());
                if size > 1 {
                    let mut p = proof.clone();
                    p.leaf_index = (index + 1) % size;
                    assert!(verify_inclusion(&all[index as usize], &p, &root).is_err());
                    let mut p = proof.clone();
                    p.inclusion_path[0][0] ^= 1;
                    assert!(verify_inclusion(&all[index as usize], &p, &root).is_err());
                    let mut p = proof.clone();
                    p.inclusion_path.pop();
                    assert!(verify_inclusion(&all[index as usize], &p, &root).is_err());
                }
            }
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_fails_when_tampered() {
        let all = leaves(40);
        let mut tree = Tree::new();
        for l in &all {
            tree.push(*l);
        }
        for second in 0..=40u64 {
            for first in 0..=second {
                let proof = ConsistencyProof {
                    first,
                    second,
                    consistency_path: tree.consistency_path(first, second).unwrap(),
                };
                let (r1, r2) = (tree.root(first).unwrap(), tree.root(second).unwrap());
                verify_consistency(&proof, &r1, &r2)
                    .unwrap_or_else(|e| panic!("{first}->{second}: {e}"));
                if first > 0 && first < second {
                    let mut p = proof.clone();
                    p.consistency_path[0][5] ^= 0x80;
                    assert!(
                        verify_consistency(&p, &r1, &r2).is_err(),
                        "{first}->{second}"
                    );
                    let other = leaf_hash(b"other");
                    assert!(verify_consistency(&proof, &other, &r2).is_err());
                    assert!(verify_consistency(&proof, &r1, &other).is_err());
                    let mut p = proof.clone();
                    p.consistency_path.pop();
                    assert!(verify_consistency(&p, &r1, &r2).is_err());
                }
            }
        }
    }

    #[test]
    fn truncate_restores_an_earlier_tree() {
        let all = leaves(21);
        let mut tree = Tree::new();
        for l in &all {
            tree.push(*l);
        }
        tree.truncate(13);
        assert_eq!(tree.len(), 13);
        assert_eq!(tree.root(13).unwrap(), reference_mth(&all[..13]));
        for l in &all[13..] {
            tree.push(*l);
        }
        assert_eq!(tree.root(21).unwrap(), reference_mth(&all));
    }

    #[test]
    fn hex_round_trips_and_refuses_bad_input() {
        let h = leaf_hash(b"x");
        assert_eq!(from_hex::<32>(&to_hex(&h)), Some(h));
        assert_eq!(from_hex::<32>("zz"), None);
        assert_eq!(from_hex::<2>("0g00"), None);
    }
}
