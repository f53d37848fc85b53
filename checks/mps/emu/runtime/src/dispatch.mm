// mps-emu: Grand Central Dispatch on host threads.
//
// Model (what the MPS backend relies on, after Apple's dispatch documentation):
//  - A serial queue runs one block at a time, in submission order, whether the block came from
//    dispatch_sync or dispatch_async. dispatch_sync runs its block on the calling thread once every
//    block submitted before it has returned, and returns when the block has; dispatch_async copies
//    the block and runs it later on a worker thread (one worker per queue while it has async work;
//    the worker exits when the queue runs dry). Ordering (for ThreadSanitizer): submitting happens
//    before the block runs, and each block of a serial queue happens before the next one. Nothing
//    else: in particular dispatch_async's caller is not ordered after blocks already on the queue.
//  - Concurrent queues (the global queues, DISPATCH_QUEUE_CONCURRENT) do not exclude: each async
//    block gets its own thread; dispatch_sync runs the block inline. No barriers.
//  - Queue-specific data: dispatch_get_specific(key) looks only at the queue whose block the thread
//    is running right now (the innermost one when dispatch_sync calls nest), never at outer queues,
//    and returns NULL on a thread that runs no block. dispatch_queue_get_specific reads one queue.
//  - Deadlocks GCD would hang in are detected and abort with a violation instead:
//      * dispatch_sync onto a serial queue whose block the calling thread is already running, at
//        any nesting depth (GCD deadlocks immediately);
//      * a wait-for cycle: thread T1 runs a block of Q1 and waits in dispatch_sync for Q2, whose
//        block is being run by T2, which waits for Q1 (cycles of any length). The wait-for graph is
//        checked whenever a thread starts waiting, and again every 100 ms while it waits.
//  - Semaphores: counting, with the usual timeouts; a signal happens before the wait it releases.
//  - Dispatch objects are reference counted (dispatch_retain/dispatch_release); releasing below
//    zero is a violation; global queues are never freed. A queue with pending blocks stays alive
//    until they have run. Queue-specific destructors run on the thread that frees the queue.
//  - dispatch_once: the block runs once; callers racing with it wait for it and are ordered after.
#include "internal.h"

#include <Block.h>
#include <deque>
#include <string.h>
#include <thread>

namespace mpsemu {
namespace {

constexpr uint32_t kDispatchMagic = 0x64697370;  // "disp"
enum class Kind : uint32_t { Queue = 1, Semaphore = 2 };

struct DHeader {
  uint32_t magic = kDispatchMagic;
  Kind kind;
  std::atomic<long> refs{1};
  bool immortal = false;
  explicit DHeader(Kind k) : kind(k) {}
};

struct Item {
  dispatch_block_t block;  // heap copy for async items; the caller's block for sync tickets
  bool sync;
};

struct Specific {
  const void* key;
  void* context;
  dispatch_function_t destructor;
};

std::atomic<long> g_live_queues{0};
std::atomic<long> g_live_semaphores{0};

}  // namespace
}  // namespace mpsemu

using namespace mpsemu;

struct dispatch_queue_attr_s {
  int concurrent;
};
struct dispatch_queue_attr_s _dispatch_queue_attr_concurrent = {1};

struct dispatch_queue_s {
  DHeader hdr{Kind::Queue};
  std::string label;
  bool concurrent = false;
  // Guarded by m (Quiet).
  std::mutex m;
  std::condition_variable cv;
  std::deque<Item*> pending;
  bool running = false;  // a block of this serial queue is executing
  bool drainer = false;  // a worker thread is draining async blocks
  std::vector<Specific> specifics;
  // Guarded by g_graph (Quiet): the thread running a block of this queue.
  ThreadRec* graph_holder = nullptr;
  // Happens-before tokens.
  char serial_token = 0;
  char specific_token = 0;
};

struct dispatch_semaphore_s {
  DHeader hdr{Kind::Semaphore};
  std::mutex m;
  std::condition_variable cv;
  long value = 0;
  long original = 0;
  long waiters = 0;
  char token = 0;
};

