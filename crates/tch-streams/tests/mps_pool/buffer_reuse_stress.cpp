// Stress test of the MPS allocator's stream rule for reusing freed buffers
// (ATen/mps/MPSBufferStreamUse.h), meant to run under ThreadSanitizer. Like
// pool_core_stress.cpp, the header is extracted from
// patches/v2.11.0/tch-streams-mps-v2.11.0.patch by the test build, so what runs here is
// exactly what the patch adds (with MPSStreamPoolCore.h, which it includes).
//
// Build (what tests/mps_pool_tsan.rs and scripts/check-patch.sh do):
//   g++ -std=c++17 -O1 -g -fsanitize=thread -pthread -I<extracted>
//       tests/mps_pool/buffer_reuse_stress.cpp -o buffer_reuse_stress
//
// A stand-in allocator (a mutex, a free list, MPSAllocator's "take the first
// freed buffer that fits" habit) hands out buffers to threads that queue work on
// simulated streams. Each stream is a FIFO drained by its own "GPU" thread, so
// work on one stream runs in order and different streams overlap, as on Metal.
// A buffer counts as idle when no queued or running work refers to it (what the
// retain count tells MPSAllocator).
//
// Checks, each printed as one "buffer-reuse: ..." line, then PASS/FAIL:
//   1. rule: the reuse rule on fixed cases (owner, other streams, idle, bad ids).
//   2. stress: 16 threads on 8 streams, cross-stream uses recorded both ways
//      (recordStream, and free() from another stream's thread). No buffer is
//      ever handed to a stream while another stream's work on it is pending,
//      seen both when it is handed out and when the GPU runs that work; and the
//      rule still lets a stream reuse its own busy buffers at once.
//   3. control: the same workload with a rule that ignores streams must break
//      that invariant, which shows the check can fail.
// Exit status: 0 when every check passes, 1 otherwise (TSan reports exit with
// its own code).
#include <ATen/mps/MPSBufferStreamUse.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

namespace {

using at::mps::detail::BufferStreamUse;
using at::mps::detail::kStreamSlots;

std::atomic<int> g_failures{0};

void fail(const char* what, long a = 0, long b = 0) {
  g_failures.fetch_add(1);
  std::printf("buffer-reuse: CHECK FAILED: %s (%ld, %ld)\n", what, a, b);
}

void expect(bool ok, const char* what) {
  if (!ok) {
    fail(what);
  }
}

void checkRule() {
  int cases = 0;
  auto check = [&](bool ok, const char* what) {
    ++cases;
    expect(ok, what);
  };
  BufferStreamUse u;
  u.onAllocate(3);
  check(u.owner() == 3 && u.otherStreams() == 0, "fresh allocation has no other streams");
  check(u.mayReuseOn(3, /*idle=*/false), "owner reuses its busy buffer");
  check(!u.mayReuseOn(4, false), "another stream waits while the buffer is busy");
  check(u.mayReuseOn(4, true), "another stream takes an idle buffer");
  u.recordUse(3);
  check(u.otherStreams() == 0, "recording the owner changes nothing");
  u.recordUse(5);
  check(u.otherStreams() == (uint64_t{1} << 5), "recorded stream is remembered");
  check(!u.mayReuseOn(3, false), "owner waits once another stream used the buffer");
  check(!u.mayReuseOn(5, false), "the recorded stream waits too");
  check(u.mayReuseOn(3, true) && u.mayReuseOn(5, true), "anyone takes it once idle");
  u.onAllocate(5);
  check(u.owner() == 5 && u.otherStreams() == 0 && u.mayReuseOn(5, false), "reallocation resets");
  u.recordUse(kStreamSlots);
  check(u.otherStreams() == ~uint64_t{0} && !u.mayReuseOn(5, false), "out-of-range id blocks reuse until idle");
  u.onAllocate(0);
  u.recordUse(-1);
  check(!u.mayReuseOn(0, false) && u.mayReuseOn(0, true), "negative id blocks reuse until idle");
  u.onAllocate(kStreamSlots - 1);
  u.recordUse(0);
  check(u.otherStreams() == 1 && !u.mayReuseOn(kStreamSlots - 1, false), "ids 0 and 32 work");
  std::printf("buffer-reuse: rule cases=%d failed=%d\n", cases, g_failures.load());
}

constexpr int kStreams = 8; // simulated streams 1..kStreams

struct Block {
  BufferStreamUse use; // guarded by Allocator::mutex
  bool in_use = false; // guarded by Allocator::mutex
  std::array<std::atomic<int>, kStreamSlots> pending{}; // queued or running work, per stream
  std::atomic<int> total_pending{0};
  std::atomic<uint64_t> generation{0}; // bumped on every allocation
  std::atomic<int64_t> owner{-1}; // copy of use.owner() for the GPU threads
};

struct Counters {
  std::atomic<long> allocations{0}, fresh{0}, busy_same_stream_reuse{0}, idle_reuse{0};
  std::atomic<long> recorded{0}, foreign_frees{0}, handout_violations{0}, gpu_violations{0};
};

class Allocator {
 public:
  Allocator(bool stream_aware, Counters& c) : stream_aware_(stream_aware), c_(c) {}

