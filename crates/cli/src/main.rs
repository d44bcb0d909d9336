//! The `baton` command: argument parsing and output. The work happens in baton-core and
//! baton-sim; this file reads files, prints, and maps outcomes to exit codes.

mod demo;
mod hollow;
mod ops;
mod output;
mod report;

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
        /// When the campaign starts (RFC 3339, e.g. 2026-12-05T01:00:00Z), for its maintenance
        /// windows; default now. The makespan counts the hours its windows are closed.
        #[arg(long)]
        start: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: OutFormat,
    },
    /// Roll 1.0 → 1.1 across N real agents on loopback (mutual TLS, a real orchestrator on
    /// SQLite, reboots included) in a temporary directory, and show how it goes.
    Demo {
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Keep serving the dashboard and API after the campaign ends, until Ctrl-C.
        #[arg(long)]
        hold: bool,
    },
    /// Run N hollow agents in this process, for scale tests: each a real agent (its own port,
    /// mutual TLS, journal) on a simulated host (actions take a random time, a reboot is a new
    /// boot id). Writes the fleet under --dir, prints `ready FLEET-FILE`, runs until Ctrl-C or
    /// SIGTERM.
    Hollow {
        #[arg(long)]
        dir: String,
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// How long an update action takes: fixed (`3s`) or uniform (`2s..4s`).
        #[arg(long, default_value = "2s..4s")]
        action: String,
        /// How long a drain or restore takes.
        #[arg(long, default_value = "0ms..50ms")]
        drain: String,
        /// How long a reboot keeps the agent down.
        #[arg(long, default_value = "200ms..400ms")]
        reboot: String,
        #[arg(long, default_value_t = 20)]
        update_domains: u32,
        /// Nodes per service (each may have 10% of its members down).
        #[arg(long, default_value_t = 100)]
        service_size: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Processes to spread the agents over (default: as many as the open-files limit needs,
        /// about six descriptors per agent).
        #[arg(long)]
        processes: Option<usize>,
        /// Run part I of K (`I/K`, from 0) of a fleet already written under --dir.
        #[arg(long, hide = true)]
        part: Option<String>,
    },
    /// Run the node agent.
    Agent {
        #[arg(long)]
        config: String,
    },
    /// Ask every agent of the fleet what it runs and what it lacks against a target version:
    /// a compliance report (DESIGN.md §Formats, Scan JSON). Read-only.
    Scan {
        #[arg(long)]
        fleet: String,
        /// The version every node should be at.
        #[arg(long)]
        target: String,
        /// Directory made by `baton ca`, holding ca.pem and the orchestrator's certificate.
        #[arg(long, default_value = "pki")]
        pki: String,
        /// Name of the certificate to reach the agents with.
        #[arg(long, default_value = "orchestrator")]
        cert: String,
        #[arg(long, value_enum, default_value = "text")]
        format: ScanFormat,
    },
    /// The fleet's certificate authority.
    Ca {
        #[command(subcommand)]
        cmd: CaCmd,
    },
    /// Run the orchestrator.
    Serve {
        #[arg(long)]
        fleet: String,
        /// Journal database, `sqlite:PATH`.
        #[arg(long, default_value = "sqlite:baton.db")]
        db: String,
        #[arg(long, default_value = "127.0.0.1:7700")]
        listen: String,
        /// Directory made by `baton ca`, holding ca.pem and the orchestrator's certificate.
        #[arg(long, default_value = "pki")]
        pki: String,
        /// Name of the orchestrator's certificate in the PKI directory.
        #[arg(long, default_value = "orchestrator")]
        cert: String,
        /// File holding the operator token (else $BATON_TOKEN; else one is made beside the db).
        #[arg(long)]
        token_file: Option<String>,
        /// Let anyone who reaches the API read campaigns, events, reports, the stream and
        /// metrics without the token (writes still need it).
        #[arg(long)]
        open_reads: bool,
        /// The URL operators reach the API at, when they use a DNS name for it (requests
        /// naming any host other than an IP address, localhost or this one are refused).
        #[arg(long)]
        public_url: Option<String>,
        /// PEM file of more CA certificates to trust for HTTPS webhooks, besides the system's.
        #[arg(long)]
        webhook_ca: Option<String>,
        /// For tests only: let `POST /v1/clock` move this orchestrator's clock forward.
        #[arg(long, hide = true)]
        test_clock: bool,
        /// A program campaigns' `before_start` may run on this host (repeat for more): none
        /// unless listed, since the operator's token alone must not run anything here.
        #[arg(long = "allow-hook", value_name = "PATH")]
        allow_hook: Vec<String>,
    },
    /// Create a campaign from a file, start it and follow it to its end.
    Run {
        campaign: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Schedules: campaign files the orchestrator creates and starts by itself when their cron
    /// rule (`schedule`) comes due and some targeted node is behind.
    Schedule {
        #[command(subcommand)]
        cmd: ScheduleCmd,
    },
    /// Show campaigns, or one campaign's nodes.
    Status {
        campaign: Option<i64>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Pause a campaign: nodes in flight finish, no new node starts.
    Pause {
        campaign: i64,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Resume a paused or halted campaign.
    Resume {
        campaign: i64,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Abort a campaign: nodes in flight finish and are restored, no new node starts.
    Abort {
        campaign: i64,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Commit a completed campaign: raise the fleet's functional level to its target. Shows what
    /// will happen and asks for the campaign's name (this cannot be undone) unless --yes.
    Commit {
        campaign: i64,
        /// Do not ask: for scripts that have checked already.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Roll a campaign back: its updated nodes go back to the version before, with the same
    /// safety rules. Shows what will happen and asks for the campaign's name unless --yes.
    Rollback {
        campaign: i64,
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Let a fenced node (back at a version older than the committed level) into service as it
    /// is. Shows what will happen and asks for the node's name unless --yes.
    Unfence {
        node: String,
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// A campaign's run report: per node, its steps with outcome, duration and output.
    Report {
        campaign: i64,
        #[arg(long, value_enum, default_value = "md")]
        format: ReportFormat,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print a campaign's journal.
    Events {
        campaign: i64,
        /// Keep printing new events.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        api: ApiArgs,
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
        /// Update domains the nodes are dealt into in turn (0: none).
        #[arg(long, default_value_t = 10)]
        update_domains: usize,
        /// Fault domains (0: none).
        #[arg(long, default_value_t = 3)]
        fault_domains: usize,
        /// Deal service members at random with this seed (default: by stride, evenly).
        #[arg(long)]
        shuffle: Option<u64>,
    },
}

#[derive(Subcommand)]
enum CaCmd {
    /// Create the fleet CA.
    Init {
        #[arg(long, default_value = "pki")]
        dir: String,
        #[arg(long, default_value = "fleet")]
        fleet: String,
        /// How long the CA is valid, in days.
        #[arg(long, default_value_t = baton_pki::CA_DAYS)]
        days: u32,
    },
    /// Issue a certificate for an agent (its node name) or the orchestrator.
    Issue {
        name: String,
        /// `agent` (a TLS server only) or `orchestrator` (a TLS client only).
        #[arg(long, value_enum, default_value = "agent")]
        role: RoleArg,
        #[arg(long, default_value = "pki")]
        dir: String,
        /// More names or addresses the certificate is valid for.
        #[arg(long)]
        san: Vec<String>,
        /// How long the certificate is valid, in days.
        #[arg(long, default_value_t = baton_pki::LEAF_DAYS)]
        days: u32,
    },
    /// Revoke a certificate: adds it to crl.pem, which agents (on SIGHUP) and the orchestrator
    /// (at start) honour; moves its files aside so the name can be issued again.
    Revoke {
        name: String,
        #[arg(long, default_value = "pki")]
        dir: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ReportFormat {
    Md,
    Html,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum ScanFormat {
    Text,
    Json,
    Html,
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Agent,
    Orchestrator,
}

#[derive(Subcommand)]
enum ScheduleCmd {
    /// Add a campaign file with a `schedule` key. When it comes due, the orchestrator creates
    /// and starts the campaign if some targeted node is behind and no campaign holds the fleet;
    /// else it journals why not (`baton schedule runs NAME`).
    Add {
        campaign: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Every schedule: its rule, its next run and what its last run did.
    List {
        #[arg(long, value_enum, default_value = "text")]
        format: OutFormat,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove a schedule by its campaign's name (campaigns it started go on).
    Remove {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// A schedule's runs: when each came due, and the campaign it started or why none.
    Runs {
        name: String,
        #[arg(long, value_enum, default_value = "text")]
        format: OutFormat,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(clap::Args, Clone)]
struct ApiArgs {
    /// The orchestrator's address.
    #[arg(long, env = "BATON_SERVER", default_value = "http://127.0.0.1:7700")]
    server: String,
    /// File holding the operator token (else $BATON_TOKEN).
    #[arg(long)]
    token_file: Option<String>,
}

impl ApiArgs {
    fn api(&self) -> Result<ops::Api, Failure> {
        Ok(ops::Api::new(&self.server, token(self.token_file.as_deref())?))
    }
}

fn token(file: Option<&str>) -> Result<Option<String>, Failure> {
    match file {
        Some(f) => token_file(f).map(Some),
        None => Ok(std::env::var("BATON_TOKEN").ok().filter(|t| !t.is_empty())),
    }
}

/// The operator token from a file, which must be private (it is a secret: anyone who reads it
/// can start, abort or commit campaigns) and not empty (an empty token would match an empty
/// `Authorization` header).
fn token_file(path: &str) -> Result<String, Failure> {
    use std::os::unix::fs::PermissionsExt;
    let problem = |message: String, help: &str| {
        Failure::Input(
            Box::new(Diagnostic {
                file: path.to_string(),
                line: 0,
                col: 0,
                span: None,
                message,
                help: Some(help.into()),
            }),
            None,
        )
    };
    let text = read(path)?;
    let mode = std::fs::metadata(path).map(|m| m.permissions().mode()).unwrap_or(0);
    if mode & 0o077 != 0 {
        return Err(problem(
            format!("the token file is readable by others (mode {:o})", mode & 0o777),
            &format!("run chmod 600 {path}"),
        ));
    }
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(problem("the token file is empty".into(), "write the operator token into it"));
    }
    Ok(token)
}

/// Raises this process's open-files limit to the most it may (its hard limit): every
/// connection is a file, and a service left at a soft limit of 1024 is starved by a flood of
/// idle connections. Done once at the start of the long-running commands.
fn raise_open_files() {
    // Not beyond this: the agent's actions inherit the limit, and some programs (rpm, older
    // daemons) close every descriptor up to it one by one.
    raise_open_files_to(65_536)
}

/// Caps glibc's malloc arenas at two, unless `MALLOC_ARENA_MAX` says otherwise. By default
/// glibc gives each thread that allocates its own arena (up to eight per core); a server
/// holding a connection to each of thousands of agents then keeps memory freed in one arena
/// that another cannot reuse. Measured on 10,000 hollow agents: peak RSS 1,172 MiB with the
/// default, 623 MiB with two (BENCHMARKS.md).
fn few_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt changes a malloc parameter; called before the runtime's threads
        // start, with a valid parameter and value.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// This process's open-files limit (its soft limit).
fn open_files_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit on this process with a valid pointer to a local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        1024
    }
}

fn raise_open_files_to(enough: libc::rlim_t) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on this process with a valid pointer to a local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            tracing::warn!("cannot read the open-files limit: {}", std::io::Error::last_os_error());
            return;
        }
        let before = lim.rlim_cur;
        let want = lim.rlim_max.min(enough);
        if before < want {
            lim.rlim_cur = want;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                tracing::info!("open-files limit raised from {before} to {want}");
            } else {
                tracing::warn!(
                    "cannot raise the open-files limit from {before}: {}; set LimitNOFILE in the unit",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

/// How a command failed, and so which exit code it gets.
pub(crate) enum Failure {
    /// Bad input: a file, a flag (exit 2).
    Input(Box<Diagnostic>, Option<String>),
    /// The rules can never be met (exit 3).
    Infeasible(baton_core::Infeasible),
    /// A bug or a broken promise (exit 1).
    Internal(String),
    /// The campaign ended without completing: halted, aborted or rolled back (exit 4).
    Ended(String),
    /// The orchestrator refused or could not be reached (exit by what it said: 2, 3 or 1).
    Api(ops::ApiFailure),
    /// Stopped by Ctrl-C (exit 130).
    Interrupted,
    /// The operator did not confirm (exit 2).
    Declined(String),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    baton_pki::install_default_provider();
    match run(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            let code = match &f {
                Failure::Input(..) => 2,
                Failure::Infeasible(_) => 3,
                Failure::Internal(_) => 1,
                Failure::Ended(_) => 4,
                Failure::Api(e) => e.exit_code(),
                Failure::Interrupted => 130,
                Failure::Declined(_) => 2,
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

pub(crate) fn flag_error(flag: &str, message: String, help: &str) -> Failure {
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
        Cmd::Scan { fleet, target, pki, cert, format } => {
            let text = read(&fleet)?;
            let f = load_fleet(&fleet, &text).map_err(|d| Failure::Input(Box::new(d), Some(text.clone())))?;
            let tls = baton_pki::TlsFiles::in_dir(std::path::Path::new(&pki), &cert);
            baton_pki::install_default_provider();
            let client = baton_server::client::AgentClient::new(&tls).map_err(|e| {
                flag_error(
                    "--pki",
                    e.to_string(),
                    "give the directory made by `baton ca`, with --cert naming a certificate in it",
                )
            })?;
            let r = runtime()?.block_on(baton_server::scan::scan(&client, &f, &target));
            match format {
                ScanFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&r).map_err(|e| Failure::Internal(e.to_string()))?
                ),
                ScanFormat::Text => print!("{}", output::scan_text(&r)),
                ScanFormat::Html => print!("{}", output::scan_html(&r)),
            }
            Ok(())
        }
        Cmd::Plan { fleet, campaign, format } => {
            let (fleet, spec) = load(&fleet, &campaign)?;
            let plan = baton_core::plan(&fleet, &spec).map_err(Failure::Infeasible)?;
            match format {
                OutFormat::Json => println!("{}", output::plan_json(&fleet, &plan)),
                OutFormat::Text => print!("{}", output::plan_text(&fleet, &spec, &plan)),
            }
            Ok(())
        }
        Cmd::Simulate { fleet, campaign, compare, seed, duration, fail_rate, start, format } => {
            let (fleet, spec) = load(&fleet, &campaign)?;
            let range = parse_range(&duration).map_err(|m| {
                flag_error(
                    "--duration",
                    m.to_string(),
                    "give a duration such as 10m, or a range such as 5m..15m",
                )
            })?;
            if !(0.0..=1.0).contains(&fail_rate) {
                return Err(flag_error(
                    "--fail-rate",
                    format!("{fail_rate} is not a probability"),
                    "use a number from 0 to 1",
                ));
            }
            let start = match start {
                Some(s) => s.parse::<jiff::Timestamp>().map_err(|e| {
                    flag_error(
                        "--start",
                        format!("{s} is not a time: {e}"),
                        "write it like 2026-12-05T01:00:00Z",
                    )
                })?,
                None => jiff::Timestamp::now(),
            };
            let start = u64::try_from(start.as_millisecond()).map_err(|_| {
                flag_error(
                    "--start",
                    "the time is before 1970".to_string(),
                    "write it like 2026-12-05T01:00:00Z",
                )
            })?;
            let opts =
                baton_sim::SimOptions { seed, duration: range, fail_rate, start, ..Default::default() };
            let strategies: Vec<Strategy> =
                if compare { Strategy::ALL.to_vec() } else { vec![spec.strategy] };
            // Each strategy twice: as a first campaign would run, knowing no node's time, and
            // with the times an earlier campaign would have taught the orchestrator.
            let learned_times = baton_sim::learned_times(&fleet, &opts);
            let (mut reports, mut learned) = (Vec::new(), Vec::new());
            for s in strategies {
                let mut sp = spec.clone();
                sp.strategy = s;
                reports.push(
                    baton_sim::run(fleet.clone(), sp.clone(), &opts, &[]).map_err(Failure::Infeasible)?,
                );
                sp.expected.clone_from(&learned_times);
                learned.push(baton_sim::run(fleet.clone(), sp, &opts, &[]).map_err(Failure::Infeasible)?);
            }
            match format {
                OutFormat::Json => println!("{}", output::simulate_json(&reports, &learned)),
                OutFormat::Text => {
                    print!("{}", output::simulate_text(&fleet, &spec, &opts, &reports, &learned))
                }
            }
            let bad: usize = reports.iter().chain(&learned).map(|r| r.violations.len()).sum();
            if bad > 0 {
                let first = reports
                    .iter()
                    .chain(&learned)
                    .flat_map(|r| r.violations.iter())
                    .next()
                    .cloned()
                    .unwrap_or_default();
                return Err(Failure::Internal(format!(
                    "{bad} safety violation(s) in the simulation; first: {first}"
                )));
            }
            Ok(())
        }
        Cmd::Demo { nodes, hold } => runtime()?.block_on(demo::run(nodes, hold)),
        Cmd::Hollow {
            dir,
            nodes,
            action,
            drain,
            reboot,
            update_domains,
            service_size,
            seed,
            processes,
            part,
        } => {
            let range = |flag: &str, v: &str| {
                parse_range(v).map_err(|e| {
                    flag_error(flag, e.to_string(), "give a duration (`3s`) or a range (`2s..4s`)")
                })
            };
            let timings = baton_agent::hollow::Timings {
                action_ms: range("--action", &action)?,
                drain_ms: range("--drain", &drain)?,
                reboot_ms: range("--reboot", &reboot)?,
            };
            if nodes == 0 {
                return Err(flag_error("--nodes", "0 nodes".into(), "give at least 1"));
            }
            logging("warn");
            raise_open_files_to(1 << 20);
            few_malloc_arenas();
            let opts =
                baton_agent::hollow::HollowOptions { nodes, update_domains, service_size, timings, seed };
            let dir = std::path::Path::new(&dir);
            if let Some(part) = part {
                let bad = || flag_error("--part", format!("`{part}` is not I/K"), "give I/K with I < K");
                let (i, k) = part.split_once('/').ok_or_else(bad)?;
                let (i, k): (usize, usize) = (i.parse().map_err(|_| bad())?, k.parse().map_err(|_| bad())?);
                if i >= k {
                    return Err(bad());
                }
                let f = baton_agent::hollow::HollowFleet::open_part(dir, opts, i, k)
                    .map_err(|e| Failure::Internal(e.to_string()))?;
                let fleet = f.fleet_file.display().to_string();
                return runtime()?.block_on(hollow::run_here(f, fleet));
            }
            let f = baton_agent::hollow::HollowFleet::create(dir, opts, |n| {
                eprintln!("hollow: {n} of {nodes} nodes written")
            })
            .map_err(|e| Failure::Internal(e.to_string()))?;
            let fleet = f.fleet_file.display().to_string();
            let k =
                processes.unwrap_or_else(|| nodes.div_ceil((open_files_limit() / 6).max(1) as usize)).max(1);
            if k == 1 {
                return runtime()?.block_on(hollow::run_here(f, fleet));
            }
            drop(f);
            let args: Vec<String> = [
                ("--dir", dir.display().to_string()),
                ("--nodes", nodes.to_string()),
                ("--action", action),
                ("--drain", drain),
                ("--reboot", reboot),
                ("--update-domains", update_domains.to_string()),
                ("--service-size", service_size.to_string()),
                ("--seed", seed.to_string()),
            ]
            .into_iter()
            .flat_map(|(k, v)| [k.to_string(), v])
            .collect();
            runtime()?.block_on(hollow::run_parts(args, k, fleet))
        }
        Cmd::Agent { config } => {
            let text = read(&config)?;
            let cfg = baton_agent::config::load(&config, &text)
                .map_err(|d| Failure::Input(Box::new(d), Some(text)))?;
            logging("info");
            raise_open_files();
            let code =
                runtime()?.block_on(baton_agent::serve(cfg)).map_err(|e| Failure::Internal(e.to_string()))?;
            if code == 0 {
                Ok(())
            } else {
                std::process::exit(code)
            }
        }
        Cmd::Ca { cmd } => match cmd {
            CaCmd::Init { dir, fleet, days } => {
                baton_pki::init_ca_days(std::path::Path::new(&dir), &fleet, days)
                    .map_err(|e| flag_error("ca init", e.to_string(), "choose another --dir"))?;
                println!("fleet CA written to {dir}/ca.pem (key {dir}/ca.key, mode 0600)");
                Ok(())
            }
            CaCmd::Issue { name, role, dir, san, days } => {
                let role = match role {
                    RoleArg::Agent => baton_pki::Role::Agent,
                    RoleArg::Orchestrator => baton_pki::Role::Orchestrator,
                };
                baton_pki::issue_days(std::path::Path::new(&dir), &name, role, &san, days).map_err(|e| {
                    flag_error("ca issue", e.to_string(), "run `baton ca init` first, or see the message")
                })?;
                println!(
                    "certificate for {name} written to {dir}/{name}.pem (key {dir}/{name}.key, mode 0600)"
                );
                Ok(())
            }
            CaCmd::Revoke { name, dir } => {
                let serial = baton_pki::revoke(std::path::Path::new(&dir), &name).map_err(|e| {
                    flag_error("ca revoke", e.to_string(), "name a certificate issued from this --dir")
                })?;
                println!(
                    "{name} (serial {serial}) revoked: {dir}/crl.pem written. Copy it beside ca.pem on every node and \
                     `systemctl reload baton-agent` (SIGHUP), and beside ca.pem on the orchestrator's host and \
                     restart `baton serve`."
                );
                Ok(())
            }
        },
        Cmd::Serve {
            fleet,
            db,
            listen,
            pki,
            cert,
            token_file,
            open_reads,
            public_url,
            webhook_ca,
            test_clock,
            allow_hook,
        } => {
            few_malloc_arenas();
            let public_host = match public_url.as_deref().map(|u| (u, baton_server::url_host(u))) {
                None => None,
                Some((_, Some(h))) => Some(h),
                Some((u, None)) => {
                    return Err(flag_error(
                        "--public-url",
                        format!("{u} has no host"),
                        "write --public-url https://baton.example.com:7700",
                    ))
                }
            };
            let fleet_text = read(&fleet)?;
            load_fleet(&fleet, &fleet_text)
                .map_err(|d| Failure::Input(Box::new(d), Some(fleet_text.clone())))?;
            let Some(db) = db.strip_prefix("sqlite:") else {
                return Err(flag_error(
                    "--db",
                    format!("{db} is not sqlite:PATH"),
                    "write --db sqlite:/var/lib/baton/baton.db",
                ));
            };
            let token = match token(token_file.as_deref())? {
                Some(t) => t,
                None => make_token(db)?,
            };
            let settings = baton_server::Settings {
                fleet_file: fleet,
                fleet_text,
                db: db.into(),
                tls: baton_pki::TlsFiles::in_dir(std::path::Path::new(&pki), &cert),
                token,
                open_reads,
                public_host,
                webhook_ca: webhook_ca.map(Into::into),
                test_clock,
                allowed_hooks: allow_hook,
            };
            logging("info");
            raise_open_files();
            runtime()?.block_on(async move {
                let hub = baton_server::Hub::start(settings).await.map_err(|e| match e {
                    baton_server::ServerError::WebhookCa(w) => {
                        flag_error("--webhook-ca", w.to_string(), "give a PEM file of CA certificates")
                    }
                    e => Failure::Internal(e.to_string()),
                })?;
                let l = tokio::net::TcpListener::bind(&listen).await.map_err(|e| {
                    flag_error("--listen", format!("cannot listen on {listen}: {e}"), "choose a free address")
                })?;
                tracing::info!("orchestrator listening on http://{listen}");
                baton_server::serve(hub, l, async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await
                .map_err(|e| Failure::Internal(e.to_string()))
            })
        }
        Cmd::Run { campaign, api } => {
            let text = read(&campaign)?;
            let api = api.api()?;
            runtime()?.block_on(async move {
                let v = api.create(&campaign, text).await.map_err(Failure::Api)?;
                println!("campaign {} created (id {}), {} waves", v.name, v.id, v.waves);
                api.act(v.id, "start").await.map_err(Failure::Api)?;
                let end =
                    ops::follow(&api, v.id, std::io::stdout().is_terminal()).await.map_err(Failure::Api)?;
                ended(&end)
            })
        }
        Cmd::Status { campaign, api } => {
            let api = api.api()?;
            runtime()?.block_on(async move {
                match campaign {
                    Some(id) => ops::print_view(&api.view(id).await.map_err(Failure::Api)?),
                    None => {
                        // Best effort: an older orchestrator has no /v1/fleet.
                        match api.fleet().await {
                            Ok(f) => ops::print_fleet(&f),
                            Err(e) => eprintln!("baton: the fleet's level is not known: {e}"),
                        }
                        for v in api.list().await.map_err(Failure::Api)? {
                            println!(
                                "{:>4}  {:<20} {:<13} {}/{} done, {} failed",
                                v.id,
                                v.name,
                                v.phase.as_str(),
                                v.updated,
                                v.nodes.len(),
                                v.failed
                            );
                        }
                    }
                }
                Ok(())
            })
        }
        Cmd::Schedule { cmd } => schedule(cmd),
        Cmd::Commit { campaign, yes, api } => confirmed(api, campaign, "commit", yes),
        Cmd::Unfence { node, yes, api } => unfence(api, node, yes),
        Cmd::Rollback { campaign, yes, api } => confirmed(api, campaign, "rollback", yes),
        Cmd::Pause { campaign, api } => act(api, campaign, "pause"),
        Cmd::Resume { campaign, api } => act(api, campaign, "resume"),
        Cmd::Abort { campaign, api } => act(api, campaign, "abort"),
        Cmd::Report { campaign, format, api } => {
            let api = api.api()?;
            runtime()?.block_on(async move {
                let r = api.report(campaign).await.map_err(Failure::Api)?;
                match format {
                    ReportFormat::Md => print!("{}", report::markdown(&r)),
                    ReportFormat::Html => print!("{}", report::html(&r)),
                    ReportFormat::Json => println!(
                        "{}",
                        serde_json::to_string_pretty(&r).map_err(|e| Failure::Internal(e.to_string()))?
                    ),
                }
                Ok(())
            })
        }
        Cmd::Events { campaign, follow, api } => {
            let api = api.api()?;
            runtime()?.block_on(async move {
                let mut after = 0;
                loop {
                    let evs =
                        api.events(campaign, after, follow.then_some(20_000)).await.map_err(Failure::Api)?;
                    ops::print_events(&evs);
                    if let Some(e) = evs.last() {
                        after = e.seq;
                    }
                    if !follow {
                        return Ok(());
                    }
                }
            })
        }
        Cmd::GenFleet { nodes, memberships, service_size, update_domains, fault_domains, shuffle } => {
            let o = baton_sim::gen::GenOptions {
                nodes,
                memberships,
                service_size,
                update_domains,
                fault_domains,
                shuffle,
            };
            println!("{}", baton_sim::gen::fleet_json(&o));
            Ok(())
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Internal(e.to_string()))
}

fn logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

fn schedule(cmd: ScheduleCmd) -> Result<(), Failure> {
    match cmd {
        ScheduleCmd::Add { campaign, api } => {
            let text = read(&campaign)?;
            let api = api.api()?;
            runtime()?.block_on(async move {
                let s = api.add_schedule(&campaign, text).await.map_err(Failure::Api)?;
                println!("schedule {} added: {} ({})", s.name, s.cron, s.timezone);
                match s.next_run_ms {
                    Some(t) => println!("next run {}", baton_core::schedule::local(t, &s.timezone)),
                    None => println!("it never runs again"),
                }
                Ok(())
            })
        }
        ScheduleCmd::List { format, api } => {
            let api = api.api()?;
            runtime()?.block_on(async move {
                let list = api.schedules().await.map_err(Failure::Api)?;
                match format {
                    OutFormat::Json => json(&list),
                    OutFormat::Text => {
                        print!("{}", output::schedules_text(&list));
                        Ok(())
                    }
                }
            })
        }
        ScheduleCmd::Remove { name, api } => {
            let api = api.api()?;
            runtime()?.block_on(async move {
                let s = api.remove_schedule(&name).await.map_err(Failure::Api)?;
                println!("schedule {} removed; campaigns it started go on", s.name);
                Ok(())
            })
        }
        ScheduleCmd::Runs { name, format, api } => {
            let api = api.api()?;
            runtime()?.block_on(async move {
                let runs = api.schedule_runs(&name).await.map_err(Failure::Api)?;
                match format {
                    OutFormat::Json => json(&runs),
                    OutFormat::Text => {
                        print!("{}", output::schedule_runs_text(&runs));
                        Ok(())
                    }
                }
            })
        }
    }
}

/// Prints a value as pretty JSON.
fn json<T: serde::Serialize>(v: &T) -> Result<(), Failure> {
    println!("{}", serde_json::to_string_pretty(v).map_err(|e| Failure::Internal(e.to_string()))?);
    Ok(())
}

fn act(api: ApiArgs, id: i64, action: &str) -> Result<(), Failure> {
    let api = api.api()?;
    runtime()?.block_on(async move {
        let v = api.act(id, action).await.map_err(Failure::Api)?;
        println!("campaign {} (id {}) is {}", v.name, v.id, v.phase);
        if let (baton_proto::Phase::AfterCommit, Some(a)) = (v.phase, &v.after_commit_action) {
            println!(
                "the level is committed; {a} now runs on every node (its after-commit pass): `baton status {}` shows it",
                v.id
            );
        }
        Ok(())
    })
}

/// A commit or rollback: what it will do is shown, and it goes ahead only once the campaign's
/// name is typed (or with `--yes`).
fn confirmed(api: ApiArgs, id: i64, action: &str, yes: bool) -> Result<(), Failure> {
    let api = api.api()?;
    runtime()?.block_on(async move {
        let v = api.view(id).await.map_err(Failure::Api)?;
        let f = api.fleet().await.map_err(Failure::Api)?;
        let preview =
            if action == "commit" { ops::commit_preview(&v, &f) } else { ops::rollback_preview(&v, &f) };
        print!("{preview}");
        if !yes {
            ask_name("campaign", &v.name, action).await?;
        }
        let v = api.act(id, action).await.map_err(Failure::Api)?;
        println!("campaign {} (id {}) is {}", v.name, v.id, v.phase);
        if let (baton_proto::Phase::AfterCommit, Some(a)) = (v.phase, &v.after_commit_action) {
            println!(
                "the level is committed; {a} now runs on every node (its after-commit pass): `baton status {}` shows it",
                v.id
            );
        }
        Ok(())
    })
}

/// Asks for the `what`'s name to be typed before `action`; anything else, or nothing (stdin
/// closed), declines (exit 2).
async fn ask_name(what: &str, name: &str, action: &str) -> Result<(), Failure> {
    use std::io::Write;
    print!("Type the {what}'s name ({name}) to {action} it: ");
    let _ = std::io::stdout().flush();
    let mut typed = String::new();
    let read = tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut typed).map(|_| typed))
        .await
        .map_err(|e| Failure::Internal(e.to_string()))?;
    let typed = read.map_err(|e| Failure::Declined(format!("cannot read the confirmation: {e}")))?;
    let typed = typed.trim();
    if typed == name {
        return Ok(());
    }
    println!();
    let said =
        if typed.is_empty() { "nothing was typed".to_string() } else { format!("`{typed}` was typed") };
    Err(Failure::Declined(format!("not done: {said}, not the {what}'s name {name} (or pass --yes)")))
}

/// `baton unfence`: the node's state shown, its name typed (unless `--yes`), then let back in.
fn unfence(api: ApiArgs, node: String, yes: bool) -> Result<(), Failure> {
    let api = api.api()?;
    runtime()?.block_on(async move {
        let f = api.fleet().await.map_err(Failure::Api)?;
        let Some(n) = f.nodes.iter().find(|n| n.name == node) else {
            return Err(Failure::Declined(format!("no node {node} in fleet {}", f.name)));
        };
        if !n.fenced {
            return Err(Failure::Declined(format!("node {node} is not fenced")));
        }
        println!(
            "Unfence {node}: it is at {}, older than the committed level {}. It goes back into service at that \
             version (its services started, back into its load balancers) and is not fenced again.",
            n.version.as_deref().unwrap_or("an unknown version"),
            f.functional_level.as_deref().unwrap_or("?")
        );
        if !yes {
            ask_name("node", &node, "unfence").await?;
        }
        api.unfence(&node).await.map_err(Failure::Api)?;
        println!("{node} is unfenced: back into service");
        Ok(())
    })
}

/// The exit that says how a campaign ended.
fn ended(v: &baton_proto::CampaignView) -> Result<(), Failure> {
    let done = if v.pass == "after-commit" { "done in its after-commit pass" } else { "updated" };
    println!(
        "campaign {} {}: {} {done}, {} failed, {} skipped",
        v.name, v.phase, v.updated, v.failed, v.skipped
    );
    match v.phase {
        baton_proto::Phase::Completed | baton_proto::Phase::Committed => Ok(()),
        p => Err(Failure::Ended(format!("campaign {} ended {p}", v.name))),
    }
}

/// A random operator token, written beside the database with mode 0600.
fn make_token(db: &str) -> Result<String, Failure> {
    use std::io::Read;
    let mut b = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| Failure::Internal(e.to_string()))?;
    let t: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let path = std::path::Path::new(db).with_extension("token");
    baton_pki::write_private(&path, t.as_bytes()).map_err(|e| Failure::Internal(e.to_string()))?;
    eprintln!("operator token written to {} (pass it with --token-file or $BATON_TOKEN)", path.display());
    Ok(t)
}

/// Why a `--duration` range does not parse.
#[derive(Debug, thiserror::Error)]
enum RangeError {
    #[error(transparent)]
    Duration(#[from] baton_core::units::DurationError),
    #[error("{0}: the range ends before it starts")]
    Backwards(String),
}

fn parse_range(s: &str) -> Result<(u64, u64), RangeError> {
    let (a, b) = match s.split_once("..") {
        Some((a, b)) => (a, b),
        None => (s, s),
    };
    let lo = baton_core::units::parse_duration(a)?.ms();
    let hi = baton_core::units::parse_duration(b)?.ms();
    if hi < lo {
        return Err(RangeError::Backwards(s.to_string()));
    }
    Ok((lo, hi))
}
