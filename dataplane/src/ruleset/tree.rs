//! The compiled form of one address family: rules as boxes in a four-dimensional key space,
//! and up to four decision trees over them (see the module docs of `ruleset` for the design
//! and the measurements behind it).
//!
//! Key dimensions, in this order: source address, destination address, `proto << 16 | first
//! L4 field`, second L4 field. A rule is, per dimension, a sorted list of disjoint inclusive
//! intervals (a CIDR list or a port-range list, merged). Most rules have one interval per
//! dimension; those are exactly their bounding box. The others are checked against their lists
//! after their box matched.
//!
//! A rule is copied into every leaf whose box it overlaps; the build stops copying rules after
//! the first one that covers a node's whole box, since nothing after it can win there.

use std::fmt;

/// Number of key dimensions.
pub(crate) const DIMS: usize = 4;
/// Dimension of the source address.
pub(crate) const D_SRC: usize = 0;
/// Dimension of the destination address.
pub(crate) const D_DST: usize = 1;
/// Largest value of the protocol-and-first-L4-field dimension: `proto << 16 | sport`.
pub(crate) const PROTO_L4_MAX: u32 = 0xFF_FFFF;
/// Largest value of the second L4 dimension.
pub(crate) const L4_MAX: u32 = 0xFFFF;

/// Deepest split; a node this deep becomes a leaf whatever its size. It bounds recursion.
const MAX_DEPTH: usize = 80;
/// `Compiled::lists` value for a rule that is exactly its box.
const NO_LISTS: u32 = u32::MAX;

/// An unsigned integer type holding one key dimension: `u32` for IPv4, `u128` for IPv6.
pub(crate) trait Key: Copy + Ord + Default + fmt::Debug + Send + Sync + 'static {
    /// The largest address.
    const MAX: Self;
    const ZERO: Self;
    fn from_u32(v: u32) -> Self;
    /// `self + 1`; the caller ensures `self < MAX`.
    fn inc(self) -> Self;
    /// `self - 1`; the caller ensures `self > 0`.
    fn dec(self) -> Self;
    /// `self - other`, wrapping.
    fn wsub(self, other: Self) -> Self;
    /// True if `lo..=hi` holds at least half of the address space.
    fn is_large(lo: Self, hi: Self) -> bool;
    /// `span` as `Chunk::span` stores it (see `chunk_mask`).
    fn bias(span: Self) -> Self;
    /// Bit `j` set if `key` is inside lane `j`: `key[d] - lo[d][j] <= span[d][j]` (wrapping,
    /// unsigned) in every dimension, with `span` stored through `bias`.
    fn chunk_mask(
        key: &[Self; DIMS],
        lo: &[[Self; LANES]; DIMS],
        span: &[[Self; LANES]; DIMS],
    ) -> u32;
}

impl Key for u32 {
    const MAX: u32 = u32::MAX;
    const ZERO: u32 = 0;
    fn from_u32(v: u32) -> u32 {
        v
    }
    fn inc(self) -> u32 {
        self + 1
    }
    fn dec(self) -> u32 {
        self - 1
    }
    #[inline(always)]
    fn wsub(self, other: u32) -> u32 {
        self.wrapping_sub(other)
    }
    fn is_large(lo: u32, hi: u32) -> bool {
        hi - lo >= u32::MAX / 2
    }
    fn bias(span: u32) -> u32 {
        span ^ SIGN
    }
    /// x86-64's baseline vector ISA (SSE2) compares only signed 32-bit lanes, so both sides
    /// are moved into signed range by flipping the sign bit (done once for `span` by `bias`),
    /// which preserves unsigned order. Written as fixed-size lane loops, this compiles to
    /// `psubd`/`pxor`/`pcmpgtd`/`por` on whole chunks: about 11 instructions per rule, against
    /// about 19 for four lanes or for a rule-at-a-time check.
    // Not inlined: inlined into `lookup`, LLVM vectorized it worse (183 -> 262 ns per lookup at
    // 10,000 rules).
    #[inline(never)]
    #[expect(
        clippy::cast_possible_wrap,
        clippy::cast_sign_loss,
        reason = "lane arithmetic of the compare: the casts reinterpret bit patterns, they do not convert numbers"
    )]
    fn chunk_mask(
        key: &[u32; DIMS],
        lo: &[[u32; LANES]; DIMS],
        span: &[[u32; LANES]; DIMS],
    ) -> u32 {
        let mut out = [0i32; LANES];
        for d in 0..DIMS {
            for j in 0..LANES {
                // Reinterpreting casts: the sign flip makes signed order equal unsigned order.
                let t = (key[d].wrapping_sub(lo[d][j]) ^ SIGN) as i32;
                out[j] |= -i32::from(t > span[d][j] as i32);
            }
        }
        let mut m = 0;
        for (j, o) in out.iter().enumerate() {
            m |= o & (1 << j);
        }
        // Cannot truncate: only the low LANES bits can be set.
        !(m as u32) & LANE_BITS
    }
}

