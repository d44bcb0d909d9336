//! Reading fleet and campaign files: strict parsing, then validation with located errors.
//!
//! Input is text (the caller reads the file); nothing here touches the file system.

use crate::diag::{locate, offset_of, Diagnostic, DocPath, Format};
use crate::model::*;
use crate::units::{Amount, Dur, MINUTE, SECOND};
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet<'a> {
    name: String,
    #[serde(default)]
    versions: Vec<String>,
    functional_level: Option<String>,
    #[serde(default, rename = "node")]
    nodes: Vec<RawNode>,
    #[serde(default, rename = "service", borrow)]
    services: Vec<RawService<'a>>,
    #[serde(default, rename = "workload")]
    workloads: Vec<RawWorkload>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: String,
    address: Option<String>,
    update_domain: Option<u32>,
    fault_domain: Option<u32>,
    version: Option<String>,
    capacity: Option<u64>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService<'a> {
    name: String,
    #[serde(borrow)]
    nodes: Option<Vec<Name<'a>>>,
    selector: Option<String>,
    max_unavailable: Option<Amount>,
    min_available: Option<Amount>,
    #[serde(default)]
    quorum: bool,
    haproxy: Option<RawHaproxy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHaproxy {
    socket: String,
    backend: String,
    server: Option<String>,
    drain_timeout: Option<crate::units::Dur>,
}

/// A node name in a member list, borrowed from the text when the format allows: large fleets
/// list a million members, and a `Cow` inside a `Vec` would always be copied.
struct Name<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Name<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a node name")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    name: String,
    node: String,
    #[serde(default)]
    demand: u64,
    #[serde(default = "default_movable")]
    movable: Movable,
    #[serde(default)]
    preferred: Option<String>,
}

fn default_movable() -> Movable {
    Movable::Live
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCampaign {
    name: String,
    target_version: String,
    #[serde(default = "default_action")]
    action: String,
    #[serde(default = "default_strategy")]
    strategy: Strategy,
    #[serde(default = "one")]
    max_parallel: Amount,
    #[serde(default = "zero")]
    max_failed_nodes: Amount,
    #[serde(default = "one_u32")]
    max_retries_per_node: u32,
    #[serde(default = "d30m")]
    reboot_timeout: Dur,
    #[serde(default = "d10s")]
    health_wait: Dur,
    #[serde(default = "d2m")]
    health_stable: Dur,
    #[serde(default = "d15m")]
    ready_timeout: Dur,
    #[serde(default = "halt")]
    on_ready_timeout: OnReadyTimeout,
    #[serde(default = "skip")]
    on_precheck_fail: OnPrecheckFail,
    #[serde(default = "d5m")]
    stop_grace: Dur,
    #[serde(default)]
    pause_between_waves: Dur,
    nodes: Option<Vec<String>>,
    #[serde(default)]
    order: Vec<String>,
    #[serde(default)]
    webhooks: Vec<String>,
    timezone: Option<String>,
    #[serde(default)]
    windows: Vec<RawWindow>,
    #[serde(default)]
    require_all_up: bool,
    #[serde(default)]
    before_start: Vec<String>,
    schedule: Option<String>,
    mixed_mode_limit: Option<Dur>,
    after_commit_action: Option<String>,
    select: Option<RawSelect>,
    walk: Option<crate::model::Walk>,
    max_unhealthy: Option<Amount>,
}

/// Which nodes a campaign takes, besides those in `nodes`: every node in one of the listed
/// update domains, in one of the listed fault domains, and with all the labels (each part that
/// is given must hold).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSelect {
    update_domain: Option<Vec<u32>>,
    fault_domain: Option<Vec<u32>>,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    days: String,
    start: String,
    length: Dur,
}

fn default_action() -> String {
    "upgrade".into()
}
fn default_strategy() -> Strategy {
    Strategy::Continuous
}
fn one() -> Amount {
    Amount::Count(1)
}
fn zero() -> Amount {
    Amount::Count(0)
}
fn one_u32() -> u32 {
    1
}
fn d30m() -> Dur {
    Dur(30 * MINUTE)
}
fn d10s() -> Dur {
    Dur(10 * SECOND)
}
fn d2m() -> Dur {
    Dur(2 * MINUTE)
}
fn d15m() -> Dur {
    Dur(15 * MINUTE)
}
fn d5m() -> Dur {
    Dur(5 * MINUTE)
}
fn skip() -> OnPrecheckFail {
    OnPrecheckFail::Skip
}
fn halt() -> OnReadyTimeout {
    OnReadyTimeout::Halt
}

