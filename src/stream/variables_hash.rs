//! nginx's checks of `variables_hash_max_size` and `variables_hash_bucket_size`.
//!
//! sluice looks variables up by index and needs no such hash, but nginx builds one of every
//! variable name (`ngx_stream_variables_init_vars` → `ngx_hash_init`) and refuses, or warns
//! about, sizes it cannot build it with. A configuration must get the same verdict here, so
//! this runs nginx's sizing over the names nginx 1.22.1 would hash: the built-in variables
//! of the stream modules as Debian builds them, and the configuration's own (`map`, `geo`,
//! `split_clients`, `set`).

use crate::core::conf::ConfError;

/// The built-in variables of nginx 1.22.1's stream modules in Debian's build (core,
/// upstream, limit_conn, ssl_preread, realip; the ssl module's are `ssl_module::VARIABLES`);
/// none is left out of the hash.
const NGINX_BUILTINS: &[&str] = &[
    "binary_remote_addr",
    "remote_addr",
    "remote_port",
    "proxy_protocol_addr",
    "proxy_protocol_port",
    "proxy_protocol_server_addr",
    "proxy_protocol_server_port",
    "server_addr",
    "server_port",
    "bytes_sent",
    "bytes_received",
    "session_time",
    "status",
    "connection",
    "nginx_version",
    "hostname",
    "pid",
    "msec",
    "time_iso8601",
    "time_local",
    "protocol",
    "upstream_addr",
    "upstream_bytes_sent",
    "upstream_connect_time",
    "upstream_first_byte_time",
    "upstream_session_time",
    "upstream_bytes_received",
    "limit_conn_status",
    "ssl_preread_protocol",
    "ssl_preread_server_name",
    "ssl_preread_alpn_protocols",
    "realip_remote_addr",
    "realip_remote_port",
];

/// x86_64's `ngx_cacheline_size`, to which nginx rounds the bucket size up.
const CACHE_LINE: u64 = 64;
const PTR: u64 = 8;

