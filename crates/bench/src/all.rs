//! Every scenario in one command, each headline a ratio to the simulator's
//! ceiling measured at the start of the same run: on a shared, noisy machine
//! only ratios taken minutes apart compare.

use anyhow::Result;

pub struct Settings {
    pub installations: i64,
    pub users: i64,
}

/// One row of the final table.
struct Row {
    measure: String,
    value: String,
    ratio: Option<f64>,
    target: String,
    met: Option<bool>,
}

impl Row {
    fn of_ceiling(measure: String, per_second: f64, ceiling: f64, target: f64) -> Self {
        let ratio = per_second / ceiling;
        Self {
            measure,
            value: format!("{per_second:.0}/s"),
            ratio: Some(ratio),
            target: format!("≥ {target:.2}"),
            met: Some(ratio >= target),
        }
    }
}

pub async fn run(s: Settings) -> Result<()> {
    let ceiling = crate::ceiling::requests_per_second(&crate::ceiling::Settings {
        requests: 1_000_000,
        clients: 8,
        streams: 100,
    })
    .await?;
    let end_to_end = crate::transactional::run(crate::transactional::Settings {
        profile: "end-to-end",
        requests: 1_000,
        recipients: 100,
        concurrency: 16,
        copies: 1,
    })
    .await?;
    let campaign = crate::campaign(s.installations, 1).await?;
    let single = crate::transactional::run(crate::transactional::Settings {
        profile: "single-recipient",
        requests: 20_000,
        recipients: 1,
        concurrency: 64,
        copies: 1,
    })
    .await?;
    // On the embedded broker a large burst of events can outgrow what it
    // keeps; the rest of the table is still worth having.
    let triggers = match crate::triggers(s.users, 1).await {
        Ok(measured) => Some(measured),
        Err(e) => {
            eprintln!("the triggers scenario gave no figure: {e:#}");
            None
        }
    };
    let peers = crate::peers::run(crate::peers::Settings {
        notifications: 50_000,
        connections: 4,
        in_flight: 1000,
    })
    .await?;
    let dedupe = crate::sender::dedupe(100_000).await?;
    let isolation = crate::isolation::run(crate::isolation::Settings {
        installations: s.installations,
        pushes: 1_000,
        rate: 100,
    })
    .await?;

    let mut rows = vec![
        Row::of_ceiling(
            "end to end, 1,000 requests × 100 recipients (deliveries)".into(),
            end_to_end.deliveries_per_second,
            ceiling,
            0.50,
        ),
        Row::of_ceiling(
            format!("campaign to {} devices (deliveries)", s.installations),
            campaign.per_second,
            ceiling,
            0.45,
        ),
        Row::of_ceiling(
            format!(
                "single-recipient POST /v1/push, 20,000 requests (requests; p99 {:.0} ms)",
                single.p99_ms
            ),
            single.requests_per_second,
            ceiling,
            0.25,
        ),
    ];
    let triggers_measure = format!("trigger timers fired, {} users due together", s.users);
    rows.push(match &triggers {
        Some(t) => Row::of_ceiling(triggers_measure, t.per_second, ceiling, 0.30),
        None => Row {
            measure: triggers_measure,
            value: "no figure (see above)".into(),
            ratio: None,
            target: "≥ 0.30".into(),
            met: None,
        },
    });
    let speed = peers.sender.per_second / peers.node_apn_per_second;
    let cpu = (peers.sender.cpu_seconds * 1000.0 / peers.sender.jobs as f64)
        / peers.node_apn_cpu_per_1000.max(1e-9);
    rows.push(Row {
        measure: "Herald's sender ÷ @parse/node-apn: deliveries/s; CPU per notification".into(),
        value: format!("{:.0}/s", peers.sender.per_second),
        ratio: Some(speed),
        target: "≥ 1.5 at ≤ 0.5× CPU".into(),
        met: Some(speed >= 1.5 && cpu <= 0.5),
    });
    rows.push(Row {
        measure: format!("  (CPU per notification ratio {cpu:.2})"),
        value: String::new(),
        ratio: None,
        target: String::new(),
        met: None,
    });
    rows.push(Row {
        measure: "dedupe overhead, sender CPU / wall time".into(),
        value: format!("{:.0} % / {:.0} %", 100.0 * dedupe.cpu, 100.0 * dedupe.time),
        ratio: None,
        target: "≤ 10 % / ≤ 15 %".into(),
        met: Some(dedupe.cpu <= 0.10 && dedupe.time <= 0.15),
    });
    rows.push(Row {
        measure: format!(
            "transactional accepted → delivered p99 during a {}-device campaign ÷ alone ({:.0} ms ÷ {:.0} ms)",
            s.installations, isolation.busy.p99_ms, isolation.quiet.p99_ms
        ),
        value: format!("{:.0} ms", isolation.busy.p99_ms),
        ratio: Some(isolation.ratio()),
        target: "≤ 2".into(),
        met: Some(isolation.ratio() <= 2.0),
    });
    let sender_rss = [
        isolation.sender_peak_rss_mb,
        end_to_end.sender_peak_rss_mb,
        campaign.sender_peak_rss_mb,
        single.sender_peak_rss_mb,
        triggers.as_ref().map_or(0.0, |t| t.sender_peak_rss_mb),
        peers.sender.peak_rss_mb,
    ]
    .into_iter()
    .fold(0.0_f64, f64::max);
    rows.push(Row {
        measure: "sender peak RSS, highest of the scenarios".into(),
        value: format!("{sender_rss:.0} MB"),
        ratio: None,
        target: "≤ 100 MB".into(),
        met: Some(sender_rss <= 100.0),
    });
    let sim_per_million = campaign.sim_peak_rss_mb * 1_000_000.0 / s.installations as f64;
    rows.push(Row {
        measure: "simulator peak RSS per 1,000,000 deliveries (counting record)".into(),
        value: format!("{sim_per_million:.0} MB"),
        ratio: None,
        target: "≤ 300 MB".into(),
        met: Some(sim_per_million <= 300.0),
    });
    let duplicates = end_to_end.duplicates
        + campaign.duplicates
        + single.duplicates
        + triggers.as_ref().map_or(0, |t| t.duplicates)
        + peers.sender.duplicates
        + isolation.duplicates;
    let lost =
        end_to_end.lost + campaign.lost + single.lost + triggers.as_ref().map_or(0, |t| t.lost);
    rows.push(Row {
        measure: "duplicates / losses, every scenario".into(),
        value: format!("{duplicates} / {lost}"),
        ratio: None,
        target: "0 / 0".into(),
        met: Some(duplicates == 0 && lost == 0),
    });

    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!("\nAll scenarios against one ceiling: {ceiling:.0} requests/s (h2load → APNs simulator), {build} build\n");
    println!("| measure | value | ÷ ceiling (or peer) | target | met |");
    println!("|---|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            row.measure,
            row.value,
            row.ratio.map(|r| format!("{r:.3}")).unwrap_or_default(),
            row.target,
            match row.met {
                Some(true) => "yes",
                Some(false) => "no",
                None => "",
            }
        );
    }
    Ok(())
}
