//! Stage one of loading: merging the sources into one TOML table while remembering
//! which source set each key, so that stage two can say where a bad value came from.
//! Unknown sections and keys are caught here, because only here is it known whether a
//! name came from a file, a variable or a flag.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ConfigError, DEFAULT_TOML, ENV_VARIABLES, WORKER_ENV_VARIABLES};

/// Environment variables starting with this (and holding `__` after it) are overrides.
pub(super) const ENV_PREFIX: &str = "DSPEX_";

/// The sections in the order `dspex.toml` documents them, for messages.
const SECTIONS: &[&str] = &[
    "system",
    "pool",
    "session",
    "supervisor",
    "shutdown",
    "python",
    "lm",
    "run",
];

/// Variables dspex no longer reads, with what replaced them.
const RETIRED_ENV: &[(&str, &str)] =
    &[("DSPEX_REPORT_CPU", "the `--report-cpu` flag of `dspex run`")];

/// Where a value came from.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Origin {
    /// The embedded `config/dspex.toml`.
    Default,
    /// A config file.
    File(PathBuf),
    /// TOML text that is not a file on disk, described for messages.
    Text(&'static str),
    /// An environment variable, by name.
    Env(String),
    /// An explicit `("section.key", value)` override.
    Override,
}

impl Origin {
    /// The file to report in [`ConfigError::path`], if the value came from one.
    pub(super) fn path(&self) -> Option<PathBuf> {
        match self {
            Origin::File(path) => Some(path.clone()),
            _ => None,
        }
    }

    /// `" (set in ...)"` for values that did not come from the defaults.
    pub(super) fn suffix(&self) -> String {
        match self {
            Origin::Default => String::new(),
            Origin::File(path) => format!(" (set in {})", path.display()),
            Origin::Text(what) => format!(" (set in {what})"),
            Origin::Env(var) => format!(" (set by environment variable {var})"),
            Origin::Override => " (set by an explicit override)".to_owned(),
        }
    }

    /// The directory relative paths from this source are resolved against.
    pub(super) fn base_dir(&self) -> Option<&Path> {
        match self {
            Origin::File(path) => path.parent(),
            _ => None,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("the defaults"),
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Text(what) => f.write_str(what),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::Override => f.write_str("an explicit override"),
        }
    }
}

/// The merged, not yet validated configuration.
pub(super) struct RawConfig {
    /// Always holds every section and key of the defaults, and nothing else.
    table: toml::Table,
    /// Keyed by `(section, key)`; only keys set by something other than the defaults.
    origins: BTreeMap<(String, String), Origin>,
}

impl RawConfig {
    /// The embedded defaults.
    pub(super) fn defaults() -> RawConfig {
        let table = toml::from_str(DEFAULT_TOML)
            .unwrap_or_else(|e| panic!("the embedded config/dspex.toml is not valid TOML: {e}"));
        RawConfig {
            table,
            origins: BTreeMap::new(),
        }
    }

    /// The value of a key and where it came from. Every key of the defaults exists.
    pub(super) fn get(&self, section: &str, key: &str) -> (&toml::Value, &Origin) {
        let value = self
            .section(section)
            .and_then(|s| s.get(key))
            .unwrap_or_else(|| panic!("`{section}.{key}` is read but not in dspex.toml"));
        let origin = self
            .origins
            .get(&(section.to_owned(), key.to_owned()))
            .unwrap_or(&Origin::Default);
        (value, origin)
    }

    fn section(&self, section: &str) -> Option<&toml::Table> {
        self.table.get(section).and_then(toml::Value::as_table)
    }

