//! What the lab runs against the fleet during a rollout: HTTP clients through HAProxy at a
//! steady rate, a writer of sequenced etcd keys, and an observer, independent of the
//! orchestrator, that samples which members of each service are out of service.

use crate::lab::{web_status, Host};
use base64::Engine;
use baton_core::model::Haproxy;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default, Debug, Clone)]
pub struct Traffic {
    pub requests: u64,
    pub failed: u64,
    /// The longest time between two successful answers, in ms.
    pub longest_gap_ms: u64,
    /// A few failures, for the log.
    pub errors: Vec<String>,
    /// When the first and the last failed request ended.
    pub failures_between: Option<(Instant, Instant)>,
}

/// Sends GET / through HAProxy at `rate` requests per second until `stop`.
pub async fn http_load(frontend: String, rate: u64, stop: Arc<AtomicBool>) -> Traffic {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(64)
        .build()
        .expect("http client");
    let out = Arc::new(Mutex::new((Traffic::default(), None::<Instant>)));
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let limit = Arc::new(tokio::sync::Semaphore::new(256));
    let url = format!("http://{frontend}/");
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        let Ok(permit) = limit.clone().acquire_owned().await else { break };
        let (client, url, out) = (client.clone(), url.clone(), out.clone());
        tokio::spawn(async move {
            let r = client.get(&url).send().await;
            let err = match r {
                Ok(r) if r.status().is_success() => match r.bytes().await {
                    Ok(_) => None,
                    Err(e) => Some(format!("body: {e}")),
                },
                Ok(r) => Some(format!("status {}", r.status())),
                Err(e) => Some(format!("{e}")),
            };
            let now = Instant::now();
            let mut g = out.lock().expect("traffic lock");
            g.0.requests += 1;
            match err {
                None => {
                    if let Some(last) = g.1 {
                        g.0.longest_gap_ms =
                            g.0.longest_gap_ms.max(now.duration_since(last).as_millis() as u64);
                    }
                    g.1 = Some(now);
                }
                Some(e) => {
                    g.0.failed += 1;
                    let first = g.0.failures_between.map_or(now, |(f, _)| f);
                    g.0.failures_between = Some((first, now));
                    if g.0.errors.len() < 5 {
                        g.0.errors.push(e);
                    }
                }
            }
            drop(permit);
        });
    }
    // The requests in flight finish.
    let _ = limit.acquire_many(256).await;
    let t = out.lock().expect("traffic lock").0.clone();
    t
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[derive(Default, Debug, Clone)]
pub struct Writes {
    pub acknowledged: u64,
    pub lost: u64,
    pub refused: u64,
}

