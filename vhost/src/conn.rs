//! Socket handling for one port: the switch as client of a frontend's socket (the default,
//! reconnecting with backoff) or as server.
//!
//! Each port gets one slow-path thread that blocks in `poll(2)` on the vhost-user socket and a
//! stop eventfd. Every connection is a new device (a fresh `NetBackend`): nothing of a previous
//! connection's ring state is kept, positions come from SET_VRING_BASE and the guest's used
//! index (see `SplitRing::new`). When the connection ends, the rings are taken back from the
//! workers and the memory is unmapped before the next connection is tried.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vhost::vhost_user::{BackendReqHandler, Error as VuError};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::backend::{LinkState, NetBackend, NetDevice};

/// Who opens the vhost-user socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketMode {
    /// The frontend (QEMU, `-chardev socket,server=on`) listens; we dial and re-dial.
    Client,
    /// We listen; the frontend dials (QEMU needs `reconnect=` to survive our restarts).
    Server,
}

/// First and largest delay between two dial attempts in client mode.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(1000);

/// Longest wait for the rest of a vhost-user message once its first bytes arrived.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);

/// A running socket thread for one port.
#[derive(Debug)]
pub struct PortConn {
    stop: Arc<EventFd>,
    /// A clone of the live connection: shutting it down unblocks a `handle_request` that waits
    /// for the rest of a message from a frontend that stalled mid-message.
    current: Live,
    thread: Option<JoinHandle<()>>,
}

type Live = Arc<Mutex<Option<UnixStream>>>;

impl PortConn {
    /// Starts the socket thread. In server mode the socket is bound before this returns, so a
    /// bad path is reported to the caller.
    pub fn start(
        name: &str,
        path: &Path,
        mode: SocketMode,
        dev: Arc<NetDevice>,
    ) -> io::Result<Self> {
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let listener = match mode {
            SocketMode::Server => Some(bind(path)?),
            SocketMode::Client => None,
        };
        let (name, path, stop2) = (name.to_string(), path.to_path_buf(), stop.clone());
        let current: Live = Arc::default();
        let live = current.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vhost-{name}"))
            .spawn(move || {
                let ctx = Ctx {
                    name: &name,
                    stop: &stop2,
                    dev: &dev,
                    live: &live,
                };
                match listener {
                    Some(l) => serve_listener(&ctx, &l),
                    None => dial_loop(&ctx, &path),
                }
                dev.set_state(LinkState::Stopped);
            })?;
        Ok(PortConn {
            stop,
            current,
            thread: Some(thread),
        })
    }

    /// Stops the thread, closing any connection; the port's rings are stopped when this returns.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.stop.write(1);
        // The thread stores a connection before it polls for the stop event, so either it sees
        // the event or we see (and shut down) the connection it is blocked on.
        if let Some(s) = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for PortConn {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn bind(path: &Path) -> io::Result<UnixListener> {
    // A stale socket from a previous run would make bind fail; only a socket is removed, and
    // only a dead one: a socket that something still listens on (another port, another
    // daemon's API) is refused, never taken over.
    if let Ok(md) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if md.file_type().is_socket() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "a live socket is already there (something listens on it)",
                ));
            }
            std::fs::remove_file(path)?;
        }
    }
    UnixListener::bind(path)
}

