//! The SessionRegistry actor: the single source of truth for sessions.
//!
//! Workers only cache what a session built; the registry holds each session's life cycle
//! (track, touch, end, TTL sweep) and its opaque state (program definitions), so any worker
//! can rebuild a session's programs. The rules live in [`SessionTable`], plain data with
//! injected time; this actor wires them to messages, runs the periodic sweep and reports
//! ended sessions so the pool can drop their cached programs.
//!
//! Supervision without shared state: when the registry stops, for any reason including a
//! panic in a handler, its `stopped()` moves the table into a [`RegistryStopped`] event.
//! The Supervisor builds the next registry from that table, so a restart loses nothing.

mod table;

use std::fmt;
use std::time::Instant;

use actix::prelude::*;
use serde_json::Value;

use crate::config::SessionConfig;
use crate::error::ActorError;

pub use table::{SessionInfo, SessionMetrics, SessionRecord, SessionTable};

/// The actor that owns the [`SessionTable`].
///
/// # Examples
///
/// ```
/// use actix::prelude::*;
/// use dspex_actors::session::*;
/// use dspex_actors::SessionConfig;
///
/// /// Stands in for the Supervisor: ignores the registry's events.
/// struct Sink;
/// impl Actor for Sink {
///     type Context = Context<Self>;
/// }
/// impl Handler<SessionsEnded> for Sink {
///     type Result = ();
///     fn handle(&mut self, _: SessionsEnded, _: &mut Context<Self>) {}
/// }
/// impl Handler<RegistryStopped> for Sink {
///     type Result = ();
///     fn handle(&mut self, _: RegistryStopped, _: &mut Context<Self>) {}
/// }
///
/// System::new().block_on(async {
///     let sink = Sink.start();
///     let registry = SessionRegistry::new(
///         SessionConfig::default(),
///         SessionTable::default(),
///         sink.clone().recipient(),
///         sink.recipient(),
///     )
///     .start();
///     let info = registry.send(Track { session_id: "s1".into() }).await.unwrap().unwrap();
///     assert_eq!(info.id, "s1");
/// });
/// ```
pub struct SessionRegistry {
    table: SessionTable,
    config: SessionConfig,
    ended: Recipient<SessionsEnded>,
    stopped: Recipient<RegistryStopped>,
}

impl SessionRegistry {
    /// `table` is the state to start from (a restarted registry gets its predecessor's).
    /// `ended` receives [`SessionsEnded`] whenever sessions end by [`End`] or a sweep (the
    /// Supervisor, which tells the pool); `stopped` receives [`RegistryStopped`] with the
    /// table when the actor stops.
    pub fn new(
        config: SessionConfig,
        table: SessionTable,
        ended: Recipient<SessionsEnded>,
        stopped: Recipient<RegistryStopped>,
    ) -> Self {
        SessionRegistry {
            table,
            config,
            ended,
            stopped,
        }
    }

    /// The sweep shared by the interval and the [`Sweep`] message; the caller announces
    /// the removed ids with [`announce_ended`](Self::announce_ended).
    fn sweep_stale(&mut self) -> Vec<String> {
        if self.config.ttl.is_zero() {
            // A zero TTL means sessions never expire, like the other zero-means-never
            // settings; taken literally it would end every session at each sweep.
            return Vec::new();
        }
        let started = Instant::now();
        let removed = self.table.sweep(started, self.config.ttl);
        if removed.is_empty() {
            log::trace!(
                "session sweep: nothing idle longer than {:?}",
                self.config.ttl
            );
        } else {
            log::info!(
                "session sweep removed {} session(s) idle longer than {:?} in {:?}; {} remain",
                removed.len(),
                self.config.ttl,
                started.elapsed(),
                self.table.len()
            );
        }
        removed
    }

    /// Tells the `ended` recipient which sessions ended, if any did.
    fn announce_ended(&self, session_ids: Vec<String>) {
        if !session_ids.is_empty() {
            self.ended.do_send(SessionsEnded { session_ids });
        }
    }
}

impl fmt::Debug for SessionRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionRegistry")
            .field("sessions", &self.table.len())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Actor for SessionRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        log::debug!(
            "session registry started with {} session(s); ttl {:?}, sweep every {:?}",
            self.table.len(),
            self.config.ttl,
            self.config.cleanup_interval
        );
        if !self.config.cleanup_interval.is_zero() {
            ctx.run_interval(self.config.cleanup_interval, |act, _| {
                // Nobody waits for the ids here, so they move into the event uncopied.
                let removed = act.sweep_stale();
                act.announce_ended(removed);
            });
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        // Also reached while a handler's panic unwinds (actix stops the actor when its
        // context is dropped), so this must not panic and must hand the state over.
        let table = std::mem::take(&mut self.table);
        log::debug!(
            "session registry stopped; handing over {} session(s)",
            table.len()
        );
        self.stopped.do_send(RegistryStopped { table });
    }
}

/// Starts tracking a session (idempotent: an existing session is returned unchanged).
///
/// Fails with [`ActorError::TooManySessions`] at `session.max_sessions`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<SessionInfo, ActorError>")]
pub struct Track {
    pub session_id: String,
}

/// Records activity on a session (refreshes its idle time, counts a request).
///
/// An unknown session is created when `create` is true, else it is
/// [`ActorError::SessionNotFound`].
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), ActorError>")]
pub struct Touch {
    pub session_id: String,
    pub create: bool,
}

