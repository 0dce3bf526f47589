//! [`PluginError`]: why a plugin could not be loaded or a session opened.

use std::path::PathBuf;

use farcall_core::EvalError;

use crate::abi::ABI_VERSION;

/// Why a plugin library could not be loaded, or a session opened in it.
///
/// Every variant but [`PluginError::SessionRefused`] is a start-up error
/// ([`EvalError::Startup`] once converted); each names the library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// There is no file at the path.
    #[error("plugin library `{}` does not exist; check the path (it is a file path, not a library name)", path.display())]
    NotFound {
        /// The path as given.
        path: PathBuf,
    },
    /// The system's loader refused the file (not a shared library, built for
    /// another architecture, a missing dependency, ...).
    #[error("cannot load plugin library `{}`: {reason}", path.display())]
    NotLoadable {
        /// The library.
        path: PathBuf,
        /// The loader's message.
        reason: String,
    },
    /// The library is not a farcall plugin: it lacks the version entry point.
    #[error(
        "`{}` is not a farcall plugin: it does not export `{symbol}` (see farcall_plugin.h)",
        path.display()
    )]
    NotAPlugin {
        /// The library.
        path: PathBuf,
        /// The entry point looked for (`farcall_plugin_abi_version`).
        symbol: &'static str,
    },
    /// The plugin implements another version of the ABI.
    #[error(
        "plugin `{}` implements farcall plugin ABI version {found}, but this farcall supports only version {supported}; \
         rebuild the plugin against farcall_plugin.h of this farcall",
        path.display()
    )]
    AbiMismatch {
        /// The library.
        path: PathBuf,
        /// The version the plugin reported.
        found: u32,
        /// The version this crate implements ([`ABI_VERSION`]).
        supported: u32,
    },
    /// A plugin of the right version lacks a required entry point.
    #[error("plugin `{}` (ABI version {ABI_VERSION}) does not export the required entry point `{symbol}`", path.display())]
    MissingEntryPoint {
        /// The library.
        path: PathBuf,
        /// The first missing entry point.
        symbol: &'static str,
    },
    /// `farcall_plugin_name` returned null, an empty string or invalid UTF-8.
    #[error("plugin `{}`: farcall_plugin_name returned {problem}; it must return a non-empty UTF-8 string", path.display())]
    BadName {
        /// The library.
        path: PathBuf,
        /// What was wrong.
        problem: &'static str,
    },
    /// `farcall_plugin_open` returned null.
    #[error("plugin `{plugin}` refused to open session {session} (farcall_plugin_open returned NULL)")]
    SessionRefused {
        /// The plugin's name.
        plugin: String,
        /// The session's id.
        session: u64,
    },
}

impl From<PluginError> for EvalError {
    fn from(e: PluginError) -> Self {
        match e {
            PluginError::SessionRefused { .. } => EvalError::Session(e.to_string()),
            _ => EvalError::Startup(e.to_string()),
        }
    }
}
