// mps-emu self-test: checks, with values, the semantics that the MPS backend relies on and that the
// emulator promises (see README.md). Run by selftest.sh under ThreadSanitizer and under
// AddressSanitizer. Misuse that aborts, and misuse that ThreadSanitizer must report, runs in child
// processes (this binary re-executed with --child MODE); their exit status and output are checked.
#include <Block.h>
#include <Foundation/Foundation.h>
#include <Metal/Metal.h>
#include <MetalPerformanceShaders/MetalPerformanceShaders.h>
#include <MetalPerformanceShadersGraph/MetalPerformanceShadersGraph.h>
#include <mpsemu/mpsemu.h>

#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SELFTEST_TSAN 1
#endif
#endif

extern char** environ;

static int g_checks = 0;
static int g_failed = 0;

// A named check with the values it compared: prints "ok" or "FAIL" and the values.
#define CHECK(cond, name, ...)                                               \
  do {                                                                       \
    ++g_checks;                                                              \
    char values_[512];                                                       \
    snprintf(values_, sizeof values_, __VA_ARGS__);                          \
    if (cond) {                                                              \
      printf("ok   %-58s %s\n", name, values_);                              \
    } else {                                                                 \
      ++g_failed;                                                            \
      printf("FAIL %-58s %s  (%s, line %d)\n", name, values_, #cond, __LINE__); \
    }                                                                        \
    fflush(stdout);                                                          \
  } while (0)

static id<MTLDevice> g_device;

static id<MTLBuffer> shared_buffer(size_t n) {
  return [g_device newBufferWithLength:n options:MTLResourceStorageModeShared];
}


// ---- children ----------------------------------------------------------------------------------

static int child_reenter() {
  dispatch_queue_t q = dispatch_queue_create("selftest.reenter", nullptr);
  dispatch_queue_t inner = dispatch_queue_create("selftest.inner", nullptr);
  dispatch_sync(q, ^{
    dispatch_sync(inner, ^{
      dispatch_sync(q, ^{
        printf("unreachable: re-entered dispatch_sync returned\n");
      });
    });
  });
  return 0;
}

static int child_cycle() {
  dispatch_queue_t q1 = dispatch_queue_create("selftest.cycle-A", nullptr);
  dispatch_queue_t q2 = dispatch_queue_create("selftest.cycle-B", nullptr);
  dispatch_semaphore_t s1 = dispatch_semaphore_create(0);
  dispatch_semaphore_t s2 = dispatch_semaphore_create(0);
  std::thread t1([&] {
    dispatch_sync(q1, ^{
      dispatch_semaphore_signal(s1);
      dispatch_semaphore_wait(s2, DISPATCH_TIME_FOREVER);
      dispatch_sync(q2, ^{
      });
    });
  });
  std::thread t2([&] {
    dispatch_sync(q2, ^{
      dispatch_semaphore_signal(s2);
      dispatch_semaphore_wait(s1, DISPATCH_TIME_FOREVER);
      dispatch_sync(q1, ^{
      });
    });
  });
  t1.join();
  t2.join();
  printf("unreachable: the cycle resolved\n");
  return 0;
}

static int child_two_threads() {
  @autoreleasepool {
    id<MTLDevice> device = MTLCreateSystemDefaultDevice();
    id<MTLCommandQueue> q = [device newCommandQueue];
    id<MTLSharedEvent> ev = [device newSharedEvent];
    id<MTLCommandBuffer> cb = [[q commandBuffer] retain];
    std::atomic<int> ready{0};
    auto encode = [&](uint64_t base) {
      ready.fetch_add(1);
      while (ready.load() < 2) {
      }
      for (uint64_t i = 0; i < 20000; ++i) [cb encodeSignalEvent:ev value:base + i];
    };
    std::thread a(encode, 0), b(encode, 100000);
    a.join();
    b.join();
    printf("violations=%llu\n", (unsigned long long)mpsemu_violations());
    [cb release];
    [ev release];
    [q release];
    [device release];
  }
  return 0;
}

// Two queues touch one buffer with no event between them: ThreadSanitizer must see the race
// (the emulator adds no ordering of its own between queues).
static int child_unsynced(bool with_event) {
  @autoreleasepool {
    id<MTLDevice> device = MTLCreateSystemDefaultDevice();
    id<MTLCommandQueue> qa = [device newCommandQueue];
    id<MTLCommandQueue> qb = [device newCommandQueue];
    id<MTLSharedEvent> ev = [device newSharedEvent];
    id<MTLBuffer> buf = [device newBufferWithLength:64 options:MTLResourceStorageModeShared];
    __block int seen = -1;
    id<MTLCommandBuffer> cbb = [qb commandBuffer];
    if (with_event) [cbb encodeWaitForEvent:ev value:1];
    id<MTLComputeCommandEncoder> eb = [cbb computeCommandEncoder];
    mpsemu_encode_kernel(eb, ^{
      seen = ((int*)[buf contents])[0];
    });
    [eb endEncoding];
    id<MTLCommandBuffer> cba = [qa commandBuffer];
    id<MTLComputeCommandEncoder> ea = [cba computeCommandEncoder];
    mpsemu_encode_kernel(ea, ^{
      ((int*)[buf contents])[0] = 7;
    });
    [ea endEncoding];
    if (with_event) [cba encodeSignalEvent:ev value:1];
    [cbb commit];
    [cba commit];
    [cba waitUntilCompleted];
    [cbb waitUntilCompleted];
    printf("seen=%d\n", seen);
    [buf release];
    [ev release];
    [qa release];
    [qb release];
    [device release];
  }
  return 0;
}

static int child_graph() {
  @autoreleasepool {
    id<MTLDevice> device = MTLCreateSystemDefaultDevice();
    id<MTLCommandQueue> q = [device newCommandQueue];
    MPSGraph* graph = [MPSGraph new];
    MPSGraphExecutionDescriptor* desc = [MPSGraphExecutionDescriptor new];
    [graph encodeToCommandBuffer:[MPSCommandBuffer commandBufferFromCommandQueue:q]
                           feeds:[NSDictionary dictionary]
                targetOperations:nil
               resultsDictionary:[NSDictionary dictionary]
             executionDescriptor:desc];
    printf("unreachable: a graph ran\n");
  }
  return 0;
}

// A Metal method the emulator does not implement.
@protocol SelftestNotEmulated
- (id)newRenderPipelineStateWithDescriptor:(id)descriptor error:(NSError**)error;
@end

static int child_unimplemented() {
  id<MTLDevice> device = MTLCreateSystemDefaultDevice();
  [(id<SelftestNotEmulated>)device newRenderPipelineStateWithDescriptor:nil error:nullptr];
  printf("unreachable: an unimplemented method returned\n");
  return 0;
}

static int run_child_mode(const char* mode) {
  if (!strcmp(mode, "graph")) return child_graph();
  if (!strcmp(mode, "unimplemented")) return child_unimplemented();
  if (!strcmp(mode, "reenter")) return child_reenter();
  if (!strcmp(mode, "cycle")) return child_cycle();
  if (!strcmp(mode, "two-threads")) return child_two_threads();
  if (!strcmp(mode, "unsynced")) return child_unsynced(false);
  if (!strcmp(mode, "synced")) return child_unsynced(true);
  fprintf(stderr, "unknown child mode %s\n", mode);
  return 2;
}

struct ChildResult {
  int status = -1;
  std::string output;
  bool aborted() const { return WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT; }
  int exit_code() const { return WIFEXITED(status) ? WEXITSTATUS(status) : -1; }
  bool has(const char* text) const { return output.find(text) != std::string::npos; }
};

static ChildResult run_child(const char* mode) {
  ChildResult r;
  int fds[2];
  if (pipe(fds) != 0) return r;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
  posix_spawn_file_actions_adddup2(&actions, fds[1], 2);
  posix_spawn_file_actions_addclose(&actions, fds[0]);
  std::vector<std::string> env_strings;
  for (char** e = environ; *e; ++e) {
    if (strncmp(*e, "TSAN_OPTIONS=", 13) && strncmp(*e, "MPSEMU_ABORT_ON_VIOLATION=", 26)) env_strings.push_back(*e);
  }
  env_strings.push_back("TSAN_OPTIONS=halt_on_error=0 exitcode=66");
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(&s[0]);
  envp.push_back(nullptr);
  char self[] = "/proc/self/exe";
  char flag[] = "--child";
  std::string m = mode;
  char* argv[] = {self, flag, &m[0], nullptr};
  pid_t pid;
  if (posix_spawn(&pid, self, &actions, nullptr, argv, envp.data()) != 0) {
    close(fds[0]);
    close(fds[1]);
    return r;
  }
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  char buf[4096];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof buf)) > 0) r.output.append(buf, (size_t)n);
  close(fds[0]);
  waitpid(pid, &r.status, 0);
  return r;
}

