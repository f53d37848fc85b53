// mps-emu stress test: THREADS threads (default 31) x ITERATIONS iterations (default 100), each
// thread on a pool stream of its own, half of them bound through c10's device guard interface
// (getStreamFromGlobalPool + exchangeStream), half through the patch's at::mps::getStreamFromPool +
// setCurrentMPSStream. Per iteration a thread:
//   1. allocates a buffer through the MPS allocator (v2.11.0: private pool on even iterations,
//      shared on odd ones; sizes vary so that buffers move between threads through the cache;
//      v2.13.0: our stand-in allocator, which never reuses a buffer);
//   2. encodes a kernel on its own stream that writes a pattern only this (thread, iteration) uses;
//   3. records a c10::Event on its stream; the consumer stream (the next thread's stream, or the
//      default stream every 8th iteration) blocks on the event, then a kernel there reads the
//      buffer and checks every word (the "values" count);
//   4. v2.11.0, shared buffers: records the allocator's per-buffer event inside the producer's and
//      again inside the consumer's block (recordEvents, as copies do: one event re-recorded on two
//      streams), and every other time waits for it on the CPU (waitForEvents) and checks every
//      word from the CPU;
//   5. tells the allocator that the consumer stream uses the buffer (recordDataPtrOnStream), frees
//      it, and every 10th iteration synchronizes (its stream, the event, or the whole device).
// Then: the device is synchronized, the emulator quiesced, and the test checks that every value
// was checked and right, that no command buffer is left alive, that the emulator saw no misuse;
// ThreadSanitizer or AddressSanitizer (the build) report races and memory errors. A watchdog aborts
// a run that hangs.
#include "harness.h"

#include <cinttypes>
#include <set>

using namespace mpsemu_test;

namespace {

constexpr const char* kTest = "stress";

struct Stats {
  std::atomic<uint64_t> checked{0};  // words the consumer kernels compared
  std::atomic<uint64_t> expected{0};  // words the consumers were asked to compare
  std::atomic<uint64_t> wrong{0};
  std::mutex first_mutex;
  std::string first;
};

uint32_t pattern(uint32_t thread, uint32_t iteration, uint32_t k) {
  return (thread << 24) ^ (iteration << 12) ^ (k * 2654435761u);
}

unsigned envOr(const char* name, unsigned fallback) {
  const char* v = std::getenv(name);
  return v ? static_cast<unsigned>(std::strtoul(v, nullptr, 10)) : fallback;
}

} // namespace

