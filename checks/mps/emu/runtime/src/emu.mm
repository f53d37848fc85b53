// mps-emu: the test interface's controls (mpsemu_configure, mpsemu_quiesce, violations) and the
// shared plumbing: thread records, clocks, random delays, pending-work accounting.
#include "internal.h"

#include <execinfo.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

extern "C" void __sanitizer_print_stack_trace(void) __attribute__((weak));

namespace mpsemu {
namespace {

uint64_t env_u64(const char* name, uint64_t fallback) {
  const char* s = getenv(name);
  if (!s || !*s) return fallback;
  return strtoull(s, nullptr, 0);
}

// Configuration, read by every emulator thread with relaxed loads (set before the threads that
// matter start; a change is picked up on the next delay). Initialized at load time, before main.
std::atomic<uint64_t> g_seed{env_u64("MPSEMU_SEED", 1)};
std::atomic<unsigned> g_max_delay_us{(unsigned)env_u64("MPSEMU_MAX_DELAY_US", 50)};
std::atomic<uint64_t> g_generation{0};
std::atomic<bool> g_abort_on_violation{env_u64("MPSEMU_ABORT_ON_VIOLATION", 0) != 0};

std::atomic<uint64_t> g_violations{0};
std::mutex g_violation_mutex;
char g_last_violation[2048];

std::atomic<long> g_pending{0};
char g_quiesce_token;

std::atomic<int> g_thread_counter{0};
std::mutex g_threads_mutex;
std::vector<ThreadRec*>* g_threads;  // every record ever made (kept reachable, never freed)

thread_local ThreadRec* t_self = nullptr;

uint64_t splitmix(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

void print_stack() {
  if (__sanitizer_print_stack_trace) {
    __sanitizer_print_stack_trace();
    return;
  }
  void* frames[64];
  int n = backtrace(frames, 64);
  backtrace_symbols_fd(frames, n, 2);
}

void record(const char* fmt, va_list ap) {
  char msg[sizeof g_last_violation];
  vsnprintf(msg, sizeof msg, fmt, ap);
  {
    Quiet q;
    std::lock_guard<std::mutex> lock(g_violation_mutex);
    memcpy(g_last_violation, msg, sizeof msg);
    g_violations.fetch_add(1, std::memory_order_relaxed);
  }
  fprintf(stderr, "mpsemu: VIOLATION: %s [%s]\n", msg, self_thread()->name);
  fflush(stderr);
}

}  // namespace

void violation(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  record(fmt, ap);
  va_end(ap);
  if (g_abort_on_violation.load(std::memory_order_relaxed)) {
    print_stack();
    abort();
  }
}

void fatal_violation(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  record(fmt, ap);
  va_end(ap);
  fprintf(stderr, "mpsemu: aborting (Apple would hang or crash here)\n");
  print_stack();
  fflush(stderr);
  abort();
}

ThreadRec* self_thread() {
  if (t_self) return t_self;
  // Other threads read the record (names in messages, the wait-for graph), always in Quiet scopes.
  Quiet q;
  ThreadRec* rec = new ThreadRec;
  rec->index = g_thread_counter.fetch_add(1, std::memory_order_relaxed) + 1;
  if (gettid() == getpid()) snprintf(rec->name, sizeof rec->name, "main thread (thread %d)", rec->index);
  else snprintf(rec->name, sizeof rec->name, "thread %d", rec->index);
  {
    std::lock_guard<std::mutex> lock(g_threads_mutex);
    if (!g_threads) g_threads = new std::vector<ThreadRec*>;
    g_threads->push_back(rec);
  }
  t_self = rec;
  return rec;
}

void set_thread_role(const char* fmt, ...) {
  ThreadRec* rec = self_thread();
  char role[32];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(role, sizeof role, fmt, ap);
  va_end(ap);
  Quiet q;  // read by messages on other threads only as text; a torn name is harmless
  snprintf(rec->name, sizeof rec->name, "%s (thread %d)", role, rec->index);
}

uint64_t now_ns() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void sleep_us(unsigned us) {
  if (us == 0) {
    sched_yield();
    return;
  }
  struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
  while (nanosleep(&ts, &ts) != 0) {
  }
}

void Jitter::delay() {
  uint64_t gen = g_generation.load(std::memory_order_relaxed);
  if (gen != generation_) {
    generation_ = gen;
    state_ = g_seed.load(std::memory_order_relaxed) ^ (stream_ * 0xD1B54A32D192ED03ull);
  }
  unsigned max = g_max_delay_us.load(std::memory_order_relaxed);
  if (max == 0) return;
  sleep_us((unsigned)(splitmix(state_) % ((uint64_t)max + 1)));
}

void work_begin() {
  g_pending.fetch_add(1, std::memory_order_relaxed);
}

void work_end() {
  hb_release(&g_quiesce_token);
  g_pending.fetch_sub(1, std::memory_order_relaxed);
}

}  // namespace mpsemu

using namespace mpsemu;

extern "C" {

void mpsemu_configure(uint64_t seed, unsigned max_delay_us) {
  g_seed.store(seed, std::memory_order_relaxed);
  g_max_delay_us.store(max_delay_us, std::memory_order_relaxed);
  g_generation.fetch_add(1, std::memory_order_relaxed);
}

int mpsemu_quiesce(unsigned timeout_ms) {
  const uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000ull;
  for (;;) {
    if (g_pending.load(std::memory_order_relaxed) == 0) {
      hb_acquire(&g_quiesce_token);
      return 0;
    }
    if (now_ns() >= deadline) return -1;
    sleep_us(200);
  }
}

uint64_t mpsemu_violations(void) {
  return g_violations.load(std::memory_order_relaxed);
}

const char* mpsemu_last_violation(void) {
  return g_last_violation;
}

void mpsemu_set_abort_on_violation(int on) {
  g_abort_on_violation.store(on != 0, std::memory_order_relaxed);
}

}  // extern "C"
