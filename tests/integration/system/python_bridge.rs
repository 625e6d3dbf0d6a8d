//! Runs the Python bridge's own pytest suite (python/tests) in the managed venv, so
//! `cargo test` covers both halves of the bridge.

use std::path::Path;
use std::process::Command;

use dspex::python_env::{self, PythonSetup};

#[test]
fn python_bridge_pytest_suite_passes() {
    let env = python_env::ensure(&PythonSetup::default(), &mut |p| {
        eprintln!("python env: {p:?}")
    })
    .expect("managed venv (dspy + pytest) is available");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(&env.python)
        .args([
            "-m",
            "pytest",
            "python/tests",
            "-q",
            "-p",
            "no:cacheprovider",
        ])
        .current_dir(root)
        // Bytecode under python/ would change the embedded bridge's mtime and force rebuilds.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run pytest");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "pytest failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains(" passed"), "pytest ran no tests:\n{stdout}");
}