static std::string first_line_with(const std::string& text, const char* needle) {
  size_t at = text.find(needle);
  if (at == std::string::npos) return "(none)";
  size_t start = text.rfind('\n', at);
  start = start == std::string::npos ? 0 : start + 1;
  size_t end = text.find('\n', at);
  std::string line = text.substr(start, end == std::string::npos ? std::string::npos : end - start);
  return line.size() > 300 ? line.substr(0, 300) + "..." : line;
}

// ---- checks ------------------------------------------------------------------------------------

static void check_set_semantics() {
  @autoreleasepool {
    id<MTLCommandQueue> slow = [g_device newCommandQueue];
    id<MTLCommandQueue> fast = [g_device newCommandQueue];
    id<MTLSharedEvent> ev = [g_device newSharedEvent];
    id<MTLSharedEvent> gate = [g_device newSharedEvent];
    id<MTLCommandBuffer> a = [slow commandBuffer];
    [a encodeWaitForEvent:gate value:1];
    [a encodeSignalEvent:ev value:3];
    [a commit];
    id<MTLCommandBuffer> b = [fast commandBuffer];
    [b encodeSignalEvent:ev value:5];
    [b commit];
    [b waitUntilCompleted];
    uint64_t after_fast = ev.signaledValue;
    gate.signaledValue = 1;
    [a waitUntilCompleted];
    uint64_t after_slow = ev.signaledValue;
    CHECK(after_fast == 5 && after_slow == 3, "set semantics: a late signal of 3 lowers 5 to 3",
          "after fast queue: %llu, after slow queue: %llu", (unsigned long long)after_fast, (unsigned long long)after_slow);
    ev.signaledValue = 1;
    CHECK(ev.signaledValue == 1, "set semantics: a CPU set lowers the value too", "signaledValue %llu",
          (unsigned long long)ev.signaledValue);
    [ev release];
    [gate release];
    [slow release];
    [fast release];
  }
}

