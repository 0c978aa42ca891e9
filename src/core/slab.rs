//! An account of nginx's slab allocator (`ngx_slab_init`, `ngx_slab_alloc`,
//! `ngx_slab_free` on x86-64 with 4 KiB pages): how many pages of a shared memory zone
//! nginx's allocations would take, so that a zone holds what nginx's of the same size
//! holds and fails where nginx's fails ("ngx_slab_alloc() failed: no memory"), whatever
//! our own layout of its contents.
//!
//! A zone of SIZE bytes has a number of pages; each size class (8 bytes to 2 KiB, powers
//! of two) takes whole pages and carves them into chunks; a page with room is used
//! before a new one, one that empties goes back. Bigger allocations take whole pages.
//! The account lives in a byte slice (in the zone itself when workers share it).

pub const PAGE: usize = 4096;
/// Bytes before the pages' descriptors: `ngx_slab_pool_t`, then the 9 slots and their
/// statistics.
const SLAB_HEAD: usize = 200 + 9 * (24 + 32);
/// Bytes of one page's descriptor (`ngx_slab_page_t`).
const SLAB_DESC: usize = 24;
/// Our accounting: free pages, the free-page stack, a list head per size class (shift
/// 3..=11), then per page: shift (u8), used chunks (u16 at +2), next and prev (+4, +8).
pub const S_FREE: usize = 0;
const S_STACK: usize = 4;
const S_HEADS: usize = 8;
const S_PAGES: usize = S_HEADS + 9 * 4;
const S_REC: usize = 12;
/// The shift that marks a page taken whole (an allocation over half a page).
const WHOLE: u8 = 0xff;

/// Pages in a zone of `size` bytes, as `ngx_slab_init` counts them.
pub fn pages(size: usize) -> u32 {
    let pages = size.saturating_sub(SLAB_HEAD) / (PAGE + SLAB_DESC);
    let start = (SLAB_HEAD + pages * SLAB_DESC).div_ceil(PAGE) * PAGE;
    // (Page numbers are kept in 24 bits of an entry: 64 GB of zone.)
    pages.min(size.saturating_sub(start) / PAGE).min(MAX_PAGES) as u32
}

const MAX_PAGES: usize = 1 << 24;

/// The size class (shift) of an allocation, and the chunks a page of it holds (a small
/// class keeps its bitmap in its first chunks).
fn class(size: usize) -> (u8, u16) {
    let shift = (usize::BITS - size.saturating_sub(1).leading_zeros()).max(3) as u8;
    let n = (PAGE >> shift) as u16;
    let chunks = match shift {
        3..=5 => {
            let map_bytes = (PAGE >> shift) / 64 * 8;
            n - (map_bytes >> shift).max(1) as u16
        }
        _ => n,
    };
    (shift, chunks)
}

pub fn get_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

pub fn put_u32(b: &mut [u8], at: usize, v: u32) -> Option<()> {
    b.get_mut(at..at + 4)?.copy_from_slice(&v.to_le_bytes());
    Some(())
}

pub struct Slab<'a> {
    pub b: &'a mut [u8],
    pages: u32,
}

impl<'a> Slab<'a> {
    /// Bytes of account for a zone of `pages` pages.
    pub fn len_for(pages: u32) -> usize {
        S_PAGES + pages as usize * S_REC
    }

