//! A `one_for_one` supervisor for the node's long-lived parts (listener, gossip, store).
//!
//! Each part runs as its own task. When one fails — returns an error, panics, or ends while
//! the node is not stopping — only that part is restarted. More than `max_restarts` restarts
//! within `window` means something is persistently wrong: the supervisor gives up and the
//! node exits non-zero with a clear log, rather than limping on. Knows nothing of what the
//! parts do.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The `one_for_one` restart budget of the node's long-lived parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SupervisorConfig {
    pub max_restarts: u32,
    pub window: Duration,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            max_restarts: 3,
            window: Duration::from_secs(5),
        }
    }
}

/// What one run of a part returns: `Err` (or a panic) is a failure.
pub type PartRun = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A long-lived part: a name for the logs and a way to start it afresh.
pub struct Part {
    pub name: &'static str,
    start: Box<dyn FnMut() -> PartRun + Send>,
}

impl Part {
    pub fn new(name: &'static str, start: impl FnMut() -> PartRun + Send + 'static) -> Self {
        Self {
            name,
            start: Box::new(start),
        }
    }
}

/// The supervisor stopped restarting: the node should stop. Names the part that failed
/// most within the window (the likeliest culprit), not merely the one that failed last.
#[derive(Debug, thiserror::Error)]
#[error(
    "part {part} failed {failures} times within {window:?} (the limit is {limit} restarts); all parts failed {total} times in that time; its last failure: {last}"
)]
pub struct GaveUp {
    pub part: &'static str,
    /// How often `part` failed within the window.
    pub failures: usize,
    /// How often all parts together failed within the window.
    pub total: usize,
    pub window: Duration,
    pub limit: u32,
    /// `part`'s last failure.
    pub last: String,
}

/// One failure within the restart window.
struct Failure {
    at: Instant,
    part: usize,
    why: String,
}

impl Supervisor {
    /// Why to give up, from the failures within the window (oldest first, not empty): the
    /// part that failed most, the later to fail on a tie.
    fn gave_up(&self, failures: &VecDeque<Failure>) -> GaveUp {
        let mut counts: HashMap<usize, (usize, usize)> = HashMap::new(); // part -> (count, last index)
        for (i, f) in failures.iter().enumerate() {
            let entry = counts.entry(f.part).or_default();
            *entry = (entry.0 + 1, i);
        }
        let (&part, &(count, last)) = counts
            .iter()
            .max_by_key(|(_, (count, last))| (*count, *last))
            .expect("at least one failure");
        GaveUp {
            part: self.parts[part].name,
            failures: count,
            total: failures.len(),
            window: self.config.window,
            limit: self.config.max_restarts,
            last: failures[last].why.clone(),
        }
    }
}

pub struct Supervisor {
    config: SupervisorConfig,
    parts: Vec<Part>,
}

impl Supervisor {
    pub fn new(config: SupervisorConfig) -> Self {
        Self {
            config,
            parts: Vec::new(),
        }
    }

    pub fn with(mut self, part: Part) -> Self {
        self.parts.push(part);
        self
    }

    /// Runs every part until `stop` is cancelled (then waits for them to end) or the restart
    /// budget is spent.
    pub async fn run(mut self, stop: CancellationToken) -> Result<(), GaveUp> {
        let mut running = JoinSet::new();
        let mut which = HashMap::new();
        for index in 0..self.parts.len() {
            let id = running.spawn((self.parts[index].start)()).id();
            which.insert(id, index);
        }
        let mut failures: VecDeque<Failure> = VecDeque::new();
        loop {
            let joined = tokio::select! {
                joined = running.join_next_with_id() => joined,
                () = stop.cancelled() => break,
            };
            let Some(joined) = joined else { break };
            let (id, outcome) = match joined {
                Ok((id, outcome)) => (id, outcome),
                Err(e) => {
                    let id = e.id();
                    let why = if e.is_panic() {
                        format!("panicked: {}", panic_text(&*e.into_panic()))
                    } else {
                        "cancelled".to_string()
                    };
                    (id, Err(why))
                }
            };
            let index = which.remove(&id).unwrap_or_default();
            if stop.is_cancelled() {
                break;
            }
            let name = self.parts[index].name;
            let why = match outcome {
                Ok(()) => "it ended on its own".to_string(),
                Err(why) => why,
            };
            let now = Instant::now();
            failures.push_back(Failure {
                at: now,
                part: index,
                why,
            });
            while failures
                .front()
                .is_some_and(|f| now.duration_since(f.at) > self.config.window)
            {
                failures.pop_front();
            }
            if failures.len() > self.config.max_restarts as usize {
                let gave_up = self.gave_up(&failures);
                tracing::error!(part = gave_up.part, failures = gave_up.failures, total = gave_up.total, window = ?self.config.window, reason = %gave_up.last, last_to_fail = name, "part keeps failing; giving up");
                running.abort_all();
                return Err(gave_up);
            }
            let Failure { why, .. } = failures.back().expect("just pushed");
            tracing::warn!(part = name, reason = %why, restart = failures.len(), limit = self.config.max_restarts, window = ?self.config.window, "part failed; restarting it");
            let id = running.spawn((self.parts[index].start)()).id();
            which.insert(id, index);
        }
        // Stopping: the parts watch `stop` themselves; give them a moment, then abort.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while running.join_next().await.is_some() {}
        })
        .await;
        running.abort_all();
        Ok(())
    }
}

