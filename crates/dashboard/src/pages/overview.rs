//! An app at a glance: deliveries per hour, outcomes, backlog, recent failures.

use crate::api::Api;
use crate::pages::n;
use crate::pages::{bars, count, problem_notice};
use crate::session::AppPage;
use crate::DashboardState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use serde_json::Value;

const STATUSES: [&str; 5] = ["delivered", "rejected", "unknown", "expired", "failed"];

/// Deliveries per hour as stacked columns: delivered, and everything else.
fn hourly_chart(hours: &[Value]) -> Markup {
    let totals: Vec<(String, i64, i64)> = hours
        .iter()
        .map(|h| {
            let counts = &h["counts"];
            let delivered = n(&counts["delivered"]);
            let other: i64 = STATUSES[1..].iter().map(|s| n(&counts[*s])).sum();
            let hour = h["hour"].as_str().unwrap_or("");
            (hour.get(11..16).unwrap_or("").to_string(), delivered, other)
        })
        .collect();
    let max = totals
        .iter()
        .map(|(_, d, o)| d + o)
        .max()
        .unwrap_or(0)
        .max(1);
    let width = (totals.len().max(1) * 10) as i64;
    html! {
        svg class="chart" viewBox={ "0 0 " (width) " 110" } preserveAspectRatio="none" role="img"
            aria-label="Deliveries per hour, last 24 hours" {
            @for (i, (label, delivered, other)) in totals.iter().enumerate() {
                @let x = i as i64 * 10 + 1;
                @let hd = delivered * 90 / max;
                @let ho = other * 90 / max;
                rect class="delivered" x=(x) y=(100 - hd) width="8" height=(hd) {
                    title { (label) " UTC: " (count(*delivered)) " delivered, " (count(*other)) " not" }
                }
                rect class="other" x=(x) y=(100 - hd - ho) width="8" height=(ho) {}
                @if i % 6 == 0 { text x=(x) y="109" { (label) } }
            }
        }
    }
}

pub async fn page(State(state): State<DashboardState>, page: AppPage) -> Response {
    let api = Api::new(&state, page.acting());
    let stats = api.get("/v1/stats?hours=24").await;
    let lag = (state.lag)().await;
    let body = html! {
        @match &stats {
            Err(p) => (problem_notice(p)),
            Ok(stats) => {
                @let totals = &stats["totals"];
                @let settled: i64 = STATUSES.iter().map(|s| n(&totals[*s])).sum();
                div class="grid" {
                    section class="card" aria-labelledby="h-hourly" {
                        h2 id="h-hourly" { "Deliveries per hour" }
                        (hourly_chart(stats["hours"].as_array().map(Vec::as_slice).unwrap_or(&[])))
                        p class="hint" { (count(settled)) " settled in the last 24 hours; "
                            span id="pending" { (count(n(&stats["pending"]))) } " pending now" }
                    }
                    section class="card" aria-labelledby="h-outcomes" {
                        h2 id="h-outcomes" { "Outcomes, last 24 hours" }
                        (bars(&STATUSES.iter().map(|s| (s.to_string(), n(&totals[*s]))).collect::<Vec<_>>(), "Outcomes"))
                    }
                    section class="card" aria-labelledby="h-lag" {
                        h2 id="h-lag" { "Consumer lag" }
                        table id="lag" {
                            thead { tr { th { "Cluster" } th { "Group" } th { "Topic" } th class="num" { "Behind" } } }
                            tbody {
                                @for l in &lag {
                                    tr {
                                        td { (l.cluster) } td class="mono" { (l.group) } td class="mono" { (l.topic) }
                                        td class="num" { @match l.lag { Some(v) => (count(v)), None => "unreachable" } }
                                    }
                                }
                            }
                        }
                    }
                }
                section aria-labelledby="h-failures" {
                    h2 id="h-failures" { "Recent failures" }
                    @let failures = stats["recent_failures"].as_array().cloned().unwrap_or_default();
                    @if failures.is_empty() {
                        p { "None in the last 24 hours." }
                    } @else {
                        table id="failures" {
                            thead { tr { th { "Settled" } th { "Status" } th { "Reason" } th { "Platform" } th { "Install id" } th { "Message" } } }
                            tbody {
                                @for f in &failures {
                                    @let status = f["status"].as_str().unwrap_or("");
                                    @let message = f["message_id"].as_str().unwrap_or("");
                                    tr {
                                        td { (f["settled_at"].as_str().unwrap_or("")) }
                                        td { span class={ "status " (status) } { (status) } }
                                        td { (f["reason"].as_str().unwrap_or("")) }
                                        td { (f["platform"].as_str().unwrap_or("")) }
                                        td class="mono" { (f["install_id"].as_str().unwrap_or("")) }
                                        td { a class="mono" href=(page.href(&format!("/messages?id={message}"))) { (message) } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page.page("Overview", "overview")
        .render(body)
        .into_response()
}