/// Where errors are reported: the file's name, its text and its format.
struct Src<'a> {
    file: &'a str,
    text: &'a str,
    format: Format,
    /// Whether names must follow the names rule: files as given now, not the text of a
    /// campaign stored before the rule existed (that must still replay).
    names: bool,
}

impl Src<'_> {
    fn err(&self, path: DocPath, msg: impl Into<String>, help: impl Into<String>) -> Diagnostic {
        Diagnostic::at(self.file, self.text, locate(self.text, self.format, &path), msg).with_help(help)
    }

    fn parse<'t, T: Deserialize<'t>>(&'t self, what: &str) -> Result<T, Diagnostic> {
        match self.format {
            Format::Toml => toml::from_str(self.text).map_err(|e| {
                let msg = e.message().trim().to_string();
                Diagnostic::at(self.file, self.text, e.span(), msg.clone()).with_help(parse_help(&msg, what))
            }),
            Format::Json => serde_json::from_str(self.text).map_err(|e| {
                let full = e.to_string();
                let msg = match full.rfind(" at line ") {
                    Some(i) => full[..i].to_string(),
                    None => full,
                };
                let span = if e.line() == 0 {
                    None
                } else {
                    let off = offset_of(self.text, e.line(), e.column());
                    // serde_json points just past the offending token; step back onto it.
                    let start = off.saturating_sub(1);
                    Some(start..off)
                };
                Diagnostic::at(self.file, self.text, span, msg.clone()).with_help(parse_help(&msg, what))
            }),
        }
    }
}

fn parse_help(msg: &str, what: &str) -> String {
    if msg.starts_with("unknown field") {
        format!("remove it or fix its spelling; DESIGN.md §Formats lists the keys of a {what} file")
    } else if msg.starts_with("missing field") {
        format!("add it: every {what} file needs it")
    } else if msg.contains("expected a string") {
        "quote the value, e.g. version = \"1.0\"".into()
    } else if msg.contains("duplicate key") {
        "each key may appear once per table".into()
    } else if msg.contains("unknown variant") {
        "use one of the values listed".into()
    } else {
        format!("fix the {what} file at this place")
    }
}

/// What is wrong with a name, by DESIGN.md's rule: 1-63 characters of `a-z A-Z 0-9 . _ -`,
/// starting with a letter or digit; a node's name is also a DNS name (it is in the node's
/// certificate and is the TLS server name the orchestrator reaches it by): no `_`, and every
/// dot-separated label non-empty and neither starting nor ending with `-`. Names reach command
/// lines (HAProxy's socket, where `;` separates commands), file names and step ids, so nothing
/// else gets through.
pub fn name_problem(name: &str, dns: bool) -> Option<String> {
    let len = name.chars().count();
    if len == 0 || len > 63 {
        return Some(format!("is {len} characters long; names are 1 to 63"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c))) {
        return Some(format!("has {c:?}; names are letters, digits, '.', '_' and '-' only"));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Some("must start with a letter or a digit".into());
    }
    if dns {
        // The URL parser takes a host whose last label is a number (decimal or 0x hex) for an
        // IPv4 address: the orchestrator would then skip the fleet file's address.
        let last = name.rsplit('.').next().unwrap_or(name);
        let hex = last.strip_prefix("0x").or_else(|| last.strip_prefix("0X"));
        if last.chars().all(|c| c.is_ascii_digit())
            || hex.is_some_and(|h| h.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return Some("ends in a number, so it reads as an address, not a DNS name".into());
        }
        if name.eq_ignore_ascii_case("ca") || name.eq_ignore_ascii_case("orchestrator") {
            return Some("is reserved for the CA's and the orchestrator's certificates".into());
        }
        if name.contains('_') {
            return Some("has '_', which a DNS name (a node's certificate names it) may not".into());
        }
        if name.split('.').any(|l| l.is_empty() || l.starts_with('-') || l.ends_with('-')) {
            return Some(
                "is not a DNS name: every dot-separated part must be non-empty and not start or end with '-'"
                    .into(),
            );
        }
    }
    None
}

