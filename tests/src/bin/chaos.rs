//! `./scripts/chaos [--minutes N] [--seed S] [--kafka real|mock]`: see
//! `herald_tests::chaos`. Real Apache Kafka by default; `mock`: librdkafka's
//! mock clusters (no JVM, but its consumer groups can abort the run).
//! Prints every fault as it lands and one last line with the verdict; exits
//! non-zero if anything accepted was lost or sent twice beyond the policy.

use herald_tests::clusters::KafkaKind;

fn main() {
    let mut minutes = 3.0;
    let mut seed: Option<u64> = None;
    let mut kafka = KafkaKind::Real;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        match (arg.as_str(), value) {
            ("--minutes", Some(v)) => minutes = v.parse().unwrap_or_else(|_| usage(&v)),
            ("--seed", Some(v)) => seed = Some(v.parse().unwrap_or_else(|_| usage(&v))),
            ("--kafka", Some(v)) => {
                kafka = match v.as_str() {
                    "real" => KafkaKind::Real,
                    "mock" => KafkaKind::Mock,
                    _ => usage(&v),
                }
            }
            (other, _) => usage(other),
        }
    }
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
            eprintln!("chaos: cannot start the runtime: {e}");
            std::process::exit(2)
        });
    let summary = runtime.block_on(herald_tests::chaos::run(minutes, seed, kafka));
    for d in &summary.doubled {
        let cause = d.cause.as_deref().unwrap_or("no fault explains it");
        let policy = if d.at_most_once {
            "at_most_once"
        } else {
            "at_least_once"
        };
        let verdict = if d.allowed { "allowed" } else { "NOT ALLOWED" };
        let at: Vec<String> =
            d.at.iter()
                .map(|t| t.format("%H:%M:%S%.3f").to_string())
                .collect();
        println!(
            "chaos: sent {} times: {} {} at {} ({cause}; {policy}: {verdict})",
            d.copies,
            d.message,
            d.token,
            at.join(", ")
        );
    }
    for (message, token, cause) in &summary.unknowns {
        let cause = cause.as_deref().unwrap_or("no fault explains it");
        println!("chaos: unknown: {message} {token} ({cause})");
    }
    for (message, token) in summary.missing.iter().take(20) {
        println!("chaos: lost: {message} {token}");
    }
    for (message, token) in summary.unowed.iter().take(20) {
        println!("chaos: sent though nobody was owed it: {message} {token}");
    }
    println!("{}", summary.line());
    if !summary.passed() {
        std::process::exit(1);
    }
}

fn usage(bad: &str) -> ! {
    eprintln!(
        "chaos: unexpected `{bad}`\nusage: chaos [--minutes N] [--seed S] [--kafka real|mock]"
    );
    std::process::exit(2)
}
