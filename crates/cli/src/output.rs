//! What `baton` prints: plan and simulation reports, and errors.

use crate::Failure;
use baton_core::campaign::Phase;
use baton_core::model::Movable;
use baton_core::units::format_duration;
use baton_core::{CampaignSpec, Fleet, Plan};
use baton_sim::{SimOptions, SimReport};
use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, MietteDiagnostic, NamedSource};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

pub fn report_failure(f: Failure, tty: bool) {
    let theme = if tty { GraphicalTheme::unicode() } else { GraphicalTheme::unicode_nocolor() };
    let handler = GraphicalReportHandler::new_themed(theme);
    let mut out = String::new();
    match f {
        Failure::Input(d, text) => {
            // The place is in the first line too, so it survives any rendering.
            let mut m = MietteDiagnostic::new(format!("{}: {}", d.location(), d.message));
            if let Some(h) = &d.help {
                m = m.with_help(h.clone());
            }
            match (&d.span, text) {
                (Some(span), Some(text)) => {
                    let len = span.len().max(1);
                    m = m.with_label(LabeledSpan::at(span.start..span.start + len, "here"));
                    let r = miette::Report::new(m).with_source_code(NamedSource::new(&d.file, text));
                    let _ = handler.render_report(&mut out, r.as_ref());
                }
                _ => {
                    let _ = handler.render_report(&mut out, &m);
                }
            }
        }
        Failure::Infeasible(i) => {
            let m = MietteDiagnostic::new(format!("infeasible: {}", i.message)).with_help(i.help);
            let _ = handler.render_report(&mut out, &m);
        }
        Failure::Internal(msg) | Failure::Ended(msg) | Failure::Declined(msg) => {
            out = format!("baton: {msg}\n");
        }
        Failure::Api(e) => {
            out = format!("baton: {e}\n");
        }
        Failure::Interrupted => {
            out = "baton: interrupted\n".to_string();
        }
    }
    eprint!("{out}");
}

/// DESIGN.md §Plan JSON (**contract**), as `POST /v1/plan` answers it.
pub fn plan_json(fleet: &Fleet, plan: &Plan) -> String {
    serde_json::to_string(&baton_server::plan_view(fleet, plan)).expect("plan serializes")
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

pub fn plan_text(fleet: &Fleet, spec: &CampaignSpec, plan: &Plan) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "plan {} for fleet {}: {} → {}, strategy {}, max_parallel {}",
        plan.campaign,
        fleet.name,
        fleet.functional_level.as_deref().unwrap_or("?"),
        spec.target_version,
        plan.strategy,
        plan.max_parallel
    );
    let _ = writeln!(
        s,
        "{} to update, {} skipped",
        plural(plan.to_update(), "node", "nodes"),
        plan.skipped.len()
    );
    let width = plan.waves.len().to_string().len();
    for (i, wave) in plan.waves.iter().enumerate() {
        let _ = writeln!(s, "\nwave {:>width$}  ({})", i + 1, plural(wave.len(), "node", "nodes"));
        let mut by_ud: BTreeMap<Option<u32>, Vec<&str>> = BTreeMap::new();
        for &n in wave {
            by_ud.entry(fleet.nodes[n as usize].update_domain).or_default().push(fleet.node_name(n));
        }
        // Domains in order, nodes without one last.
        let mut groups: Vec<_> = by_ud.into_iter().collect();
        groups.sort_by_key(|(ud, _)| (ud.is_none(), *ud));
        for (ud, names) in groups {
            let label = match ud {
                Some(u) => format!("UD {u}"),
                None => "no UD".to_string(),
            };
            let _ = writeln!(s, "  {label:<6} {}", names.join(" "));
        }
    }
    if !plan.skipped.is_empty() {
        let _ = writeln!(s, "\nskipped");
        for (n, why) in &plan.skipped {
            let _ = writeln!(s, "  {:<10} {why}", fleet.node_name(*n));
        }
    }
    let verdict = if plan.waves.len() == plan.lower_bound { "optimal" } else { "above the bound" };
    let _ = writeln!(
        s,
        "\n{}; lower bound {} ({verdict}): {}",
        plural(plan.waves.len(), "wave", "waves"),
        plan.lower_bound,
        plan.binding
    );
    let movable: Vec<_> = fleet.workloads.iter().filter(|w| w.movable != Movable::None).collect();
    if !movable.is_empty() {
        let away: Vec<String> = movable
            .iter()
            .filter(|w| w.node != w.preferred)
            .map(|w| format!("{} ({} → {})", w.name, fleet.node_name(w.node), fleet.node_name(w.preferred)))
            .collect();
        let _ = writeln!(
            s,
            "failback: {} leave a node as it drains and go back to their preferred node when that \
             node is restored, within its capacity{}",
            plural(movable.len(), "movable workload", "movable workloads"),
            if away.is_empty() {
                String::new()
            } else {
                format!("; not on it now, to go there at a restore when it has room: {}", away.join(", "))
            }
        );
    }
    if let Some(action) = &spec.after_commit_action {
        match baton_core::plan::plan_after_commit(fleet, spec) {
            Ok(p) => {
                let _ = writeln!(
                    s,
                    "after commit: {action} on every node ({}), a pass of its own in {}; lower bound {}: {}",
                    plural(p.to_update(), "node", "nodes"),
                    plural(p.waves.len(), "wave", "waves"),
                    p.lower_bound,
                    p.binding
                );
            }
            Err(e) => {
                let _ = writeln!(
                    s,
                    "after commit: {action} could never run on every node, so the orchestrator refuses this campaign: {}",
                    e.message
                );
            }
        }
    }
    s
}