/// The diagnostic for a bad name of `kind` at `path`.
fn bad_name(src: &Src, path: DocPath, kind: &str, name: &str, dns: bool) -> Result<(), Diagnostic> {
    if !src.names {
        return Ok(());
    }
    match name_problem(name, dns) {
        None => Ok(()),
        Some(why) => Err(src.err(
            path,
            format!("{kind} name {name:?} {why}"),
            if dns {
                "rename it with letters, digits, '-' and '.' (e.g. web-01)"
            } else {
                "rename it with letters, digits, '.', '_' and '-' (e.g. web-01)"
            },
        )),
    }
}

/// Parses and validates a fleet file (TOML or JSON by `file`'s extension).
pub fn load_fleet(file: &str, text: &str) -> Result<Fleet, Diagnostic> {
    let src = Src { file, text, format: Format::from_path(file), names: true };
    let raw: RawFleet = src.parse("fleet")?;
    validate_fleet(raw, &src)
}

/// As [`load_fleet`], for a fleet file stored with a campaign (in the orchestrator's journal)
/// before the names rule: everything is checked but the names, so that campaign still replays.
pub fn load_stored_fleet(file: &str, text: &str) -> Result<Fleet, Diagnostic> {
    let src = Src { file, text, format: Format::from_path(file), names: false };
    let raw: RawFleet = src.parse("fleet")?;
    validate_fleet(raw, &src)
}

