//! Layer-2 tests of the actor tree: the real Supervisor, PoolManager, SessionRegistry and
//! Workers speaking the real protocol to scripted in-memory workers, one module per
//! family of behaviour.

mod prelude;

mod concurrency;
mod crashes;
mod rate;
mod serving;
mod shutdown;
mod supervision;
mod timeouts;
