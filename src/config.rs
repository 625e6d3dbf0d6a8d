//! dspex's configuration: where it comes from, and the typed [`Config`] a system starts
//! from.
//!
//! Settings are read in two stages, the way ripgrep reads its flags. First a raw TOML
//! table is merged from, in order, the defaults compiled in from `config/dspex.toml`
//! (which documents every key), an optional config file, `DSPEX_<SECTION>__<KEY>`
//! environment variables and explicit overrides from command-line flags. Unknown
//! sections and keys are rejected while merging, when it is still known which source
//! named them. Then one validation step turns the table into a [`Config`], checking
//! types, units and ranges and naming the key (and the file or variable that set it)
//! in every error. Nothing after this module reads files or the environment for
//! settings: the actors get their part through [`Config::actors_config`].

mod raw;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use dspex_actors::TransportKind;
pub use dspex_actors::{
    ActorsConfig, Affinity, PoolConfig, RateConfig, SessionConfig, ShutdownConfig,
    SupervisorConfig, WorkerConfig,
};

pub(crate) use raw::closest;
use raw::{Origin, RawConfig};

/// The defaults, every key present and commented. Also the schema: a key is known if
/// and only if it appears here.
pub const DEFAULT_TOML: &str = include_str!("../config/dspex.toml");

/// What dspex's own tests run with (small pool, short waits), layered over the defaults.
pub const TEST_TOML: &str = include_str!("../config/test.toml");

/// A complete, validated dspex configuration.
///
/// # Examples
///
/// ```
/// use dspex::config::Config;
///
/// let env = [("DSPEX_POOL__SIZE".to_owned(), "4".to_owned())];
/// let overrides = [("lm.model".to_owned(), toml::Value::from("openai/gpt-4o-mini"))];
/// let config = Config::load(None, env, &overrides)?;
/// assert_eq!(config.pool.size, 4);
/// assert_eq!(config.lm.model, "openai/gpt-4o-mini");
/// # Ok::<(), dspex::config::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `[system]`.
    pub system: SystemConfig,
    /// `[pool]`: the worker pool's size, timeouts and policies.
    pub pool: PoolConfig,
    /// `[session]`: session expiry.
    pub session: SessionConfig,
    /// `[supervisor]`: restart intensity.
    pub supervisor: SupervisorConfig,
    /// `[shutdown]`: the stop ladder's waits.
    pub shutdown: ShutdownConfig,
    /// `[python]`: how worker processes are started.
    pub python: PythonConfig,
    /// `[lm]`: the language model programs use.
    pub lm: LmConfig,
    /// `[run]`: limits of `dspex run`.
    pub run: RunConfig,
    /// `pool.worker_memory_limit`: the address-space limit (`RLIMIT_AS`) of each worker
    /// process, in bytes; `None`: no limit. It lives here rather than in [`PoolConfig`]
    /// because the actor layer applies it per launch ([`LaunchSpec`]), not as pool policy.
    ///
    /// [`LaunchSpec`]: dspex_actors::LaunchSpec
    pub worker_memory_limit: Option<u64>,
}

/// `[run]`: limits of `dspex run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunConfig {
    /// Longest input line in bytes (without its newline). A longer line fails its row as
    /// `input` and is skipped without being held in memory.
    pub max_line_bytes: u64,
}

/// `[system]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemConfig {
    /// Shown in log lines and worker ids; never registered anywhere.
    pub name: String,
}

/// Which Python interpreter runs the workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PythonExecutable {
    /// A virtual environment dspex creates and manages in its cache directory.
    Auto,
    /// This interpreter. A bare name (`python3`, no `/`) is looked up in `PATH`; a
    /// relative path from a config file is already resolved against the file's
    /// directory.
    Path(PathBuf),
}

/// `[python]`: how worker processes are started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonConfig {
    /// The interpreter.
    pub executable: PythonExecutable,
    /// Where the managed venv lives; `None`: in the cache, one per requirements hash.
    pub venv: Option<PathBuf>,
    /// Requirements for the managed venv; `None`: the bundled `requirements.txt`.
    pub requirements: Option<PathBuf>,
    /// A bridge script to run instead of the bundled `dspex_bridge` module.
    pub script: Option<PathBuf>,
    /// Dotted names of modules every worker imports to register user commands.
    pub handlers: Vec<String>,
    /// Directories added to the workers' `sys.path`.
    pub path: Vec<PathBuf>,
    /// How frames travel between host and worker.
    pub transport: TransportKind,
    /// Extra environment variables for workers; they win over inherited ones.
    pub env: BTreeMap<String, String>,
    /// Host environment variables passed on to workers (plus [`LmConfig::api_key_env`]).
    pub inherit_env: Vec<String>,
    /// Largest accepted protocol frame, in bytes (at most `u32::MAX`, the 4-byte
    /// length prefix's limit).
    pub max_frame_bytes: usize,
}

