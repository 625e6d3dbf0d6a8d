//! Stage two of loading: the one step that turns the merged table into a typed
//! [`Config`]. Every check is here, so the rules for a key (type, unit, range, how a
//! relative path resolves) are in one place and every error names its key and source.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{Origin, RawConfig};
use super::{
    Affinity, Config, ConfigError, LmCache, LmConfig, PoolConfig, PythonConfig, PythonExecutable,
    RunConfig, SessionConfig, ShutdownConfig, SupervisorConfig, SystemConfig, TransportKind,
};

/// Most workers one system may have. Each is a Python process of about 200 MB with DSPy
/// imported, so 1024 is already hundreds of GB; a larger value is a typo, not a plan
/// (more requests in flight come from `pool.worker_concurrency`, not more processes).
pub(super) const MAX_POOL_SIZE: usize = 1024;

/// `pool.size` above this many workers per CPU core gets a warning. Workers beyond a few
/// per core add no throughput: LM waits are covered by each worker's own concurrency,
/// and the CPU work of DSPy (prompt building, parsing) is bound by the cores. Four per
/// core leaves room for workers that block in user code, and is far enough above the
/// cores that a deliberate choice is never warned about on a small machine.
pub(super) const WORKERS_PER_CORE_WARNING: usize = 4;

/// `pool.worker_memory_limit` below this is refused: not even a bare Python interpreter
/// with the bridge starts in less address space, so every worker would fail to start.
pub(super) const MIN_WORKER_MEMORY: u64 = 64 << 20;

/// The virtual size measured for a DSPy worker on LiteLLM with 8 requests in flight and
/// the limit's malloc arena cap (475 MiB, see `config/dspex.toml`), rounded up: a limit
/// below it gets a warning.
const TYPICAL_WORKER_VSZ: u64 = 512 << 20;

/// `extra` keys that have settings of their own in `[lm]`; the bridge refuses them too.
const LM_NAMED_KWARGS: &[(&str, &str)] = &[
    ("model", "lm.model"),
    ("api_key", "lm.api_key_env"),
    ("api_base", "lm.api_base"),
    ("base_url", "lm.api_base"),
    ("temperature", "lm.temperature"),
    ("max_tokens", "lm.max_tokens"),
    ("timeout", "lm.timeout"),
    ("num_retries", "lm.num_retries"),
    ("cache", "lm.cache"),
];

/// Whether a zero duration is meaningful for a key.
#[derive(Clone, Copy, PartialEq)]
enum Zero {
    /// `"0s"` means "never" or "do not wait".
    Allowed,
    /// A zero period or timeout would spin or fail every request.
    Refused,
}

