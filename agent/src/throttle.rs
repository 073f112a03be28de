//! `[upload] bandwidth_limit`: a token bucket shared by every thread that
//! sends, and a `Write` adapter that draws from it.
//!
//! Tokens are bytes. A caller takes what it is about to send; when the
//! bucket runs dry the balance goes negative and the caller sleeps until it
//! is paid back, so large writes need no splitting and the long-run rate
//! is exact. The bucket starts empty and holds at most [`Throttle::burst`]
//! (a quarter second of traffic, at least [`MIN_BURST`]), so an idle link
//! does not save up a large burst that would swamp the network at once.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Smallest burst, so that slow limits still let a whole chunk through at once.
pub const MIN_BURST: u64 = 256 * 1024;

/// A token bucket; share it with `Arc`.
#[derive(Debug)]
pub struct Throttle {
    /// Bytes per second; 0 = unlimited.
    rate: u64,
    burst: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Bytes that may be sent now; negative = owed.
    tokens: f64,
    last: Instant,
}

impl Throttle {
    /// A bucket refilled at `bytes_per_sec`; 0 means no limit.
    pub fn new(bytes_per_sec: u64) -> Self {
        let burst = (bytes_per_sec / 4).max(MIN_BURST) as f64;
        Self { rate: bytes_per_sec, burst, state: Mutex::new(State { tokens: 0.0, last: Instant::now() }) }
    }

    /// Bytes per second (0 = unlimited).
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Most bytes that can go out at once after an idle period.
    pub fn burst(&self) -> u64 {
        self.burst as u64
    }

    /// Accounts for `n` bytes about to be sent, sleeping as long as needed
    /// to keep to the rate.
    pub fn take(&self, n: usize) {
        if self.rate == 0 || n == 0 {
            return;
        }
        let wait = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let refill = now.duration_since(s.last).as_secs_f64() * self.rate as f64;
            s.tokens = (s.tokens + refill).min(self.burst) - n as f64;
            s.last = now;
            // Sleep outside the lock: other threads queue behind the debt
            // this one left, not behind the mutex.
            if s.tokens < 0.0 {
                Duration::from_secs_f64(-s.tokens / self.rate as f64)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// A writer that keeps to a [`Throttle`].
pub struct ThrottledWriter<W: Write> {
    pub inner: W,
    pub throttle: Arc<Throttle>,
}

impl<W: Write> ThrottledWriter<W> {
    pub fn new(inner: W, throttle: Arc<Throttle>) -> Self {
        Self { inner, throttle }
    }
}

impl<W: Write> Write for ThrottledWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Pay for what was actually written, in slices no larger than the
        // burst so one huge write does not sleep first and then flood.
        let slice = &buf[..buf.len().min(self.throttle.burst().max(1) as usize)];
        let n = self.inner.write(slice)?;
        self.throttle.take(n);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_mib_at_four_mib_per_second_takes_about_half_a_second() {
        let t = Arc::new(Throttle::new(4 << 20));
        let mut w = ThrottledWriter::new(Vec::new(), t);
        let data = vec![7u8; 64 * 1024];
        let t0 = Instant::now();
        for _ in 0..32 {
            w.write_all(&data).unwrap();
        }
        let took = t0.elapsed();
        assert_eq!(w.inner.len(), 2 << 20);
        assert!(took >= Duration::from_millis(350) && took <= Duration::from_secs(2), "took {took:?}");
    }

    #[test]
    fn threads_share_one_budget() {
        let t = Arc::new(Throttle::new(4 << 20));
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..4 {
                let t = t.clone();
                s.spawn(move || {
                    let mut w = ThrottledWriter::new(io::sink(), t);
                    w.write_all(&vec![0u8; 512 * 1024]).unwrap();
                });
            }
        });
        let took = t0.elapsed();
        // 4 x 512 KiB = 2 MiB in total, at 4 MiB/s: not 4 times faster.
        assert!(took >= Duration::from_millis(350) && took <= Duration::from_secs(2), "took {took:?}");
    }

    #[test]
    fn unlimited_does_not_wait_and_burst_has_a_floor() {
        let t = Throttle::new(0);
        let t0 = Instant::now();
        t.take(1 << 30);
        assert!(t0.elapsed() < Duration::from_millis(50));
        assert_eq!(Throttle::new(1000).burst(), MIN_BURST);
        assert_eq!(Throttle::new(100 << 20).burst(), 25 << 20);
    }
}