/// `[lm]`: the language model DSPy programs use, and how the pool paces calls to it.
#[derive(Debug, Clone, PartialEq)]
pub struct LmConfig {
    /// `"dummy"` (deterministic, offline) or a DSPy/LiteLLM model string.
    pub model: String,
    /// The environment variable holding the API key, if the model needs one.
    pub api_key_env: Option<String>,
    /// The provider's base URL (an OpenAI-compatible server, a proxy); `None`: the
    /// provider's default. Passed to `dspy.LM` as an argument, so DSPy can pick its
    /// native client.
    pub api_base: Option<String>,
    /// Sampling temperature, finite and ≥ 0.
    pub temperature: f64,
    /// Token limit per call, ≥ 1.
    pub max_tokens: u32,
    /// How long one LM call may take before it counts as failed (and is retried).
    pub timeout: Duration,
    /// Retries of a failed LM call (5xx, timeout, connection error) in the worker, and of
    /// a request refused for rate (429) by the pool.
    pub num_retries: u32,
    /// More keyword arguments for `dspy.LM` (e.g. `top_p`), as JSON.
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// DSPy's response cache.
    pub cache: LmCache,
    /// Where the disk cache lives; `None`: `<dspex cache dir>/lm-cache`.
    pub cache_dir: Option<PathBuf>,
    /// Most LM-bound requests in flight across the pool; 0: the pool's capacity.
    pub max_in_flight: usize,
    /// LM-bound requests started per minute across the pool; 0: no limit.
    pub requests_per_minute: u32,
}

impl LmConfig {
    /// The LM settings as the bridge reads them (`DSPEX_LM`, or a request's `lm`): every
    /// key it uses, the timeout in seconds. The disk cache needs a directory, so an unset
    /// `cache_dir` becomes `<dspex cache dir>/lm-cache`; with no cache directory at all the
    /// cache falls back to memory rather than failing every worker.
    pub fn to_wire(&self) -> serde_json::Value {
        let mut cache = self.cache;
        let cache_dir = match (cache, &self.cache_dir) {
            (LmCache::Disk, Some(dir)) => {
                Some(std::path::absolute(dir).unwrap_or_else(|_| dir.clone()))
            }
            (LmCache::Disk, None) => match crate::python_env::lm_cache_dir() {
                Ok(dir) => Some(dir),
                Err(e) => {
                    log::warn!("lm.cache = \"disk\" falls back to \"memory\": {e}");
                    cache = LmCache::Memory;
                    None
                }
            },
            _ => None,
        };
        serde_json::json!({
            "model": self.model,
            "api_key_env": self.api_key_env,
            "api_base": self.api_base,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "timeout": self.timeout.as_secs_f64(),
            "num_retries": self.num_retries,
            "extra": self.extra,
            "cache": cache.as_str(),
            "cache_dir": cache_dir,
        })
    }

    /// Checks settings built in code the way reading a config file does, so a bad value
    /// fails where it is set instead of on the next execution.
    ///
    /// # Errors
    ///
    /// A [`ValidationError`](crate::signature::ValidationError) naming the `lm.*` key.
    pub fn check(&self) -> Result<(), crate::signature::ValidationError> {
        let bad = |field: &str, message: String| {
            Err(crate::signature::ValidationError::new(field, message))
        };
        if self.model.trim().is_empty() {
            return bad(
                "lm.model",
                "the model must not be empty; use \"dummy\" or a DSPy model string like \"openai/gpt-4o-mini\"".into(),
            );
        }
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(
                "lm.temperature",
                format!("must be a finite number ≥ 0, got {}", self.temperature),
            );
        }
        if self.max_tokens == 0 {
            return bad("lm.max_tokens", "must be at least 1".into());
        }
        if self
            .api_key_env
            .as_deref()
            .is_some_and(|v| v.trim().is_empty())
        {
            return bad(
                "lm.api_key_env",
                "must name an environment variable, or be left out".into(),
            );
        }
        Ok(())
    }
}

/// `lm.cache`: which tiers of DSPy's response cache are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LmCache {
    /// Every call goes to the model.
    Off,
    /// Answers are kept in each worker's memory.
    Memory,
    /// In memory and on disk, shared by every worker of the machine (default).
    Disk,
}

impl LmCache {
    /// The spelling used in the config and on the wire: `off`, `memory`, `disk`.
    pub fn as_str(self) -> &'static str {
        match self {
            LmCache::Off => "off",
            LmCache::Memory => "memory",
            LmCache::Disk => "disk",
        }
    }
}

impl LmConfig {
    /// Whether this is the built-in deterministic offline model.
    pub fn is_dummy(&self) -> bool {
        self.model == "dummy"
    }
}

impl Config {
    /// Merges the defaults, `file` (if any), the `DSPEX_<SECTION>__<KEY>` variables in
    /// `env`, and `overrides` (`("pool.size", 8)`, later ones win), then validates.
    ///
    /// `env` is usually [`process_env`]`()`; variables that do not start with `DSPEX_`
    /// or have no `__` after it are not settings. Of those, a `DSPEX_*` variable that is
    /// not one of dspex's own ([`ENV_VARIABLES`], such as `DSPEX_HOME`) is logged as a
    /// warning naming the closest key, since `DSPEX_POOL_SIZE` (one underscore) would
    /// otherwise be ignored without a word. A variable's value
    /// is read as a TOML value when it is one (`8`, `true`, `["a", "b"]`, `"x"`), and as
    /// a string otherwise (`30s`, `/usr/bin/python3`); for keys whose default is a
    /// string it is always the string as written, so `DSPEX_SYSTEM__NAME=123` is
    /// `"123"`.
    ///
    /// Relative paths in `file` are resolved against the file's directory; those from
    /// `env` and `overrides` are left relative to the working directory.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the key and where it was set: an unreadable or invalid
    /// file, an unknown section or key (in the file, a variable or an override), a value
    /// of the wrong type, a malformed duration, a value outside its range.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(String, toml::Value)],
    ) -> Result<Config, ConfigError> {
        let mut raw = RawConfig::defaults();
        if let Some(path) = file {
            raw.merge_file(path)?;
        }
        raw.merge_env(env)?;
        raw.merge_overrides(overrides)?;
        raw.log_sources();
        validate::validate(&raw)
    }

    /// The defaults with `text` (a config file's contents) layered over them; no
    /// environment.
    ///
    /// # Errors
    ///
    /// As for [`Config::load`].
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let mut raw = RawConfig::defaults();
        raw.merge_text(text, Origin::Text("the given TOML text"))?;
        validate::validate(&raw)
    }

    /// The configuration dspex's tests use: `config/test.toml` over the defaults.
    ///
    /// # Panics
    ///
    /// Never in a released build: the embedded file is checked by this module's tests.
    pub fn test() -> Config {
        let mut raw = RawConfig::defaults();
        raw.merge_text(TEST_TOML, Origin::Text("config/test.toml"))
            .and_then(|()| validate::validate(&raw))
            .unwrap_or_else(|e| panic!("the embedded config/test.toml is invalid: {e}"))
    }

    /// The part of the configuration the actor layer runs on.
    pub fn actors_config(&self) -> ActorsConfig {
        ActorsConfig {
            pool: self.pool.clone(),
            session: self.session.clone(),
            supervisor: self.supervisor.clone(),
            shutdown: self.shutdown.clone(),
            rate: RateConfig {
                max_in_flight: self.lm.max_in_flight,
                requests_per_minute: self.lm.requests_per_minute,
                num_retries: self.lm.num_retries,
            },
            worker: WorkerConfig {
                max_frame_bytes: self.python.max_frame_bytes,
                // The bundled bridge answers control commands on its reader thread while
                // its slots are busy; a user's bridge script may read one frame at a time.
                ping_when_busy: self.python.script.is_none(),
                ..WorkerConfig::default()
            },
        }
    }
}