pub(super) fn validate(raw: &RawConfig) -> Result<Config, ConfigError> {
    let r = Reader { raw };
    let pool = PoolConfig {
        size: pool_size(&r)?,
        worker_concurrency: r.int("pool", "worker_concurrency", 1, 10_000)? as usize,
        startup_concurrency: r.usize("pool", "startup_concurrency", 1)?,
        startup_timeout: r.duration("pool", "startup_timeout", Zero::Refused)?,
        checkout_timeout: r.duration("pool", "checkout_timeout", Zero::Refused)?,
        request_timeout: r.duration("pool", "request_timeout", Zero::Refused)?,
        max_queue: r.usize("pool", "max_queue", 0)?,
        affinity: match r.choice("pool", "affinity", &["hint", "strict"])? {
            "strict" => Affinity::Strict,
            _ => Affinity::Hint,
        },
        degrade_after: r.u32("pool", "degrade_after", 1)?,
        remove_after: r.u32("pool", "remove_after", 1)?,
        health_check_interval: r.duration("pool", "health_check_interval", Zero::Refused)?,
        max_requests: r.int("pool", "max_requests", 0, i64::MAX)? as u64,
        max_lifetime: r.duration("pool", "max_lifetime", Zero::Allowed)?,
        retry_on_crash: r.u32("pool", "retry_on_crash", 0)?,
    };
    if pool.remove_after < pool.degrade_after {
        return Err(r.error(
            "pool",
            "remove_after",
            format!(
                "`pool.remove_after` ({}) must be ≥ `pool.degrade_after` ({}): a worker is \
                 degraded before it is removed",
                pool.remove_after, pool.degrade_after
            ),
        ));
    }
    warn_if_oversized(
        pool.size,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    let worker_memory_limit = r.size("pool", "worker_memory_limit", MIN_WORKER_MEMORY)?;
    if let Some(limit) = worker_memory_limit.filter(|l| *l < TYPICAL_WORKER_VSZ) {
        log::warn!(
            "pool.worker_memory_limit = {} MiB is below the {} MiB of address space a DSPy \
             worker on LiteLLM maps with worker_concurrency = 8; workers may fail with MemoryError \
             (see the comment on the key in config/dspex.toml)",
            limit >> 20,
            TYPICAL_WORKER_VSZ >> 20
        );
    }
    Ok(Config {
        system: SystemConfig {
            name: system_name(&r)?,
        },
        pool,
        session: SessionConfig {
            ttl: r.duration("session", "ttl", Zero::Refused)?,
            cleanup_interval: r.duration("session", "cleanup_interval", Zero::Refused)?,
            max_sessions: r.usize("session", "max_sessions", 1)?,
        },
        supervisor: SupervisorConfig {
            max_restarts: r.u32("supervisor", "max_restarts", 0)?,
            max_window: r.duration("supervisor", "max_window", Zero::Refused)?,
        },
        shutdown: ShutdownConfig {
            graceful_timeout: r.duration("shutdown", "graceful_timeout", Zero::Allowed)?,
            kill_timeout: r.duration("shutdown", "kill_timeout", Zero::Allowed)?,
        },
        python: python(&r)?,
        lm: lm(&r)?,
        run: RunConfig {
            max_line_bytes: r.size("run", "max_line_bytes", 1)?.ok_or_else(|| {
                r.error(
                    "run",
                    "max_line_bytes",
                    "`run.max_line_bytes` must be set, e.g. \"16MiB\": without a limit one \
                     line without a newline could fill the memory",
                )
            })?,
        },
        worker_memory_limit,
    })
}

fn pool_size(r: &Reader<'_>) -> Result<usize, ConfigError> {
    let size = r.usize("pool", "size", 1)?;
    if size > MAX_POOL_SIZE {
        return Err(r.error(
            "pool",
            "size",
            format!(
                "`pool.size` must be at most {MAX_POOL_SIZE}, got {size}: each worker is a Python \
                 process of about 200 MB; for more requests in flight raise \
                 pool.worker_concurrency instead"
            ),
        ));
    }
    Ok(size)
}

/// Logs a warning when `size` workers are far more than `cores` can keep busy.
fn warn_if_oversized(size: usize, cores: usize) -> bool {
    let oversized = size > WORKERS_PER_CORE_WARNING * cores;
    if oversized {
        log::warn!(
            "pool.size = {size} is more than {WORKERS_PER_CORE_WARNING} workers per CPU core \
             ({cores} cores): extra workers cost memory and start-up time but add no \
             throughput; to have more requests in flight raise pool.worker_concurrency"
        );
    }
    oversized
}

/// The name goes into thread names, worker ids and log lines, where a NUL cannot go
/// (a thread name with one panics) and other control characters garble the output.
fn system_name(r: &Reader<'_>) -> Result<String, ConfigError> {
    let name = r.non_empty_string("system", "name")?;
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(r.error(
            "system",
            "name",
            format!(
                "`system.name` must not contain control characters, got {name:?} (with {c:?}); \
                 use letters, digits, `-`, `_` or `.`"
            ),
        ));
    }
    Ok(name)
}

