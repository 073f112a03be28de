//! The stop signal of `serve`'s background threads (scheduled scrub, prune
//! and GC, drills): set once at shutdown, and a thread sleeping until its
//! next look wakes at once instead of finishing its sleep, so stopping the
//! service takes milliseconds, not the longest sleep.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Stop {
    /// Read on hot paths (a scrub checks it between blobs) without a lock.
    flag: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Stop {
    pub fn stop(&self) {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.flag.store(true, Ordering::SeqCst);
        self.wake.notify_all();
    }

    pub fn is_stopped(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Sleeps for `d` or until stopped; returns whether it is stopped.
    pub fn sleep(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        let mut g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            // Checked under the lock `stop` takes: a stop cannot slip in
            // between this check and the wait.
            if self.is_stopped() {
                return true;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            g = self.wake.wait_timeout(g, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_sleeper_wakes_when_stopped_and_a_stopped_signal_does_not_sleep() {
        let stop = Arc::new(Stop::default());
        assert!(!stop.sleep(Duration::from_millis(10)));
        let s = stop.clone();
        let t0 = Instant::now();
        let sleeper = std::thread::spawn(move || s.sleep(Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(50));
        stop.stop();
        assert!(sleeper.join().unwrap());
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        let t1 = Instant::now();
        assert!(stop.sleep(Duration::from_secs(60)));
        assert!(t1.elapsed() < Duration::from_secs(1));
    }
}