static void check_cross_queue_wait() {
  @autoreleasepool {
    id<MTLCommandQueue> qa = [g_device newCommandQueue];
    id<MTLCommandQueue> qb = [g_device newCommandQueue];
    id<MTLSharedEvent> ev = [g_device newSharedEvent];
    id<MTLBuffer> buf = shared_buffer(64);
    __block int seen = -1;
    __block uint64_t event_seen = 0;
    // B is committed first and waits; A writes after a pause, then signals.
    id<MTLCommandBuffer> cbb = [qb commandBuffer];
    [cbb encodeWaitForEvent:ev value:1];
    id<MTLComputeCommandEncoder> eb = [cbb computeCommandEncoder];
    mpsemu_encode_kernel(eb, ^{
      seen = ((int*)[buf contents])[0];
    });
    [eb endEncoding];
    [cbb commit];
    id<MTLCommandBuffer> cba = [qa commandBuffer];
    id<MTLComputeCommandEncoder> ea = [cba computeCommandEncoder];
    mpsemu_encode_kernel(ea, ^{
      usleep(20000);
      ((int*)[buf contents])[0] = 42;
    });
    [ea endEncoding];
    [cba encodeSignalEvent:ev value:1];
    [cba commit];
    [cbb waitUntilCompleted];
    event_seen = ev.signaledValue;
    CHECK(seen == 42, "cross-queue wait: kernel after the wait sees the write", "read %d (written 42 on the other queue), event %llu",
          seen, (unsigned long long)event_seen);
    [buf release];
    [ev release];
    [qa release];
    [qb release];
  }
}

static void check_completion_handlers() {
  @autoreleasepool {
    id<MTLCommandQueue> q = [g_device newCommandQueue];
    struct Rec {
      int order[8];
      pthread_t threads[8];
      int count;
      int status_ok;
    };
    Rec* rec = new Rec{};
    const pthread_t main_thread = pthread_self();
    id<MTLCommandBuffer> last = nil;
    for (int i = 0; i < 8; ++i) {
      id<MTLCommandBuffer> cb = [q commandBuffer];
      id<MTLComputeCommandEncoder> enc = [cb computeCommandEncoder];
      mpsemu_encode_kernel(enc, ^{
        usleep(i % 2 ? 3000 : 0);
      });
      [enc endEncoding];
      [cb addCompletedHandler:^(id<MTLCommandBuffer> done) {
        rec->order[rec->count] = i;
        rec->threads[rec->count] = pthread_self();
        if (done.status == MTLCommandBufferStatusCompleted) ++rec->status_ok;
        ++rec->count;
      }];
      [cb commit];
      last = cb;
    }
    [last waitUntilCompleted];
    int quiesced = mpsemu_quiesce(10000);
    int count = rec->count;
    bool in_order = count == 8;
    bool one_thread = count == 8;
    for (int i = 0; i < count; ++i) {
      in_order = in_order && rec->order[i] == i;
      one_thread = one_thread && pthread_equal(rec->threads[i], rec->threads[0]) && !pthread_equal(rec->threads[i], main_thread);
    }
    const int* o = rec->order;
    CHECK(quiesced == 0 && in_order, "completion handlers run in commit order", "%d handlers, order %d %d %d %d %d %d %d %d",
          count, o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]);
    CHECK(one_thread && rec->status_ok == 8, "completion handlers: one completion thread, after completion",
          "same non-main thread: %s, status Completed in %d of 8", one_thread ? "yes" : "no", rec->status_ok);
    delete rec;
    [q release];
  }
}

static void check_commit_and_continue() {
  @autoreleasepool {
    id<MTLCommandQueue> q = [g_device newCommandQueue];
    __block std::vector<int>* seq = new std::vector<int>;
    MPSCommandBuffer* mcb = [[MPSCommandBuffer commandBufferFromCommandQueue:q] retain];
    id<MTLCommandBuffer> root = mcb.rootCommandBuffer;
    for (int i = 1; i <= 4; ++i) {
      id<MTLComputeCommandEncoder> enc = [mcb computeCommandEncoder];
      mpsemu_encode_kernel(enc, ^{
        usleep(i == 1 ? 20000 : 0);
        seq->push_back(i);
      });
      [enc endEncoding];
      if (i < 4) [mcb commitAndContinue];
    }
    bool switched = mcb.commandBuffer != root;
    MTLCommandBufferStatus root_status = root.status;
    [mcb commit];
    [mcb waitUntilCompleted];
    std::string got;
    for (int v : *seq) got += std::to_string(v) + " ";
    CHECK(got == "1 2 3 4 " && switched && root_status >= MTLCommandBufferStatusCommitted,
          "commitAndContinue keeps encoding order", "kernels ran: %s; new underlying buffer: %s; root status %lu", got.c_str(),
          switched ? "yes" : "no", (unsigned long)root_status);
    [mcb release];
    delete seq;
    [q release];
  }
}

