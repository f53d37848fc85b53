//! Which engine a thread works for, and a panic's message: what the engine's threads (workers,
//! completion threads) and the code they call share, kept apart from the worker itself so that
//! tickets and completion do not import the worker.

thread_local! {
    /// The engine this thread works for (as a worker or a completion thread); 0 elsewhere.
    static ENGINE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Marks the current thread as one of engine `id`'s own threads.
pub(crate) fn mark_thread(id: u64) {
    ENGINE.with(|e| e.set(id));
}

/// Whether the current thread is one of engine `id`'s own threads: code the engine calls there
/// (a ticket's waker, the model) must not wait for that engine's workers.
pub(crate) fn on_engine_thread(id: u64) -> bool {
    ENGINE.with(|e| e.get() == id)
}

/// The message of a caught panic (a `&str` or `String` payload).
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}
