//! nginx's binary geo range base (`FILE.bin` beside a geo `include FILE`): the layout
//! `ngx_stream_geo_create_binary_base` writes on 64-bit little-endian Linux, byte for
//! byte, and the checks `ngx_stream_geo_include_binary_base` makes before using one.
//!
//! Layout: a 16-byte header (`GEORNG`, version 0, pointer size 8, 0x12345678, the CRC32
//! of everything after it); the values as nginx's 16-byte variable values (length and
//! flag bits, then the offset of the bytes that follow, padded to 8) in the pre-order of
//! nginx's red-black tree of values, ended by an empty one; 65,536 offsets, one per /16;
//! then each /16's ranges (offset of the value, first, last) ended by a zero offset.
//! Offsets are from the start of the file, where nginx's pointers were.

use crate::stream::geo_module::Range;

const HEADER: [u8; 12] = [b'G', b'E', b'O', b'R', b'N', b'G', 0, 8, 0x78, 0x56, 0x34, 0x12];
const HEADER_LEN: usize = 16;
/// `ngx_stream_variable_value_t`: 28 bits of length, four flags, a pointer.
const VV_LEN: usize = 16;
/// `ngx_stream_geo_range_t`: a pointer, two u_shorts, padding.
const RANGE_LEN: usize = 16;
const HIGHS: usize = 0x10000;
/// `valid = 1` in the flag bits above the length.
const VALID: u32 = 1 << 28;

/// What reading a base found.
pub enum Base {
    /// Not nginx's header (`incompatible binary geo range base`).
    Incompatible,
    /// The checksum (or the layout it covers) is wrong (`CRC32 mismatch ...`).
    CrcMismatch,
    /// The values (by their bytes) and the ranges of each /16, values as indexes.
    Ranges { values: Vec<Vec<u8>>, low: Vec<(u16, Vec<Range>)> },
}

fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// The base for `values` (index 0, the null value, is not one of nginx's: it is never
/// written) and the non-empty ranges of each /16, in ascending order.
pub fn encode(values: &[Vec<u8>], low: &[(u16, &[Range])]) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN];
    out[..HEADER.len()].copy_from_slice(&HEADER);

    let mut offsets = vec![0u64; values.len()];
    for i in preorder(values) {
        let v = &values[i];
        offsets[i] = out.len() as u64;
        let len = v.len() as u32 & 0x0fff_ffff;
        out.extend_from_slice(&(len | VALID).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&(out.len() as u64 + 8).to_le_bytes());
        out.extend_from_slice(v);
        out.resize(align8(out.len()), 0);
    }
    out.resize(out.len() + VV_LEN, 0);

    let table = out.len();
    out.resize(table + HIGHS * 8, 0);
    for (high, ranges) in low {
        let at = out.len() as u64;
        let slot = table + usize::from(*high) * 8;
        out[slot..slot + 8].copy_from_slice(&at.to_le_bytes());
        for r in ranges.iter() {
            let value = offsets.get(r.value).copied().unwrap_or(0);
            out.extend_from_slice(&value.to_le_bytes());
            out.extend_from_slice(&r.start.to_le_bytes());
            out.extend_from_slice(&r.end.to_le_bytes());
            out.extend_from_slice(&[0; 4]);
        }
        out.extend_from_slice(&[0; 8]);
    }

    let crc = crc32fast::hash(&out[HEADER_LEN..]);
    out[12..16].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Reads a base. Every offset is checked against the file: nginx trusts its own files,
/// a worker here must not.
pub fn decode(base: &[u8]) -> Base {
    if base.len() < HEADER_LEN || base[..HEADER.len()] != HEADER {
        return Base::Incompatible;
    }
    let stored = u32::from_le_bytes([base[12], base[13], base[14], base[15]]);
    if crc32fast::hash(&base[HEADER_LEN..]) != stored {
        return Base::CrcMismatch;
    }
    match walk(base) {
        Some((values, low)) => Base::Ranges { values, low },
        None => Base::CrcMismatch,
    }
}

type Walked = (Vec<Vec<u8>>, Vec<(u16, Vec<Range>)>);

