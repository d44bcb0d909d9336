//! `baton report`: a campaign's run report as Markdown, HTML or JSON.

use baton_core::units::format_duration;
use baton_proto::Report;
use std::fmt::Write;

fn dur(a: Option<u64>, b: Option<u64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format_duration(b.saturating_sub(a) / 100 * 100),
        (Some(_), None) => "running".into(),
        _ => "-".into(),
    }
}

fn time(ms: Option<u64>) -> String {
    match ms {
        Some(t) => {
            let s = (t / 1000) % 86_400;
            format!("{:02}:{:02}:{:02} UTC", s / 3600, s / 60 % 60, s % 60)
        }
        None => "-".into(),
    }
}

fn ver(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("?")
}

/// A step's name with its pass when not the forward one: `after-commit: updating`.
fn step_name(st: &baton_proto::StepReport) -> String {
    match &st.pass {
        Some(p) => format!("{p}: {}", st.step),
        None => st.step.clone(),
    }
}

/// The after-commit pass in a sentence, if the campaign ran one.
fn after_commit_line(r: &Report) -> Option<String> {
    let a = r.after_commit.as_ref()?;
    Some(format!(
        "After-commit pass: {} on every node, from {} to {} ({}): {} done, {} failed, {} skipped. \
         The counts above are the forward pass's.",
        a.action,
        time(Some(a.started_ms)),
        time(a.ended_ms),
        dur(Some(a.started_ms), a.ended_ms),
        a.done,
        a.failed,
        a.skipped
    ))
}

pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Campaign {} (id {}) on fleet {}\n", r.name, r.id, r.fleet);
    let _ = writeln!(
        s,
        "Target **{}**, strategy {}, ended **{}**. Started {}, last node finished {} ({}).\n",
        r.target_version,
        r.strategy,
        r.phase,
        time(r.started_ms),
        time(r.ended_ms),
        dur(r.started_ms, r.ended_ms)
    );
    let _ = writeln!(
        s,
        "| nodes | updated | failed | skipped | retries | reboots |\n|---|---|---|---|---|---|\n| {} | {} | {} | {} | {} | {} |\n",
        r.nodes_targeted, r.updated, r.failed, r.skipped, r.retries, r.reboots
    );
    if let Some(line) = after_commit_line(r) {
        let _ = writeln!(s, "{line}\n");
    }
    if r.workloads_moved + r.workloads_returned > 0 || !r.displaced.is_empty() {
        let _ = writeln!(
            s,
            "Workloads: {} moved off drained nodes, {} moved back to their preferred nodes (failback).\n",
            r.workloads_moved, r.workloads_returned
        );
        for d in &r.displaced {
            let _ = writeln!(s, "- {} is on {}, not {}: {}", d.workload, d.at, d.preferred, d.reason);
        }
        if !r.displaced.is_empty() {
            s.push('\n');
        }
    }
    for h in &r.hooks {
        let out = h.output.trim().replace('\n', " ⏎ ").replace('|', "\\|");
        let _ = writeln!(
            s,
            "Hook `{}` at {}: **{}**. Output: {}\n",
            h.hook,
            time(Some(h.at_ms)),
            if h.ok { "ok" } else { "failed" },
            if out.is_empty() { "none".into() } else { format!("`{out}`") }
        );
    }
    for n in &r.nodes {
        let ud = n.update_domain.map(|u| format!("UD {u}")).unwrap_or_else(|| "no UD".into());
        let _ = writeln!(
            s,
            "## {} ({ud}): {}\n\n{} → {}, from {} to {} ({}), {} retries, {} reboots{}\n",
            n.name,
            n.state,
            ver(&n.version_before),
            ver(&n.version_after),
            time(n.started_ms),
            time(n.ended_ms),
            dur(n.started_ms, n.ended_ms),
            n.retries,
            n.reboots,
            n.failure.as_ref().map(|f| format!("; **failed: {f}**")).unwrap_or_default()
                + &n.after_commit.as_ref().map(|a| format!("; after-commit pass: {a}")).unwrap_or_default()
        );
        if n.steps.is_empty() {
            continue;
        }
        let _ = writeln!(s, "| step | started | took | outcome | output (tail) |\n|---|---|---|---|---|");
        for st in &n.steps {
            let out = st.output_tail.as_deref().unwrap_or("").trim().replace('\n', " ⏎ ").replace('|', "\\|");
            let outcome = match &st.detail {
                Some(d) => format!("{}: {}", st.outcome, d.replace('|', "\\|")),
                None => st.outcome.clone(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {outcome} | {out} |",
                step_name(st),
                time(Some(st.started_ms)),
                dur(Some(st.started_ms), st.ended_ms)
            );
        }
        s.push('\n');
    }
    s
}

