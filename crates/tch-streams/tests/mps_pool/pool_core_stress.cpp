// Stress test of the MPS stream-pool bookkeeping (ATen/mps/MPSStreamPoolCore.h), meant to run
// under ThreadSanitizer. The header is not kept in this repository: the test build extracts it
// from patches/v2.11.0/tch-streams-mps-v2.11.0.patch, so what runs here is exactly what the patch adds.
//
// Build (what tests/mps_pool_tsan.rs does):
//   g++ -std=c++17 -O1 -g -fsanitize=thread -pthread -I<extracted>/aten/src
//       tests/mps_pool/pool_core_stress.cpp -o pool_core_stress
//
// Checks, each printed as one "pool-core: ..." line, then "PASS"/"FAIL pool_core_stress":
//   1. ids: pool ids are 1..32 (0 the default); 32 hand-outs in a row give 32 distinct ids;
//      ids -1 and 33 are refused.
//   2. creator: a thread that hands out 8 streams for others leases none of them; 8 workers that
//      bind them get 8 distinct leases, given back (and flushed once each) when they exit.
//   3. exclusive: 32 threads x 500 iterations hand out/bind/use/unbind; no slot is ever leased by
//      two threads at once, a lease ends with the binding, no work is lost.
//   4. oversubscribed: 40 threads bound at once hold 32 leases and share the rest.
//   5. rebind: binding another stream moves the thread's one lease; hand-outs skip bound slots.
//   6. sync-all: synchronising every created stream reaches all 33 of them.
// Exit status: 0 when every check passes, 1 otherwise (TSan reports exit with its own code).
#include <ATen/mps/MPSStreamPoolCore.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace {

using at::mps::detail::kPoolStreams;
using at::mps::detail::kStreamSlots;

// Stands in for MPSStream: a mutex-serialised work counter plus instrumentation.
struct FakeStream {
  explicit FakeStream(int64_t id_) : id(id_) {}
  const int64_t id;
  std::mutex mutex;
  uint64_t submitted = 0;  // work items queued (guarded by mutex)
  uint64_t completed = 0;  // work items finished by a sync (guarded by mutex)
  std::atomic<int> holders{0};     // threads inside a lease on this stream right now
  std::atomic<int> syncs{0};       // synchronize() calls
  std::atomic<int> releaseHooks{0};

  void submit() {
    std::lock_guard<std::mutex> lock(mutex);
    ++submitted;
  }
  void synchronize() {
    std::lock_guard<std::mutex> lock(mutex);
    completed = submitted;
    syncs.fetch_add(1, std::memory_order_relaxed);
  }
};

using Pool = at::mps::detail::StreamPoolCore<FakeStream>;

std::atomic<int> g_failures{0};

void fail(const char* what, long a = 0, long b = 0) {
  g_failures.fetch_add(1);
  std::printf("pool-core: CHECK FAILED: %s (%ld, %ld)\n", what, a, b);
}

