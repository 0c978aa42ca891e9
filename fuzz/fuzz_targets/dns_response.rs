//! The DNS response parser (the resolver's input from the network) on arbitrary bytes:
//! no panic, no hang, bounded output, and the answer walkers terminate on what it gives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::core::dns::{addresses, parse, services, MAX_RECORDS, TYPE_A, TYPE_AAAA};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = parse(data) {
        assert!(r.answers.len() <= MAX_RECORDS);
        assert!(r.qname.len() <= 255);
        for rec in &r.answers {
            assert!(rec.name.len() <= 255);
        }
        let _ = addresses(&r, &r.qname, TYPE_A);
        let _ = addresses(&r, &r.qname, TYPE_AAAA);
        let _ = services(&r, &r.qname);
    }
});
