//! `sluice -t` on every configuration whose `nginx -t` output was recorded from nginx
//! 1.22.1 in `t/data/conf_errors/` (see `t/data/README.md` and `record-conf-errors.sh`).
//!
//! Each case is copied to `DIR/nginx.conf` (plus `NAME.files/*` beside it) and run as
//! `sluice -t -p DIR -c DIR/nginx.conf -e DIR/error.log` with DIR as the working
//! directory, exactly as the recorder ran nginx but without the `-g 'load_module ...;'`
//! (sluice has its modules built in). stderr must equal `NAME.expected` with `nginx: `
//! line prefixes read as `sluice: ` and `%%PREFIX%%` as DIR (no trailing slash), and the
//! exit status must match. The few cases where sluice legitimately differs are listed in
//! `sluice_specific`, each with its reason.

use std::path::{Path, PathBuf};

use crate::common::{run, TempDir};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("t/data/conf_errors")
}

/// What sluice must print for a case.
enum Expect {
    /// nginx's recording, word for word.
    Nginx,
    /// Accepted: the two "syntax is ok" / "test is successful" lines, exit 0.
    Accepted,
    /// Refused: exactly one `[emerg]` at `nginx.conf:LINE` whose message contains every
    /// word of `words`, then "test failed", exit 1.
    Refused { line: u32, words: &'static [&'static str] },
}

fn sluice_specific(name: &str) -> Expect {
    match name {
        // sluice runs stream{} only: an http{} block is refused, not silently ignored.
        "valid_http_block" => Expect::Refused { line: 2, words: &["\"http\""] },
        // nginx said "unknown directive" only because Debian's mail module was not loaded;
        // sluice refuses mail{} like http{} (nginx's own text also satisfies this).
        "unknown_directive_mail" => Expect::Refused { line: 2, words: &["\"mail\""] },
        // load_module of a file that exists is accepted and ignored: sluice's modules are
        // built in, so a second stream module is no error (nginx's came from the
        // recorder's -g). A missing file is nginx's error (load_module_missing*).
        "load_module_already_loaded" => Expect::Accepted,
        // `resolver ... ipv4=` is nginx >= 1.23.1 (the issue and today's documentation have
        // it); the 1.22.1 recording reads "ipv4=off" as a host name.
        "resolver_ipv4_param" => Expect::Accepted,
        "resolver_both_off" => Expect::Refused { line: 5, words: &["\"ipv4\"", "\"ipv6\"", "cannot", "both"] },
        _ => Expect::Nginx,
    }
}

/// Copy a directory's contents into `to`, recursively.
fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).expect("read case files") {
        let e = e.expect("dir entry");
        let dst = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            std::fs::create_dir_all(&dst).expect("mkdir");
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).expect("copy case file");
        }
    }
}

struct Outcome {
    dir: String,
    stderr: String,
    stdout: String,
    code: Option<i32>,
}

/// Output as text that keeps every byte apart: a byte that is not UTF-8 is written
/// `\xNN` (a lossy decoding would make it equal to a printed U+FFFD).
fn exact_text(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        s.push_str(chunk.valid());
        for c in chunk.invalid() {
            s.push_str(&format!("\\x{c:02x}"));
        }
    }
    s
}

/// Run `sluice -t` on `conf` (bytes of a case file) with `files` beside it.
fn test_conf(name: &str, conf: &[u8], files: Option<&Path>) -> (TempDir, Outcome) {
    let tmp = TempDir::new(&format!("conf-{name}"));
    std::fs::write(tmp.join("nginx.conf"), conf).expect("write nginx.conf");
    if let Some(f) = files {
        copy_dir(f, tmp.path());
    }
    let dir = tmp.path().display().to_string();
    let conf_path = format!("{dir}/nginx.conf");
    let log_path = format!("{dir}/error.log");
    let out = run(&["-t", "-p", &dir, "-c", &conf_path, "-e", &log_path], tmp.path());
    let o = Outcome { dir, stderr: exact_text(&out.stderr), stdout: exact_text(&out.stdout), code: out.status.code() };
    (tmp, o)
}