fn validate_fleet(raw: RawFleet<'_>, src: &Src) -> Result<Fleet, Diagnostic> {
    let root = DocPath::root;
    if raw.name.trim().is_empty() {
        return Err(src.err(root().key("name"), "the fleet's name is empty", "give the fleet a name"));
    }
    bad_name(src, root().key("name"), "fleet", &raw.name, false)?;
    let mut seen = HashSet::new();
    for (i, v) in raw.versions.iter().enumerate() {
        if !seen.insert(v.as_str()) {
            return Err(src.err(
                root().key("versions").idx(i),
                format!("version {v} appears twice in the version chain"),
                "list each version once, oldest first",
            ));
        }
    }
    let chain = |v: &str| raw.versions.is_empty() || raw.versions.iter().any(|x| x == v);
    let chain_text = raw.versions.join(" → ");
    if let Some(level) = &raw.functional_level {
        if !chain(level) {
            return Err(src.err(
                root().key("functional_level"),
                format!("functional_level {level} is not in the version chain ({chain_text})"),
                "add it to `versions` or fix the level",
            ));
        }
    }

    let mut by_name: HashMap<String, NodeId> = HashMap::with_capacity(raw.nodes.len());
    let mut nodes = Vec::with_capacity(raw.nodes.len());
    for (i, n) in raw.nodes.into_iter().enumerate() {
        let p = || root().key("node").idx(i);
        if n.name.trim().is_empty() {
            return Err(src.err(p().key("name"), "a node's name is empty", "give every node a unique name"));
        }
        bad_name(src, p().key("name"), "node", &n.name, true)?;
        if let Some(v) = &n.version {
            if !chain(v) {
                return Err(src.err(
                    p().key("version"),
                    format!(
                        "node {} is at version {v}, which is not in the version chain ({chain_text})",
                        n.name
                    ),
                    "add the version to `versions` or fix the node's version",
                ));
            }
        }
        if by_name.insert(n.name.clone(), i as NodeId).is_some() {
            return Err(src.err(
                p().key("name"),
                format!("node name {} is used twice", n.name),
                "node names must be unique; rename one of them",
            ));
        }
        nodes.push(Node {
            name: n.name,
            address: n.address,
            update_domain: n.update_domain,
            fault_domain: n.fault_domain,
            version: n.version,
            capacity: n.capacity,
            labels: n.labels,
        });
    }

    let mut memberships: Vec<Vec<u32>> = vec![Vec::new(); nodes.len()];
    // Which service last listed each node: finds a member listed twice without hashing.
    let mut listed_by = vec![u32::MAX; nodes.len()];
    let mut services = Vec::with_capacity(raw.services.len());
    let mut service_names = HashSet::new();
    for (si, s) in raw.services.into_iter().enumerate() {
        let p = || root().key("service").idx(si);
        bad_name(src, p().key("name"), "service", &s.name, false)?;
        if !service_names.insert(s.name.clone()) {
            return Err(src.err(
                p().key("name"),
                format!("service name {} is used twice", s.name),
                "service names must be unique",
            ));
        }
        let members: Vec<NodeId> = match (&s.nodes, &s.selector) {
            (Some(_), Some(_)) => {
                return Err(src.err(
                    p().key("selector"),
                    format!("service {} has both `nodes` and `selector`", s.name),
                    "keep one of them",
                ))
            }
            (None, None) => {
                return Err(src.err(
                    p().key("name"),
                    format!("service {} has no members", s.name),
                    "add `nodes = [...]` or `selector = \"role=web\"`",
                ))
            }
            (Some(list), None) => {
                let mut ids = Vec::with_capacity(list.len());
                for (j, m) in list.iter().enumerate() {
                    let Some(&id) = by_name.get(m.0.as_ref()) else {
                        return Err(src.err(
                            p().key("nodes").idx(j),
                            format!("service {} lists {}, which is not a node of this fleet", s.name, m.0),
                            "add a [[node]] with that name or fix the member's name",
                        ));
                    };
                    if std::mem::replace(&mut listed_by[id as usize], si as u32) == si as u32 {
                        return Err(src.err(
                            p().key("nodes").idx(j),
                            format!("service {} lists {} twice", s.name, m.0),
                            "list each member once",
                        ));
                    }
                    ids.push(id);
                }
                ids
            }
            (None, Some(sel)) => {
                let terms = parse_selector(sel).map_err(|e| {
                    src.err(
                        p().key("selector"),
                        e.to_string(),
                        "write a selector as key=value pairs joined by commas, e.g. \"role=web,rack=r1\"",
                    )
                })?;
                let ids: Vec<NodeId> = nodes
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| {
                        terms.iter().all(|(k, v)| n.labels.get(*k).map(|x| x == v).unwrap_or(false))
                    })
                    .map(|(i, _)| i as NodeId)
                    .collect();
                if ids.is_empty() {
                    return Err(src.err(
                        p().key("selector"),
                        format!("selector {sel} of service {} matches no node", s.name),
                        "check the labels of the nodes or the selector's spelling",
                    ));
                }
                ids
            }
        };
        let n = members.len();
        let rule = match (s.max_unavailable, s.min_available) {
            (Some(_), Some(_)) => {
                return Err(src.err(
                    p().key("min_available"),
                    format!("service {} sets both max_unavailable and min_available", s.name),
                    "keep one of them",
                ))
            }
            (Some(a), None) => Rule::MaxUnavailable(a),
            (None, Some(a)) => {
                if let Amount::Count(m) = a {
                    if m as usize > n {
                        return Err(src.err(
                            p().key("min_available"),
                            format!("service {} needs {m} members available but has only {n}", s.name),
                            format!("use at most {n}, or add members"),
                        ));
                    }
                }
                Rule::MinAvailable(a)
            }
            (None, None) => Rule::MaxUnavailable(Amount::Count(1)),
        };
        let allowance = allowance(&rule, s.quorum, n) as u32;
        for &m in &members {
            memberships[m as usize].push(si as u32);
        }
        if let Some(h) = &s.haproxy {
            // Both reach HAProxy's command line (`set server BACKEND/SERVER ...`), where `;`
            // separates commands.
            bad_name(src, p().key("haproxy").key("backend"), "HAProxy backend", &h.backend, false)?;
            if let Some(server) = &h.server {
                bad_name(
                    src,
                    p().key("haproxy").key("server"),
                    "HAProxy server",
                    &server.replace("{node}", "n"),
                    false,
                )?;
            }
        }
        let haproxy = s.haproxy.map(|h| crate::model::Haproxy {
            socket: h.socket,
            backend: h.backend,
            server: h.server.unwrap_or_else(|| "{node}".into()),
            drain_timeout: h.drain_timeout.map(|d| d.ms()).unwrap_or(300_000),
        });
        services.push(Service { name: s.name, members, rule, quorum: s.quorum, allowance, haproxy });
    }

    let mut workloads = Vec::with_capacity(raw.workloads.len());
    let mut wnames = HashSet::new();
    for (wi, w) in raw.workloads.into_iter().enumerate() {
        let p = || root().key("workload").idx(wi);
        bad_name(src, p().key("name"), "workload", &w.name, false)?;
        if !wnames.insert(w.name.clone()) {
            return Err(src.err(
                p().key("name"),
                format!("workload name {} is used twice", w.name),
                "workload names must be unique",
            ));
        }
        let Some(&node) = by_name.get(w.node.as_str()) else {
            return Err(src.err(
                p().key("node"),
                format!("workload {} is on {}, which is not a node of this fleet", w.name, w.node),
                "fix the node's name or add a [[node]] with it",
            ));
        };
        let preferred = match &w.preferred {
            None => node,
            Some(p_) => match by_name.get(p_.as_str()) {
                Some(&n) => n,
                None => {
                    return Err(src.err(
                        p().key("preferred"),
                        format!("workload {} prefers {p_}, which is not a node of this fleet", w.name),
                        "fix the node's name, or leave preferred out (the node it is on)",
                    ))
                }
            },
        };
        workloads.push(Workload { name: w.name, node, demand: w.demand, movable: w.movable, preferred });
    }

    Ok(Fleet {
        name: raw.name,
        versions: raw.versions,
        functional_level: raw.functional_level,
        nodes,
        services,
        workloads,
        memberships,
        by_name,
    })
}

