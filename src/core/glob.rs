//! `include` patterns: glob(3), as nginx's `ngx_open_glob` (sorted; no match is fine).

use std::ffi::{CStr, CString};
use std::io;

pub fn glob(pattern: &str) -> io::Result<Vec<String>> {
    let c = CString::new(pattern).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
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
                out.push(CStr::from_ptr(p).to_string_lossy().into_owned());
            }
        }
        libc::globfree(&mut g);
        Ok(out)
    }
}
