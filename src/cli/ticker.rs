//! What `get` and `restore` share for their progress lines: the thread that
//! redraws them (`Ticker`) and the ETA they show (`eta_text`).

use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

/// A thread that calls `tick` every `interval`, then `end` once stopped.
/// `stop` wakes it at once: a thread that slept its interval and then looked
/// at a flag held the end of every run for up to that interval (a restore of
/// 2,000 files took 0.41 s where 0.31 s was the work).
pub struct Ticker {
    /// Dropped by `stop`: the thread's wait ends with `Disconnected`.
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Ticker {
    pub fn start(
        interval: Duration,
        mut tick: impl FnMut() + Send + 'static,
        end: impl FnOnce() + Send + 'static,
    ) -> Ticker {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                tick();
            }
            end();
        });
        Ticker { stop, thread }
    }

    /// Wakes the thread and waits for its `end`.
    pub fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

/// The progress line of `get` and `restore`: `line(elapsed)` redrawn in
/// place on a TTY every `PROGRESS_TTY_INTERVAL_MS`, else (a log) written as
/// a plain `ringdown: progress: …` line every `PROGRESS_PLAIN_INTERVAL_S`.
pub fn start_progress_line(mut line: impl FnMut(Duration) -> String + Send + 'static) -> Ticker {
    use std::io::IsTerminal;
    let tty = std::io::stderr().is_terminal();
    let interval = if tty {
        Duration::from_millis(crate::config::PROGRESS_TTY_INTERVAL_MS)
    } else {
        Duration::from_secs(crate::config::PROGRESS_PLAIN_INTERVAL_S)
    };
    let started = std::time::Instant::now();
    Ticker::start(
        interval,
        move || {
            let text = line(started.elapsed());
            if tty {
                draw_in_place(&text);
            } else {
                crate::say!("ringdown: progress: {text}");
            }
        },
        move || {
            if tty {
                clear_in_place();
            }
        },
    )
}

/// Redraws the progress line in place (a TTY); messages clear it first
/// (`say!`) while it is there.
fn draw_in_place(line: &str) {
    use std::io::Write;
    let mut stderr = std::io::stderr().lock();
    let _ = write!(stderr, "\r\x1b[2K  {line}");
    crate::PROGRESS_LINE_DRAWN.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Takes the progress line away for good.
fn clear_in_place() {
    use std::io::Write;
    let mut stderr = std::io::stderr().lock();
    crate::PROGRESS_LINE_DRAWN.store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = write!(stderr, "\r\x1b[2K");
}

/// `ETA 12 s` for `left_bytes` at the rate so far; `ETA ?` before any byte.
pub fn eta_text(left_bytes: u64, rate_bytes_per_s: f64) -> String {
    if rate_bytes_per_s < 1.0 {
        "ETA ?".to_string()
    } else {
        format!("ETA {:.0} s", left_bytes as f64 / rate_bytes_per_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

    #[test]
    fn stop_wakes_the_thread_at_once_and_runs_end() {
        let ticks = Arc::new(AtomicU32::new(0));
        let ended = Arc::new(AtomicU32::new(0));
        let (counted, ends) = (Arc::clone(&ticks), Arc::clone(&ended));
        let ticker = Ticker::start(
            Duration::from_secs(3600),
            move || {
                counted.fetch_add(1, Ordering::Relaxed);
            },
            move || {
                ends.fetch_add(1, Ordering::Relaxed);
            },
        );
        let started = Instant::now();
        ticker.stop();
        // An hour's interval: only a wake-up ends this quickly.
        assert!(started.elapsed() < Duration::from_secs(60));
        assert_eq!(ticks.load(Ordering::Relaxed), 0);
        assert_eq!(ended.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn ticks_every_interval_until_stopped() {
        let ticks = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&ticks);
        let ticker = Ticker::start(
            Duration::from_millis(1),
            move || {
                counted.fetch_add(1, Ordering::Relaxed);
            },
            || {},
        );
        while ticks.load(Ordering::Relaxed) < 3 {
            std::thread::yield_now();
        }
        ticker.stop();
    }
}