    /// Layers a config file over what is merged so far.
    pub(super) fn merge_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            key: None,
            message: format!("cannot read config file {}: {e}", path.display()),
            path: Some(path.to_owned()),
        })?;
        self.merge_text(&text, Origin::File(path.to_owned()))
    }

    /// Layers TOML text over what is merged so far.
    pub(super) fn merge_text(&mut self, text: &str, origin: Origin) -> Result<(), ConfigError> {
        let layer: toml::Table = toml::from_str(text).map_err(|e| ConfigError {
            key: None,
            message: format!("invalid TOML in {origin}: {}", e.to_string().trim_end()),
            path: origin.path(),
        })?;
        for (section, value) in layer {
            let toml::Value::Table(entries) = value else {
                return Err(self.not_a_section(&section, &value, &origin));
            };
            for (key, value) in entries {
                self.set(&section, &key, value, &origin)?;
            }
        }
        Ok(())
    }

    /// Applies the `DSPEX_<SECTION>__<KEY>=value` variables among `vars`.
    pub(super) fn merge_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        for (var, text) in vars {
            let Some(name) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            // `DSPEX_HOME`, `DSPEX_TEST_LAYER` and the like are not settings.
            let Some((section, key)) = name.split_once("__") else {
                if let Some(warning) = self.stray_variable(&var) {
                    log::warn!("{warning}");
                }
                continue;
            };
            let origin = Origin::Env(var.clone());
            if section.is_empty() || key.is_empty() {
                return Err(ConfigError {
                    key: None,
                    message: format!(
                        "environment variable {var} does not name a setting; use \
                         DSPEX_<SECTION>__<KEY>, e.g. DSPEX_POOL__SIZE=4"
                    ),
                    path: None,
                });
            }
            let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
            let value = self.env_value(&section, &key, &text);
            self.set(&section, &key, value, &origin)?;
        }
        Ok(())
    }

    /// Why a `DSPEX_*` variable without `__` is probably a mistake, or `None` for one of
    /// dspex's own variables. A setting spelled with one underscore (`DSPEX_POOL_SIZE`)
    /// would otherwise be ignored without a word.
    pub(super) fn stray_variable(&self, var: &str) -> Option<String> {
        if ENV_VARIABLES.iter().any(|(name, _)| *name == var) {
            return None;
        }
        if let Some((_, instead)) = RETIRED_ENV.iter().find(|(name, _)| *name == var) {
            return Some(format!(
                "environment variable {var} is no longer read; use {instead}"
            ));
        }
        if WORKER_ENV_VARIABLES.contains(&var) {
            return Some(format!(
                "environment variable {var} is ignored: dspex sets it for its workers itself; \
                 to pass a value to the workers use python.env, e.g. \
                 DSPEX_PYTHON__ENV='{{ {var} = \"...\" }}'"
            ));
        }
        let settings: Vec<String> = self
            .table
            .iter()
            .filter_map(|(section, keys)| Some((section, keys.as_table()?)))
            .flat_map(|(section, keys)| {
                keys.keys().map(move |key| {
                    format!("{ENV_PREFIX}{}__{}", section, key).to_ascii_uppercase()
                })
            })
            .collect();
        let candidates = settings
            .iter()
            .map(String::as_str)
            .chain(ENV_VARIABLES.iter().map(|(name, _)| *name));
        let hint = closest_within(var, candidates, 3)
            .map(|name| format!("did you mean {name}? "))
            .unwrap_or_default();
        Some(format!(
            "environment variable {var} is not a dspex setting and is ignored; {hint}settings \
             are DSPEX_<SECTION>__<KEY> (two underscores), e.g. DSPEX_POOL__SIZE=4"
        ))
    }

    /// Reads a variable's text as a TOML value if it is one, else as a string. Keys
    /// whose default is a string always get the text, so a model called `nan` or a
    /// system called `123` is not turned into a number.
    fn env_value(&self, section: &str, key: &str, text: &str) -> toml::Value {
        let text = text.trim();
        let wants_string = self
            .section(section)
            .and_then(|s| s.get(key))
            .is_some_and(toml::Value::is_str);
        let parsed = toml::Value::deserialize(toml::de::ValueDeserializer::new(text));
        match parsed {
            Ok(toml::Value::String(s)) => toml::Value::String(s),
            Ok(value) if !wants_string => value,
            _ => toml::Value::String(text.to_owned()),
        }
    }

    /// Applies `("section.key", value)` overrides in order.
    pub(super) fn merge_overrides(
        &mut self,
        overrides: &[(String, toml::Value)],
    ) -> Result<(), ConfigError> {
        for (name, value) in overrides {
            let Some((section, key)) = name.split_once('.').filter(|(_, k)| !k.contains('.'))
            else {
                return Err(ConfigError {
                    key: Some(name.clone()),
                    message: format!(
                        "override key `{name}` must be `section.key`, e.g. `pool.size`"
                    ),
                    path: None,
                });
            };
            self.set(section, key, value.clone(), &Origin::Override)?;
        }
        Ok(())
    }

    /// Sets one key, refusing sections and keys the defaults do not have.
    fn set(
        &mut self,
        section: &str,
        key: &str,
        value: toml::Value,
        origin: &Origin,
    ) -> Result<(), ConfigError> {
        let Some(entries) = self
            .table
            .get_mut(section)
            .and_then(toml::Value::as_table_mut)
        else {
            return Err(self.unknown_section(section, Some(key), origin));
        };
        if !entries.contains_key(key) {
            let known: Vec<&str> = entries.keys().map(String::as_str).collect();
            let hint = closest(key, known.iter().copied())
                .map(|k| format!(" (did you mean `{section}.{k}`?)"))
                .unwrap_or_default();
            return Err(ConfigError {
                key: Some(format!("{section}.{key}")),
                message: format!(
                    "unknown key `{section}.{key}` in {origin}{hint}; known keys in [{section}]: {}",
                    known.join(", ")
                ),
                path: origin.path(),
            });
        }
        entries.insert(key.to_owned(), value);
        self.origins
            .insert((section.to_owned(), key.to_owned()), origin.clone());
        Ok(())
    }

    fn unknown_section(&self, section: &str, key: Option<&str>, origin: &Origin) -> ConfigError {
        let known = SECTIONS;
        let hint = closest(section, known.iter().copied())
            .map(|s| format!(" (did you mean `[{s}]`?)"))
            .unwrap_or_default();
        ConfigError {
            key: Some(match key {
                Some(key) => format!("{section}.{key}"),
                None => section.to_owned(),
            }),
            message: format!(
                "unknown section `[{section}]` in {origin}{hint}; known sections: {}",
                known.join(", ")
            ),
            path: origin.path(),
        }
    }

    /// A top-level entry that is not a table: a known section written as a value, or a
    /// key that belongs inside a section.
    fn not_a_section(&self, name: &str, value: &toml::Value, origin: &Origin) -> ConfigError {
        if self.section(name).is_some() {
            return ConfigError {
                key: Some(name.to_owned()),
                message: format!(
                    "`{name}` must be a section ([{name}] followed by its keys), got {value} in {origin}"
                ),
                path: origin.path(),
            };
        }
        let home = self
            .table
            .iter()
            .find(|(_, s)| s.as_table().is_some_and(|s| s.contains_key(name)))
            .map(|(section, _)| section.as_str());
        match home {
            Some(section) => ConfigError {
                key: Some(name.to_owned()),
                message: format!(
                    "`{name}` in {origin} is outside any section; put it in the [{section}] section"
                ),
                path: origin.path(),
            },
            None => self.unknown_section(name, None, origin),
        }
    }

    /// Logs each value that did not come from the defaults, to debug "where did this
    /// setting come from" without a debugger.
    pub(super) fn log_sources(&self) {
        for ((section, key), origin) in &self.origins {
            let (value, _) = self.get(section, key);
            log::debug!("config: {section}.{key} = {value} from {origin}");
        }
    }
}