fn lm(r: &Reader<'_>) -> Result<LmConfig, ConfigError> {
    let api_base = r.optional_path_like("lm", "api_base")?;
    if let Some(url) = api_base {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(r.error(
                "lm",
                "api_base",
                format!(
                    "`lm.api_base` must be an http:// or https:// URL such as \
                     \"http://127.0.0.1:8000/v1\", got {url:?}"
                ),
            ));
        }
    }
    let cache = match r.choice("lm", "cache", &["off", "memory", "disk"])? {
        "off" => LmCache::Off,
        "memory" => LmCache::Memory,
        _ => LmCache::Disk,
    };
    Ok(LmConfig {
        model: r.non_empty_string("lm", "model")?,
        api_key_env: r
            .optional_path_like("lm", "api_key_env")?
            .map(|name| r.env_name("lm", "api_key_env", name).map(str::to_owned))
            .transpose()?,
        api_base: api_base.map(str::to_owned),
        temperature: r.temperature()?,
        max_tokens: r.u32("lm", "max_tokens", 1)?,
        timeout: r.duration("lm", "timeout", Zero::Refused)?,
        num_retries: r.u32("lm", "num_retries", 0)?,
        extra: lm_extra(r)?,
        cache,
        cache_dir: r.optional_path("lm", "cache_dir")?,
        max_in_flight: r.usize("lm", "max_in_flight", 0)?,
        requests_per_minute: r.u32("lm", "requests_per_minute", 0)?,
    })
}

/// `lm.extra` as the JSON object of keyword arguments the bridge passes to `dspy.LM`.
fn lm_extra(r: &Reader<'_>) -> Result<serde_json::Map<String, serde_json::Value>, ConfigError> {
    let value = r.value("lm", "extra");
    let Some(table) = value.as_table() else {
        return Err(r.error(
            "lm",
            "extra",
            format!(
                "`lm.extra` must be a table of keyword arguments for dspy.LM, e.g. \
                 {{ top_p = 0.9 }}, got {value}"
            ),
        ));
    };
    let mut extra = serde_json::Map::new();
    for (key, value) in table {
        if let Some((_, setting)) = LM_NAMED_KWARGS.iter().find(|(name, _)| name == key) {
            let mut e = r.error(
                "lm",
                "extra",
                format!("`lm.extra.{key}` is not allowed: set `{setting}` instead"),
            );
            e.key = Some(format!("lm.extra.{key}"));
            return Err(e);
        }
        let json = toml_to_json(value).ok_or_else(|| {
            let mut e = r.error(
                "lm",
                "extra",
                format!("`lm.extra.{key}` must be a finite number, got {value}"),
            );
            e.key = Some(format!("lm.extra.{key}"));
            e
        })?;
        extra.insert(key.clone(), json);
    }
    Ok(extra)
}

/// A TOML value as JSON; dates become their TOML text. `None` for a non-finite float,
/// which JSON cannot hold.
fn toml_to_json(value: &toml::Value) -> Option<serde_json::Value> {
    use serde_json::Value as Json;
    Some(match value {
        toml::Value::String(s) => Json::String(s.clone()),
        toml::Value::Integer(i) => Json::from(*i),
        toml::Value::Float(f) => Json::Number(serde_json::Number::from_f64(*f)?),
        toml::Value::Boolean(b) => Json::Bool(*b),
        toml::Value::Datetime(d) => Json::String(d.to_string()),
        toml::Value::Array(items) => {
            Json::Array(items.iter().map(toml_to_json).collect::<Option<_>>()?)
        }
        toml::Value::Table(table) => Json::Object(
            table
                .iter()
                .map(|(k, v)| Some((k.clone(), toml_to_json(v)?)))
                .collect::<Option<_>>()?,
        ),
    })
}