/// `NAME.expected` as sluice should print it for `dir`: (stderr, exit status).
fn recorded(name: &str, dir: &str) -> (String, i32) {
    // Not necessarily UTF-8: nginx prints a stray byte of the file as it is.
    let bytes = std::fs::read(data_dir().join(format!("{name}.expected"))).expect("read .expected");
    let text = exact_text(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    let last = lines.pop().unwrap_or_default();
    let code = last.strip_prefix("exit=").and_then(|c| c.parse().ok()).expect("last line exit=N");
    let mut stderr = String::new();
    for l in lines {
        let l = match l.strip_prefix("nginx: ") {
            Some(rest) => format!("sluice: {rest}"),
            None => l.to_string(),
        };
        stderr.push_str(&l.replace("%%PREFIX%%", dir));
        stderr.push('\n');
    }
    (stderr, code)
}

fn diff(expected: &str, actual: &str) -> String {
    let mut s = String::new();
    for l in expected.lines() {
        s.push_str(&format!("  - {l}\n"));
    }
    for l in actual.lines() {
        s.push_str(&format!("  + {l}\n"));
    }
    s
}

/// Checks `o` against nginx's recording; `Err` describes the mismatch.
fn matches_nginx(name: &str, o: &Outcome) -> Result<(), String> {
    let (stderr, code) = recorded(name, &o.dir);
    if o.stderr == stderr && o.code == Some(code) && o.stdout.is_empty() {
        return Ok(());
    }
    let mut m = format!("stderr (- nginx, + sluice):\n{}", diff(&stderr, &o.stderr));
    if o.code != Some(code) {
        m.push_str(&format!("exit: nginx {code}, sluice {:?}\n", o.code));
    }
    if !o.stdout.is_empty() {
        m.push_str(&format!("unexpected stdout: {:?}\n", o.stdout));
    }
    Err(m)
}

fn accepted(o: &Outcome) -> Result<(), String> {
    let want = format!(
        "sluice: the configuration file {d}/nginx.conf syntax is ok\n\
         sluice: configuration file {d}/nginx.conf test is successful\n",
        d = o.dir
    );
    if o.stderr == want && o.code == Some(0) && o.stdout.is_empty() {
        return Ok(());
    }
    Err(format!("expected acceptance (exit 0), got exit {:?}:\n{}", o.code, diff(&want, &o.stderr)))
}

fn refused(o: &Outcome, line: u32, words: &[&str]) -> Result<(), String> {
    let lines: Vec<&str> = o.stderr.lines().collect();
    let at = format!(" in {}/nginx.conf:{line}", o.dir);
    let failed = format!("sluice: configuration file {}/nginx.conf test failed", o.dir);
    let ok = o.code == Some(1)
        && o.stdout.is_empty()
        && lines.len() == 2
        && lines[0].starts_with("sluice: [emerg] ")
        && lines[0].ends_with(&at)
        && words.iter().all(|w| lines[0].contains(w))
        && lines[1] == failed;
    if ok {
        return Ok(());
    }
    Err(format!(
        "expected exit 1 and\n  + sluice: [emerg] ...{}...{at}\n  + {failed}\ngot exit {:?}:\n{}",
        words.join("..."),
        o.code,
        diff("", &o.stderr)
    ))
}

fn check(name: &str) {
    let conf = std::fs::read(data_dir().join(format!("{name}.conf"))).expect("read case");
    let files = data_dir().join(format!("{name}.files"));
    let (_tmp, o) = test_conf(name, &conf, files.is_dir().then_some(files.as_path()));
    let r = match sluice_specific(name) {
        Expect::Nginx => matches_nginx(name, &o),
        Expect::Accepted => accepted(&o),
        Expect::Refused { line, words } => refused(&o, line, words),
    };
    if let Err(e) = r {
        panic!("conf_errors case {name} (t/data/conf_errors/{name}.conf):\n{e}");
    }
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        const CASES: &[&str] = &[$(stringify!($name)),*];
        $(
            #[test]
            fn $name() {
                check(stringify!($name));
            }
        )*
    };
}