  Block* allocate(int64_t stream) {
    std::lock_guard<std::mutex> lock(mutex_);
    c_.allocations.fetch_add(1, std::memory_order_relaxed);
    for (size_t i = 0; i < available_.size(); ++i) {
      Block* b = available_[i];
      const bool idle = b->total_pending.load(std::memory_order_acquire) == 0;
      if (stream_aware_ && !b->use.mayReuseOn(stream, idle)) {
        continue;
      }
      available_.erase(available_.begin() + static_cast<std::ptrdiff_t>(i));
      // Pending work only ever drains now that nobody holds the buffer, so a
      // count seen here is a real overlap with the new owner.
      for (int64_t s = 0; s < kStreamSlots; ++s) {
        if (s != stream && b->pending[s].load(std::memory_order_acquire) > 0) {
          c_.handout_violations.fetch_add(1, std::memory_order_relaxed);
          break;
        }
      }
      if (idle) {
        c_.idle_reuse.fetch_add(1, std::memory_order_relaxed);
      } else {
        c_.busy_same_stream_reuse.fetch_add(1, std::memory_order_relaxed);
      }
      return take(b, stream);
    }
    blocks_.push_back(std::make_unique<Block>());
    c_.fresh.fetch_add(1, std::memory_order_relaxed);
    return take(blocks_.back().get(), stream);
  }

  void free(Block* b, int64_t freeing_stream) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!b->in_use) {
      fail("double free");
    }
    b->in_use = false;
    if (freeing_stream != b->use.owner()) {
      c_.foreign_frees.fetch_add(1, std::memory_order_relaxed);
    }
    b->use.recordUse(freeing_stream);
    available_.push_back(b);
  }

  void recordStream(Block* b, int64_t stream) {
    std::lock_guard<std::mutex> lock(mutex_);
    b->use.recordUse(stream);
    c_.recorded.fetch_add(1, std::memory_order_relaxed);
  }

 private:
  Block* take(Block* b, int64_t stream) {
    b->in_use = true;
    b->use.onAllocate(stream);
    b->owner.store(stream, std::memory_order_release);
    b->generation.fetch_add(1, std::memory_order_acq_rel);
    return b;
  }

  const bool stream_aware_;
  Counters& c_;
  std::mutex mutex_;
  std::vector<std::unique_ptr<Block>> blocks_;
  std::vector<Block*> available_;
};

