//! The SessionRegistry actor, driven through its messages in a real actix system.
//!
//! Test names follow the seed's SessionPool scenarios. Each test starts its own registry and
//! its own event collector, nothing is named or global, so they run in parallel.

use std::time::Duration;

use actix::prelude::*;
use dspex_actors::session::*;
use dspex_actors::{ActorError, SessionConfig};
use serde_json::json;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// Long enough that a missing event is a bug, not a slow machine.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Stands in for the Supervisor: forwards the registry's events to the test.
struct Collector {
    ended: UnboundedSender<Vec<String>>,
    stopped: UnboundedSender<SessionTable>,
}

impl Actor for Collector {
    type Context = Context<Self>;
}

impl Handler<SessionsEnded> for Collector {
    type Result = ();
    fn handle(&mut self, msg: SessionsEnded, _: &mut Context<Self>) {
        let _ = self.ended.send(msg.session_ids);
    }
}

impl Handler<RegistryStopped> for Collector {
    type Result = ();
    fn handle(&mut self, msg: RegistryStopped, _: &mut Context<Self>) {
        let _ = self.stopped.send(msg.table);
    }
}

struct Harness {
    registry: Addr<SessionRegistry>,
    collector: Addr<Collector>,
    ended: UnboundedReceiver<Vec<String>>,
    stopped: UnboundedReceiver<SessionTable>,
}

impl Harness {
    fn start(config: SessionConfig, table: SessionTable) -> Self {
        let (ended_tx, ended) = unbounded_channel();
        let (stopped_tx, stopped) = unbounded_channel();
        let collector = Collector {
            ended: ended_tx,
            stopped: stopped_tx,
        }
        .start();
        let registry = start_registry(config, table, &collector);
        Harness {
            registry,
            collector,
            ended,
            stopped,
        }
    }

    async fn next_ended(&mut self) -> Vec<String> {
        tokio::time::timeout(EVENT_TIMEOUT, self.ended.recv())
            .await
            .expect("no SessionsEnded event in time")
            .expect("collector gone")
    }

    async fn next_stopped(&mut self) -> SessionTable {
        tokio::time::timeout(EVENT_TIMEOUT, self.stopped.recv())
            .await
            .expect("no RegistryStopped event in time")
            .expect("collector gone")
    }

    async fn track(&self, id: &str) -> Result<SessionInfo, ActorError> {
        self.registry
            .send(Track {
                session_id: id.into(),
            })
            .await
            .expect("registry mailbox")
    }

    async fn get(&self, id: &str) -> Result<SessionInfo, ActorError> {
        self.registry
            .send(Get {
                session_id: id.into(),
            })
            .await
            .expect("registry mailbox")
    }

    async fn end(&self, id: &str) -> Result<SessionInfo, ActorError> {
        self.registry
            .send(End {
                session_id: id.into(),
            })
            .await
            .expect("registry mailbox")
    }

    async fn metrics(&self) -> SessionMetrics {
        self.registry.send(Metrics).await.expect("registry mailbox")
    }
}

fn start_registry(
    config: SessionConfig,
    table: SessionTable,
    collector: &Addr<Collector>,
) -> Addr<SessionRegistry> {
    SessionRegistry::new(
        config,
        table,
        collector.clone().recipient(),
        collector.clone().recipient(),
    )
    .start()
}

/// No interval sweep, generous limits: the tests drive everything by message.
fn manual_config() -> SessionConfig {
    SessionConfig {
        ttl: Duration::from_secs(3600),
        cleanup_interval: Duration::ZERO,
        max_sessions: 1000,
    }
}

fn ids(infos: &[SessionInfo]) -> Vec<&str> {
    infos.iter().map(|i| i.id.as_str()).collect()
}

#[actix::test]
async fn session_pool_tracks_new_sessions() {
    let h = Harness::start(manual_config(), SessionTable::default());
    let info = h.track("session-1").await.unwrap();
    assert_eq!(info.id, "session-1");
    assert_eq!(info.requests, 0);
    assert!(info.created_at_unix > 0.0);

    assert_eq!(h.get("session-1").await.unwrap().id, "session-1");
    let listed = h.registry.send(List).await.unwrap();
    assert_eq!(ids(&listed), ["session-1"]);
    assert_eq!(h.metrics().await.active, 1);
}

#[actix::test]
async fn session_pool_prevents_duplicate_session_tracking() {
    let h = Harness::start(manual_config(), SessionTable::default());
    let first = h.track("dup").await.unwrap();
    let second = h.track("dup").await.unwrap();
    assert_eq!(second.id, first.id);
    assert_eq!(second.created_at_unix, first.created_at_unix);

    let listed = h.registry.send(List).await.unwrap();
    assert_eq!(ids(&listed), ["dup"]);
    let m = h.metrics().await;
    assert_eq!((m.active, m.total_created), (1, 1));
}