cases! {
    access_log_bad_buffer,
    access_log_buffer_too_large,
    access_log_empty_names_not_shared,
    access_log_missing_dir,
    access_log_no_format,
    access_log_repeated_parameters,
    access_log_syslog_flush_without_buffer,
    access_log_unknown_format,
    access_log_unknown_parameter,
    affinity_warning_before_late_error,
    args_block_with_args,
    args_flag_two,
    args_listen_zero,
    args_take1_two,
    args_take1_zero,
    args_worker_processes_zero,
    compat_accept_mutex_invalid,
    compat_pcre_jit_invalid,
    compat_timer_resolution_duplicate,
    compat_worker_aio_requests_invalid,
    debug_connection_host_not_found,
    debug_connection_low_bits_warn,
    debug_points_invalid,
    debug_points_upper_case,
    deprecated_buffer_duplicate_warns_once,
    deprecated_buffer_invalid_no_warning,
    duplicate_before_value_proxy_bind,
    duplicate_before_value_proxy_timeout,
    duplicate_before_value_resolver,
    duplicate_before_value_worker_connections,
    duplicate_events_block,
    duplicate_preread_buffer_size,
    duplicate_proxy_pass,
    duplicate_proxy_timeout,
    duplicate_return,
    duplicate_stream_block,
    duplicate_worker_processes,
    empty_file,
    empty_pid_and_error_log,
    error_log_debug_mask_after_level,
    error_log_level_after_debug_mask,
    error_log_memory,
    error_log_memory_too_small,
    error_log_missing_dir,
    error_log_unknown_debug_mask,
    error_text_cut_at_1024_bytes,
    error_text_cut_mid_character,
    events_epoll_events,
    events_missing,
    events_use_duplicate,
    events_use_invalid,
    geo_delete_radix_shape,
    include_directory,
    include_error_in_included_file,
    include_missing,
    include_missing_absolute,
    listen_backlog_huge,
    listen_bad_backlog,
    listen_bad_port,
    listen_duplicate,
    listen_fastopen_huge,
    listen_host_not_found,
    listen_ipv4_mapped_ipv6only,
    listen_ipv6_question_after_port,
    listen_ipv6_unbracketed,
    listen_ipv6only_invalid,
    listen_missing,
    listen_no_port,
    listen_non_numeric_port,
    listen_number_beyond_64_bits,
    listen_port_plus_sign,
    listen_port_zero,
    listen_range_not_a_number,
    listen_range_ok,
    listen_range_open_end,
    listen_range_overlap,
    listen_range_port_only_reversed,
    listen_range_reversed,
    listen_range_too_big,
    listen_rcvbuf_huge,
    listen_rcvbuf_truncated,
    listen_sndbuf_huge,
    listen_so_keepalive_minus_one,
    listen_so_keepalive_zero,
    listen_ssl_no_certificate,
    listen_udp_backlog,
    listen_udp_incompatible_order,
    listen_unix_missing_dir,
    listen_unknown_parameter,
    load_module_already_loaded,
    load_module_directory,
    load_module_missing,
    load_module_missing_file,
    load_module_too_late,
    log_format_bracket_ends_argument,
    log_format_bracket_no_name,
    log_format_capture,
    log_format_dollar_at_end,
    log_format_dollar_ends_argument,
    log_format_duplicate_name,
    log_format_escape_only,
    log_format_missing_name_only,
    log_format_unknown_escape,
    log_format_unknown_variable,
    log_format_unterminated_brace,
    log_open_order,
    map_hash_max_unallocatable,
    map_include_value_error,
    merge_order_proxy_before_ssl,
    no_handler_before_upstream_errors,
    not_allowed_http_directive_in_stream,
    not_allowed_http_directive_in_upstream,
    not_allowed_http_gzip_types_in_main,
    not_allowed_http_limit_rate_in_server,
    not_allowed_http_max_headers_in_server,
    not_allowed_listen_in_stream,
    not_allowed_load_module_in_stream,
    not_allowed_proxy_pass_in_main,
    not_allowed_proxy_pass_in_stream,
    not_allowed_server_in_server,
    not_allowed_stream_in_stream,
    not_allowed_tcp_nodelay_in_main,
    not_allowed_worker_processes_in_stream,
    open_log_file_cache_no_max,
    open_log_file_cache_valid,
    pid_missing_dir,
    proxy_bind_brackets_without_port,
    proxy_bind_invalid_address_raw_byte,
    proxy_bind_port,
    proxy_downstream_buffer_deprecated,
    proxy_pass_host_not_found,
    proxy_pass_ipv6_as_written,
    proxy_pass_no_port,
    proxy_pass_unknown_variable,
    proxy_protocol_bad_value,
    proxy_ssl_certificate_without_key,
    proxy_ssl_ciphers_no_match,
    proxy_ssl_duplicate,
    proxy_ssl_merge_before_upstream_hosts,
    proxy_ssl_off_checks_nothing,
    proxy_ssl_ok,
    proxy_ssl_protocols_invalid,
    proxy_ssl_trusted_certificate_missing_file,
    proxy_ssl_verify_without_trusted_certificate,
    regex_class_range_out_of_order,
    regex_class_range_to_class,
    regex_class_range_to_dash_out_of_order,
    regex_class_ranges_from_and_to_dash,
    regex_octal_too_big,
    regex_posix_class_outside,
    regex_posix_collating,
    regex_posix_unknown_class,
    regex_reference_to_no_group,
    resolver_bad_ipv6,
    resolver_bad_port,
    resolver_bad_valid,
    resolver_both_off,
    resolver_duplicate,
    resolver_host_not_found,
    resolver_ipv4_param,
    resolver_only_valid,
    return_dollar_at_end,
    return_empty_braces,
    return_empty_string,
    return_unknown_variable,
    return_unterminated_brace,
    server_no_handler,
    split_clients_bad_percent_without_value,
    split_clients_line_without_value,
    ssl_alpn_duplicate,
    ssl_certificate_key_engine_syntax,
    ssl_certificate_key_engine_unknown,
    ssl_certificate_key_missing_file,
    ssl_certificate_key_missing_for_second,
    ssl_certificate_key_not_a_key,
    ssl_certificate_missing_file,
    ssl_certificate_no_key,
    ssl_certificate_not_a_certificate,
    ssl_certificate_unknown_variable_without_ssl,
    ssl_certificate_variables_compiled_late,
    ssl_ciphers_no_match,
    ssl_conf_command_ok,
    ssl_conf_command_relative_file,
    ssl_conf_command_unknown,
    ssl_dhparam_missing_file,
    ssl_dhparam_not_dh,
    ssl_dhparam_ok,
    ssl_dhparam_too_small,
    ssl_ecdh_curve_unknown,
    ssl_engine_unknown,
    ssl_handshake_timeout_invalid,
    ssl_ok_inherited_from_stream,
    ssl_password_file_empty,
    ssl_password_file_missing,
    ssl_password_file_ok,
    ssl_password_file_wrong,
    ssl_prefer_server_ciphers_invalid,
    ssl_protocols_duplicate_value,
    ssl_protocols_invalid,
    ssl_session_cache_invalid,
    ssl_session_cache_ok,
    ssl_session_cache_too_small,
    ssl_session_ticket_key_checked_last,
    ssl_session_ticket_key_directory,
    ssl_session_ticket_key_missing_file,
    ssl_session_ticket_key_ok,
    ssl_session_ticket_key_wrong_size,
    ssl_verify_client_invalid,
    ssl_verify_client_ok,
    ssl_verify_client_uppercase,
    ssl_verify_client_without_ca,
    stream_error_log_opened_unused,
    syntax_block_without_brace,
    syntax_brace_after_non_block,
    syntax_char_after_quote,
    syntax_comment_4096_bytes,
    syntax_comment_only,
    syntax_lone_open_brace,
    syntax_lone_semicolon,
    syntax_missing_semicolon_before_brace,
    syntax_missing_semicolon_eof,
    syntax_multiline_directive_line,
    syntax_multiline_string_line,
    syntax_no_break_space_after_quote,
    syntax_paren_after_quote,
    syntax_quoted_4093_then_space,
    syntax_quoted_4094_then_space,
    syntax_quoted_then_quoted,
    syntax_token_4095_then_semicolon,
    syntax_token_4095_then_space,
    syntax_too_long_parameter,
    syntax_too_long_quoted_parameter,
    syntax_unexpected_close_brace,
    syntax_unexpected_eof,
    syntax_unterminated_double_quote,
    syntax_unterminated_single_quote,
    syslog_ipv6_no_format,
    thread_pool_bad_max_queue,
    thread_pool_duplicate,
    thread_pool_no_threads,
    thread_pool_threads_zero,
    timer_resolution_invalid,
    too_long_parameter_cut_mid_character,
    unix_path_of_107_bytes_is_fine,
    unix_path_too_long_in_listen,
    unix_path_too_long_in_syslog,
    unix_path_too_long_in_upstream,
    unknown_directive_case_sensitive,
    unknown_directive_empty_name,
    unknown_directive_events,
    unknown_directive_mail,
    unknown_directive_main,
    unknown_directive_nul_byte,
    unknown_directive_server,
    unknown_directive_stream,
    unknown_http2,
    unknown_mail_block,
    unknown_variable_first_referenced,
    upstream_backup_only,
    upstream_block_then_implicit_port,
    upstream_consistent_ring_too_big,
    upstream_defined_later,
    upstream_duplicate,
    upstream_duplicate_case,
    upstream_http_keepalive,
    upstream_implicit_port_then_block,
    upstream_ipv6_after_bracket,
    upstream_ipv6_no_host,
    upstream_ipv6_slash_in_brackets,
    upstream_method_redefined_bad_parameter,
    upstream_name_case,
    upstream_named_like_a_unix_proxy_pass,
    upstream_no_servers,
    upstream_no_servers_named_by_proxy_pass_first,
    upstream_server_bad_weight,
    upstream_server_no_port,
    upstream_server_weight_huge,
    upstream_zone_64k_holds_62_and_a_backup,
    upstream_zone_64k_no_memory_with_backup,
    upstream_zone_empty_name,
    upstream_zone_holds_16_peers,
    upstream_zone_no_memory,
    upstream_zone_twice,
    user_group_defaults_to_user,
    valid_empty_stream,
    valid_full,
    valid_http_block,
    valid_include_glob_nomatch,
    valid_include_relative,
    valid_proxy_connect_timeout_zero,
    valid_proxy_pass,
    valid_proxy_pass_and_return,
    valid_resolver,
    valid_return,
    valid_tokenizer,
    valid_user_nobody_nogroup,
    valid_values,
    valid_worker_processes_auto,
    value_daemon_maybe,
    value_error_log_bad_level,
    value_error_log_bad_level_stream,
    value_invalid_flag,
    value_invalid_size,
    value_invalid_time,
    value_invalid_worker_processes,
    value_negative_worker_connections,
    value_user_unknown,
    var_duplicate_case,
    var_name_case,
    var_unknown_case,
    variable_braced_digit,
    variable_dollar_brace_at_end,
    variables_hash_bucket_overflow,
    variables_hash_bucket_size_too_large,
    variables_hash_bucket_size_zero,
    variables_hash_colliding_names,
    variables_hash_duplicate,
    variables_hash_long_name,
    variables_hash_long_name_fits,
    variables_hash_many_names_fit,
    variables_hash_many_names_warn,
    variables_hash_max_size_small,
    variables_hash_max_size_zero,
    variables_hash_max_unallocatable,
    variables_hash_user_variables,
    worker_connections_exceed_nofile,
    worker_connections_reuseport_counted_once,
    worker_connections_too_few,
    worker_cpu_affinity_auto_args,
    worker_cpu_affinity_invalid,
    worker_cpu_affinity_masks_warn,
    worker_cpu_affinity_multibyte_character,
    worker_priority_low_bits_all_ones,
    worker_priority_truncated,
    worker_processes_duplicate_first,
    worker_rlimit_core_gigabytes,
    zone_mmap_fails,
}

