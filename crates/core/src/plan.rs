//! The planner: waves of nodes that may be down together without breaking any rule.
//!
//! Waves are built first-fit over a priority order (the campaign's `order`, then the nodes of
//! the most constrained services first). Per service and per wave the planner keeps member
//! counts, and per service a pointer to the first wave that still has room, so placing a node
//! costs about its number of memberships. First fit keeps update domains together but can spill
//! the last nodes into a wave above the bound; then a balanced placement (each node, most
//! constrained first, into the wave where its services have the fewest members) is tried, first
//! following update domains, then not, and kept when it has fewer waves. When workloads must move and nodes have capacity, a
//! second pass walks the waves in order, places each drained node's workloads on nodes that stay
//! up (preferring nodes already updated, so a workload moves once), and pushes a node to a later
//! wave when its workloads do not fit.

use crate::model::*;
use crate::units::Millis;
use std::cmp::Reverse;
use std::collections::HashMap;

/// The result of planning a campaign.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub campaign: String,
    pub strategy: Strategy,
    pub waves: Vec<Vec<NodeId>>,
    /// Targeted nodes that need no update, with the reason.
    pub skipped: Vec<(NodeId, String)>,
    /// No plan can have fewer waves than this.
    pub lower_bound: usize,
    /// The constraint that gives the lower bound, in words.
    pub binding: String,
    /// Nodes that may be in service work at once (max_parallel resolved; 1 for one-at-a-time).
    pub max_parallel: usize,
    /// For `continuous`: the order in which nodes start as room allows, most critical first
    /// (the waves only show that a grouping within the bound exists). Empty: the waves' order.
    pub start: Vec<NodeId>,
}

impl Plan {
    /// Nodes to update, in the order the plan starts them.
    pub fn order(&self) -> Box<dyn Iterator<Item = NodeId> + '_> {
        if self.start.is_empty() {
            Box::new(self.waves.iter().flatten().copied())
        } else {
            Box::new(self.start.iter().copied())
        }
    }
    pub fn to_update(&self) -> usize {
        self.waves.iter().map(Vec::len).sum()
    }
}

/// Why a campaign can never run: the rules can never be met.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Infeasible {
    /// The service or workload at fault.
    pub subject: String,
    pub message: String,
    pub help: String,
}

/// Nodes the campaign targets, split into those to update and those already at the target.
pub fn targets(fleet: &Fleet, spec: &CampaignSpec) -> (Vec<NodeId>, Vec<(NodeId, String)>) {
    let all: Vec<NodeId> = match &spec.nodes {
        Some(list) => list.clone(),
        None => (0..fleet.nodes.len() as NodeId).collect(),
    };
    let mut update = Vec::with_capacity(all.len());
    let mut skipped = Vec::new();
    for n in all {
        if fleet.nodes[n as usize].version.as_deref() == Some(spec.target_version.as_str()) {
            skipped.push((n, format!("already at {}", spec.target_version)));
        } else {
            update.push(n);
        }
    }
    (update, skipped)
}

/// `max_parallel` resolved against the nodes to update (at least 1).
pub fn resolve_parallel(spec: &CampaignSpec, to_update: usize) -> usize {
    if spec.strategy == Strategy::OneAtATime {
        return 1;
    }
    spec.max_parallel.of_ceil(to_update).max(1)
}

/// How the planner decides, by the journal schema a campaign was created under: a journal of
/// schema 1 holds no plan, so replaying it plans again, and must plan exactly as baton did then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rules {
    /// Schema 1: nodes by their tightest service only, first fit, waves' order at run time.
    V1,
    /// Now: critical chains and learned times first, balanced placement when first fit spills,
    /// a start order for `continuous`.
    Current,
}

pub fn plan(fleet: &Fleet, spec: &CampaignSpec) -> Result<Plan, Infeasible> {
    plan_by(fleet, spec, Rules::Current)
}

pub fn plan_by(fleet: &Fleet, spec: &CampaignSpec, rules: Rules) -> Result<Plan, Infeasible> {
    let (update, skipped) = targets(fleet, spec);
    plan_nodes(fleet, spec, rules, update, skipped)
}

/// The plan of the after-commit pass (`after_commit_action`): every node of the fleet, under
/// the campaign's rules and strategy, none skipped for its version (they are all at the level).
pub fn plan_after_commit(fleet: &Fleet, spec: &CampaignSpec) -> Result<Plan, Infeasible> {
    let every = (0..fleet.nodes.len() as NodeId).collect();
    plan_nodes(fleet, spec, Rules::Current, every, Vec::new())
}

