//! The layer-2 adapter: the real System, actors and wire protocol, with the DSPy
//! commands answered by a fake worker written in Rust.
//!
//! [`FakeBridge`] implements the bridge's DSPy commands the way `dspex_bridge` does
//! (per-worker program caches scoped by session, rebuilt from the `definition` every
//! `execute_program` carries, the same checks of a definition and the same error type
//! names, see [`semantics`](super::semantics)) but answers from
//! [`fake_outputs`](super::fake_outputs) instead of running DSPy. Plugged into the
//! in-memory launcher, it lets tests drive the whole request path in milliseconds.
//! It builds `predict` and `chain_of_thought` programs; a `python` program is refused
//! (`InvalidRequest`: there is no Python to import it from).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use dspex_actors::protocol::Request;
use dspex_actors::testing::{default_action, FakeAction, InMemoryLauncher};
use serde_json::{json, Map, Value};

use super::fake_outputs::{fake_outputs, fake_text};
use super::semantics;
use super::system_backed::{system_backed_adapter, SystemBacked};
use super::{AdapterKind, Capabilities, TestLayer};
use crate::config::Config;
use crate::error::Result;
use crate::program::{ModuleKind, ProgramDef};
use crate::system::System;

/// The DSPy half of a fake worker. Clones share the caches.
///
/// # Examples
///
/// Crash on a command of your own, behave like the bridge otherwise:
///
/// ```
/// use dspex::testing::FakeBridge;
/// use dspex_actors::testing::{FakeAction, InMemoryLauncher};
///
/// let bridge = FakeBridge::new();
/// let launcher = InMemoryLauncher::with_script(move |worker_id, req| match req.command.as_str() {
///     "boom" => FakeAction::Die,
///     _ => bridge.handle(worker_id, req),
/// });
/// # let _ = launcher;
/// ```
#[derive(Clone, Default)]
pub struct FakeBridge {
    workers: Arc<Mutex<HashMap<String, WorkerCache>>>,
}

/// One fake worker's state, as one Python worker process would hold it.
#[derive(Default)]
struct WorkerCache {
    /// Scope (session id, `None` = anonymous) → program id → cached program.
    scopes: HashMap<Option<String>, BTreeMap<String, Cached>>,
    requests: u64,
    errors: u64,
}

struct Cached {
    def: ProgramDef,
    /// The definition as sent; a different one means the program must be rebuilt.
    wire: Value,
    executions: u64,
}