int main() {
  const unsigned threads = envOr("MPSEMU_THREADS", 31);
  const unsigned iterations = envOr("MPSEMU_ITERATIONS", 100);
  Watchdog watchdog(kTest, 300);
  const size_t baseline = mpsemu_live_command_buffers();

  Stats stats;
  std::vector<int64_t> stream_ids(threads, -1);
  std::mutex ready_mutex;
  std::condition_variable ready_cv;
  unsigned ready = 0;

  auto worker = [&](unsigned t) {
    // bind a pool stream: two routes to the same pool
    c10::Stream own = guard()->getDefaultStream(mpsDevice());
    if (t % 2 == 0) {
      own = guard()->getStreamFromGlobalPool(mpsDevice());
      guard()->exchangeStream(own);
    } else {
      at::mps::MPSStream* s = at::mps::getStreamFromPool();
      at::mps::setCurrentMPSStream(s);
      own = s->unwrap();
    }
    if (own.id() < 1 || own.id() > 32 || guard()->getStream(mpsDevice()) != own) {
      fail(kTest, "thread %u: bound stream id %" PRId64 ", current stream id %" PRId64, t, (int64_t)own.id(),
           (int64_t)guard()->getStream(mpsDevice()).id());
    }
    {
      std::unique_lock<std::mutex> lock(ready_mutex);
      stream_ids[t] = own.id();
      ++ready;
      ready_cv.notify_all();
      ready_cv.wait(lock, [&] { return ready == threads; });
    }
    at::mps::MPSStream* ownStream = mpsStream(own);
    const c10::Stream partner = at::mps::getStreamByID(stream_ids[(t + 1) % threads])->unwrap();
    const c10::Stream dflt = guard()->getDefaultStream(mpsDevice());

    for (unsigned i = 0; i < iterations; ++i) {
      const uint32_t n = 256 + ((t * 31 + i * 7) % 8) * 192;
      at::mps::IMPSAllocator* alloc = mpsAllocator(/*shared*/ i % 2 == 1);
      c10::DataPtr data = alloc->allocate(n * sizeof(uint32_t));
      id<MTLBuffer> buffer = bufferOf(data);
      const uint32_t tt = t, ii = i;
      // the allocator's per-buffer events: upstream's allocator, shared buffers
      const bool bufferEvents = MPSEMU_TORCH_MINOR < 13 && i % 2 == 1;
      const void* ptr = data.get();
      void (^recordBufferEvent)(void) = nullptr;
      if (bufferEvents) {
        recordBufferEvent = ^() {
          alloc->recordEvents({ptr}); // on the stream whose block this is
        };
      }
      encodeKernel(
          ownStream,
          {buffer},
          ^() {
            auto* p = static_cast<uint32_t*>([buffer contents]);
            for (uint32_t k = 0; k < n; ++k) {
              p[k] = pattern(tt, ii, k);
            }
          },
          recordBufferEvent);

      c10::Event written(c10::DeviceType::MPS);
      written.record(own);
      const c10::Stream consumer = (i % 8 == 7) ? dflt : partner;
      written.block(consumer);
      stats.expected += n;
      Stats* st = &stats;
      encodeKernel(mpsStream(consumer), {buffer}, ^() {
        const auto* p = static_cast<const uint32_t*>([buffer contents]);
        uint32_t bad = 0, first_k = 0, first_v = 0;
        for (uint32_t k = 0; k < n; ++k) {
          if (p[k] != pattern(tt, ii, k)) {
            if (bad++ == 0) {
              first_k = k;
              first_v = p[k];
            }
          }
        }
        st->checked += n;
        if (bad) {
          st->wrong += bad;
          std::lock_guard<std::mutex> lock(st->first_mutex);
          if (st->first.empty()) {
            char text[256];
            snprintf(text, sizeof text, "thread %u iteration %u: %u of %u words wrong, word %u is %08x, expected %08x",
                     tt, ii, bad, n, first_k, first_v, pattern(tt, ii, first_k));
            st->first = text;
          }
        }
      }, recordBufferEvent);
      guard()->recordDataPtrOnStream(data, consumer);
      if (bufferEvents && i % 4 == 1) {
        // as a copy to the CPU does: wait for the buffer's last recorded use, then read it
        alloc->waitForEvents({ptr});
        const auto* p = static_cast<const uint32_t*>([buffer contents]);
        uint32_t bad = 0;
        for (uint32_t k = 0; k < n; ++k) {
          bad += p[k] != pattern(tt, ii, k);
        }
        stats.expected += n;
        stats.checked += n;
        if (bad) {
          stats.wrong += bad;
          fail(kTest, "thread %u iteration %u: after waitForEvents() the CPU read %u of %u words wrong", t, i, bad, n);
        }
      }
      data.clear(); // free: the allocator may hand the buffer out again once the rules allow

      if (i % 10 == 9) {
        switch ((t + i / 10) % 4) {
          case 0:
            guard()->synchronizeStream(own);
            break;
          case 1:
            written.synchronize();
            if (!written.query()) {
              fail(kTest, "thread %u iteration %u: event not complete after synchronize()", t, i);
            }
            break;
          case 2:
            ownStream->synchronize(at::mps::SyncType::COMMIT_AND_WAIT);
            break;
          default:
            if (t == 0) {
              guard()->synchronizeDevice(0);
            } else {
              ownStream->synchronize(at::mps::SyncType::COMMIT);
            }
        }
      }
    }
    guard()->synchronizeStream(own);
  };

  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t) {
    pool.emplace_back(worker, t);
  }
  for (auto& th : pool) {
    th.join();
  }
  guard()->synchronizeDevice(0);
  if (mpsemu_quiesce(60000) != 0) {
    fail(kTest, "the emulated GPU did not go idle within 60 s of synchronizeDevice()");
  }

  // each thread bound a pool stream no other thread held (the pool skips bound streams while a
  // free one is left; 31 threads, 32 pool streams)
  const size_t distinct = std::set<int64_t>(stream_ids.begin(), stream_ids.end()).size();
  if (threads <= 32 && distinct != threads) {
    fail(kTest, "%u threads bound only %zu distinct pool streams", threads, distinct);
  }
  const uint64_t checked = stats.checked.load(), expected = stats.expected.load(), wrong = stats.wrong.load();
  if (checked != expected) {
    fail(kTest, "%" PRIu64 " words were to be checked, the consumer kernels checked %" PRIu64 " (kernels that never ran)",
         expected, checked);
  }
  if (wrong) {
    fail(kTest, "%" PRIu64 " words read wrong by consumer kernels; first: %s", wrong, stats.first.c_str());
  }
  const size_t live = mpsemu_live_command_buffers();
  const long leaked = static_cast<long>(live) - static_cast<long>(baseline);
  if (leaked != 0) {
    fail(kTest, "%ld command buffers alive after synchronizeDevice() and quiesce (baseline %zu, now %zu, %zu never committed)",
         leaked, baseline, live, mpsemu_uncommitted_command_buffers());
  }
  const uint64_t violations = mpsemu_violations();
  if (violations) {
    fail(kTest, "%" PRIu64 " emulator violations, last: %s", violations, mpsemu_last_violation());
  }
  const bool pass = failures() == 0;
  std::printf("RESULT %s %s threads=%u streams=%zu iterations=%u values=%" PRIu64 " violations=%" PRIu64
              " leaked-command-buffers=%ld\n",
              kTest, pass ? "pass" : "fail", threads, distinct, iterations, checked, violations, leaked);
  std::fflush(stdout);
  return pass ? 0 : 1;
}