fn plan_nodes(
    fleet: &Fleet,
    spec: &CampaignSpec,
    rules: Rules,
    update: Vec<NodeId>,
    skipped: Vec<(NodeId, String)>,
) -> Result<Plan, Infeasible> {
    let p = resolve_parallel(spec, update.len());
    let mut in_update = vec![false; fleet.nodes.len()];
    for &n in &update {
        in_update[n as usize] = true;
    }
    // Members to update per service.
    let todo = members_to_update(fleet, &update);
    for (s, svc) in fleet.services.iter().enumerate() {
        if todo[s] > 0 && svc.allowance == 0 {
            return Err(Infeasible {
                subject: svc.name.clone(),
                message: format!(
                    "service {}: {} members and {}, so none may be down, but {} of them need the update",
                    svc.name,
                    svc.members.len(),
                    rule_words(svc),
                    todo[s]
                ),
                help: format!("relax the availability rule of service {} or add members to it", svc.name),
            });
        }
    }

    let order = priority(fleet, spec, &update, &todo, rules);
    // Domain-walk plans each update domain on its own (`order` is grouped by domain already);
    // the other strategies plan all nodes together.
    let groups: Vec<&[NodeId]> = if spec.strategy == Strategy::DomainWalk {
        order.chunk_by(|a, b| spec.walk_domain(fleet, *a) == spec.walk_domain(fleet, *b)).collect()
    } else {
        vec![&order[..]]
    };
    let mut capacity = needs_capacity_pass(fleet).then(|| CapacityState::new(fleet, &in_update));
    let mut waves: Vec<Vec<NodeId>> = Vec::new();
    for group in groups {
        let mut ff = FirstFit::new(fleet, p);
        for &n in group {
            if spec.strategy == Strategy::OneAtATime {
                ff.push_alone(n);
            } else {
                ff.insert(n, 0);
            }
        }
        // The capacity state before this group, for balanced tries, kept only when first fit
        // may be above the bound (None: no tries, when capacity counts).
        let before: Option<Option<CapacityState>> =
            (capacity.is_none() || ff.waves.len() > group.len().div_ceil(p.max(1))).then(|| capacity.clone());
        if let Some(state) = &mut capacity {
            capacity_pass(fleet, &mut ff, state)?;
        }
        // First fit keeps the priority order and update domains together, but can spill the
        // last nodes into a wave more than the bound. Then try balanced placements, and keep one
        // only if it has fewer waves. An explicit `order` keeps first fit: it says who goes first.
        // Waves at ⌈nodes / P⌉ are at the bound already (the cheap test spares computing it
        // for every update domain of a domain-walk).
        if rules == Rules::Current
            && spec.strategy != Strategy::OneAtATime
            && spec.order.is_empty()
            && waves_of(&ff) > group.len().div_ceil(p.max(1))
            && before.is_some()
        {
            let bound = group_bound(fleet, group, p);
            // At the bound itself, following update domains (without any, dealt in order) and
            // not; then once at one wave under the best so far, which gives services that must
            // put exactly their allowance in every wave at the bound some room.
            let mut tries = 0;
            while waves_of(&ff) > bound && tries < 3 {
                let (target, by_domain) = match tries {
                    0 => (bound, true),
                    1 => (bound, false),
                    _ => (waves_of(&ff) - 1, false),
                };
                tries += 1;
                if tries == 3 && target <= bound {
                    break;
                }
                let Some(mut bal) = balanced(fleet, p, group, target, by_domain) else { continue };
                let mut state = before.clone().flatten();
                if let Some(st) = &mut state {
                    if capacity_pass(fleet, &mut bal, st).is_err() {
                        continue;
                    }
                }
                if waves_of(&bal) < waves_of(&ff) {
                    ff = bal;
                    capacity = state;
                }
            }
        }
        waves.extend(ff.waves.into_iter().filter(|w| !w.is_empty()));
    }
    let (lower_bound, binding) = lower_bound(fleet, &update, &todo, p);
    Ok(Plan {
        campaign: spec.name.clone(),
        strategy: spec.strategy,
        waves,
        skipped,
        lower_bound,
        binding,
        max_parallel: p,
        start: if rules == Rules::Current && spec.strategy == Strategy::Continuous {
            searched_start(fleet, spec, order, p)
        } else {
            Vec::new()
        },
    })
}

/// The rule of a service in words: "max_unavailable 1", "min_available 3", "quorum".
pub fn rule_words(s: &Service) -> String {
    let r = match &s.rule {
        Rule::MaxUnavailable(a) => format!("max_unavailable {a}"),
        Rule::MinAvailable(a) => format!("min_available {a}"),
    };
    if s.quorum {
        format!("{r} with quorum")
    } else {
        r
    }
}

