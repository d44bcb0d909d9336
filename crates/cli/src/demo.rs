//! `baton demo`: a rollout of 1.0 → 1.1 across a small fleet, shown as it happens.
//!
//! For now the nodes are simulated: the campaign runs the real core state machine in virtual
//! time and prints its timeline. The same fleet and campaign go through the same loader and
//! planner as files would.

use baton_core::campaign::{Command, Notice};
use baton_core::units::format_duration;
use baton_core::{load_campaign, load_fleet, Phase};
use std::fmt::Write;
use std::sync::Arc;

pub fn fleet_toml(nodes: usize) -> String {
    let mut s = String::from("name = \"demo\"\nversions = [\"1.0\", \"1.1\"]\nfunctional_level = \"1.0\"\n");
    for i in 1..=nodes {
        let _ =
            write!(s, "\n[[node]]\nname = \"node{i}\"\nupdate_domain = {}\nversion = \"1.0\"\n", (i - 1) % 3);
    }
    let members: Vec<String> = (1..=nodes).map(|i| format!("\"node{i}\"")).collect();
    let _ = write!(
        s,
        "\n[[service]]\nname = \"web\"\nnodes = [{}]\nmax_unavailable = \"40%\"\n",
        members.join(", ")
    );
    s
}

pub const CAMPAIGN: &str = "name = \"demo-1.1\"\ntarget_version = \"1.1\"\nmax_parallel = 2\n\
    health_wait = \"5s\"\nhealth_stable = \"30s\"\nreboot_timeout = \"10m\"\n";

pub fn run(nodes: usize) -> Result<(), String> {
    if nodes == 0 {
        return Err("--nodes must be at least 1".into());
    }
    let fleet = Arc::new(load_fleet("demo-fleet.toml", &fleet_toml(nodes)).map_err(|d| d.to_string())?);
    let spec = load_campaign("demo-campaign.toml", CAMPAIGN, &fleet).map_err(|d| d.to_string())?;
    let plan = baton_core::plan(&fleet, &spec).map_err(|e| e.to_string())?;
    println!(
        "baton demo: rolling 1.0 → 1.1 across {nodes} simulated nodes; service web allows {} down, max_parallel {}; {} waves planned",
        fleet.services[0].allowance,
        plan.max_parallel,
        plan.waves.len()
    );
    let opts = baton_sim::SimOptions { seed: 7, duration: (3 * 60_000, 6 * 60_000), ..Default::default() };
    let r = baton_sim::run(fleet.clone(), spec, &opts, &[]).map_err(|e| e.to_string())?;
    for (t, c) in &r.commands {
        let at = format!("t+{:>8}", format_duration(*t - t % 1000));
        let line = match c {
            Command::Drain { node, .. } => {
                format!("{node}: draining (out of the load balancer, workloads moved)")
            }
            Command::Update { node, version, .. } => format!("{node}: updating to {version}"),
            Command::WatchBoot { node, .. } => format!("{node}: rebooting"),
            Command::WatchHealth { node } => format!("{node}: verifying health"),
            Command::Restore { node, .. } => format!("{node}: healthy and stable, restoring"),
            Command::Notify { notice: Notice::NodeDone { node } } => format!("{node}: done"),
            Command::Notify { notice: Notice::NodeFailed { node, reason } } => {
                format!("{node}: FAILED: {reason}")
            }
            Command::Notify { notice: Notice::Phase { to, .. } } => format!("campaign {to}"),
            Command::Fence { node, reason } => format!("{node}: fenced: {reason}"),
        };
        println!("{at}  {line}");
    }
    let at_target = r.campaign.nodes.iter().filter(|n| n.version.as_deref() == Some("1.1")).count();
    println!(
        "\nsummary: {at_target}/{nodes} nodes at 1.1 in {} of simulated time, {} steps, peak {} of web down (allowed {}), {} safety violations",
        format_duration(r.makespan - r.makespan % 1000),
        r.steps_sent,
        r.peak_down.get("web").copied().unwrap_or(0),
        fleet.services[0].allowance,
        r.violations.len()
    );
    if r.outcome != Phase::Completed || at_target != nodes || !r.violations.is_empty() {
        return Err(format!("the demo campaign ended {} with {at_target}/{nodes} nodes at 1.1", r.outcome));
    }
    Ok(())
}
