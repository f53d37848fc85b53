// A model of the MPS stream-pool patch's queue, event, command-buffer and allocator discipline,
// run under ThreadSanitizer by scripts/check-patch.sh (check `queue-model`).
//
// What is real and what is modelled:
//   - real: the patch's portable headers, extracted from the cumulative patch: the stream pool and
//     the queue frames (MPSStreamPoolCore.h), the event signal values and the pool's reuse rule
//     (MPSEventCore.h). They are compiled here exactly as the patch ships them.
//   - modelled, line for line: the .mm logic the patch changes: MPSStream's synchronize / commit /
//     flush / commitAndWait / addCompletedHandler / isOnQueue, getCurrentMPSStream,
//     dispatch_sync_with_rethrow; MPSEvent's record / wait / query / reset and the event pool's
//     acquire and release; the allocator's recordEvents (lock released before recording) and its
//     completion handlers that take the allocator lock; MPSGuardImpl::queryStream's marker event.
//   - modelled, by behaviour: GCD serial queues (a mutex per queue, the caller runs the block,
//     a thread-local stack of the queues it is inside: dispatch_sync semantics; a dispatch_sync
//     onto a queue the thread is already inside is reported as the hang it would be), Metal command
//     buffers (retain counts; commit, commitAndContinue, completion handlers, waitUntilCompleted),
//     MTLSharedEvent (a GPU signal *sets* the value; a GPU wait blocks its queue until the value is
//     reached), and one GPU thread per stream that runs committed work in order, late and with
//     random delays (slow streams make signals arrive long after they were encoded).
//
// What it checks (each failure prints "VIOLATION ..." and the run exits 1):
//   - ordering: work that waits on an event (block) runs only after the work recorded before it;
//   - no signal moves an event's value backwards (a late signal of an earlier holder);
//   - every GPU wait is eventually satisfied (no stuck queue);
//   - no dispatch_sync onto a queue the thread is already inside (a GCD hang), including the
//     nested case: a block of B, dispatched from a block of A, synchronising A;
//   - no command buffer leaks: after every stream is synchronised and the GPU drained, every
//     command buffer created has been destroyed (retain count 0);
//   - ThreadSanitizer: no data race, no lock-order inversion (queue mutexes, the allocator lock,
//     the event pool lock, the kernel lock taken before dispatching).
// It runs the workload twice: commitAndContinue on (every stream, as the patch configures them) and
// off (as with the profiler's signposts), so that flush()'s previous-buffer path runs too.
//
// Mutations (scripts/check-patch.sh builds them; each must FAIL):
//   QM_RESET_SIGNALED_ON_ACQUIRE   with MPSEventCore.h edited to reset the counter: reset() also sets
//                                  signaledValue to 0 (bug 1: what MPSEvent::reset() did)
//   QM_MUTATE_FLUSH_OVERWRITES_PREV flush() overwrites _prevCommandBuffer without releasing it (bug 2)
//   QM_MUTATE_NO_FRAMES             dispatch_sync_with_rethrow installs no queue frames, so only
//                                  GCD's innermost queue is known (bug 7's nested self-deadlock)
//   QM_MUTATE_WAITON_ALWAYS_DISPATCHES waitOn dispatches even from inside its own stream's block
//                                  (bug 5's hang)
#include <ATen/mps/MPSEventCore.h>
#include <ATen/mps/MPSStreamPoolCore.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
using at::mps::detail::QueueFrames;

std::atomic<int> g_violations{0};

void violation(const char* what, long a = 0, long b = 0) {
  if (g_violations.fetch_add(1) < 8) {
    std::printf("queue-model: VIOLATION %s (%ld, %ld)\n", what, a, b);
  }
}

// ---- GCD serial queues ---------------------------------------------------------------------------
struct Stream;

struct SerialQueue {
  std::mutex mutex;
  const void* specific = nullptr;  // dispatch_queue_set_specific(&kStreamQueueKey, stream)
};

// The queues whose blocks this thread is running (GCD's own knowledge: it runs dispatch_sync
// blocks on the calling thread). Used to detect the hang, and for dispatch_get_specific.
thread_local std::vector<SerialQueue*> tls_inside;

