//! The DNS response parser (the resolver's input from the network) on arbitrary bytes:
//! no panic, no hang, bounded output, and the answer walkers terminate on what it gives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::core::dns::{addresses, parse, services, MAX_RECORDS, TYPE_A, TYPE_AAAA};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = parse(data) {
        assert!(r.answers.len() <= MAX_RECORDS);
        // Names are at most 255 bytes on the wire, read as lossy UTF-8: at most one
        // char per byte.
        assert!(r.qname.chars().count() <= 255);
        for rec in &r.answers {
            assert!(rec.name.chars().count() <= 255);
        }
        let mut other = Vec::new();
        let _ = addresses(&r, TYPE_A, &mut other);
        let _ = addresses(&r, TYPE_AAAA, &mut other);
        assert!(other.len() <= 2 * r.answers.len());
        let _ = services(&r, &r.qname);
    }
});
