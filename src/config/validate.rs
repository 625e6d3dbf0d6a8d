//! Stage two of loading: the one step that turns the merged table into a typed
//! [`Config`]. Every check is here, so the rules for a key (type, unit, range, how a
//! relative path resolves) are in one place and every error names its key and source.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{Origin, RawConfig};
use super::{
    Affinity, Config, ConfigError, LmConfig, PoolConfig, PythonConfig, PythonExecutable,
    SessionConfig, ShutdownConfig, SupervisorConfig, SystemConfig, TransportKind,
};

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
        size: r.usize("pool", "size", 1)?,
        worker_concurrency: PoolConfig::default().worker_concurrency,
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
    Ok(Config {
        system: SystemConfig {
            name: r.non_empty_string("system", "name")?,
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
        lm: LmConfig {
            model: r.non_empty_string("lm", "model")?,
            api_key_env: r
                .optional_path_like("lm", "api_key_env")?
                .map(|name| r.env_name("lm", "api_key_env", name).map(str::to_owned))
                .transpose()?,
            temperature: r.temperature()?,
            max_tokens: r.u32("lm", "max_tokens", 1)?,
        },
    })
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
