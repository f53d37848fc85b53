// mps-emu tests: what the stress test and the targeted tests share. They drive the patched ATen/mps
// sources the way the rest of PyTorch and tch-streams do (through c10's device guard interface, the
// MPS allocator, MPSStream's queue and encoder) and see the emulated device through
// <mpsemu/mpsemu.h>.
//
// Every test prints "FAIL <test>: <why>" lines for what it found and ends with one
// "RESULT <test> pass|fail key=value ..." line; the exit status is 0 only when it passed.
#pragma once

#include <ATen/mps/MPSAllocatorInterface.h>
#include <ATen/mps/MPSEvent.h>
#include <ATen/mps/MPSStream.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/Event.h>
#include <c10/core/Stream.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <mpsemu/mpsemu.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

namespace mpsemu_test {

using Clock = std::chrono::steady_clock;

inline const c10::impl::DeviceGuardImplInterface* guard() {
  return c10::impl::getDeviceGuardImpl(c10::DeviceType::MPS);
}

inline c10::Device mpsDevice() {
  return c10::Device(c10::DeviceType::MPS, 0);
}

// Failures found so far; printed as they happen.
inline std::atomic<int>& failures() {
  static std::atomic<int> n{0};
  return n;
}

inline void fail(const char* test, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
inline void fail(const char* test, const char* fmt, ...) {
  static std::mutex print;
  char text[1024];
  va_list args;
  va_start(args, fmt);
  vsnprintf(text, sizeof text, fmt, args);
  va_end(args);
  std::lock_guard<std::mutex> lock(print);
  std::printf("FAIL %s: %s\n", test, text);
  std::fflush(stdout);
  failures()++;
}

// Ends the process from any thread without running destructors: used when threads of the test are
// stuck (a hang is the finding) and nothing can be joined.
[[noreturn]] inline void endNow(int status) {
  std::fflush(stdout);
  std::fflush(stderr);
  _exit(status);
}

// Aborts the process with a message when the test has not finished after `seconds`: a hang (a
// wait that is never satisfied, a synchronize that never returns) must fail the check, not stall
// it. MPSEMU_WATCHDOG_S overrides the limit.
class Watchdog {
 public:
  Watchdog(const char* test, unsigned seconds) : test_(test) {
    if (const char* s = std::getenv("MPSEMU_WATCHDOG_S")) {
      seconds = static_cast<unsigned>(std::strtoul(s, nullptr, 10));
    }
    thread_ = std::thread([this, seconds] {
      std::unique_lock<std::mutex> lock(mutex_);
      if (!cv_.wait_for(lock, std::chrono::seconds(seconds), [this] { return done_; })) {
        std::printf("FAIL %s: watchdog: not finished after %u s (a hang); emulator violations so far: %llu%s%s\n",
                    test_, seconds, static_cast<unsigned long long>(mpsemu_violations()),
                    mpsemu_violations() ? ", last: " : "", mpsemu_last_violation());
        std::printf("RESULT %s fail watchdog=%u\n", test_, seconds);
        std::fflush(stdout);
        std::abort();
      }
    });
  }
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  const char* test_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

// A gate that GPU work can wait at: a kernel whose body waits here holds its queue's GPU timeline
// (and everything committed behind it) until the test opens the gate. Bounded: a body gives up
// after `limit` so that a test that forgets to open it still ends (and fails on what it checks).
class Gate {
 public:
  void open() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      open_ = true;
    }
    cv_.notify_all();
  }
  bool wait(std::chrono::milliseconds limit = std::chrono::milliseconds(60000)) {
    std::unique_lock<std::mutex> lock(mutex_);
    arrived_ = true;
    arrived_cv_.notify_all();
    return cv_.wait_for(lock, limit, [this] { return open_; });
  }
  // Blocks until some thread waits at the gate (or `limit` passed); true when one did.
  bool waitArrived(std::chrono::milliseconds limit = std::chrono::milliseconds(10000)) {
    std::unique_lock<std::mutex> lock(mutex_);
    return arrived_cv_.wait_for(lock, limit, [this] { return arrived_; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_, arrived_cv_;
  bool open_ = false;
  bool arrived_ = false;
};

// Runs `fn` on a helper thread and waits up to `limit` for it. True when it returned in time.
// When it did not, the helper is left running (detached): the caller reports the hang and ends
// the process with endNow().
inline bool finishesWithin(std::chrono::milliseconds limit, std::function<void()> fn) {
  struct State {
    std::mutex m;
    std::condition_variable cv;
    bool done = false;
  };
  auto state = std::make_shared<State>();
  std::thread([state, fn = std::move(fn)] {
    fn();
    std::lock_guard<std::mutex> lock(state->m);
    state->done = true;
    state->cv.notify_all();
  }).detach();
  std::unique_lock<std::mutex> lock(state->m);
  return state->cv.wait_for(lock, limit, [&] { return state->done; });
}

inline at::mps::MPSStream* mpsStream(const c10::Stream& s) {
  return at::mps::getStreamByID(s.id());
}

// The MPS allocator (v2.11.0 has a shared-storage one beside the private one; from v2.13.0 on there
// is one, and here it is our stand-in: see standins/allocator.mm).
inline at::mps::IMPSAllocator* mpsAllocator(bool shared = false) {
#if MPSEMU_TORCH_MINOR >= 13
  (void)shared;
  return at::mps::getIMPSAllocator();
#else
  return at::mps::getIMPSAllocator(shared);
#endif
}

// The MTLBuffer behind an MPS allocation.
inline id<MTLBuffer> bufferOf(const c10::DataPtr& p) {
  return (__bridge id<MTLBuffer>)p.get();
}

} // namespace mpsemu_test

#ifdef __OBJC__
namespace mpsemu_test {

// Encodes `body` as a kernel on `stream` the way MPS ops encode theirs: inside a block on the
// stream's serial queue (dispatch_sync_with_rethrow), into the stream's shared compute encoder,
// with the buffers it touches bound to the encoder (so the command buffer holds them until it
// completes, which is what the allocator's "idle" test reads).
// `then`, when given, runs in the same block after the kernel is encoded (where an op records its
// buffers' events, for instance).
inline void encodeKernel(at::mps::MPSStream* stream,
                         std::vector<id<MTLBuffer>> buffers,
                         void (^body)(void),
                         void (^then)(void) = nullptr) {
  at::mps::dispatch_sync_with_rethrow(stream->queue(), ^() {
    @autoreleasepool {
      id<MTLComputeCommandEncoder> encoder = stream->commandEncoder();
      NSUInteger index = 0;
      for (id<MTLBuffer> b : buffers) {
        [encoder setBuffer:b offset:0 atIndex:index++];
      }
      mpsemu_encode_kernel(encoder, body);
      if (then) {
        then();
      }
    }
  });
}

// A kernel that holds `stream`'s GPU timeline until `gate` opens.
inline void encodeGate(at::mps::MPSStream* stream, Gate* gate) {
  encodeKernel(stream, {}, ^() {
    gate->wait();
  });
}

} // namespace mpsemu_test
#endif