/// Waits until `fd` is readable or the stop eventfd fires (true), or `timeout` passes.
fn wait(fd: Option<RawFd>, stop: &EventFd, timeout: Option<Duration>) -> bool {
    let mut fds = [
        libc::pollfd {
            fd: stop.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: fd.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let ms = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
    let n = if fd.is_some() { 2 } else { 1 };
    poll(&mut fds[..n], ms);
    fds[0].revents != 0
}

#[allow(unsafe_code)]
fn poll(fds: &mut [libc::pollfd], ms: i32) {
    // SAFETY: `fds` is a valid, exclusively borrowed array of pollfd of the given length.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
}

struct Ctx<'a> {
    name: &'a str,
    stop: &'a EventFd,
    dev: &'a Arc<NetDevice>,
    live: &'a Live,
}

fn dial_loop(ctx: &Ctx<'_>, path: &Path) {
    let (name, stop, dev) = (ctx.name, ctx.stop, ctx.dev);
    let mut backoff = BACKOFF_MIN;
    let mut logged = false;
    loop {
        dev.set_state(LinkState::Connecting);
        match UnixStream::connect(path) {
            Ok(s) => {
                log::info!("{name}: connected to {}", path.display());
                backoff = BACKOFF_MIN;
                logged = false;
                if serve(ctx, s) {
                    return;
                }
                log::info!("{name}: disconnected; re-dialing {}", path.display());
            }
            Err(e) => {
                if !logged {
                    log::info!(
                        "{name}: cannot dial {} ({e}); retrying with backoff",
                        path.display()
                    );
                    logged = true;
                }
                if wait(None, stop, Some(backoff)) {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

fn serve_listener(ctx: &Ctx<'_>, l: &UnixListener) {
    let (name, stop, dev) = (ctx.name, ctx.stop, ctx.dev);
    loop {
        dev.set_state(LinkState::Listening);
        if wait(Some(l.as_raw_fd()), stop, None) {
            return;
        }
        match l.accept() {
            Ok((s, _)) => {
                log::info!("{name}: frontend connected");
                if serve(ctx, s) {
                    return;
                }
                log::info!("{name}: frontend disconnected; listening again");
            }
            Err(e) => {
                log::warn!("{name}: accept failed: {e}");
                if wait(None, stop, Some(BACKOFF_MIN)) {
                    return;
                }
            }
        }
    }
}

/// Serves one connection until it ends (false) or we are told to stop (true).
fn serve(ctx: &Ctx<'_>, s: UnixStream) -> bool {
    let (name, stop, dev) = (ctx.name, ctx.stop, ctx.dev);
    *ctx.live.lock().unwrap_or_else(|e| e.into_inner()) = s.try_clone().ok();
    dev.count_connection();
    dev.set_state(LinkState::Negotiating);
    // We read only after poll says data is there, so a frontend sending whole messages never
    // waits on this; one that stalls mid-message is disconnected instead of holding this
    // thread (and a `port del` waiting for it) for ever.
    if let Err(e) = s.set_read_timeout(Some(MESSAGE_TIMEOUT)) {
        log::warn!("{name}: cannot set a read timeout: {e}");
    }
    let fd = s.as_raw_fd();
    let backend = Arc::new(Mutex::new(NetBackend::new(dev.clone(), name)));
    let mut handler = BackendReqHandler::from_stream(s, backend);
    let stopped = loop {
        if wait(Some(fd), stop, None) {
            break true;
        }
        match handler.handle_request() {
            Ok(()) => {}
            // The frontend asked for something we refuse: it was told (REPLY_ACK) and the
            // connection goes on.
            // QEMU sends SET_VRING_ENABLE before SET_FEATURES; the vhost crate refuses those
            // (see `VringSetup::enabled` for why that is harmless).
            Err(e @ VuError::InactiveFeature(_)) => log::debug!("{name}: request refused: {e}"),
            // Our handlers log what they refuse, with the request, queue and value.
            Err(e @ VuError::InvalidParam) => log::debug!("{name}: request refused: {e}"),
            Err(
                e @ (VuError::InvalidOperation(_)
                | VuError::InactiveOperation(_)
                | VuError::ReqHandlerError(_)),
            ) => log::warn!("{name}: request refused: {e}"),
            Err(VuError::Disconnected | VuError::PartialMessage) => break false,
            Err(e) => {
                log::warn!("{name}: closing connection: {e}");
                break false;
            }
        }
    };
    // Dropping the handler drops the NetBackend, which takes the rings back from the workers.
    drop(handler);
    *ctx.live.lock().unwrap_or_else(|e| e.into_inner()) = None;
    stopped
}

/// The path a port's socket lives at, for messages.
pub fn describe(mode: SocketMode, path: &Path) -> String {
    let p: PathBuf = path.to_path_buf();
    match mode {
        SocketMode::Client => format!("client of {}", p.display()),
        SocketMode::Server => format!("server on {}", p.display()),
    }
}
