//! The PROXY protocol parser on arbitrary bytes: no panic, no hang, and a header's
//! length never exceeds the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::stream::proxy_protocol::{get_tlv, read, Parsed};

fuzz_target!(|data: &[u8]| {
    if let Parsed::Header { len, header } = read(data) {
        assert!(len <= data.len());
        if let Some(h) = header {
            for name in ["alpn", "authority", "unique_id", "ssl", "netns", "ssl_verify", "ssl_cn", "0x05", "0xzz", "ssl_0x22"] {
                let _ = get_tlv(&h, name);
            }
        }
    }
});