impl Default for Config {
    /// The embedded `config/dspex.toml`.
    fn default() -> Config {
        validate::validate(&RawConfig::defaults())
            .unwrap_or_else(|e| panic!("the embedded config/dspex.toml is invalid: {e}"))
    }
}

/// The environment variables dspex itself reads, besides the `DSPEX_<SECTION>__<KEY>`
/// settings, with what each does. Any other `DSPEX_*` variable is reported by
/// [`Config::load`] as a likely typo.
pub const ENV_VARIABLES: &[(&str, &str)] = &[
    ("DSPEX_CONFIG", "the config file, like --config"),
    (
        "DSPEX_HOME",
        "the cache directory (managed venvs, the unpacked bridge, the LM disk cache)",
    ),
    (
        "DSPEX_BOOTSTRAP_PYTHON",
        "the Python that creates the managed venv",
    ),
    (
        "DSPEX_TEST_LAYER",
        "the adapter test harnesses build: layer_1, layer_2 or layer_3",
    ),
    ("DSPEX_TEST_HOST_HELPER", "internal to dspex's own tests"),
];

/// The variables dspex sets in its workers' environment (contract §1). Set in dspex's
/// own environment they do nothing, since workers inherit only `python.inherit_env`; the
/// warning says to use `python.env` instead.
pub const WORKER_ENV_VARIABLES: &[&str] = &[
    "DSPEX_TRANSPORT",
    "DSPEX_WORKER_CONCURRENCY",
    "DSPEX_LM",
    "DSPEX_PRELOAD_DSPY",
    "DSPEX_LIFELINE_FD",
    "DSPEX_MEMORY_LIMIT",
    "DSPEX_WORKDIR",
    "DSPEX_HANDLERS",
    "DSPEX_PYTHON_PATH",
    "DSPEX_MAX_FRAME_BYTES",
    "DSPEX_LOG_LEVEL",
    "DSPEX_DUMMY_TRACE",
];

/// The process's environment in the form [`Config::load`] takes.
///
/// Unlike `std::env::vars`, this does not panic on a variable that is not valid
/// UTF-8: such a variable is skipped, with a warning if it looks like a dspex setting.
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(
            |(name, value)| match (name.into_string(), value.into_string()) {
                (Ok(name), Ok(value)) => Some((name, value)),
                (name, _) => {
                    let name = name.unwrap_or_else(|n| n.to_string_lossy().into_owned());
                    if name.starts_with(raw::ENV_PREFIX) {
                        log::warn!("ignoring environment variable {name}: it is not valid UTF-8");
                    }
                    None
                }
            },
        )
        .collect()
}

/// A configuration that could not be loaded.
///
/// `Display` is `config error: <message>`; the message names the key, the source that
/// set it, and what would be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config error: {message}")]
#[non_exhaustive]
pub struct ConfigError {
    /// The key at fault, as `section.key` (`pool.size`), when there is one.
    pub key: Option<String>,
    /// What is wrong and what to do.
    pub message: String,
    /// The config file involved, when the problem is in a file.
    pub path: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load_env(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load(None, env(vars), &[])
    }

    fn toml_err(text: &str) -> ConfigError {
        Config::from_toml_str(text).unwrap_err()
    }

