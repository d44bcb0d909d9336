//! Prometheus metrics. Gauges are computed from a snapshot of the campaigns at each scrape;
//! histograms and counters accumulate as the drivers work.

use baton_proto::{CampaignView, FleetView};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabel {
    /// The lifecycle state the node spent the time in: draining, updating, rebooting, ...
    pub step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// Where the node failed: draining, updating, rebooting, verifying, restoring.
    pub kind: String,
}

/// What accumulates between scrapes.
pub struct Telemetry {
    pub step_seconds: Family<StepLabel, Histogram>,
    pub failures: Family<KindLabel, Counter>,
    pub journal_write_seconds: Histogram,
    /// From an agent's report being taken to the commands that follow being handed out
    /// (journaling included). Fine buckets (×1.25 from 0.1 ms): the scale bench reads its p99.
    pub decision_seconds: Histogram,
    /// Appends the journal refused (disk full, I/O errors): each was retried later.
    pub journal_failures: Counter,
    /// `mixed-mode-overdue` warnings sent.
    pub overdue_warnings: Counter,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            step_seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.05, 2.0, 18))),
            failures: Family::default(),
            journal_write_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            decision_seconds: Histogram::new(exponential_buckets(0.000_1, 1.25, 50)),
            journal_failures: Counter::default(),
            overdue_warnings: Counter::default(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeStateLabel {
    campaign: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    campaign: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LevelLabel {
    fleet: String,
    level: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FleetLabel {
    fleet: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    campaign: String,
    service: String,
}

const STATES: [&str; 10] = [
    "not-targeted",
    "pending",
    "draining",
    "updating",
    "rebooting",
    "verifying",
    "restoring",
    "done",
    "failed",
    "skipped",
];

/// The metrics page (OpenMetrics text) for these campaigns.
pub fn render(views: &[CampaignView], fleet: &FleetView, t: &Telemetry) -> String {
    let mut reg = Registry::with_prefix("baton");
    let nodes = Family::<NodeStateLabel, Gauge>::default();
    let phase = Family::<PhaseLabel, Gauge>::default();
    let headroom = Family::<ServiceLabel, Gauge>::default();
    for v in views {
        let campaign = format!("{}#{}", v.name, v.id);
        for s in STATES {
            let n = v.nodes.iter().filter(|n| n.state == s).count() as i64;
            nodes.get_or_create(&NodeStateLabel { campaign: campaign.clone(), state: s.into() }).set(n);
        }
        phase
            .get_or_create(&PhaseLabel { campaign: campaign.clone(), phase: v.phase.as_str().into() })
            .set(1);
        for s in &v.services {
            headroom
                .get_or_create(&ServiceLabel { campaign: campaign.clone(), service: s.name.clone() })
                .set(s.allowance as i64 - s.down as i64);
        }
    }
    reg.register("nodes", "Nodes of each campaign per lifecycle state", nodes);
    reg.register("campaign_phase", "1 for the phase each campaign is in", phase);
    reg.register(
        "budget_headroom",
        "Members of each service that may still go down (allowance - down)",
        headroom,
    );
    let level = Family::<LevelLabel, Gauge>::default();
    level
        .get_or_create(&LevelLabel {
            fleet: fleet.name.clone(),
            level: fleet.functional_level.clone().unwrap_or_default(),
        })
        .set(1);
    reg.register("functional_level", "1 for the fleet's committed functional level (empty: none)", level);
    let per_fleet = |help: &str, name: &str, value: i64, reg: &mut Registry| {
        let g = Family::<FleetLabel, Gauge>::default();
        g.get_or_create(&FleetLabel { fleet: fleet.name.clone() }).set(value);
        reg.register(name, help, g);
    };
    per_fleet(
        "1 while the fleet's nodes run at more than one version, or at one other than its level",
        "mixed_mode",
        i64::from(fleet.mixed_mode),
        &mut reg,
    );
    per_fleet(
        "How long the fleet has run in mixed mode",
        "mixed_mode_seconds",
        fleet.mixed_age_ms.map_or(0, |ms| (ms / 1000) as i64),
        &mut reg,
    );
    per_fleet(
        "How long mixed mode may last (mixed_mode_limit)",
        "mixed_mode_limit_seconds",
        (fleet.mixed_mode_limit_ms / 1000) as i64,
        &mut reg,
    );
    per_fleet(
        "1 while mixed mode has lasted past its limit",
        "mixed_mode_overdue",
        i64::from(fleet.mixed_mode_overdue),
        &mut reg,
    );
    per_fleet(
        "Nodes fenced: older than the committed level, kept out of service",
        "fenced_nodes",
        fleet.nodes.iter().filter(|n| n.fenced).count() as i64,
        &mut reg,
    );
    reg.register(
        "mixed_mode_overdue_warnings",
        "mixed-mode-overdue warnings sent (once past the limit, then daily)",
        t.overdue_warnings.clone(),
    );
    reg.register("step_duration_seconds", "Time nodes spent in each lifecycle step", t.step_seconds.clone());
    reg.register("failures", "Node failures, by the step they failed in", t.failures.clone());
    reg.register(
        "journal_write_seconds",
        "Time to append one event to the journal durably",
        t.journal_write_seconds.clone(),
    );
    reg.register(
        "decision_seconds",
        "Time from an agent's report to the commands that follow it being handed out",
        t.decision_seconds.clone(),
    );
    reg.register(
        "journal_append_failures",
        "Events the journal could not record (the driver sent again what it waited on)",
        t.journal_failures.clone(),
    );
    let mut out = String::new();
    let _ = encode(&mut out, &reg);
    out
}
