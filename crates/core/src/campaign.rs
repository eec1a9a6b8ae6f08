//! Campaigns: what a marketer composes, its life cycle, and when each wave is
//! due. The scheduler role does the I/O; the rules live here.

use crate::audience::Audience;
use crate::job::DeliveryPolicy;
use crate::payload::Notification;
use crate::push::FieldError;
use chrono::{DateTime, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use std::str::FromStr;
use uuid::Uuid;

/// The highest per-campaign or per-app send rate one can ask for.
pub const MAX_RATE_PER_SECOND: u32 = 1_000_000;

/// `POST /v1/campaigns` and `PUT /v1/campaigns/{id}`: the whole campaign.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CampaignInput {
    #[schema(pattern = r"\S", max_length = 200)]
    pub name: String,
    /// The message; `localizations` holds the per-language versions, the
    /// top-level title and body are the fallback, `ios` and `android` the
    /// per-platform overrides.
    pub notification: Notification,
    #[serde(default = "Audience::all")]
    pub audience: Audience,
    #[serde(default)]
    pub schedule: Schedule,
    /// Deliveries per second for this campaign; absent: as fast as the app's
    /// limit allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000000)]
    pub rate_limit_per_second: Option<u32>,
    /// Never delivered after this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// What an unknown outcome means; campaigns default to `at_most_once`.
    #[serde(default = "at_most_once")]
    pub delivery_policy: DeliveryPolicy,
}

fn at_most_once() -> DeliveryPolicy {
    DeliveryPolicy::AtMostOnce
}

/// When a launched campaign is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// As soon as it is launched.
    #[default]
    Now,
    /// At one UTC instant.
    At { at: DateTime<Utc> },
    /// At the same wall-clock time in each installation's own time zone, e.g.
    /// `2026-12-01T09:00:00`. Installations without a time zone use
    /// `fallback_time_zone` (default UTC). A zone where that time has already
    /// passed at launch is sent at once.
    Local {
        #[schema(value_type = String, example = "2026-12-01T09:00:00")]
        local_time: NaiveDateTime,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fallback_time_zone: Option<String>,
    },
}

impl CampaignInput {
    pub fn validate(&self) -> Result<(), FieldError> {
        let name = self.name.trim();
        if name.is_empty() || self.name.chars().count() > 200 {
            return Err(FieldError::new("name", "1 to 200 characters"));
        }
        self.notification
            .validate()
            .map_err(|e| FieldError::new(e.field(), e.to_string()))?;
        self.audience
            .validate()
            .map_err(|(field, detail)| FieldError::new(field, detail))?;
        if let Schedule::Local {
            fallback_time_zone: Some(tz),
            ..
        } = &self.schedule
        {
            crate::installation::validate_time_zone(tz)
                .map_err(|d| FieldError::new("schedule.fallback_time_zone", d))?;
        }
        if self.expires_at.is_some_and(|at| at <= chrono::Utc::now()) {
            return Err(FieldError::new(
                "expires_at",
                "already past: nothing could be delivered",
            ));
        }
        if let Some(r) = self.rate_limit_per_second {
            if r == 0 || r > MAX_RATE_PER_SECOND {
                return Err(FieldError::new(
                    "rate_limit_per_second",
                    format!("1 to {MAX_RATE_PER_SECOND}, or absent for no campaign limit"),
                ));
            }
        }
        Ok(())
    }
}

/// A campaign's place in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CampaignStatus {
    /// Being composed; can be edited.
    Draft,
    /// Launched, its first wave not due yet; can still be edited.
    Scheduled,
    /// Being sent.
    Running,
    /// Held by an operator; `resume` goes on.
    Paused,
    /// Every job was handed to Kafka (some may still be queued for sending).
    Completed,
    /// Stopped for good: queued jobs are dropped by senders.
    Cancelled,
}