/// The sign bit of a 32-bit lane.
const SIGN: u32 = 1 << 31;
/// One bit per lane.
const LANE_BITS: u32 = (1 << LANES) - 1;

impl Key for u128 {
    const MAX: u128 = u128::MAX;
    const ZERO: u128 = 0;
    fn from_u32(v: u32) -> u128 {
        u128::from(v)
    }
    fn inc(self) -> u128 {
        self + 1
    }
    fn dec(self) -> u128 {
        self - 1
    }
    #[inline(always)]
    fn wsub(self, other: u128) -> u128 {
        self.wrapping_sub(other)
    }
    fn is_large(lo: u128, hi: u128) -> bool {
        hi - lo >= u128::MAX / 2
    }
    fn bias(span: u128) -> u128 {
        span
    }
    #[inline]
    fn chunk_mask(
        key: &[u128; DIMS],
        lo: &[[u128; LANES]; DIMS],
        span: &[[u128; LANES]; DIMS],
    ) -> u32 {
        let mut m = LANE_BITS;
        for j in 0..LANES {
            let mut inside = true;
            for d in 0..DIMS {
                inside &= key[d].wrapping_sub(lo[d][j]) <= span[d][j];
            }
            m &= !(u32::from(!inside) << j);
        }
        m
    }
}

/// An inclusive interval.
pub(crate) type Iv<K> = (K, K);
/// A box: one interval per dimension.
pub(crate) type Bx<K> = [Iv<K>; DIMS];

/// The whole key space.
pub(crate) fn full_box<K: Key>() -> Bx<K> {
    [
        (K::ZERO, K::MAX),
        (K::ZERO, K::MAX),
        (K::ZERO, K::from_u32(PROTO_L4_MAX)),
        (K::ZERO, K::from_u32(L4_MAX)),
    ]
}

/// When to give rules that are wide in an address trees of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Partition {
    /// One tree.
    #[cfg_attr(not(test), allow(dead_code))] // Chosen only by tests; `Auto` may pick it.
    Never,
    /// Up to four trees.
    #[cfg_attr(not(test), allow(dead_code))] // Chosen only by tests; `Auto` may pick it.
    Always,
    /// One tree if it holds at most `SINGLE_TREE_COPIES` copies per rule (plus a constant),
    /// else four.
    Auto,
}

/// See `Partition::Auto`.
const SINGLE_TREE_COPIES: usize = 2;
/// A single tree with a leaf longer than this is compared with the partition (`Family::build`).
const LONG_LEAF: usize = 64;

/// Build-time knobs (tests vary them to exercise every shape of tree).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    /// A node with at most this many rules becomes a leaf.
    pub binth: usize,
    pub partition: Partition,
    /// If the leaves of one tree hold more than `budget_factor * rules + 4096` rule copies, the
    /// tree is rebuilt with `binth` doubled, trading lookup time for memory.
    pub budget_factor: usize,
}

impl Params {
    pub(crate) const DEFAULT: Params = Params {
        binth: 8,
        partition: Partition::Auto,
        budget_factor: 64,
    };
}

/// Trees per family: one per partition group. Groups without rules get a tree of one empty
/// leaf, so that the lookup loop over trees has a fixed length, unrolls, and keeps its cursors
/// in registers.
const MAX_TREES: usize = 4;
/// A child word is `node index << CHILD_SHIFT | dimension the child splits`.
const CHILD_SHIFT: u32 = 3;
const DIM_MASK: u32 = (1 << CHILD_SHIFT) - 1;
/// Key array length: `DIMS` rounded up to a power of two so that `word & DIM_MASK` indexes it
/// without a bounds check.
const KEY_SLOTS: usize = 8;

/// A rule as a box, plus its per-dimension interval lists if it is not exactly its box.
#[derive(Debug, Clone, Copy)]
struct Compiled<K> {
    lo: [K; DIMS],
    hi: [K; DIMS],
    /// Index into `Family::lists`, or `NO_LISTS`.
    lists: u32,
}

/// Where one dimension's interval list lives in `Family::ivs`.
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    start: u32,
    len: u32,
}

/// Rules per leaf chunk.
pub(crate) const LANES: usize = 8;

