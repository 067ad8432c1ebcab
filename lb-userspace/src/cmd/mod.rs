//! The agent's commands: `run` (the agent), `get` (what the maps hold) and
//! `env` (the Service environment variables a pod would get), and the HTTP
//! health and metrics endpoints `run` serves.

pub mod env;
pub mod get;
pub mod health;
pub mod metrics;
pub mod run;