static void check_wait_until_completed() {
  @autoreleasepool {
    id<MTLCommandQueue> q = [g_device newCommandQueue];
    std::atomic<int>* done_flag = new std::atomic<int>(0);
    id<MTLCommandBuffer> cb = [q commandBuffer];
    id<MTLComputeCommandEncoder> enc = [cb computeCommandEncoder];
    mpsemu_encode_kernel(enc, ^{
      usleep(30000);
      done_flag->store(1);
    });
    [enc endEncoding];
    [cb commit];
    MTLCommandBufferStatus before = cb.status;
    [cb waitUntilCompleted];
    int after = done_flag->load();
    delete done_flag;
    CHECK(after == 1 && cb.status == MTLCommandBufferStatusCompleted && before < MTLCommandBufferStatusCompleted,
          "waitUntilCompleted returns after the work", "status before %lu, after %lu, kernel done %d", (unsigned long)before,
          (unsigned long)cb.status, after);
    [q release];
  }
}

static void check_autorelease_pool() {
  size_t before = mpsemu_live_objects("NSString");
  size_t inside = 0;
  @autoreleasepool {
    for (int i = 0; i < 10; ++i) [NSString stringWithFormat:@"s%d %s %@", i, "x", @"y"];
    inside = mpsemu_live_objects("NSString");
  }
  size_t after = mpsemu_live_objects("NSString");
  CHECK(inside == before + 10 && after == before, "autorelease pool releases its objects at pop",
        "live NSString before %zu, inside %zu, after %zu", before, inside, after);
  NSString* s = [NSString stringWithFormat:@"%s=%d %lu %@ %05.1f%%", "n", -3, (unsigned long)7, @"lit", 2.25];
  CHECK(!strcmp([s UTF8String], "n=-3 7 lit 002.2%") || !strcmp([s UTF8String], "n=-3 7 lit 002.3%"),
        "stringWithFormat: %s %d %lu %@ %f", "\"%s\" (length %lu)", [s UTF8String], (unsigned long)s.length);
}

static void check_block_retains() {
  @autoreleasepool {
    NSObject* obj = [[NSObject alloc] init];
    NSUInteger rc0 = [obj retainCount];
    void (^b)(void) = ^{
      [obj hash];
    };
    void (^copy)(void) = Block_copy(b);
    NSUInteger rc1 = [obj retainCount];
    Block_release(copy);
    NSUInteger rc2 = [obj retainCount];
    CHECK(rc0 == 1 && rc1 == 2 && rc2 == 1, "a copied block retains captured objects, disposal releases",
          "retainCount %lu -> %lu after Block_copy -> %lu after Block_release", (unsigned long)rc0, (unsigned long)rc1,
          (unsigned long)rc2);
    // The caller drops its reference before the async block runs; the block keeps the object.
    dispatch_queue_t q = dispatch_queue_create("selftest.blocks", nullptr);
    dispatch_semaphore_t go = dispatch_semaphore_create(0);
    dispatch_semaphore_t done = dispatch_semaphore_create(0);
    size_t live_before = mpsemu_live_objects("NSObject");
    __block NSUInteger rc_in_block = 0;
    dispatch_async(q, ^{
      dispatch_semaphore_wait(go, DISPATCH_TIME_FOREVER);
      rc_in_block = [obj retainCount];
      dispatch_semaphore_signal(done);
    });
    [obj release];
    size_t live_while_queued = mpsemu_live_objects("NSObject");
    dispatch_semaphore_signal(go);
    dispatch_semaphore_wait(done, DISPATCH_TIME_FOREVER);
    dispatch_sync(q, ^{
    });
    size_t live_after = mpsemu_live_objects("NSObject");
    CHECK(rc_in_block == 1 && live_while_queued == live_before && live_after == live_before - 1,
          "dispatch_async's block keeps a captured object alive", "retainCount in block %lu; live NSObject %zu, %zu, %zu",
          (unsigned long)rc_in_block, live_before, live_while_queued, live_after);
    dispatch_release(go);
    dispatch_release(done);
    dispatch_release(q);
  }
}

static const char kKey = 0;

static void check_get_specific() {
  dispatch_queue_t q1 = dispatch_queue_create("selftest.one", nullptr);
  dispatch_queue_t q2 = dispatch_queue_create("selftest.two", nullptr);
  dispatch_queue_t q3 = dispatch_queue_create("selftest.three", nullptr);
  static char one_storage[] = "one", two_storage[] = "two";
  char* one = one_storage;
  char* two = two_storage;
  dispatch_queue_set_specific(q1, &kKey, one, nullptr);
  dispatch_queue_set_specific(q2, &kKey, two, nullptr);
  __block void *a = nullptr, *b = nullptr, *c = nullptr, *d = nullptr, *async_value = nullptr;
  dispatch_sync(q1, ^{
    a = dispatch_get_specific(&kKey);
    dispatch_sync(q2, ^{
      b = dispatch_get_specific(&kKey);
      dispatch_sync(q3, ^{
        c = dispatch_get_specific(&kKey);
      });
    });
    d = dispatch_get_specific(&kKey);
  });
  void* outside = dispatch_get_specific(&kKey);
  dispatch_semaphore_t done = dispatch_semaphore_create(0);
  dispatch_async(q2, ^{
    async_value = dispatch_get_specific(&kKey);
    dispatch_semaphore_signal(done);
  });
  dispatch_semaphore_wait(done, DISPATCH_TIME_FOREVER);
  auto name = [](void* p) { return p ? (const char*)p : "NULL"; };
  CHECK(a == one && b == two && c == nullptr && d == one && outside == nullptr && async_value == two,
        "dispatch_get_specific reads the innermost queue only",
        "in q1: %s, q1>q2: %s, q1>q2>q3 (no key): %s, back in q1: %s, outside: %s, async on q2: %s", name(a), name(b),
        name(c), name(d), name(outside), name(async_value));
  CHECK(dispatch_queue_get_specific(q2, &kKey) == two && dispatch_queue_get_specific(q3, &kKey) == nullptr,
        "dispatch_queue_get_specific reads one queue", "q2: %s, q3: %s", name(dispatch_queue_get_specific(q2, &kKey)),
        name(dispatch_queue_get_specific(q3, &kKey)));
  dispatch_release(done);
  dispatch_release(q1);
  dispatch_release(q2);
  dispatch_release(q3);
}