/// The order in which nodes are considered, and in which `continuous` starts them: `order`
/// first, then the most critical nodes, then by update domain and file order. For domain-walk,
/// update domains come first.
///
/// Critical means on long chains: a service whose members to update, one allowance at a time,
/// take long holds up the end of the campaign, so its members go first, and a node in several
/// such services (a quorum member that is also a web server) before a node in one. A chain's
/// length is its members' expected times (learned from earlier campaigns, `spec.expected`) over
/// its allowance, or its member count over its allowance when nothing was learned. A node's key
/// is the sum of its chains, then its longest chain, then its own expected time (longest first).
fn priority(
    fleet: &Fleet,
    spec: &CampaignSpec,
    update: &[NodeId],
    todo: &[usize],
    rules: Rules,
) -> Vec<NodeId> {
    let mut pos = vec![u32::MAX; fleet.nodes.len()];
    for (i, &n) in spec.order.iter().enumerate() {
        pos[n as usize] = i as u32;
    }
    let learned = rules == Rules::Current && !spec.expected.is_empty();
    // Nodes nothing was learned of count as the mean of those something was.
    let learned_time = learned_times(spec);
    let expected = |n: NodeId| if learned { learned_time(n) } else { 0 };
    // Per service, the length of its chain: time (or members) to update over its allowance.
    let mut chain = vec![0u64; fleet.services.len()];
    if learned {
        for &n in update {
            let e = expected(n);
            for &s in &fleet.memberships[n as usize] {
                chain[s as usize] = chain[s as usize].saturating_add(e);
            }
        }
        for (s, c) in chain.iter_mut().enumerate() {
            *c /= fleet.services[s].allowance.max(1) as u64;
        }
    } else {
        for (s, c) in chain.iter_mut().enumerate() {
            *c = todo[s].div_ceil(fleet.services[s].allowance.max(1) as usize) as u64;
        }
    }
    let tight = |n: NodeId| -> (u64, u64) {
        let mems = &fleet.memberships[n as usize];
        let sum = mems.iter().map(|&s| chain[s as usize]).fold(0u64, u64::saturating_add);
        let top = mems.iter().map(|&s| chain[s as usize]).max().unwrap_or(0);
        // Schema 1 ordered by the tightest service alone.
        if rules == Rules::V1 {
            (top, 0)
        } else {
            (sum, top)
        }
    };
    // The domain domain-walk walks (update domains unless `walk` says otherwise).
    let ud = |n: NodeId| spec.walk_domain(fleet, n).map(|u| u as u64).unwrap_or(u64::MAX);
    // For domain-walk, a domain goes earlier when it holds a node named in `order`.
    let mut ud_first = std::collections::HashMap::new();
    if spec.strategy == Strategy::DomainWalk {
        for &n in update {
            let e = ud_first.entry(ud(n)).or_insert(u32::MAX);
            *e = (*e).min(pos[n as usize]);
        }
    }
    let mut keyed: Vec<_> = update
        .iter()
        .map(|&n| {
            let group =
                if spec.strategy == Strategy::DomainWalk { (ud_first[&ud(n)], ud(n)) } else { (0, 0) };
            (group, pos[n as usize], Reverse(tight(n)), Reverse(expected(n)), ud(n), n)
        })
        .collect();
    keyed.sort_unstable();
    keyed.into_iter().map(|k| k.5).collect()
}

/// Each node's time out of service as learned from earlier campaigns; a node nothing was
/// learned of counts as the mean of those something was (at least 1 ms).
fn learned_times(spec: &CampaignSpec) -> impl Fn(NodeId) -> Millis + '_ {
    let mean = (spec.expected.values().fold(0u64, |a, &e| a.saturating_add(e))
        / spec.expected.len().max(1) as Millis)
        .max(1);
    move |n| spec.expected.get(&n).copied().unwrap_or(mean)
}

/// Up to this many targeted nodes, with learned times, continuous's start order is searched.
const SEARCHED_STARTS: usize = 64;
/// How many orders the search tries at most (each a list schedule of the targeted nodes).
const SEARCH_TRIES: usize = 2_000;

