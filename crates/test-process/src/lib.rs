//! Child processes that cannot outlive the test process.
//!
//! * Every child is spawned from one long-lived "spawner" thread with
//!   `prctl(PR_SET_PDEATHSIG, SIGKILL)` (Linux): the kernel kills the child when
//!   the thread that forked it exits. Spawning from a dedicated thread that
//!   lives as long as the process (instead of the test's own thread, a tokio
//!   worker or a blocking-pool thread, which all come and go) makes that "when
//!   the test process dies", including SIGKILL of the test binary.
//! * [`ManagedChild`] kills (SIGTERM, then SIGKILL after a grace period) and
//!   reaps its process on drop, so a panicking test leaves nothing behind.
//!
//! No `libc` crate needed: the few libc functions used are declared here (std
//! links libc anyway).
//!
//! This is the project's only unsafe code, and it is test code: a crate of its own, so that
//! the operator's crates can forbid `unsafe` outright (the workspace's lints, which this crate
//! alone does not take).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

mod sys {
    use std::os::raw::c_int;
    extern "C" {
        pub fn kill(pid: c_int, sig: c_int) -> c_int;
        pub fn atexit(cb: extern "C" fn()) -> c_int;
        #[cfg(target_os = "linux")]
        pub fn prctl(option: c_int, ...) -> c_int;
        #[cfg(target_os = "linux")]
        pub fn getppid() -> c_int;
        #[cfg(target_os = "linux")]
        pub fn _exit(status: c_int) -> !;
    }
    pub const SIGKILL: c_int = 9;
    pub const SIGTERM: c_int = 15;
    #[cfg(target_os = "linux")]
    pub const PR_SET_PDEATHSIG: c_int = 1;
}

/// Sends `sig` to `pid`; returns false if the process does not exist.
pub fn signal(pid: u32, sig: i32) -> bool {
    unsafe { sys::kill(pid as i32, sig) == 0 }
}

/// Runs `f` when the process exits normally (libtest's `main` returning or
/// `std::process::exit`), like C `atexit`.
pub fn at_exit(f: extern "C" fn()) {
    unsafe {
        sys::atexit(f);
    }
}

/// True if a process with this pid exists (zombies included).
pub fn pid_alive(pid: u32) -> bool {
    signal(pid, 0)
}

/// True if a process with this pid exists and is not a zombie (an exited
/// process whose parent has not reaped it yet; an orphan's new parent may be
/// slow to reap, or never reap in a container whose init does not).
pub fn pid_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "<pid> (<comm>) <state> ...": comm may contain spaces/parens.
        Ok(stat) => match stat.rfind(')') {
            Some(i) => !matches!(
                stat[i + 1..].trim_start().chars().next(),
                Some('Z') | Some('X')
            ),
            None => true,
        },
        Err(_) => pid_alive(pid) && !Path::new("/proc/self").exists(),
    }
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("controlplane-spawner".into())
            .spawn(move || {
                // Lives until the process exits (the sender is in a static).
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn controlplane-spawner thread");
        Mutex::new(tx)
    })
}

/// Spawns `cmd` so that the child is SIGKILLed when the test process dies.
pub fn spawn_tied_to_process(mut cmd: Command) -> io::Result<Child> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id() as i32;
        unsafe {
            cmd.pre_exec(move || {
                // Only async-signal-safe calls between fork and exec.
                if sys::prctl(sys::PR_SET_PDEATHSIG, sys::SIGKILL as std::os::raw::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if sys::getppid() != parent {
                    sys::_exit(1);
                }
                Ok(())
            });
        }
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("controlplane-spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("controlplane-spawner thread did not answer"))?
}

/// A child process with its output redirected to a log file, killed and reaped
/// on drop.
#[derive(Debug)]
pub struct ManagedChild {
    pub name: String,
    pub log: PathBuf,
    child: Child,
    status: Option<ExitStatus>,
}

impl ManagedChild {
    /// Spawns `program args..` with stdout+stderr appended to `log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        envs: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let out = File::options().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = spawn_tied_to_process(cmd)
            .map_err(|e| anyhow::anyhow!("failed to start {name} ({}): {e}", program.display()))?;
        Ok(Self {
            name: name.to_string(),
            log: log.to_path_buf(),
            child,
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` if the process has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Sends SIGTERM (no-op if already exited).
    pub fn terminate(&mut self) {
        if self.try_status().is_none() {
            signal(self.child.id(), sys::SIGTERM);
        }
    }

    /// Waits until `deadline` for the process to exit, then SIGKILLs and reaps it.
    pub fn reap_by(&mut self, deadline: Instant) {
        while self.try_status().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.try_status().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    /// SIGTERM, wait up to `grace`, SIGKILL, reap.
    pub fn stop(&mut self, grace: Duration) {
        self.terminate();
        self.reap_by(Instant::now() + grace);
    }

    /// Last `max_bytes` of the log file.
    /// SIGKILL and reap: a crash, no graceful shutdown, no lease release.
    pub fn kill_now(&mut self) {
        signal(self.pid(), 9);
        self.reap_by(Instant::now() + Duration::from_secs(5));
    }

    pub fn log_tail(&self, max_bytes: u64) -> String {
        tail_file(&self.log, max_bytes)
    }
}

impl Drop for ManagedChild {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// Stops several children concurrently: SIGTERM to all, one shared grace
/// period, SIGKILL to the stragglers; every child is reaped.
pub fn stop_all(children: &mut [ManagedChild], grace: Duration) {
    for c in children.iter_mut() {
        c.terminate();
    }
    let deadline = Instant::now() + grace;
    for c in children.iter_mut() {
        c.reap_by(deadline);
    }
}

/// Last `max_bytes` of a file, for error messages.
pub fn tail_file(path: &Path, max_bytes: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("<no log at {}>", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max_bytes);
    let _ = f.seek(SeekFrom::Start(start));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let s = String::from_utf8_lossy(&buf).into_owned();
    if start > 0 {
        // Drop the partial first line.
        match s.find('\n') {
            Some(i) => format!("...\n{}", &s[i + 1..]),
            None => s,
        }
    } else {
        s
    }
}

extern "C" {
    fn sysconf(name: std::os::raw::c_int) -> std::os::raw::c_long;
}
const SC_CLK_TCK: std::os::raw::c_int = 2;

/// Clock ticks per second, the unit of CPU times in `/proc/PID/stat`.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a configuration value; it has no preconditions.
    let t = unsafe { sysconf(SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}