static void check_serial_queue_fifo() {
  dispatch_queue_t q = dispatch_queue_create("selftest.fifo", nullptr);
  __block std::vector<int>* seq = new std::vector<int>;
  for (int i = 0; i < 20; ++i) {
    if (i % 5 == 4) {
      dispatch_sync(q, ^{
        seq->push_back(i);
      });
    } else {
      dispatch_async(q, ^{
        usleep(200);
        seq->push_back(i);
      });
    }
  }
  dispatch_sync(q, ^{
  });
  bool in_order = seq->size() == 20;
  for (size_t i = 0; in_order && i < seq->size(); ++i) in_order = (*seq)[i] == (int)i;
  CHECK(in_order, "serial queue: sync and async blocks run in FIFO order", "%zu blocks, in order: %s", seq->size(),
        in_order ? "yes" : "no");
  delete seq;
  dispatch_release(q);
}

static void check_exceptions() {
  dispatch_queue_t q = dispatch_queue_create("selftest.throw", nullptr);
  std::string caught = "(nothing)";
  try {
    dispatch_sync(q, ^{
      throw std::runtime_error("thrown in a block");
    });
  } catch (const std::runtime_error& e) {
    caught = e.what();
  }
  __block int after = 0;
  dispatch_sync(q, ^{
    after = 1;
  });
  CHECK(caught == "thrown in a block" && after == 1, "a C++ exception leaves dispatch_sync; the queue stays usable",
        "caught \"%s\", next block ran: %d", caught.c_str(), after);
  dispatch_release(q);
}

// Client thread_local objects whose destructors run after the emulator's own per-thread state was
// first cleaned up (they were constructed earlier in the thread) may still use the runtime.
struct LateUser {
  dispatch_queue_t q = nullptr;
  std::atomic<int>* ran = nullptr;
  ~LateUser() {
    if (!q) return;
    @autoreleasepool {
      [NSString stringWithFormat:@"late %d", 1];
      dispatch_sync(q, ^{
        [[[NSObject alloc] init] autorelease];
      });
    }
    [[[NSObject alloc] init] autorelease];  // goes to the thread's implicit pool, drained after this
    ran->fetch_add(1);
  }
};
static thread_local LateUser t_late;

static void check_thread_exit() {
  dispatch_queue_t q = dispatch_queue_create("selftest.exit", nullptr);
  std::atomic<int> ran{0};
  size_t before = mpsemu_live_objects("NSObject");
  std::thread([&] {
    t_late.q = q;  // constructed first: destroyed last
    t_late.ran = &ran;
    @autoreleasepool {
      [NSString stringWithFormat:@"early"];
    }
    [[[NSObject alloc] init] autorelease];  // the implicit pool, drained at thread exit
  }).join();
  size_t after = mpsemu_live_objects("NSObject");
  CHECK(ran.load() == 1 && after == before, "runtime usable from thread_local destructors at thread exit",
        "late destructor ran %d time(s); live NSObject %zu before, %zu after the thread", ran.load(), before, after);
  dispatch_release(q);
}

// The block of a notification requested on one thread and delivered by another queue's GPU signal
// sees what the requesting thread wrote before the request (TSan would report it otherwise).
static void check_listener_ordering() {
  @autoreleasepool {
    id<MTLSharedEvent> ev = [g_device newSharedEvent];
    id<MTLCommandQueue> q = [g_device newCommandQueue];
    MTLSharedEventListener* listener = [[MTLSharedEventListener alloc] init];
    dispatch_semaphore_t fired = dispatch_semaphore_create(0);
    int* written = new int(0);
    int* seen = new int(-1);
    std::thread([&] {
      *written = 11;
      [ev notifyListener:listener
                 atValue:4
                   block:^(id<MTLSharedEvent> e, uint64_t value) {
                     *seen = *written;
                     dispatch_semaphore_signal(fired);
                   }];
    }).join();
    id<MTLCommandBuffer> cb = [q commandBuffer];
    [cb encodeSignalEvent:ev value:4];
    [cb commit];
    long r = dispatch_semaphore_wait(fired, dispatch_time(DISPATCH_TIME_NOW, 10 * NSEC_PER_SEC));
    CHECK(r == 0 && *seen == 11, "a notification is ordered after its request", "%s, read %d",
          r ? "not fired" : "fired", *seen);
    [cb waitUntilCompleted];
    mpsemu_quiesce(10000);
    delete written;
    delete seen;
    dispatch_release(fired);
    [listener release];
    [q release];
    [ev release];
  }
}