namespace mpsemu {
namespace {

std::mutex g_graph;  // the wait-for graph: ThreadRec::waiting_for, dispatch_queue_s::graph_holder
// The queues whose blocks this thread is running, outermost first. A fixed array (trivially
// destructible): blocks also run from other thread_local destructors at thread exit.
struct Frames {
  static constexpr size_t kMax = 128;
  dispatch_queue_s* q[kMax];
  size_t n;
  bool empty() const { return n == 0; }
  size_t size() const { return n; }
  dispatch_queue_s* back() const { return q[n - 1]; }
  dispatch_queue_s* operator[](size_t i) const { return q[i]; }
  void push_back(dispatch_queue_s* queue) {
    if (n == kMax) fatal_violation("dispatch_sync/async blocks nested more than %zu deep", kMax);
    q[n++] = queue;
  }
  void pop_back() { --n; }
};
thread_local Frames t_frames;

DHeader* header_of(void* object, const char* what) {
  auto* h = static_cast<DHeader*>(object);
  if (!h || h->magic != kDispatchMagic) fatal_violation("%s: %p is not a live dispatch object", what, object);
  return h;
}

dispatch_queue_s* check_queue(dispatch_queue_t q, const char* what) {
  DHeader* h = header_of(q, what);
  if (h->kind != Kind::Queue) fatal_violation("%s: %p is not a dispatch queue", what, (void*)q);
  return q;
}

void destroy(DHeader* h) {
  if (h->kind == Kind::Queue) {
    auto* q = reinterpret_cast<dispatch_queue_s*>(h);
    std::vector<Specific> specifics;
    {
      Quiet quiet;
      std::lock_guard<std::mutex> lock(q->m);
      specifics.swap(q->specifics);
    }
    for (const Specific& s : specifics) {
      if (s.destructor && s.context) s.destructor(s.context);
    }
    h->magic = 0;
    {
      Quiet quiet;
      delete q;
    }
    g_live_queues.fetch_sub(1, std::memory_order_relaxed);
  } else {
    auto* s = reinterpret_cast<dispatch_semaphore_s*>(h);
    if (s->value < s->original) {
      violation("dispatch semaphore released while in use (value %ld below its initial %ld)", s->value, s->original);
    }
    h->magic = 0;
    {
      Quiet quiet;
      delete s;
    }
    g_live_semaphores.fetch_sub(1, std::memory_order_relaxed);
  }
}

void retain_obj(void* object) {
  DHeader* h = header_of(object, "dispatch_retain");
  if (h->immortal) return;
  if (h->refs.fetch_add(1, std::memory_order_relaxed) <= 0) violation("dispatch_retain of a released object %p", object);
}

void release_obj(void* object) {
  DHeader* h = header_of(object, "dispatch_release");
  if (h->immortal) return;
  long old = h->refs.fetch_sub(1, std::memory_order_acq_rel);
  if (old == 1) {
    destroy(h);
  } else if (old <= 0) {
    h->refs.fetch_add(1, std::memory_order_relaxed);
    violation("over-release of dispatch object %p", object);
  }
}

// Checks whether `me`, which waits for a queue, closes a wait-for cycle; aborts if so.
void check_cycle(ThreadRec* me) {
  std::string path;
  bool cycle = false;
  {
    Quiet quiet;
    std::lock_guard<std::mutex> lock(g_graph);
    dispatch_queue_s* q = me->waiting_for;
    for (int steps = 0; q && steps < 256; ++steps) {
      ThreadRec* holder = q->graph_holder;
      if (!holder) break;
      path += "; queue '" + q->label + "' is held by " + holder->name;
      if (holder == me) {
        cycle = true;
        break;
      }
      q = holder->waiting_for;
      if (q) path += std::string(", which waits in dispatch_sync for queue '") + q->label + "'";
    }
  }
  if (cycle) {
    fatal_violation("dispatch_sync wait-for cycle (deadlock): %s waits in dispatch_sync for queue '%s'%s",
                    me->name, me->waiting_for->label.c_str(), path.c_str());
  }
}

void set_holder(dispatch_queue_s* q, ThreadRec* holder) {
  Quiet quiet;
  std::lock_guard<std::mutex> lock(g_graph);
  q->graph_holder = holder;
}

void drain(dispatch_queue_s* q);

// Under q->m: lets the next submitted block run (wakes its dispatch_sync caller, or starts a
// worker for async blocks).
void kick(dispatch_queue_s* q) {
  if (q->running || q->pending.empty()) return;
  if (q->pending.front()->sync) {
    q->cv.notify_all();
  } else if (!q->drainer) {
    q->drainer = true;
    retain_obj(q);
    std::thread(drain, q).detach();
  }
}

// A worker: runs the queue's async blocks until a sync caller is next or nothing is left.
void drain(dispatch_queue_s* q) {
  set_thread_role("dispatch worker '%.14s'", q->label.c_str());
  ThreadRec* me = self_thread();
  for (;;) {
    Item* item;
    {
      Quiet quiet;
      std::lock_guard<std::mutex> lock(q->m);
      if (q->running || q->pending.empty() || q->pending.front()->sync) {
        q->drainer = false;
        kick(q);
        break;
      }
      item = q->pending.front();
      q->pending.pop_front();
      q->running = true;
    }
    set_holder(q, me);
    hb_acquire(item);
    hb_acquire(&q->serial_token);
    t_frames.push_back(q);
    run_block_in_pool(item->block);
    t_frames.pop_back();
    Block_release(item->block);
    {
      Quiet quiet;
      delete item;
    }
    hb_release(&q->serial_token);
    set_holder(q, nullptr);
    {
      Quiet quiet;
      std::lock_guard<std::mutex> lock(q->m);
      q->running = false;
    }
    release_obj(q);  // the reference the item held
  }
  release_obj(q);  // the worker's reference
}

void run_concurrent(dispatch_queue_s* q, dispatch_block_t copy) {
  retain_obj(q);
  std::thread([q, copy] {
    set_thread_role("dispatch worker '%.14s'", q->label.c_str());
    t_frames.push_back(q);
    run_block_in_pool(copy);
    t_frames.pop_back();
    Block_release(copy);
    release_obj(q);
  }).detach();
}

dispatch_queue_s* make_queue(const char* label, bool concurrent, bool immortal) {
  dispatch_queue_s* q;
  {
    Quiet quiet;
    q = new dispatch_queue_s;
    q->label = label ? label : "";
    q->concurrent = concurrent;
    q->hdr.immortal = immortal;
  }
  if (!immortal) g_live_queues.fetch_add(1, std::memory_order_relaxed);
  return q;
}

dispatch_queue_s* g_global_queues[4] = {make_queue("com.apple.root.background-qos", true, true),
                                        make_queue("com.apple.root.utility-qos", true, true),
                                        make_queue("com.apple.root.default-qos", true, true),
                                        make_queue("com.apple.root.user-initiated-qos", true, true)};

uint64_t deadline_of(dispatch_time_t t) {
  return t;  // dispatch_time_t is already absolute CLOCK_MONOTONIC nanoseconds here
}

}  // namespace

size_t live_dispatch_objects(const char* name) {
  long n = 0;
  if (!name || strcmp(name, "dispatch_queue") == 0) n += g_live_queues.load(std::memory_order_relaxed);
  if (!name || strcmp(name, "dispatch_semaphore") == 0) n += g_live_semaphores.load(std::memory_order_relaxed);
  return n > 0 ? (size_t)n : 0;
}

}  // namespace mpsemu