// Holds `count` threads until all have arrived, so they really hold their slots at once.
class Latch {
 public:
  explicit Latch(int count) : left_(count) {}
  void arriveAndWait() {
    std::unique_lock<std::mutex> lock(m_);
    if (--left_ == 0) {
      cv_.notify_all();
      return;
    }
    cv_.wait(lock, [this] { return left_ == 0; });
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  int left_;
};

// The MPS backend never destroys its pool; neither do we (threads' exit hooks use it).
Pool& pool() {
  static Pool* p = new Pool(
      [](int64_t id) { return std::make_unique<FakeStream>(id); },
      [](FakeStream* s) {
        s->releaseHooks.fetch_add(1, std::memory_order_relaxed);
        s->synchronize();
      });
  return *p;
}

int totalReleaseHooks() {
  int n = 0;
  pool().forEachCreated([&](FakeStream* s) { n += s->releaseHooks.load(); });
  return n;
}

void checkIds() {
  std::vector<int> seen(kStreamSlots, 0);
  std::thread t([&] {
    for (int i = 0; i < kPoolStreams; ++i) {
      const int64_t id = pool().acquire();
      if (id < 1 || id > kPoolStreams) {
        fail("pool id out of range", long(id));
      } else {
        ++seen[id];
      }
    }
  });
  t.join();
  int distinct = 0;
  for (int64_t id = 1; id <= kPoolStreams; ++id) {
    distinct += seen[id] == 1 ? 1 : 0;
  }
  bool refused = true;
  for (int64_t bad : {int64_t{-1}, kStreamSlots}) {
    try {
      pool().stream(bad);
      refused = false;
    } catch (const std::out_of_range&) {
    }
  }
  const bool last_ok = pool().stream(kPoolStreams) != nullptr;
  std::printf("pool-core: ids pool=1..%lld distinct=%d refused=%s last=%s\n", static_cast<long long>(kPoolStreams),
              distinct, refused ? "yes" : "no", last_ok ? "yes" : "no");
  if (distinct != kPoolStreams) fail("32 hand-outs in a row were not distinct", distinct);
  if (!refused) fail("an out-of-range id was accepted");
  if (pool().leasedCount() != 0) fail("hand-outs leased slots", long(pool().leasedCount()));
}

void checkCreator() {
  const int workers = 8;
  std::vector<int64_t> ids;
  std::thread creator([&] {
    for (int i = 0; i < workers; ++i) {
      ids.push_back(pool().acquire());
    }
  });
  creator.join();
  const long leased_by_creator = long(pool().leasedCount());
  const int hooks_before = totalReleaseHooks();
  Latch bound(workers);
  std::atomic<int> held{0};
  std::vector<std::thread> ts;
  for (int i = 0; i < workers; ++i) {
    ts.emplace_back([&, i] {
      pool().setCurrent(ids[i]);
      pool().current()->submit();  // creates the stream: an exiting holder flushes it
      if (pool().holdsLease(ids[i]) && pool().currentId() == ids[i]) {
        held.fetch_add(1);
      }
      bound.arriveAndWait();  // all bound at once; each exits still bound
    });
  }
  for (auto& t : ts) t.join();
  const int hooks = totalReleaseHooks() - hooks_before;
  std::printf("pool-core: creator handed_out=%d leased_by_creator=%ld held=%d exit_hooks=%d leased_after=%lld\n",
              workers, leased_by_creator, held.load(), hooks, static_cast<long long>(pool().leasedCount()));
  if (leased_by_creator != 0) fail("the creating thread kept leases", leased_by_creator);
  if (held.load() != workers) fail("workers did not get their streams' leases", held.load());
  if (hooks != workers) fail("exit hooks", hooks);
  if (pool().leasedCount() != 0) fail("leases kept by exited threads", long(pool().leasedCount()));
}

void checkExclusive(int threads, int iterations) {
  std::atomic<long> bindings{0}, shared{0}, violations{0};
  std::atomic<bool> stop{false};
  // A bystander keeps synchronising every stream while the workers run.
  std::thread syncer([&] {
    while (!stop.load()) {
      pool().forEachCreated([](FakeStream* s) { s->synchronize(); });
      std::this_thread::yield();
    }
  });
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&] {
      for (int i = 0; i < iterations; ++i) {
        const int64_t id = pool().acquire();
        pool().setCurrent(id);
        if (pool().currentId() != id) fail("current stream after binding", id, pool().currentId());
        FakeStream* s = pool().current();
        const bool mine = pool().holdsLease(id);
        if (mine) {
          if (s->holders.fetch_add(1) != 0) violations.fetch_add(1);
        } else {
          shared.fetch_add(1);
        }
        s->submit();
        if (mine) s->holders.fetch_sub(1);
        pool().setCurrent(0);
        if (pool().holdsLease(id)) fail("lease kept after unbinding", id);
        bindings.fetch_add(1);
      }
    });
  }
  for (auto& w : workers) w.join();
  stop.store(true);
  syncer.join();
  uint64_t submitted = 0;
  pool().forEachCreated([&](FakeStream* s) {
    std::lock_guard<std::mutex> lock(s->mutex);
    submitted += s->submitted;
  });
  std::printf("pool-core: exclusive threads=%d iterations=%d bindings=%ld violations=%ld leased_after=%lld\n",
              threads, iterations, bindings.load(), violations.load(), static_cast<long long>(pool().leasedCount()));
  std::printf("pool-core: exclusive shared=%ld (racing hand-outs may pick one free slot twice; the loser shares)\n",
              shared.load());
  if (violations.load() != 0) fail("a slot leased by two threads at once", violations.load());
  if (submitted < static_cast<uint64_t>(threads) * iterations) fail("work lost", long(submitted));
  if (pool().leasedCount() != 0) fail("leases not given back", long(pool().leasedCount()));
}

