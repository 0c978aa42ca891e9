//! `ssl_session_cache shared:NAME:SIZE`: TLS sessions in a shared memory zone, so every
//! worker and every server naming the zone resumes them (nginx's `ngx_ssl_new_session`
//! / `ngx_ssl_get_cached_session` / `ngx_ssl_remove_session` over its shm zone).
//!
//! The zone is a lock word, a map byte per slot, then fixed 512-byte slots: an entry
//! takes as many consecutive slots as its session needs (a head slot with the expiry —
//! wall-clock seconds, the same in every process —, the id and the DER form's length,
//! then the DER bytes running on through the following slots, whose map bytes say how
//! far back their head is). Sessions up to nginx's 4096 bytes are kept (a session with
//! a client certificate is larger than one slot); a full zone gives way to the run of
//! slots whose entries expire first.

use std::sync::Mutex;

use openssl::ssl::{SslContextBuilder, SslSession, SslSessionCacheMode};

use crate::core::shm::{Shm, SpinGuard};

/// The zone's lock word, then the map and the slots from `SLOTS_AT`.
const SLOTS_AT: usize = 64;
const SLOT: usize = 512;
/// A head slot: expiry u64, id length u8, id (32), DER length u16, span u8.
const HEAD: usize = 8 + 1 + 32 + 2 + 1;
/// The largest session kept (nginx's `NGX_SSL_MAX_SESSION_SIZE`).
pub const MAX_SESSION: usize = 4096;
const MAX_SPAN: usize = (HEAD + MAX_SESSION).div_ceil(SLOT);

/// The zones of this process's configuration: name, mapping address and length. Set
/// by the process that builds the configuration (the master, before it forks), so each
/// worker sees the zones of its own generation.
static ZONES: Mutex<Vec<(String, usize, usize)>> = Mutex::new(Vec::new());

/// Make `shm` the zone called `name`.
pub fn register(name: &str, shm: &Shm) {
    let Some(b) = shm.bytes(0, shm.len()) else { return };
    let entry = (name.to_string(), b.as_mut_ptr() as usize, shm.len());
    let mut zones = ZONES.lock().unwrap_or_else(|e| e.into_inner());
    zones.retain(|z| z.0 != name);
    zones.push(entry);
}

fn now() -> u64 {
    crate::core::time::wall().0.max(0) as u64
}

/// A zone's map and slots, under its lock.
struct Slots<'a> {
    /// Per slot: 0 for a head (or a free slot), else how many slots back its head is.
    map: &'a mut [u8],
    data: &'a mut [u8],
    n: usize,
}

/// Run `f` on the zone's slots under its lock.
fn with_slots<R>(name: &str, f: impl FnOnce(&mut Slots<'_>) -> R) -> Option<R> {
    let (addr, len) = {
        let zones = ZONES.lock().unwrap_or_else(|e| e.into_inner());
        let z = zones.iter().find(|z| z.0 == name)?;
        (z.1, z.2)
    };
    let n = len.saturating_sub(SLOTS_AT) / (SLOT + 1);
    if n == 0 {
        return None;
    }
    // SAFETY: the zone's mapping lives as long as the configuration that registered it,
    // which outlives every TLS context (and so every callback) made from it; the lock
    // word is its first, aligned, 4 bytes, and map and slots lie after it, inside it.
    let (lock, map, data) = unsafe {
        let lock = &*(addr as *const std::sync::atomic::AtomicU32);
        let map = std::slice::from_raw_parts_mut((addr + SLOTS_AT) as *mut u8, n);
        let data = std::slice::from_raw_parts_mut((addr + SLOTS_AT + n) as *mut u8, n * SLOT);
        (lock, map, data)
    };
    let _g = SpinGuard::lock(lock);
    Some(f(&mut Slots { map, data, n }))
}

impl Slots<'_> {
    fn slot(&self, i: usize) -> &[u8] {
        &self.data[i * SLOT..(i + 1) * SLOT]
    }

    fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.data[i * SLOT..(i + 1) * SLOT]
    }

    fn head_of(&self, i: usize) -> usize {
        i.saturating_sub(self.map[i] as usize)
    }

    fn expiry(&self, h: usize) -> u64 {
        u64::from_le_bytes(self.slot(h)[..8].try_into().unwrap_or([0; 8]))
    }

    /// When slot `i` is free again: its entry's expiry (a continuation's is its head's).
    fn expiry_at(&self, i: usize) -> u64 {
        self.expiry(self.head_of(i))
    }

    fn span(&self, h: usize) -> usize {
        (self.slot(h)[43] as usize).clamp(1, MAX_SPAN)
    }

    fn id_of(&self, h: usize) -> Option<&[u8]> {
        let s = self.slot(h);
        let n = s[8] as usize;
        (1..=32).contains(&n).then(|| &s[9..9 + n])
    }

    /// The head of the live entry for `id`.
    fn find(&self, id: &[u8], now: u64) -> Option<usize> {
        (0..self.n).find(|&i| self.map[i] == 0 && self.expiry(i) > now && self.id_of(i) == Some(id))
    }

    /// Forget the entry headed at `h`, its continuation slots included.
    fn drop_entry(&mut self, h: usize) {
        let k = self.span(h);
        self.slot_mut(h)[..8].copy_from_slice(&0u64.to_le_bytes());
        for j in h + 1..(h + k).min(self.n) {
            if self.map[j] as usize == j - h {
                self.map[j] = 0;
            }
        }
    }

    /// Keep `der` under `id` until `expires`: in the first run of free slots long
    /// enough, else in the run whose entries expire first.
    fn put(&mut self, id: &[u8], der: &[u8], expires: u64, now: u64) {
        let k = (HEAD + der.len()).div_ceil(SLOT);
        if der.len() > MAX_SESSION || k > self.n || id.is_empty() || id.len() > 32 {
            return;
        }
        if let Some(h) = self.find(id, now) {
            self.drop_entry(h);
        }
        let mut best = (u64::MAX, 0);
        for i in 0..=self.n - k {
            let cost = (i..i + k).map(|j| self.expiry_at(j)).filter(|&e| e > now).max().unwrap_or(0);
            if cost < best.0 {
                best = (cost, i);
            }
            if cost == 0 {
                break;
            }
        }
        let at = best.1;
        // Whatever the run overlaps goes, whole (an entry cut in two is no entry).
        for j in at..at + k {
            let h = self.head_of(j);
            self.drop_entry(h);
        }
        let s = self.slot_mut(at);
        s[..8].copy_from_slice(&expires.to_le_bytes());
        s[8] = id.len() as u8;
        s[9..9 + id.len()].copy_from_slice(id);
        s[41..43].copy_from_slice(&(der.len() as u16).to_le_bytes());
        s[43] = k as u8;
        self.map[at] = 0;
        for t in 1..k {
            self.map[at + t] = t as u8;
        }
        let from = at * SLOT + HEAD;
        self.data[from..from + der.len()].copy_from_slice(der);
    }

    fn get(&self, id: &[u8], now: u64) -> Option<Vec<u8>> {
        let h = self.find(id, now)?;
        let s = self.slot(h);
        let n = (u16::from_le_bytes([s[41], s[42]]) as usize).min(MAX_SESSION);
        let from = h * SLOT + HEAD;
        self.data.get(from..from + n).map(<[u8]>::to_vec)
    }
}

