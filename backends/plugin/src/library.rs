//! Loading a plugin library and checking its entry points.

use std::ffi::{c_char, CStr, CString};
use std::path::{Path, PathBuf};

use farcall_core::BackendInfo;
use libloading::Library;

use crate::abi::{self, entry, info_key};
use crate::error::PluginError;

/// A loaded plugin: its entry points and the library that holds them.
///
/// The function pointers are valid while `library` is loaded; `library` is
/// the last field so that it is dropped (unloaded) after everything else.
/// Sessions and reply buffers hold an `Arc<Plugin>`, which keeps it loaded.
pub(crate) struct Plugin {
    /// The path as the operator gave it (for messages).
    pub(crate) path: PathBuf,
    /// Name and Python description, read once at load.
    pub(crate) info: BackendInfo,
    pub(crate) open: abi::OpenFn,
    pub(crate) handle: abi::HandleFn,
    pub(crate) free: abi::FreeFn,
    pub(crate) close: abi::CloseFn,
    library: Library,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("path", &self.path).field("info", &self.info).field("library", &self.library).finish()
    }
}

/// Looks up `name` as a value of type `T` (a function pointer type).
///
/// # Safety
///
/// `T` must be the type the library's symbol has; for farcall plugins the
/// ABI (whose version was checked before) says which.
unsafe fn symbol<T: Copy>(library: &Library, name: &str) -> Option<T> {
    // SAFETY: the caller vouches for the type; the pointer is copied out and
    // used only while `library` stays loaded (see `Plugin`).
    unsafe { library.get::<T>(name.as_bytes()).ok().map(|s| *s) }
}

impl Plugin {
    /// Loads the library at `path` and checks it, in the order ABI.md
    /// documents: the file exists, the loader accepts it, it exports the
    /// version entry point, the version is ours, it exports the other
    /// required entry points, and it has a name.
    pub(crate) fn load(path: &Path) -> Result<Plugin, PluginError> {
        let given = path.to_path_buf();
        match std::fs::metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(PluginError::NotFound { path: given }),
            Err(e) => return Err(PluginError::NotLoadable { path: given, reason: e.to_string() }),
        }
        // An absolute path, so that the loader never searches its library path.
        let absolute = std::path::absolute(path).map_err(|e| PluginError::NotLoadable { path: given.clone(), reason: e.to_string() })?;
        // SAFETY: loading runs the library's initialisers; the operator chose
        // this library as the server's evaluator (ABI.md: load only plugins
        // you trust). Nothing else can be checked before loading.
        let library =
            unsafe { Library::new(&absolute) }.map_err(|e| PluginError::NotLoadable { path: given.clone(), reason: e.to_string() })?;

        // SAFETY (every `symbol` call below): the types are those of the ABI
        // version the library reports, checked before anything else is used.
        let version: abi::AbiVersionFn = unsafe { symbol(&library, entry::ABI_VERSION) }
            .ok_or_else(|| PluginError::NotAPlugin { path: given.clone(), symbol: entry::ABI_VERSION })?;
        // SAFETY: a plugin's version function takes nothing and returns a u32.
        let found = unsafe { version() };
        if found != abi::ABI_VERSION {
            return Err(PluginError::AbiMismatch { path: given, found, supported: abi::ABI_VERSION });
        }
        let missing = |symbol: &'static str| PluginError::MissingEntryPoint { path: given.clone(), symbol };
        let name_fn: abi::NameFn = unsafe { symbol(&library, entry::NAME) }.ok_or_else(|| missing(entry::NAME))?;
        let open: abi::OpenFn = unsafe { symbol(&library, entry::OPEN) }.ok_or_else(|| missing(entry::OPEN))?;
        let handle: abi::HandleFn = unsafe { symbol(&library, entry::HANDLE) }.ok_or_else(|| missing(entry::HANDLE))?;
        let free: abi::FreeFn = unsafe { symbol(&library, entry::FREE) }.ok_or_else(|| missing(entry::FREE))?;
        let close: abi::CloseFn = unsafe { symbol(&library, entry::CLOSE) }.ok_or_else(|| missing(entry::CLOSE))?;
        let info_fn: Option<abi::InfoFn> = unsafe { symbol(&library, entry::INFO) };

        // SAFETY: the ABI says the name is a NUL-terminated string valid while the library is loaded.
        let name_ptr = unsafe { name_fn() };
        let bad_name = |problem| PluginError::BadName { path: given.clone(), problem };
        if name_ptr.is_null() {
            return Err(bad_name("NULL"));
        }
        // SAFETY: non-null, NUL-terminated per the ABI; copied right away.
        let name = unsafe { CStr::from_ptr(name_ptr) }.to_str().map_err(|_| bad_name("a string that is not UTF-8"))?.to_owned();
        if name.is_empty() {
            return Err(bad_name("an empty string"));
        }
        let describe = |key: &str| -> String {
            let Some(info_fn) = info_fn else { return String::new() };
            let key = CString::new(key).expect("info keys have no NUL");
            // SAFETY: the ABI's optional info function: a NUL-terminated key in,
            // NULL or a NUL-terminated string valid while loaded out; copied at once.
            unsafe {
                let value: *const c_char = info_fn(key.as_ptr());
                if value.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr(value).to_string_lossy().into_owned()
                }
            }
        };
        let info = BackendInfo {
            name,
            python_version: describe(info_key::PYTHON_VERSION),
            python_prefix: describe(info_key::PYTHON_PREFIX),
            python_executable: describe(info_key::PYTHON_EXECUTABLE),
        };
        Ok(Plugin { path: given, info, open, handle, free, close, library })
    }
}