/// Continuous's start order. With each node's time learned from earlier campaigns, on a small
/// fleet, the critical-first order is improved by search: orders are tried by the makespan of
/// the list schedule continuous would run with them at the learned times ([`list_makespan`]),
/// first longest-first, then swaps of two nodes while one shortens it. Critical-first alone
/// runs each chain of one-at-a-time members back to back and leaves the shared tier's last
/// slot to the rest, which ends unbalanced (a web tier with two quorum services on it ended
/// 6% over its bound at the median); the search balances the slots. Not searched: an explicit
/// `order` (it says who goes first), nothing learned (every order looks alike), workloads to
/// move (where they would go is not modelled), or more nodes than [`SEARCHED_STARTS`].
fn searched_start(fleet: &Fleet, spec: &CampaignSpec, order: Vec<NodeId>, p: usize) -> Vec<NodeId> {
    if !spec.order.is_empty()
        || spec.expected.is_empty()
        || !fleet.workloads.is_empty()
        || order.len() > SEARCHED_STARTS
        || order.len() < 2
    {
        return order;
    }
    let learned_time = learned_times(spec);
    let mut time = vec![0; fleet.nodes.len()];
    for &n in &order {
        time[n as usize] = learned_time(n).max(1);
    }
    let mut best = order;
    let mut best_end = list_makespan(fleet, &best, &time, p);
    let mut longest = best.clone();
    longest.sort_by_key(|&n| Reverse(time[n as usize]));
    let end = list_makespan(fleet, &longest, &time, p);
    if end < best_end {
        (best, best_end) = (longest, end);
    }
    let mut tries = 2;
    loop {
        let mut shorter = false;
        for i in 0..best.len() {
            for j in i + 1..best.len() {
                let (a, b) = (best[i] as usize, best[j] as usize);
                if time[a] == time[b] && fleet.memberships[a] == fleet.memberships[b] {
                    continue; // the same order as far as the schedule can tell
                }
                if tries >= SEARCH_TRIES {
                    return best;
                }
                tries += 1;
                best.swap(i, j);
                let end = list_makespan(fleet, &best, &time, p);
                if end < best_end {
                    best_end = end;
                    shorter = true;
                } else {
                    best.swap(i, j);
                }
            }
        }
        if !shorter {
            return best;
        }
    }
}

/// When the last node of `order` is back, if continuous starts them as it does: at each moment,
/// the nodes not started yet, in order, start while they fit (`p` at once, each service's
/// allowance), and each is out for its `time`.
fn list_makespan(fleet: &Fleet, order: &[NodeId], time: &[Millis], p: usize) -> Millis {
    let mut down = vec![0u32; fleet.services.len()];
    let mut waiting = order.to_vec();
    let mut out: std::collections::BinaryHeap<Reverse<(Millis, NodeId)>> = Default::default();
    let mut now: Millis = 0;
    loop {
        waiting.retain(|&n| {
            let mems = &fleet.memberships[n as usize];
            if out.len() >= p.max(1)
                || mems.iter().any(|&s| down[s as usize] >= fleet.services[s as usize].allowance)
            {
                return true;
            }
            for &s in mems {
                down[s as usize] += 1;
            }
            out.push(Reverse((now.saturating_add(time[n as usize]), n)));
            false
        });
        let Some(Reverse((end, _))) = out.peek().copied() else {
            // Nothing out and nothing fits: no schedule (an allowance of 0 is refused earlier).
            return if waiting.is_empty() { now } else { Millis::MAX };
        };
        now = end;
        while let Some(&Reverse((e, n))) = out.peek() {
            if e != now {
                break;
            }
            out.pop();
            for &s in &fleet.memberships[n as usize] {
                down[s as usize] -= 1;
            }
        }
    }
}

fn waves_of(ff: &FirstFit) -> usize {
    ff.waves.iter().filter(|w| !w.is_empty()).count()
}

/// Per service, how many of `nodes` are its members.
fn members_to_update(fleet: &Fleet, nodes: &[NodeId]) -> Vec<usize> {
    let mut todo = vec![0usize; fleet.services.len()];
    for &n in nodes {
        for &s in &fleet.memberships[n as usize] {
            todo[s as usize] += 1;
        }
    }
    todo
}

/// The wave bound of one group of nodes planned together (all nodes, or one update domain).
fn group_bound(fleet: &Fleet, group: &[NodeId], p: usize) -> usize {
    lower_bound(fleet, group, &members_to_update(fleet, group), p).0
}

/// Up to this many waves, balanced placement scores every wave for each node.
const SCORED_WAVES: usize = 64;

