//! Request and response types shared by the agent, the orchestrator and the CLI: one
//! definition for both ends of every call. These are the wire types, defined here and nowhere
//! else: they do not re-export the core's state or journal types, so the journal's format and
//! the API's can each change without dragging the other along (the server converts).

use serde::{Deserialize, Serialize};

/// A campaign's phase as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Planned,
    Running,
    Paused,
    Halted,
    Completed,
    /// Committed (the level is raised) and `after_commit_action` runs on every node; then
    /// committed.
    AfterCommit,
    Committed,
    RollingBack,
    RolledBack,
    Aborted,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Planned => "planned",
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::Halted => "halted",
            Phase::Completed => "completed",
            Phase::AfterCommit => "after-commit",
            Phase::Committed => "committed",
            Phase::RollingBack => "rolling-back",
            Phase::RolledBack => "rolled-back",
            Phase::Aborted => "aborted",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A workload to move off a node being drained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadMove {
    pub workload: String,
    pub to: String,
    pub live: bool,
}

/// Errors are JSON with a stable code, under the matching HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiError {
    pub code: String,
    pub message: String,
}

// ---- agent API (mutual TLS) ----

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepKind {
    /// Stop and runtime-mask the node's auto-updaters (agent.toml `[hold]`), recording which
    /// were running.
    Hold,
    /// Unmask them and start again those that were running before the hold.
    Release,
    /// The node's prechecks (free disk, prerequisites), before anything is touched.
    Precheck,
    /// Out of service: drain hooks, local services stopped with `stop_grace` then forced.
    Drain,
    /// Run an allow-listed action.
    Action,
    /// Back into service: local services started, restore hooks. Ends a fence.
    Restore,
    /// Kept out of service for good (a node older than the committed level): local services
    /// stopped with `stop_grace` then forced, and kept stopped, also after the agent restarts or
    /// the node reboots, until a restore step (an update's, or an operator's unfence).
    Fence,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRequest {
    /// Derived from (campaign, node, pass, attempt, step): a step id the agent has seen is
    /// never run again; the agent answers with its recorded outcome.
    pub id: String,
    pub kind: StepKind,
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub stop_grace_ms: Option<u64>,
    /// For a drain: where the node's workloads go (`workload`, `to`, `live`). The agent gives
    /// them to its drain hooks as JSON in `BATON_MOVES`.
    #[serde(default)]
    pub moves: Vec<WorkloadMove>,
}

impl StepRequest {
    /// A step with nothing but its id and kind set.
    pub fn new(id: String, kind: StepKind) -> Self {
        StepRequest { id, kind, action: None, version: None, stop_grace_ms: None, moves: Vec::new() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepState {
    Running,
    Ok,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepStatus {
    pub id: String,
    pub kind: StepKind,
    pub state: StepState,
    /// The node must reboot to finish the step.
    #[serde(default)]
    pub reboot: bool,
    /// The boot id when the step ran.
    pub boot_id: String,
    /// Version installed after the step, when known.
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    /// The end of the step's output (bounded).
    #[serde(default)]
    pub output_tail: String,
    /// How many times this step id was executed on this node (never more than 1).
    pub executions: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    /// Judged only when a campaign verifies the node after its update (the journal check): it
    /// does not make the node unhealthy, or seen down, at other times.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verify_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub node: String,
    pub version: Option<String>,
    pub boot_id: String,
    pub healthy: bool,
    pub checks: Vec<CheckResult>,
    /// The step running now or last run.
    pub step: Option<StepStatus>,
    /// Increases whenever anything above changes (for long polls).
    pub generation: u64,
    /// The node is fenced: its services are kept stopped until a restore step.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fenced: bool,
}

// ---- orchestrator REST API (operator token for mutating calls) ----

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateCampaign {
    /// The campaign file's text (TOML).
    pub toml: String,
    /// Its name, for error messages.
    #[serde(default)]
    pub file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeView {
    pub name: String,
    pub state: String,
    pub update_domain: Option<u32>,
    #[serde(default)]
    pub fault_domain: Option<u32>,
    /// The plan's wave (0-based) for nodes to update.
    #[serde(default)]
    pub wave: Option<usize>,
    pub version: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    /// Out of service because of this campaign or one before it (counted as down).
    #[serde(default)]
    pub out_of_service: bool,
    /// The version it had before the campaign: where a rollback takes it.
    #[serde(default)]
    pub from_version: Option<String>,
    /// Fenced: back at a version older than the committed level, kept out of service.
    #[serde(default)]
    pub fenced: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceView {
    pub name: String,
    pub members: usize,
    /// Members that may be down at once.
    pub allowance: u32,
    /// Members down now, for any reason.
    pub down: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CampaignView {
    pub id: i64,
    pub name: String,
    pub fleet: String,
    pub target_version: String,
    pub strategy: String,
    /// planned, running, paused, halted, completed, after-commit, committed, rolling-back,
    /// rolled-back, aborted
    pub phase: Phase,
    /// The pass its nodes are in: forward (to the target), rollback, or after-commit (its
    /// `after_commit_action` on every node, once committed; paused or halted, it is still
    /// committed).
    #[serde(default = "forward")]
    pub pass: String,
    /// The campaign file's `after_commit_action`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_commit_action: Option<String>,
    /// Whether the campaign holds its fleet: from its creation until it has ended and none of
    /// its nodes is active or being brought back. While it does, no other campaign is created.
    #[serde(default)]
    pub holds_fleet: bool,
    pub nodes: Vec<NodeView>,
    #[serde(default)]
    pub services: Vec<ServiceView>,
    pub waves: usize,
    pub updated: usize,
    pub failed: usize,
    pub skipped: usize,
    pub pending: usize,
    pub active: usize,
    /// Journal entries so far.
    pub events: i64,
    /// When the campaign should end (ms since the epoch): the remaining nodes simulated with the
    /// out-of-service time observed so far. None until a node has finished.
    #[serde(default)]
    pub eta_ms: Option<u64>,
    /// While nodes wait for the campaign's maintenance window: when it opens (ms since the
    /// epoch). None when nothing waits for a window.
    #[serde(default)]
    pub window_opens_at_ms: Option<u64>,
    /// When the campaign was started (ms since the epoch); none while it is planned.
    #[serde(default)]
    pub started_at_ms: Option<u64>,
    /// Its `mixed_mode_limit` (ms), if its file sets one.
    #[serde(default)]
    pub mixed_mode_limit_ms: Option<u64>,
    /// The plan's lower bound on its waves, and what binds it.
    #[serde(default)]
    pub lower_bound: usize,
    #[serde(default)]
    pub binding: String,
}

fn forward() -> String {
    "forward".into()
}

impl CampaignView {
    /// Whether the campaign raised the fleet's functional level: committed, or running its
    /// after-commit pass (which a pause or a halt does not undo).
    pub fn committed(&self) -> bool {
        self.phase == Phase::Committed || self.pass == "after-commit"
    }
}

/// A plan (`POST /v1/plan`), as `baton plan --format json` prints it (DESIGN.md §Plan JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlanView {
    pub campaign: String,
    pub strategy: String,
    pub waves: Vec<Vec<String>>,
    pub skipped: Vec<PlanSkip>,
    pub lower_bound: usize,
    pub binding: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlanSkip {
    pub node: String,
    pub reason: String,
}

/// The fleet as the campaigns have left it (`GET /v1/fleet`): its committed functional level,
/// each node's version, and how long it has run in mixed mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FleetView {
    pub name: String,
    /// The committed level: raised by the last commit, else the fleet file's `functional_level`.
    pub functional_level: Option<String>,
    /// The version chain, oldest first (the fleet file's `versions`).
    pub versions: Vec<String>,
    pub nodes: Vec<FleetNode>,
    /// Whether the nodes run at more than one version, or at one other than the level.
    pub mixed_mode: bool,
    /// Since when (ms since the epoch): the start of the first campaign that left it so.
    pub mixed_since_ms: Option<u64>,
    /// How long so far (ms), as of `now_ms`.
    pub mixed_age_ms: Option<u64>,
    /// How long mixed mode may last before it is overdue (ms): the `mixed_mode_limit` of the
    /// newest campaign of this spell of mixed mode that sets one, else 4 weeks.
    pub mixed_mode_limit_ms: u64,
    /// Whether mixed mode has lasted longer than the limit.
    pub mixed_mode_overdue: bool,
    /// When the last `mixed-mode-overdue` warning went out (ms since the epoch), in this spell.
    pub overdue_warned_at_ms: Option<u64>,
    /// When the orchestrator last looked at mixed mode against its limit (ms since the epoch).
    #[serde(default)]
    pub checked_at_ms: Option<u64>,
    /// The orchestrator's clock when this was made.
    pub now_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FleetNode {
    pub name: String,
    pub version: Option<String>,
    /// Kept out of service: it is older than the committed level and may not rejoin.
    #[serde(default)]
    pub fenced: bool,
    #[serde(default)]
    pub reason: Option<String>,
}

/// What an agent says its node lacks (`GET /v1/scan` on the agent): its installed version,
/// read now, and the updates its `scan` action lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentScan {
    pub node: String,
    pub version: Option<String>,
    /// One line per update, e.g. "myapp 1.1".
    pub updates: Vec<String>,
    /// Whether the agent has a `scan` action (without one, only the version is known).
    pub scanned: bool,
    /// Why the scan action failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One node of a compliance report (DESIGN.md §Formats, Scan JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScanRow {
    pub node: String,
    /// compliant | needs-update | unreachable
    pub state: String,
    pub version: Option<String>,
    pub updates: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScanTotals {
    pub compliant: usize,
    pub needs_update: usize,
    pub unreachable: usize,
}

/// A compliance report against a target version (`baton scan`, `GET /v1/scan`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScanReport {
    pub target: String,
    pub nodes: Vec<ScanRow>,
    pub totals: ScanTotals,
    /// How long the scan took, ms.
    pub took_ms: u64,
}

/// A schedule (`GET /v1/schedules`): a campaign file the orchestrator creates and starts by
/// itself when its cron rule comes due and some targeted node is behind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScheduleView {
    /// The campaign's name, which names the schedule.
    pub name: String,
    /// The cron rule (`schedule`) and its time zone (`timezone`).
    pub cron: String,
    pub timezone: String,
    pub target_version: String,
    /// The campaign file's name as added.
    pub file: String,
    pub added_ms: u64,
    pub added_by: String,
    /// When it comes due next, ms since the epoch (null: never again).
    pub next_run_ms: Option<u64>,
    /// Its last run, if it had one.
    pub last: Option<ScheduleRun>,
    /// The campaign a run created and is starting now (its `before_start` may take a while).
    pub starting: Option<i64>,
}

/// A schedule's run: when it came due and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScheduleRun {
    /// When the run was journaled.
    pub at_ms: u64,
    /// When it came due.
    pub due_ms: u64,
    /// How many more came due while it could not run (the orchestrator was down).
    pub missed: u32,
    /// started | skipped | refused
    pub outcome: String,
    /// The campaign it created (started, or refused and aborted).
    pub campaign: Option<i64>,
    /// Why it created or started none.
    pub reason: Option<String>,
}

/// The orchestrator's clock (`GET /v1/clock`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClockView {
    /// Its time now, ms since the epoch: what maintenance windows and journal entries use.
    pub now_ms: u64,
    /// Whether `POST /v1/clock` may move it (`baton serve --test-clock`, for tests only).
    pub settable: bool,
}

/// Moves a test clock forward (`POST /v1/clock`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClockMove {
    /// Milliseconds, at most a year (366 days) per call; a fraction is rounded.
    #[schema(minimum = 0, maximum = 31_622_400_000_u64)]
    pub advance_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JournalEntry {
    pub seq: i64,
    pub at_ms: u64,
    /// The event as journaled: `{"v": 2, "event": "step-ok", "node": ..., ...}` (`v` is the
    /// journal's schema version).
    #[schema(value_type = Object)]
    pub event: serde_json::Value,
}

// ---- run reports ----

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepReport {
    /// draining, updating, rebooting, verifying or restoring.
    pub step: String,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    /// ok, failed, or running.
    pub outcome: String,
    pub detail: Option<String>,
    /// The end of the step's output, as the agent recorded it.
    pub output_tail: Option<String>,
    /// The pass it belongs to when not the forward one: `rollback` or `after-commit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeReport {
    pub name: String,
    pub update_domain: Option<u32>,
    pub state: String,
    pub version_before: Option<String>,
    pub version_after: Option<String>,
    pub started_ms: Option<u64>,
    pub ended_ms: Option<u64>,
    pub retries: u32,
    pub reboots: u32,
    pub failure: Option<String>,
    pub steps: Vec<StepReport>,
    /// How the node ended the after-commit pass (`done`, `failed: …`, `skipped: …`), if the
    /// campaign ran one; `state` and `failure` are then the forward pass's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_commit: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Report {
    pub id: i64,
    pub name: String,
    pub fleet: String,
    pub target_version: String,
    pub strategy: String,
    pub phase: String,
    pub started_ms: Option<u64>,
    pub ended_ms: Option<u64>,
    pub nodes_targeted: usize,
    pub updated: usize,
    pub failed: usize,
    pub skipped: usize,
    pub retries: u32,
    pub reboots: u32,
    pub nodes: Vec<NodeReport>,
    /// Campaign hooks that ran on the orchestrator's host (`before_start`), in order.
    #[serde(default)]
    pub hooks: Vec<HookReport>,
    /// Workload moves the drains carried, and those the restores carried back (failback).
    #[serde(default)]
    pub workloads_moved: u32,
    #[serde(default)]
    pub workloads_returned: u32,
    /// Movable workloads not on their preferred node when the report was made, and why.
    #[serde(default)]
    pub displaced: Vec<DisplacedReport>,
    /// The after-commit pass (`after_commit_action` on every node once committed), if it began;
    /// the counts above are then the forward pass's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_commit: Option<AfterCommitReport>,
}

/// The after-commit pass of a run report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AfterCommitReport {
    pub action: String,
    /// The commit that began it, and when its last node finished.
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub done: usize,
    pub failed: usize,
    pub skipped: usize,
}

/// A movable workload away from its preferred node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DisplacedReport {
    pub workload: String,
    pub at: String,
    pub preferred: String,
    pub reason: String,
}

/// One run of a campaign hook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HookReport {
    pub hook: String,
    pub at_ms: u64,
    pub ok: bool,
    /// The tail of what it printed (stdout and stderr).
    pub output: String,
}
