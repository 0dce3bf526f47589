//! Serving the server's requests: the [`Handler`] trait, and [`FnHandler`],
//! a ready-made handler exporting Rust closures as callables.

use std::sync::{Arc, Mutex};

use farcall_core::{ExportTable, RefDesc, RefId, Release, RemoteException, Request};

use crate::{Client, Remote};

/// Performs the requests the server sends to this client: calls and other
/// operations on objects the client exported ([`Remote::Export`]), and the
/// release of those objects.
///
/// `handle` runs on a thread of the client that was waiting for a reply (the
/// server calls back while a call is in flight); it may itself make requests
/// on `client` (nested calls), and several may run at once.
pub trait Handler: Send + Sync {
    /// Performs `op`. Convert its fields with [`Client::import`]: the server's
    /// objects (ext 4) become [`crate::RemoteObject`]s, this client's own
    /// objects (ext 5) [`Remote::Local`]. The result is sent as the reply
    /// (this client's objects as [`Remote::Export`], counted once per
    /// sending); an error is raised on the server.
    fn handle(&self, client: &Client, op: Request) -> Result<Remote, RemoteException>;

    /// The server gives back `count` sendings of each `id` (it dropped its
    /// proxies). Called with no lock of the client held, by a thread of the
    /// client's after the reply read with the releases has been taken (so
    /// that a reply naming a released object still finds it); should not
    /// block for long.
    fn release(&self, refs: &[Release]);

    /// The handler as `Any`, for [`Client::handler`] users that need their
    /// concrete type back (`None` by default).
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}

/// The signature of a Rust function exported with [`FnHandler::export`]:
/// `(client, positional args, keyword args) -> result`.
pub type ExportedFn = dyn Fn(&Client, Vec<Remote>, Vec<(String, Remote)>) -> Result<Remote, RemoteException> + Send + Sync;

/// One exported function: its name, the function, its key in the table.
#[derive(Clone)]
struct Entry {
    name: String,
    f: Arc<ExportedFn>,
    key: u64,
}

/// A [`Handler`] whose objects are Rust closures, callable by the server.
///
/// ```no_run
/// use std::sync::Arc;
/// use farcall_client::{Client, FnHandler, Options, Remote};
///
/// let client = Client::connect("127.0.0.1:1227", &Options::default())?;
/// let handler = Arc::new(FnHandler::new());
/// client.set_handler(handler.clone());
/// let double = handler.export("double", |_, args, _| match args.as_slice() {
///     [Remote::Int(i)] => Ok(Remote::Int(2 * i)),
///     _ => Err(farcall_core::RemoteException::new("builtins", "TypeError", "double(int)")),
/// });
/// // map(double, [1, 2, 3]) evaluated on the server calls back into Rust.
/// # Ok::<(), farcall_client::ClientError>(())
/// ```
#[derive(Default)]
pub struct FnHandler {
    table: Mutex<ExportTable<Entry, u64>>,
    next_key: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for FnHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FnHandler({} live)", self.live())
    }
}

impl FnHandler {
    /// A handler with no objects.
    pub fn new() -> Self {
        Self::default()
    }

    /// Exports `f` as a new callable object named `name`; returns it as a
    /// value to send (one sending counted). Send it once: to send it again,
    /// use [`FnHandler::resend`] (each sending is counted and released).
    pub fn export(
        &self,
        name: &str,
        f: impl Fn(&Client, Vec<Remote>, Vec<(String, Remote)>) -> Result<Remote, RemoteException> + Send + Sync + 'static,
    ) -> Remote {
        let key = self.next_key.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = self.lock().export(key, || Entry { name: name.to_owned(), f: Arc::new(f), key });
        Remote::Export(Self::desc(id, name))
    }

    /// Counts one more sending of the live object `id` and returns it as a
    /// value to send; `None` when the server released it already.
    pub fn resend(&self, id: RefId) -> Option<Remote> {
        let mut table = self.lock();
        let entry = table.get(id)?.clone();
        table.export(entry.key, || entry.clone());
        Some(Remote::Export(Self::desc(id, &entry.name)))
    }

    /// Number of exported objects the server still holds.
    pub fn live(&self) -> usize {
        self.lock().len()
    }

    fn desc(id: RefId, name: &str) -> RefDesc {
        RefDesc { id, type_name: format!("rust.{name}"), flags: farcall_core::flags::CALLABLE, attrs: Vec::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ExportTable<Entry, u64>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn find(&self, id: RefId) -> Result<(String, Arc<ExportedFn>), RemoteException> {
        self.lock()
            .get(id)
            .map(|e| (e.name.clone(), e.f.clone()))
            .ok_or_else(|| RemoteException::protocol(format!("client object {id} is not (or no longer) exported")))
    }
}

fn imported(client: &Client, v: farcall_core::Value) -> Result<Remote, RemoteException> {
    client.import(v).map_err(|e| RemoteException::protocol(e.to_string()))
}

impl Handler for FnHandler {
    fn handle(&self, client: &Client, op: Request) -> Result<Remote, RemoteException> {
        let no_attr =
            |name: &str, attr: &str| RemoteException::new("builtins", "AttributeError", format!("'{name}' has no attribute '{attr}'"));
        match op {
            Request::Call { target, args, kwargs } => {
                let (name, f) = self.find(target.id)?;
                if let Some(attr) = target.path.first() {
                    return Err(no_attr(&name, attr));
                }
                let args = args.into_iter().map(|a| imported(client, a)).collect::<Result<_, _>>()?;
                let kwargs = kwargs.into_iter().map(|(k, v)| Ok((k, imported(client, v)?))).collect::<Result<_, RemoteException>>()?;
                f(client, args, kwargs)
            }
            Request::Repr { target } | Request::Str { target } => {
                let (name, _) = self.find(target.id)?;
                Ok(Remote::Str(format!("<rust function {name}>")))
            }
            Request::GetAttr { target, name: attr } => {
                let (name, _) = self.find(target.id)?;
                Err(no_attr(&name, &attr))
            }
            Request::Builtin { name, args } if name == "callable" && args.len() == 1 => Ok(Remote::Bool(true)),
            Request::Stats => {
                let t = self.lock();
                Ok(Remote::Tuple(vec![Remote::Int(t.len() as i64), Remote::Int(t.exported_total() as i64)]))
            }
            other => Err(RemoteException::new(
                "builtins",
                "TypeError",
                format!("{} is not supported on Rust functions exported by the client", other.name()),
            )),
        }
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn release(&self, refs: &[Release]) {
        let dropped: Vec<_> = {
            let mut t = self.lock();
            refs.iter().filter_map(|r| t.release(r.id, r.count)).collect()
        };
        drop(dropped);
    }
}