/// Balanced placement into `target` waves: each node (in `nodes`' order, most constrained first)
/// goes into its preferred wave if it fits there, else into the wave that fits where its
/// services have the fewest members so far for their allowance (the least full wave, when the
/// waves are more than SCORED_WAVES), else into a new wave. With `by_domain`, a node's preferred
/// wave follows its update domain (the nodes sorted by domain are dealt over the waves in
/// order), so domains stay together where that costs no wave; without, the scoring spreads each
/// service's members evenly. Gives up (None) past a budget of about SCORED_WAVES times the
/// fleet's memberships, so the planner stays fast where the waves are many.
fn balanced<'a>(
    fleet: &'a Fleet,
    p: usize,
    nodes: &[NodeId],
    target: usize,
    by_domain: bool,
) -> Option<FirstFit<'a>> {
    let target = target.max(1);
    if target > u32::MAX as usize / 2 {
        return None;
    }
    let mut preferred = vec![u32::MAX; nodes.len()];
    if by_domain {
        let mut by_ud: Vec<(u64, NodeId, usize)> = nodes
            .iter()
            .enumerate()
            .map(|(i, &n)| (fleet.nodes[n as usize].update_domain.map(u64::from).unwrap_or(u64::MAX), n, i))
            .collect();
        by_ud.sort_unstable();
        for (r, &(_, _, i)) in by_ud.iter().enumerate() {
            preferred[i] = (r * target / nodes.len().max(1)) as u32;
        }
    }
    let mut ff = FirstFit::new(fleet, p);
    ff.waves = vec![Vec::new(); target];
    // Members per service and wave, dense, for scoring when the waves are few.
    let mut dense = (target <= SCORED_WAVES && fleet.services.len().saturating_mul(target) <= 1 << 24)
        .then(|| vec![0u32; fleet.services.len() * target]);
    let mut by_size: std::collections::BTreeSet<(u32, u32)> = (0..target as u32).map(|w| (0, w)).collect();
    // About what scoring every wave for every node costs at SCORED_WAVES waves, and a little.
    let work: u64 = nodes.iter().map(|&n| 1 + fleet.memberships[n as usize].len() as u64).sum();
    let mut budget: u64 = (SCORED_WAVES as u64 + 16) * work + 1_000_000;
    for (i, &n) in nodes.iter().enumerate() {
        let pick = if preferred[i] != u32::MAX && ff.fits(n, preferred[i]) {
            Some(preferred[i])
        } else if ff.waves.len() <= SCORED_WAVES {
            // Few waves: the one where this node's services have the fewest members yet (for
            // their allowance), so every service spreads evenly and keeps room in every wave.
            let mems = &fleet.memberships[n as usize];
            budget = budget.checked_sub((ff.waves.len() * (1 + mems.len())) as u64)?;
            let mut best: Option<(u64, u32, u32)> = None;
            'waves: for w in 0..ff.waves.len() as u32 {
                let size = ff.size(w);
                if size >= ff.p {
                    continue;
                }
                let mut load = 0u64;
                for &s in mems {
                    let c = match &dense {
                        Some(d) if (w as usize) < target => d[s as usize * target + w as usize],
                        _ => ff.count(s, w),
                    };
                    let allow = fleet.services[s as usize].allowance;
                    if c >= allow {
                        continue 'waves;
                    }
                    load += (u64::from(c) << 20) / u64::from(allow.max(1));
                }
                let key = (load, size, w);
                if best.is_none_or(|b| key < b) {
                    best = Some(key);
                }
            }
            best.map(|b| b.2)
        } else {
            let mut found = None;
            for &(size, w) in &by_size {
                if size >= ff.p {
                    break;
                }
                budget = budget.checked_sub(1 + fleet.memberships[n as usize].len() as u64)?;
                if ff.fits(n, w) {
                    found = Some(w);
                    break;
                }
            }
            found
        };
        let w = match pick {
            Some(w) => w,
            None => {
                ff.waves.push(Vec::new());
                ff.waves.len() as u32 - 1
            }
        };
        by_size.remove(&(ff.size(w), w));
        ff.place(n, w);
        by_size.insert((ff.size(w), w));
        if let Some(d) = &mut dense {
            if (w as usize) < target {
                for &s in &fleet.memberships[n as usize] {
                    d[s as usize * target + w as usize] += 1;
                }
            }
        }
    }
    Some(ff)
}

struct FirstFit<'a> {
    fleet: &'a Fleet,
    p: u32,
    waves: Vec<Vec<NodeId>>,
    /// Per service: (wave, members in it), sorted by wave.
    counts: Vec<Vec<(u32, u32)>>,
    /// Per service: no wave before this one has room.
    open: Vec<u32>,
    size_open: u32,
}

impl<'a> FirstFit<'a> {
    fn new(fleet: &'a Fleet, p: usize) -> Self {
        FirstFit {
            fleet,
            p: p.min(u32::MAX as usize) as u32,
            waves: Vec::new(),
            counts: vec![Vec::new(); fleet.services.len()],
            open: vec![0; fleet.services.len()],
            size_open: 0,
        }
    }

    fn count(&self, s: u32, w: u32) -> u32 {
        let c = &self.counts[s as usize];
        match c.binary_search_by_key(&w, |e| e.0) {
            Ok(i) => c[i].1,
            Err(_) => 0,
        }
    }