/// Ends a session and returns its final info; then [`SessionsEnded`] goes out.
///
/// An unknown session is [`ActorError::SessionNotFound`].
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<SessionInfo, ActorError>")]
pub struct End {
    pub session_id: String,
}

/// The info of one session, or [`ActorError::SessionNotFound`].
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<SessionInfo, ActorError>")]
pub struct Get {
    pub session_id: String,
}

/// Every session, sorted by id.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Vec<SessionInfo>")]
pub struct List;

/// Removes sessions idle longer than `session.ttl` now, and returns their ids.
///
/// The registry also does this every `session.cleanup_interval`. When anything was
/// removed, [`SessionsEnded`] goes out. A zero `session.ttl` means sessions never expire.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Vec<String>")]
pub struct Sweep;

/// The registry's counters.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "SessionMetrics")]
pub struct Metrics;

/// The function an [`UpdateState`] applies to a session's state. It is shared (`Arc`,
/// `Fn`) so the Supervisor can deliver the message again if the registry died with it
/// still queued; it runs once per delivery that reaches a live registry.
pub type StateUpdate =
    std::sync::Arc<dyn Fn(&mut Value) -> Result<Value, ActorError> + Send + Sync>;

/// Changes a session's opaque state and returns what `update` returned.
///
/// `update` runs inside the registry, so it must be quick and must not block. It works on
/// a copy: when it fails the state is left as it was.
#[derive(Clone, Message)]
#[rtype(result = "Result<Value, ActorError>")]
pub struct UpdateState {
    pub session_id: String,
    pub update: StateUpdate,
}

impl fmt::Debug for UpdateState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpdateState")
            .field("session_id", &self.session_id)
            .finish_non_exhaustive()
    }
}

/// A copy of a session's opaque state.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Value, ActorError>")]
pub struct GetState {
    pub session_id: String,
}

/// Stops the registry; its table then goes out in [`RegistryStopped`].
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct StopRegistry;

/// Fault injection for supervision tests: the handler panics.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Crash;

/// Event: these sessions ended (by [`End`] or a sweep); workers may drop their programs.
#[derive(Debug, Clone, PartialEq, Message)]
#[rtype(result = "()")]
pub struct SessionsEnded {
    pub session_ids: Vec<String>,
}

/// Event: the registry stopped (asked to, or after a panic); `table` is all its state.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct RegistryStopped {
    pub table: SessionTable,
}

impl Handler<Track> for SessionRegistry {
    type Result = Result<SessionInfo, ActorError>;

    fn handle(&mut self, msg: Track, _: &mut Self::Context) -> Self::Result {
        let (info, created) =
            self.table
                .track(&msg.session_id, Instant::now(), self.config.max_sessions)?;
        if created {
            log::debug!(
                "session `{}` tracked ({} active)",
                info.id,
                self.table.len()
            );
        }
        Ok(info)
    }
}

impl Handler<Touch> for SessionRegistry {
    type Result = Result<(), ActorError>;

    fn handle(&mut self, msg: Touch, _: &mut Self::Context) -> Self::Result {
        self.table.touch(
            &msg.session_id,
            Instant::now(),
            msg.create,
            self.config.max_sessions,
        )
    }
}

impl Handler<End> for SessionRegistry {
    type Result = Result<SessionInfo, ActorError>;

    fn handle(&mut self, msg: End, _: &mut Self::Context) -> Self::Result {
        let info = self.table.end(&msg.session_id, Instant::now())?;
        log::debug!(
            "session `{}` ended after {} ms and {} request(s)",
            info.id,
            info.age_ms,
            info.requests
        );
        self.announce_ended(vec![msg.session_id]);
        Ok(info)
    }
}

impl Handler<Get> for SessionRegistry {
    type Result = Result<SessionInfo, ActorError>;

    fn handle(&mut self, msg: Get, _: &mut Self::Context) -> Self::Result {
        self.table.get(&msg.session_id, Instant::now())
    }
}

impl Handler<List> for SessionRegistry {
    type Result = MessageResult<List>;

    fn handle(&mut self, _: List, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.table.list(Instant::now()))
    }
}

impl Handler<Sweep> for SessionRegistry {
    type Result = MessageResult<Sweep>;

    fn handle(&mut self, _: Sweep, _: &mut Self::Context) -> Self::Result {
        let removed = self.sweep_stale();
        self.announce_ended(removed.clone());
        MessageResult(removed)
    }
}

impl Handler<Metrics> for SessionRegistry {
    type Result = MessageResult<Metrics>;

    fn handle(&mut self, _: Metrics, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.table.metrics(Instant::now()))
    }
}

impl Handler<UpdateState> for SessionRegistry {
    type Result = Result<Value, ActorError>;

    fn handle(&mut self, msg: UpdateState, _: &mut Self::Context) -> Self::Result {
        self.table
            .update_state(&msg.session_id, |state| (msg.update)(state))
    }
}

impl Handler<GetState> for SessionRegistry {
    type Result = Result<Value, ActorError>;

    fn handle(&mut self, msg: GetState, _: &mut Self::Context) -> Self::Result {
        self.table.state(&msg.session_id).cloned()
    }
}

impl Handler<StopRegistry> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, _: StopRegistry, ctx: &mut Self::Context) {
        log::debug!("session registry asked to shut down");
        ctx.stop();
    }
}

impl Handler<Crash> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, _: Crash, _: &mut Self::Context) {
        panic!("session registry: injected crash (Crash message)");
    }
}