    #[test]
    fn default_has_the_documented_values() {
        let expected = Config {
            system: SystemConfig {
                name: "dspex".into(),
            },
            pool: PoolConfig {
                size: 2,
                worker_concurrency: 8,
                startup_concurrency: 2,
                startup_timeout: Duration::from_secs(60),
                checkout_timeout: Duration::from_secs(30),
                request_timeout: Duration::from_secs(120),
                max_queue: 10_000,
                affinity: Affinity::Hint,
                degrade_after: 3,
                remove_after: 10,
                health_check_interval: Duration::from_secs(30),
                max_requests: 0,
                max_lifetime: Duration::ZERO,
                retry_on_crash: 1,
            },
            session: SessionConfig {
                ttl: Duration::from_secs(3600),
                cleanup_interval: Duration::from_secs(60),
                max_sessions: 10_000,
            },
            supervisor: SupervisorConfig {
                max_restarts: 3,
                max_window: Duration::from_secs(5),
            },
            shutdown: ShutdownConfig {
                graceful_timeout: Duration::from_secs(5),
                kill_timeout: Duration::from_secs(2),
            },
            python: PythonConfig {
                executable: PythonExecutable::Auto,
                venv: None,
                requirements: None,
                script: None,
                handlers: vec![],
                path: vec![],
                transport: TransportKind::Fds,
                env: BTreeMap::new(),
                inherit_env: [
                    "PATH",
                    "HOME",
                    "LANG",
                    "LC_ALL",
                    "TMPDIR",
                    "http_proxy",
                    "https_proxy",
                    "HTTP_PROXY",
                    "HTTPS_PROXY",
                    "NO_PROXY",
                    "SSL_CERT_FILE",
                    "REQUESTS_CA_BUNDLE",
                ]
                .map(String::from)
                .to_vec(),
                max_frame_bytes: 64 * 1024 * 1024,
            },
            lm: LmConfig {
                model: "dummy".into(),
                api_key_env: None,
                api_base: None,
                temperature: 0.0,
                max_tokens: 1024,
                timeout: Duration::from_secs(60),
                num_retries: 3,
                extra: serde_json::Map::new(),
                cache: LmCache::Disk,
                cache_dir: None,
                max_in_flight: 0,
                requests_per_minute: 0,
            },
            run: RunConfig {
                max_line_bytes: 16 << 20,
            },
            worker_memory_limit: None,
        };
        assert_eq!(Config::default(), expected);
        assert!(Config::default().lm.is_dummy());
    }

    #[test]
    fn default_equals_parsing_dspex_toml_and_loading_nothing() {
        let parsed: toml::Table = toml::from_str(DEFAULT_TOML).unwrap();
        // The embedded file used as a user file changes nothing.
        assert_eq!(
            Config::from_toml_str(DEFAULT_TOML).unwrap(),
            Config::default()
        );
        assert_eq!(Config::from_toml_str("").unwrap(), Config::default());
        assert_eq!(
            Config::load(None, env(&[]), &[]).unwrap(),
            Config::default()
        );
        assert_eq!(
            parsed.keys().collect::<Vec<_>>().len(),
            8,
            "dspex.toml has the eight sections"
        );
    }

    #[test]
    fn default_actors_config_matches_the_actor_layer_defaults() {
        let expected = ActorsConfig::default();
        assert_eq!(Config::default().actors_config(), expected);
    }

    #[test]
    fn actors_config_carries_every_section_and_the_frame_limit() {
        let config = Config::from_toml_str(
            "[system]\nname = \"x\"\n[pool]\nsize = 5\n[session]\nttl = \"2m\"\n\
             [supervisor]\nmax_restarts = 9\n[shutdown]\nkill_timeout = \"3s\"\n\
             [python]\nmax_frame_bytes = 2048\n",
        )
        .unwrap();
        let actors = config.actors_config();
        assert_eq!(actors.pool.size, 5);
        assert_eq!(actors.session.ttl, Duration::from_secs(120));
        assert_eq!(actors.supervisor.max_restarts, 9);
        assert_eq!(actors.shutdown.kill_timeout, Duration::from_secs(3));
        assert_eq!(actors.worker.max_frame_bytes, 2048);
        assert_eq!(
            actors.worker.keep_log_lines,
            WorkerConfig::default().keep_log_lines
        );
    }

    #[test]
    fn every_key_in_dspex_toml_is_commented() {
        let mut previous = "";
        for line in DEFAULT_TOML.lines() {
            let line = line.trim();
            let is_key = !line.is_empty()
                && !line.starts_with('#')
                && !line.starts_with('[')
                && !line.starts_with('"')
                && !line.starts_with(']')
                && line.contains('=');
            if is_key {
                assert!(
                    previous.starts_with('#'),
                    "key line `{line}` in dspex.toml has no comment above it"
                );
            }
            previous = line;
        }
    }

    #[test]
    fn test_config_is_small_and_offline() {
        let config = Config::test();
        assert_eq!(config.system.name, "dspex-test");
        assert_eq!(config.pool.size, 1);
        assert_eq!(config.pool.startup_concurrency, 1);
        assert!(config.pool.checkout_timeout < Config::default().pool.checkout_timeout);
        assert!(config.shutdown.graceful_timeout < Config::default().shutdown.graceful_timeout);
        assert!(config.lm.is_dummy());
    }