    fn size(&self, w: u32) -> u32 {
        self.waves.get(w as usize).map(|v| v.len() as u32).unwrap_or(0)
    }

    fn fits(&self, n: NodeId, w: u32) -> bool {
        self.size(w) < self.p
            && self.fleet.memberships[n as usize]
                .iter()
                .all(|&s| self.count(s, w) < self.fleet.services[s as usize].allowance)
    }

    fn push_alone(&mut self, n: NodeId) {
        self.waves.push(vec![n]);
    }

    /// Puts `n` into the first wave at or after `from` where it fits; returns that wave.
    fn insert(&mut self, n: NodeId, from: u32) -> u32 {
        let mems = &self.fleet.memberships[n as usize];
        let mut w = from.max(self.size_open);
        for &s in mems {
            w = w.max(self.open[s as usize]);
        }
        while !self.fits(n, w) {
            w += 1;
        }
        self.place(n, w);
        w
    }

    /// Puts `n` into wave `w` (the caller knows it fits), keeping counts and pointers.
    fn place(&mut self, n: NodeId, w: u32) {
        let mems = &self.fleet.memberships[n as usize];
        while self.waves.len() <= w as usize {
            self.waves.push(Vec::new());
        }
        self.waves[w as usize].push(n);
        for &s in mems {
            let c = &mut self.counts[s as usize];
            match c.binary_search_by_key(&w, |e| e.0) {
                Ok(i) => c[i].1 += 1,
                Err(i) => c.insert(i, (w, 1)),
            }
            let allow = self.fleet.services[s as usize].allowance;
            while self.count(s, self.open[s as usize]) >= allow {
                self.open[s as usize] += 1;
            }
        }
        while self.size(self.size_open) >= self.p {
            self.size_open += 1;
        }
    }

    fn remove(&mut self, n: NodeId, w: u32) {
        self.waves[w as usize].retain(|&x| x != n);
        for &s in &self.fleet.memberships[n as usize] {
            let c = &mut self.counts[s as usize];
            if let Ok(i) = c.binary_search_by_key(&w, |e| e.0) {
                c[i].1 -= 1;
            }
            self.open[s as usize] = self.open[s as usize].min(w);
        }
        self.size_open = self.size_open.min(w);
    }
}

fn needs_capacity_pass(fleet: &Fleet) -> bool {
    fleet.workloads.iter().any(|w| w.movable != Movable::None && w.demand > 0)
        && fleet.nodes.iter().any(|n| n.capacity.is_some())
}

/// Where workloads are, and how much of each node's capacity they use.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub at: Vec<NodeId>,
    pub used: Vec<u64>,
}

impl Placement {
    pub fn initial(fleet: &Fleet) -> Self {
        let mut used = vec![0u64; fleet.nodes.len()];
        for w in &fleet.workloads {
            used[w.node as usize] += w.demand;
        }
        Placement { at: fleet.workloads.iter().map(|w| w.node).collect(), used }
    }

    /// Finds homes for the movable workloads on `node`, on nodes for which `up(n)` holds,
    /// preferring nodes for which `settled(n)` holds (already updated or never to be), then the
    /// tightest fit. Applies nothing; returns the moves, or the workload that fits nowhere.
    pub fn find_moves(
        &self,
        fleet: &Fleet,
        node: NodeId,
        up: impl Fn(NodeId) -> bool,
        settled: impl Fn(NodeId) -> bool,
    ) -> Result<Vec<(u32, NodeId)>, u32> {
        let mut mine: Vec<u32> = (0..fleet.workloads.len() as u32)
            .filter(|&w| self.at[w as usize] == node && fleet.workloads[w as usize].movable != Movable::None)
            .collect();
        if mine.is_empty() {
            return Ok(Vec::new());
        }
        mine.sort_by_key(|&w| (Reverse(fleet.workloads[w as usize].demand), w));
        let mut extra: Vec<(NodeId, u64)> = Vec::new();
        let mut moves = Vec::with_capacity(mine.len());
        for w in mine {
            let demand = fleet.workloads[w as usize].demand;
            let mut best: Option<(bool, u64, NodeId)> = None;
            for (d, dn) in fleet.nodes.iter().enumerate() {
                let d = d as NodeId;
                if d == node || !up(d) {
                    continue;
                }
                let used =
                    self.used[d as usize] + extra.iter().filter(|e| e.0 == d).map(|e| e.1).sum::<u64>();
                let left = match dn.capacity {
                    None => u64::MAX,
                    Some(c) if c >= used + demand => c - used - demand,
                    Some(_) => continue,
                };
                let key = (!settled(d), left, d);
                if best.map(|b| key < b).unwrap_or(true) {
                    best = Some(key);
                }
            }
            match best {
                Some((_, _, d)) => {
                    extra.push((d, demand));
                    moves.push((w, d));
                }
                None => return Err(w),
            }
        }
        Ok(moves)
    }

