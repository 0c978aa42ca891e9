//! The demo path: `return` and a proxied `return` through the real binary.

use crate::common::*;

#[test]
fn return_and_proxy_to_return() {
    let (a, b) = (free_port(), free_port());
    let mut s = Sluice::start(&format!(
        "events {{}}\nstream {{\n  server {{ listen 127.0.0.1:{a}; return \"hi $protocol\\n\"; }}\n  \
         server {{ listen 127.0.0.1:{b}; proxy_pass 127.0.0.1:{a}; }}\n}}\n"
    ));
    assert_eq!(exchange(a, b""), b"hi TCP\n");
    assert_eq!(exchange(b, b""), b"hi TCP\n");
    assert_eq!(s.stop(), Some(0));
    assert!(!s.error_log().contains("[alert]"), "{}", s.error_log());
}