    /// The account kept in `b` (at least `len_for(pages)` bytes), as it stands.
    pub fn new(b: &'a mut [u8], pages: u32) -> Slab<'a> {
        Slab { b, pages }
    }

    /// Every page free, as `ngx_slab_init` leaves a zone.
    pub fn init(&mut self) -> Option<()> {
        self.b.fill(0);
        put_u32(self.b, S_FREE, self.pages)?;
        for p in 0..self.pages {
            let at = self.rec(p);
            put_u32(self.b, at + 4, if p + 1 < self.pages { p + 2 } else { 0 })?;
        }
        put_u32(self.b, S_STACK, u32::from(self.pages > 0))
    }

    fn rec(&self, page: u32) -> usize {
        S_PAGES + page as usize * S_REC
    }

    /// A page off the free stack.
    fn take_page(&mut self) -> Option<u32> {
        let top = get_u32(self.b, S_STACK)?;
        let page = top.checked_sub(1)?;
        let at = self.rec(page);
        put_u32(self.b, S_STACK, get_u32(self.b, at + 4)?)?;
        put_u32(self.b, S_FREE, get_u32(self.b, S_FREE)?.saturating_sub(1))?;
        Some(page)
    }

    fn used(&self, page: u32) -> Option<u16> {
        let at = self.rec(page) + 2;
        let s = self.b.get(at..at + 2)?;
        Some(u16::from_le_bytes([s[0], s[1]]))
    }

    fn set_used(&mut self, page: u32, n: u16) -> Option<()> {
        let at = self.rec(page) + 2;
        self.b.get_mut(at..at + 2)?.copy_from_slice(&n.to_le_bytes());
        Some(())
    }

    fn head_at(shift: u8) -> usize {
        S_HEADS + 4 * (shift as usize - 3)
    }

    fn push_head(&mut self, shift: u8, page: u32) -> Option<()> {
        let h = Self::head_at(shift);
        let old = get_u32(self.b, h)?;
        let at = self.rec(page);
        put_u32(self.b, at + 4, old)?;
        put_u32(self.b, at + 8, 0)?;
        if old != 0 {
            let o = self.rec(old - 1);
            put_u32(self.b, o + 8, page + 1)?;
        }
        put_u32(self.b, h, page + 1)
    }

    fn unlink(&mut self, shift: u8, page: u32) -> Option<()> {
        let at = self.rec(page);
        let (next, prev) = (get_u32(self.b, at + 4)?, get_u32(self.b, at + 8)?);
        if prev == 0 {
            put_u32(self.b, Self::head_at(shift), next)?;
        } else {
            let p = self.rec(prev - 1);
            put_u32(self.b, p + 4, next)?;
        }
        if next != 0 {
            let n = self.rec(next - 1);
            put_u32(self.b, n + 8, prev)?;
        }
        Some(())
    }

    /// Room for `size` bytes: the page it is on, or None when nginx's would fail. Over
    /// half a page it takes whole pages (`ngx_slab_alloc_pages`), for good: nothing
    /// allocated so is freed.
    pub fn alloc(&mut self, size: usize) -> Option<u32> {
        if size > PAGE / 2 {
            let n = size.div_ceil(PAGE);
            if (get_u32(self.b, S_FREE)? as usize) < n {
                return None;
            }
            let mut first = None;
            for _ in 0..n {
                let page = self.take_page()?;
                *self.b.get_mut(self.rec(page))? = WHOLE;
                first.get_or_insert(page);
            }
            return first;
        }
        let (shift, chunks) = class(size);
        let head = get_u32(self.b, Self::head_at(shift))?;
        let page = if head != 0 {
            head - 1
        } else {
            let page = self.take_page()?;
            let at = self.rec(page);
            *self.b.get_mut(at)? = shift;
            self.set_used(page, 0)?;
            self.push_head(shift, page)?;
            page
        };
        let used = self.used(page)? + 1;
        self.set_used(page, used)?;
        if used >= chunks {
            self.unlink(shift, page)?;
        }
        Some(page)
    }

    /// Give back a chunk `alloc` put on `page`.
    pub fn free(&mut self, page: u32) -> Option<()> {
        let at = self.rec(page);
        let shift = *self.b.get(at)?;
        if shift == WHOLE {
            return None;
        }
        let (_, chunks) = class(1 << shift);
        let used = self.used(page)?;
        if used == 0 {
            return None;
        }
        self.set_used(page, used - 1)?;
        if used == chunks {
            self.push_head(shift, page)?;
        }
        if used == 1 {
            self.unlink(shift, page)?;
            put_u32(self.b, at + 4, get_u32(self.b, S_STACK)?)?;
            put_u32(self.b, S_STACK, page + 1)?;
            put_u32(self.b, S_FREE, get_u32(self.b, S_FREE)? + 1)?;
        }
        Some(())
    }
}

/// Whether allocations of these sizes, in this order, fit in a fresh zone of `size`
/// bytes (a configuration's check of what nginx copies into a zone at start).
pub fn fits(size: usize, sizes: impl IntoIterator<Item = usize>) -> bool {
    let pages = pages(size);
    let mut b = vec![0u8; Slab::len_for(pages)];
    let mut slab = Slab::new(&mut b, pages);
    if slab.init().is_none() {
        return false;
    }
    sizes.into_iter().all(|n| slab.alloc(n).is_some())
}
