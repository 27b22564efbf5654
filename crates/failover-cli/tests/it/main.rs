//! The multi-process tests of `failover`: real controller, executor and CLI processes
//! on loopback (and in network namespaces for `partition`), one module per subject. One
//! test binary links the whole dependency tree once instead of once per file.

mod common;

mod catch_up;
mod churn;
mod cli;
mod cluster;
mod crash_durability;
mod executor;
mod executor_registry;
mod failover;
mod guard;
mod history_window;
mod hostile;
mod http;
mod lease_api;
mod lease_semantics;
mod leases;
mod limits;
mod operator;
mod ops;
mod partition;
mod relay;
mod runbook;
mod security;
mod systemd;