bool insideQueue(SerialQueue* q) {
  for (SerialQueue* x : tls_inside) {
    if (x == q) return true;
  }
  return false;
}

// dispatch_sync: runs `block` on the calling thread while holding the queue.
void dispatch_sync(SerialQueue* q, const std::function<void()>& block) {
  if (insideQueue(q)) {
    violation("dispatch_sync onto a queue this thread is already inside (GCD would hang)");
    return;
  }
  std::lock_guard<std::mutex> lock(q->mutex);
  tls_inside.push_back(q);
  block();
  tls_inside.pop_back();
}

// dispatch_get_specific: the innermost queue's value only.
const void* dispatch_get_specific() {
  return tls_inside.empty() ? nullptr : tls_inside.back()->specific;
}

// Model of the patched dispatch_sync_with_rethrow (MPSStream.mm): the caller's frames travel into
// the block, plus the queue's stream.
void dispatch_sync_with_rethrow(SerialQueue* q, const std::function<void()>& block) {
  const QueueFrames::Frames outer = QueueFrames::snapshot();
  const void* queue_stream = q->specific;
  dispatch_sync(q, [&] {
#ifdef QM_MUTATE_NO_FRAMES
    (void)outer;
    (void)queue_stream;
#else
    QueueFrames::Scope frames(outer, queue_stream);
#endif
    block();
  });
}

// ---- Metal: shared events, command buffers, the GPU ----------------------------------------------
struct SharedEvent {
  std::atomic<uint64_t> signaledValue{0};
};

struct Op {
  enum Kind { Work, Check, Signal, Wait } kind;
  SharedEvent* event = nullptr;
  uint64_t value = 0;
  std::atomic<bool>* flag = nullptr;  // Work sets it, Check expects it set
};

std::atomic<long> g_buffers_alive{0};
std::atomic<long> g_buffers_created{0};

struct CommandBuffer {
  std::atomic<int> retain{1};
  std::mutex mutex;
  std::vector<Op> pending;                         // encoded, not yet committed
  std::vector<std::function<void()>> handlers;     // for the pending segment
  std::condition_variable done_cv;
  int submitted = 0, completed = 0;                // segments

  CommandBuffer() {
    g_buffers_alive.fetch_add(1);
    g_buffers_created.fetch_add(1);
  }
  void retainRef() { retain.fetch_add(1); }
  void release() {
    if (retain.fetch_sub(1) == 1) {
      g_buffers_alive.fetch_sub(1);
      delete this;
    }
  }
  void encode(Op op) {
    std::lock_guard<std::mutex> l(mutex);
    pending.push_back(op);
  }
  void addCompletedHandler(std::function<void()> h) {
    std::lock_guard<std::mutex> l(mutex);
    handlers.push_back(std::move(h));
  }
  void waitUntilCompleted() {
    std::unique_lock<std::mutex> l(mutex);
    done_cv.wait(l, [&] { return completed == submitted; });
  }
};

struct Segment {
  CommandBuffer* cb;
  std::vector<Op> ops;
  std::vector<std::function<void()>> handlers;
};

// One GPU engine per stream: runs committed segments in order, with a delay.
struct GpuEngine {
  std::mutex mutex;
  std::condition_variable cv;
  std::deque<Segment> queue;
  bool stop = false;
  int slowness_us = 0;
  std::thread thread;

  void submit(CommandBuffer* cb) {
    Segment s;
    {
      std::lock_guard<std::mutex> l(cb->mutex);
      s.ops.swap(cb->pending);
      s.handlers.swap(cb->handlers);
      ++cb->submitted;
    }
    cb->retainRef();  // a committed buffer is retained until it completes
    s.cb = cb;
    std::lock_guard<std::mutex> l(mutex);
    queue.push_back(std::move(s));
    cv.notify_one();
  }