/// A failed command: the Python exception type name and its message.
type Failure = (&'static str, String);

impl FakeBridge {
    /// Empty caches.
    pub fn new() -> Self {
        FakeBridge::default()
    }

    /// What worker `worker_id` answers to `req`: the DSPy commands, `get_stats`,
    /// `cleanup_session` and `reset_state` here, everything else as
    /// [`default_action`].
    pub fn handle(&self, worker_id: &str, req: &Request) -> FakeAction {
        let mut workers = self.lock();
        let cache = workers.entry(worker_id.to_owned()).or_default();
        cache.requests += 1;
        let args = &req.args;
        let answer = match req.command.as_str() {
            "create_program" => cache.create_program(args),
            "execute_program" => cache.execute_program(args),
            "list_programs" => scope_of(args).map(|scope| {
                let ids: Vec<&String> = cache
                    .scopes
                    .get(&scope)
                    .map(|p| p.keys().collect())
                    .unwrap_or_default();
                json!({"programs": ids})
            }),
            "delete_program" => cache.delete_program(args),
            "get_program_info" => cache.get_program_info(args),
            "get_stats" => Ok(json!({
                "requests": cache.requests,
                "errors": cache.errors,
                "programs": cache.programs(),
                "worker_id": worker_id,
            })),
            "cleanup_session" => scope_of(args).map(|scope| {
                let removed = cache.scopes.remove(&scope).map_or(0, |p| p.len());
                json!({"session_id": scope, "programs_removed": removed})
            }),
            "reset_state" => {
                let removed = cache.programs();
                cache.scopes.clear();
                Ok(json!({"programs_removed": removed}))
            }
            "configure_lm" => {
                Ok(json!({"model": args.get("model").cloned().unwrap_or(Value::Null)}))
            }
            _ => return default_action(worker_id, req),
        };
        match answer {
            Ok(result) => FakeAction::Reply(result),
            Err((error_type, message)) => {
                cache.errors += 1;
                FakeAction::fail(error_type, message)
            }
        }
    }

    /// How many programs worker `worker_id` has cached, over all scopes (0 for a worker
    /// that never answered).
    pub fn cached_programs(&self, worker_id: &str) -> usize {
        self.lock().get(worker_id).map_or(0, WorkerCache::programs)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, WorkerCache>> {
        // Each update is one insert or remove, so a panic elsewhere leaves usable data.
        self.workers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl WorkerCache {
    fn programs(&self) -> usize {
        self.scopes.values().map(BTreeMap::len).sum()
    }

    /// Builds the program, replacing one of the same id: the host's registry decides
    /// about duplicates, as with the real bridge.
    fn create_program(&mut self, args: &Value) -> Result<Value, Failure> {
        let scope = scope_of(args)?;
        let wire = args
            .get("definition")
            .ok_or_else(|| invalid("create_program needs a definition".to_owned()))?;
        let def = parse_definition(wire, optional_program_id(args)?)?;
        let signature = def.signature().expect("a signature program");
        let mut outputs: Vec<&str> = signature.outputs.iter().map(|f| f.name.as_str()).collect();
        if def.module() == ModuleKind::ChainOfThought {
            outputs.insert(0, "reasoning");
        }
        let answer = json!({
            "program_id": def.id,
            "session_id": scope,
            "module": def.module().as_str(),
            "signature": signature.to_string(),
            "input_fields": def.input_fields,
            "output_fields": outputs,
        });
        self.scopes.entry(scope).or_default().insert(
            def.id.clone(),
            Cached {
                def,
                wire: wire.clone(),
                executions: 0,
            },
        );
        Ok(answer)
    }

    fn execute_program(&mut self, args: &Value) -> Result<Value, Failure> {
        let scope = scope_of(args)?;
        let programs = self.scopes.entry(scope.clone()).or_default();
        let inputs = match args.get("inputs") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(inputs)) => inputs.clone(),
            Some(other) => {
                return Err(invalid(format!(
                    "inputs must be an object, got {}",
                    py_type(other)
                )))
            }
        };
        let program = match args.get("definition") {
            Some(wire) => {
                let def = parse_definition(wire, optional_program_id(args)?)?;
                let stale = programs
                    .get(&def.id)
                    .map_or(true, |cached| &cached.wire != wire);
                if stale {
                    // A worker that never saw the program, or saw an older version,
                    // rebuilds it from what the host sent, as the real bridge does.
                    programs.insert(
                        def.id.clone(),
                        Cached {
                            def: def.clone(),
                            wire: wire.clone(),
                            executions: 0,
                        },
                    );
                }
                programs
                    .get_mut(&def.id)
                    .expect("inserted above if missing")
            }
            None => {
                let id = program_id(args)?;
                programs.get_mut(&id).ok_or_else(|| missing(&id, &scope))?
            }
        };
        program.executions += 1;
        let def = &program.def;
        let mut outputs = Map::new();
        if def.module() == ModuleKind::ChainOfThought
            && def
                .signature()
                .expect("a signature program")
                .output("reasoning")
                .is_none()
        {
            // DSPy's ChainOfThought predicts a rationale first; the host drops it as
            // undeclared, but it is on the wire like the real one.
            outputs.insert("reasoning".into(), fake_text(&def.id, &inputs, "reasoning"));
        }
        outputs.extend(fake_outputs(
            &def.id,
            def.signature().expect("a signature program"),
            &inputs,
        ));
        Ok(json!({"program_id": def.id, "outputs": outputs, "usage": {}}))
    }

    fn delete_program(&mut self, args: &Value) -> Result<Value, Failure> {
        let scope = scope_of(args)?;
        let id = program_id(args)?;
        let programs = self
            .scopes
            .get_mut(&scope)
            .ok_or_else(|| missing(&id, &scope))?;
        programs.remove(&id).ok_or_else(|| missing(&id, &scope))?;
        if programs.is_empty() {
            self.scopes.remove(&scope);
        }
        Ok(json!({"deleted": true}))
    }

    fn get_program_info(&self, args: &Value) -> Result<Value, Failure> {
        let scope = scope_of(args)?;
        let id = program_id(args)?;
        let cached = self
            .scopes
            .get(&scope)
            .and_then(|p| p.get(&id))
            .ok_or_else(|| missing(&id, &scope))?;
        let wire = cached
            .def
            .signature()
            .expect("a signature program")
            .to_wire();
        Ok(json!({
            "program_id": id,
            "module": cached.def.module().as_str(),
            "signature": cached.def.signature().expect("a signature program").to_string(),
            "inputs": wire["inputs"],
            "outputs": wire["outputs"],
            "executions": cached.executions,
        }))
    }
}

/// The caller's mistake, which never counts against the worker.
fn invalid(message: String) -> Failure {
    ("InvalidRequest", message)
}

/// How Python names a JSON value's type in messages.
fn py_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

fn scope_of(args: &Value) -> Result<Option<String>, Failure> {
    match args.get("session_id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(id)) => Ok(Some(id.clone())),
        Some(other) => Err(invalid(format!(
            "session_id must be a string or null, got {}",
            py_type(other)
        ))),
    }
}

fn program_id(args: &Value) -> Result<String, Failure> {
    optional_program_id(args)?
        .ok_or_else(|| invalid("program_id must be a non-empty string, got None".to_owned()))
}

fn optional_program_id(args: &Value) -> Result<Option<String>, Failure> {
    match args.get("program_id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(id)) if !id.is_empty() => Ok(Some(id.clone())),
        Some(other) => Err(invalid(format!(
            "program_id must be a non-empty string, got {other}"
        ))),
    }
}

/// A definition checked as the bridge's `parse_program` checks it; the request's
/// `program_id` fills in a definition without one and must agree with one that has it.
fn parse_definition(wire: &Value, program_id: Option<String>) -> Result<ProgramDef, Failure> {
    semantics::check_wire(wire).map_err(invalid)?;
    let own = wire.get("program_id").and_then(Value::as_str);
    let wire = match (own, program_id) {
        (Some(own), Some(id)) if own != id => {
            return Err(invalid(format!(
                "program_id {id:?} does not match the definition's program_id {own:?}"
            )))
        }
        (None, Some(id)) => {
            let mut wire = wire.clone();
            wire["program_id"] = json!(id);
            wire
        }
        (None, None) => {
            return Err(invalid(
                "program_id must be a non-empty string, got None".to_owned(),
            ))
        }
        _ => wire.clone(),
    };
    let def = ProgramDef::from_wire(&wire)
        .map_err(|e| invalid(format!("invalid program definition: {e}")))?;
    if def.module() == ModuleKind::Python {
        return Err(invalid(format!(
            "the fake bridge (layer 2) builds predict and chain_of_thought programs only; the python program `{}` needs real Python (layer 3)",
            def.spec.factory.as_deref().unwrap_or_default()
        )));
    }
    let signature = def.signature().expect("a signature program");
    if def.module() == ModuleKind::ChainOfThought
        && signature
            .inputs
            .iter()
            .chain(&signature.outputs)
            .any(|f| f.name == "reasoning")
    {
        return Err(invalid(
            "chain_of_thought adds its own 'reasoning' output; rename the field".to_owned(),
        ));
    }
    semantics::check_spec(&def.spec).map_err(invalid)?;
    Ok(def)
}

fn where_(scope: &Option<String>) -> String {
    match scope {
        None => "the anonymous scope".into(),
        Some(id) => format!("session {id:?}"),
    }
}

fn missing(id: &str, scope: &Option<String>) -> Failure {
    (
        "ProgramNotFound",
        format!("no program {id:?} in {}; create it first", where_(scope)),
    )
}

/// The layer-2 adapter: the real actors and protocol, the DSPy commands answered by
/// [`FakeBridge`]s.
///
/// # Examples
///
/// ```
/// # async fn demo() -> dspex::Result<()> {
/// use dspex::testing::{Adapter, BridgeMock};
/// use dspex::{ModuleKind, Signature};
///
/// let adapter = BridgeMock::start(&dspex::Config::test()).await?;
/// let sig: Signature = "question -> answer".parse()?;
/// adapter.create_program(None, "qa", &sig, ModuleKind::Predict).await?;
/// // The request really crossed the wire protocol to a (fake) worker.
/// assert!(adapter.launcher().requests().iter().any(|(_, r)| r.command == "create_program"));
/// adapter.shutdown().await?;
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
/// ```
pub struct BridgeMock {
    core: SystemBacked,
    launcher: InMemoryLauncher,
    bridge: FakeBridge,
}

impl BridgeMock {
    /// Starts an isolated system whose `pool.size` workers are [`FakeBridge`]s on the
    /// in-memory transport, and waits until all are ready. [`Adapter::shutdown`](crate::testing::Adapter::shutdown) stops
    /// it. `python.*` settings are not used: no process is started.
    ///
    /// # Errors
    ///
    /// As [`Builder::start`](crate::system::Builder::start); with fakes that only
    /// happens when the system cannot start its thread.
    pub async fn start(config: &Config) -> Result<Self> {
        let bridge = FakeBridge::new();
        let script = bridge.clone();
        let launcher =
            InMemoryLauncher::with_script(move |worker_id, req| script.handle(worker_id, req));
        let size = config.pool.size;
        let system = System::builder(config.clone())
            .launcher(Arc::new(launcher.clone()))
            .wait_ready(size)
            .start()
            .await?;
        Ok(BridgeMock {
            core: SystemBacked::new(AdapterKind::BridgeMock, system, true),
            launcher,
            bridge,
        })
    }

    /// The in-memory launcher: counts launches and records every request that reached a
    /// fake worker, so a test can assert what did (or did not) cross the wire.
    pub fn launcher(&self) -> &InMemoryLauncher {
        &self.launcher
    }

    /// The fake workers' program caches.
    pub fn bridge(&self) -> &FakeBridge {
        &self.bridge
    }

    /// The system underneath.
    pub fn system(&self) -> &System {
        self.core.system()
    }
}

system_backed_adapter!(
    BridgeMock,
    layers: &[TestLayer::Layer2],
    capabilities: Capabilities {
            real_dspy: false,
            processes: false,
            actors: true,
            sessions: true,
            lm_calls: false,
            error_injection: false,
            fake_outputs: true,
        },
);

#[cfg(test)]
mod tests {
    use super::*;

    fn def(id: &str, signature: &str) -> Value {
        crate::program::ProgramSpec::new(ModuleKind::Predict, signature.parse().unwrap())
            .resolve(id)
            .unwrap()
            .to_wire()
            .clone()
    }

    fn call(bridge: &FakeBridge, worker: &str, command: &str, args: Value) -> FakeAction {
        bridge.handle(worker, &Request::new(1, command, args))
    }

    fn reply(action: FakeAction) -> Value {
        match action {
            FakeAction::Reply(result) => result,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn failure_type(action: FakeAction) -> String {
        match action {
            FakeAction::Fail { error_type, .. } => error_type,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn a_worker_that_never_saw_a_program_builds_it_from_the_definition() {
        let bridge = FakeBridge::new();
        let args =
            json!({"session_id": "s", "definition": def("p", "q -> a"), "inputs": {"q": "x"}});
        let out = reply(call(&bridge, "w2", "execute_program", args));
        assert_eq!(out["program_id"], "p");
        assert!(out["outputs"]["a"].as_str().unwrap().starts_with("mock a "));
        assert_eq!(bridge.cached_programs("w2"), 1);
        assert_eq!(bridge.cached_programs("w1"), 0);
        let info = reply(call(
            &bridge,
            "w2",
            "get_program_info",
            json!({"session_id": "s", "program_id": "p"}),
        ));
        assert_eq!(info["executions"], 1);
    }

    #[test]
    fn a_changed_definition_replaces_the_cached_program() {
        let bridge = FakeBridge::new();
        let create =
            json!({"session_id": "s", "program_id": "p", "definition": def("p", "q -> a")});
        reply(call(&bridge, "w", "create_program", create));
        let newer =
            json!({"session_id": "s", "definition": def("p", "q -> b: int"), "inputs": {"q": "x"}});
        let out = reply(call(&bridge, "w", "execute_program", newer));
        assert!(
            out["outputs"]["b"].is_u64() && out["outputs"].get("a").is_none(),
            "{out}"
        );
    }

    #[test]
    fn errors_use_the_bridge_exception_names() {
        let bridge = FakeBridge::new();
        let create = json!({"program_id": "p", "definition": def("p", "q -> a")});
        reply(call(&bridge, "w", "create_program", create.clone()));
        // As the bridge: creating again rebuilds (the host's registry refuses duplicates).
        reply(call(&bridge, "w", "create_program", create));
        let run = json!({"program_id": "ghost", "inputs": {}});
        assert_eq!(
            failure_type(call(&bridge, "w", "execute_program", run)),
            "ProgramNotFound"
        );
        let bad = json!({"definition": {"program_id": "p"}});
        assert_eq!(
            failure_type(call(&bridge, "w", "create_program", bad)),
            "InvalidRequest"
        );
        let run = json!({"definition": def("p", "q -> a"), "inputs": [1]});
        assert_eq!(
            failure_type(call(&bridge, "w", "execute_program", run)),
            "InvalidRequest"
        );
        assert_eq!(
            failure_type(call(&bridge, "w", "nope", json!({}))),
            "UnknownCommand"
        );
        let stats = reply(call(&bridge, "w", "get_stats", json!({})));
        assert_eq!(
            (stats["requests"].as_u64(), stats["errors"].as_u64()),
            (Some(7), Some(3))
        );
    }

    #[test]
    fn scopes_are_separate_and_cleanup_drops_only_that_session() {
        let bridge = FakeBridge::new();
        for scope in [json!("a"), json!("b"), Value::Null] {
            let create = json!({"session_id": scope, "definition": def("p", "q -> a")});
            reply(call(&bridge, "w", "create_program", create));
        }
        let list = |scope: Value| {
            reply(call(
                &bridge,
                "w",
                "list_programs",
                json!({"session_id": scope}),
            ))
        };
        assert_eq!(list(json!("a"))["programs"], json!(["p"]));
        let dropped = reply(call(
            &bridge,
            "w",
            "cleanup_session",
            json!({"session_id": "a"}),
        ));
        assert_eq!(dropped["programs_removed"], 1);
        assert_eq!(list(json!("a"))["programs"], json!([]));
        assert_eq!(list(json!("b"))["programs"], json!(["p"]));
        assert_eq!(list(Value::Null)["programs"], json!(["p"]));
        let reset = reply(call(&bridge, "w", "reset_state", json!({})));
        assert_eq!(reset["programs_removed"], 2);
        assert_eq!(bridge.cached_programs("w"), 0);
    }
}