/// What a caught panic said: its message when it carried one (`panic!` with a literal or a
/// format), else "panic". Shared with the request guard in `rpc`.
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn config(max_restarts: u32) -> SupervisorConfig {
        SupervisorConfig {
            max_restarts,
            window: Duration::from_secs(5),
        }
    }

    /// A part that fails (by panicking) its first `failures` runs, then runs until stopped.
    fn flaky(starts: Arc<AtomicU32>, failures: u32, stop: CancellationToken) -> Part {
        Part::new("flaky", move || {
            let n = starts.fetch_add(1, Ordering::SeqCst);
            let stop = stop.clone();
            Box::pin(async move {
                if n < failures {
                    panic!("run {n} fails");
                }
                stop.cancelled().await;
                Ok(())
            })
        })
    }

    #[tokio::test]
    async fn a_failed_part_is_restarted_and_the_others_are_untouched() {
        let stop = CancellationToken::new();
        let (flaky_starts, steady_starts) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let steady = {
            let (starts, stop) = (Arc::clone(&steady_starts), stop.clone());
            Part::new("steady", move || {
                starts.fetch_add(1, Ordering::SeqCst);
                let stop = stop.clone();
                Box::pin(async move {
                    stop.cancelled().await;
                    Ok(())
                })
            })
        };
        let sup = Supervisor::new(config(3))
            .with(flaky(Arc::clone(&flaky_starts), 2, stop.clone()))
            .with(steady);
        let run = tokio::spawn(sup.run(stop.clone()));
        while flaky_starts.load(Ordering::SeqCst) < 3 {
            tokio::task::yield_now().await;
        }
        stop.cancel();
        assert!(run.await.unwrap().is_ok());
        assert_eq!(flaky_starts.load(Ordering::SeqCst), 3, "two failures, two restarts");
        assert_eq!(
            steady_starts.load(Ordering::SeqCst),
            1,
            "one_for_one: the other part kept running"
        );
    }

    #[tokio::test]
    async fn beyond_the_restart_limit_the_supervisor_gives_up_naming_the_part() {
        let stop = CancellationToken::new();
        let starts = Arc::new(AtomicU32::new(0));
        let sup = Supervisor::new(config(3)).with(flaky(Arc::clone(&starts), u32::MAX, stop.clone()));
        let err = sup.run(stop).await.unwrap_err();
        assert_eq!((err.part, err.failures, err.limit), ("flaky", 4, 3));
        assert!(err.last.contains("panicked: run 3 fails"), "{}", err.last);
        assert!(err.to_string().contains("part flaky failed 4 times"), "{err}");
    }

    #[tokio::test]
    async fn giving_up_names_the_part_that_failed_most_not_the_last_to_fail() {
        let stop = CancellationToken::new();
        let worst_starts = Arc::new(AtomicU32::new(0));
        // Fails once, after "flaky" has failed three times: the failure that spends the budget.
        let other = {
            let worst_starts = Arc::clone(&worst_starts);
            Part::new("other", move || {
                let worst_starts = Arc::clone(&worst_starts);
                Box::pin(async move {
                    while worst_starts.load(Ordering::SeqCst) < 4 {
                        tokio::task::yield_now().await;
                    }
                    Err("the one failure of other".to_string())
                })
            })
        };
        let sup = Supervisor::new(config(3))
            .with(flaky(Arc::clone(&worst_starts), 3, stop.clone()))
            .with(other);
        let err = sup.run(stop).await.unwrap_err();
        assert_eq!((err.part, err.failures), ("flaky", 3), "{err}");
        assert!(err.last.contains("panicked: run 2 fails"), "{}", err.last);
        assert!(err.to_string().contains("part flaky failed 3 times"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_older_than_the_window_do_not_count() {
        let stop = CancellationToken::new();
        let starts = Arc::new(AtomicU32::new(0));
        let part = {
            let starts = Arc::clone(&starts);
            let stop = stop.clone();
            Part::new("slow-flaky", move || {
                let n = starts.fetch_add(1, Ordering::SeqCst);
                let stop = stop.clone();
                Box::pin(async move {
                    if n < 10 {
                        // Fails every 2 s: never more than 3 failures in a 5 s window.
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        return Err(format!("failure {n}"));
                    }
                    stop.cancelled().await;
                    Ok(())
                })
            })
        };
        let run = tokio::spawn(Supervisor::new(config(3)).with(part).run(stop.clone()));
        while starts.load(Ordering::SeqCst) < 11 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.cancel();
        assert!(run.await.unwrap().is_ok());
    }
}