  void run() {
    std::mt19937 rng(static_cast<unsigned>(slowness_us + 17));
    for (;;) {
      Segment s;
      {
        std::unique_lock<std::mutex> l(mutex);
        cv.wait(l, [&] { return stop || !queue.empty(); });
        if (queue.empty()) return;
        s = std::move(queue.front());
        queue.pop_front();
      }
      if (slowness_us) std::this_thread::sleep_for(std::chrono::microseconds(rng() % slowness_us));
      for (Op& op : s.ops) execute(op);
      for (auto& h : s.handlers) h();
      {
        std::lock_guard<std::mutex> l(s.cb->mutex);
        ++s.cb->completed;
        s.cb->done_cv.notify_all();
      }
      s.cb->release();
    }
  }

  static void execute(Op& op) {
    switch (op.kind) {
      case Op::Work:
        op.flag->store(true, std::memory_order_release);
        break;
      case Op::Check:
        if (!op.flag->load(std::memory_order_acquire)) {
          violation("work after a wait ran before the work recorded ahead of the event");
        }
        break;
      case Op::Signal: {
        const uint64_t before = op.event->signaledValue.exchange(op.value);
        if (op.value < before) {
          violation("a signal moved an event's value backwards (late signal of an earlier holder)",
                    long(op.value), long(before));
        }
        break;
      }
      case Op::Wait: {
        const auto deadline = std::chrono::steady_clock::now() + 3s;
        while (op.event->signaledValue.load() < op.value) {
          if (std::chrono::steady_clock::now() > deadline) {
            violation("a GPU wait was never satisfied", long(op.value), long(op.event->signaledValue.load()));
            break;
          }
          std::this_thread::sleep_for(20us);
        }
        break;
      }
    }
  }
};

// ---- MPSStream (model of the patched .mm) --------------------------------------------------------
enum class SyncType { NONE, COMMIT, COMMIT_AND_WAIT };

bool g_enable_commit_and_continue = true;

struct Stream {
  const int64_t id;
  SerialQueue queue;
  GpuEngine gpu;
  bool enableCommitAndContinue;
  CommandBuffer* commandBuffer_ = nullptr;
  CommandBuffer* prevCommandBuffer_ = nullptr;

  explicit Stream(int64_t id_) : id(id_), enableCommitAndContinue(g_enable_commit_and_continue) {
    queue.specific = this;
    gpu.slowness_us = (id % 3 == 0) ? 3000 : 200;  // every third stream signals late
    gpu.thread = std::thread([this] { gpu.run(); });
  }
  ~Stream() {
    {
      std::lock_guard<std::mutex> l(gpu.mutex);
      gpu.stop = true;
      gpu.cv.notify_one();
    }
    gpu.thread.join();
  }

  bool isOnQueue() const {
    return QueueFrames::contains(this) || dispatch_get_specific() == this;
  }
  CommandBuffer* commandBuffer() {
    if (!commandBuffer_) commandBuffer_ = new CommandBuffer();
    return commandBuffer_;
  }
  void commit() {
    if (enableCommitAndContinue) {
      gpu.submit(commandBuffer());  // commitAndContinue: the wrapper stays current
    } else {
      flush();
    }
  }
  void flush() {
    if (commandBuffer_) {
      gpu.submit(commandBuffer_);
      if (!enableCommitAndContinue) {
#ifndef QM_MUTATE_FLUSH_OVERWRITES_PREV
        if (prevCommandBuffer_) prevCommandBuffer_->release();
#endif
        prevCommandBuffer_ = commandBuffer_;
      } else {
        commandBuffer_->release();
      }
      commandBuffer_ = nullptr;
    }
  }
  void commitAndWait() {
    if (prevCommandBuffer_) {
      prevCommandBuffer_->waitUntilCompleted();
      prevCommandBuffer_->release();
      prevCommandBuffer_ = nullptr;
    }
    if (commandBuffer_) {
      gpu.submit(commandBuffer_);
      commandBuffer_->waitUntilCompleted();
      commandBuffer_->release();
      commandBuffer_ = nullptr;
    }
  }
  void synchronize(SyncType t) {
    if (!isOnQueue()) {
      dispatch_sync_with_rethrow(&queue, [&] { synchronize(t); });
      return;
    }
    if (t == SyncType::COMMIT) commit();
    if (t == SyncType::COMMIT_AND_WAIT) commitAndWait();
  }
  void addCompletedHandler(std::function<void()> h) {
    if (isOnQueue()) {
      commandBuffer()->addCompletedHandler(std::move(h));
      return;
    }
    dispatch_sync_with_rethrow(&queue, [&] { commandBuffer()->addCompletedHandler(std::move(h)); });
  }
};

