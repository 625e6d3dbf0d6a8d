//! Embedding dspex in a host application: start an isolated system (the managed venv is
//! created on first use), run a typed DSPy program, shut down.
//!
//! `cargo run --example embed` (offline: the default LM is the deterministic `dummy`).

use std::time::Duration;

use dspex::{Config, ModuleKind, Signature, System};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let system = System::start(Config::default()).await?;

    let session = system.open_session(None).await?;
    let signature: Signature = "question -> answer, confidence: float".parse()?;
    session
        .create_program("qa", &signature, ModuleKind::Predict)
        .await?;

    let inputs = json!({"question": "What does dspex do?"});
    let outputs = session
        .execute("qa", inputs.as_object().cloned().unwrap_or_default())
        .await?;
    println!("{}", serde_json::to_string_pretty(&outputs)?);

    session.end().await?;
    system.shutdown(Duration::from_secs(5)).await?;
    Ok(())
}
