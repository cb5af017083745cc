//! FP-growth (Han, Pei and Yin, 2000): the baskets are compressed into a prefix tree of
//! their frequent items in descending frequency, and the itemsets are grown from each
//! item's conditional tree, never enumerating candidates. Counts are exact.

use rustc_hash::FxHashMap as HashMap;

/// A frequent itemset: its items in ascending order and the baskets holding all of them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Itemset {
    pub items: Vec<u32>,
    pub count: u64,
}

/// The least count a support of `min_support` over `baskets` baskets asks for, rounded
/// up as mlxtend rounds it (`ceil(min_support * n)`), so both keep the same itemsets.
pub fn min_count(min_support: f64, baskets: usize) -> u64 {
    ((min_support * baskets as f64).ceil() as u64).max(1)
}

/// A node of the prefix tree, in an arena: its item, count, parent, and the next node
/// of the same item (the header table's chain).
struct Node {
    item: u32,
    count: u64,
    parent: usize,
    next_same: Option<usize>,
}

const ROOT: usize = 0;

struct Tree {
    nodes: Vec<Node>,
    /// Child of (node, item): one map for the whole tree, not one per node.
    children: HashMap<(usize, u32), usize>,
    /// Per item: its total count and the first node of its chain.
    header: HashMap<u32, (u64, Option<usize>)>,
}

impl Tree {
    fn new() -> Tree {
        Tree {
            nodes: vec![Node {
                item: u32::MAX,
                count: 0,
                parent: ROOT,
                next_same: None,
            }],
            children: HashMap::default(),
            header: HashMap::default(),
        }
    }

    /// Adds a path of items (already in the tree's order) `count` times.
    fn insert(&mut self, path: &[u32], count: u64) {
        let mut at = ROOT;
        for &item in path {
            let next = match self.children.get(&(at, item)) {
                Some(&child) => child,
                None => {
                    let id = self.nodes.len();
                    let entry = self.header.entry(item).or_insert((0, None));
                    self.nodes.push(Node {
                        item,
                        count: 0,
                        parent: at,
                        next_same: entry.1,
                    });
                    entry.1 = Some(id);
                    self.children.insert((at, item), id);
                    id
                }
            };
            self.nodes[next].count += count;
            if let Some(entry) = self.header.get_mut(&item) {
                entry.0 += count;
            }
            at = next;
        }
    }

    /// Every prefix path ending at a node of `item`, with that node's count.
    fn prefix_paths(&self, item: u32) -> Vec<(Vec<u32>, u64)> {
        let mut paths = Vec::new();
        let mut node = self.header.get(&item).and_then(|(_, first)| *first);
        while let Some(id) = node {
            let count = self.nodes[id].count;
            let mut path = Vec::new();
            let mut up = self.nodes[id].parent;
            while up != ROOT {
                path.push(self.nodes[up].item);
                up = self.nodes[up].parent;
            }
            path.reverse();
            paths.push((path, count));
            node = self.nodes[id].next_same;
        }
        paths
    }
}

/// Builds the tree of `transactions` (items with their multiplicity) keeping items of
/// at least `min` count, in descending count (ties by id, so the order is total).
fn build(transactions: &[(Vec<u32>, u64)], min: u64) -> Tree {
    let mut counts: HashMap<u32, u64> = HashMap::default();
    for (items, count) in transactions {
        for &item in items {
            *counts.entry(item).or_default() += count;
        }
    }
    let rank = |item: &u32| (std::cmp::Reverse(counts[item]), *item);
    let mut tree = Tree::new();
    let mut path = Vec::new();
    for (items, count) in transactions {
        path.clear();
        path.extend(items.iter().copied().filter(|item| counts[item] >= min));
        path.sort_by_key(rank);
        path.dedup();
        if !path.is_empty() {
            tree.insert(&path, *count);
        }
    }
    tree
}

/// Grows the itemsets ending in `suffix` into `out`; false when `out` reached `limit`
/// (then it stops).
fn grow(
    tree: &Tree,
    suffix: &[u32],
    min: u64,
    max_len: usize,
    limit: usize,
    out: &mut Vec<Itemset>,
) -> bool {
    let mut items: Vec<(u32, u64)> = tree
        .header
        .iter()
        .filter(|(_, (count, _))| *count >= min)
        .map(|(item, (count, _))| (*item, *count))
        .collect();
    items.sort_unstable();
    for (item, count) in items {
        if out.len() >= limit {
            return false;
        }
        let mut itemset: Vec<u32> = suffix.to_vec();
        itemset.push(item);
        let mut sorted = itemset.clone();
        sorted.sort_unstable();
        out.push(Itemset {
            items: sorted,
            count,
        });
        if itemset.len() < max_len {
            let conditional = build(&tree.prefix_paths(item), min);
            if !conditional.header.is_empty()
                && !grow(&conditional, &itemset, min, max_len, limit, out)
            {
                return false;
            }
        }
    }
    true
}