// One simulated stream: a FIFO of work drained by its own thread.
class Gpu {
 public:
  Gpu(int64_t id, Counters& c) : id_(id), c_(c), worker_([this] { run(); }) {}
  ~Gpu() {
    {
      std::lock_guard<std::mutex> lock(m_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }

  void enqueue(Block* b) {
    b->total_pending.fetch_add(1, std::memory_order_acq_rel);
    b->pending[id_].fetch_add(1, std::memory_order_acq_rel);
    {
      std::lock_guard<std::mutex> lock(m_);
      queue_.push_back(Work{b, b->generation.load(std::memory_order_acquire)});
    }
    cv_.notify_one();
  }

 private:
  struct Work {
    Block* block;
    uint64_t generation;
  };

  void run() {
    for (;;) {
      Work w{};
      {
        std::unique_lock<std::mutex> lock(m_);
        cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) {
          return;
        }
        w = queue_.front();
        queue_.pop_front();
      }
      // Running work whose buffer went to another stream meanwhile is the hazard.
      if (w.block->generation.load(std::memory_order_acquire) != w.generation &&
          w.block->owner.load(std::memory_order_acquire) != id_) {
        c_.gpu_violations.fetch_add(1, std::memory_order_relaxed);
      }
      std::this_thread::sleep_for(std::chrono::microseconds(20));
      // Per-stream count first: once the total reads 0, every per-stream count is 0.
      w.block->pending[id_].fetch_sub(1, std::memory_order_acq_rel);
      w.block->total_pending.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  const int64_t id_;
  Counters& c_;
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<Work> queue_;
  bool stop_ = false;
  std::thread worker_;
};

void runWorkload(bool stream_aware, int threads, int iterations, Counters& c) {
  Allocator alloc(stream_aware, c);
  std::vector<std::unique_ptr<Gpu>> gpus;
  for (int s = 0; s <= kStreams; ++s) {
    gpus.push_back(std::make_unique<Gpu>(s, c)); // index 0 unused by the workers
  }
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      const int64_t mine = 1 + t % kStreams;
      std::mt19937 rng(static_cast<unsigned>(1234 + t));
      for (int i = 0; i < iterations; ++i) {
        Block* b = alloc.allocate(mine);
        const int uses = 1 + static_cast<int>(rng() % 3);
        for (int k = 0; k < uses; ++k) {
          gpus[mine]->enqueue(b);
        }
        const int64_t other = 1 + static_cast<int64_t>((mine + rng() % (kStreams - 1)) % kStreams);
        switch (rng() % 8) {
          case 0:
          case 1:
            // another stream reads the buffer; its user records that (recordStream)
            gpus[other]->enqueue(b);
            alloc.recordStream(b, other);
            alloc.free(b, mine);
            break;
          case 2:
            // the buffer moves to another stream's thread, which uses and frees it
            gpus[other]->enqueue(b);
            alloc.free(b, other);
            break;
          default:
            alloc.free(b, mine);
        }
        if (i % 5 == 0) {
          std::this_thread::yield();
        }
      }
    });
  }
  for (auto& w : workers) {
    w.join();
  }
  gpus.clear(); // drains every queue
}

} // namespace

int main() {
  checkRule();

  constexpr int kThreads = 16;
  constexpr int kIterations = 300;
  Counters aware;
  runWorkload(/*stream_aware=*/true, kThreads, kIterations, aware);
  std::printf(
      "buffer-reuse: stress threads=%d streams=%d iterations=%d handout_violations=%ld gpu_violations=%ld\n",
      kThreads,
      kStreams,
      kIterations,
      aware.handout_violations.load(),
      aware.gpu_violations.load());
  std::printf("buffer-reuse: stress allocations=%ld fresh=%ld busy_same_stream_reuse=%ld idle_reuse=%ld "
              "recorded=%ld foreign_frees=%ld\n",
              aware.allocations.load(),
              aware.fresh.load(),
              aware.busy_same_stream_reuse.load(),
              aware.idle_reuse.load(),
              aware.recorded.load(),
              aware.foreign_frees.load());
  expect(aware.allocations.load() == kThreads * kIterations, "every allocation counted");
  expect(aware.handout_violations.load() == 0, "no buffer handed to a stream while another's work is pending");
  expect(aware.gpu_violations.load() == 0, "no stream's work ran on a buffer another stream owned");
  expect(aware.busy_same_stream_reuse.load() > 0, "a stream reuses its own busy buffers at once");
  expect(aware.idle_reuse.load() > 0, "idle buffers are reused");
  expect(aware.recorded.load() > 0 && aware.foreign_frees.load() > 0, "both cross-stream paths ran");

  Counters naive;
  runWorkload(/*stream_aware=*/false, kThreads, kIterations, naive);
  const long naive_violations = naive.handout_violations.load() + naive.gpu_violations.load();
  std::printf("buffer-reuse: control (streams ignored) violations=%s\n", naive_violations > 0 ? "detected" : "none");
  expect(naive_violations > 0, "the control workload shows the hazard the rule prevents");

  const int failed = g_failures.load();
  std::printf("%s buffer_reuse_stress (%d failed checks)\n", failed == 0 ? "PASS" : "FAIL", failed);
  return failed == 0 ? 0 : 1;
}