/// Why a service's `selector` could not be read. `term` is the offending term, trimmed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum SelectorError {
    #[error("selector term `{term}` has no `=`")]
    NoEquals { term: String },
    #[error("selector term `{term}` has no label name")]
    NoLabel { term: String },
}

fn parse_selector(sel: &str) -> Result<Vec<(&str, &str)>, SelectorError> {
    let mut out = Vec::new();
    for term in sel.split(',') {
        let Some((k, v)) = term.split_once('=') else {
            return Err(SelectorError::NoEquals { term: term.trim().into() });
        };
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() {
            return Err(SelectorError::NoLabel { term: term.trim().into() });
        }
        out.push((k, v));
    }
    Ok(out)
}

/// Parses and validates a campaign file against its fleet.
pub fn load_campaign(file: &str, text: &str, fleet: &Fleet) -> Result<CampaignSpec, Diagnostic> {
    let src = Src { file, text, format: Format::from_path(file), names: true };
    let raw: RawCampaign = src.parse("campaign")?;
    validate_campaign(raw, &src, fleet)
}

/// As [`load_campaign`], for a campaign file stored before the names rule (see
/// [`load_stored_fleet`]).
pub fn load_stored_campaign(file: &str, text: &str, fleet: &Fleet) -> Result<CampaignSpec, Diagnostic> {
    let src = Src { file, text, format: Format::from_path(file), names: false };
    let raw: RawCampaign = src.parse("campaign")?;
    validate_campaign(raw, &src, fleet)
}

