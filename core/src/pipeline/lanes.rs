//! Order per key, concurrency across keys.
//!
//! An async stage splits its items into lanes: items that share a partition key, directly or
//! through another item (a batch holding keys `a` and `b` joins the lanes of `a` and `b`), share
//! a lane and run one after another in batch order; lanes run concurrently. Keys are compared by
//! hash, so a collision can only merge two lanes (less concurrency), never reorder a key.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use smallvec::SmallVec;

use crate::uow::{Work, first_position};

fn find(parent: &mut [usize], mut x: usize) -> usize {
    while parent[x] != x {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    x
}

/// Splits `items` into lanes, each in batch order, tagged with their first record position.
pub(crate) fn plan<T: Work>(items: Vec<T>) -> Vec<Vec<(u32, T)>> {
    let hasher = RandomState::new();
    let mut parent: Vec<usize> = Vec::new();
    let mut by_key: HashMap<u64, usize> = HashMap::with_capacity(items.len());
    let mut lane_of = Vec::with_capacity(items.len());
    let mut fresh: SmallVec<[u64; 2]> = SmallVec::new();
    for item in &items {
        let mut root: Option<usize> = None;
        item.for_each_origin(&mut |o| {
            let Some(key) = o.partition_key() else { return };
            let h = hasher.hash_one(key);
            match by_key.get(&h) {
                Some(&lane) => {
                    let r = find(&mut parent, lane);
                    root = Some(match root {
                        None => r,
                        Some(x) => {
                            let (keep, merge) = if x < r { (x, r) } else { (r, x) };
                            parent[merge] = keep;
                            keep
                        }
                    });
                }
                None => fresh.push(h),
            }
        });
        let lane = root.unwrap_or_else(|| {
            parent.push(parent.len());
            parent.len() - 1
        });
        for h in fresh.drain(..) {
            by_key.insert(h, lane);
        }
        lane_of.push(lane);
    }
    let mut lanes: Vec<Vec<(u32, T)>> = (0..parent.len()).map(|_| Vec::new()).collect();
    for (item, lane) in items.into_iter().zip(lane_of) {
        let root = find(&mut parent, lane);
        lanes[root].push((first_position(&item), item));
    }
    lanes.retain(|lane| !lane.is_empty());
    lanes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::units;
    use crate::uow::Batch;

    fn keys_of<T: Work>(lane: &[(u32, T)]) -> Vec<u32> {
        lane.iter().map(|(p, _)| *p).collect()
    }

    #[test]
    fn same_key_shares_a_lane_in_order_and_keyless_items_stand_alone() {
        let us = units(&[Some("a"), Some("b"), Some("a"), None, Some("b"), None]);
        let lanes = plan(us);
        let shapes: Vec<Vec<u32>> = lanes.iter().map(|l| keys_of(l)).collect();
        assert_eq!(shapes, vec![vec![0, 2], vec![1, 4], vec![3], vec![5]]);
    }

    #[test]
    fn a_batch_spanning_keys_joins_their_lanes() {
        let us = units(&[Some("a"), Some("b"), Some("a"), Some("b"), Some("c")]);
        let mut it = us.into_iter();
        let (a0, b1, a2, b3, c4) = (
            it.next().unwrap(),
            it.next().unwrap(),
            it.next().unwrap(),
            it.next().unwrap(),
            it.next().unwrap(),
        );
        let items = vec![
            Batch(vec![a0]),
            Batch(vec![b1]),
            Batch(vec![a2, b3]),
            Batch(vec![c4]),
        ];
        let lanes = plan(items);
        let shapes: Vec<Vec<u32>> = lanes.iter().map(|l| keys_of(l)).collect();
        assert_eq!(shapes, vec![vec![0, 1, 2], vec![4]]);
    }
}
