//! `ssl_session_cache shared:NAME:SIZE`: TLS sessions in a shared memory zone, so every
//! worker and every server naming the zone resumes them (nginx's `ngx_ssl_new_session`
//! / `ngx_ssl_get_cached_session` / `ngx_ssl_remove_session` over its shm zone).
//!
//! The zone is a table of fixed slots after a lock word: a slot holds the session's
//! expiry (wall-clock seconds, the same in every process), its id, and its DER form. A
//! session too large for a slot is not kept (nginx keeps none over 4 KB either); a full
//! table gives way to the entry that expires first.

use std::sync::Mutex;

use openssl::ssl::{SslContextBuilder, SslSession, SslSessionCacheMode};

use crate::core::shm::{Shm, SpinGuard};

/// The zone's lock word, then the slots from `SLOTS_AT`.
const SLOTS_AT: usize = 64;
const SLOT: usize = 512;
const HEAD: usize = 8 + 1 + 32 + 2;
/// The largest session DER a slot holds.
pub const MAX_SESSION: usize = SLOT - HEAD;

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

/// Run `f` on the zone's slots under its lock.
fn with_slots<R>(name: &str, f: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
    let (addr, len) = {
        let zones = ZONES.lock().unwrap_or_else(|e| e.into_inner());
        let z = zones.iter().find(|z| z.0 == name)?;
        (z.1, z.2)
    };
    if len < SLOTS_AT + SLOT {
        return None;
    }
    // SAFETY: the zone's mapping lives as long as the configuration that registered it,
    // which outlives every TLS context (and so every callback) made from it; the lock
    // word is its first, aligned, 4 bytes.
    let (lock, slots) = unsafe {
        let lock = &*(addr as *const std::sync::atomic::AtomicU32);
        let slots = std::slice::from_raw_parts_mut((addr + SLOTS_AT) as *mut u8, len - SLOTS_AT);
        (lock, slots)
    };
    let _g = SpinGuard::lock(lock);
    Some(f(slots))
}

fn expiry(slot: &[u8]) -> u64 {
    u64::from_le_bytes(slot[..8].try_into().unwrap_or([0; 8]))
}

fn id_of(slot: &[u8]) -> &[u8] {
    let n = (slot[8] as usize).min(32);
    &slot[9..9 + n]
}

fn find<'a>(slots: &'a mut [u8], id: &[u8], now: u64) -> Option<&'a mut [u8]> {
    slots.chunks_exact_mut(SLOT).find(|s| expiry(s) > now && id_of(s) == id)
}

/// Keep `session` (server side).
fn store(name: &str, session: &SslSession) {
    let Ok(der) = session.to_der() else { return };
    let id = session.id();
    if der.len() > MAX_SESSION || id.is_empty() || id.len() > 32 {
        return;
    }
    let now = now();
    let expires = now + session.timeout().max(0) as u64;
    with_slots(name, |slots| {
        // The same id again, else a free or expired slot, else the one expiring first.
        let idx = {
            let mut same = None;
            let mut free = None;
            let mut oldest = (u64::MAX, 0);
            for (i, s) in slots.chunks_exact(SLOT).enumerate() {
                let e = expiry(s);
                if e > now && id_of(s) == id {
                    same = Some(i);
                    break;
                }
                if e <= now && free.is_none() {
                    free = Some(i);
                }
                if e < oldest.0 {
                    oldest = (e, i);
                }
            }
            same.or(free).unwrap_or(oldest.1)
        };
        let s = &mut slots[idx * SLOT..(idx + 1) * SLOT];
        s[..8].copy_from_slice(&expires.to_le_bytes());
        s[8] = id.len() as u8;
        s[9..9 + id.len()].copy_from_slice(id);
        s[41..43].copy_from_slice(&(der.len() as u16).to_le_bytes());
        s[HEAD..HEAD + der.len()].copy_from_slice(&der);
    });
}

fn lookup(name: &str, id: &[u8]) -> Option<SslSession> {
    let der = with_slots(name, |slots| {
        let s = find(slots, id, now())?;
        let n = (u16::from_le_bytes([s[41], s[42]]) as usize).min(MAX_SESSION);
        Some(s[HEAD..HEAD + n].to_vec())
    })??;
    SslSession::from_der(&der).ok()
}

fn remove(name: &str, id: &[u8]) {
    with_slots(name, |slots| {
        if let Some(s) = find(slots, id, now()) {
            s[..8].copy_from_slice(&0u64.to_le_bytes());
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
    b.set_new_session_callback(move |_, session| store(&z1, &session));
    // SAFETY: the sessions returned come from this cache, made by contexts of the same
    // configuration (the session id context decides whether they resume).
    unsafe { b.set_get_session_callback(move |_, id| lookup(&z2, id)) };
    b.set_remove_session_callback(move |_, session| remove(&z3, session.id()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_hold_and_expire_sessions() {
        let shm = Shm::new(SLOTS_AT + 4 * SLOT).expect("shm");
        register("t-slots", &shm);
        // Four slots: a fifth entry gives way to the one expiring first.
        with_slots("t-slots", |slots| {
            for (i, s) in slots.chunks_exact_mut(SLOT).enumerate() {
                s[..8].copy_from_slice(&(now() + 100 + i as u64).to_le_bytes());
                s[8] = 1;
                s[9] = i as u8;
            }
        });
        assert!(with_slots("t-slots", |s| find(s, &[2], now()).is_some()).expect("zone"));
        remove("t-slots", &[2]);
        assert!(!with_slots("t-slots", |s| find(s, &[2], now()).is_some()).expect("zone"));
        assert!(with_slots("nope", |_| ()).is_none());
    }
}