impl CampaignStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            CampaignStatus::Draft => "draft",
            CampaignStatus::Scheduled => "scheduled",
            CampaignStatus::Running => "running",
            CampaignStatus::Paused => "paused",
            CampaignStatus::Completed => "completed",
            CampaignStatus::Cancelled => "cancelled",
        }
    }

    /// Senders drop a campaign's jobs while it is in these states.
    pub fn holds_jobs(&self) -> bool {
        matches!(self, CampaignStatus::Paused | CampaignStatus::Cancelled)
    }
}

impl FromStr for CampaignStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "draft" => CampaignStatus::Draft,
            "scheduled" => CampaignStatus::Scheduled,
            "running" => CampaignStatus::Running,
            "paused" => CampaignStatus::Paused,
            "completed" => CampaignStatus::Completed,
            "cancelled" => CampaignStatus::Cancelled,
            other => return Err(format!("unknown campaign status `{other}`")),
        })
    }
}

/// What an operator asks of a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CampaignAction {
    Update,
    Launch,
    Pause,
    Resume,
    Cancel,
    Delete,
    UploadIds,
}

impl CampaignAction {
    pub fn as_str(&self) -> &'static str {
        match self {
            CampaignAction::Update => "update",
            CampaignAction::Launch => "launch",
            CampaignAction::Pause => "pause",
            CampaignAction::Resume => "resume",
            CampaignAction::Cancel => "cancel",
            CampaignAction::Delete => "delete",
            CampaignAction::UploadIds => "upload ids to",
        }
    }
}

/// What an allowed action does to the campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub to: CampaignStatus,
    /// A new generation: the scheduler starts every wave again from the top
    /// (dedupe drops what was sent), and senders can tell old jobs from new.
    pub new_generation: bool,
}

/// The life cycle. Launching again a completed or cancelled campaign, and
/// resuming a paused one, start a new generation: the audience is walked again
/// from the start, which re-sends only what never reached its device (jobs
/// dropped while paused, or lost with a broker).
pub fn transition(from: CampaignStatus, action: CampaignAction) -> Option<Transition> {
    use CampaignAction as A;
    use CampaignStatus as S;
    let keep = |to| {
        Some(Transition {
            to,
            new_generation: false,
        })
    };
    let fresh = |to| {
        Some(Transition {
            to,
            new_generation: true,
        })
    };
    match (action, from) {
        (A::Update | A::UploadIds, S::Draft | S::Scheduled) => keep(from),
        (A::Launch, S::Draft | S::Completed | S::Cancelled) => fresh(S::Scheduled),
        (A::Pause, S::Scheduled | S::Running) => keep(S::Paused),
        (A::Resume, S::Paused) => fresh(S::Scheduled),
        // A completed campaign may still have jobs queued: cancelling drops them.
        (A::Cancel, S::Draft | S::Scheduled | S::Running | S::Paused | S::Completed) => {
            keep(S::Cancelled)
        }
        (A::Delete, S::Draft | S::Completed | S::Cancelled) => keep(from),
        _ => None,
    }
}

/// Jobs of a campaign carry this, so that senders can drop those of a paused
/// or cancelled campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignRef {
    pub id: Uuid,
    pub generation: i64,
}

/// One slice of a launched campaign with its own due time: the whole audience,
/// or the installations of one time zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WavePlan {
    pub zone: WaveZone,
    pub due_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WaveZone {
    /// Every installation.
    All,
    /// Installations in this IANA zone.
    Zone(String),
    /// Installations without a (known) time zone.
    Unset,
}

impl WaveZone {
    /// How the store keys it.
    pub fn key(&self) -> &str {
        match self {
            WaveZone::All => "*",
            WaveZone::Unset => "",
            WaveZone::Zone(z) => z,
        }
    }

    pub fn from_key(key: &str) -> Self {
        match key {
            "*" => WaveZone::All,
            "" => WaveZone::Unset,
            z => WaveZone::Zone(z.to_string()),
        }
    }
}

