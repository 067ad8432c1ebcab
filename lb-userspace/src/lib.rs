//! The agent's library: control source -> model -> reconcile -> maps.

pub mod agent;
pub mod datapath;
pub mod env;
pub mod get;
pub mod health;
pub mod interfaces;
pub mod maglev;
pub mod model;
pub mod reconcile;
pub mod regions;
pub mod source;