    /// Whether `demand` more fits on node `n`.
    pub fn fits(&self, fleet: &Fleet, n: NodeId, demand: u64) -> bool {
        fleet.nodes[n as usize].capacity.is_none_or(|c| self.used[n as usize] + demand <= c)
    }

    pub fn apply(&mut self, fleet: &Fleet, moves: &[(u32, NodeId)]) {
        for &(w, to) in moves {
            let d = fleet.workloads[w as usize].demand;
            let from = self.at[w as usize];
            self.used[from as usize] -= d;
            self.used[to as usize] += d;
            self.at[w as usize] = to;
        }
    }
}

/// Where workloads are as the plan's waves go by, and which nodes are settled (updated, or
/// never to be), so that workloads prefer them and move once.
#[derive(Clone)]
struct CapacityState {
    place: Placement,
    settled: Vec<bool>,
    down: Vec<bool>,
}

impl CapacityState {
    fn new(fleet: &Fleet, in_update: &[bool]) -> Self {
        CapacityState {
            place: Placement::initial(fleet),
            settled: in_update.iter().map(|u| !u).collect(),
            down: vec![false; fleet.nodes.len()],
        }
    }
}

/// Walks the waves in order, moving each drained node's workloads; a node whose workloads do
/// not fit goes to a later wave, and one whose workloads fit nowhere even alone is infeasible.
fn capacity_pass(fleet: &Fleet, ff: &mut FirstFit, st: &mut CapacityState) -> Result<(), Infeasible> {
    let mut k = 0usize;
    while k < ff.waves.len() {
        let wave = ff.waves[k].clone();
        for &n in &wave {
            st.down[n as usize] = true;
        }
        for &n in &wave {
            let (down, settled) = (&st.down, &st.settled);
            match st.place.find_moves(fleet, n, |d| !down[d as usize], |d| settled[d as usize]) {
                Ok(moves) => st.place.apply(fleet, &moves),
                Err(_) => {
                    st.down[n as usize] = false;
                    // Would it fit with only this node down? If not, it never will.
                    if let Err(w) = st.place.find_moves(fleet, n, |d| d != n, |d| settled[d as usize]) {
                        return Err(no_room(fleet, &st.place, w));
                    }
                    ff.remove(n, k as u32);
                    ff.insert(n, k as u32 + 1);
                }
            }
        }
        for &n in &ff.waves[k] {
            st.down[n as usize] = false;
            st.settled[n as usize] = true;
        }
        k += 1;
    }
    Ok(())
}

fn no_room(fleet: &Fleet, place: &Placement, w: u32) -> Infeasible {
    let wl = &fleet.workloads[w as usize];
    let home = place.at[w as usize];
    let best_free = fleet
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i as NodeId != home)
        .map(|(i, n)| n.capacity.map(|c| c.saturating_sub(place.used[i])).unwrap_or(u64::MAX))
        .max()
        .unwrap_or(0);
    Infeasible {
        subject: wl.name.clone(),
        message: format!(
            "workload {} (demand {}) fits on no other node while {} is drained: the most free capacity elsewhere is {}",
            wl.name,
            wl.demand,
            fleet.node_name(home),
            best_free
        ),
        help: format!("add capacity, lower {}'s demand, or mark it movable = \"none\" if it may go down with its node", wl.name),
    }
}