extern "C" {

dispatch_queue_t dispatch_queue_create(const char* label, dispatch_queue_attr_t attr) {
  return make_queue(label, attr && attr->concurrent, false);
}

const char* dispatch_queue_get_label(dispatch_queue_t queue) {
  if (!queue) return t_frames.empty() ? "" : t_frames.back()->label.c_str();
  return check_queue(queue, "dispatch_queue_get_label")->label.c_str();
}

dispatch_queue_t dispatch_get_global_queue(long identifier, unsigned long flags) {
  (void)flags;
  if (identifier <= -32768 || identifier == 0x09) return g_global_queues[0];
  if (identifier < 0 || identifier == 0x11) return g_global_queues[1];
  if (identifier > 0 || identifier == 0x19 || identifier == 0x21) return g_global_queues[3];
  return g_global_queues[2];
}

void dispatch_sync(dispatch_queue_t queue, dispatch_block_t block) {
  dispatch_queue_s* q = check_queue(queue, "dispatch_sync");
  if (!block) fatal_violation("dispatch_sync onto queue '%s' with a NULL block", q->label.c_str());
  if (q->concurrent) {
    t_frames.push_back(q);
    struct Pop {
      ~Pop() { t_frames.pop_back(); }
    } pop;
    block();
    return;
  }
  ThreadRec* me = self_thread();
  for (size_t i = 0; i < t_frames.size(); ++i) {
    if (t_frames[i] == q) {
      fatal_violation(
          "dispatch_sync onto queue '%s' from a block that this thread is already running on that queue "
          "(nesting depth %zu of %zu): GCD deadlocks here",
          q->label.c_str(), i + 1, t_frames.size());
    }
  }
  retain_obj(q);
  Item ticket{block, true};
  {
    Quiet quiet;
    std::unique_lock<std::mutex> lock(q->m);
    q->pending.push_back(&ticket);
    if (q->running || q->pending.front() != &ticket) {
      {
        std::lock_guard<std::mutex> g(g_graph);
        me->waiting_for = q;
      }
      check_cycle(me);
      while (q->running || q->pending.front() != &ticket) {
        if (q->cv.wait_for(lock, std::chrono::milliseconds(100)) == std::cv_status::timeout) check_cycle(me);
      }
      std::lock_guard<std::mutex> g(g_graph);
      me->waiting_for = nullptr;
    }
    q->pending.pop_front();
    q->running = true;
  }
  set_holder(q, me);
  hb_acquire(&q->serial_token);
  t_frames.push_back(q);
  // Leaves the queue even when the block throws (a C++ exception through dispatch_sync terminates
  // on Apple; here it propagates, and the queue stays usable).
  struct Leave {
    dispatch_queue_s* q;
    ~Leave() {
      t_frames.pop_back();
      hb_release(&q->serial_token);
      set_holder(q, nullptr);
      {
        Quiet quiet;
        std::lock_guard<std::mutex> lock(q->m);
        q->running = false;
        kick(q);
      }
      release_obj(q);
    }
  } leave{q};
  block();
}

void dispatch_sync_f(dispatch_queue_t queue, void* context, dispatch_function_t work) {
  dispatch_sync(queue, ^{
    work(context);
  });
}

void dispatch_async(dispatch_queue_t queue, dispatch_block_t block) {
  dispatch_queue_s* q = check_queue(queue, "dispatch_async");
  if (!block) fatal_violation("dispatch_async onto queue '%s' with a NULL block", q->label.c_str());
  dispatch_block_t copy = Block_copy(block);
  if (q->concurrent) {
    run_concurrent(q, copy);
    return;
  }
  Item* item;
  {
    Quiet quiet;
    item = new Item{copy, false};
  }
  retain_obj(q);  // released after the item has run
  hb_release(item);
  Quiet quiet;
  std::lock_guard<std::mutex> lock(q->m);
  q->pending.push_back(item);
  kick(q);
}

void dispatch_async_f(dispatch_queue_t queue, void* context, dispatch_function_t work) {
  dispatch_async(queue, ^{
    work(context);
  });
}

void dispatch_queue_set_specific(dispatch_queue_t queue, const void* key, void* context, dispatch_function_t destructor) {
  dispatch_queue_s* q = check_queue(queue, "dispatch_queue_set_specific");
  if (!key) return;
  Specific old{nullptr, nullptr, nullptr};
  hb_release(&q->specific_token);
  {
    Quiet quiet;
    std::lock_guard<std::mutex> lock(q->m);
    bool found = false;
    for (size_t i = 0; i < q->specifics.size(); ++i) {
      if (q->specifics[i].key == key) {
        old = q->specifics[i];
        found = true;
        if (context) q->specifics[i] = Specific{key, context, destructor};
        else q->specifics.erase(q->specifics.begin() + (long)i);
        break;
      }
    }
    if (!found && context) q->specifics.push_back(Specific{key, context, destructor});
  }
  if (old.destructor && old.context) old.destructor(old.context);
}

void* dispatch_queue_get_specific(dispatch_queue_t queue, const void* key) {
  dispatch_queue_s* q = check_queue(queue, "dispatch_queue_get_specific");
  void* value = nullptr;
  {
    Quiet quiet;
    std::lock_guard<std::mutex> lock(q->m);
    for (const Specific& s : q->specifics) {
      if (s.key == key) value = s.context;
    }
  }
  hb_acquire(&q->specific_token);
  return value;
}

void* dispatch_get_specific(const void* key) {
  if (t_frames.empty()) return nullptr;
  return dispatch_queue_get_specific(t_frames.back(), key);
}

void dispatch_retain(void* object) {
  retain_obj(object);
}

void dispatch_release(void* object) {
  release_obj(object);
}

dispatch_semaphore_t dispatch_semaphore_create(long value) {
  if (value < 0) return nullptr;
  dispatch_semaphore_s* s;
  {
    Quiet quiet;
    s = new dispatch_semaphore_s;
    s->value = value;
    s->original = value;
  }
  g_live_semaphores.fetch_add(1, std::memory_order_relaxed);
  return s;
}

long dispatch_semaphore_wait(dispatch_semaphore_t dsema, dispatch_time_t timeout) {
  DHeader* h = header_of(dsema, "dispatch_semaphore_wait");
  if (h->kind != Kind::Semaphore) fatal_violation("dispatch_semaphore_wait: not a semaphore");
  bool ok;
  {
    Quiet quiet;
    std::unique_lock<std::mutex> lock(dsema->m);
    if (dsema->value > 0) {
      --dsema->value;
      ok = true;
    } else if (timeout == DISPATCH_TIME_NOW) {
      ok = false;
    } else {
      ++dsema->waiters;
      const uint64_t deadline = timeout == DISPATCH_TIME_FOREVER ? ~0ull : deadline_of(timeout);
      for (;;) {
        if (dsema->value > 0) {
          --dsema->value;
          ok = true;
          break;
        }
        uint64_t now = now_ns();
        if (now >= deadline) {
          ok = false;
          break;
        }
        uint64_t wait_ns = std::min<uint64_t>(deadline - now, 3600ull * 1000000000ull);
        dsema->cv.wait_for(lock, std::chrono::nanoseconds(wait_ns));
      }
      --dsema->waiters;
    }
  }
  if (ok) hb_acquire(&dsema->token);
  return ok ? 0 : 49;  // KERN_OPERATION_TIMED_OUT
}

long dispatch_semaphore_signal(dispatch_semaphore_t dsema) {
  DHeader* h = header_of(dsema, "dispatch_semaphore_signal");
  if (h->kind != Kind::Semaphore) fatal_violation("dispatch_semaphore_signal: not a semaphore");
  hb_release(&dsema->token);
  Quiet quiet;
  std::lock_guard<std::mutex> lock(dsema->m);
  ++dsema->value;
  if (dsema->waiters > 0) {
    dsema->cv.notify_one();
    return 1;
  }
  return 0;
}

dispatch_time_t dispatch_time(dispatch_time_t when, int64_t delta) {
  if (when == DISPATCH_TIME_FOREVER) return DISPATCH_TIME_FOREVER;
  uint64_t base = when == DISPATCH_TIME_NOW ? now_ns() : when;
  if (delta < 0) return (uint64_t)-delta > base ? 1 : base - (uint64_t)-delta;
  uint64_t t = base + (uint64_t)delta;
  return t < base || t == DISPATCH_TIME_FOREVER ? DISPATCH_TIME_FOREVER - 1 : t;
}

void dispatch_once(dispatch_once_t* predicate, dispatch_block_t block) {
  if (__atomic_load_n(predicate, __ATOMIC_ACQUIRE) == ~0L) return;
  long expected = 0;
  if (__atomic_compare_exchange_n(predicate, &expected, 1L, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
    block();
    __atomic_store_n(predicate, ~0L, __ATOMIC_RELEASE);
    return;
  }
  while (__atomic_load_n(predicate, __ATOMIC_ACQUIRE) != ~0L) sleep_us(20);
}

void dispatch_once_f(dispatch_once_t* predicate, void* context, dispatch_function_t function) {
  dispatch_once(predicate, ^{
    function(context);
  });
}

}  // extern "C"