    #[test]
    fn file_env_and_overrides_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dspex.toml");
        std::fs::write(
            &file,
            "[pool]\nsize = 3\nmax_queue = 7\naffinity = \"strict\"\n[lm]\nmodel = \"from-file\"\n",
        )
        .unwrap();
        let config = Config::load(
            Some(&file),
            env(&[("DSPEX_POOL__SIZE", "5"), ("DSPEX_LM__MODEL", "from-env")]),
            &[("lm.model".into(), toml::Value::from("from-flag"))],
        )
        .unwrap();
        assert_eq!(config.pool.size, 5, "env beats the file");
        assert_eq!(config.pool.max_queue, 7, "the file beats the defaults");
        assert_eq!(config.pool.affinity, Affinity::Strict);
        assert_eq!(config.lm.model, "from-flag", "overrides beat env");
        assert_eq!(config.pool.checkout_timeout, Duration::from_secs(30));
    }

    #[test]
    fn later_overrides_win() {
        let config = Config::load(
            None,
            env(&[]),
            &[
                ("pool.size".into(), toml::Value::Integer(2)),
                ("pool.size".into(), toml::Value::Integer(6)),
            ],
        )
        .unwrap();
        assert_eq!(config.pool.size, 6);
    }

    #[test]
    fn env_values_are_toml_values_when_they_parse() {
        let config = load_env(&[
            ("DSPEX_POOL__SIZE", "8"),
            ("DSPEX_POOL__CHECKOUT_TIMEOUT", "5s"),
            ("DSPEX_PYTHON__HANDLERS", r#"["a", "b.c"]"#),
            ("DSPEX_PYTHON__ENV", r#"{ HF_HOME = "/data" }"#),
            ("DSPEX_PYTHON__EXECUTABLE", "/usr/bin/python3"),
            ("DSPEX_LM__API_KEY_ENV", "\"OPENAI_API_KEY\""),
            ("DSPEX_LM__TEMPERATURE", "0.7"),
        ])
        .unwrap();
        assert_eq!(config.pool.size, 8);
        assert_eq!(config.pool.checkout_timeout, Duration::from_secs(5));
        assert_eq!(config.python.handlers, ["a", "b.c"]);
        assert_eq!(config.python.env["HF_HOME"], "/data");
        assert_eq!(
            config.python.executable,
            PythonExecutable::Path("/usr/bin/python3".into())
        );
        assert_eq!(config.lm.api_key_env.as_deref(), Some("OPENAI_API_KEY"));
        assert_eq!(config.lm.temperature, 0.7);
    }

    #[test]
    fn env_values_for_string_keys_stay_strings() {
        let config =
            load_env(&[("DSPEX_SYSTEM__NAME", "123"), ("DSPEX_LM__MODEL", "nan")]).unwrap();
        assert_eq!(config.system.name, "123");
        assert_eq!(config.lm.model, "nan");
    }

    #[test]
    fn env_without_double_underscore_is_not_an_override() {
        let config = load_env(&[
            ("DSPEX_HOME", "/tmp/x"),
            ("DSPEX_TEST_LAYER", "layer_1"),
            ("POOL__SIZE", "9"),
            ("XDSPEX_POOL__SIZE", "9"),
        ])
        .unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn unknown_env_override_names_the_variable_and_the_key() {
        let e = load_env(&[("DSPEX_POOL__SISE", "2")]).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("pool.sise"));
        assert_eq!(e.path, None);
        assert!(
            e.message.contains("environment variable DSPEX_POOL__SISE"),
            "{e}"
        );
        assert!(e.message.contains("did you mean `pool.size`?"), "{e}");
        let e = load_env(&[("DSPEX_POOLS__SIZE", "2")]).unwrap_err();
        assert!(
            e.message
                .starts_with("unknown section `[pools]` in environment variable DSPEX_POOLS__SIZE"),
            "{e}"
        );
        let e = load_env(&[("DSPEX_POOL__", "2")]).unwrap_err();
        assert!(e.message.contains("DSPEX_<SECTION>__<KEY>"), "{e}");
    }

    #[test]
    fn env_type_errors_say_which_variable_set_the_value() {
        let e = load_env(&[("DSPEX_POOL__SIZE", "two")]).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("pool.size"));
        assert_eq!(
            e.to_string(),
            "config error: `pool.size` must be an integer ≥ 1, got \"two\" (set by environment variable DSPEX_POOL__SIZE)"
        );
    }

    #[test]
    fn unknown_key_in_file_names_the_file_and_the_known_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("my.toml");
        std::fs::write(&file, "[pool]\nsise = 2\n").unwrap();
        let e = Config::load(Some(&file), env(&[]), &[]).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("pool.sise"));
        assert_eq!(e.path.as_deref(), Some(file.as_path()));
        let prefix = format!("unknown key `pool.sise` in {}", file.display());
        assert!(e.message.starts_with(&prefix), "{e}");
        assert!(e.message.contains("known keys in [pool]: "), "{e}");
        assert!(e.message.contains("startup_concurrency"), "{e}");
        assert!(e.message.contains("did you mean `pool.size`?"), "{e}");
    }

    #[test]
    fn unknown_sections_and_misplaced_keys_are_explained() {
        let e = toml_err("[pools]\nsize = 2\n");
        assert!(e.message.starts_with("unknown section `[pools]`"), "{e}");
        assert!(e.message.contains("did you mean `[pool]`?"), "{e}");
        assert!(e.message.contains("known sections: "), "{e}");
        let e = toml_err("size = 2\n");
        assert_eq!(e.key.as_deref(), Some("size"));
        assert!(e.message.contains("put it in the [pool] section"), "{e}");
        let e = toml_err("pool = 3\n");
        assert!(e.message.contains("`pool` must be a section"), "{e}");
    }

    #[test]
    fn unknown_override_key_is_an_error() {
        for (key, expected) in [
            (
                "pool.sise",
                "unknown key `pool.sise` in an explicit override",
            ),
            ("size", "override key `size` must be `section.key`"),
            (
                "pool.size.x",
                "override key `pool.size.x` must be `section.key`",
            ),
        ] {
            let e =
                Config::load(None, env(&[]), &[(key.into(), toml::Value::Integer(1))]).unwrap_err();
            assert!(e.message.starts_with(expected), "{key}: {e}");
        }
    }

    #[test]
    fn unreadable_and_invalid_files_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let e = Config::load(Some(&missing), env(&[]), &[]).unwrap_err();
        assert_eq!(e.path.as_deref(), Some(missing.as_path()));
        assert_eq!(e.key, None);
        assert!(
            e.message
                .starts_with(&format!("cannot read config file {}: ", missing.display())),
            "{e}"
        );
        let broken = dir.path().join("broken.toml");
        std::fs::write(&broken, "[pool\nsize = 1\n").unwrap();
        let e = Config::load(Some(&broken), env(&[]), &[]).unwrap_err();
        assert_eq!(e.path.as_deref(), Some(broken.as_path()));
        assert!(
            e.message
                .starts_with(&format!("invalid TOML in {}: ", broken.display())),
            "{e}"
        );
        assert!(e.message.contains("line 1"), "{e}");
    }

    #[test]
    fn type_errors_name_key_and_value() {
        for (text, key, expected) in [
            (
                "[pool]\nsize = \"two\"",
                "pool.size",
                "`pool.size` must be an integer ≥ 1, got \"two\"",
            ),
            (
                "[pool]\nsize = 0",
                "pool.size",
                "`pool.size` must be an integer ≥ 1, got 0",
            ),
            (
                "[pool]\nstartup_concurrency = 0",
                "pool.startup_concurrency",
                "must be an integer ≥ 1, got 0",
            ),
            (
                "[pool]\nmax_queue = -1",
                "pool.max_queue",
                "`pool.max_queue` must be an integer ≥ 0, got -1",
            ),
            (
                "[pool]\nretry_on_crash = 1.5",
                "pool.retry_on_crash",
                "must be an integer from 0 to 4294967295, got 1.5",
            ),
            (
                "[system]\nname = \"\"",
                "system.name",
                "`system.name` must not be empty",
            ),
            (
                "[system]\nname = 3",
                "system.name",
                "`system.name` must be a string, got 3",
            ),
            (
                "[session]\nmax_sessions = 0",
                "session.max_sessions",
                "must be an integer ≥ 1",
            ),
            (
                "[lm]\nmax_tokens = 0",
                "lm.max_tokens",
                "must be an integer from 1 to 4294967295, got 0",
            ),
            (
                "[lm]\ntemperature = -0.5",
                "lm.temperature",
                "`lm.temperature` must be a number ≥ 0, got -0.5",
            ),
            (
                "[lm]\ntemperature = \"hot\"",
                "lm.temperature",
                "must be a number ≥ 0, got \"hot\"",
            ),
            (
                "[lm]\nmodel = \"\"",
                "lm.model",
                "`lm.model` must not be empty",
            ),
            (
                "[python]\nhandlers = \"mod\"",
                "python.handlers",
                "must be a list of strings, e.g. [\"a\", \"b\"], got \"mod\"",
            ),
            (
                "[python]\npath = [1]",
                "python.path",
                "must be a list of strings",
            ),
            (
                "[python]\nmax_frame_bytes = 100",
                "python.max_frame_bytes",
                "must be an integer from 1024 to 4294967295, got 100",
            ),
        ] {
            let e = toml_err(text);
            assert_eq!(e.key.as_deref(), Some(key), "{text}");
            assert!(e.message.contains(expected), "{text}: {e}");
            assert!(e.message.ends_with("(set in the given TOML text)"), "{e}");
        }
    }

    #[test]
    fn new_pool_lm_and_run_keys_are_read_and_reach_the_actor_layer() {
        let config = Config::from_toml_str(
            "[pool]\nworker_concurrency = 16\nworker_memory_limit = \"4GiB\"\n\
             [lm]\napi_base = \"http://127.0.0.1:8000/v1\"\ntimeout = \"5s\"\n\
             num_retries = 5\nextra = { top_p = 0.9, stop = [\"x\"] }\ncache = \"memory\"\n\
             cache_dir = \"/c\"\nmax_in_flight = 4\nrequests_per_minute = 600\n\
             [run]\nmax_line_bytes = \"1KiB\"\n",
        )
        .unwrap();
        assert_eq!(config.pool.worker_concurrency, 16);
        assert_eq!(config.worker_memory_limit, Some(4 << 30));
        let lm = &config.lm;
        assert_eq!(lm.api_base.as_deref(), Some("http://127.0.0.1:8000/v1"));
        assert_eq!(lm.timeout, Duration::from_secs(5));
        assert_eq!(lm.num_retries, 5);
        assert_eq!(
            serde_json::Value::Object(lm.extra.clone()),
            serde_json::json!({"top_p": 0.9, "stop": ["x"]})
        );
        assert_eq!(lm.cache, LmCache::Memory);
        assert_eq!(lm.cache_dir.as_deref(), Some(Path::new("/c")));
        assert_eq!(config.run.max_line_bytes, 1024);
        let actors = config.actors_config();
        assert_eq!(actors.pool.capacity(), 2 * 16);
        assert_eq!(
            actors.rate,
            RateConfig {
                max_in_flight: 4,
                requests_per_minute: 600,
                num_retries: 5
            }
        );
        assert!(actors.worker.ping_when_busy);
        let scripted = Config::from_toml_str("[python]\nscript = \"/b.py\"").unwrap();
        assert!(
            !scripted.actors_config().worker.ping_when_busy,
            "a user's bridge script may answer one frame at a time"
        );
    }

    #[test]
    fn pool_size_is_capped() {
        let e = toml_err("[pool]\nsize = 1025");
        assert_eq!(e.key.as_deref(), Some("pool.size"));
        assert!(
            e.message
                .starts_with("`pool.size` must be at most 1024, got 1025"),
            "{e}"
        );
        assert!(e.message.contains("pool.worker_concurrency"), "{e}");
        assert_eq!(
            Config::from_toml_str("[pool]\nsize = 1024")
                .unwrap()
                .pool
                .size,
            1024
        );
    }

    #[test]
    fn a_system_name_with_control_characters_is_a_config_error() {
        for name in ["a\\u0000b", "line\\nbreak", "bell\\u0007"] {
            let e = toml_err(&format!("[system]\nname = \"{name}\""));
            assert_eq!(e.key.as_deref(), Some("system.name"), "{name}");
            assert!(
                e.message.contains("must not contain control characters"),
                "{e}"
            );
        }
        let e = load_env(&[("DSPEX_SYSTEM__NAME", "nul\0inside")]).unwrap_err();
        assert!(e.message.contains("DSPEX_SYSTEM__NAME"), "{e}");
        assert_eq!(
            Config::from_toml_str("[system]\nname = \"prod-1.eu_west\"")
                .unwrap()
                .system
                .name,
            "prod-1.eu_west"
        );
    }

    #[test]
    fn bad_sizes_and_lm_values_name_their_key() {
        for (text, key, expected) in [
            (
                "[pool]\nworker_memory_limit = \"4 parsecs\"",
                "pool.worker_memory_limit",
                "invalid size \"4 parsecs\"; use e.g. \"512MiB\"",
            ),
            (
                "[pool]\nworker_memory_limit = \"1MiB\"",
                "pool.worker_memory_limit",
                "must be at least 67108864 bytes",
            ),
            (
                "[pool]\nworker_concurrency = 0",
                "pool.worker_concurrency",
                "must be an integer from 1 to 10000, got 0",
            ),
            (
                "[run]\nmax_line_bytes = \"\"",
                "run.max_line_bytes",
                "must be set",
            ),
            (
                "[run]\nmax_line_bytes = -5",
                "run.max_line_bytes",
                "invalid size -5",
            ),
            (
                "[lm]\ncache = \"redis\"",
                "lm.cache",
                "must be one of \"off\", \"memory\", \"disk\"",
            ),
            (
                "[lm]\ntimeout = \"0s\"",
                "lm.timeout",
                "must be longer than zero",
            ),
            (
                "[lm]\napi_base = \"localhost:8000\"",
                "lm.api_base",
                "must be an http:// or https:// URL",
            ),
            (
                "[lm]\nextra = 3",
                "lm.extra",
                "must be a table of keyword arguments",
            ),
            (
                "[lm]\nextra = { timeout = 3 }",
                "lm.extra.timeout",
                "set `lm.timeout` instead",
            ),
            (
                "[lm]\nextra = { top_p = nan }",
                "lm.extra.top_p",
                "must be a finite number",
            ),
            (
                "[lm]\nmax_in_flight = -1",
                "lm.max_in_flight",
                "must be an integer ≥ 0",
            ),
            (
                "[lm]\nnum_retries = -1",
                "lm.num_retries",
                "must be an integer from 0",
            ),
        ] {
            let e = toml_err(text);
            assert_eq!(e.key.as_deref(), Some(key), "{text}");
            assert!(e.message.contains(expected), "{text}: {e}");
        }
    }

    #[test]
    fn integer_temperature_is_accepted() {
        let config = Config::from_toml_str("[lm]\ntemperature = 1").unwrap();
        assert_eq!(config.lm.temperature, 1.0);
    }

    #[test]
    fn bad_durations_show_examples() {
        let e = toml_err("[pool]\ncheckout_timeout = \"5 parsecs\"");
        assert_eq!(e.key.as_deref(), Some("pool.checkout_timeout"));
        assert!(
            e.message.starts_with(
                "`pool.checkout_timeout`: invalid duration \"5 parsecs\"; use e.g. \"30s\", \"500ms\", \"2m\""
            ),
            "{e}"
        );
        let e = toml_err("[pool]\ncheckout_timeout = 30");
        assert!(
            e.message
                .starts_with("`pool.checkout_timeout`: invalid duration 30"),
            "{e}"
        );
        assert!(e.message.contains("a string with a unit"), "{e}");
    }

    #[test]
    fn zero_durations_are_refused_where_they_would_break_timers() {
        for key in [
            "pool.startup_timeout",
            "pool.checkout_timeout",
            "pool.request_timeout",
            "pool.health_check_interval",
            "session.ttl",
            "session.cleanup_interval",
            "supervisor.max_window",
        ] {
            let (section, name) = key.split_once('.').unwrap();
            let e = toml_err(&format!("[{section}]\n{name} = \"0s\""));
            assert_eq!(e.key.as_deref(), Some(key));
            assert!(
                e.message
                    .starts_with(&format!("`{key}` must be longer than zero")),
                "{e}"
            );
        }
        let config = Config::from_toml_str(
            "[pool]\nmax_lifetime = \"0s\"\n[shutdown]\ngraceful_timeout = \"0s\"\nkill_timeout = \"0ms\"",
        )
        .unwrap();
        assert_eq!(config.pool.max_lifetime, Duration::ZERO);
        assert_eq!(config.shutdown.graceful_timeout, Duration::ZERO);
    }

    #[test]
    fn durations_accept_humantime_forms() {
        let config =
            Config::from_toml_str("[pool]\nrequest_timeout = \"1m 30s\"\nmax_lifetime = \"2h\"")
                .unwrap();
        assert_eq!(config.pool.request_timeout, Duration::from_secs(90));
        assert_eq!(config.pool.max_lifetime, Duration::from_secs(7200));
    }

    #[test]
    fn bad_enums_list_the_allowed_values() {
        let e = toml_err("[pool]\naffinity = \"sticky\"");
        assert_eq!(e.key.as_deref(), Some("pool.affinity"));
        assert!(
            e.message
                .starts_with("`pool.affinity` must be one of \"hint\", \"strict\"; got \"sticky\""),
            "{e}"
        );
        let e = toml_err("[python]\ntransport = \"pipes\"");
        assert!(
            e.message
                .starts_with("`python.transport` must be one of \"fds\", \"stdio\"; got \"pipes\""),
            "{e}"
        );
        let config = Config::from_toml_str("[python]\ntransport = \"stdio\"").unwrap();
        assert_eq!(config.python.transport, TransportKind::Stdio);
    }

    #[test]
    fn remove_after_must_not_be_below_degrade_after() {
        let e = toml_err("[pool]\ndegrade_after = 5\nremove_after = 4");
        assert_eq!(e.key.as_deref(), Some("pool.remove_after"));
        assert!(
            e.message
                .starts_with("`pool.remove_after` (4) must be ≥ `pool.degrade_after` (5)"),
            "{e}"
        );
        let config = Config::from_toml_str("[pool]\ndegrade_after = 5\nremove_after = 5").unwrap();
        assert_eq!(config.pool.remove_after, 5);
    }

    #[test]
    fn python_names_are_checked() {
        for (text, key, expected) in [
            (
                "[python]\nhandlers = [\"my-mod\"]",
                "python.handlers",
                "\"my-mod\" is not a Python module name",
            ),
            (
                "[python]\nhandlers = [\"a..b\"]",
                "python.handlers",
                "\"a..b\" is not a Python module name",
            ),
            (
                "[python]\nenv = { A = 1 }",
                "python.env.A",
                "`python.env.A` must be a string, got 1",
            ),
            (
                "[python]\nenv = { \"A=B\" = \"x\" }",
                "python.env",
                "\"A=B\" is not a valid environment variable name",
            ),
            (
                "[python]\nenv = []",
                "python.env",
                "must be a table of strings",
            ),
            (
                "[python]\ninherit_env = [\"\"]",
                "python.inherit_env",
                "\"\" is not a valid environment variable name",
            ),
            (
                "[lm]\napi_key_env = \"MY KEY\"",
                "lm.api_key_env",
                "\"MY KEY\" is not a valid environment variable name",
            ),
            (
                "[python]\nexecutable = \"\"",
                "python.executable",
                "must be \"auto\" or the path of a python executable",
            ),
        ] {
            let e = toml_err(text);
            assert_eq!(e.key.as_deref(), Some(key), "{text}");
            assert!(e.message.contains(expected), "{text}: {e}");
        }
    }

    #[test]
    fn python_section_reads_paths_and_optionals() {
        let config = Config::from_toml_str(
            "[python]\nexecutable = \"python3\"\nvenv = \"/v\"\nrequirements = \"/r.txt\"\n\
             script = \"/s.py\"\nhandlers = [\"pkg.handlers\"]\npath = [\"/h\"]\n\
             env = { A = \"1\" }\ninherit_env = [\"PATH\"]\n[lm]\napi_key_env = \"OPENAI_API_KEY\"",
        )
        .unwrap();
        let python = config.python;
        assert_eq!(python.executable, PythonExecutable::Path("python3".into()));
        assert_eq!(python.venv, Some("/v".into()));
        assert_eq!(python.requirements, Some("/r.txt".into()));
        assert_eq!(python.script, Some("/s.py".into()));
        assert_eq!(python.handlers, ["pkg.handlers"]);
        assert_eq!(python.path, [PathBuf::from("/h")]);
        assert_eq!(python.env, BTreeMap::from([("A".into(), "1".into())]));
        assert_eq!(python.inherit_env, ["PATH"]);
        assert_eq!(config.lm.api_key_env.as_deref(), Some("OPENAI_API_KEY"));
    }

    #[test]
    fn relative_paths_in_a_file_resolve_against_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dspex.toml");
        std::fs::write(
            &file,
            "[python]\nexecutable = \"venv/bin/python\"\nscript = \"bridge.py\"\n\
             path = [\"handlers\", \"/abs\"]\nrequirements = \"req.txt\"\nvenv = \"v\"\n",
        )
        .unwrap();
        let config =
            Config::load(Some(&file), env(&[("DSPEX_PYTHON__VENV", "from-env")]), &[]).unwrap();
        let python = config.python;
        let d = dir.path();
        assert_eq!(
            python.executable,
            PythonExecutable::Path(d.join("venv/bin/python"))
        );
        assert_eq!(python.script, Some(d.join("bridge.py")));
        assert_eq!(python.path, [d.join("handlers"), PathBuf::from("/abs")]);
        assert_eq!(python.requirements, Some(d.join("req.txt")));
        assert_eq!(
            python.venv,
            Some(PathBuf::from("from-env")),
            "env paths stay as given"
        );
    }

    #[test]
    fn bare_executable_name_is_not_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dspex.toml");
        std::fs::write(&file, "[python]\nexecutable = \"python3\"\n").unwrap();
        let config = Config::load(Some(&file), env(&[]), &[]).unwrap();
        assert_eq!(
            config.python.executable,
            PythonExecutable::Path("python3".into())
        );
    }

    #[test]
    fn errors_in_a_file_carry_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dspex.toml");
        std::fs::write(&file, "[pool]\nsize = 0\n").unwrap();
        let e = Config::load(Some(&file), env(&[]), &[]).unwrap_err();
        assert_eq!(e.path.as_deref(), Some(file.as_path()));
        assert!(
            e.message.ends_with(&format!("(set in {})", file.display())),
            "{e}"
        );
    }

    #[test]
    fn process_env_reads_the_environment() {
        // PATH is set in any environment the tests run in.
        assert!(process_env().iter().any(|(name, _)| name == "PATH"));
    }
}