/// Up to `LANES` rules of a leaf, stored by dimension so that one vector compare per dimension
/// tests them all. A key is inside rule `j`'s box when `key[d] - lo[d][j] <= span[d][j]`
/// (wrapping) in every dimension (`span` stored through `Key::bias`). Unused lanes have
/// `lo = MAX`, `span = 0`, which no protocol or L4 value (both far below MAX) can satisfy, and
/// `rule = u32::MAX`.
#[derive(Debug, Clone, Copy)]
struct Chunk<K> {
    lo: [[K; LANES]; DIMS],
    span: [[K; LANES]; DIMS],
    /// Index of each rule in the source list (priority: lower wins), ascending.
    rule: [u32; LANES],
    /// Bit `j` set if lane `j`'s rule has interval lists (see `Family::lists_of`).
    has_lists: u32,
}

impl<K: Key> Chunk<K> {
    fn empty() -> Chunk<K> {
        Chunk {
            lo: [[K::MAX; LANES]; DIMS],
            span: [[K::bias(K::ZERO); LANES]; DIMS],
            rule: [u32::MAX; LANES],
            has_lists: 0,
        }
    }
}

/// Split points per node; a node has `WAYS + 1` children.
const WAYS: usize = 3;

/// A tree node: up to three split points on one dimension, ascending, and four children. A key
/// goes to `child[i]` where `i` counts the points at or below `key[dim]`; the three compares
/// are independent, so one step does the work of two binary levels at about the same latency.
/// `dim` is not stored here but in the low bits of the child word that led to this node, so
/// the key value is fetched while the node itself is still being loaded.
///
/// A node that needs fewer points repeats one (`[p, p, q]` sends nothing to `child[1]`). A leaf
/// has all points 0 on dimension 0 and `child[WAYS]` pointing to itself, so the same step
/// applied to a leaf stays there: every lookup takes the same number of steps, with no "is this
/// a leaf" test and no data-dependent branch on the way down. A leaf's `child[0]` (never taken)
/// holds its index in `Tree::leaves`.
/// Aligned to 32 bytes (the size of an IPv4 node) so that indexing is a shift.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(32))]
struct Node<K> {
    pt: [K; WAYS],
    child: [u32; WAYS + 1],
}

#[derive(Debug)]
struct Tree<K> {
    nodes: Vec<Node<K>>,
    /// Child word of the root.
    root: u32,
    /// Per leaf: its first chunk in `chunks` and its number of chunks.
    leaves: Vec<(u32, u32)>,
    /// Rule copies, leaf after leaf, in priority order within each leaf.
    chunks: Vec<Chunk<K>>,
    /// The best (lowest) source index in the tree (`u32::MAX` if empty); trees are visited in
    /// this order.
    first: u32,
    /// Depth of the deepest leaf (root = 0).
    depth: usize,
    /// Leaf size threshold the tree was finally built with.
    binth: usize,
    /// Rule copies in `chunks`, and the most in one leaf.
    copies: usize,
    max_leaf: usize,
}

impl<K: Key> Tree<K> {
    /// The child word of the leaf `k` falls in.
    #[inline(always)]
    fn walk(&self, k: &[K; KEY_SLOTS]) -> u32 {
        let mut w = self.root;
        for _ in 0..self.depth {
            w = self.step(w, k);
        }
        w
    }

    /// One step down from the node `w` leads to (a leaf stays where it is).
    #[inline(always)]
    fn step(&self, w: u32, k: &[K; KEY_SLOTS]) -> u32 {
        let n = &self.nodes[(w >> CHILD_SHIFT) as usize];
        let v = k[(w & DIM_MASK) as usize];
        // Three independent compares; their sum picks the child (a load, not a branch).
        let i = n.pt.iter().map(|&p| usize::from(v >= p)).sum::<usize>();
        n.child[i]
    }

    /// A tree of one empty leaf.
    fn empty() -> Tree<K> {
        Tree {
            nodes: vec![Node {
                pt: [K::ZERO; WAYS],
                child: [0; WAYS + 1],
            }],
            root: 0,
            leaves: vec![(0, 0)],
            chunks: Vec::new(),
            first: u32::MAX,
            depth: 0,
            binth: 0,
            copies: 0,
            max_leaf: 0,
        }
    }
}

/// Shape of the compiled structure, for tuning and reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FamilyStats {
    /// Rules of this family.
    pub rules: usize,
    /// Decision trees with rules in them.
    pub trees: usize,
    /// Tree nodes, splits and leaves.
    pub nodes: usize,
    /// Rule copies held in leaves.
    pub leaf_entries: usize,
    /// Largest leaf.
    pub max_leaf: usize,
    /// Deepest leaf (root = 0): the number of steps every lookup takes.
    pub max_depth: usize,
    /// Largest leaf-size threshold any tree had to fall back to (see `Params::budget_factor`).
    pub max_binth: usize,
}

