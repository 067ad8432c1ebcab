//! The agent's commands: `run` (the agent), `get` (what the maps hold),
//! `env` (the Service environment variables a pod would get), `explain`
//! (what the datapath would do with a packet) and `status` (the agent's
//! own state), and the HTTP health, metrics and status endpoints `run`
//! serves.

pub mod env;
pub mod explain;
pub mod get;
pub mod health;
pub mod metrics;
pub mod run;
pub mod status;
