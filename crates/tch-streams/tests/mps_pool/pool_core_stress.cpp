// Stress test of the MPS stream-pool bookkeeping (ATen/mps/MPSStreamPoolCore.h), meant to run
// under ThreadSanitizer. The header is not kept in this repository: the test build extracts it
// from patches/tch-streams-mps-v2.11.0.patch, so what runs here is exactly what the patch adds.
//
// Build (what tests/mps_pool_tsan.rs does):
//   g++ -std=c++17 -O1 -g -fsanitize=thread -pthread -I<extracted>/aten/src
//       tests/mps_pool/pool_core_stress.cpp -o pool_core_stress
//
// Checks, each printed as one "pool-core: ..." line, then "PASS"/"FAIL pool_core_stress":
//   1. exclusive: 31 threads x 500 iterations acquire/use/release; no slot is ever held by two
//      threads at once, every acquisition gets a lease (31 threads, 31 pool slots), no work lost.
//   2. thread-exit: threads that exit holding leases give every slot back, each flushed once.
//   3. oversubscribed: 40 threads holding at once get 31 leases and 9 shared slots.
//   4. set-current: setCurrent() on a free slot leases it; acquire() then skips that slot.
//   5. sync-all: synchronising every created stream reaches all 32 of them.
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

using at::mps::detail::kMPSStreamsPerPool;

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

void checkExclusive(int threads, int iterations) {
  std::atomic<long> acquisitions{0}, shared{0}, violations{0};
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
        if (!pool().holdsLease(id)) {
          shared.fetch_add(1);
        }
        FakeStream* s = pool().stream(id);
        if (s->holders.fetch_add(1) != 0) {
          violations.fetch_add(1);
        }
        pool().setCurrent(id);
        if (pool().current() != s || pool().currentId() != id) {
          fail("current stream after setCurrent", id, pool().currentId());
        }
        s->submit();
        if (i % 7 == 0) {
          std::this_thread::yield();
        }
        s->holders.fetch_sub(1);
        if (!pool().release(id)) {
          fail("release of a leased slot", id);
        }
        if (pool().currentId() != 0) {
          fail("current stream after release", pool().currentId());
        }
        acquisitions.fetch_add(1);
      }
    });
  }
  for (auto& w : workers) {
    w.join();
  }
  stop.store(true);
  syncer.join();
  uint64_t submitted = 0;
  pool().forEachCreated([&](FakeStream* s) {
    std::lock_guard<std::mutex> lock(s->mutex);
    submitted += s->submitted;
  });
  std::printf("pool-core: exclusive threads=%d iterations=%d acquisitions=%ld shared=%ld "
              "violations=%ld submitted=%llu leased_after=%lld\n",
              threads, iterations, acquisitions.load(), shared.load(), violations.load(),
              static_cast<unsigned long long>(submitted), static_cast<long long>(pool().leasedCount()));
  if (violations.load() != 0) fail("two threads held one slot", violations.load());
  if (shared.load() != 0) fail("acquisition without a lease while slots were free", shared.load());
  if (acquisitions.load() != long(threads) * iterations) fail("lost acquisitions", acquisitions.load());
  if (submitted != uint64_t(threads) * iterations) fail("lost work", long(submitted));
  if (pool().leasedCount() != 0) fail("slots not returned", long(pool().leasedCount()));
}

void checkThreadExit(int threads) {
  const int hooksBefore = totalReleaseHooks();
  std::vector<std::thread> workers;
  Latch latch(threads);
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&] {
      const int64_t id = pool().acquire();
      pool().setCurrent(id);
      pool().current()->submit();
      latch.arriveAndWait();  // all hold a slot now; then exit without releasing
    });
  }
  for (auto& w : workers) {
    w.join();
  }
  const int hooks = totalReleaseHooks() - hooksBefore;
  std::printf("pool-core: thread-exit threads=%d release_hooks=%d leased_after=%lld\n", threads,
              hooks, static_cast<long long>(pool().leasedCount()));
  if (hooks != threads) fail("release hooks at thread exit", hooks, threads);
  if (pool().leasedCount() != 0) fail("slots kept by exited threads", long(pool().leasedCount()));
}

