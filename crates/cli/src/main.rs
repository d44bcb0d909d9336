//! The `baton` command: argument parsing and output. The work happens in baton-core and
//! baton-sim; this file reads files, prints, and maps outcomes to exit codes.

mod demo;
mod output;

use baton_core::{load_campaign, load_fleet, CampaignSpec, Diagnostic, Fleet, Strategy};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "baton", version, about = "Roll an update across a fleet without taking the service down")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum OutFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Plan a campaign: the waves of nodes that may be down together, and why no plan is shorter.
    Plan {
        /// Fleet file (TOML, or JSON by extension).
        #[arg(long)]
        fleet: String,
        /// Campaign file (TOML).
        #[arg(long)]
        campaign: String,
        #[arg(long, value_enum, default_value = "text")]
        format: OutFormat,
    },
    /// Run the campaign's state machine in virtual time and report how it went.
    Simulate {
        #[arg(long)]
        fleet: String,
        #[arg(long)]
        campaign: String,
        /// Run every strategy on the same random draws.
        #[arg(long)]
        compare: bool,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Time a node is out of service: fixed (`10m`) or uniform (`5m..15m`).
        #[arg(long, default_value = "10m")]
        duration: String,
        /// Chance that one update attempt fails (0 to 1).
        #[arg(long, default_value_t = 0.0)]
        fail_rate: f64,
        #[arg(long, value_enum, default_value = "text")]
        format: OutFormat,
    },
    /// Roll 1.0 → 1.1 across a small fleet and show how it goes (simulated: real agents come
    /// with the orchestrator).
    Demo {
        #[arg(long, default_value_t = 5)]
        nodes: usize,
    },
    /// Write a synthetic fleet as JSON to standard output (for trying baton at scale).
    GenFleet {
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// Service memberships per node.
        #[arg(long, default_value_t = 10)]
        memberships: usize,
        /// Members per service.
        #[arg(long, default_value_t = 100)]
        service_size: usize,
    },
}

/// How a command failed, and so which exit code it gets.
enum Failure {
    /// Bad input: a file, a flag (exit 2).
    Input(Box<Diagnostic>, Option<String>),
    /// The rules can never be met (exit 3).
    Infeasible(baton_core::Infeasible),
    /// A bug or a broken promise (exit 1).
    Internal(String),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            let code = match &f {
                Failure::Input(..) => 2,
                Failure::Infeasible(_) => 3,
                Failure::Internal(_) => 1,
            };
            output::report_failure(f, std::io::stderr().is_terminal());
            ExitCode::from(code)
        }
    }
}

fn read(path: &str) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| {
        let d = Diagnostic {
            file: path.to_string(),
            line: 0,
            col: 0,
            span: None,
            message: format!("cannot read {path}: {e}"),
            help: Some("check the path and its permissions".into()),
        };
        Failure::Input(Box::new(d), None)
    })
}

fn load(fleet_path: &str, campaign_path: &str) -> Result<(Arc<Fleet>, CampaignSpec), Failure> {
    let ft = read(fleet_path)?;
    let fleet = load_fleet(fleet_path, &ft).map_err(|d| Failure::Input(Box::new(d), Some(ft.clone())))?;
    let ct = read(campaign_path)?;
    let spec = load_campaign(campaign_path, &ct, &fleet)
        .map_err(|d| Failure::Input(Box::new(d), Some(ct.clone())))?;
    Ok((Arc::new(fleet), spec))
}

fn flag_error(flag: &str, message: String, help: &str) -> Failure {
    let d = Diagnostic {
        file: flag.to_string(),
        line: 0,
        col: 0,
        span: None,
        message,
        help: Some(help.to_string()),
    };
    Failure::Input(Box::new(d), None)
}

fn run(cmd: Cmd) -> Result<(), Failure> {
    match cmd {
        Cmd::Plan { fleet, campaign, format } => {
            let (fleet, spec) = load(&fleet, &campaign)?;
            let plan = baton_core::plan(&fleet, &spec).map_err(Failure::Infeasible)?;
            match format {
                OutFormat::Json => println!("{}", output::plan_json(&fleet, &plan)),
                OutFormat::Text => print!("{}", output::plan_text(&fleet, &spec, &plan)),
            }
            Ok(())
        }
        Cmd::Simulate { fleet, campaign, compare, seed, duration, fail_rate, format } => {
            let (fleet, spec) = load(&fleet, &campaign)?;
            let range = parse_range(&duration).map_err(|m| {
                flag_error("--duration", m, "give a duration such as 10m, or a range such as 5m..15m")
            })?;
            if !(0.0..=1.0).contains(&fail_rate) {
                return Err(flag_error(
                    "--fail-rate",
                    format!("{fail_rate} is not a probability"),
                    "use a number from 0 to 1",
                ));
            }
            let opts = baton_sim::SimOptions { seed, duration: range, fail_rate, ..Default::default() };
            let strategies: Vec<Strategy> =
                if compare { Strategy::ALL.to_vec() } else { vec![spec.strategy] };
            let mut reports = Vec::new();
            for s in strategies {
                let mut sp = spec.clone();
                sp.strategy = s;
                let r = baton_sim::run(fleet.clone(), sp, &opts, &[]).map_err(Failure::Infeasible)?;
                reports.push(r);
            }
            match format {
                OutFormat::Json => println!("{}", output::simulate_json(&reports)),
                OutFormat::Text => {
                    print!("{}", output::simulate_text(&fleet, &spec, &opts, &reports))
                }
            }
            let bad: usize = reports.iter().map(|r| r.violations.len()).sum();
            if bad > 0 {
                let first =
                    reports.iter().flat_map(|r| r.violations.iter()).next().cloned().unwrap_or_default();
                return Err(Failure::Internal(format!(
                    "{bad} safety violation(s) in the simulation; first: {first}"
                )));
            }
            Ok(())
        }
        Cmd::Demo { nodes } => demo::run(nodes).map_err(Failure::Internal),
        Cmd::GenFleet { nodes, memberships, service_size } => {
            let o = baton_sim::gen::GenOptions { nodes, memberships, service_size, ..Default::default() };
            println!("{}", baton_sim::gen::fleet_json(&o));
            Ok(())
        }
    }
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = match s.split_once("..") {
        Some((a, b)) => (a, b),
        None => (s, s),
    };
    let lo = baton_core::units::parse_duration(a)?.ms();
    let hi = baton_core::units::parse_duration(b)?.ms();
    if hi < lo {
        return Err(format!("{s}: the range ends before it starts"));
    }
    Ok((lo, hi))
}