/// Every itemset of at most `max_len` items in at least `min` baskets, sorted by
/// length, then items. A basket's repeated items count once.
pub fn frequent_itemsets(baskets: &[Vec<u32>], min: u64, max_len: usize) -> Vec<Itemset> {
    frequent_itemsets_within(baskets, min, max_len, usize::MAX).unwrap_or_default()
}

/// [`frequent_itemsets`], or `None` when there are more than `limit` (a low support
/// over many products can ask for more itemsets than memory holds).
pub fn frequent_itemsets_within(
    baskets: &[Vec<u32>],
    min: u64,
    max_len: usize,
    limit: usize,
) -> Option<Vec<Itemset>> {
    let transactions: Vec<(Vec<u32>, u64)> = baskets.iter().map(|b| (b.clone(), 1)).collect();
    let tree = build(&transactions, min.max(1));
    let mut out = Vec::new();
    if max_len > 0
        && !grow(
            &tree,
            &[],
            min.max(1),
            max_len,
            limit.saturating_add(1),
            &mut out,
        )
    {
        return None;
    }
    if out.len() > limit {
        return None;
    }
    out.sort_by(|a, b| {
        a.items
            .len()
            .cmp(&b.items.len())
            .then_with(|| a.items.cmp(&b.items))
    });
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_stops_the_growth() {
        let baskets = vec![vec![1, 2, 3], vec![1, 2, 3], vec![1, 2]];
        let all = frequent_itemsets(&baskets, 1, 3);
        assert_eq!(all.len(), 7);
        assert_eq!(frequent_itemsets_within(&baskets, 1, 3, 7), Some(all));
        assert_eq!(frequent_itemsets_within(&baskets, 1, 3, 6), None);
    }
    use std::collections::BTreeMap;

    /// The definition, by brute force: every subset of every basket, counted once per
    /// basket.
    fn reference(baskets: &[Vec<u32>], min: u64, max_len: usize) -> BTreeMap<Vec<u32>, u64> {
        let mut counts: BTreeMap<Vec<u32>, u64> = BTreeMap::new();
        for basket in baskets {
            let mut items = basket.clone();
            items.sort_unstable();
            items.dedup();
            let n = items.len();
            for mask in 1u32..(1 << n) {
                let subset: Vec<u32> = (0..n)
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| items[i])
                    .collect();
                if subset.len() <= max_len {
                    *counts.entry(subset).or_default() += 1;
                }
            }
        }
        counts.retain(|_, count| *count >= min);
        counts
    }

    fn random_baskets(seed: u64, count: usize, items: u32, max_size: usize) -> Vec<Vec<u32>> {
        let mut state = seed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..count)
            .map(|_| {
                let size = 1 + (next() % max_size as u64) as usize;
                // Skewed: low ids are popular, as products are.
                (0..size)
                    .map(|_| {
                        ((next() % items as u64) * (next() % items as u64) / items as u64) as u32
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn itemsets_equal_brute_force_counts() {
        for (seed, min, max_len) in [(1, 5, 4), (2, 20, 3), (3, 2, 10), (4, 60, 2)] {
            let baskets = random_baskets(seed, 400, 12, 7);
            let found: BTreeMap<Vec<u32>, u64> = frequent_itemsets(&baskets, min, max_len)
                .into_iter()
                .map(|i| (i.items, i.count))
                .collect();
            assert_eq!(
                found,
                reference(&baskets, min, max_len),
                "seed {seed}, min {min}"
            );
            assert!(!found.is_empty());
        }
    }

    #[test]
    fn min_count_rounds_up_like_mlxtend() {
        assert_eq!(min_count(0.01, 50_000), 500);
        // 0.07 * 100 is 7.000000000000001 in binary floating point: 8 baskets.
        assert_eq!(min_count(0.07, 100), 8);
        assert_eq!(min_count(0.0, 10), 1);
    }
}