impl FamilyStats {
    /// Adds `o`'s counts to these (maxima stay maxima).
    pub fn add(&mut self, o: &FamilyStats) {
        self.rules += o.rules;
        self.trees += o.trees;
        self.nodes += o.nodes;
        self.leaf_entries += o.leaf_entries;
        self.max_leaf = self.max_leaf.max(o.max_leaf);
        self.max_depth = self.max_depth.max(o.max_depth);
        self.max_binth = self.max_binth.max(o.max_binth);
    }
}

/// The compiled rules of one address family.
#[derive(Debug)]
pub(crate) struct Family<K> {
    /// Boxes of the rules, used while building (emptied afterwards).
    rules: Vec<Compiled<K>>,
    /// Interval lists of the rules that are not exactly their box.
    lists: Vec<[Span; DIMS]>,
    /// (source index, index in `lists`) of those rules, sorted.
    lists_of: Vec<(u32, u32)>,
    ivs: Vec<Iv<K>>,
    /// Index in the source rule list of each compiled rule (increasing).
    source: Vec<u32>,
    /// Sorted by `first`.
    trees: [Tree<K>; MAX_TREES],
    /// Largest `Tree::depth`.
    depth: usize,
    /// Only `trees[0]` has rules.
    single: bool,
}

/// Build was abandoned because the tree outgrew its budget or an index its bits.
struct Overflow;

impl<K: Key> Family<K> {
    pub(crate) fn new() -> Family<K> {
        Family {
            rules: Vec::new(),
            lists: Vec::new(),
            lists_of: Vec::new(),
            ivs: Vec::new(),
            source: Vec::new(),
            trees: std::array::from_fn(|_| Tree::empty()),
            depth: 0,
            single: true,
        }
    }

