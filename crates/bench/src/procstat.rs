use herald_tests::HeraldProcess;

/// CPU time and peak memory of a process, from /proc (Linux).
pub struct ProcStat {
    pub cpu_seconds: f64,
    pub peak_rss_mb: f64,
}

impl ProcStat {
    pub fn of(p: &HeraldProcess) -> Self {
        let pid = p.child.id().unwrap_or(0);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name (which may hold spaces) start at ")".
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime and stime are fields 14 and 15 of stat; 12 and 13 after ")".
        let cpu_seconds = (ticks(11) + ticks(12)) / clock_ticks_per_second();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let peak_kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        Self {
            cpu_seconds,
            peak_rss_mb: peak_kb / 1024.0,
        }
    }
}

/// The per-process table: CPU seconds between `before` and `after`, per
/// 1,000 deliveries, and peak memory.
pub fn print_processes(
    procs: &[&HeraldProcess],
    before: &[ProcStat],
    after: &[ProcStat],
    deliveries: u64,
) {
    println!("\n| process | CPU s | CPU s per 1,000 deliveries | peak RSS MB |");
    println!("|---|---|---|---|");
    for ((p, b), a) in procs.iter().zip(before).zip(after) {
        let cpu = a.cpu_seconds - b.cpu_seconds;
        println!(
            "| {} | {:.1} | {:.3} | {:.0} |",
            p.name,
            cpu,
            cpu * 1000.0 / deliveries.max(1) as f64,
            a.peak_rss_mb
        );
    }
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
