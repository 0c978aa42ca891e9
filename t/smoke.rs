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

/// The demo configuration and every example pass `-t` (in a prefix with a logs/
/// directory, as a fresh checkout has).
#[test]
fn shipped_configurations_pass_t() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("conf/sluice.conf")];
    let mut examples: Vec<_> = std::fs::read_dir(root.join("conf/examples"))
        .expect("conf/examples")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 3, "examples: {examples:?}");
    files.extend(examples);
    for f in files {
        let dir = crate::common::TempDir::new("shipped");
        std::fs::create_dir_all(dir.join("logs")).expect("logs dir");
        let out = crate::common::run(&["-t", "-p", &dir.prefix(), "-c", &f.to_string_lossy()], dir.path());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && err.contains("test is successful"), "{}:\n{}", f.display(), err);
    }
}
