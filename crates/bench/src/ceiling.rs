//! The ceiling: the APNs simulator driven by a bare HTTP/2 load generator
//! (h2load, Debian's nghttp2-client) — the most this machine pushes through
//! that endpoint — then Herald's end-to-end rate against the same simulator,
//! as a fraction of it.

use anyhow::{bail, Context, Result};
use herald_tests::ios_token;
use serde_json::{json, Value};
use std::process::Command;

pub struct Settings {
    pub requests: usize,
    pub clients: usize,
    pub streams: usize,
}

/// What h2load reported.
struct H2load {
    seconds: f64,
    per_second: f64,
    succeeded: u64,
    status_2xx: u64,
}

fn parse(output: &str) -> Result<H2load> {
    let number_after = |line: &str, prefix: &str| -> Option<f64> {
        line.split(prefix)
            .nth(1)?
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .next()?
            .parse()
            .ok()
    };
    let finished = output
        .lines()
        .find(|l| l.starts_with("finished in"))
        .context("no `finished in` line")?;
    let seconds = number_after(finished, "finished in ").context("duration")?;
    let per_second = number_after(finished, "s, ").context("req/s")?;
    let requests = output
        .lines()
        .find(|l| l.starts_with("requests:"))
        .context("no `requests:` line")?;
    let succeeded = requests
        .split(", ")
        .find(|p| p.ends_with("succeeded"))
        .and_then(|p| p.split_whitespace().next()?.parse().ok())
        .context("succeeded")?;
    let codes = output
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .context("no status line")?;
    let status_2xx = number_after(codes, "status codes: ").context("2xx")? as u64;
    Ok(H2load {
        seconds,
        per_second,
        succeeded,
        status_2xx,
    })
}

/// An APNs provider token for the simulator's key (ES256, `kid` and `iss`).
fn provider_token(apns: &Value) -> Result<String> {
    let pem = apns["private_key_pem"]
        .as_str()
        .context("private_key_pem")?;
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes())?;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = apns["key_id"].as_str().map(str::to_string);
    let claims = json!({"iss": apns["team_id"], "iat": chrono::Utc::now().timestamp()});
    Ok(jsonwebtoken::encode(&header, &claims, &key)?)
}

pub async fn run(s: Settings) -> Result<()> {
    let ceiling = requests_per_second(&s).await?;
    // Herald against the same simulator, in the same run: 1,000 requests of
    // 100 recipients, its best case for deliveries per second.
    let herald = crate::transactional::run(crate::transactional::Settings {
        profile: "ceiling-herald",
        requests: 1_000,
        recipients: 100,
        concurrency: 16,
        copies: 1,
    })
    .await?;
    println!("\n| Herald end to end vs the ceiling | value |");
    println!("|---|---|");
    println!(
        "| Herald deliveries per second | {:.0} |",
        herald.deliveries_per_second
    );
    println!("| ceiling requests per second | {ceiling:.0} |");
    println!(
        "| Herald / ceiling | {:.1} % |",
        100.0 * herald.deliveries_per_second / ceiling
    );
    Ok(())
}

/// h2load straight at the APNs simulator: the most requests per second the
/// simulator takes on this machine now (printed, and returned).
pub async fn requests_per_second(s: &Settings) -> Result<f64> {
    if Command::new("h2load").arg("--version").output().is_err() {
        bail!("h2load is missing: apt install nghttp2-client (./scripts/bench installs it)");
    }
    // The simulator as the campaign and triggers scenarios run it.
    let env = crate::start_env(
        "benchceiling",
        &[("HERALD_LOG", "warn"), ("HERALD_SIM__RECORD", "counts")],
    )
    .await;
    let credentials = env.sim_credentials().await;
    let apns = &credentials["apns"];
    let token = provider_token(apns)?;
    let body = env.log_dir.join("payload.json");
    std::fs::write(
        &body,
        json!({"aps": {"alert": {"title": "ceiling", "body": "h2load"}}}).to_string(),
    )?;
    let url = format!("{}/3/device/{}", env.sim_url(), ios_token(1));
    let profile = crate::profile::Profile::start("ceiling");
    let output = Command::new("h2load")
        .args([
            "-n",
            &s.requests.to_string(),
            "-c",
            &s.clients.to_string(),
            "-m",
            &s.streams.to_string(),
        ])
        .arg("-d")
        .arg(&body)
        .args(["-H", &format!("authorization: bearer {token}")])
        .args([
            "-H",
            &format!("apns-topic: {}", apns["topic"].as_str().unwrap_or_default()),
        ])
        .args([
            "-H",
            "apns-push-type: alert",
            "-H",
            "content-type: application/json",
        ])
        .arg(&url)
        .output()
        .context("running h2load")?;
    profile.finish(&env.sim.iter().collect::<Vec<_>>()).await;
    let text = String::from_utf8_lossy(&output.stdout);
    let h2 = parse(&text).with_context(|| format!("reading h2load's report:\n{text}"))?;
    let accepted = env.sim_stats().await["accepted"].as_u64().unwrap_or(0);
    if h2.status_2xx != s.requests as u64 || accepted != s.requests as u64 {
        bail!(
            "the simulator did not accept every request ({} 2xx, {accepted} recorded):\n{text}",
            h2.status_2xx
        );
    }
    env.finish().await;

    println!(
        "\nCeiling: h2load → APNs simulator, {} requests, {} connections × {} streams\n",
        s.requests, s.clients, s.streams
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!("| requests accepted by the simulator | {} |", h2.succeeded);
    println!("| time | {:.2} s |", h2.seconds);
    println!(
        "| requests per second (the ceiling) | {:.0} |",
        h2.per_second
    );
    Ok(h2.per_second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_h2loads_report() {
        let report = "finished in 3.52s, 28409.23 req/s, 4.32MB/s\n\
                      requests: 100000 total, 100000 started, 100000 done, 99998 succeeded, 2 failed, 0 errored, 0 timeout\n\
                      status codes: 99998 2xx, 0 3xx, 2 4xx, 0 5xx\n";
        let h = parse(report).unwrap();
        assert_eq!((h.succeeded, h.status_2xx), (99998, 99998));
        assert!((h.seconds - 3.52).abs() < 1e-9 && (h.per_second - 28409.23).abs() < 1e-6);
    }
}
