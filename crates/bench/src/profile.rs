//! A CPU flame graph of the whole machine while a scenario's clock runs.
//!
//! `perf record -a` samples every process (Herald's roles, the simulator,
//! PostgreSQL, Redis, the broker, the load generator), because on a shared
//! box what limits a scenario is often not Herald's own process. Stacks are
//! unwound from DWARF call-frame information, so release builds need no frame
//! pointers. Each scenario leaves `target/bench/<scenario>.svg` (and the
//! folded stacks beside it) and prints its hottest frames.
//!
//! `HERALD_BENCH_PROFILE=off` turns it off; where `perf` is missing or not
//! permitted, the scenario runs without it and says so.

use herald_tests::HeraldProcess;
use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use tokio::process::{Child, Command};

/// Samples per second per CPU: enough for a stable picture over a scenario of
/// tens of seconds, little enough that perf's own cost stays in the noise.
const FREQUENCY: &str = "99";
/// Bytes of each sampled thread's stack copied for unwinding: async Rust
/// stacks under tokio are deep.
const STACK_BYTES: &str = "16384";

pub struct Profile {
    name: String,
    data: PathBuf,
    perf: Option<Child>,
}

impl Profile {
    /// Starts sampling the whole machine for the scenario `name`.
    pub fn start(name: &str) -> Self {
        let dir = PathBuf::from("target/bench");
        let data = dir.join(format!("{name}.perf.data"));
        let off = std::env::var("HERALD_BENCH_PROFILE").is_ok_and(|v| v == "off" || v == "0");
        let perf = if off {
            None
        } else {
            let _ = std::fs::create_dir_all(&dir);
            // perf would keep an earlier file as .old.
            let _ = std::fs::remove_file(&data);
            let spawned = Command::new("perf")
                .args(["record", "-e", "cpu-clock", "-F", FREQUENCY, "-a"])
                .args(["--call-graph", &format!("dwarf,{STACK_BYTES}")])
                .arg("-o")
                .arg(&data)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn();
            match spawned {
                Ok(child) => Some(child),
                Err(e) => {
                    eprintln!("no flame graph for {name}: perf did not start ({e})");
                    None
                }
            }
        };
        Self {
            name: name.to_string(),
            data,
            perf,
        }
    }

    /// Stops sampling, writes the flame graph and prints the hottest frames.
    /// `roles` names the processes of the scenario; samples of other processes
    /// keep the name of the thread that ran (postgres, redis-server, h2load).
    pub async fn finish(mut self, roles: &[&HeraldProcess]) {
        let Some(mut perf) = self.perf.take() else {
            return;
        };
        // SIGINT, so perf writes a complete file.
        let Some(pid) = perf.id() else { return };
        let _ = Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .await;
        // perf writes its file, then raises the SIGINT again: ending by it
        // is a clean end.
        match perf.wait().await {
            Ok(status) if status.success() || status.signal() == Some(2) => {}
            other => {
                eprintln!(
                    "no flame graph for {}: perf ended with {other:?}",
                    self.name
                );
                return;
            }
        }
        let mut names: HashMap<u32, String> = roles
            .iter()
            .filter_map(|p| Some((p.child.id()?, p.name.clone())))
            .collect();
        names.insert(std::process::id(), "herald-bench (load)".into());
        if let Err(e) = self.render(&names).await {
            eprintln!("no flame graph for {}: {e}", self.name);
        }
    }

    async fn render(&self, names: &HashMap<u32, String>) -> Result<(), String> {
        let script = Command::new("perf")
            // Without --no-inline perf asks addr2line for every frame, a
            // hundred times slower.
            .args([
                "script",
                "--no-inline",
                "-F",
                "comm,pid,tid,time,event,ip,sym,dso",
            ])
            .arg("-i")
            .arg(&self.data)
            .stderr(Stdio::null())
            .output()
            .await
            .map_err(|e| format!("perf script did not run: {e}"))?;
        let mut options = inferno::collapse::perf::Options::default();
        options.include_pid = true;
        let mut folded = Vec::new();
        inferno::collapse::Collapse::collapse(
            &mut inferno::collapse::perf::Folder::from(options),
            &script.stdout[..],
            &mut folded,
        )
        .map_err(|e| format!("folding the stacks failed: {e}"))?;
        let folded = String::from_utf8_lossy(&folded);
        let idle: u64 = folded
            .lines()
            .filter(|line| line.starts_with("swapper-"))
            .filter_map(|line| line.rsplit_once(' ')?.1.parse::<u64>().ok())
            .sum();
        let lines: Vec<String> = folded
            .lines()
            .filter_map(|line| name_root(line, names))
            .collect();
        let stacks = self.data.with_extension("folded");
        std::fs::write(&stacks, lines.join("\n")).map_err(|e| e.to_string())?;
        let svg = self.data.with_extension("svg");
        let file = std::fs::File::create(&svg).map_err(|e| e.to_string())?;
        let mut options = inferno::flamegraph::Options::default();
        options.title = format!("herald-bench {}: the whole machine", self.name);
        options.count_name = "samples".into();
        inferno::flamegraph::from_lines(
            &mut options,
            lines.iter().map(String::as_str),
            std::io::BufWriter::new(file),
        )
        .map_err(|e| format!("writing the flame graph failed: {e}"))?;
        let _ = std::fs::remove_file(&self.data);
        print_hottest(&self.name, &lines, idle, &svg);
        Ok(())
    }
}