void checkOversubscribed(int threads) {
  std::atomic<int> leased{0}, shared{0}, violations{0};
  std::vector<std::thread> workers;
  Latch holding(threads), done(threads);
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&] {
      const int64_t id = pool().acquire();
      const bool mine = pool().holdsLease(id);
      if (mine) {
        leased.fetch_add(1);
        if (pool().stream(id)->holders.fetch_add(1) != 0) violations.fetch_add(1);
      } else {
        shared.fetch_add(1);
      }
      holding.arriveAndWait();
      if (mine) pool().stream(id)->holders.fetch_sub(1);
      done.arriveAndWait();
    });
  }
  for (auto& w : workers) {
    w.join();
  }
  std::printf("pool-core: oversubscribed threads=%d leased=%d shared=%d violations=%d leased_after=%lld\n",
              threads, leased.load(), shared.load(), violations.load(),
              static_cast<long long>(pool().leasedCount()));
  if (leased.load() != kMPSStreamsPerPool - 1) fail("leases when oversubscribed", leased.load());
  if (shared.load() != threads - (kMPSStreamsPerPool - 1)) fail("shared slots", shared.load());
  if (violations.load() != 0) fail("two threads held one slot", violations.load());
  if (pool().leasedCount() != 0) fail("slots not returned", long(pool().leasedCount()));
}

void checkSetCurrentClaims() {
  std::thread([&] {
    pool().setCurrent(5);
    if (!pool().holdsLease(5)) fail("setCurrent on a free slot did not lease it");
    std::thread([&] {
      for (int i = 0; i < kMPSStreamsPerPool - 2; ++i) {
        const int64_t id = pool().acquire();
        if (id == 5) fail("acquire handed out a slot leased through setCurrent");
      }
    }).join();
    if (!pool().release(5)) fail("release of a slot leased through setCurrent");
    if (pool().currentId() != 0) fail("current after release", long(pool().currentId()));
  }).join();
  std::printf("pool-core: set-current leased_after=%lld\n", static_cast<long long>(pool().leasedCount()));
  if (pool().leasedCount() != 0) fail("slots not returned", long(pool().leasedCount()));
}

void checkSyncAll() {
  pool().defaultStream()->submit();
  for (int64_t id = 0; id < kMPSStreamsPerPool; ++id) {
    pool().stream(id);
  }
  std::vector<int> before(kMPSStreamsPerPool, 0);
  pool().forEachCreated([&](FakeStream* s) { before[s->id] = s->syncs.load(); });
  int reached = 0;
  std::vector<std::thread> callers;
  for (int t = 0; t < 4; ++t) {
    callers.emplace_back([] { pool().forEachCreated([](FakeStream* s) { s->synchronize(); }); });
  }
  for (auto& c : callers) {
    c.join();
  }
  bool drained = true;
  pool().forEachCreated([&](FakeStream* s) {
    reached += (s->syncs.load() - before[s->id] == 4) ? 1 : 0;
    std::lock_guard<std::mutex> lock(s->mutex);
    drained = drained && s->completed == s->submitted;
  });
  std::printf("pool-core: sync-all streams=%lld reached=%d drained=%s\n",
              static_cast<long long>(pool().createdCount()), reached, drained ? "yes" : "no");
  if (pool().createdCount() != kMPSStreamsPerPool) fail("streams created", long(pool().createdCount()));
  if (reached != kMPSStreamsPerPool) fail("sync-all missed streams", reached);
  if (!drained) fail("sync-all left work pending");
}

} // namespace

int main() {
  checkExclusive(31, 500);
  checkThreadExit(31);
  checkOversubscribed(40);
  checkSetCurrentClaims();
  checkSyncAll();
  const int failures = g_failures.load();
  std::printf("%s pool_core_stress (%d failed checks)\n", failures == 0 ? "PASS" : "FAIL", failures);
  return failures == 0 ? 0 : 1;
}