    /// Adds a rule. `dims` holds, per dimension, a non-empty sorted list of disjoint intervals;
    /// rules must be added in priority order.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "interval and list counts are below the rule count, and compile refuses more than u32::MAX rules"
    )]
    pub(crate) fn push(&mut self, source: u32, dims: &[Vec<Iv<K>>; DIMS]) {
        let mut c = Compiled {
            lo: [K::ZERO; DIMS],
            hi: [K::ZERO; DIMS],
            lists: NO_LISTS,
        };
        for (d, l) in dims.iter().enumerate() {
            c.lo[d] = l[0].0;
            c.hi[d] = l[l.len() - 1].1;
        }
        if dims.iter().any(|l| l.len() > 1) {
            let mut spans = [Span::default(); DIMS];
            for (d, l) in dims.iter().enumerate() {
                // Cannot truncate: a ruleset has at most u32::MAX rules and every list came from
                // one rule's fields, far below that in total for any ruleset that fits in memory.
                spans[d] = Span {
                    start: self.ivs.len() as u32,
                    len: l.len() as u32,
                };
                self.ivs.extend_from_slice(l);
            }
            c.lists = self.lists.len() as u32;
            self.lists_of.push((source, c.lists));
            self.lists.push(spans);
        }
        self.rules.push(c);
        self.source.push(source);
    }

    /// Builds the trees. Called once, after the last `push`.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "rule indices: compile refuses more than u32::MAX rules"
    )]
    pub(crate) fn build(&mut self, p: Params) {
        if self.rules.is_empty() {
            return;
        }
        let all: Vec<u32> = (0..self.rules.len()).map(|i| i as u32).collect();
        let mut trees: [Tree<K>; MAX_TREES] = std::array::from_fn(|_| Tree::empty());
        let single = match p.partition {
            Partition::Never => Some(self.tree(&all, p.binth, p.budget_factor)),
            Partition::Always => None,
            Partition::Auto => {
                let budget = SINGLE_TREE_COPIES
                    .saturating_mul(all.len())
                    .saturating_add(1024);
                self.try_tree(&all, p.binth, budget).ok()
            }
        };
        let partitioned = |fam: &Self| {
            // Partition (EffiCuts' idea, reduced to the two address dimensions): a rule that is
            // wide in an address is copied into most leaves of a tree that splits on that
            // address, so rules wide in src, in dst, in both and in neither get separate trees.
            let mut groups: [Vec<u32>; MAX_TREES] = Default::default();
            for (&i, r) in all.iter().zip(&fam.rules) {
                let g = usize::from(K::is_large(r.lo[D_SRC], r.hi[D_SRC]))
                    | usize::from(K::is_large(r.lo[D_DST], r.hi[D_DST])) << 1;
                groups[g].push(i);
            }
            let mut trees: [Tree<K>; MAX_TREES] = std::array::from_fn(|_| Tree::empty());
            for (slot, g) in trees.iter_mut().zip(groups) {
                if !g.is_empty() {
                    *slot = fam.tree(&g, p.binth, p.budget_factor);
                }
            }
            trees
        };
        match single {
            // One tree is small enough, but rules it could not part were left in one long
            // leaf (rules that overlap in every dimension, each wide where another is narrow:
            // one wide in the source beside one narrow in it and wide in the ports): the
            // partition may part them by the address they are wide in. Kept if its longest
            // leaf is shorter. Measured: bench.py's filler rules as group rules left a
            // 500-rule leaf in one tree, 400 ns a lookup; partitioned, 250 and 60 ns.
            Some(t) if t.max_leaf > LONG_LEAF && p.partition == Partition::Auto => {
                let parts = partitioned(self);
                let longest = parts.iter().map(|t| t.max_leaf).max().unwrap_or(0);
                if longest < t.max_leaf {
                    trees = parts;
                } else {
                    trees[0] = t;
                }
            }
            Some(t) => trees[0] = t,
            None => trees = partitioned(self),
        }
        trees.sort_by_key(|t| t.first);
        self.depth = trees.iter().map(|t| t.depth).max().unwrap_or(0);
        self.single = trees[1..].iter().all(|t| t.copies == 0);
        self.trees = trees;
        self.rules = Vec::new();
    }

    /// A tree of `set` (ascending, not empty): leaves of at most `binth` rules where possible,
    /// and `binth` doubled until the tree holds at most `budget_factor` copies per rule (plus a
    /// constant), trading lookup time for memory.
    fn tree(&self, set: &[u32], binth: usize, budget_factor: usize) -> Tree<K> {
        let budget = budget_factor.saturating_mul(set.len()).saturating_add(4096);
        let mut binth = binth.max(1);
        loop {
            match self.try_tree(set, binth, budget) {
                Ok(t) => return t,
                // A single leaf holding every rule always fits the budget, so this ends.
                Err(Overflow) => binth = binth.saturating_mul(2),
            }
        }
    }

    fn try_tree(&self, set: &[u32], binth: usize, budget: usize) -> Result<Tree<K>, Overflow> {
        let mut b = Builder {
            fam: self,
            nodes: Vec::new(),
            leaves: Vec::new(),
            chunks: Vec::new(),
            copies: 0,
            max_leaf: 0,
            depth: 0,
            binth,
            budget,
        };
        let root = b.build(&mut set.to_vec(), &full_box(), 0)?;
        let mut t = Tree {
            nodes: b.nodes,
            root,
            leaves: b.leaves,
            chunks: b.chunks,
            first: self.source[set[0] as usize],
            depth: b.depth,
            binth,
            copies: b.copies,
            max_leaf: b.max_leaf,
        };
        t.nodes.shrink_to_fit();
        t.leaves.shrink_to_fit();
        t.chunks.shrink_to_fit();
        Ok(t)
    }

    /// The best (lowest) index in the source rule list of a rule matching `key`.
    // Always inlined: with the tier loop around it LLVM stopped inlining it into
    // `Ruleset::lookup_peer`, which cost about 20 instructions a lookup (scripts/framecost).
    #[inline(always)]
    pub(crate) fn lookup(&self, key: &[K; DIMS]) -> Option<u32> {
        let mut k = [K::ZERO; KEY_SLOTS];
        k[..DIMS].copy_from_slice(key);
        // Walk the trees down together, a fixed number of steps (a loop count the branch
        // predictor learns): no data-dependent branch, and the four walks are independent, so
        // the CPU overlaps them. Walking them one after the other, each to its own depth, does
        // fewer steps but measured slower (197 -> 243 ns at 10,000 rules).
        let mut at: [u32; MAX_TREES] = std::array::from_fn(|t| self.trees[t].root);
        if self.single {
            at[0] = self.trees[0].walk(&k);
        } else {
            for _ in 0..self.depth {
                for (t, w) in self.trees.iter().zip(at.iter_mut()) {
                    *w = t.step(*w, &k);
                }
            }
        }
        // Test the first chunk of every tree's leaf before looking at any result: the chunks'
        // loads are independent, so their cache misses overlap too.
        let mut first = [(0usize, 0usize, 0u32); MAX_TREES];
        for ((t, &w), f) in self.trees.iter().zip(&at).zip(first.iter_mut()) {
            let leaf = t.nodes[(w >> CHILD_SHIFT) as usize].child[0];
            let (start, len) = t.leaves[leaf as usize];
            let (start, len) = (start as usize, len as usize);
            let bits = match t.chunks.get(start) {
                Some(c) if len > 0 => K::chunk_mask(key, &c.lo, &c.span),
                _ => 0,
            };
            *f = (start, len, bits);
        }
        let mut best = u32::MAX;
        for (t, &(start, len, bits)) in self.trees.iter().zip(&first) {
            // Trees are sorted by their best rule: none from here on can beat `best`.
            if t.first >= best {
                break;
            }
            for (i, c) in t.chunks[start..start + len].iter().enumerate() {
                if c.rule[0] >= best {
                    break;
                }
                let bits = if i == 0 {
                    bits
                } else {
                    K::chunk_mask(key, &c.lo, &c.span)
                };
                if let Some(r) = self.resolve(c, bits, best, key) {
                    best = r;
                    break;
                }
            }
        }
        (best != u32::MAX).then_some(best)
    }

    /// The best rule of chunk `c` that matches `key` and beats `best`, given the lanes whose
    /// boxes hold `key` (`bits`). Lanes are in priority order, so the first lane that really
    /// matches wins; a lane with interval lists has matched only its bounding box so far.
    #[inline]
    fn resolve(&self, c: &Chunk<K>, mut bits: u32, best: u32, key: &[K; DIMS]) -> Option<u32> {
        while bits != 0 {
            let j = bits.trailing_zeros() as usize;
            if c.rule[j] >= best {
                return None;
            }
            if c.has_lists & (1 << j) == 0 || self.matches_lists(c.rule[j], key) {
                return Some(c.rule[j]);
            }
            bits &= bits - 1;
        }
        None
    }

    /// True if `key` is inside the interval lists of the rule with source index `rule` (which
    /// has lists).
    #[cold]
    fn matches_lists(&self, rule: u32, key: &[K; DIMS]) -> bool {
        let Ok(i) = self.lists_of.binary_search_by_key(&rule, |&(r, _)| r) else {
            return false;
        };
        let l = self.lists_of[i].1 as usize;
        self.lists[l].iter().zip(key).all(|(s, &k)| {
            let ivs = &self.ivs[s.start as usize..(s.start + s.len) as usize];
            // The first interval that does not end before `k` is the only candidate.
            let i = ivs.partition_point(|iv| iv.1 < k);
            ivs.get(i).is_some_and(|iv| iv.0 <= k)
        })
    }

    /// The intervals of rule `r` in dimension `d` (only while building).
    fn dim(&self, r: usize, d: usize) -> DimIvs<'_, K> {
        let c = &self.rules[r];
        if c.lists == NO_LISTS {
            DimIvs::One((c.lo[d], c.hi[d]))
        } else {
            let s = self.lists[c.lists as usize][d];
            DimIvs::Many(&self.ivs[s.start as usize..(s.start + s.len) as usize])
        }
    }

    /// True if rule `r` holds all of box `b`.
    fn covers(&self, r: usize, b: &Bx<K>) -> bool {
        (0..DIMS).all(|d| {
            let (lo, hi) = b[d];
            self.dim(r, d)
                .ivs()
                .iter()
                .any(|iv| iv.0 <= lo && hi <= iv.1)
        })
    }

    /// True if rule `r` has a point in `lo..=hi` in dimension `d`.
    fn overlaps(&self, r: usize, d: usize, lo: K, hi: K) -> bool {
        self.dim(r, d)
            .ivs()
            .iter()
            .any(|iv| iv.0 <= hi && lo <= iv.1)
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        let mut m = self.rules.capacity() * std::mem::size_of::<Compiled<K>>()
            + self.lists.capacity() * std::mem::size_of::<[Span; DIMS]>()
            + self.lists_of.capacity() * 8
            + self.ivs.capacity() * std::mem::size_of::<Iv<K>>()
            + self.source.capacity() * 4;
        for t in &self.trees {
            m += t.nodes.capacity() * std::mem::size_of::<Node<K>>()
                + t.leaves.capacity() * std::mem::size_of::<(u32, u32)>()
                + t.chunks.capacity() * std::mem::size_of::<Chunk<K>>();
        }
        m
    }

    pub(crate) fn stats(&self) -> FamilyStats {
        let mut s = FamilyStats {
            rules: self.source.len(),
            max_depth: self.depth,
            ..FamilyStats::default()
        };
        for t in self.trees.iter().filter(|t| t.copies > 0) {
            s.trees += 1;
            s.nodes += t.nodes.len();
            s.leaf_entries += t.copies;
            s.max_binth = s.max_binth.max(t.binth);
            s.max_leaf = s.max_leaf.max(t.max_leaf);
        }
        s
    }
}