/// `comm-pid;frame;...;frame count` → `role;frame;...;frame count`, with
/// Rust's symbol hashes dropped. Samples of an idle CPU are left out.
fn name_root(line: &str, names: &HashMap<u32, String>) -> Option<String> {
    let (root, rest) = line.split_once(';').unwrap_or(("", line));
    let (comm, pid) = root.rsplit_once('-').unwrap_or((root, ""));
    if comm == "swapper" {
        return None;
    }
    let root = pid
        .parse::<u32>()
        .ok()
        .and_then(|pid| names.get(&pid).cloned())
        .unwrap_or_else(|| comm.to_string());
    Some(format!("{root};{}", strip_hashes(rest)))
}

/// `herald_sender::send::h0123456789abcdef` → `herald_sender::send`.
fn strip_hashes(frames: &str) -> String {
    let mut out = String::with_capacity(frames.len());
    let mut rest = frames;
    while let Some(at) = rest.find("::h") {
        let hash = &rest[at + 3..];
        let is_hash = hash.len() >= 16 && hash.as_bytes()[..16].iter().all(u8::is_ascii_hexdigit);
        if is_hash {
            out.push_str(&rest[..at]);
            rest = &hash[16..];
        } else {
            out.push_str(&rest[..at + 3]);
            rest = hash;
        }
    }
    out.push_str(rest);
    out
}

/// How busy the machine was, the share of its busy samples per process, then
/// the frames where the most samples ended (self time), each as a share of
/// the busy samples.
fn print_hottest(name: &str, lines: &[String], idle: u64, svg: &std::path::Path) {
    let mut total = 0u64;
    let mut by_root: HashMap<&str, u64> = HashMap::new();
    let mut by_leaf: HashMap<(&str, &str), u64> = HashMap::new();
    for line in lines {
        let Some((stack, count)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(count) = count.parse::<u64>() else {
            continue;
        };
        let root = stack.split(';').next().unwrap_or("");
        let leaf = stack.rsplit(';').next().unwrap_or("");
        total += count;
        *by_root.entry(root).or_default() += count;
        *by_leaf.entry((root, leaf)).or_default() += count;
    }
    if total == 0 {
        return;
    }
    let share = |n: u64| 100.0 * n as f64 / total as f64;
    let mut roots: Vec<_> = by_root.into_iter().collect();
    roots.sort_by_key(|r| std::cmp::Reverse(r.1));
    let mut leaves: Vec<_> = by_leaf.into_iter().collect();
    leaves.sort_by_key(|l| std::cmp::Reverse(l.1));
    println!(
        "\nWhere the CPU went during {name}: busy {:.0} % of the time, {total} busy samples; flame graph {}\n",
        100.0 * total as f64 / (total + idle) as f64,
        svg.display()
    );
    println!("| process | share of busy samples |");
    println!("|---|---|");
    for (root, n) in roots.iter().take(8) {
        println!("| {root} | {:.1} % |", share(*n));
    }
    println!("\n| hottest frames (self) | process | share |");
    println!("|---|---|---|");
    for ((root, leaf), n) in leaves.iter().take(15) {
        println!("| `{leaf}` | {root} | {:.1} % |", share(*n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_are_named_by_role_and_hashes_dropped() {
        let names = HashMap::from([(42, "sender".to_string())]);
        let line = "tokio-runtime-w-42;main;herald_sender::send::h0123456789abcdef;memcpy 7";
        assert_eq!(
            name_root(line, &names).as_deref(),
            Some("sender;main;herald_sender::send;memcpy 7")
        );
        assert_eq!(
            name_root("postgres-7;main 3", &names).as_deref(),
            Some("postgres;main 3")
        );
        assert_eq!(name_root("swapper-0;idle 9", &names), None);
        assert_eq!(strip_hashes("a::hello::b"), "a::hello::b");
    }
}