#[actix::test]
async fn session_pool_ends_sessions_successfully() {
    let mut h = Harness::start(manual_config(), SessionTable::default());
    h.track("to-end").await.unwrap();
    h.track("to-keep").await.unwrap();

    let info = h.end("to-end").await.unwrap();
    assert_eq!(info.id, "to-end");
    assert_eq!(h.next_ended().await, ["to-end"]);

    assert_eq!(
        h.get("to-end").await,
        Err(ActorError::SessionNotFound("to-end".into()))
    );
    assert!(h.get("to-keep").await.is_ok());
    let m = h.metrics().await;
    assert_eq!((m.active, m.total_ended), (1, 1));
}

#[actix::test]
async fn session_pool_handles_ending_non_existent_session() {
    let mut h = Harness::start(manual_config(), SessionTable::default());
    let err = h.end("never-tracked").await.unwrap_err();
    assert_eq!(err, ActorError::SessionNotFound("never-tracked".into()));
    assert!(matches!(err, ActorError::SessionNotFound(_)));

    // Events arrive in order, so if the failed End had announced anything it would come
    // before this real one.
    h.track("real").await.unwrap();
    h.end("real").await.unwrap();
    assert_eq!(h.next_ended().await, ["real"]);
    assert_eq!(h.metrics().await.total_ended, 1);
}

#[actix::test]
async fn session_pool_tracks_session_metrics() {
    let h = Harness::start(manual_config(), SessionTable::default());
    assert_eq!(h.metrics().await, SessionMetrics::default());

    for id in ["a", "b", "c"] {
        h.track(id).await.unwrap();
    }
    for _ in 0..3 {
        h.registry
            .send(Touch {
                session_id: "a".into(),
                create: false,
            })
            .await
            .unwrap()
            .unwrap();
    }
    h.end("b").await.unwrap();

    let m = h.metrics().await;
    assert_eq!(
        (m.active, m.total_created, m.total_ended, m.stale_cleaned),
        (2, 3, 1, 0)
    );
    assert_eq!(h.get("a").await.unwrap().requests, 3);
}

#[actix::test]
async fn session_pool_cleans_up_stale_sessions() {
    let ttl = Duration::from_millis(250);
    let mut h = Harness::start(
        SessionConfig {
            ttl,
            ..manual_config()
        },
        SessionTable::default(),
    );
    h.track("stale").await.unwrap();
    // `stale` is idle for at least this long: sleep never returns early.
    tokio::time::sleep(ttl * 3).await;
    // `fresh` has 250 ms of slack before it could be considered stale.
    h.track("fresh").await.unwrap();

    let removed = h.registry.send(Sweep).await.unwrap();
    assert_eq!(removed, ["stale"]);
    assert_eq!(h.next_ended().await, ["stale"]);

    assert!(matches!(
        h.get("stale").await,
        Err(ActorError::SessionNotFound(_))
    ));
    assert!(h.get("fresh").await.is_ok());
    let m = h.metrics().await;
    assert_eq!((m.active, m.stale_cleaned, m.total_ended), (1, 1, 1));
}

#[actix::test]
async fn session_pool_sweep_with_zero_ttl_removes_nothing() {
    let h = Harness::start(
        SessionConfig {
            ttl: Duration::ZERO,
            ..manual_config()
        },
        SessionTable::default(),
    );
    h.track("forever").await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(h.registry.send(Sweep).await.unwrap().is_empty());
    assert!(h.get("forever").await.is_ok());
}

#[actix::test]
async fn session_pool_refuses_sessions_past_max_sessions() {
    let h = Harness::start(
        SessionConfig {
            max_sessions: 2,
            ..manual_config()
        },
        SessionTable::default(),
    );
    h.track("a").await.unwrap();
    h.track("b").await.unwrap();
    assert_eq!(
        h.track("c").await,
        Err(ActorError::TooManySessions { max: 2 })
    );
    // Touch-with-create is held to the same limit.
    let touched = h
        .registry
        .send(Touch {
            session_id: "c".into(),
            create: true,
        })
        .await
        .unwrap();
    assert_eq!(touched, Err(ActorError::TooManySessions { max: 2 }));
    // Existing sessions stay usable at the limit, and ending one makes room.
    assert!(h.track("a").await.is_ok());
    h.end("a").await.unwrap();
    assert!(h.track("c").await.is_ok());
}

