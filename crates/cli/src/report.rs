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
                st.step,
                time(Some(st.started_ms)),
                dur(Some(st.started_ms), st.ended_ms)
            );
        }
        s.push('\n');
    }
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
    for n in &r.nodes {
        let fail = n
            .failure
            .as_ref()
            .map(|f| format!(" <span class=\"failed\">failed: {}</span>", esc(f)))
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
                esc(&st.step),
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
