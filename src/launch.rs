//! How a worker process is launched from the configuration: interpreter, argv, working
//! directory and the environment (built only from `python.inherit_env` + `python.env`,
//! never the whole host environment, so secrets the workers do not need stay out of them).
//!
//! Workers import only from the venv, the bridge and `python.path`, never from the
//! directory dspex runs in: the bundled bridge starts with the unpacked bridge's own
//! directory as its working directory and `PYTHONSAFEPATH=1` (so `-m dspex_bridge` puts
//! nothing of the user's on `sys.path`), then changes to `DSPEX_WORKDIR`, the host's
//! working directory, before it imports any user code, so user code opening relative paths
//! behaves as in the host. Everything LiteLLM- or DSPy-specific a worker needs from its
//! environment is set here, in one place.

use std::path::{Path, PathBuf};

use dspex_actors::LaunchSpec;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::python_env::{PythonEnv, PythonSetup};

/// LiteLLM, which DSPy imports, fetches its model cost map from the internet at import
/// unless told to use the copy it ships: every Python process dspex starts gets this.
pub(crate) const LITELLM_OFFLINE: (&str, &str) = ("LITELLM_LOCAL_MODEL_COST_MAP", "True");

/// What `python_env::ensure` must prepare for this configuration.
pub fn python_setup(config: &Config, require_dspy: bool) -> PythonSetup {
    PythonSetup {
        executable: config.python.executable.clone(),
        venv: config.python.venv.clone(),
        requirements: config.python.requirements.clone(),
        require_dspy,
        cache_dir: None,
    }
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_owned())
    }
}

fn join_paths(paths: &[PathBuf]) -> Result<String> {
    let joined = std::env::join_paths(paths.iter().map(|p| absolute(p))).map_err(|e| {
        Error::Environment(format!(
            "python.path has an entry that cannot go in a search path: {e}"
        ))
    })?;
    Ok(joined.to_string_lossy().into_owned())
}

/// The worker command line and environment. `preload_dspy` makes each worker import DSPy
/// before it answers its handshake, so all workers import in parallel at start-up instead
/// of on their first request.
pub fn launch_spec(config: &Config, env: &PythonEnv, preload_dspy: bool) -> Result<LaunchSpec> {
    let python = &config.python;
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut inherit: Vec<&str> = python.inherit_env.iter().map(String::as_str).collect();
    if let Some(key) = &config.lm.api_key_env {
        inherit.push(key);
    }
    for name in inherit {
        if let Ok(value) = std::env::var(name) {
            vars.push((name.to_owned(), value));
        }
    }
    // The bridge first, then the user's own directories.
    let mut pythonpath = vec![env.bridge_path.clone()];
    pythonpath.extend(python.path.iter().cloned());
    vars.push(("PYTHONPATH".into(), join_paths(&pythonpath)?));
    vars.push(("PYTHONUNBUFFERED".into(), "1".into()));
    vars.push((LITELLM_OFFLINE.0.into(), LITELLM_OFFLINE.1.into()));
    vars.push((
        "DSPEX_WORKER_CONCURRENCY".into(),
        config.pool.worker_concurrency.to_string(),
    ));
    vars.push(("DSPEX_LM".into(), config.lm.to_wire().to_string()));
    vars.push(("PYTHONDONTWRITEBYTECODE".into(), "1".into()));
    if !python.path.is_empty() {
        vars.push(("DSPEX_PYTHON_PATH".into(), join_paths(&python.path)?));
    }
    if !python.handlers.is_empty() {
        vars.push(("DSPEX_HANDLERS".into(), python.handlers.join(",")));
    }
    vars.push((
        "DSPEX_MAX_FRAME_BYTES".into(),
        python.max_frame_bytes.to_string(),
    ));
    if preload_dspy && python.script.is_none() {
        vars.push(("DSPEX_PRELOAD_DSPY".into(), "1".into()));
    }
    if let Some(limit) = config.worker_memory_limit {
        // Informational: the bridge names the limit in its MemoryError messages.
        vars.push(("DSPEX_MEMORY_LIMIT".into(), limit.to_string()));
        // Every thread's malloc arena reserves 64 MiB of address space, which RLIMIT_AS
        // counts although little of it is ever used: two arenas keep a worker's request
        // threads from spending the limit on reservations.
        vars.push(("MALLOC_ARENA_MAX".into(), "2".into()));
    }
    // `python.env` wins over everything inherited or derived.
    for (k, v) in &python.env {
        vars.retain(|(name, _)| name != k);
        vars.push((k.clone(), v.clone()));
    }
    let bundled = python.script.is_none();
    let (args, cwd) = match &python.script {
        Some(script) => (vec![absolute(script).to_string_lossy().into_owned()], None),
        None => {
            vars.push(("PYTHONSAFEPATH".into(), "1".into()));
            if let Ok(here) = std::env::current_dir() {
                vars.push(("DSPEX_WORKDIR".into(), here.to_string_lossy().into_owned()));
            }
            (
                vec!["-m".into(), "dspex_bridge".into()],
                Some(env.bridge_path.clone()),
            )
        }
    };
    Ok(LaunchSpec {
        program: env.python.clone(),
        args,
        env: vars,
        cwd,
        transport: python.transport,
        memory_limit: config.worker_memory_limit,
        lifeline: bundled,
    })
}