/// Keep `session` (server side) for `timeout` seconds: the context's
/// `ssl_session_timeout`, as nginx takes it (OpenSSL gives a session of a context with
/// timeout 0 its default instead; nginx's entry then expires at once).
fn store(name: &str, session: &SslSession, timeout: u64) {
    let Ok(der) = session.to_der() else { return };
    let now = now();
    with_slots(name, |z| z.put(session.id(), &der, now + timeout, now));
}

fn lookup(name: &str, id: &[u8]) -> Option<SslSession> {
    let der = with_slots(name, |z| z.get(id, now()))??;
    SslSession::from_der(&der).ok()
}

fn remove(name: &str, id: &[u8]) {
    with_slots(name, |z| {
        if let Some(h) = z.find(id, now()) {
            z.drop_entry(h);
        }
    });
}

/// Keep this context's sessions in the zone called `zone`; `internal` keeps OpenSSL's
/// per-process cache as well (`builtin` named too).
pub fn install(b: &mut SslContextBuilder, zone: &str, internal: bool) {
    let mut mode = SslSessionCacheMode::SERVER;
    if !internal {
        mode |= SslSessionCacheMode::NO_INTERNAL;
    }
    b.set_session_cache_mode(mode);
    let (z1, z2, z3) = (zone.to_string(), zone.to_string(), zone.to_string());
    b.set_new_session_callback(move |ssl, session| {
        use crate::core::ssl::ffi;
        let ctx = ssl.ssl_context() as *const openssl::ssl::SslContextRef as *const ffi::SSL_CTX;
        // SAFETY: the connection's context (a reference is its pointer), alive for the
        // callback.
        let timeout = unsafe { ffi::SSL_CTX_get_timeout(ctx) };
        store(&z1, &session, timeout.max(0) as u64)
    });
    // SAFETY: the sessions returned come from this cache, made by contexts of the same
    // configuration (the session id context decides whether they resume).
    unsafe { b.set_get_session_callback(move |_, id| lookup(&z2, id)) };
    b.set_remove_session_callback(move |_, session| remove(&z3, session.id()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(slots: usize, name: &str) -> Shm {
        let shm = Shm::new(SLOTS_AT + slots * (SLOT + 1)).expect("shm");
        register(name, &shm);
        shm
    }

    #[test]
    fn entries_span_slots_expire_and_give_way() {
        let _shm = zone(12, "t-slots");
        let now = now();
        let big: Vec<u8> = (0..2000).map(|i| i as u8).collect();
        let put = |id: u8, der: &[u8], ttl: u64| with_slots("t-slots", |z| z.put(&[id], der, now + ttl, now));
        let get = |id: u8| with_slots("t-slots", |z| z.get(&[id], now)).flatten();
        put(1, b"small", 100);
        put(2, &big, 200); // five slots
        put(3, b"other", 300);
        assert_eq!(get(1).as_deref(), Some(&b"small"[..]));
        assert_eq!(get(2), Some(big.clone()), "a session longer than a slot is kept whole");
        remove("t-slots", &[1]);
        assert_eq!(get(1), None);
        // 12 slots: 1 free + 5 + 1 + 5 free; two more of five slots: the second takes
        // the run expiring first, which holds entry 2 (entry 3 stays).
        put(4, &big, 400);
        put(5, &big, 500);
        assert_eq!(get(2), None, "given way");
        assert_eq!(get(3).as_deref(), Some(&b"other"[..]));
        assert_eq!(get(4), Some(big.clone()));
        assert_eq!(get(5), Some(big.clone()));
        // The same id again replaces its entry; an expired one is not found.
        put(3, b"again", 300);
        assert_eq!(get(3).as_deref(), Some(&b"again"[..]));
        put(6, b"gone", 0);
        assert_eq!(get(6), None, "a timeout of 0 expires at once, as nginx's entry");
        let huge = vec![0u8; MAX_SESSION + 1];
        put(7, &huge, 100);
        assert!(get(7).is_none(), "over nginx's 4096 bytes");
        assert!(with_slots("nope", |_| ()).is_none());
    }
}