fn walk(base: &[u8]) -> Option<Walked> {
    let u64_at =
        |at: usize| -> Option<u64> { Some(u64::from_le_bytes(base.get(at..at.checked_add(8)?)?.try_into().ok()?)) };
    let mut values = Vec::new();
    let mut by_offset = std::collections::HashMap::new();
    let mut at = HEADER_LEN;
    loop {
        let word = u32::from_le_bytes(base.get(at..at + 4)?.try_into().ok()?);
        let data = usize::try_from(u64_at(at + 8)?).ok()?;
        if data == 0 {
            break;
        }
        let len = (word & 0x0fff_ffff) as usize;
        values.push(base.get(data..data.checked_add(len)?)?.to_vec());
        by_offset.insert(at as u64, values.len() - 1);
        at = align8(at.checked_add(VV_LEN + len)?);
    }
    let table = at + VV_LEN;
    let mut low = Vec::new();
    // nginx lays the /16s' ranges out one after another, in order: offsets that go back
    // (into ranges already read) are refused, so the walk reads each byte once.
    let mut next = table + HIGHS * 8;
    for high in 0..HIGHS {
        let mut r = usize::try_from(u64_at(table + high * 8)?).ok()?;
        if r == 0 {
            continue;
        }
        if r < next {
            return None;
        }
        let mut ranges = Vec::new();
        loop {
            let value = u64_at(r)?;
            if value == 0 {
                break;
            }
            let b = base.get(r.checked_add(8)?..r.checked_add(12)?)?;
            let start = u16::from_le_bytes([b[0], b[1]]);
            let end = u16::from_le_bytes([b[2], b[3]]);
            ranges.push(Range { start, end, value: *by_offset.get(&value)? });
            r = r.checked_add(RANGE_LEN)?;
        }
        next = r.checked_add(8)?;
        if !ranges.is_empty() {
            low.push((high as u16, ranges));
        }
    }
    Some((values, low))
}

/// The values 1.. in the pre-order of the tree nginx builds of them, inserted in order
/// of first use (`ngx_stream_geo_value`), ordered by CRC32, then length, then bytes
/// (`ngx_str_rbtree_insert_value`), balanced by `ngx_rbtree_insert`.
fn preorder(values: &[Vec<u8>]) -> Vec<usize> {
    let hashes: Vec<u32> = values.iter().map(|v| crc32fast::hash(v)).collect();
    let less = |a: usize, b: usize| {
        (hashes[a], values[a].len(), values[a].as_slice()) < (hashes[b], values[b].len(), values[b].as_slice())
    };
    let mut t = RbTree::default();
    for i in 1..values.len() {
        t.insert(i, less);
    }
    let mut out = Vec::with_capacity(values.len());
    let mut stack: Vec<usize> = t.root.into_iter().collect();
    while let Some(n) = stack.pop() {
        out.push(t.nodes[n].item);
        stack.extend(t.nodes[n].right);
        stack.extend(t.nodes[n].left);
    }
    out
}

struct Node {
    item: usize,
    red: bool,
    parent: Option<usize>,
    left: Option<usize>,
    right: Option<usize>,
}

/// nginx's red-black tree, only as far as inserting goes: nodes in a vector, `None`
/// for nginx's sentinel.
#[derive(Default)]
struct RbTree {
    nodes: Vec<Node>,
    root: Option<usize>,
}

impl RbTree {
    fn is_red(&self, n: Option<usize>) -> bool {
        n.is_some_and(|n| self.nodes[n].red)
    }

    /// `ngx_rbtree_insert` with `less` as `ngx_str_rbtree_insert_value`'s order.
    fn insert(&mut self, item: usize, less: impl Fn(usize, usize) -> bool) {
        let n = self.nodes.len();
        self.nodes.push(Node { item, red: true, parent: None, left: None, right: None });
        let Some(mut temp) = self.root else {
            self.nodes[n].red = false;
            self.root = Some(n);
            return;
        };
        loop {
            let go_left = less(item, self.nodes[temp].item);
            let next = if go_left { self.nodes[temp].left } else { self.nodes[temp].right };
            match next {
                Some(t) => temp = t,
                None => {
                    if go_left {
                        self.nodes[temp].left = Some(n);
                    } else {
                        self.nodes[temp].right = Some(n);
                    }
                    self.nodes[n].parent = Some(temp);
                    break;
                }
            }
        }
        let mut node = n;
        while Some(node) != self.root && self.is_red(self.nodes[node].parent) {
            let Some(parent) = self.nodes[node].parent else { break };
            let Some(grand) = self.nodes[parent].parent else { break };
            let parent_is_left = self.nodes[grand].left == Some(parent);
            let uncle = if parent_is_left { self.nodes[grand].right } else { self.nodes[grand].left };
            if let Some(u) = uncle.filter(|&u| self.nodes[u].red) {
                self.nodes[parent].red = false;
                self.nodes[u].red = false;
                self.nodes[grand].red = true;
                node = grand;
                continue;
            }
            let inner = if parent_is_left {
                self.nodes[parent].right == Some(node)
            } else {
                self.nodes[parent].left == Some(node)
            };
            if inner {
                node = parent;
                self.rotate(node, parent_is_left);
            }
            let Some(parent) = self.nodes[node].parent else { break };
            let Some(grand) = self.nodes[parent].parent else { break };
            self.nodes[parent].red = false;
            self.nodes[grand].red = true;
            self.rotate(grand, !parent_is_left);
        }
        if let Some(r) = self.root {
            self.nodes[r].red = false;
        }
    }

