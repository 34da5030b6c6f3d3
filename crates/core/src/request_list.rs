//! A queue's requests by id, on the thread that holds the list.
//!
//! Every command is inserted once and removed once, at its thread's rate
//! (hundreds of thousands a second on one queue), so the list is a hash
//! table: an insert or a removal moves only the request itself. (An
//! ordered map of requests kept sorted by moving its neighbours: a third
//! of the data moves of a 4 KiB read through vhost-user-scsi went to
//! shifting `BTreeMap` leaves.) Ids grow with arrival, so the rare walks
//! that need arrival order (start what was held, save the list, iterate
//! for task management) sort the ids they collect.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::request::Request;

/// Hashes a request id (a counter): one multiplication spreads
/// consecutive ids over the table's high bits, which the table uses.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = (self.0 ^ id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The requests of one queue, by id.
#[derive(Default)]
pub(crate) struct RequestList {
    map: HashMap<u64, Request, BuildHasherDefault<IdHasher>>,
}

impl RequestList {
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn insert(&mut self, id: u64, request: Request) {
        self.map.insert(id, request);
    }

    pub(crate) fn get(&self, id: u64) -> Option<&Request> {
        self.map.get(&id)
    }

    pub(crate) fn get_mut(&mut self, id: u64) -> Option<&mut Request> {
        self.map.get_mut(&id)
    }

    pub(crate) fn remove(&mut self, id: u64) -> Option<Request> {
        self.map.remove(&id)
    }

    /// The ids of the requests `keep` selects, in arrival order.
    pub(crate) fn ids(&self, keep: impl Fn(&Request) -> bool) -> Vec<u64> {
        let mut ids: Vec<u64> = self.map.iter().filter(|(_, r)| keep(r)).map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids
    }

    /// Every request, in arrival order.
    pub(crate) fn in_order(&self) -> impl Iterator<Item = &Request> {
        let mut all: Vec<(u64, &Request)> = self.map.iter().map(|(id, r)| (*id, r)).collect();
        all.sort_unstable_by_key(|(id, _)| *id);
        all.into_iter().map(|(_, r)| r)
    }

    /// Every request, in no particular order.
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut Request> {
        self.map.values_mut()
    }

    /// Takes every request out, in arrival order.
    pub(crate) fn take_all(&mut self) -> Vec<Request> {
        let mut all: Vec<(u64, Request)> = self.map.drain().collect();
        all.sort_unstable_by_key(|(id, _)| *id);
        all.into_iter().map(|(_, r)| r).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(tag: u64) -> Request {
        crate::request(tag, 0, &[0x00; 6], Vec::new(), |_| {})
    }

    #[test]
    fn walks_are_in_arrival_order_whatever_was_removed_and_put_back() {
        let mut list = RequestList::default();
        for id in 1..=100 {
            list.insert(id, request(id));
        }
        for id in (1..=100).filter(|id| id % 3 == 0) {
            assert_eq!(list.remove(id).map(|r| r.tag), Some(id));
        }
        assert!(list.remove(3).is_none());
        // Taken out and put back with its id (`LocalQueue::iterate`).
        let r = list.remove(50).unwrap();
        list.insert(50, r);
        let expected: Vec<u64> = (1..=100).filter(|id| id % 3 != 0).collect();
        assert_eq!(list.ids(|_| true), expected);
        assert_eq!(list.in_order().map(|r| r.tag).collect::<Vec<_>>(), expected);
        assert_eq!(list.ids(|r| r.tag % 2 == 0), expected.iter().copied().filter(|t| t % 2 == 0).collect::<Vec<_>>());
        assert_eq!(list.len(), expected.len());
        assert_eq!(list.get(50).map(|r| r.tag), Some(50));
        list.get_mut(50).unwrap().retry = true;
        assert_eq!(list.values_mut().filter(|r| r.retry).count(), 1);
        assert_eq!(list.take_all().iter().map(|r| r.tag).collect::<Vec<_>>(), expected);
        assert_eq!(list.len(), 0);
    }

    #[test]
    fn consecutive_ids_spread_over_the_high_bits() {
        let top = |id: u64| {
            let mut h = IdHasher::default();
            h.write_u64(id);
            h.finish() >> 57
        };
        let distinct: std::collections::HashSet<u64> = (0..128).map(top).collect();
        assert!(distinct.len() > 64, "{} of 128 top-7-bit values", distinct.len());
    }
}
