//! The agent's library. Data flows one way: a control `source` produces
//! Kubernetes objects, the `model` turns them into Services with endpoints,
//! the `plan` diffs those against what the maps hold into map writes, and
//! `datapath` (the only code that touches aya) applies them; `dns` answers
//! names from the same model. `cmd` holds the agent's commands.

pub mod cmd;
pub mod datapath;
pub mod dns;
pub mod ingress;
pub mod model;
pub mod plan;
pub mod source;