/// The waves of a launch at `launched_at`, given the time zones the app's
/// installations use.
pub fn plan_waves(
    schedule: &Schedule,
    launched_at: DateTime<Utc>,
    zones_in_use: &[String],
) -> Vec<WavePlan> {
    match schedule {
        Schedule::Now => vec![WavePlan {
            zone: WaveZone::All,
            due_at: launched_at,
        }],
        Schedule::At { at } => vec![WavePlan {
            zone: WaveZone::All,
            due_at: *at,
        }],
        Schedule::Local {
            local_time,
            fallback_time_zone,
        } => {
            let fallback = fallback_time_zone
                .as_deref()
                .and_then(|z| Tz::from_str(z).ok())
                .unwrap_or(Tz::UTC);
            let mut waves: Vec<WavePlan> = zones_in_use
                .iter()
                .filter_map(|z| {
                    let tz = Tz::from_str(z).ok()?;
                    Some(WavePlan {
                        zone: WaveZone::Zone(z.clone()),
                        due_at: local_due_at(*local_time, tz),
                    })
                })
                .collect();
            waves.push(WavePlan {
                zone: WaveZone::Unset,
                due_at: local_due_at(*local_time, fallback),
            });
            waves.sort_by(|a, b| {
                a.due_at
                    .cmp(&b.due_at)
                    .then_with(|| a.zone.key().cmp(b.zone.key()))
            });
            waves
        }
    }
}

/// The instant a wall-clock time happens in `tz`. A time skipped by a DST jump
/// is sent when the clock jumps; a repeated one at its first occurrence.
pub fn local_due_at(local: NaiveDateTime, tz: Tz) -> DateTime<Utc> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
        LocalResult::None => {
            // In the gap: the first valid minute after it.
            let mut probe = local;
            for _ in 0..(4 * 60) {
                probe += chrono::Duration::minutes(1);
                if let Some(t) = tz.from_local_datetime(&probe).earliest() {
                    return t.with_timezone(&Utc);
                }
            }
            Utc.from_utc_datetime(&local)
        }
    }
}