void checkOversubscribed(int threads) {
  std::atomic<int> leased{0}, shared{0};
  Latch all(threads);
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&] {
      // bind until this thread holds a lease or every slot is taken
      int64_t id = pool().acquire();
      pool().setCurrent(id);
      for (int k = 0; k < 1000 && !pool().holdsLease(id) && pool().leasedCount() < kPoolStreams; ++k) {
        id = pool().acquire();
        pool().setCurrent(id);
      }
      (pool().holdsLease(id) ? leased : shared).fetch_add(1);
      all.arriveAndWait();
      pool().setCurrent(0);
    });
  }
  for (auto& t : ts) t.join();
  std::printf("pool-core: oversubscribed threads=%d leased=%d shared=%d leased_after=%lld\n", threads, leased.load(),
              shared.load(), static_cast<long long>(pool().leasedCount()));
  if (leased.load() != kPoolStreams) fail("leases when oversubscribed", leased.load());
  if (shared.load() != threads - kPoolStreams) fail("shared slots", shared.load());
  if (pool().leasedCount() != 0) fail("leases not given back", long(pool().leasedCount()));
}

void checkRebind() {
  std::thread t([] {
    pool().setCurrent(5);
    pool().setCurrent(6);
    if (pool().isLeased(5) || !pool().holdsLease(6)) fail("rebinding did not move the lease");
    for (int i = 0; i < kPoolStreams - 1; ++i) {
      if (pool().acquire() == 6) fail("hand-out gave a bound slot while unbound ones were left");
    }
    pool().setCurrent(0);
    if (pool().isLeased(6)) fail("unbinding kept the lease");
  });
  t.join();
  std::printf("pool-core: rebind leased_after=%lld\n", static_cast<long long>(pool().leasedCount()));
}

void checkSyncAll() {
  for (int64_t id = 0; id < kStreamSlots; ++id) {
    pool().stream(id)->submit();
  }
  int reached = 0;
  pool().forEachCreated([&](FakeStream* s) {
    s->synchronize();
    ++reached;
  });
  bool drained = true;
  pool().forEachCreated([&](FakeStream* s) {
    std::lock_guard<std::mutex> lock(s->mutex);
    drained = drained && s->completed == s->submitted;
  });
  std::printf("pool-core: sync-all streams=%lld reached=%d drained=%s\n", static_cast<long long>(pool().createdCount()),
              reached, drained ? "yes" : "no");
  if (pool().createdCount() != kStreamSlots) fail("streams created", long(pool().createdCount()));
  if (reached != kStreamSlots) fail("sync-all missed streams", reached);
  if (!drained) fail("sync-all left work pending");
}

} // namespace

int main() {
  checkIds();
  checkCreator();
  checkExclusive(32, 500);
  checkOversubscribed(40);
  checkRebind();
  checkSyncAll();
  const int failures = g_failures.load();
  std::printf("%s pool_core_stress (%d failed checks)\n", failures == 0 ? "PASS" : "FAIL", failures);
  return failures == 0 ? 0 : 1;
}
