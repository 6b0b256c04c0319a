//! A TCP listener whose connections a handler can kill, so the simulator can
//! process a request and then close the connection without replying (what a
//! client sees when a load balancer or the network fails mid-call).

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, PoisonError,
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use axum::{
    extract::connect_info::Connected,
    serve::{IncomingStream, Listener},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    time::Sleep,
};

pub(crate) struct KillableListener {
    listener: TcpListener,
    idle_timeout: Option<Duration>,
}

impl KillableListener {
    /// `idle_timeout`: close a connection once it has had no request in
    /// flight and no bytes moving for this long.
    pub fn new(listener: TcpListener, idle_timeout: Option<Duration>) -> Self {
        KillableListener {
            listener,
            idle_timeout: idle_timeout.filter(|d| !d.is_zero()),
        }
    }
}

impl Listener for KillableListener {
    type Io = KillableIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = Listener::accept(&mut self.listener).await;
        let _ = io.set_nodelay(true);
        let io = KillableIo {
            io,
            state: Arc::new(ConnState::new()),
            idle_timeout: self.idle_timeout,
            idle_timer: None,
        };
        (io, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// Shared between a connection and the handlers of its requests.
struct ConnState {
    killed: AtomicBool,
    /// Requests being handled right now.
    busy: AtomicUsize,
    born: Instant,
    /// Last activity, in milliseconds since `born`.
    last_active_ms: AtomicU64,
    /// The reader that waited while a request was in flight: woken when the
    /// last request ends, so the idle timer gets armed (hyper does not read
    /// again on its own until the socket wakes it).
    parked_reader: Mutex<Option<Waker>>,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            killed: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
            born: Instant::now(),
            last_active_ms: AtomicU64::new(0),
            parked_reader: Mutex::new(None),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_active_ms.store(ms, Ordering::SeqCst);
    }

    fn last_active(&self) -> Instant {
        let ms = self.last_active_ms.load(Ordering::SeqCst);
        self.born
            .checked_add(Duration::from_millis(ms))
            .unwrap_or(self.born)
    }

    fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }
}

/// Once killed, every read and write fails, so hyper abandons the connection
/// before writing the response and the socket is closed. A read that waits
/// longer than the idle timeout, with no request in flight, fails the same
/// way, which closes leaked keep-alive connections.
pub(crate) struct KillableIo {
    io: TcpStream,
    state: Arc<ConnState>,
    idle_timeout: Option<Duration>,
    idle_timer: Option<Pin<Box<Sleep>>>,
}

fn killed_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection dropped by the simulator",
    )
}

fn idle_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "idle connection closed by the simulator",
    )
}

impl KillableIo {
    /// Called when a read would wait: arms (or re-arms) the idle timer, and
    /// fails once it has run out.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(idle) = self.idle_timeout else {
            return Poll::Pending;
        };
        if self.state.busy.load(Ordering::SeqCst) > 0 {
            self.idle_timer = None;
            let mut parked = self
                .state
                .parked_reader
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *parked = Some(cx.waker().clone());
            drop(parked);
            // The request may have ended between the check and parking.
            if self.state.busy.load(Ordering::SeqCst) == 0 {
                cx.waker().wake_by_ref();
            }
            return Poll::Pending;
        }
        let Some(deadline) = self.state.last_active().checked_add(idle) else {
            return Poll::Pending;
        };
        if Instant::now() >= deadline {
            return Poll::Ready(Err(idle_error()));
        }
        let deadline = tokio::time::Instant::from_std(deadline);
        let timer = self
            .idle_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for KillableIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.state.killed() {
            return Poll::Ready(Err(killed_error()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.state.touch();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_idle(cx),
        }
    }
}

impl AsyncWrite for KillableIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.state.killed() {
            return Poll::Ready(Err(killed_error()));
        }
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.state.touch();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.state.killed() {
            return Poll::Ready(Err(killed_error()));
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.state.killed() {
            return Poll::Ready(Err(killed_error()));
        }
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.state.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Handed to handlers through `ConnectInfo`: kills the request's connection,
/// or marks it busy while a request is handled.
#[derive(Clone)]
pub(crate) struct ConnKiller(Arc<ConnState>);

impl std::fmt::Debug for ConnKiller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnKiller")
            .field("killed", &self.0.killed())
            .finish()
    }
}

impl ConnKiller {
    pub fn kill(&self) {
        self.0.killed.store(true, Ordering::SeqCst);
    }

    /// Keeps the idle timeout off until the guard is dropped.
    pub fn busy(&self) -> BusyGuard {
        self.0.busy.fetch_add(1, Ordering::SeqCst);
        BusyGuard(self.0.clone())
    }
}

pub(crate) struct BusyGuard(Arc<ConnState>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.touch();
        if self.0.busy.fetch_sub(1, Ordering::SeqCst) == 1 {
            let parked = self
                .0
                .parked_reader
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(waker) = parked {
                waker.wake();
            }
        }
    }
}

impl Connected<IncomingStream<'_, KillableListener>> for ConnKiller {
    fn connect_info(stream: IncomingStream<'_, KillableListener>) -> Self {
        ConnKiller(stream.io().state.clone())
    }
}