using Pool = at::mps::detail::StreamPoolCore<Stream>;
Pool* g_pool = nullptr;

Stream* getCurrentMPSStream() {
  if (const void* f = QueueFrames::innermost()) return static_cast<Stream*>(const_cast<void*>(f));
  if (const void* s = dispatch_get_specific()) return static_cast<Stream*>(const_cast<void*>(s));
  return g_pool->current();
}

// ---- MPSEvent and MPSEventPool (model of the patched .mm) ----------------------------------------
struct Event {
  SharedEvent m_event;
  at::mps::detail::EventSignals m_signals;
  Stream* m_stream = nullptr;

  void recordLocked(bool syncEvent, Stream* stream) {
    const uint64_t value = m_signals.nextSignalValue();
    stream->commandBuffer()->encode(Op{Op::Signal, &m_event, value, nullptr});
    if (syncEvent) stream->synchronize(SyncType::COMMIT);
  }
  bool waitLocked(bool syncEvent, Stream* stream) {
    const uint64_t target = m_signals.target();
    if (m_event.signaledValue.load() >= target) return false;
    stream->commandBuffer()->encode(Op{Op::Wait, &m_event, target, nullptr});
    if (syncEvent) stream->synchronize(SyncType::COMMIT);
    return true;
  }
  void recordOn(Stream* stream, bool syncEvent) {
    if (stream->isOnQueue()) {
      recordLocked(syncEvent, stream);
      return;
    }
    dispatch_sync_with_rethrow(&stream->queue, [&] { recordLocked(syncEvent, stream); });
  }
  bool waitOn(Stream* stream, bool syncEvent) {
#ifndef QM_MUTATE_WAITON_ALWAYS_DISPATCHES
    if (stream->isOnQueue()) return waitLocked(syncEvent, stream);
#endif
    bool waited = false;
    dispatch_sync_with_rethrow(&stream->queue, [&] { waited = waitLocked(syncEvent, stream); });
    return waited;
  }
  bool query() const { return m_signals.completed(m_event.signaledValue.load()); }
  bool settled() const { return m_signals.settled(m_event.signaledValue.load()); }
  void reset(Stream* stream) {
    m_signals.onAcquire();
#ifdef QM_RESET_SIGNALED_ON_ACQUIRE
    m_event.signaledValue.store(0);  // what the unpatched reset() also did
#endif
    m_stream = stream;
  }
};

struct EventPool {
  std::recursive_mutex m_mutex;
  std::vector<std::unique_ptr<Event>> m_pool;

  std::unique_ptr<Event, std::function<void(Event*)>> acquireEvent(Stream* stream) {
    if (!stream) stream = getCurrentMPSStream();
    auto deleter = [this](Event* e) {
      std::lock_guard<std::recursive_mutex> lock(m_mutex);
      m_pool.push_back(std::unique_ptr<Event>(e));
    };
    {
      std::lock_guard<std::recursive_mutex> lock(m_mutex);
      auto pooled = at::mps::detail::takeSettled(m_pool, [](const std::unique_ptr<Event>& e) { return e->settled(); });
      if (pooled) {
        Event* e = pooled.release();
        e->reset(stream);
        return {e, deleter};
      }
    }
    Event* e = new Event();
    e->m_stream = stream;
    return {e, deleter};
  }
};
EventPool* g_events = nullptr;

// ---- the allocator: one lock, completion handlers that take it -----------------------------------
struct Allocator {
  std::recursive_mutex m_mutex;
  struct Block {
    std::unique_ptr<Event, std::function<void(Event*)>> event;
    bool in_use = false;
  };
  std::vector<std::unique_ptr<Block>> blocks;
  long freed_by_handler = 0;