    /// `ngx_rbtree_left_rotate` (`left`) or `ngx_rbtree_right_rotate`.
    fn rotate(&mut self, node: usize, left: bool) {
        let child = if left { self.nodes[node].right } else { self.nodes[node].left };
        let Some(temp) = child else { return };
        let inner = if left { self.nodes[temp].left } else { self.nodes[temp].right };
        if left {
            self.nodes[node].right = inner;
        } else {
            self.nodes[node].left = inner;
        }
        if let Some(i) = inner {
            self.nodes[i].parent = Some(node);
        }
        let parent = self.nodes[node].parent;
        self.nodes[temp].parent = parent;
        match parent {
            None => self.root = Some(temp),
            Some(p) if self.nodes[p].left == Some(node) => self.nodes[p].left = Some(temp),
            Some(p) => self.nodes[p].right = Some(temp),
        }
        if left {
            self.nodes[temp].left = Some(node);
        } else {
            self.nodes[temp].right = Some(node);
        }
        self.nodes[node].parent = Some(temp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Walked {
        let values: Vec<Vec<u8>> = ["", "a", "bb", "loopback", "", "z"].iter().map(|v| v.as_bytes().to_vec()).collect();
        let low = vec![
            (0x7f00, vec![Range { start: 0, end: 0, value: 3 }, Range { start: 1, end: 9, value: 1 }]),
            (0x0a0b, vec![Range { start: 5, end: 0xffff, value: 4 }]),
        ];
        (values, low)
    }

    #[test]
    fn decodes_what_it_encodes() {
        let (values, mut low) = sample();
        low.sort_by_key(|(h, _)| *h);
        let refs: Vec<(u16, &[Range])> = low.iter().map(|(h, r)| (*h, r.as_slice())).collect();
        let base = encode(&values, &refs);
        assert_eq!(base.len() % 8, 0);
        let Base::Ranges { values: got, low: got_low } = decode(&base) else { panic!("not decoded") };
        for ((h, rs), (gh, grs)) in low.iter().zip(&got_low) {
            assert_eq!(h, gh);
            for (r, g) in rs.iter().zip(grs) {
                assert_eq!((r.start, r.end, &values[r.value]), (g.start, g.end, &got[g.value]));
            }
        }
        assert_eq!(got.len(), values.len() - 1, "every value but the null one");
    }

    #[test]
    fn damaged_bases_are_refused_without_panicking() {
        let (values, low) = sample();
        let refs: Vec<(u16, &[Range])> = low.iter().map(|(h, r)| (*h, r.as_slice())).collect();
        let base = encode(&values, &refs);
        assert!(matches!(decode(&base[..15]), Base::Incompatible));
        for cut in [16, 40, base.len() / 2, base.len() - 1] {
            assert!(matches!(decode(&base[..cut]), Base::CrcMismatch), "cut at {cut}");
        }
        let mut flipped = base.clone();
        flipped[20] ^= 0x80;
        assert!(matches!(decode(&flipped), Base::CrcMismatch));
        // A checksum that matches over nonsense offsets is still refused: a value's,
        // then a /16's table entry.
        let table = base.len() - HIGHS * 8 - 3 * RANGE_LEN - 2 * 8;
        for at in [24, table + 0x7f00 * 8] {
            let mut wild = base.clone();
            wild[at..at + 8].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
            let crc = crc32fast::hash(&wild[HEADER_LEN..]);
            wild[12..16].copy_from_slice(&crc.to_le_bytes());
            assert!(matches!(decode(&wild), Base::CrcMismatch), "offset at {at}");
        }
    }

    /// The pre-order is a red-black tree's: in-order sorted, root black, no red node with
    /// a red child, the same number of black nodes on every path.
    #[test]
    fn values_tree_is_red_black() {
        let values: Vec<Vec<u8>> = (0..500).map(|i| format!("v{}", i * 7 % 311).into_bytes()).collect();
        let mut uniq = vec![Vec::new()];
        for v in values {
            if !uniq.contains(&v) {
                uniq.push(v);
            }
        }
        let key = |i: usize| (crc32fast::hash(&uniq[i]), uniq[i].len(), uniq[i].clone());
        let mut t = RbTree::default();
        for i in 1..uniq.len() {
            t.insert(i, |a, b| key(a) < key(b));
        }
        fn check(t: &RbTree, n: Option<usize>, out: &mut Vec<usize>) -> usize {
            let Some(n) = n else { return 1 };
            let node = &t.nodes[n];
            if node.red {
                assert!(!t.is_red(node.left) && !t.is_red(node.right));
            }
            let l = check(t, node.left, out);
            out.push(node.item);
            let r = check(t, node.right, out);
            assert_eq!(l, r);
            l + usize::from(!node.red)
        }
        let mut inorder = Vec::new();
        assert!(!t.is_red(t.root));
        check(&t, t.root, &mut inorder);
        assert_eq!(inorder.len(), uniq.len() - 1);
        assert!(inorder.windows(2).all(|w| key(w[0]) < key(w[1])));
    }
}
