//! Worker lifecycle with real Python processes: crashes, hangs, noisy user code, corrupt
//! frames, shutdown with work in flight, grandchildren, legacy stdio bridges.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::*;
use dspex::config::{PythonExecutable, TransportKind};
use dspex::{Call, System};
use serde_json::json;

#[tokio::test]
async fn user_command_printing_to_stdout_and_fd1_returns_the_right_result() {
    for transport in [TransportKind::Fds, TransportKind::Stdio] {
        let mut config = handlers_config(1);
        config.python.transport = transport;
        let system = start_generic_with(config).await;
        for i in 0..3 {
            let v = system.call("noisy", json!({"value": i})).await.unwrap();
            assert_eq!(v, json!({"value": i}), "{transport:?}");
        }
        let status = system.status().await.unwrap().pool.unwrap();
        assert_eq!(
            status.totals.crashed, 0,
            "{transport:?}: noise must not break the worker"
        );
        system.shutdown(Duration::from_secs(5)).await.unwrap();
    }
}

#[tokio::test]
async fn python_exception_comes_back_as_a_structured_python_error() {
    let system = start_generic_with(handlers_config(1)).await;
    let err = system
        .call("fail", json!({"message": "bad things"}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "python");
    match err {
        dspex::Error::Python {
            error_type,
            message,
            traceback,
        } => {
            assert_eq!(error_type, "ValueError");
            assert_eq!(message, "bad things");
            assert!(traceback
                .unwrap_or_default()
                .contains("dspex_test_handlers"));
        }
        other => panic!("{other:?}"),
    }
    // The worker is still healthy and serving.
    assert_eq!(
        system.call("echo", json!({"n": 1})).await.unwrap()["echo"]["n"],
        1
    );
    let pool = system.status().await.unwrap().pool.unwrap();
    assert_eq!(pool.workers[0].stats.errors, 1);
    assert_eq!(pool.workers[0].health.as_str(), "ready");
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn worker_killed_with_sigkill_mid_request_is_retried_and_pool_refills() {
    let system = start_generic_with(handlers_config(2)).await;
    let pids_before = worker_pids(&system).await;
    let call = {
        let system = system.clone();
        tokio::spawn(async move { system.call("sleep", json!({"seconds": 1.5})).await })
    };
    // Find the busy worker and kill it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let victim = loop {
        let pool = system.status().await.unwrap().pool.unwrap();
        if let Some(w) = pool.workers.iter().find(|w| w.busy) {
            break w.pid.unwrap();
        }
        assert!(Instant::now() < deadline, "request never reached a worker");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    kill(victim, libc::SIGKILL);
    let answer = call.await.unwrap().expect("retried on another worker");
    assert_ne!(answer["pid"].as_u64().unwrap() as u32, victim);
    system.wait_ready(2).await.unwrap();
    let pool = system.status().await.unwrap().pool.unwrap();
    assert_eq!(pool.ready, 2);
    assert_eq!(pool.totals.retried, 1);
    let pids_after = worker_pids(&system).await;
    assert!(!pids_after.contains(&victim));
    assert_eq!(pids_after.len(), 2);
    assert!(
        pids_before.iter().any(|p| pids_after.contains(p)),
        "only the victim was replaced"
    );
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn request_whose_worker_dies_every_time_fails_with_worker_crashed_after_one_retry() {
    let system = start_generic_with(handlers_config(2)).await;
    let err = system.call("die", json!({})).await.unwrap_err();
    assert_eq!(err.kind(), "worker_crashed", "{err}");
    assert!(
        err.to_string().contains("SIGKILL"),
        "exit classified in the error: {err}"
    );
    system.wait_ready(2).await.unwrap();
    let pool = system.status().await.unwrap().pool.unwrap();
    assert_eq!(pool.totals.retried, 1);
    assert_eq!(pool.totals.crashed, 2);
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn hung_handler_on_a_one_slot_worker_times_out_at_request_stage_and_the_worker_is_replaced() {
    // One slot: the stuck request fills half of the worker at once, so it is drained and
    // replaced (with more slots it would keep serving; see the pool's layer-2 tests).
    let mut config = handlers_config(1);
    config.pool.worker_concurrency = 1;
    let system = start_generic_with(config).await;
    let old = worker_pids(&system).await[0];
    let started = Instant::now();
    let err = system
        .execute(Call::new("sleep", json!({"seconds": 30})).timeout(Duration::from_millis(500)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            dspex::Error::Timeout {
                stage: dspex_actors::TimeoutStage::Request,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered near the deadline"
    );
    assert!(
        eventually(Duration::from_secs(5), || !pid_alive(old)).await,
        "hung worker killed"
    );
    system.wait_ready(1).await.unwrap();
    let new = whoami(&system, None).await;
    assert_ne!(new, old);
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn garbage_truncated_and_oversized_frames_are_protocol_errors_and_the_pool_keeps_serving() {
    let system = start_generic_with(handlers_config(1)).await;
    for command in ["garbage", "truncated", "oversized"] {
        let old = worker_pids(&system).await[0];
        let err = system.call(command, json!({})).await.unwrap_err();
        assert_eq!(err.kind(), "protocol", "{command}: {err}");
        system.wait_ready(1).await.unwrap();
        assert_eq!(
            system
                .call("echo", json!({"after": command}))
                .await
                .unwrap()["echo"]["after"],
            command
        );
        assert!(
            eventually(Duration::from_secs(5), || !pid_alive(old)).await,
            "{command}: old worker gone"
        );
    }
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_with_requests_in_flight_completes_them_then_no_worker_remains() {
    let system = start_generic_with(handlers_config(2)).await;
    let pids = worker_pids(&system).await;
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let system = system.clone();
            tokio::spawn(async move { system.call("sleep", json!({"seconds": 0.5})).await })
        })
        .collect();
    // Wait until both workers are busy.
    let deadline = Instant::now() + Duration::from_secs(10);
    while system.status().await.unwrap().pool.unwrap().busy < 2 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    system.shutdown(Duration::from_secs(10)).await.unwrap();
    for call in calls {
        let v = call
            .await
            .unwrap()
            .expect("in-flight and queued requests complete");
        assert_eq!(v["slept"], 0.5);
    }
    for pid in pids {
        assert!(!pid_alive(pid), "worker {pid} survived shutdown");
    }
    let err = system.call("echo", json!({})).await.unwrap_err();
    assert_eq!(err.kind(), "shutting_down");
}

#[tokio::test]
async fn grandchild_of_a_worker_is_gone_after_shutdown() {
    let system = start_generic_with(handlers_config(1)).await;
    let grandchild = system.call("spawn_grandchild", json!({})).await.unwrap()["pid"]
        .as_u64()
        .unwrap() as u32;
    assert!(pid_alive(grandchild));
    system.shutdown(Duration::from_secs(5)).await.unwrap();
    assert!(
        eventually(Duration::from_secs(2), || !pid_alive(grandchild)).await,
        "grandchild {grandchild} survived"
    );
}

#[tokio::test]
async fn legacy_stdio_bridge_script_works_as_a_worker() {
    let mut config = generic_config(1);
    config.python.script = Some(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("python/tests/fixtures/legacy_stdio_bridge.py"),
    );
    config.python.transport = TransportKind::Stdio;
    let system = start_generic_with(config).await;
    let v = system.call("echo", json!({"legacy": true})).await.unwrap();
    assert_eq!(v["echo"]["legacy"], true, "{v}");
    let pid = worker_pids(&system).await[0];
    system.shutdown(Duration::from_secs(5)).await.unwrap();
    assert!(!pid_alive(pid));
}

#[tokio::test]
async fn failing_handler_import_stops_start_up_with_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("broken_handlers.py"),
        "import no_such_module_anywhere\n",
    )
    .unwrap();
    let mut config = generic_config(1);
    config.python.path = vec![dir.path().to_owned()];
    config.python.handlers = vec!["broken_handlers".into()];
    init_logs();
    let err = System::builder(config)
        .require_dspy(false)
        .start()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "environment", "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("broken_handlers") && msg.contains("no_such_module_anywhere"),
        "{msg}"
    );
}

#[tokio::test]
async fn missing_interpreter_is_an_environment_error_naming_it() {
    let mut config = generic_config(1);
    config.python.executable = PythonExecutable::Path(PathBuf::from("/nonexistent/python3"));
    let err = System::builder(config)
        .require_dspy(false)
        .start()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "environment");
    assert!(err.to_string().contains("/nonexistent/python3"), "{err}");
}

#[tokio::test]
async fn a_handler_past_the_memory_limit_fails_once_and_its_worker_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("runs");
    let mut config = handlers_config(1);
    config.worker_memory_limit = Some(512 << 20);
    let system = start_generic_with(config).await;
    let old = whoami(&system, None).await;
    let err = system
        .call("hog", json!({"marker": marker, "gib": 20}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, dspex::Error::Python { error_type, message, .. }
            if error_type == "MemoryError" && message.contains("pool.worker_memory_limit")),
        "{err:?}"
    );
    // Run once: a request that ran out of memory is not tried again on another worker.
    let runs = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(runs.lines().count(), 1, "{runs}");
    // The worker is not kept: a fresh one serves the next request.
    assert!(
        eventually(Duration::from_secs(10), || !pid_alive(old)).await,
        "the worker that ran out of memory was replaced"
    );
    system.wait_ready(1).await.unwrap();
    assert_ne!(whoami(&system, None).await, old);
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}