/// Each step's colour in the timeline (as the dashboard's).
fn step_colour(step: &str) -> &'static str {
    match step {
        "prechecking" => "#cbd5e1",
        "draining" => "#fbbf24",
        "updating" => "#fb923c",
        "rebooting" => "#c084fc",
        "verifying" => "#60a5fa",
        "restoring" => "#22d3ee",
        _ => "#94a3b8",
    }
}

/// The campaign's timeline: a row per node that did anything, a bar per step from its start to
/// its end (or to the last moment seen, while running), failures outlined and marked. Plain SVG
/// in the page: no script, nothing fetched.
pub fn timeline_svg(r: &Report) -> String {
    let rows: Vec<&baton_proto::NodeReport> = r.nodes.iter().filter(|n| !n.steps.is_empty()).collect();
    let Some(t0) = rows.iter().flat_map(|n| n.steps.iter().map(|s| s.started_ms)).min() else {
        return String::new();
    };
    let t1 = rows
        .iter()
        .flat_map(|n| n.steps.iter().map(|s| s.ended_ms.unwrap_or(s.started_ms)))
        .chain(r.ended_ms)
        .max()
        .unwrap_or(t0)
        .max(t0 + 1);
    let (label, width, row) = (140.0, 760.0, 16.0);
    let x = |t: u64| label + width * (t.saturating_sub(t0)) as f64 / (t1 - t0) as f64;
    let height = row * rows.len() as f64 + 24.0;
    let mut s = format!(
        "<h2>Timeline</h2><svg xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" aria-label=\"timeline: a row per node, a bar per step\" \
         width=\"{w}\" height=\"{height}\" viewBox=\"0 0 {w} {height}\" font-family=\"system-ui,sans-serif\" font-size=\"11\">",
        w = label + width + 10.0
    );
    for (i, n) in rows.iter().enumerate() {
        let y = row * i as f64;
        let _ = write!(s, "<text x=\"0\" y=\"{}\">{}</text>", y + 11.0, esc(&n.name));
        for st in &n.steps {
            let (a, b) = (x(st.started_ms), x(st.ended_ms.unwrap_or(t1)));
            let failed = st.outcome == "failed";
            let _ = write!(
                s,
                "<rect class=\"step\" data-node=\"{node}\" data-step=\"{step}\" data-pass=\"{pass}\" x=\"{a:.1}\" y=\"{y1:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"{fill}\"{stroke}>\
                 <title>{node} {name}: {outcome}, {took}</title></rect>",
                node = esc(&n.name),
                step = esc(&st.step),
                pass = esc(st.pass.as_deref().unwrap_or("forward")),
                y1 = y + 2.0,
                w = (b - a).max(1.0),
                h = row - 4.0,
                name = esc(&step_name(st)),
                fill = step_colour(&st.step),
                stroke = if failed { " stroke=\"#b00020\" stroke-width=\"2\"" } else { "" },
                outcome = esc(&st.outcome),
                took = dur(Some(st.started_ms), st.ended_ms),
            );
            if failed {
                let _ = write!(
                    s,
                    "<text class=\"failure\" x=\"{:.1}\" y=\"{:.1}\" fill=\"#b00020\" font-weight=\"700\">\u{2715}</text>",
                    b + 2.0,
                    y + 11.0
                );
            }
        }
    }
    let _ = write!(
        s,
        "<text x=\"{label}\" y=\"{}\">{}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{} ({})</text></svg>",
        height - 6.0,
        time(Some(t0)),
        label + width,
        height - 6.0,
        time(Some(t1)),
        dur(Some(t0), Some(t1))
    );
    s
}

