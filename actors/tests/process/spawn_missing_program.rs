//! A program that cannot be started is a `Spawn` error naming it and saying what to check.

use dspex_actors::ActorError;
use dspex_actors::{spawn_process as spawn, LaunchSpec};

#[tokio::test]
async fn spawning_a_missing_program_names_it() {
    let spec = LaunchSpec {
        program: "/nonexistent/dspex-python".into(),
        ..LaunchSpec::default()
    };
    let err = spawn(&spec, "w-missing").unwrap_err();
    let ActorError::Spawn(message) = &err else {
        panic!("expected a spawn error, got {err:?}")
    };
    assert!(message.contains("/nonexistent/dspex-python"), "{message}");
    assert!(message.contains("No such file"), "{message}");
    assert!(message.contains("python.executable"), "{message}");
    assert!(matches!(err, ActorError::Spawn(_)));
}
