//! The whole configuration load (parser, directive setters, module init) on arbitrary
//! file text: an error or a cycle, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::stream::conf::{load, LoadOptions};
use std::sync::OnceLock;

fn prefix() -> &'static str {
    static DIR: OnceLock<String> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sluice-fuzz-conf.{}", std::process::id()));
        let _ = std::fs::create_dir_all(dir.join("logs"));
        format!("{}/", dir.display())
    })
}

fuzz_target!(|data: &[u8]| {
    let prefix = prefix();
    let conf_file = format!("{prefix}fuzz.conf");
    if std::fs::write(&conf_file, data).is_err() {
        return;
    }
    let opts = LoadOptions {
        prefix: prefix.to_string(),
        conf_file,
        error_log: Some(format!("{prefix}logs/error.log")),
        globals: String::new(),
        test: true,
        signaller: false,
    };
    let _ = load(&opts);
});
