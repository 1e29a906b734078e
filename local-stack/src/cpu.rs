//! CPU time of processes, from Linux's `/proc`: what the load run uses to say where the
//! machine's time went (the functions, the emulator, the local stack itself).

use std::time::Duration;

/// Clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`, 100 on every Linux architecture
/// Lambda runs).
const TICKS_PER_SECOND: u64 = 100;

/// User plus system CPU time a process has used so far; `None` if it is gone (or this is not
/// Linux).
///
/// ```
/// let me = local_stack::cpu::of_process(std::process::id());
/// assert!(cfg!(not(target_os = "linux")) || me.is_some());
/// ```
pub fn of_process(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// utime and stime are fields 14 and 15; the command name before them (field 2, in
/// parentheses) may hold spaces, so counting starts after its closing parenthesis.
fn parse_stat(stat: &str) -> Option<Duration> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis(
        (user + system) * 1000 / TICKS_PER_SECOND,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utime_and_stime_are_read_after_a_command_name_with_spaces() {
        let stat = "4242 (my (odd) proc) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 50 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_stat(stat), Some(Duration::from_secs(3)));
        assert_eq!(parse_stat("garbage"), None);
    }
}
