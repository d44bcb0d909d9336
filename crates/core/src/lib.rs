//! baton's pure core: the fleet model and file formats, the planner and the campaign state
//! machine. Nothing in this crate does I/O, reads a clock, spawns a task or holds global state:
//! time, observations and randomness come in as values, commands go out as values.

pub mod diag;
pub mod load;
pub mod model;
pub mod schedule;
pub mod units;
pub mod window;

pub use diag::{Diagnostic, Format};
pub use load::{load_campaign, load_fleet, load_stored_campaign, load_stored_fleet};
pub use model::*;
pub use units::{Amount, Dur, Millis};
pub mod plan;
pub use plan::{plan, Infeasible, Plan};
pub mod campaign;
pub mod journal;
pub use campaign::{Back, Campaign, CampaignError, Command, Event, NodeState, Notice, Pass, Phase};