#[derive(Serialize)]
struct RunJson<'a> {
    strategy: &'a str,
    makespan_s: f64,
    lower_bound_s: f64,
    updated: usize,
    failed: usize,
    skipped: usize,
    outcome: &'a str,
    peak_down: &'a BTreeMap<String, u32>,
    violations: usize,
}

#[derive(Serialize)]
struct SimJson<'a> {
    runs: Vec<RunJson<'a>>,
    /// The same runs with each node's time learned from an earlier campaign (a key DESIGN.md
    /// does not list; `runs` is unchanged).
    learned: Vec<RunJson<'a>>,
}

/// DESIGN.md §Simulate JSON (**contract**), plus `learned`.
pub fn simulate_json(reports: &[SimReport], learned: &[SimReport]) -> String {
    serde_json::to_string(&SimJson { runs: run_json(reports), learned: run_json(learned) })
        .expect("report serializes")
}

fn run_json(reports: &[SimReport]) -> Vec<RunJson<'_>> {
    reports
        .iter()
        .map(|r| RunJson {
            strategy: r.strategy.as_str(),
            makespan_s: r.makespan as f64 / 1000.0,
            lower_bound_s: r.lower_bound as f64 / 1000.0,
            updated: r.updated,
            failed: r.failed,
            skipped: r.skipped,
            outcome: r.outcome.as_str(),
            peak_down: &r.peak_down,
            violations: r.violations.len(),
        })
        .collect()
}

fn secs(ms: u64) -> String {
    // Round to whole seconds for people.
    format_duration((ms + 500) / 1000 * 1000)
}

fn over(r: &SimReport) -> String {
    if r.lower_bound == 0 {
        return "-".into();
    }
    format!("{:+.1}%", (r.makespan as f64 / r.lower_bound as f64 - 1.0) * 100.0)
}