fn validate_campaign(raw: RawCampaign, src: &Src, fleet: &Fleet) -> Result<CampaignSpec, Diagnostic> {
    let root = DocPath::root;
    if raw.name.trim().is_empty() {
        return Err(src.err(root().key("name"), "the campaign's name is empty", "give the campaign a name"));
    }
    bad_name(src, root().key("name"), "campaign", &raw.name, false)?;
    if raw.action.trim().is_empty() {
        return Err(src.err(
            root().key("action"),
            "the action is empty",
            "name the agent action to run, e.g. \"upgrade\"",
        ));
    }
    check_target(&raw.target_version, fleet)
        .map_err(|e| src.err(root().key("target_version"), e.to_string(), e.help()))?;
    if raw.max_parallel.of_ceil(1) == 0 {
        return Err(src.err(
            root().key("max_parallel"),
            format!("max_parallel {} would never let a node start", raw.max_parallel),
            "use 1 or more, or a percentage above 0%",
        ));
    }
    let ids = |key: &str, list: &[String]| -> Result<Vec<NodeId>, Diagnostic> {
        let mut out = Vec::with_capacity(list.len());
        let mut seen = HashSet::new();
        for (i, n) in list.iter().enumerate() {
            let Some(id) = fleet.node_id(n) else {
                return Err(src.err(
                    root().key(key).idx(i),
                    format!("{n} in `{key}` is not a node of fleet {}", fleet.name),
                    "fix the name or add the node to the fleet file",
                ));
            };
            if !seen.insert(id) {
                return Err(src.err(
                    root().key(key).idx(i),
                    format!("{n} is listed twice in `{key}`"),
                    "list each node once",
                ));
            }
            out.push(id);
        }
        Ok(out)
    };
    let mut nodes = match &raw.nodes {
        Some(list) => Some(ids("nodes", list)?),
        None => None,
    };
    if let Some(sel) = &raw.select {
        let picked: Vec<NodeId> = (0..fleet.nodes.len() as NodeId)
            .filter(|&n| {
                let node = &fleet.nodes[n as usize];
                let within = |list: &Option<Vec<u32>>, d: Option<u32>| {
                    list.as_ref().is_none_or(|l| d.is_some_and(|d| l.contains(&d)))
                };
                within(&sel.update_domain, node.update_domain)
                    && within(&sel.fault_domain, node.fault_domain)
                    && sel.labels.iter().all(|(k, v)| node.labels.get(k) == Some(v))
            })
            .collect();
        if picked.is_empty() {
            return Err(src.err(
                root().key("select"),
                format!("select matches no node of fleet {}", fleet.name),
                "check its update domains, fault domains and labels against the fleet file",
            ));
        }
        let mut all = nodes.take().unwrap_or_default();
        for n in picked {
            if !all.contains(&n) {
                all.push(n);
            }
        }
        nodes = Some(all);
    }
    if raw.walk.is_some() && raw.strategy != Strategy::DomainWalk {
        return Err(src.err(
            root().key("walk"),
            format!("walk is for strategy = \"domain-walk\"; this campaign's is {}", raw.strategy),
            "remove `walk`, or set strategy = \"domain-walk\"",
        ));
    }
    // Percentages are of the targeted nodes, rounded down (the stricter way).
    let targeted = nodes.as_ref().map_or(fleet.nodes.len(), Vec::len);
    let floor = |a: Amount| a.of_floor(targeted).min(u32::MAX as usize) as u32;
    let max_failed_nodes = floor(raw.max_failed_nodes);
    let max_unhealthy = raw.max_unhealthy.map(floor);
    let order = ids("order", &raw.order)?;
    if let Some(only) = &nodes {
        let set: HashSet<_> = only.iter().collect();
        if let Some((i, &n)) = order.iter().enumerate().find(|(_, n)| !set.contains(n)) {
            return Err(src.err(
                root().key("order").idx(i),
                format!("{} is in `order` but not in `nodes`", fleet.node_name(n)),
                "add it to `nodes` or remove it from `order`",
            ));
        }
    }
    for (i, url) in raw.webhooks.iter().enumerate() {
        let ok =
            ["http://", "https://"].iter().any(|p| url.strip_prefix(p).is_some_and(|rest| !rest.is_empty()));
        if !ok {
            return Err(src.err(
                root().key("webhooks").idx(i),
                format!("webhook `{url}` is not an http:// or https:// URL"),
                "write it like \"https://hooks.example.com/baton\"",
            ));
        }
    }
    let windows = campaign_windows(&raw, src)?;
    let schedule = match &raw.schedule {
        None => None,
        Some(rule) => {
            let zone = raw.timezone.as_deref().unwrap_or("UTC");
            Some(crate::schedule::Schedule::new(rule, zone).map_err(|e| {
                src.err(
                    root().key("schedule"),
                    format!("schedule: {e}"),
                    "write five cron fields, minute hour day-of-month month day-of-week, e.g. \"0 3 * * TUE#2\" (03:00 on the second Tuesday of each month)",
                )
            })?)
        }
    };
    if !raw.before_start.is_empty() {
        if raw.before_start[0].trim().is_empty() {
            return Err(src.err(
                root().key("before_start").idx(0),
                "before_start names no program",
                "write the program's path first, e.g. before_start = [\"/usr/local/bin/backup-fleet\", \"{campaign}\"]",
            ));
        }
        for (i, arg) in raw.before_start.iter().enumerate() {
            if let Some(bad) = unknown_placeholder(arg, &["campaign", "fleet", "target"]) {
                return Err(src.err(
                    root().key("before_start").idx(i),
                    format!("placeholder {{{bad}}} is unknown in before_start"),
                    "use {campaign}, {fleet} or {target}",
                ));
            }
        }
    }
    if let Some(a) = &raw.after_commit_action {
        if a.trim().is_empty() {
            return Err(src.err(
                root().key("after_commit_action"),
                "after_commit_action is empty",
                "name the agent action to run on every node once the campaign is committed, e.g. \"config-version\", or remove the key",
            ));
        }
    }
    if raw.mixed_mode_limit == Some(Dur(0)) {
        return Err(src.err(
            root().key("mixed_mode_limit"),
            "mixed_mode_limit is 0: the fleet would be overdue the moment a node is updated",
            "write how long the fleet may run at two versions before it is committed or rolled back, e.g. \"4w\"",
        ));
    }
    Ok(CampaignSpec {
        name: raw.name,
        target_version: raw.target_version,
        action: raw.action,
        strategy: raw.strategy,
        max_parallel: raw.max_parallel,
        max_failed_nodes,
        max_retries_per_node: raw.max_retries_per_node,
        reboot_timeout: raw.reboot_timeout.ms(),
        health_wait: raw.health_wait.ms(),
        health_stable: raw.health_stable.ms(),
        ready_timeout: raw.ready_timeout.ms(),
        on_ready_timeout: raw.on_ready_timeout,
        on_precheck_fail: raw.on_precheck_fail,
        stop_grace: raw.stop_grace.ms(),
        pause_between_waves: raw.pause_between_waves.ms(),
        nodes,
        order,
        webhooks: raw.webhooks,
        expected: Default::default(),
        windows,
        require_all_up: raw.require_all_up,
        before_start: raw.before_start,
        schedule,
        mixed_mode_limit: raw.mixed_mode_limit.map(Dur::ms),
        after_commit_action: raw.after_commit_action,
        walk: raw.walk.unwrap_or_default(),
        max_unhealthy,
    })
}