  Block* alloc() {
    std::lock_guard<std::recursive_mutex> lock(m_mutex);
    blocks.push_back(std::make_unique<Block>());
    blocks.back()->in_use = true;
    return blocks.back().get();
  }
  // recordEvents: events found under the lock, recorded (through the queue) after it.
  void recordEvents(Block* b) {
    std::vector<Event*> events;
    std::unique_lock<std::recursive_mutex> lock(m_mutex);
    if (!b->event) b->event = g_events->acquireEvent(nullptr);
    events.push_back(b->event.get());
    lock.unlock();
    Stream* stream = getCurrentMPSStream();
    for (Event* e : events) e->recordOn(stream, /*syncEvent*/ true);
  }
  // the scalar pool's free(): a completion handler on the current stream takes the lock
  void freeScalar(Block* b) {
    getCurrentMPSStream()->addCompletedHandler([this, b] {
      std::lock_guard<std::recursive_mutex> lock(m_mutex);
      b->event.reset();  // the event goes back to the pool, maybe with its signal in flight
      b->in_use = false;
      ++freed_by_handler;
    });
  }
};
Allocator* g_alloc = nullptr;

std::recursive_mutex& unsafeKernelMutex() {
  static auto* m = new std::recursive_mutex();
  return *m;
}

// ---- the workload ---------------------------------------------------------------------------------
std::atomic<long> g_cross{0}, g_queries{0}, g_nested{0}, g_allocs{0}, g_kernels{0}, g_inner_waits{0};

// An op on `s`: encode work that sets *flag, inside a block on the stream's queue.
void encodeWork(Stream* s, std::atomic<bool>* flag, bool commit) {
  dispatch_sync_with_rethrow(&s->queue, [&] {
    s->commandBuffer()->encode(Op{Op::Work, nullptr, 0, flag});
    if (commit) s->synchronize(SyncType::COMMIT);
  });
}

void worker(int index, int iterations) {
  std::mt19937 rng(1234u + static_cast<unsigned>(index));
  // Bind a pool stream, as an engine worker does; keep a partner stream for cross-stream work.
  const int64_t mine = g_pool->acquire();
  g_pool->setCurrent(mine);
  Stream* s = g_pool->current();
  Stream* t = g_pool->stream(1 + (mine % at::mps::detail::kPoolStreams));
  std::vector<std::unique_ptr<std::atomic<bool>>> flags;
  for (int i = 0; i < iterations; ++i) {
    flags.push_back(std::make_unique<std::atomic<bool>>(false));
    std::atomic<bool>* flag = flags.back().get();
    switch (rng() % 7) {
      case 0: {  // record on s after work, block t on the event, then check on t
        encodeWork(s, flag, false);
        auto e = g_events->acquireEvent(s);
        e->recordOn(s, /*syncEvent*/ true);
        e->waitOn(t, /*syncEvent*/ false);
        dispatch_sync_with_rethrow(&t->queue, [&] {
          t->commandBuffer()->encode(Op{Op::Check, nullptr, 0, flag});
          t->synchronize(SyncType::COMMIT);
        });
        g_cross.fetch_add(1);
        break;  // e goes back to the pool here, its signal possibly still in flight
      }
      case 1: {  // MPSGuardImpl::queryStream: a marker event, released at once
        encodeWork(s, flag, false);
        auto marker = g_events->acquireEvent(s);
        marker->recordOn(s, /*syncEvent*/ true);
        (void)marker->query();
        g_queries.fetch_add(1);
        break;
      }
      case 2: {  // nested: inside a block of s, a block of t synchronises s (must run inline)
        dispatch_sync_with_rethrow(&s->queue, [&] {
          s->commandBuffer()->encode(Op{Op::Work, nullptr, 0, flag});
          dispatch_sync_with_rethrow(&t->queue, [&] {
            if (getCurrentMPSStream() != t) violation("current stream inside a nested block");
            s->synchronize(SyncType::COMMIT);
          });
        });
        g_nested.fetch_add(1);
        break;
      }
      case 3: {  // allocator: shared buffer, events recorded, freed by a completion handler
        Allocator::Block* b = g_alloc->alloc();
        encodeWork(s, flag, false);
        g_alloc->recordEvents(b);
        g_alloc->freeScalar(b);
        g_allocs.fetch_add(1);
        break;
      }
      case 4: {  // a serialised kernel: the kernel lock before the dispatch, never inside
        std::lock_guard<std::recursive_mutex> serialize(unsafeKernelMutex());
        encodeWork(s, flag, true);
        g_kernels.fetch_add(1);
        break;
      }
      case 5: {  // a wait issued from inside a block of the waiting stream (a hook, an extension)
        encodeWork(s, flag, false);
        auto e = g_events->acquireEvent(s);
        e->recordOn(s, /*syncEvent*/ true);
        dispatch_sync_with_rethrow(&t->queue, [&] {
          e->waitOn(t, /*syncEvent*/ false);
          t->commandBuffer()->encode(Op{Op::Check, nullptr, 0, flag});
          t->synchronize(SyncType::COMMIT);
        });
        g_inner_waits.fetch_add(1);
        break;
      }
      default:
        s->synchronize(rng() % 4 == 0 ? SyncType::COMMIT_AND_WAIT : SyncType::COMMIT);
        break;
    }
  }
  s->synchronize(SyncType::COMMIT_AND_WAIT);
  t->synchronize(SyncType::COMMIT_AND_WAIT);
  g_pool->setCurrent(0);
}