#[actix::test]
async fn session_pool_touch_unknown_session_without_create_is_not_found() {
    let h = Harness::start(manual_config(), SessionTable::default());
    let touched = h
        .registry
        .send(Touch {
            session_id: "ghost".into(),
            create: false,
        })
        .await
        .unwrap();
    assert_eq!(touched, Err(ActorError::SessionNotFound("ghost".into())));

    h.registry
        .send(Touch {
            session_id: "ghost".into(),
            create: true,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(h.get("ghost").await.unwrap().requests, 1);
}

#[actix::test]
async fn session_pool_updates_and_reads_session_state() {
    let h = Harness::start(manual_config(), SessionTable::default());
    h.track("s").await.unwrap();
    let out = h
        .registry
        .send(UpdateState {
            session_id: "s".into(),
            update: std::sync::Arc::new(|state| {
                state["programs"]["p1"] = json!({"signature": "question -> answer"});
                Ok(json!({"stored": "p1"}))
            }),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out, json!({"stored": "p1"}));

    let failed = h
        .registry
        .send(UpdateState {
            session_id: "s".into(),
            update: std::sync::Arc::new(|state| {
                state["programs"] = json!(null);
                Err(ActorError::Protocol("refused".into()))
            }),
        })
        .await
        .unwrap();
    assert_eq!(failed, Err(ActorError::Protocol("refused".into())));

    let state = h
        .registry
        .send(GetState {
            session_id: "s".into(),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        state,
        json!({"programs": {"p1": {"signature": "question -> answer"}}})
    );
    let missing = h
        .registry
        .send(GetState {
            session_id: "nope".into(),
        })
        .await
        .unwrap();
    assert_eq!(missing, Err(ActorError::SessionNotFound("nope".into())));
}

#[actix::test]
async fn session_pool_crash_hands_every_session_to_the_supervisor() {
    let mut h = Harness::start(manual_config(), SessionTable::default());
    for id in ["s1", "s2", "s3"] {
        h.track(id).await.unwrap();
    }
    h.registry
        .send(UpdateState {
            session_id: "s2".into(),
            update: std::sync::Arc::new(|state| {
                state["k"] = json!("v");
                Ok(json!(null))
            }),
        })
        .await
        .unwrap()
        .unwrap();
    h.end("s3").await.unwrap();

    // The handler panics, so the reply is dropped: the caller sees a closed mailbox.
    assert!(h.registry.send(Crash).await.is_err());

    let table = h.next_stopped().await;
    let now = std::time::Instant::now();
    assert_eq!(ids(&table.list(now)), ["s1", "s2"]);
    assert_eq!(table.state("s2").unwrap(), &json!({"k": "v"}));
    let m = table.metrics(now);
    assert_eq!((m.total_created, m.total_ended), (3, 1));
    assert!(!h.registry.connected());
}

#[actix::test]
async fn session_pool_restarted_from_the_handed_over_table_serves_the_same_sessions() {
    let mut h = Harness::start(manual_config(), SessionTable::default());
    h.track("kept").await.unwrap();
    h.registry
        .send(Touch {
            session_id: "kept".into(),
            create: false,
        })
        .await
        .unwrap()
        .unwrap();
    assert!(h.registry.send(Crash).await.is_err());
    let table = h.next_stopped().await;

    let successor = start_registry(manual_config(), table, &h.collector);
    let info = successor
        .send(Get {
            session_id: "kept".into(),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.requests, 1);
    let duplicate = successor
        .send(Track {
            session_id: "kept".into(),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(duplicate.requests, 1);
    let m = successor.send(Metrics).await.unwrap();
    assert_eq!((m.active, m.total_created), (1, 1));
}

#[actix::test]
async fn session_pool_shutdown_hands_over_the_table() {
    let mut h = Harness::start(manual_config(), SessionTable::default());
    h.track("s").await.unwrap();
    h.registry.send(StopRegistry).await.unwrap();
    let table = h.next_stopped().await;
    assert!(table.contains("s"));
}

#[actix::test]
async fn session_pool_interval_sweep_removes_stale_sessions() {
    let mut h = Harness::start(
        SessionConfig {
            ttl: Duration::from_millis(50),
            cleanup_interval: Duration::from_millis(20),
            max_sessions: 10,
        },
        SessionTable::default(),
    );
    h.track("idle").await.unwrap();

    // Sent by the interval, not by us.
    assert_eq!(h.next_ended().await, ["idle"]);
    assert!(matches!(
        h.get("idle").await,
        Err(ActorError::SessionNotFound(_))
    ));
    assert_eq!(h.metrics().await.stale_cleaned, 1);
}