/// The first `{name}` in `arg` that is not one of `allowed`.
fn unknown_placeholder<'a>(arg: &'a str, allowed: &[&str]) -> Option<&'a str> {
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else { break };
        let name = &rest[open + 1..open + close];
        if !allowed.contains(&name) {
            return Some(name);
        }
        rest = &rest[open + close + 1..];
    }
    None
}

/// `before_start` with its placeholders filled.
pub fn fill_before_start(spec: &CampaignSpec, fleet: &Fleet) -> Vec<String> {
    let vars = [
        ("{campaign}", spec.name.as_str()),
        ("{fleet}", fleet.name.as_str()),
        ("{target}", spec.target_version.as_str()),
    ];
    spec.before_start.iter().map(|a| vars.iter().fold(a.clone(), |acc, (k, v)| acc.replace(k, v))).collect()
}

/// The campaign's maintenance windows in its time zone (none: nodes may start at any time).
fn campaign_windows(raw: &RawCampaign, src: &Src) -> Result<Option<crate::window::Windows>, Diagnostic> {
    use crate::window::{parse_days, parse_time_of_day, Window, Windows, MAX_LENGTH};
    let root = DocPath::root;
    let zone = raw.timezone.as_deref().unwrap_or("UTC");
    if let Err(e) = crate::window::zone(zone) {
        return Err(src.err(
            root().key("timezone"),
            e.to_string(),
            "use an IANA time zone name such as \"Europe/Berlin\", \"America/New_York\" or \"UTC\"",
        ));
    }
    if raw.windows.is_empty() {
        return Ok(None);
    }
    let mut spans = Vec::with_capacity(raw.windows.len());
    for (i, w) in raw.windows.iter().enumerate() {
        let at = |k: &str| root().key("windows").idx(i).key(k);
        let days = parse_days(&w.days).map_err(|e| {
            src.err(
                at("days"),
                format!("window {}: {e}", i + 1),
                "write days like \"Sat,Sun\", \"Mon-Fri\" or \"*\" for every day",
            )
        })?;
        let start = parse_time_of_day(&w.start).map_err(|e| {
            src.err(
                at("start"),
                format!("window {}: {e}", i + 1),
                "write the local start time as HH:MM, e.g. \"02:00\"",
            )
        })?;
        let length = w.length.ms();
        if length == 0 {
            return Err(src.err(
                at("length"),
                format!("window {} never opens: its length is 0", i + 1),
                "give it a length such as \"4h\"",
            ));
        }
        if length > MAX_LENGTH {
            return Err(src.err(
                at("length"),
                format!("window {} is longer than a week", i + 1),
                "use at most \"7d\", or remove `windows` to let nodes start at any time",
            ));
        }
        spans.push(Window { days, start, length });
    }
    Ok(Some(Windows::new(zone, spans).expect("zone checked above")))
}

/// Why a campaign's `target_version` cannot be rolled out to its fleet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum TargetError {
    #[error("target_version {target} is not in fleet {fleet}'s version chain ({chain})")]
    NotInChain { target: String, fleet: String, chain: String },
    #[error("fleet {fleet} is already at functional level {target}")]
    AlreadyAtLevel { target: String, fleet: String },
    /// `next` is the version after the level, when the chain has one.
    #[error("target_version {target} is older than the functional level {level}, which is committed and cannot be undone")]
    OlderThanLevel { target: String, level: String, next: Option<String> },
    /// `path` is the chain from the functional level to the target, joined by arrows.
    #[error("target_version {target} skips versions: {path}")]
    SkipsVersions { target: String, path: String, next: String },
}