/// Writes `lab/NNNNNNNN = N` through etcd's JSON gateway, trying the next member when one does
/// not answer, until `stop`; then reads every key back and counts the acknowledged ones lost.
pub async fn etcd_writer(endpoints: Vec<String>, stop: Arc<AtomicBool>) -> Writes {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("http client");
    let mut acked = Vec::new();
    let mut w = Writes::default();
    let (mut seq, mut e) = (0u64, 0usize);
    while !stop.load(Ordering::SeqCst) {
        let key = format!("lab/{seq:08}");
        let body = serde_json::json!({"key": b64(&key), "value": b64(&seq.to_string())});
        let r = http.post(format!("{}/v3/kv/put", endpoints[e % endpoints.len()])).json(&body).send().await;
        match r {
            Ok(r) if r.status().is_success() => {
                acked.push(seq);
                seq += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => {
                w.refused += 1;
                e += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    w.acknowledged = acked.len() as u64;
    // Read everything under lab/ back, from any member that answers.
    let body = serde_json::json!({"key": b64("lab/"), "range_end": b64("lab0")});
    let mut stored: HashMap<String, String> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    'read: while Instant::now() < deadline {
        for ep in &endpoints {
            let Ok(r) = http.post(format!("{ep}/v3/kv/range")).json(&body).send().await else { continue };
            let Ok(v) = r.json::<serde_json::Value>().await else { continue };
            let dec = |s: &serde_json::Value| {
                let b = base64::engine::general_purpose::STANDARD
                    .decode(s.as_str().unwrap_or(""))
                    .unwrap_or_default();
                String::from_utf8_lossy(&b).into_owned()
            };
            for kv in v["kvs"].as_array().cloned().unwrap_or_default() {
                stored.insert(dec(&kv["key"]), dec(&kv["value"]));
            }
            break 'read;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    w.lost = acked
        .iter()
        .filter(|s| stored.get(&format!("lab/{s:08}")).map(|v| *v != s.to_string()).unwrap_or(true))
        .count() as u64;
    w
}

#[derive(Default, Debug, Clone)]
pub struct Observed {
    pub samples: u64,
    /// Samples where a service had more members out than its allowance, beyond what the lab
    /// itself knocked out.
    pub budget_violations: u64,
    pub peak_out: HashMap<String, usize>,
    pub min_etcd_healthy: usize,
    pub violations: Vec<String>,
    /// The first samples with fewer than two etcd members healthy: when, and what each answered.
    pub etcd_dips: Vec<String>,
}

fn is_healthy(health: &str) -> bool {
    health.contains("\"health\":\"true\"")
}

/// Each member's answers, asked of every member at once (so a sample takes one timeout at
/// most, not one per member): whether its process answers (`/version`), and what `/health` said.
async fn probe_etcd(http: &reqwest::Client, members: &[Arc<Host>]) -> Vec<(String, bool, String)> {
    let mut probes = tokio::task::JoinSet::new();
    for h in members {
        let (http, h) = (http.clone(), h.clone());
        probes.spawn(async move {
            let (up, health) = tokio::join!(
                http.get(format!("{}/version", h.etcd_url())).send(),
                http.get(format!("{}/health", h.etcd_url())).send(),
            );
            let health = match health {
                Ok(r) => r.text().await.unwrap_or_else(|e| e.to_string()),
                Err(e) => e.to_string(),
            };
            (h.name.clone(), up.is_ok(), health)
        });
    }
    let mut answers = probes.join_all().await;
    answers.sort();
    answers
}

/// The lab's own view of who is out, every 100 ms: a web server is out when HAProxy does not
/// show it UP; an etcd member when its process does not answer. `excused` holds hosts the lab
/// itself took down, with when: a sample over an allowance is a violation unless every other
/// member out was already out before that.
pub async fn observe(
    hosts: Vec<Arc<Host>>,
    lb: Haproxy,
    allowance: HashMap<String, usize>,
    excused: Arc<Mutex<Vec<(String, Instant)>>>,
    stop: Arc<AtomicBool>,
) -> Observed {
    // A member that has lost quorum says so at once ("health":"false"); the timeout is only for
    // one that does not answer at all, and is long enough that a busy 2-core host does not count
    // a slow answer as a lost member.
    let http = reqwest::Client::builder().timeout(Duration::from_millis(1000)).build().expect("http client");
    let mut o = Observed { min_etcd_healthy: usize::MAX, ..Default::default() };
    let mut out_since: HashMap<(String, String), Instant> = HashMap::new();
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        let web = web_status(&lb, &hosts).await.unwrap_or_default();
        let mut out: HashMap<&str, Vec<String>> = HashMap::new();
        for (h, st) in &web {
            if !st.starts_with("UP") {
                out.entry("web").or_default().push(h.clone());
            }
        }
        let members: Vec<Arc<Host>> = hosts.iter().filter(|h| h.etcd).cloned().collect();
        let answers = probe_etcd(&http, &members).await;
        for (name, up, _) in &answers {
            if !up {
                out.entry("etcd").or_default().push(name.clone());
            }
        }
        let mut healthy = answers.iter().filter(|a| is_healthy(&a.2)).count();
        let mut said: Vec<String> = answers.iter().map(|(n, _, h)| format!("{n}: {}", h.trim())).collect();
        if healthy < 2 {
            // Asked once more, the members not found healthy: a member that lost quorum or is
            // down stays so for longer than this (a reboot is a second at least), while a
            // leader election after a member rejoins, or one answer slower than the timeout on
            // a busy 2-core host, is over by then. Both answers are kept in `etcd_dips`.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let again: Vec<Arc<Host>> = members
                .iter()
                .filter(|h| answers.iter().any(|(n, _, a)| *n == h.name && !is_healthy(a)))
                .cloned()
                .collect();
            let second = probe_etcd(&http, &again).await;
            healthy += second.iter().filter(|a| is_healthy(&a.2)).count();
            said.extend(second.iter().map(|(n, _, h)| format!("{n} again: {}", h.trim())));
            if o.etcd_dips.len() < 5 {
                o.etcd_dips.push(format!("sample {}: {}", o.samples, said.join("; ")));
            }
        }
        o.min_etcd_healthy = o.min_etcd_healthy.min(healthy);
        out_since.retain(|(s, h), _| out.get(s.as_str()).is_some_and(|v| v.contains(h)));
        let ex = excused.lock().expect("excused").clone();
        for (svc, members) in &out {
            for m in members {
                out_since.entry((svc.to_string(), m.clone())).or_insert(now);
            }
            let peak = o.peak_out.entry(svc.to_string()).or_default();
            *peak = (*peak).max(members.len());
            let allow = allowance.get(*svc).copied().unwrap_or(0);
            if members.len() > allow {
                // Over: fine only if the lab's own kill made it so, and the orchestrator took
                // no member down after that kill.
                let by_lab = members.iter().all(|m| {
                    let since = out_since[&(svc.to_string(), m.clone())];
                    ex.iter().any(|(h, _)| h == m) || ex.iter().any(|(_, at)| since < *at)
                });
                if !by_lab || ex.is_empty() {
                    o.budget_violations += 1;
                    if o.violations.len() < 5 {
                        o.violations
                            .push(format!("{svc}: {} out of allowance {allow}: {members:?}", members.len()));
                    }
                }
            }
        }
        o.samples += 1;
        let spent = now.elapsed();
        tokio::time::sleep(Duration::from_millis(100).saturating_sub(spent)).await;
    }
    if o.min_etcd_healthy == usize::MAX {
        o.min_etcd_healthy = 0;
    }
    o
}