static void check_foundation() {
  @autoreleasepool {
    NSProcessInfo* info = [NSProcessInfo processInfo];
    NSOperatingSystemVersion v = info.operatingSystemVersion;
    BOOL at14 = [info isOperatingSystemAtLeastVersion:(NSOperatingSystemVersion){14, 4, 0}];
    BOOL at99 = [info isOperatingSystemAtLeastVersion:(NSOperatingSystemVersion){99, 0, 0}];
    CHECK(v.majorVersion >= 14 && at14 && !at99, "NSProcessInfo reports a macOS 14/15-like version",
          "%ld.%ld.%ld, at least 14.4: %d, at least 99: %d", (long)v.majorVersion, (long)v.minorVersion,
          (long)v.patchVersion, at14, at99);
    NSArray* devices = MTLCopyAllDevices();
    int n = 0;
    for (id<MTLDevice> d in devices) n += d == g_device;
    NSMutableDictionary* dict = [NSMutableDictionary dictionary];
    [dict setObject:[NSNumber numberWithInt:3] forKey:@"three"];
    [dict setObject:[NSNumber numberWithInt:4] forKey:[NSString stringWithUTF8String:"four"]];
    int three = [[dict objectForKey:[NSString stringWithFormat:@"th%s", "ree"]] intValue];
    CHECK(devices.count == 1 && n == 1 && dict.count == 2 && three == 3 && g_device.hasUnifiedMemory &&
              g_device.recommendedMaxWorkingSetSize > 0,
          "devices, fast enumeration, dictionaries", "%lu device(s), enumerated %d; dictionary of %lu, three=%d; %s",
          (unsigned long)devices.count, n, (unsigned long)dict.count, three, [[g_device name] UTF8String]);
    [devices release];
  }
}

static void check_stand_in_children() {
  ChildResult g = run_child("graph");
  CHECK(g.aborted() && g.has("not emulated") && !g.has("unreachable"), "running an MPSGraph aborts (not emulated)",
        "child %s; %s", g.aborted() ? "aborted" : ("exit " + std::to_string(g.exit_code())).c_str(),
        first_line_with(g.output, "VIOLATION").c_str());
  ChildResult u = run_child("unimplemented");
  CHECK(u.aborted() && u.has("newRenderPipelineStateWithDescriptor:error:] is not emulated") && !u.has("unreachable"),
        "an unimplemented method aborts with its name", "child %s; %s",
        u.aborted() ? "aborted" : ("exit " + std::to_string(u.exit_code())).c_str(),
        first_line_with(u.output, "VIOLATION").c_str());
}

static void check_reenter_child() {
  ChildResult r = run_child("reenter");
  CHECK(r.aborted() && r.has("mpsemu: VIOLATION: dispatch_sync onto queue 'selftest.reenter'") && !r.has("unreachable"),
        "dispatch_sync re-entrance aborts with a violation", "child %s; %s",
        r.aborted() ? "aborted" : ("exit " + std::to_string(r.exit_code())).c_str(),
        first_line_with(r.output, "VIOLATION").c_str());
}

static void check_cycle_child() {
  ChildResult r = run_child("cycle");
  bool named = r.has("wait-for cycle") && r.has("selftest.cycle-A") && r.has("selftest.cycle-B");
  CHECK(r.aborted() && named && !r.has("unreachable"), "two-thread dispatch_sync wait-for cycle aborts",
        "child %s; %s", r.aborted() ? "aborted" : ("exit " + std::to_string(r.exit_code())).c_str(),
        first_line_with(r.output, "VIOLATION").c_str());
}

static void check_two_threads_child() {
  ChildResult r = run_child("two-threads");
  CHECK(r.has("command buffer used by two threads at once"), "two threads encoding into one command buffer: violation",
        "child exit %d; %s", r.exit_code(), first_line_with(r.output, "VIOLATION").c_str());
#ifdef SELFTEST_TSAN
  CHECK(r.has("WARNING: ThreadSanitizer: data race"), "two threads encoding into one command buffer: TSan race",
        "%s", first_line_with(r.output, "ThreadSanitizer").c_str());
  ChildResult u = run_child("unsynced");
  CHECK(u.has("WARNING: ThreadSanitizer: data race"), "two queues, no event: TSan reports the race",
        "%s", first_line_with(u.output, "ThreadSanitizer").c_str());
  ChildResult s = run_child("synced");
  CHECK(!s.has("ThreadSanitizer") && s.has("seen=7") && s.exit_code() == 0, "two queues ordered by an event: no TSan report",
        "exit %d, %s", s.exit_code(), first_line_with(s.output, "seen=").c_str());
#endif
}

static void check_heap() {
  @autoreleasepool {
    MTLHeapDescriptor* d = [MTLHeapDescriptor new];
    d.size = 64 * 1024;
    d.storageMode = MTLStorageModeShared;
    size_t dev_before = g_device.currentAllocatedSize;
    id<MTLHeap> heap = [g_device newHeapWithDescriptor:d];
    [d release];
    size_t dev_with_heap = g_device.currentAllocatedSize;
    id<MTLBuffer> b1 = [heap newBufferWithLength:40000 options:MTLResourceStorageModeShared];
    id<MTLBuffer> b2 = [heap newBufferWithLength:40000 options:MTLResourceStorageModeShared];
    size_t used = heap.usedSize;
    size_t avail = [heap maxAvailableSizeWithAlignment:16384];
    CHECK(heap && b1 && !b2 && b1.heap == heap, "heap full: second buffer is nil", "heap %zu bytes, first %s, second %s",
          (size_t)heap.size, b1 ? "ok" : "nil", b2 ? "ok" : "nil");
    CHECK(used == 49152 && avail == 16384 && dev_with_heap == dev_before + 65536, "heap accounting",
          "usedSize %zu, maxAvailable(16K) %zu, device allocated +%zu", used, avail, dev_with_heap - dev_before);
    [b1 release];
    id<MTLBuffer> b3 = [heap newBufferWithLength:60000 options:MTLResourceStorageModeShared];
    CHECK(heap.usedSize == 65536 && b3 != nil, "heap space comes back when a buffer dies", "usedSize %zu, buffer %s",
          (size_t)heap.usedSize, b3 ? "ok" : "nil");
    [b3 release];
    [heap release];
    CHECK(g_device.currentAllocatedSize == dev_before, "device allocation drops when the heap dies", "before %zu, after %zu",
          dev_before, (size_t)g_device.currentAllocatedSize);
  }
}

