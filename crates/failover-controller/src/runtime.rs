//! openraft's async runtime for the controller: tokio, except that the randomness openraft
//! draws (election timeouts, tick jitter) can be seeded per thread.
//!
//! In production nothing seeds it and every draw comes from the operating system's entropy,
//! exactly as with openraft's own `TokioRuntime`. The deterministic simulation
//! (`crates/failover-sim`) runs all controllers of one run on one thread and calls
//! [`seed_thread_rng`] first, so the same seed gives the same elections.
//!
//! Every task of a controller (openraft's and the controller's own) is spawned through
//! [`spawn`], so a simulation can also freeze one controller whole: a [`Freeze`] stops
//! every task spawned under it, as SIGSTOP or a long VM pause stops a process, and its
//! timers fire late when it thaws. In production no freeze exists and [`spawn`] is
//! `tokio::spawn`.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use openraft::impls::TokioRuntime;
use openraft::rt::{AsyncRuntime, OptionalSend};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

thread_local! {
    /// The seeded generator of this thread, if a simulation set one.
    static SEEDED: RefCell<Option<SmallRng>> = const { RefCell::new(None) };
}

/// Makes every later draw of openraft's randomness on this thread follow `seed`, until
/// [`unseed_thread_rng`]. Only for a simulation that runs its whole cluster on this thread.
pub fn seed_thread_rng(seed: u64) {
    SEEDED.with(|s| *s.borrow_mut() = Some(SmallRng::seed_from_u64(seed)));
}

/// Returns this thread to the operating system's entropy.
pub fn unseed_thread_rng() {
    SEEDED.with(|s| *s.borrow_mut() = None);
}

thread_local! {
    /// The freeze of the task being polled on this thread, inherited by what it spawns.
    static CURRENT_FREEZE: RefCell<Option<Freeze>> = const { RefCell::new(None) };
}

/// A switch that stops every task spawned under it (see the module doc). Cloning shares
/// the switch.
#[derive(Debug, Clone, Default)]
pub struct Freeze {
    inner: Arc<FreezeInner>,
}

#[derive(Debug, Default)]
struct FreezeInner {
    frozen: AtomicBool,
    /// The tasks that found it frozen, woken when it thaws.
    waiting: Mutex<Vec<Waker>>,
}

impl Freeze {
    /// Stops the tasks under this freeze at their next poll, until [`Freeze::thaw`].
    pub fn freeze(&self) {
        self.inner.frozen.store(true, Ordering::SeqCst);
    }

    /// Lets the tasks under this freeze run again; each is polled at once.
    pub fn thaw(&self) {
        self.inner.frozen.store(false, Ordering::SeqCst);
        let waiting = std::mem::take(&mut *self.waiters());
        for waker in waiting {
            waker.wake();
        }
    }

    /// Whether the tasks under it are stopped.
    pub fn is_frozen(&self) -> bool {
        self.inner.frozen.load(Ordering::SeqCst)
    }

    /// `future`, polled only while this is not frozen; what it spawns through [`spawn`]
    /// is under this freeze too.
    pub fn wrap<F: Future>(&self, future: F) -> UnderFreeze<F> {
        UnderFreeze {
            freeze: self.clone(),
            inner: future,
        }
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, Vec<Waker>> {
        self.inner
            .waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pin_project_lite::pin_project! {
    /// A future that stands still while its [`Freeze`] is frozen.
    #[derive(Debug)]
    pub struct UnderFreeze<F> {
        freeze: Freeze,
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for UnderFreeze<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if this.freeze.is_frozen() {
            this.freeze.waiters().push(cx.waker().clone());
            // A thaw between the check and the push must not be missed.
            if this.freeze.is_frozen() {
                return Poll::Pending;
            }
        }
        let outer = CURRENT_FREEZE.with(|c| c.replace(Some(this.freeze.clone())));
        /// Puts the outer freeze back also when the inner poll panics.
        struct Restore(Option<Freeze>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let outer = self.0.take();
                CURRENT_FREEZE.with(|c| *c.borrow_mut() = outer);
            }
        }
        let _restore = Restore(outer);
        this.inner.poll(cx)
    }
}

/// Spawns a controller task: `tokio::spawn`, under the freeze of the spawning task if it
/// has one (only in a simulation).
pub fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match CURRENT_FREEZE.with(|c| c.borrow().clone()) {
        Some(freeze) => tokio::spawn(freeze.wrap(future)),
        None => tokio::spawn(future),
    }
}

/// The controller's openraft runtime (see the module doc).
#[derive(Debug)]
pub struct ControllerRuntime {
    inner: TokioRuntime,
}

impl AsyncRuntime for ControllerRuntime {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = <TokioRuntime as AsyncRuntime>::Instant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> =
        <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = SmallRng;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        SEEDED.with(|s| match s.borrow_mut().as_mut() {
            Some(seeded) => SmallRng::seed_from_u64(seeded.next_u64()),
            None => SmallRng::from_rng(&mut rand::rng()),
        })
    }

    type Mpsc = <TokioRuntime as AsyncRuntime>::Mpsc;
    type Watch = <TokioRuntime as AsyncRuntime>::Watch;
    type Oneshot = <TokioRuntime as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::Mutex<T>;

    fn new(threads: usize) -> Self {
        ControllerRuntime {
            inner: TokioRuntime::new(threads),
        }
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.inner.block_on(future)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// A task under a freeze, and the task it spawns, stand still while frozen (their
    /// timers firing meanwhile change nothing) and run again, late, once thawed; a task
    /// outside the freeze runs all along.
    #[tokio::test(start_paused = true)]
    async fn frozen_tasks_and_their_children_stand_still_until_thawed() {
        let freeze = Freeze::default();
        let parent_ticks = Arc::new(AtomicU64::new(0));
        let child_ticks = Arc::new(AtomicU64::new(0));
        let (parent, child) = (parent_ticks.clone(), child_ticks.clone());
        let task = tokio::spawn(freeze.wrap(async move {
            spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    child.fetch_add(1, Ordering::SeqCst);
                }
            });
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                parent.fetch_add(1, Ordering::SeqCst);
            }
        }));
        let free_ticks = Arc::new(AtomicU64::new(0));
        let free = free_ticks.clone();
        let outside = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                free.fetch_add(1, Ordering::SeqCst);
            }
        });
        tokio::time::sleep(Duration::from_millis(55)).await;
        let ticks = |c: &Arc<AtomicU64>| c.load(Ordering::SeqCst);
        assert_eq!((ticks(&parent_ticks), ticks(&child_ticks)), (5, 5));

        freeze.freeze();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!((ticks(&parent_ticks), ticks(&child_ticks)), (5, 5));
        assert_eq!(ticks(&free_ticks), 15);

        freeze.thaw();
        tokio::time::sleep(Duration::from_millis(1)).await;
        // Each loop's timer fired during the freeze: one late tick at the thaw.
        assert_eq!((ticks(&parent_ticks), ticks(&child_ticks)), (6, 6));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(ticks(&parent_ticks) >= 10 && ticks(&child_ticks) >= 10);
        task.abort();
        outside.abort();
    }

    /// Without a freeze, `spawn` is plain `tokio::spawn`: nothing is wrapped.
    #[tokio::test]
    async fn spawn_outside_a_freeze_runs_the_task_as_is() {
        assert!(CURRENT_FREEZE.with(|c| c.borrow().is_none()));
        assert_eq!(spawn(async { 7 }).await.expect("join"), 7);
    }
}
