//! dspex's integration tests, in one binary (it builds and links once instead of once per
//! topic): `system` drives the library against real actors and real Python workers (and
//! the test doubles against their fakes); `cli` drives the `dspex` binary end to end.
//! Helpers shared by both live in `common` and `programs_common`.

mod common;
mod programs_common;

mod system {
    mod adapter_compliance;
    mod adapter_factory;
    mod bridge_generic;
    mod dspy_layer3;
    mod host_killed;
    mod isolation;
    mod programs_layer3;
    mod python_bridge;
    mod python_env;
    mod real_lm;
    mod seed_pool_worker;
    mod seed_session_pool;
    mod semantics_table;
    mod signature_props;
    mod supervision;
    mod worker_lifecycle;
}

mod cli {
    mod prelude;

    mod chaos;
    mod cli_eval_optimize;
    mod cli_misc;
    mod cli_resume;
    mod cli_run;
}
