//! Worker process lifecycle against real processes, one module per behaviour (the way
//! process-wrap groups its tests): spawning over either transport, logs, the stop ladder,
//! process groups and grandchildren, `PR_SET_PDEATHSIG`, the lifeline and memory limits.
//! One binary builds faster than one per behaviour, and the prelude is shared by all.

mod prelude;

mod drop_kills_group;
mod fds_round_trip;
mod grandchild_gone_after_terminate;
mod lifeline;
mod logs_tagged_by_stream;
mod memory_limit;
mod pdeathsig_kills_orphan;
mod spawn_missing_program;
mod stdio_round_trip;
mod terminate_kills_sigterm_ignorer;
mod terminate_stops_at_sigterm;
mod terminate_voluntary_exit;
