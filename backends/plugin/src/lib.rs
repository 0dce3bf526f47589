//! farcall evaluators loaded at run time from a shared library, through a
//! small, versioned C ABI.
//!
//! A third party adds an evaluator to farcall without rebuilding the server:
//! it builds a shared library exporting the entry points of
//! `farcall_plugin.h` (`ABI.md` beside this crate's `Cargo.toml` is the
//! contract), and the operator configures `[evaluator] backend = "plugin"`,
//! `plugin = "path/to/lib.so"`. [`PluginEvaluator::load`] loads and checks
//! the library; it then implements [`Evaluator`] like any built-in backend:
//! each session's requests go to the plugin as MessagePack buffers, encoded
//! exactly as farcall frames them (`farcall_core::codec`), and its replies
//! come back the same way.
//!
//! The workspace ships one plugin, `farcall-plugin-fake`: a deterministic
//! fake evaluator without Python, for tests.
//!
//! ```no_run
//! use farcall_backend_plugin::PluginEvaluator;
//! use farcall_core::{EvalSession, Evaluator, PeerInfo, Request, SessionInfo, Target, Value};
//!
//! let evaluator = PluginEvaluator::load("target/debug/libfarcall_plugin_fake.so")?;
//! assert_eq!(evaluator.info().name, "fake");
//! let peer = PeerInfo { transport: "memory", address: "test".into(), identity: None };
//! let session = evaluator.open(&SessionInfo { id: 1, peer, callbacks: std::sync::Arc::new(farcall_core::NoCallbacks) })?;
//! let Value::SenderObject(math) = session.evaluate(Request::GetModule { name: "math".into() })? else {
//!     unreachable!("a module travels by reference")
//! };
//! let pow = Target { id: math.id, path: vec!["pow".into()] };
//! let nine = session.evaluate(Request::Call { target: pow, args: vec![Value::Int(3), Value::Int(2)], kwargs: vec![] })?;
//! assert_eq!(nine, Value::Float(9.0));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Loading fails with a distinct [`PluginError`] (an [`EvalError::Startup`]
//! through [`PluginEvaluator::load`]) for a missing file, a file the system
//! loader refuses, a library without the `farcall_plugin_abi_version` entry
//! point, a wrong ABI version (both versions named), or a missing required
//! entry point (named).

pub mod abi;
mod error;
mod library;
mod session;

use std::path::Path;
use std::sync::Arc;

use farcall_core::{BackendInfo, EvalError, EvalSession, Evaluator, SessionInfo};

pub use error::PluginError;
pub use session::PluginSession;

use library::Plugin;

/// An [`Evaluator`] implemented by a plugin library.
///
/// Cloning is cheap and shares the loaded library. The library stays loaded
/// while this evaluator, a clone, any [`PluginSession`] or any reply buffer
/// of the plugin lives; it is unloaded after the last of them is dropped.
#[derive(Debug, Clone)]
pub struct PluginEvaluator {
    plugin: Arc<Plugin>,
}

impl PluginEvaluator {
    /// Loads the plugin library at `path` and checks its ABI version and
    /// entry points (in the order `ABI.md` describes).
    ///
    /// `path` is a file path, used as is (relative to the current directory
    /// when relative); it is never looked up in the system's library path.
    ///
    /// # Errors
    ///
    /// [`EvalError::Startup`] with the [`PluginError`]'s message (see
    /// [`PluginEvaluator::try_load`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, EvalError> {
        Self::try_load(path).map_err(EvalError::from)
    }

    /// [`PluginEvaluator::load`] with a typed error.
    ///
    /// Loading runs the library's initialisers in this process: load only
    /// libraries you trust.
    ///
    /// # Errors
    ///
    /// [`PluginError::NotFound`], [`PluginError::NotLoadable`],
    /// [`PluginError::NotAPlugin`] (no `farcall_plugin_abi_version`),
    /// [`PluginError::AbiMismatch`], [`PluginError::MissingEntryPoint`] or
    /// [`PluginError::BadName`].
    pub fn try_load(path: impl AsRef<Path>) -> Result<Self, PluginError> {
        let plugin = Plugin::load(path.as_ref())?;
        tracing::debug!(path = %plugin.path.display(), name = %plugin.info.name, "plugin loaded");
        Ok(PluginEvaluator { plugin: Arc::new(plugin) })
    }

    /// The library's path, as given to [`PluginEvaluator::load`].
    pub fn path(&self) -> &Path {
        &self.plugin.path
    }

    /// The plugin's name (`farcall_plugin_name`).
    pub fn name(&self) -> &str {
        &self.plugin.info.name
    }

    /// Opens a session directly, as [`Evaluator::open`] does, without boxing it.
    ///
    /// # Errors
    ///
    /// [`PluginError::SessionRefused`] when `farcall_plugin_open` returns NULL.
    pub fn open_session(&self, session: &SessionInfo) -> Result<PluginSession, PluginError> {
        PluginSession::open(Arc::clone(&self.plugin), session)
    }
}

impl Evaluator for PluginEvaluator {
    /// The plugin's name, and the Python fields `farcall_plugin_info`
    /// reports (empty without it).
    fn info(&self) -> BackendInfo {
        self.plugin.info.clone()
    }

    fn open(&self, session: &SessionInfo) -> Result<Box<dyn EvalSession>, EvalError> {
        Ok(Box::new(self.open_session(session)?))
    }
}
