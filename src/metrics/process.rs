//! The process's own resident memory and CPU time, read from `/proc/self` on Linux (no
//! process collector is maintained for prometheus-client; the two files are small and plain).
//! Elsewhere, or if the files cannot be read, the figures are left out rather than made up.

use serde::{Deserialize, Serialize};

/// What the kernel says of this process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub rss_bytes: Option<u64>,
    /// User and system CPU time, in milliseconds.
    pub cpu_ms: Option<u64>,
    pub threads: Option<u64>,
}

impl Process {
    pub fn read() -> Self {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let statm = std::fs::read_to_string("/proc/self/statm").ok();
        let (cpu_ms, threads) = stat.as_deref().and_then(parse_stat).unzip();
        Process {
            rss_bytes: statm
                .as_deref()
                .and_then(parse_statm_rss)
                .map(|pages| pages * page_size()),
            cpu_ms,
            threads,
        }
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

fn ticks_per_second() -> u64 {
    // SAFETY: as above.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// The resident pages: `/proc/self/statm`'s second field.
fn parse_statm_rss(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// CPU milliseconds (utime + stime) and threads from `/proc/self/stat`. The command name
/// (field 2) is in parentheses and may hold spaces, so fields are counted after its last `)`.
fn parse_stat(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3, so field N is at index N - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    let threads: u64 = fields.get(20 - 3)?.parse().ok()?;
    Some(((utime + stime) * 1000 / ticks_per_second(), threads))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name_even_with_spaces_in_it() {
        let stat = "4242 (kv node) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 7 0 1234 100000 500";
        let (cpu_ms, threads) = parse_stat(stat).unwrap();
        assert_eq!(cpu_ms, 300 * 1000 / ticks_per_second());
        assert_eq!(threads, 7);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn statm_gives_the_resident_pages() {
        assert_eq!(parse_statm_rss("5000 1200 300 10 0 900 0"), Some(1200));
        assert_eq!(parse_statm_rss(""), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_memory_and_threads() {
        let p = Process::read();
        assert!(p.rss_bytes.unwrap() > 0);
        assert!(p.threads.unwrap() >= 1);
    }
}
