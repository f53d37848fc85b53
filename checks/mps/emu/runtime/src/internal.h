// mps-emu internals shared by the runtime's source files. Not for consumers.
//
// Synchronization policy (why there are two kinds of "lock" here): the emulator exists so that
// ThreadSanitizer sees exactly the happens-before edges that Apple's frameworks guarantee, and no
// others. Its own bookkeeping needs mutexes, and an ordinary mutex taken by two threads orders
// them for TSan: an emulator-internal lock shared by two streams' threads would hide the very
// races under test. So every internal critical section runs inside a `Quiet` scope, in which TSan
// neither records memory accesses nor derives ordering from lock operations, and the ordering that
// the emulated API promises is stated explicitly with hb_release(token) / hb_acquire(token) at the
// points where Apple's documentation promises it (a block submitted to a queue runs after the
// submission; a command buffer's work runs after its commit; a wait on a shared event returns after
// the signal it observed; and so on). Without TSan both are no-ops around plain mutexes.
#pragma once
#include <Foundation/Foundation.h>
#include <Metal/Metal.h>
#include <mpsemu/mpsemu.h>

#include <atomic>
#include <condition_variable>
#include <cstdarg>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

// ---- GCC Objective-C runtime entry points (declared here: its headers define BOOL differently).
extern "C" {
typedef id (*IMP)(id, SEL, ...);
const char* class_getName(Class cls);
size_t class_getInstanceSize(Class cls);
Class class_getSuperclass(Class cls);
BOOL class_isMetaClass(Class cls);
BOOL class_respondsToSelector(Class cls, SEL sel);
const char* sel_getName(SEL sel);
extern IMP (*__objc_msg_forward2)(id, SEL);
}

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MPSEMU_TSAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define MPSEMU_TSAN 1
#endif

#ifdef MPSEMU_TSAN
extern "C" {
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
void __tsan_ignore_thread_begin(void);
void __tsan_ignore_thread_end(void);
void AnnotateIgnoreSyncBegin(const char* file, int line);
void AnnotateIgnoreSyncEnd(const char* file, int line);
}
#endif

namespace mpsemu {

// Emulator bookkeeping scope (see the policy above). Nests. Never run client code (blocks,
// kernels, handlers) inside one.
struct Quiet {
#ifdef MPSEMU_TSAN
  Quiet() {
    __tsan_ignore_thread_begin();
    AnnotateIgnoreSyncBegin(__FILE__, __LINE__);
  }
  ~Quiet() {
    AnnotateIgnoreSyncEnd(__FILE__, __LINE__);
    __tsan_ignore_thread_end();
  }
#else
  Quiet() {}
  ~Quiet() {}
#endif
  Quiet(const Quiet&) = delete;
  Quiet& operator=(const Quiet&) = delete;
};

// The happens-before edges of the emulated API. `token` is any address that lives as long as the
// edge matters (a member of the object the edge belongs to).
inline void hb_release(const void* token) {
#ifdef MPSEMU_TSAN
  __tsan_release(const_cast<void*>(token));
#else
  (void)token;
#endif
}
inline void hb_acquire(const void* token) {
#ifdef MPSEMU_TSAN
  __tsan_acquire(const_cast<void*>(token));
#else
  (void)token;
#endif
}

// ---- violations (emu.mm)
// Records a misuse (counted, kept as the last violation, printed as "mpsemu: VIOLATION: ...").
// Aborts when MPSEMU_ABORT_ON_VIOLATION=1 or mpsemu_set_abort_on_violation(1).
void violation(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
// Records and aborts unconditionally (misuse that would hang or crash on Apple, or that the
// emulator cannot go on from).
[[noreturn]] void fatal_violation(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// ---- threads (emu.mm)
// A small, stable per-thread record (never freed), for messages and the wait-for graph.
}  // namespace mpsemu
struct dispatch_queue_s;
namespace mpsemu {
struct ThreadRec {
  int index = 0;              // 1 = first thread that touched the emulator, ...
  char name[48] = {0};        // "thread 3", or the role of an emulator thread ("gpu timeline 2")
  dispatch_queue_s* waiting_for = nullptr;  // dispatch_sync target it is blocked on (dispatch.mm, g_graph)
};
ThreadRec* self_thread();
void set_thread_role(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// ---- time and random delays (emu.mm)
uint64_t now_ns();
void sleep_us(unsigned us);
// A random-delay source for one emulator thread (GPU timeline, completion thread). Seeded from the
// configured seed and `stream`; re-seeds itself when mpsemu_configure is called again.
struct Jitter {
  explicit Jitter(uint64_t stream) : stream_(stream) {}
  void delay();  // sleeps uniform [0, max_delay_us]
 private:
  uint64_t stream_;
  uint64_t state_ = 0;
  uint64_t generation_ = ~0ull;
};

// ---- pending work, for mpsemu_quiesce (emu.mm). Relaxed counter plus one release token that only
// mpsemu_quiesce acquires (so that the bookkeeping orders nothing else).
void work_begin();
void work_end();

// ---- dispatch.mm: live queues ("dispatch_queue") and semaphores ("dispatch_semaphore"), or both.
size_t live_dispatch_objects(const char* name);

// ---- object model (object.mm)
// Per-instance state of emulator classes lives outside the Objective-C object (GCC's runtime has a
// fragile ivar layout and no C++ ivars); each object has a hidden header with its reference count
// and one state pointer.
void* object_state(id obj);
void set_object_state(id obj, void* state);
// Autorelease pool scope for emulator threads running client blocks.
struct AutoreleaseScope {
  AutoreleaseScope();
  ~AutoreleaseScope();
 private:
  id pool_;
};
// Calls `block` in an autorelease pool (as GCD and Metal's threads do for submitted work).
void run_block_in_pool(void (^block)(void));

template <class T>
inline T* state_of(id obj) {
  return static_cast<T*>(object_state(obj));
}

}  // namespace mpsemu
