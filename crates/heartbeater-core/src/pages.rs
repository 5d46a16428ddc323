//! A growable array of optional entries, stored in fixed-size pages.
//!
//! Per-peer tables are indexed by slot number and hold a few hundred bytes
//! per slot. A `Vec` grown by doubling holds up to twice what its entries
//! need (10,000 peers sit in 16,384 slots), and while it reallocates it
//! holds both copies. Pages are allocated one at a time, so the unused part
//! is at most one page, growing never moves an entry, and memory follows
//! the number of peers instead of the next power of two.

/// Entries per page: small enough that the last page wastes little, large
/// enough that the page list itself is negligible.
const PAGE: usize = 256;

/// Optional entries indexed by `usize`, allocated a page at a time.
#[derive(Debug)]
pub struct Pages<T> {
    pages: Vec<Box<[Option<T>]>>,
}

impl<T> Default for Pages<T> {
    fn default() -> Self {
        Self { pages: Vec::new() }
    }
}

impl<T> Pages<T> {
    /// No entries, no pages.
    pub fn new() -> Self {
        Self::default()
    }

    /// The entry at `index`, if set.
    pub fn get(&self, index: usize) -> Option<&T> {
        self.pages.get(index / PAGE)?[index % PAGE].as_ref()
    }

    /// The entry at `index`, if set.
    pub fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.pages.get_mut(index / PAGE)?[index % PAGE].as_mut()
    }

    /// The place for `index`, allocating the pages up to it.
    pub fn place(&mut self, index: usize) -> &mut Option<T> {
        let page = index / PAGE;
        while self.pages.len() <= page {
            self.pages
                .push(std::iter::repeat_with(|| None).take(PAGE).collect());
        }
        &mut self.pages[page][index % PAGE]
    }

    /// Sets the entry at `index`, returning the one it replaces.
    pub fn set(&mut self, index: usize, value: T) -> Option<T> {
        self.place(index).replace(value)
    }

    /// Removes the entry at `index`.
    pub fn take(&mut self, index: usize) -> Option<T> {
        self.pages.get_mut(index / PAGE)?[index % PAGE].take()
    }

    /// Every entry that is set, in index order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.pages.iter().flat_map(|p| p.iter().flatten())
    }

    /// Every entry that is set, with its index, in index order.
    pub fn indexed(&self) -> impl Iterator<Item = (usize, &T)> {
        self.pages.iter().enumerate().flat_map(|(p, page)| {
            page.iter()
                .enumerate()
                .filter_map(move |(i, e)| e.as_ref().map(|e| (p * PAGE + i, e)))
        })
    }

    /// How many entries the allocated pages can hold.
    pub fn capacity(&self) -> usize {
        self.pages.len() * PAGE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_found_where_they_were_set() {
        let mut pages = Pages::new();
        assert_eq!(pages.get(0), None::<&u32>);
        assert_eq!(pages.set(3, 30), None);
        assert_eq!(pages.set(PAGE * 2 + 1, 21), None);
        assert_eq!(pages.get(3), Some(&30));
        assert_eq!(pages.get(PAGE * 2 + 1), Some(&21));
        assert_eq!(pages.get(4), None);
        assert_eq!(pages.get(PAGE * 9), None);
        assert_eq!(pages.set(3, 31), Some(30));
        if let Some(v) = pages.get_mut(3) {
            *v += 1;
        }
        assert_eq!(pages.iter().copied().collect::<Vec<_>>(), vec![32, 21]);
        let indexed: Vec<_> = pages.indexed().map(|(i, &v)| (i, v)).collect();
        assert_eq!(indexed, vec![(3, 32), (PAGE * 2 + 1, 21)]);
        assert_eq!(pages.take(3), Some(32));
        assert_eq!(pages.take(3), None);
        assert_eq!(pages.take(PAGE * 9), None);
    }

    #[test]
    fn memory_grows_by_one_page_not_by_doubling() {
        let mut pages = Pages::new();
        for i in 0..10_000 {
            pages.set(i, i);
        }
        assert_eq!(pages.capacity(), 10_000usize.div_ceil(PAGE) * PAGE);
        assert!(pages.capacity() - 10_000 < PAGE);
    }
}