/// Parses a size such as `"16MiB"`, `"4 GiB"`, `"512kB"` or `"1048576"` into bytes.
/// Binary units (KiB, MiB, GiB, TiB) count in 1024s, decimal ones (kB, MB, GB, TB) in
/// 1000s; a bare number is bytes. Fractions are allowed (`"1.5GiB"`).
pub(super) fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "TiB" | "T" => 1 << 40,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return None,
    };
    let bytes = number * scale as f64;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then(|| bytes.round() as u64)
}

fn python(r: &Reader<'_>) -> Result<PythonConfig, ConfigError> {
    let executable = match r.string("python", "executable")? {
        "auto" => PythonExecutable::Auto,
        "" => {
            return Err(r.error(
                "python",
                "executable",
                "`python.executable` must be \"auto\" or the path of a python executable, got \"\"",
            ));
        }
        // A bare name is a PATH lookup, not a path relative to the config file.
        name if !name.contains('/') => PythonExecutable::Path(PathBuf::from(name)),
        path => PythonExecutable::Path(r.resolve("python", "executable", path)),
    };
    let handlers = r.string_list("python", "handlers")?;
    if let Some(bad) = handlers.iter().find(|h| !is_module_name(h)) {
        return Err(r.error(
            "python",
            "handlers",
            format!(
                "`python.handlers`: {bad:?} is not a Python module name; use dotted \
                 identifiers such as \"my_handlers\" or \"pkg.handlers\""
            ),
        ));
    }
    let inherit_env = r.string_list("python", "inherit_env")?;
    for name in &inherit_env {
        r.env_name("python", "inherit_env", name)?;
    }
    Ok(PythonConfig {
        executable,
        venv: r.optional_path("python", "venv")?,
        requirements: r.optional_path("python", "requirements")?,
        script: r.optional_path("python", "script")?,
        handlers,
        path: r
            .string_list("python", "path")?
            .iter()
            .map(|p| r.resolve("python", "path", p))
            .collect(),
        transport: match r.choice("python", "transport", &["fds", "stdio"])? {
            "stdio" => TransportKind::Stdio,
            _ => TransportKind::Fds,
        },
        env: r.env_table()?,
        inherit_env,
        max_frame_bytes: r.int("python", "max_frame_bytes", 1024, u32::MAX.into())? as usize,
    })
}

