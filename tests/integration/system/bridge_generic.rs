//! The generic half of the bridge through a real pool of real Python processes.

use std::time::Duration;

use crate::common::*;
use serde_json::json;

#[tokio::test]
async fn built_in_commands_answer_through_a_real_pool() {
    let system = start_generic(2).await;
    let pong = system.call("ping", json!({})).await.unwrap();
    assert_eq!(pong["status"], "ok");
    assert!(pong["pid"].as_u64().unwrap() > 0);
    let echo = system.call("echo", json!({"a": [1, 2]})).await.unwrap();
    assert_eq!(echo["echo"], json!({"a": [1, 2]}));
    let stats = system.call("get_stats", json!({})).await.unwrap();
    assert!(stats["rss_bytes"].as_u64().unwrap() > 0);
    let pids = worker_pids(&system).await;
    assert_eq!(pids.len(), 2);
    system.shutdown(Duration::from_secs(5)).await.unwrap();
    for pid in pids {
        assert!(!pid_alive(pid), "worker {pid} outlived shutdown");
    }
}