fn esc(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

pub fn html(r: &Report) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>baton report: {name}</title>\
         <style>body{{font:15px/1.45 system-ui,sans-serif;margin:2rem;color:#111}}table{{border-collapse:collapse;margin:.5rem 0 1.5rem}}\
         th,td{{border:1px solid #bbb;padding:.25rem .5rem;text-align:left;vertical-align:top}}pre{{margin:0;white-space:pre-wrap;font-size:12px}}\
         .failed{{color:#b00020;font-weight:600}}</style></head><body>\
         <h1>Campaign {name} (id {id}) on fleet {fleet}</h1>\
         <p>Target <b>{target}</b>, strategy {strategy}, ended <b>{phase}</b>. Started {start}, last node finished {end} ({took}).</p>\
         <table><tr><th>nodes</th><th>updated</th><th>failed</th><th>skipped</th><th>retries</th><th>reboots</th></tr>\
         <tr><td>{t}</td><td>{u}</td><td>{f}</td><td>{sk}</td><td>{re}</td><td>{rb}</td></tr></table>",
        name = esc(&r.name),
        id = r.id,
        fleet = esc(&r.fleet),
        target = esc(&r.target_version),
        strategy = esc(&r.strategy),
        phase = esc(&r.phase),
        start = time(r.started_ms),
        end = time(r.ended_ms),
        took = dur(r.started_ms, r.ended_ms),
        t = r.nodes_targeted,
        u = r.updated,
        f = r.failed,
        sk = r.skipped,
        re = r.retries,
        rb = r.reboots
    );
    if let Some(line) = after_commit_line(r) {
        let _ = write!(s, "<p data-testid=\"after-commit\">{}</p>", esc(&line));
    }
    for h in &r.hooks {
        let _ = write!(
            s,
            "<p>Hook <code>{}</code> at {}: <b{}>{}</b></p><pre>{}</pre>",
            esc(&h.hook),
            time(Some(h.at_ms)),
            if h.ok { "" } else { " class=\"failed\"" },
            if h.ok { "ok" } else { "failed" },
            esc(h.output.trim())
        );
    }
    if r.workloads_moved + r.workloads_returned > 0 || !r.displaced.is_empty() {
        let _ = write!(
            s,
            "<p>Workloads: {} moved off drained nodes, {} moved back to their preferred nodes (failback).</p>",
            r.workloads_moved, r.workloads_returned
        );
        if !r.displaced.is_empty() {
            s.push_str("<ul>");
            for d in &r.displaced {
                let _ = write!(
                    s,
                    "<li>{} is on {}, not {}: {}</li>",
                    esc(&d.workload),
                    esc(&d.at),
                    esc(&d.preferred),
                    esc(&d.reason)
                );
            }
            s.push_str("</ul>");
        }
    }
    s.push_str(&timeline_svg(r));
    for n in &r.nodes {
        let fail = n
            .failure
            .as_ref()
            .map(|f| format!(" <span class=\"failed\">failed: {}</span>", esc(f)))
            .unwrap_or_default()
            + &n.after_commit
                .as_ref()
                .map(|a| format!("; after-commit pass: {}", esc(a)))
                .unwrap_or_default();
        let _ = write!(
            s,
            "<h2>{} ({}): {}</h2><p>{} → {}, from {} to {} ({}), {} retries, {} reboots{fail}</p>",
            esc(&n.name),
            n.update_domain.map(|u| format!("UD {u}")).unwrap_or_else(|| "no UD".into()),
            esc(&n.state),
            esc(ver(&n.version_before)),
            esc(ver(&n.version_after)),
            time(n.started_ms),
            time(n.ended_ms),
            dur(n.started_ms, n.ended_ms),
            n.retries,
            n.reboots
        );
        if n.steps.is_empty() {
            continue;
        }
        s.push_str("<table><tr><th>step</th><th>started</th><th>took</th><th>outcome</th><th>output (tail)</th></tr>");
        for st in &n.steps {
            let outcome = match &st.detail {
                Some(d) => format!("{}: {}", esc(&st.outcome), esc(d)),
                None => esc(&st.outcome),
            };
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{outcome}</td><td><pre>{}</pre></td></tr>",
                esc(&step_name(st)),
                time(Some(st.started_ms)),
                dur(Some(st.started_ms), st.ended_ms),
                esc(st.output_tail.as_deref().unwrap_or("").trim())
            );
        }
        s.push_str("</table>");
    }
    s.push_str("</body></html>\n");
    s
}