fn is_module_name(name: &str) -> bool {
    name.split('.').all(|part| {
        let mut chars = part.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// Typed access to the merged table; every failure becomes a [`ConfigError`] that
/// names the key and the source that set it.
struct Reader<'a> {
    raw: &'a RawConfig,
}

impl<'a> Reader<'a> {
    fn value(&self, section: &str, key: &str) -> &'a toml::Value {
        self.raw.get(section, key).0
    }

    fn origin(&self, section: &str, key: &str) -> &'a Origin {
        self.raw.get(section, key).1
    }

    fn error(&self, section: &str, key: &str, message: impl Into<String>) -> ConfigError {
        let origin = self.origin(section, key);
        ConfigError {
            key: Some(format!("{section}.{key}")),
            message: format!("{}{}", message.into(), origin.suffix()),
            path: origin.path(),
        }
    }

    fn string(&self, section: &str, key: &str) -> Result<&'a str, ConfigError> {
        match self.value(section, key) {
            toml::Value::String(s) => Ok(s),
            other => Err(self.error(
                section,
                key,
                format!("`{section}.{key}` must be a string, got {other}"),
            )),
        }
    }

    fn non_empty_string(&self, section: &str, key: &str) -> Result<String, ConfigError> {
        match self.string(section, key)? {
            "" => Err(self.error(section, key, format!("`{section}.{key}` must not be empty"))),
            s => Ok(s.to_owned()),
        }
    }

    /// A string where `""` means "not set".
    fn optional_path_like(&self, section: &str, key: &str) -> Result<Option<&'a str>, ConfigError> {
        Ok(Some(self.string(section, key)?).filter(|s| !s.is_empty()))
    }

    fn optional_path(&self, section: &str, key: &str) -> Result<Option<PathBuf>, ConfigError> {
        Ok(self
            .optional_path_like(section, key)?
            .map(|p| self.resolve(section, key, p)))
    }

    /// A relative path from a config file is relative to that file, so a project's
    /// config works from any working directory.
    fn resolve(&self, section: &str, key: &str, path: &str) -> PathBuf {
        let path = PathBuf::from(path);
        match self.origin(section, key).base_dir() {
            Some(base) if path.is_relative() => base.join(path),
            _ => path,
        }
    }

    fn int(&self, section: &str, key: &str, min: i64, max: i64) -> Result<i64, ConfigError> {
        match self.value(section, key) {
            toml::Value::Integer(i) if (min..=max).contains(i) => Ok(*i),
            other => {
                let range = if max == i64::MAX {
                    format!("≥ {min}")
                } else {
                    format!("from {min} to {max}")
                };
                Err(self.error(
                    section,
                    key,
                    format!("`{section}.{key}` must be an integer {range}, got {other}"),
                ))
            }
        }
    }

    fn usize(&self, section: &str, key: &str, min: i64) -> Result<usize, ConfigError> {
        // Lossless: `int` guarantees a non-negative value and targets are 64-bit.
        self.int(section, key, min, i64::MAX).map(|i| i as usize)
    }

    fn u32(&self, section: &str, key: &str, min: i64) -> Result<u32, ConfigError> {
        self.int(section, key, min, u32::MAX.into())
            .map(|i| i as u32)
    }

    fn duration(&self, section: &str, key: &str, zero: Zero) -> Result<Duration, ConfigError> {
        const EXAMPLES: &str = "use e.g. \"30s\", \"500ms\", \"2m\"";
        let value = self.value(section, key);
        let duration = match value {
            toml::Value::String(text) => humantime::parse_duration(text).map_err(|_| {
                self.error(
                    section,
                    key,
                    format!("`{section}.{key}`: invalid duration {value}; {EXAMPLES}"),
                )
            })?,
            other => {
                return Err(self.error(
                    section,
                    key,
                    format!(
                        "`{section}.{key}`: invalid duration {other}; durations are a string \
                         with a unit, {EXAMPLES}"
                    ),
                ));
            }
        };
        if zero == Zero::Refused && duration.is_zero() {
            return Err(self.error(
                section,
                key,
                format!("`{section}.{key}` must be longer than zero, got {value}"),
            ));
        }
        Ok(duration)
    }

    fn choice(
        &self,
        section: &str,
        key: &str,
        allowed: &[&'static str],
    ) -> Result<&'static str, ConfigError> {
        let value = self.value(section, key);
        value
            .as_str()
            .and_then(|s| allowed.iter().copied().find(|a| *a == s))
            .ok_or_else(|| {
                let allowed = allowed
                    .iter()
                    .map(|a| format!("\"{a}\""))
                    .collect::<Vec<_>>()
                    .join(", ");
                self.error(
                    section,
                    key,
                    format!("`{section}.{key}` must be one of {allowed}; got {value}"),
                )
            })
    }

    fn string_list(&self, section: &str, key: &str) -> Result<Vec<String>, ConfigError> {
        let value = self.value(section, key);
        value
            .as_array()
            .and_then(|items| {
                items
                    .iter()
                    .map(|item| item.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| {
                self.error(
                    section,
                    key,
                    format!(
                        "`{section}.{key}` must be a list of strings, e.g. [\"a\", \"b\"], got {value}"
                    ),
                )
            })
    }

    /// A name that can be an environment variable: not empty, no `=`, NUL or spaces.
    fn env_name<'n>(
        &self,
        section: &str,
        key: &str,
        name: &'n str,
    ) -> Result<&'n str, ConfigError> {
        let valid = !name.is_empty()
            && !name
                .chars()
                .any(|c| c == '=' || c == '\0' || c.is_whitespace());
        if valid {
            Ok(name)
        } else {
            Err(self.error(
                section,
                key,
                format!("`{section}.{key}`: {name:?} is not a valid environment variable name"),
            ))
        }
    }

    fn env_table(&self) -> Result<BTreeMap<String, String>, ConfigError> {
        let value = self.value("python", "env");
        let Some(table) = value.as_table() else {
            return Err(self.error(
                "python",
                "env",
                format!(
                    "`python.env` must be a table of strings, e.g. {{ HF_HOME = \"/data/hf\" }}, got {value}"
                ),
            ));
        };
        table
            .iter()
            .map(|(name, value)| {
                self.env_name("python", "env", name)?;
                match value {
                    toml::Value::String(s) => Ok((name.clone(), s.clone())),
                    other => {
                        let mut e = self.error(
                            "python",
                            "env",
                            format!("`python.env.{name}` must be a string, got {other}"),
                        );
                        e.key = Some(format!("python.env.{name}"));
                        Err(e)
                    }
                }
            })
            .collect()
    }

    /// A size in bytes: a string with a unit (`"16MiB"`) or an integer; `""` is `None`.
    fn size(&self, section: &str, key: &str, min: u64) -> Result<Option<u64>, ConfigError> {
        let value = self.value(section, key);
        let bytes = match value {
            toml::Value::String(s) if s.trim().is_empty() => return Ok(None),
            toml::Value::String(s) => parse_size(s),
            toml::Value::Integer(i) => u64::try_from(*i).ok(),
            _ => None,
        };
        let Some(bytes) = bytes else {
            return Err(self.error(
                section,
                key,
                format!(
                    "`{section}.{key}`: invalid size {value}; use e.g. \"512MiB\", \"4GiB\" \
                     or a number of bytes"
                ),
            ));
        };
        if bytes < min {
            return Err(self.error(
                section,
                key,
                format!("`{section}.{key}` must be at least {min} bytes, got {value}"),
            ));
        }
        Ok(Some(bytes))
    }

    fn temperature(&self) -> Result<f64, ConfigError> {
        let value = self.value("lm", "temperature");
        let number = match value {
            toml::Value::Float(f) => Some(*f),
            toml::Value::Integer(i) => Some(*i as f64),
            _ => None,
        };
        number
            .filter(|t| t.is_finite() && *t >= 0.0)
            .ok_or_else(|| {
                self.error(
                    "lm",
                    "temperature",
                    format!("`lm.temperature` must be a number ≥ 0, got {value}"),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        assert_eq!(parse_size("16MiB"), Some(16 << 20));
        assert_eq!(parse_size("4 GiB"), Some(4 << 30));
        assert_eq!(parse_size("1.5GiB"), Some(3 << 29));
        assert_eq!(parse_size("512kB"), Some(512_000));
        assert_eq!(parse_size("2MB"), Some(2_000_000));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("7B"), Some(7));
        for bad in [
            "",
            "MiB",
            "4 parsecs",
            "-1GiB",
            "1e3",
            "4GiBs",
            "99999999999TiB",
        ] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_pool_far_above_the_cores_is_warned_about() {
        assert!(!warn_if_oversized(8, 2));
        assert!(warn_if_oversized(9, 2));
        assert!(!warn_if_oversized(64, 16));
    }

    #[test]
    fn json_of_toml_keeps_nesting_and_refuses_nan() {
        let table: toml::Table = toml::from_str("a = [1, 2.5, true]\nb = { c = \"d\" }").unwrap();
        assert_eq!(
            toml_to_json(&toml::Value::Table(table)),
            Some(serde_json::json!({"a": [1, 2.5, true], "b": {"c": "d"}}))
        );
        assert_eq!(toml_to_json(&toml::Value::Float(f64::NAN)), None);
    }
}