static void check_command_buffer_counts() {
  @autoreleasepool {
    mpsemu_quiesce(10000);
    size_t live0 = mpsemu_live_command_buffers();
    size_t unc0 = mpsemu_uncommitted_command_buffers();
    id<MTLCommandQueue> q = [g_device newCommandQueue];
    id<MTLCommandBuffer> a, b, c;
    @autoreleasepool {
      a = [[q commandBuffer] retain];
      b = [[q commandBuffer] retain];
      c = [[q commandBuffer] retain];
    }
    [a commit];
    size_t live1 = mpsemu_live_command_buffers();
    size_t unc1 = mpsemu_uncommitted_command_buffers();
    [a waitUntilCompleted];
    [a release];
    [b release];
    mpsemu_quiesce(10000);
    size_t live2 = mpsemu_live_command_buffers();
    size_t unc2 = mpsemu_uncommitted_command_buffers();
    [c release];
    size_t live3 = mpsemu_live_command_buffers();
    CHECK(live1 == live0 + 3 && unc1 == unc0 + 2 && live2 == live0 + 1 && unc2 == unc0 + 1 && live3 == live0,
          "live and uncommitted command-buffer counts",
          "live %zu->%zu->%zu->%zu, uncommitted %zu->%zu->%zu", live0, live1, live2, live3, unc0, unc1, unc2);
    [q release];
  }
}

static void check_misuse_violations() {
  @autoreleasepool {
    id<MTLCommandQueue> q = [g_device newCommandQueue];
    uint64_t v0 = mpsemu_violations();
    id<MTLCommandBuffer> cb = [q commandBuffer];
    id<MTLComputeCommandEncoder> e1 = [cb computeCommandEncoder];
    id<MTLBlitCommandEncoder> e2 = [cb blitCommandEncoder];  // e1 still open
    std::string open_msg = mpsemu_last_violation();
    [e1 endEncoding];
    [e2 endEncoding];
    mpsemu_encode_kernel(e1, ^{
    });
    std::string ended_msg = mpsemu_last_violation();
    __block int late_ran = 0;
    [cb commit];
    [cb commit];
    std::string twice_msg = mpsemu_last_violation();
    [cb addCompletedHandler:^(id<MTLCommandBuffer>) {
      late_ran = 1;
    }];
    std::string late_msg = mpsemu_last_violation();
    [cb encodeSignalEvent:nil value:1];
    std::string committed_msg = mpsemu_last_violation();
    [cb waitUntilCompleted];
    mpsemu_quiesce(10000);
    uint64_t v1 = mpsemu_violations();
    CHECK(v1 - v0 == 5, "misuse is counted", "%llu violations", (unsigned long long)(v1 - v0));
    CHECK(open_msg.find("another encoder") != std::string::npos, "violation: encoder opened while another is open", "\"%s\"",
          open_msg.c_str());
    CHECK(ended_msg.find("after -endEncoding") != std::string::npos, "violation: encoding into an ended encoder", "\"%s\"",
          ended_msg.c_str());
    CHECK(twice_msg.find("committed twice") != std::string::npos, "violation: commit twice", "\"%s\"", twice_msg.c_str());
    CHECK(late_msg.find("after the command buffer was committed") != std::string::npos && late_ran == 1,
          "violation: addCompletedHandler after commit (handler still runs)", "\"%s\", ran %d", late_msg.c_str(), late_ran);
    CHECK(committed_msg.find("already committed") != std::string::npos, "violation: encoding into a committed buffer",
          "\"%s\"", committed_msg.c_str());
    id<MTLCommandBuffer> cb2 = [q commandBuffer];
    [cb2 computeCommandEncoder];
    [cb2 commit];
    std::string open_commit = mpsemu_last_violation();
    CHECK(open_commit.find("encoder is open") != std::string::npos, "violation: commit with an open encoder", "\"%s\"",
          open_commit.c_str());
    [cb2 waitUntilCompleted];
    NSObject* o = [[NSObject alloc] init];
    [o retain];
    [o release];
    [o release];
    uint64_t before_over = mpsemu_violations();
    [o release];
    std::string over_msg = mpsemu_last_violation();
    CHECK(mpsemu_violations() == before_over + 1 && over_msg.find("over-release") != std::string::npos,
          "violation: over-release", "\"%s\"", over_msg.c_str());
    [q release];
  }
  // The encoder opened by cb2 and never ended was released with the pool: one more violation.
  std::string unended = mpsemu_last_violation();
  CHECK(unended.find("without -endEncoding") != std::string::npos, "violation: encoder released without endEncoding",
        "\"%s\"", unended.c_str());
}

