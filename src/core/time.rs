//! The cached clock (`ngx_time_update`): wall time read once per loop turn, and the
//! strings nginx prints from it — error-log time, `$time_local`, `$time_iso8601`.

use std::cell::Cell;
use std::cell::RefCell;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[derive(Default)]
struct Cached {
    sec: i64,
    msec: u32,
    err_log: String,
    syslog: String,
    local: String,
    iso8601: String,
}

thread_local! {
    static INSTANT: Cell<Option<Instant>> = const { Cell::new(None) };
    static NOW: RefCell<Cached> = RefCell::new(Cached { sec: -1, ..Default::default() });
}

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

fn local_tm(sec: i64) -> libc::tm {
    // SAFETY: localtime_r only writes the tm we pass; an all-zero tm is a valid value.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        let t: libc::time_t = sec as libc::time_t;
        libc::localtime_r(&t, &mut tm);
        tm
    }
}

/// Read the system clock and refresh the cached strings when the second changed.
pub fn update() {
    update_on(None);
}

/// `update`, with the monotonic clock set back to the last tick of `grid` (its start
/// and step): under `timer_resolution` timers then fire on the tick that reaches them,
/// however late the ticks are handled (nginx's millisecond clock of a coarse source
/// does not see that lateness either).
pub fn update_on(grid: Option<(Instant, std::time::Duration)>) {
    let mut now = Instant::now();
    if let Some((start, step)) = grid.filter(|(_, step)| !step.is_zero()) {
        // In nanoseconds: a count of ticks can pass u32 (49.7 days of 1ms ticks).
        let elapsed = now.saturating_duration_since(start).as_nanos();
        let on = u64::try_from(elapsed - elapsed % step.as_nanos()).unwrap_or(u64::MAX);
        now = start.checked_add(std::time::Duration::from_nanos(on)).unwrap_or(now);
    }
    INSTANT.with(|i| i.set(Some(now)));
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let sec = d.as_secs() as i64;
    NOW.with(|n| {
        let mut n = n.borrow_mut();
        n.msec = d.subsec_millis();
        if n.sec == sec {
            return;
        }
        n.sec = sec;
        let tm = local_tm(sec);
        let (y, mo, dd, h, mi, s) = (tm.tm_year + 1900, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        let off = tm.tm_gmtoff / 60;
        let (sign, off) = if off < 0 { ('-', -off) } else { ('+', off) };
        n.err_log = format!("{:04}/{:02}/{:02} {:02}:{:02}:{:02}", y, mo + 1, dd, h, mi, s);
        n.syslog = format!("{} {:2} {:02}:{:02}:{:02}", MONTHS[(mo.clamp(0, 11)) as usize], dd, h, mi, s);
        n.local = format!(
            "{:02}/{}/{:04}:{:02}:{:02}:{:02} {}{:02}{:02}",
            dd,
            MONTHS[(mo.clamp(0, 11)) as usize],
            y,
            h,
            mi,
            s,
            sign,
            off / 60,
            off % 60
        );
        n.iso8601 = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{}{:02}:{:02}",
            y,
            mo + 1,
            dd,
            h,
            mi,
            s,
            sign,
            off / 60,
            off % 60
        );
    });
}

fn with<R>(f: impl FnOnce(&Cached) -> R) -> R {
    NOW.with(|n| {
        if n.borrow().sec < 0 {
            update();
        }
        f(&n.borrow())
    })
}

/// The monotonic clock as of the last `update`.
pub fn instant() -> Instant {
    INSTANT.with(|i| match i.get() {
        Some(t) => t,
        None => {
            let t = Instant::now();
            i.set(Some(t));
            t
        }
    })
}

/// The wall-clock second `t` falls in (nginx's `ngx_time()` at that moment), from one
/// pairing of the two clocks per process.
pub fn wall_secs_of(t: Instant) -> i64 {
    use std::sync::OnceLock;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    static BASE: OnceLock<(Instant, Duration)> = OnceLock::new();
    let (i0, w0) =
        *BASE.get_or_init(|| (Instant::now(), SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()));
    let w = match t.checked_duration_since(i0) {
        Some(d) => w0 + d,
        None => w0.saturating_sub(i0 - t),
    };
    w.as_secs() as i64
}

/// `(seconds, milliseconds)` since the epoch, as cached.
pub fn wall() -> (i64, u32) {
    with(|n| (n.sec, n.msec))
}

/// "2026/11/21 10:00:00", the error log's time.
pub fn err_log_time(out: &mut String) {
    with(|n| out.push_str(&n.err_log))
}

/// The syslog header's time: "Nov 21 10:00:00" (day padded with a space).
pub fn syslog_time(out: &mut String) {
    with(|n| out.push_str(&n.syslog))
}

/// `$time_local`: "21/Nov/2026:10:00:00 +0000".
pub fn time_local(out: &mut Vec<u8>) {
    with(|n| out.extend_from_slice(n.local.as_bytes()))
}

/// `$time_iso8601`: "2026-11-21T10:00:00+00:00".
pub fn time_iso8601(out: &mut Vec<u8>) {
    with(|n| out.extend_from_slice(n.iso8601.as_bytes()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_have_nginx_shapes() {
        super::update();
        let mut s = String::new();
        super::err_log_time(&mut s);
        assert_eq!(s.len(), 19);
        assert_eq!(&s[4..5], "/");
        let mut v = Vec::new();
        super::time_local(&mut v);
        assert_eq!(v.len(), 26, "{}", String::from_utf8_lossy(&v));
        v.clear();
        super::time_iso8601(&mut v);
        assert_eq!(v.len(), 25, "{}", String::from_utf8_lossy(&v));
    }

    /// Under `timer_resolution` the clock stands on the last tick of the grid, however
    /// late the tick is handled.
    #[test]
    fn the_clock_stands_on_the_tick_grid() {
        use std::time::{Duration, Instant};
        let step = Duration::from_millis(7);
        let start = Instant::now() - Duration::from_millis(100);
        super::update_on(Some((start, step)));
        let at = super::instant().duration_since(start);
        assert_eq!(at.as_nanos() % step.as_nanos(), 0, "{at:?}");
        assert!(at >= Duration::from_millis(98) && at <= Instant::now().duration_since(start), "{at:?}");
    }

    /// More ticks than a u32 counts (here 1ns ones over 10 s) still move the clock.
    #[test]
    fn the_clock_moves_past_u32_ticks() {
        use std::time::{Duration, Instant};
        let start = Instant::now() - Duration::from_secs(10);
        super::update_on(Some((start, Duration::from_nanos(1))));
        assert!(super::instant().duration_since(start) >= Duration::from_secs(10));
    }
}