void runConfiguration(bool commit_and_continue, int threads, int iterations) {
  g_enable_commit_and_continue = commit_and_continue;
  g_pool = new Pool([](int64_t id) { return std::make_unique<Stream>(id); },
                    [](Stream* st) { st->synchronize(SyncType::COMMIT); });
  g_events = new EventPool();
  g_alloc = new Allocator();
  const long created_before = g_buffers_created.load();
  std::vector<std::thread> ts;
  for (int i = 0; i < threads; ++i) ts.emplace_back(worker, i, iterations);
  for (auto& th : ts) th.join();
  g_pool->forEachCreated([](Stream* st) { st->synchronize(SyncType::COMMIT_AND_WAIT); });
  // drain: a second pass, as handlers may have been queued by the first
  g_pool->forEachCreated([](Stream* st) { st->synchronize(SyncType::COMMIT_AND_WAIT); });
  // A GPU engine drops its reference to a buffer just after signalling its completion, so a
  // waiter can return before that release: count only once the engines have stopped (as Metal
  // drops a committed buffer's reference some time after its completion, not before it).
  delete g_pool;  // joins the GPU threads
  g_pool = nullptr;
  const long alive = g_buffers_alive.load();
  std::printf("queue-model: config commit_and_continue=%s threads=%d iterations=%d command_buffers=%ld alive_after=%ld\n",
              commit_and_continue ? "on" : "off", threads, iterations, g_buffers_created.load() - created_before, alive);
  if (alive != 0) violation("command buffers leaked", alive);
  {
    std::lock_guard<std::recursive_mutex> lock(g_alloc->m_mutex);
    if (g_alloc->freed_by_handler != static_cast<long>(g_alloc->blocks.size())) {
      violation("scalar buffers whose completion handler never ran", long(g_alloc->blocks.size()),
                g_alloc->freed_by_handler);
    }
  }
  delete g_alloc;
  delete g_events;
}

} // namespace

int main() {
  runConfiguration(/*commit_and_continue*/ true, 6, 120);
  runConfiguration(/*commit_and_continue*/ false, 6, 120);
  std::printf("queue-model: summary cross_stream_waits=%ld waits_inside_blocks=%ld stream_queries=%ld nested_hops=%ld allocations=%ld serialised_kernels=%ld violations=%d\n",
              g_cross.load(), g_inner_waits.load(), g_queries.load(), g_nested.load(), g_allocs.load(), g_kernels.load(),
              g_violations.load());
  const bool ok = g_violations.load() == 0;
  std::printf("%s queue_model\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}
