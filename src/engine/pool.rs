//! The slot pool as the engine sees it: how many cells Apache has been
//! told about, which site owns which cell (for the node's life: a cell's
//! account has run that site's code), and which slots deploys in flight
//! hold. Apache knows the same slots as daemons; this knows whose they are.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use crate::apache::Slot;
use crate::names::SiteName;

/// Each growth is one more Apache (see `apache::shards`).
pub use crate::apache::shards::grown;

#[derive(Debug)]
pub struct SlotPool {
    cells: usize,
    cell_size: usize,
    owners: BTreeMap<usize, SiteName>,
    /// Slots taken by deploys in flight (loading or checking a release).
    claimed: HashSet<Slot>,
}

impl SlotPool {
    pub fn new(cells: usize, cell_size: usize, owners: BTreeMap<usize, SiteName>) -> SlotPool {
        SlotPool {
            cells,
            cell_size,
            owners,
            claimed: HashSet::new(),
        }
    }

    /// The pool's size, in cells.
    pub fn cells(&self) -> usize {
        self.cells
    }

    pub fn owners(&self) -> &BTreeMap<usize, SiteName> {
        &self.owners
    }

    /// Every slot of the pool.
    pub fn slots(&self) -> Vec<Slot> {
        (0..self.cells)
            .flat_map(|c| Slot::of_cell(c, self.cell_size))
            .collect()
    }

    pub fn cell_of(&self, site: &SiteName) -> Option<usize> {
        self.owners
            .iter()
            .find(|(_, s)| *s == site)
            .map(|(c, _)| *c)
    }

    /// Gives the site the lowest free cell; None when every cell is taken.
    pub fn assign(&mut self, site: &SiteName) -> Option<usize> {
        if let Some(c) = self.cell_of(site) {
            return Some(c);
        }
        let free = (0..self.cells).find(|c| !self.owners.contains_key(c))?;
        self.owners.insert(free, site.clone());
        Some(free)
    }

    /// Takes back an assignment that could not be recorded.
    pub fn unassign(&mut self, cell: usize) {
        self.owners.remove(&cell);
    }

    pub fn grow(&mut self, cells: usize) {
        self.cells = self.cells.max(cells);
    }

    /// A spare of the site's cell: not `in_use` (live or previous), not
    /// claimed; of those, the one never retired, else the one retired
    /// longest ago (its replacement daemon is the likeliest to be up).
    pub fn claim(
        &mut self,
        site: &SiteName,
        in_use: &HashSet<Slot>,
        retired_at: impl Fn(Slot) -> Option<Instant>,
    ) -> Option<Slot> {
        let cell = self.cell_of(site)?;
        let slot = Slot::of_cell(cell, self.cell_size)
            .into_iter()
            .filter(|s| !in_use.contains(s) && !self.claimed.contains(s))
            .min_by_key(|s| retired_at(*s))?;
        self.claimed.insert(slot);
        Some(slot)
    }

    /// Claims a slot the caller already knows to be the site's (one it
    /// took from a release loaded on demand).
    pub fn hold(&mut self, slot: Slot) {
        self.claimed.insert(slot);
    }

    /// A claimed slot goes back (live now, or a spare again).
    pub fn release(&mut self, slot: Slot) {
        self.claimed.remove(&slot);
    }

    pub fn claimed(&self) -> &HashSet<Slot> {
        &self.claimed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn site(n: &str) -> SiteName {
        SiteName::parse(n, &crate::names::Domain::localhost()).unwrap()
    }

    #[test]
    fn sites_take_the_lowest_free_cell_for_good() {
        let mut p = SlotPool::new(2, 3, BTreeMap::new());
        assert_eq!(p.assign(&site("a")), Some(0));
        assert_eq!(p.assign(&site("b")), Some(1));
        assert_eq!(p.assign(&site("a")), Some(0), "a site keeps its cell");
        assert_eq!(p.assign(&site("c")), None, "full");
        p.grow(3);
        assert_eq!(p.assign(&site("c")), Some(2));
        assert_eq!(p.slots().len(), 9);
    }

    #[test]
    fn a_spare_is_of_the_sites_own_cell_never_retired_first() {
        let mut p = SlotPool::new(2, 4, BTreeMap::new());
        let a = site("a");
        p.assign(&site("b"));
        p.assign(&a);
        let now = Instant::now();
        let retired = |s: Slot| match s.index() {
            4 => Some(now),
            5 => Some(now - Duration::from_secs(5)),
            _ => None,
        };
        let in_use: HashSet<Slot> = [Slot::new(6)].into();
        // Cell 1 is slots 4..8: 6 is in use, 7 was never retired.
        assert_eq!(p.claim(&a, &in_use, retired), Some(Slot::new(7)));
        // Then the one retired longest ago.
        assert_eq!(p.claim(&a, &in_use, retired), Some(Slot::new(5)));
        assert_eq!(p.claim(&a, &in_use, retired), Some(Slot::new(4)));
        assert_eq!(p.claim(&a, &in_use, retired), None);
        p.release(Slot::new(5));
        assert_eq!(p.claim(&a, &in_use, retired), Some(Slot::new(5)));
        assert_eq!(p.claim(&site("nobody"), &in_use, retired), None);
    }
}