/// The candidate nearest to `name` when it is close enough to be a typo.
pub(crate) fn closest<'a>(
    name: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    closest_within(name, candidates, 2)
}

/// The candidate nearest to `name` within `max` edits (and fewer edits than its length).
fn closest_within<'a>(
    name: &str,
    candidates: impl Iterator<Item = &'a str>,
    max: usize,
) -> Option<&'a str> {
    candidates
        .map(|c| (edit_distance(name, c), c))
        .filter(|&(d, c)| d <= max && d < c.len())
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_value_parses_toml_or_falls_back_to_the_text() {
        let raw = RawConfig::defaults();
        let v = |section: &str, key: &str, text: &str| raw.env_value(section, key, text);
        assert_eq!(v("pool", "size", " 8 "), toml::Value::Integer(8));
        assert_eq!(v("pool", "size", "two"), toml::Value::from("two"));
        assert_eq!(
            v("pool", "checkout_timeout", "30s"),
            toml::Value::from("30s")
        );
        assert_eq!(
            v("python", "handlers", "[\"a\"]"),
            toml::Value::Array(vec!["a".into()])
        );
        assert_eq!(v("system", "name", "true"), toml::Value::from("true"));
        assert_eq!(
            v("system", "name", "\"quoted\""),
            toml::Value::from("quoted")
        );
        // A second line cannot smuggle in another key.
        assert_eq!(
            v("pool", "size", "8\nmax_queue = 1"),
            toml::Value::from("8\nmax_queue = 1")
        );
    }

    #[test]
    fn origins_are_recorded_per_key() {
        let mut raw = RawConfig::defaults();
        raw.merge_text("[pool]\nsize = 3", Origin::Text("t"))
            .unwrap();
        raw.merge_env([("DSPEX_POOL__MAX_QUEUE".to_owned(), "4".to_owned())])
            .unwrap();
        assert_eq!(raw.get("pool", "size").1, &Origin::Text("t"));
        assert_eq!(
            raw.get("pool", "max_queue").1,
            &Origin::Env("DSPEX_POOL__MAX_QUEUE".into())
        );
        assert_eq!(raw.get("pool", "affinity").1, &Origin::Default);
    }

    #[test]
    fn section_list_matches_dspex_toml() {
        let raw = RawConfig::defaults();
        let mut from_file: Vec<&str> = raw.table.keys().map(String::as_str).collect();
        let mut listed = SECTIONS.to_vec();
        from_file.sort_unstable();
        listed.sort_unstable();
        assert_eq!(from_file, listed);
    }

    #[test]
    fn a_setting_with_one_underscore_gets_a_warning_naming_the_key() {
        let raw = RawConfig::defaults();
        let warning = raw.stray_variable("DSPEX_POOL_SIZE").unwrap();
        assert!(
            warning.starts_with(
                "environment variable DSPEX_POOL_SIZE is not a dspex setting and is ignored; \
                 did you mean DSPEX_POOL__SIZE?"
            ),
            "{warning}"
        );
        let warning = raw.stray_variable("DSPEX_LM_MAX_TOKENS").unwrap();
        assert!(
            warning.contains("did you mean DSPEX_LM__MAX_TOKENS?"),
            "{warning}"
        );
        let warning = raw.stray_variable("DSPEX_HOMEE").unwrap();
        assert!(warning.contains("did you mean DSPEX_HOME?"), "{warning}");
        let warning = raw.stray_variable("DSPEX_SOMETHING_ELSE_ENTIRELY").unwrap();
        assert!(!warning.contains("did you mean"), "{warning}");
        assert!(warning.contains("DSPEX_<SECTION>__<KEY>"), "{warning}");
    }

    #[test]
    fn dspex_own_variables_get_no_warning_and_worker_ones_point_at_python_env() {
        let raw = RawConfig::defaults();
        for (name, _) in ENV_VARIABLES {
            assert_eq!(raw.stray_variable(name), None, "{name}");
        }
        let warning = raw.stray_variable("DSPEX_DUMMY_TRACE").unwrap();
        assert!(warning.contains("use python.env"), "{warning}");
        let warning = raw.stray_variable("DSPEX_REPORT_CPU").unwrap();
        assert!(warning.contains("--report-cpu"), "{warning}");
    }

    #[test]
    fn closest_suggests_only_near_misses() {
        let keys = ["size", "max_queue", "affinity"];
        assert_eq!(closest("sise", keys.iter().copied()), Some("size"));
        assert_eq!(closest("affinty", keys.iter().copied()), Some("affinity"));
        assert_eq!(closest("workers", keys.iter().copied()), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