/// `max(ceil(U / P), max over services ceil(members to update / allowance), capacity bound)`.
///
/// Why no plan has fewer waves. Take any plan of W waves covering the U nodes to update; the
/// nodes of one wave are down together.
/// 1. A wave holds at most P nodes, so W·P ≥ U: W ≥ ⌈U / P⌉.
/// 2. A wave holds at most `allowance` members of a service (else it is over its allowance
///    while they are down), so W·allowance ≥ members to update: W ≥ ⌈t / allowance⌉.
/// 3. Capacity (when every node declares one): a node n never holds more than
///    h(n) = max(capacity(n), what it held at the start), since workloads move onto a node only
///    within its capacity and those already there leave only when it drains. While the nodes S
///    of a wave are down, all movable demand D sits on nodes outside S, so
///    D ≤ Σ_{n∉S} h(n) = H − Σ_{n∈S} h(n): the h of a wave sums to at most H − D. No more than
///    k nodes fit in that (k counts the smallest h first, and any k+1 nodes sum to at least the
///    k+1 smallest), so |S| ≤ k and W ≥ ⌈U / k⌉. Demand that cannot move only takes room away,
///    so leaving it out keeps this a bound.
///
/// Each holds for every plan, so their maximum does. `crates/sim/tests/properties.rs` checks it
/// against an exhaustive search on small random fleets (overloaded nodes included).
fn lower_bound(fleet: &Fleet, update: &[NodeId], todo: &[usize], p: usize) -> (usize, String) {
    let u = update.len();
    if u == 0 {
        return (0, "nothing to update".into());
    }
    let mut best = (u.div_ceil(p), format!("max_parallel {p}: {u} nodes to update, {p} at a time"));
    // Services, strictly larger than max_parallel's bound, or equal (a service is the more
    // useful thing to name when both bind).
    let mut svc_best: Option<(usize, usize)> = None;
    for (s, svc) in fleet.services.iter().enumerate() {
        if todo[s] == 0 || svc.allowance == 0 {
            continue;
        }
        let b = todo[s].div_ceil(svc.allowance as usize);
        if svc_best.map(|(bb, _)| b > bb).unwrap_or(true) {
            svc_best = Some((b, s));
        }
    }
    if let Some((b, s)) = svc_best {
        if b >= best.0 {
            let svc = &fleet.services[s];
            best = (
                b,
                format!("service {}: {} members, {} may be down", svc.name, svc.members.len(), svc.allowance),
            );
        }
    }
    if let Some((b, text)) = capacity_bound(fleet, update) {
        if b > best.0 {
            best = (b, text);
        }
    }
    best
}

/// How many of `update` may be down at once for capacity's sake, when capacity binds at all:
/// with total capacity C and movable demand D, the nodes down together have capacity ≤ C − D,
/// so at most as many as the smallest capacities that fit in C − D.
///
/// A node's capacity here is what it can be seen to hold: its capacity, or the demand already
/// on it when the fleet starts over capacity (workloads are never moved onto a full node, but
/// those already there stay). Counting only the declared capacity would claim a bound no plan
/// can reach (found by the property test at 20,577 cases: a node holding 21 of capacity 20).
pub fn capacity_limit(fleet: &Fleet, update: &[NodeId]) -> Option<(usize, u64, u64)> {
    if !needs_capacity_pass(fleet) || fleet.nodes.iter().any(|n| n.capacity.is_none()) {
        return None;
    }
    let mut load = vec![0u64; fleet.nodes.len()];
    for w in &fleet.workloads {
        load[w.node as usize] = load[w.node as usize].saturating_add(w.demand);
    }
    let held = |n: usize| fleet.nodes[n].capacity.unwrap_or(0).max(load[n]);
    let total: u64 = (0..fleet.nodes.len()).map(held).sum();
    let demand: u64 = fleet.workloads.iter().filter(|w| w.movable != Movable::None).map(|w| w.demand).sum();
    let room = total.checked_sub(demand)?;
    let mut caps: Vec<u64> = update.iter().map(|&n| held(n as usize)).collect();
    caps.sort_unstable();
    let mut k = 0usize;
    let mut acc = 0u64;
    for c in caps {
        if acc + c > room {
            break;
        }
        acc += c;
        k += 1;
    }
    (k > 0).then_some((k, demand, total))
}

fn capacity_bound(fleet: &Fleet, update: &[NodeId]) -> Option<(usize, String)> {
    let (k, demand, total) = capacity_limit(fleet, update)?;
    Some((
        update.len().div_ceil(k),
        format!(
            "capacity: {demand} units of movable workloads need room in {total}, so at most {k} node{} may be down at once",
            if k == 1 { "" } else { "s" }
        ),
    ))
}

/// The least time any schedule needs, given each node's time out of service (`work`): the
/// parallelism, capacity and every service's allowance each bound how much of that work can
/// overlap, and no schedule ends before its longest node. `simulate` reports it as
/// `lower_bound_s`; the lab computes it from measured times.
pub fn time_lower_bound(fleet: &Fleet, max_parallel: u32, work: &HashMap<NodeId, Millis>) -> Millis {
    let total: Millis = work.values().sum();
    let longest = work.values().copied().max().unwrap_or(0);
    let mut lb = total.div_ceil(max_parallel.max(1) as Millis).max(longest);
    let worked: Vec<NodeId> = work.keys().copied().collect();
    if let Some((k, _, _)) = capacity_limit(fleet, &worked) {
        lb = lb.max(total.div_ceil(k as Millis));
    }
    for svc in fleet.services.iter().filter(|s| s.allowance > 0) {
        let w: Millis = svc.members.iter().filter_map(|m| work.get(m)).sum();
        lb = lb.max(w.div_ceil(svc.allowance as Millis));
    }
    lb
}