pub fn simulate_text(
    fleet: &Fleet,
    spec: &CampaignSpec,
    opts: &SimOptions,
    reports: &[SimReport],
    learned: &[SimReport],
) -> String {
    let mut s = String::new();
    let dur = if opts.duration.0 == opts.duration.1 {
        format_duration(opts.duration.0)
    } else {
        format!("{}..{}", format_duration(opts.duration.0), format_duration(opts.duration.1))
    };
    let _ = writeln!(
        s,
        "simulate {} on fleet {}: {} nodes, out of service {dur} each, update fail rate {}%, seed {}\n",
        spec.name,
        fleet.name,
        fleet.nodes.len(),
        opts.fail_rate * 100.0,
        opts.seed
    );
    let _ = writeln!(
        s,
        "{:<14} {:>10} {:>11} {:>7} {:>7} {:>6} {:>7}  {:<11} {:>10}  peak down",
        "strategy",
        "makespan",
        "lower bound",
        "over",
        "updated",
        "failed",
        "skipped",
        "outcome",
        "violations"
    );
    for r in reports {
        let peak: Vec<String> = r.peak_down.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(
            s,
            "{:<14} {:>10} {:>11} {:>7} {:>7} {:>6} {:>7}  {:<11} {:>10}  {}",
            r.strategy.as_str(),
            secs(r.makespan),
            secs(r.lower_bound),
            over(r),
            r.updated,
            r.failed,
            r.skipped,
            r.outcome.as_str(),
            r.violations.len(),
            if peak.is_empty() { "-".to_string() } else { peak.join(", ") }
        );
    }
    let first = &reports[0];
    let best = reports.iter().min_by_key(|r| r.makespan).expect("at least one run");
    let violations: usize = reports.iter().chain(learned).map(|r| r.violations.len()).sum();
    let how = match first.outcome {
        Phase::Completed => {
            format!("updated {} in {}", plural(first.updated, "node", "nodes"), secs(first.makespan))
        }
        p => format!(
            "ended {p} after {} with {} updated and {} failed",
            secs(first.makespan),
            first.updated,
            first.failed
        ),
    };
    let cmp = if reports.len() > 1 {
        if best.strategy == first.strategy || best.makespan == first.makespan {
            format!("; fastest of {} strategies", reports.len())
        } else {
            format!("; {} was faster ({})", best.strategy, secs(best.makespan))
        }
    } else {
        String::new()
    };
    if !learned.is_empty() {
        let runs: Vec<String> = learned
            .iter()
            .map(|r| format!("{} {} ({})", r.strategy.as_str(), secs(r.makespan), over(r)))
            .collect();
        let _ = writeln!(
            s,
            "\nwith each node's time learned from an earlier campaign (longest first): {}.",
            runs.join(", ")
        );
    }
    let _ = writeln!(
        s,
        "{}{}: {how}, {} the lower bound{cmp}; {}.",
        if learned.is_empty() { "\n" } else { "" },
        first.strategy,
        if first.lower_bound == 0 { "at".to_string() } else { format!("{} over", over(first)) },
        if violations == 0 {
            "no safety rule was broken".to_string()
        } else {
            format!("{violations} SAFETY VIOLATIONS")
        }
    );
    let (away, back) = baton_sim::moves_sent(&first.commands);
    let displaced = first.campaign.displaced();
    if away + back > 0 || !displaced.is_empty() {
        let _ = writeln!(
            s,
            "workloads: {away} moved off drained nodes, {back} moved back to their preferred nodes (failback){}",
            if displaced.is_empty() { "; every one ends on its preferred node." } else { "; not back:" }
        );
        for d in &displaced {
            let _ = writeln!(s, "  {} on {}, not {}: {}", d.workload, d.at, d.preferred, d.reason);
        }
    }
    s
}

/// `baton schedule list`: one schedule per line.
pub fn schedules_text(list: &[baton_proto::ScheduleView]) -> String {
    use baton_core::schedule::local;
    if list.is_empty() {
        return "no schedules (add one with `baton schedule add campaign.toml`)\n".into();
    }
    let mut out =
        format!("{:<20} {:<8} {:<18} {:<24} {}\n", "NAME", "TARGET", "RULE", "NEXT RUN", "LAST RUN");
    for s in list {
        let next = s.next_run_ms.map_or_else(|| "never".to_string(), |t| local(t, &s.timezone));
        let last = s.last.as_ref().map_or_else(|| "none yet".to_string(), |r| run_words(r, &s.timezone));
        out += &format!("{:<20} {:<8} {:<18} {:<24} {}\n", s.name, s.target_version, s.cron, next, last);
    }
    out
}