impl TargetError {
    /// What to do about it.
    fn help(&self) -> String {
        match self {
            TargetError::NotInChain { .. } => {
                "add it to `versions` in the fleet file, or pick a version of the chain".into()
            }
            TargetError::AlreadyAtLevel { .. } => {
                "nothing to do; target the next version of the chain".into()
            }
            TargetError::OlderThanLevel { next, .. } => {
                format!("target {}", next.as_deref().unwrap_or("a newer version"))
            }
            TargetError::SkipsVersions { next, .. } => format!("run a campaign to {next} first"),
        }
    }
}

/// The target must be in the chain and be the next version after the functional level.
fn check_target(target: &str, fleet: &Fleet) -> Result<(), TargetError> {
    if fleet.versions.is_empty() {
        return Ok(());
    }
    let Some(t) = fleet.version_rank(target) else {
        return Err(TargetError::NotInChain {
            target: target.into(),
            fleet: fleet.name.clone(),
            chain: fleet.versions.join(" → "),
        });
    };
    let Some(level) = &fleet.functional_level else {
        return Ok(());
    };
    let l = fleet.version_rank(level).unwrap_or(0);
    if t == l {
        return Err(TargetError::AlreadyAtLevel { target: target.into(), fleet: fleet.name.clone() });
    }
    if t < l {
        return Err(TargetError::OlderThanLevel {
            target: target.into(),
            level: level.clone(),
            next: fleet.versions.get(l + 1).cloned(),
        });
    }
    if t > l + 1 {
        return Err(TargetError::SkipsVersions {
            target: target.into(),
            path: fleet.versions[l..=t].join(" → "),
            next: fleet.versions[l + 1].clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(extra: &str) -> Result<Fleet, Diagnostic> {
        let text = format!(
            "name = \"f\"\nversions = [\"1\", \"2\", \"3\"]\nfunctional_level = \"1\"\n\
             [[node]]\nname = \"a\"\nlabels = {{ role = \"web\" }}\n{extra}"
        );
        load_fleet("fleet.toml", &text)
    }

    #[test]
    fn selector_errors_keep_their_messages() {
        assert_eq!(parse_selector("role=web, rack = r1"), Ok(vec![("role", "web"), ("rack", "r1")]));
        assert_eq!(parse_selector("role"), Err(SelectorError::NoEquals { term: "role".into() }));
        assert_eq!(parse_selector("a=b, =web"), Err(SelectorError::NoLabel { term: "=web".into() }));
        let d = fleet("[[service]]\nname = \"s\"\nselector = \"role=web, rack\"\n").unwrap_err();
        assert_eq!(d.message, "selector term `rack` has no `=`");
        let d = fleet("[[service]]\nname = \"s\"\nselector = \" = web\"\n").unwrap_err();
        assert_eq!(d.message, "selector term `= web` has no label name");
    }

    #[test]
    fn target_errors_keep_their_messages_and_help() {
        let f = fleet("").unwrap();
        let d = |target: &str| {
            let text = format!("name = \"c\"\ntarget_version = \"{target}\"\n");
            let d = load_campaign("c.toml", &text, &f).unwrap_err();
            (d.message, d.help.unwrap_or_default())
        };
        assert_eq!(
            d("9"),
            (
                "target_version 9 is not in fleet f's version chain (1 → 2 → 3)".into(),
                "add it to `versions` in the fleet file, or pick a version of the chain".into()
            )
        );
        assert_eq!(
            d("1"),
            (
                "fleet f is already at functional level 1".into(),
                "nothing to do; target the next version of the chain".into()
            )
        );
        assert_eq!(
            d("3"),
            ("target_version 3 skips versions: 1 → 2 → 3".into(), "run a campaign to 2 first".into())
        );
        let mut f2 = f.clone();
        f2.functional_level = Some("2".into());
        assert_eq!(
            check_target("1", &f2),
            Err(TargetError::OlderThanLevel {
                target: "1".into(),
                level: "2".into(),
                next: Some("3".into())
            })
        );
        assert_eq!(
            check_target("1", &f2).unwrap_err().to_string(),
            "target_version 1 is older than the functional level 2, which is committed and cannot be undone"
        );
        assert_eq!(check_target("1", &f2).unwrap_err().help(), "target 3");
        assert_eq!(check_target("2", &f), Ok(()));
    }
}