fn align(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

/// `NGX_HASH_ELT_SIZE`: a value pointer, then the length and the name, pointer-aligned.
fn elt_size(name: &str) -> u64 {
    PTR + align(name.len() as u64 + 2, PTR)
}

/// `ngx_hash_key`.
fn key_hash(name: &str) -> u64 {
    name.bytes().fold(0u64, |k, c| k.wrapping_mul(31).wrapping_add(u64::from(c)))
}

/// `ngx_hash_init` allocates a u_short per size up to max_size before searching: a
/// max_size no allocator can give fails the configuration as nginx's malloc does.
pub fn test_alloc(max_size: u64) -> Result<(), ConfError> {
    crate::core::conf::test_malloc(max_size.wrapping_mul(2))
}

/// Check the sizes for the configuration's own variable names (`user`, lower case, any
/// order) as nginx's `ngx_hash_init` does. Ok carries nginx's warning when the hash fits
/// only by ignoring the bucket size.
pub fn check<'a>(
    max_size: Option<u64>,
    bucket_size: Option<u64>,
    user: impl Iterator<Item = &'a str>,
) -> Result<Option<String>, ConfError> {
    let max = max_size.unwrap_or(1024);
    let bucket = align(bucket_size.unwrap_or(64), CACHE_LINE);
    let fail = |what: String| Err(ConfError::bare(format!("could not build variables_hash, {}", what)));
    let mut names: Vec<&str> = NGINX_BUILTINS.iter().chain(crate::stream::ssl_module::VARIABLES).copied().collect();
    for n in user {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    if max == 0 {
        return fail("you should increase variables_hash_max_size: 0".into());
    }
    if bucket > 65536 - CACHE_LINE {
        // nginx prints the size as signed (%i).
        return fail(format!("too large variables_hash_bucket_size: {}", bucket as i64));
    }
    if names.iter().any(|n| bucket < elt_size(n) + PTR) {
        return fail(format!("you should increase variables_hash_bucket_size: {}", bucket));
    }
    test_alloc(max)?;
    let keys: Vec<(u64, u64)> = names.iter().map(|n| (key_hash(n), elt_size(n))).collect();
    let nelts = keys.len() as u64;
    let room = bucket - PTR;
    let mut start = (nelts / (room / (2 * PTR))).max(1);
    if max > 10000 && max / nelts < 100 {
        start = max - 1000;
    }
    // Whether every bucket's elements fit in `limit` at table size `size`. Buckets are
    // counted in a map: `size` may be huge, the names are few.
    let mut used: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    let mut fits = |size: u64, limit: u64| {
        used.clear();
        keys.iter().all(|&(h, e)| {
            let b = used.entry(h % size).or_insert(0);
            *b += e;
            *b <= limit
        })
    };
    // nginx tries every size up to max_size; names whose hashes collide (they can) never
    // fit, and a huge max_size would then spin: past a million sizes the answer is taken
    // as nginx's eventual one, the warning.
    if (start..=max).take(1_000_000).any(|size| fits(size, room)) {
        return Ok(None);
    }
    // At max_size, ignoring the bucket size; a bucket must still stay under 64 KiB
    // (each starts with a pointer).
    let warning = format!(
        "could not build optimal variables_hash, you should increase either variables_hash_max_size: {} \
         or variables_hash_bucket_size: {}; ignoring variables_hash_bucket_size",
        max, bucket
    );
    if !fits(max, 65536 - CACHE_LINE - PTR) {
        // nginx has given its warning by then.
        crate::core::log::error(crate::core::conf::Level::Warn, &warning, None);
        return fail(format!("you should increase variables_hash_max_size: {}", max));
    }
    Ok(Some(warning))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(max: Option<u64>, bucket: Option<u64>, user: &[&str]) -> Result<Option<String>, String> {
        check(max, bucket, user.iter().copied()).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_fit() {
        assert_eq!(verdict(None, None, &[]), Ok(None));
        assert_eq!(verdict(None, None, &["a", "b"]), Ok(None));
    }

    #[test]
    fn errors_as_nginx() {
        let e = |m| Err(format!("could not build variables_hash, {}", m));
        assert_eq!(verdict(Some(0), None, &[]), e("you should increase variables_hash_max_size: 0"));
        assert_eq!(verdict(None, Some(100000), &[]), e("too large variables_hash_bucket_size: 100032"));
        assert_eq!(verdict(None, Some(0), &[]), e("you should increase variables_hash_bucket_size: 0"));
        // A 47-byte name needs 8 + 56 + 8 > 64; 46 bytes fit (nginx 1.22.1 side by side).
        assert_eq!(verdict(None, None, &[&"v".repeat(46)]), Ok(None));
        assert_eq!(verdict(None, None, &[&"v".repeat(47)]), e("you should increase variables_hash_bucket_size: 64"));
    }

    #[test]
    fn colliding_names_and_a_huge_max_size_end() {
        // "xaq" and "xc3" have the same ngx_hash_key; padded, two never share 56 bytes.
        let (a, b) = (format!("{}xaq", "p".repeat(30)), format!("{}xc3", "p".repeat(30)));
        assert_eq!(key_hash(&a), key_hash(&b));
        // 2 GB of nginx's test array can be had (its search would take ages; ours stops).
        let w = verdict(Some(1 << 30), None, &[&a, &b]).expect("builds");
        assert!(w.is_some_and(|w| w.starts_with("could not build optimal variables_hash")));
        // 2 TB cannot: nginx's malloc fails first.
        let e = verdict(Some(1 << 40), None, &[&a, &b]).map(|_| ());
        assert_eq!(e, Err("malloc(2199023255552) failed (12: Cannot allocate memory)".to_string()));
    }

    #[test]
    fn small_max_size_warns() {
        let w = verdict(Some(2), None, &[]).expect("builds");
        assert_eq!(
            w.as_deref(),
            Some(
                "could not build optimal variables_hash, you should increase either variables_hash_max_size: 2 \
                 or variables_hash_bucket_size: 64; ignoring variables_hash_bucket_size"
            )
        );
    }
}