fn run_words(r: &baton_proto::ScheduleRun, zone: &str) -> String {
    let at = baton_core::schedule::local(r.due_ms, zone);
    let missed = if r.missed > 0 { format!(" ({} more missed)", r.missed) } else { String::new() };
    match (r.outcome.as_str(), r.campaign, &r.reason) {
        ("started", Some(id), _) => format!("{at}{missed}: started campaign {id}"),
        ("refused", Some(id), Some(why)) => format!("{at}{missed}: campaign {id} refused to start: {why}"),
        (_, _, Some(why)) => format!("{at}{missed}: skipped: {why}"),
        (o, _, _) => format!("{at}{missed}: {o}"),
    }
}

/// `baton schedule runs`: one run per line, oldest first.
pub fn schedule_runs_text(runs: &[baton_proto::ScheduleRun]) -> String {
    if runs.is_empty() {
        return "no runs yet\n".into();
    }
    // The API gives no time zone with the runs: they are in UTC, and say so.
    runs.iter().map(|r| run_words(r, "UTC") + "\n").collect()
}

/// `baton scan`: one line per node, then the totals.
pub fn scan_text(r: &baton_proto::ScanReport) -> String {
    let mut s = format!("compliance against {}:\n", r.target);
    for n in &r.nodes {
        let _ = write!(s, "  {:<20} {:<13} {:<10}", n.node, n.state, n.version.as_deref().unwrap_or("-"));
        if !n.updates.is_empty() {
            let _ = write!(s, " lacks: {}", n.updates.join(", "));
        }
        if let Some(why) = &n.reason {
            let _ = write!(s, " ({why})");
        }
        s.push('\n');
    }
    let t = &r.totals;
    let _ = writeln!(
        s,
        "{} compliant, {} need the update, {} unreachable, of {} nodes (scanned in {:.1} s)",
        t.compliant,
        t.needs_update,
        t.unreachable,
        r.nodes.len(),
        r.took_ms as f64 / 1000.0
    );
    s
}

/// `baton scan --format html`: a heatmap of the nodes colored by state, and the table.
pub fn scan_html(r: &baton_proto::ScanReport) -> String {
    let esc =
        |t: &str| t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
    let mut s = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>baton scan: {t}</title><style>\
         body{{font:15px/1.45 system-ui,sans-serif;margin:2rem}}.grid{{display:flex;flex-wrap:wrap;gap:3px;max-width:60rem}}\
         .c{{width:1.1rem;height:1.1rem;border-radius:2px}}.compliant{{background:#22c55e}}.needs-update{{background:#f59e0b}}\
         .unreachable{{background:#ef4444}}table{{border-collapse:collapse;margin-top:1rem}}td,th{{border:1px solid #bbb;padding:.2rem .5rem;text-align:left}}\
         </style></head><body><h1>Compliance against {t}</h1><p>{c} compliant, {n} need the update, {u} unreachable</p><div class=\"grid\">",
        t = esc(&r.target),
        c = r.totals.compliant,
        n = r.totals.needs_update,
        u = r.totals.unreachable
    );
    for n in &r.nodes {
        let _ = write!(
            s,
            "<div class=\"c {}\" title=\"{}: {}\"></div>",
            esc(&n.state),
            esc(&n.node),
            esc(&n.state)
        );
    }
    s.push_str("</div><table><tr><th>node</th><th>state</th><th>version</th><th>lacks</th><th>why</th></tr>");
    for n in &r.nodes {
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&n.node),
            esc(&n.state),
            esc(n.version.as_deref().unwrap_or("-")),
            esc(&n.updates.join(", ")),
            esc(n.reason.as_deref().unwrap_or(""))
        );
    }
    s.push_str("</table></body></html>\n");
    s
}