/// Splits a per-second budget into steady slices: a limit of 1,000/s goes out
/// as 100 every 100 ms rather than 1,000 at the top of each second.
pub fn rate_slice(per_second: u32) -> u32 {
    (per_second / 10).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn at(h: u32, m: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(2026, 12, 1)
            .and_then(|d| d.and_hms_opt(h, m, 0))
            .unwrap()
    }

    #[test]
    fn local_time_in_each_zone() {
        let nine = at(9, 0);
        let paris = local_due_at(nine, chrono_tz::Europe::Paris);
        let tokyo = local_due_at(nine, chrono_tz::Asia::Tokyo);
        let ny = local_due_at(nine, chrono_tz::America::New_York);
        assert_eq!(paris.to_rfc3339(), "2026-12-01T08:00:00+00:00");
        assert_eq!(tokyo.to_rfc3339(), "2026-12-01T00:00:00+00:00");
        assert_eq!(ny.to_rfc3339(), "2026-12-01T14:00:00+00:00");
    }

    #[test]
    fn dst_gap_and_overlap() {
        // Paris skips 02:00-03:00 on 2026-03-29 and repeats 02:00-03:00 on 2026-10-25.
        let gap = NaiveDate::from_ymd_opt(2026, 3, 29)
            .and_then(|d| d.and_hms_opt(2, 30, 0))
            .unwrap();
        assert_eq!(
            local_due_at(gap, chrono_tz::Europe::Paris).to_rfc3339(),
            "2026-03-29T01:00:00+00:00"
        );
        let overlap = NaiveDate::from_ymd_opt(2026, 10, 25)
            .and_then(|d| d.and_hms_opt(2, 30, 0))
            .unwrap();
        assert_eq!(
            local_due_at(overlap, chrono_tz::Europe::Paris).to_rfc3339(),
            "2026-10-25T00:30:00+00:00"
        );
    }

    #[test]
    fn local_schedule_has_a_wave_per_zone_in_due_order() {
        let s = Schedule::Local {
            local_time: at(9, 0),
            fallback_time_zone: Some("Europe/Paris".into()),
        };
        let zones = vec![
            "America/New_York".to_string(),
            "Asia/Tokyo".to_string(),
            "Not/AZone".to_string(),
        ];
        let waves = plan_waves(&s, Utc::now(), &zones);
        let keys: Vec<&str> = waves.iter().map(|w| w.zone.key()).collect();
        assert_eq!(keys, vec!["Asia/Tokyo", "", "America/New_York"]);
        assert_eq!(waves[1].due_at.to_rfc3339(), "2026-12-01T08:00:00+00:00");
    }

    #[test]
    fn now_and_at_are_one_wave() {
        let t = Utc::now();
        assert_eq!(
            plan_waves(&Schedule::Now, t, &[]),
            vec![WavePlan {
                zone: WaveZone::All,
                due_at: t
            }]
        );
        let later = t + chrono::Duration::hours(3);
        assert_eq!(
            plan_waves(&Schedule::At { at: later }, t, &["Asia/Tokyo".into()])[0].due_at,
            later
        );
    }

    #[test]
    fn life_cycle() {
        use CampaignAction as A;
        use CampaignStatus as S;
        assert_eq!(
            transition(S::Draft, A::Launch).map(|t| t.to),
            Some(S::Scheduled)
        );
        assert!(transition(S::Draft, A::Launch).unwrap().new_generation);
        assert_eq!(transition(S::Running, A::Launch), None);
        assert_eq!(
            transition(S::Running, A::Pause).map(|t| t.to),
            Some(S::Paused)
        );
        assert!(!transition(S::Running, A::Pause).unwrap().new_generation);
        assert!(transition(S::Paused, A::Resume).unwrap().new_generation);
        assert_eq!(transition(S::Running, A::Resume), None);
        assert_eq!(
            transition(S::Paused, A::Cancel).map(|t| t.to),
            Some(S::Cancelled)
        );
        assert_eq!(transition(S::Cancelled, A::Cancel), None);
        assert_eq!(
            transition(S::Completed, A::Cancel).map(|t| t.to),
            Some(S::Cancelled)
        );
        assert_eq!(
            transition(S::Cancelled, A::Launch).map(|t| t.to),
            Some(S::Scheduled)
        );
        assert_eq!(
            transition(S::Completed, A::Launch).map(|t| t.to),
            Some(S::Scheduled)
        );
        assert_eq!(transition(S::Running, A::Update), None);
        assert_eq!(transition(S::Running, A::Delete), None);
        assert_eq!(
            transition(S::Scheduled, A::Update).map(|t| t.to),
            Some(S::Scheduled)
        );
        assert!(S::Paused.holds_jobs() && S::Cancelled.holds_jobs() && !S::Running.holds_jobs());
    }

    #[test]
    fn rate_slices_are_steady() {
        assert_eq!(rate_slice(1000), 100);
        assert_eq!(rate_slice(5), 1);
    }

    #[test]
    fn validation_names_fields() {
        let mut c = CampaignInput {
            name: "Black Friday".into(),
            notification: Notification {
                title: Some("Hi".into()),
                ..Default::default()
            },
            audience: Audience::all(),
            schedule: Schedule::Now,
            rate_limit_per_second: Some(0),
            expires_at: None,
            delivery_policy: DeliveryPolicy::AtMostOnce,
        };
        assert_eq!(c.validate().unwrap_err().field, "rate_limit_per_second");
        c.rate_limit_per_second = None;
        assert!(c.validate().is_ok());
        c.schedule = Schedule::Local {
            local_time: at(9, 0),
            fallback_time_zone: Some("Mars/Olympus".into()),
        };
        assert_eq!(
            c.validate().unwrap_err().field,
            "schedule.fallback_time_zone"
        );
        c.schedule = Schedule::Now;
        c.name = " ".into();
        assert_eq!(c.validate().unwrap_err().field, "name");
    }
}
