//! `include` patterns: glob(3), as nginx's `ngx_open_glob` (sorted; no match is fine).
//! Patterns and names are configuration text: bytes that are not UTF-8 go to glob(3)
//! and come back as they were written (`parser::text_to_bytes`, `bytes_to_text`).

use std::ffi::{CStr, CString};
use std::io;

pub fn glob(pattern: &str) -> io::Result<Vec<String>> {
    use crate::core::conf::parser::{bytes_to_text, text_to_bytes};
    let c = CString::new(text_to_bytes(pattern)).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: glob fills `g`, which we free with globfree; the paths are valid C strings
    // until then and are copied out first.
    unsafe {
        let mut g: libc::glob_t = std::mem::zeroed();
        let rc = libc::glob(c.as_ptr(), 0, None, &mut g);
        if rc == libc::GLOB_NOMATCH {
            libc::globfree(&mut g);
            return Ok(Vec::new());
        }
        if rc != 0 {
            libc::globfree(&mut g);
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::with_capacity(g.gl_pathc);
        for i in 0..g.gl_pathc {
            let p = *g.gl_pathv.add(i);
            if !p.is_null() {
                out.push(bytes_to_text(CStr::from_ptr(p).to_bytes()));
            }
        }
        libc::globfree(&mut g);
        Ok(out)
    }
}