/// A case recorded but not listed above would go untested.
#[test]
fn every_recorded_case_is_listed() {
    let mut on_disk: Vec<String> = std::fs::read_dir(data_dir())
        .expect("read t/data/conf_errors")
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".conf").map(str::to_string))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = CASES.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "t/data/conf_errors/*.conf and the cases! list differ");
    for name in &on_disk {
        assert!(data_dir().join(format!("{name}.expected")).is_file(), "{name}.expected missing");
    }
}

/// Files that include each other: nginx 1.22.1 recurses until it crashes (SIGSEGV, exit
/// 139, nothing printed); sluice stops 64 includes deep with an error at the include.
#[test]
fn include_loop_is_an_error_not_a_crash() {
    let files = TempDir::new("conf-include-loop");
    std::fs::write(files.join("a.conf"), "include b.conf;\n").expect("write");
    std::fs::write(files.join("b.conf"), "include a.conf;\n").expect("write");
    let (_tmp, o) = test_conf("include_loop", b"include a.conf;\nevents {}\n", Some(files.path()));
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    let first = o.stderr.lines().next().unwrap_or("");
    assert!(
        first.starts_with("sluice: [emerg] too many nested \"include\" directives (more than 64) in ")
            && (first.ends_with("/a.conf:1") || first.ends_with("/b.conf:1")),
        "{}",
        o.stderr
    );
}

/// The same inside `map` and `geo` blocks, whose includes are read by their own
/// handlers: nginx 1.22.1 crashes (SIGSEGV); sluice overflowed its stack (SIGABRT).
#[test]
fn map_and_geo_include_loops_are_errors_not_crashes() {
    for block in ["map $remote_addr $m", "geo $g"] {
        let files = TempDir::new("conf-include-loop");
        std::fs::write(files.join("self.txt"), "include self.txt;\n").expect("write");
        let conf = format!("events {{}}\nstream {{\n{block} {{ include self.txt; }}\n}}\n");
        let (_tmp, o) = test_conf("include_loop", conf.as_bytes(), Some(files.path()));
        assert_eq!(o.code, Some(1), "{block}: {}", o.stderr);
        let first = o.stderr.lines().next().unwrap_or("");
        assert!(
            first.starts_with("sluice: [emerg] too many nested \"include\" directives (more than 64) in ")
                && first.ends_with("/self.txt:1"),
            "{block}: {}",
            o.stderr
        );
    }
}