/// Box `b` cut in dimension `d` at `p`: below `p`, and from `p` up.
fn halves<K: Key>(b: &Bx<K>, d: usize, p: K) -> (Bx<K>, Bx<K>) {
    let mut lb = *b;
    lb[d].1 = p.dec();
    let mut rb = *b;
    rb[d].0 = p;
    (lb, rb)
}

/// One dimension of a rule: a single interval or a list.
enum DimIvs<'a, K> {
    One(Iv<K>),
    Many(&'a [Iv<K>]),
}

impl<K> DimIvs<'_, K> {
    fn ivs(&self) -> &[Iv<K>] {
        match self {
            DimIvs::One(iv) => std::slice::from_ref(iv),
            DimIvs::Many(l) => l,
        }
    }
}

struct Builder<'a, K> {
    fam: &'a Family<K>,
    nodes: Vec<Node<K>>,
    leaves: Vec<(u32, u32)>,
    chunks: Vec<Chunk<K>>,
    /// Rule copies in `chunks`.
    copies: usize,
    max_leaf: usize,
    depth: usize,
    binth: usize,
    budget: usize,
}

impl<K: Key> Builder<'_, K> {
    /// Builds the subtree for `set` (rule indices, ascending) within box `b`; returns the child
    /// word that leads to its root.
    ///
    /// A node takes the best split (dimension `d`, point `p1`), then the best split of each
    /// side on the same dimension if it makes progress there (`p0`, `p2`); a side without one
    /// repeats `p1` and goes whole to one child.
    fn build(&mut self, set: &mut Vec<u32>, b: &Bx<K>, depth: usize) -> Result<u32, Overflow> {
        if let Some(c) = set.iter().position(|&r| self.fam.covers(r as usize, b)) {
            set.truncate(c + 1);
        }
        let split = if set.len() <= self.binth || depth >= MAX_DEPTH {
            None
        } else {
            self.choose(set, b, None)
        };
        let Some((d, p1)) = split else {
            return self.leaf(set, depth);
        };
        let me = self.nodes.len();
        let word = self.word(me, d)?;
        self.nodes.push(Node {
            pt: [p1; WAYS],
            child: [0; WAYS + 1],
        });
        let (lb, rb) = halves(b, d, p1);
        let (mut left, mut right) = self.partition(set, d, &lb, &rb);
        *set = Vec::new();
        // Parts in key order, each with its box: [lo, p0), [p0, p1), [p1, p2), [p2, hi].
        let mut parts: Vec<(Vec<u32>, Bx<K>)> = Vec::with_capacity(WAYS + 1);
        let mut pts = [p1; WAYS];
        let sub = (left.len() > self.binth)
            .then(|| self.choose(&left, &lb, Some(d)))
            .flatten();
        if let Some((_, p0)) = sub {
            let (llb, lrb) = halves(&lb, d, p0);
            let (ll, lr) = self.partition(&left, d, &llb, &lrb);
            pts[0] = p0;
            parts.push((ll, llb));
            parts.push((lr, lrb));
        } else {
            parts.push((std::mem::take(&mut left), lb));
        }
        let sub = (right.len() > self.binth)
            .then(|| self.choose(&right, &rb, Some(d)))
            .flatten();
        if let Some((_, p2)) = sub {
            let (rlb, rrb) = halves(&rb, d, p2);
            let (rl, rr) = self.partition(&right, d, &rlb, &rrb);
            pts[2] = p2;
            parts.push((rl, rlb));
            parts.push((rr, rrb));
        } else {
            parts.push((std::mem::take(&mut right), rb));
        }
        drop((left, right));
        let mut words = Vec::with_capacity(parts.len());
        for (mut s, pb) in parts {
            words.push(self.build(&mut s, &pb, depth + 1)?);
        }
        // Map the four child slots onto the parts: a side that was not split fills both of
        // its slots (only the one its repeated point leaves reachable matters).
        let (l, r) = if pts[0] == p1 {
            ([words[0], words[0]], &words[1..])
        } else {
            ([words[0], words[1]], &words[2..])
        };
        let r = if pts[2] == p1 {
            [r[0], r[0]]
        } else {
            [r[0], r[1]]
        };
        self.nodes[me] = Node {
            pt: pts,
            child: [l[0], l[1], r[0], r[1]],
        };
        Ok(word)
    }

    /// The rules of `set` that have a point in box `lb` and in box `rb`, which differ from each
    /// other only in dimension `d`.
    fn partition(&self, set: &[u32], d: usize, lb: &Bx<K>, rb: &Bx<K>) -> (Vec<u32>, Vec<u32>) {
        let (mut left, mut right) = (Vec::with_capacity(set.len()), Vec::with_capacity(set.len()));
        for &r in set {
            if self.fam.overlaps(r as usize, d, lb[d].0, lb[d].1) {
                left.push(r);
            }
            if self.fam.overlaps(r as usize, d, rb[d].0, rb[d].1) {
                right.push(r);
            }
        }
        (left, right)
    }

    /// The child word for node `index` splitting dimension `d`.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the dimension index is below DIMS (5)"
    )]
    fn word(&self, index: usize, d: usize) -> Result<u32, Overflow> {
        let i = u32::try_from(index)
            .ok()
            .filter(|&i| i < u32::MAX >> CHILD_SHIFT)
            .ok_or(Overflow)?;
        // Cannot truncate: `d < DIMS`.
        Ok(i << CHILD_SHIFT | d as u32)
    }

    fn leaf(&mut self, set: &[u32], depth: usize) -> Result<u32, Overflow> {
        let start = u32::try_from(self.chunks.len()).map_err(|_| Overflow)?;
        let len = u32::try_from(set.len().div_ceil(LANES)).map_err(|_| Overflow)?;
        let id = u32::try_from(self.leaves.len()).map_err(|_| Overflow)?;
        let word = self.word(self.nodes.len(), 0)?;
        for part in set.chunks(LANES) {
            let mut ch = Chunk::empty();
            for (j, &r) in part.iter().enumerate() {
                let c = &self.fam.rules[r as usize];
                for d in 0..DIMS {
                    ch.lo[d][j] = c.lo[d];
                    ch.span[d][j] = K::bias(c.hi[d].wsub(c.lo[d]));
                }
                ch.rule[j] = self.fam.source[r as usize];
                if c.lists != NO_LISTS {
                    ch.has_lists |= 1 << j;
                }
            }
            self.chunks.push(ch);
        }
        self.copies += set.len();
        self.max_leaf = self.max_leaf.max(set.len());
        if self.copies > self.budget {
            return Err(Overflow);
        }
        self.leaves.push((start, len));
        self.nodes.push(Node {
            pt: [K::ZERO; WAYS],
            child: [id, word, word, word],
        });
        self.depth = self.depth.max(depth);
        Ok(word)
    }

    /// The split (dimension, point) that best balances the two children: the smallest larger
    /// child, then the fewest copies. None if no split leaves both children smaller than `set`.
    ///
    /// Counting uses each rule's bounding interval clipped to the box: a rule goes left if it
    /// starts before the point and right if it ends at or after it. For rules with interval
    /// lists that overcounts a little, which only makes the estimate conservative.
    fn choose(&self, set: &[u32], b: &Bx<K>, only: Option<usize>) -> Option<(usize, K)> {
        let n = set.len();
        let mut best: Option<((usize, usize), usize, K)> = None;
        let mut los: Vec<K> = Vec::with_capacity(n);
        let mut his: Vec<K> = Vec::with_capacity(n);
        let mut cands: Vec<K> = Vec::with_capacity(2 * n);
        for (d, &(blo, bhi)) in b.iter().enumerate() {
            if blo == bhi || only.is_some_and(|o| o != d) {
                continue;
            }
            los.clear();
            his.clear();
            cands.clear();
            for &r in set {
                let c = &self.fam.rules[r as usize];
                let lo = c.lo[d].max(blo);
                let hi = c.hi[d].min(bhi);
                los.push(lo);
                his.push(hi);
                if lo > blo {
                    cands.push(lo);
                }
                if hi < bhi {
                    cands.push(hi.inc());
                }
            }
            if cands.is_empty() {
                continue;
            }
            los.sort_unstable();
            his.sort_unstable();
            cands.sort_unstable();
            cands.dedup();
            let (mut i, mut j) = (0, 0);
            for &p in &cands {
                while i < n && los[i] < p {
                    i += 1;
                }
                while j < n && his[j] < p {
                    j += 1;
                }
                let (l, r) = (i, n - j);
                let cost = (l.max(r), l + r);
                if cost.0 < n && best.is_none_or(|(c, _, _)| cost < c) {
                    best = Some((cost, d, p));
                }
            }
        }
        best.map(|(_, d, p)| (d, p))
            .or_else(|| self.trim(set, b, only))
    }

    /// When no split shrinks both sides (the rules all overlap, so every point cuts through
    /// all of them), a split that cuts off a part of the box no rule reaches: below the lowest
    /// rule start or above the highest end in some dimension. Packets there then reach an empty
    /// leaf instead of scanning a leaf of rules that cannot match them. The widest such part
    /// is taken; None once the box is the rules' hull in every dimension.
    fn trim(&self, set: &[u32], b: &Bx<K>, only: Option<usize>) -> Option<(usize, K)> {
        let mut best: Option<(K, usize, K)> = None;
        for (d, &(blo, bhi)) in b.iter().enumerate() {
            if blo == bhi || only.is_some_and(|o| o != d) {
                continue;
            }
            let lo = set
                .iter()
                .map(|&r| self.fam.rules[r as usize].lo[d])
                .min()?;
            let hi = set
                .iter()
                .map(|&r| self.fam.rules[r as usize].hi[d])
                .max()?;
            let mut consider = |width: K, p: K| {
                if best.is_none_or(|(w, _, _)| width > w) {
                    best = Some((width, d, p));
                }
            };
            if lo > blo {
                consider(lo.wsub(blo), lo);
            }
            if hi < bhi {
                consider(bhi.wsub(hi), hi.inc());
            }
        }
        best.map(|(_, d, p)| (d, p))
    }
}