static void check_listener() {
  @autoreleasepool {
    id<MTLSharedEvent> ev = [g_device newSharedEvent];
    dispatch_queue_t lq = dispatch_queue_create("selftest.listener", nullptr);
    static const char lkey = 0;
    static char mark_storage[] = "listener-queue";
    char* mark = mark_storage;
    dispatch_queue_set_specific(lq, &lkey, mark, nullptr);
    MTLSharedEventListener* listener = [[MTLSharedEventListener alloc] initWithDispatchQueue:lq];
    dispatch_semaphore_t fired = dispatch_semaphore_create(0);
    __block uint64_t got = 0;
    __block void* on_queue = nullptr;
    [ev notifyListener:listener
               atValue:2
                 block:^(id<MTLSharedEvent> e, uint64_t value) {
                   got = value;
                   on_queue = dispatch_get_specific(&lkey);
                   dispatch_semaphore_signal(fired);
                 }];
    ev.signaledValue = 1;
    long early = dispatch_semaphore_wait(fired, dispatch_time(DISPATCH_TIME_NOW, 50 * NSEC_PER_MSEC));
    id<MTLCommandQueue> q = [g_device newCommandQueue];
    id<MTLCommandBuffer> cb = [q commandBuffer];
    [cb encodeSignalEvent:ev value:2];
    [cb commit];
    long late = dispatch_semaphore_wait(fired, dispatch_time(DISPATCH_TIME_NOW, 10 * NSEC_PER_SEC));
    CHECK(early != 0 && late == 0 && got == 2 && on_queue == mark, "listener fires at its value, on its queue",
          "before: %s, after GPU signal 2: %s, value %llu, on listener queue: %s", early ? "not fired" : "fired",
          late ? "not fired" : "fired", (unsigned long long)got, on_queue == mark ? "yes" : "no");
    __block uint64_t immediate = 0;
    [ev notifyListener:listener
               atValue:1
                 block:^(id<MTLSharedEvent> e, uint64_t value) {
                   immediate = value;
                   dispatch_semaphore_signal(fired);
                 }];
    long now = dispatch_semaphore_wait(fired, dispatch_time(DISPATCH_TIME_NOW, 10 * NSEC_PER_SEC));
    CHECK(now == 0 && immediate == 2, "listener for a value already reached fires at once", "%s, value %llu",
          now ? "not fired" : "fired", (unsigned long long)immediate);
    [cb waitUntilCompleted];
    [listener release];
    dispatch_release(fired);
    dispatch_release(lq);
    [q release];
    [ev release];
  }
}

static void check_blits() {
  @autoreleasepool {
    id<MTLCommandQueue> q = [g_device newCommandQueue];
    id<MTLBuffer> src = shared_buffer(256);
    id<MTLBuffer> dst = shared_buffer(256);
    NSUInteger rc_before = [src retainCount];
    id<MTLCommandBuffer> cb = [q commandBuffer];
    id<MTLBlitCommandEncoder> blit = [cb blitCommandEncoder];
    [blit fillBuffer:src range:NSMakeRange(0, 128) value:0xAB];
    [blit copyFromBuffer:src sourceOffset:64 toBuffer:dst destinationOffset:8 size:16];
    [blit endEncoding];
    NSUInteger rc_held = [src retainCount];
    [cb commit];
    [cb waitUntilCompleted];
    mpsemu_quiesce(10000);
    NSUInteger rc_after = [src retainCount];
    const uint8_t* d = (const uint8_t*)[dst contents];
    CHECK(d[7] == 0 && d[8] == 0xAB && d[23] == 0xAB && d[24] == 0, "blits run on the timeline in order",
          "dst[7..8]=%02x %02x dst[23..24]=%02x %02x", d[7], d[8], d[23], d[24]);
    CHECK(rc_before == 1 && rc_held == 2 && rc_after == 1, "a command buffer holds its buffers until it completes",
          "retainCount %lu, %lu while encoded, %lu after completion", (unsigned long)rc_before, (unsigned long)rc_held,
          (unsigned long)rc_after);
    [src release];
    [dst release];
    [q release];
  }
}

int main(int argc, char** argv) {
  if (argc == 3 && !strcmp(argv[1], "--child")) return run_child_mode(argv[2]);
  const char* seed = getenv("MPSEMU_SEED");
  mpsemu_configure(seed ? strtoull(seed, nullptr, 0) : 7, 50);
  @autoreleasepool {
    g_device = MTLCreateSystemDefaultDevice();
    check_set_semantics();
    check_cross_queue_wait();
    check_completion_handlers();
    check_commit_and_continue();
    check_wait_until_completed();
    check_autorelease_pool();
    check_block_retains();
    check_get_specific();
    check_serial_queue_fifo();
    check_listener();
    check_blits();
    check_heap();
    check_command_buffer_counts();
    check_misuse_violations();
    check_exceptions();
    check_thread_exit();
    check_listener_ordering();
    check_foundation();
    check_stand_in_children();
    check_reenter_child();
    check_cycle_child();
    check_two_threads_child();
  }
  CHECK(mpsemu_quiesce(10000) == 0, "quiesce: everything due has run", "pending work drained");
  printf("%d checks, %d failed\n", g_checks, g_failed);
  return g_failed ? 1 : 0;
}
