// mps-emu: the object model. NSObject (the root class) with manual reference counting, autorelease
// pools, per-class live-object counts, blocks that retain the objects they capture, and a clear
// failure for messages the emulator does not implement.
//
// Semantics, as on Apple under manual reference counting (-fno-objc-arc):
//  - +alloc returns an object with retain count 1; -retain adds one, -release removes one and
//    calls -dealloc when it reaches 0. -retainCount is the exact count (the MPS allocator reads it
//    to see whether a command buffer still holds a buffer; command buffers here hold such
//    references until they complete, as Metal's do).
//  - -release of an object whose count is already 0, or of a deallocated object, is an
//    over-release: reported as a violation. Deallocated objects are kept (unreachable, marked dead)
//    in a per-thread quarantine of the last 1024 deallocations so that such late messages are
//    detected instead of touching freed memory; older ones are freed (AddressSanitizer then sees
//    any use).
//  - -autorelease adds the object to the innermost pool of the calling thread's pool stack; a
//    pool's -drain releases its objects (last added first). With no pool, objects go to the
//    thread's implicit pool, drained when the thread exits (the main thread's is never drained).
//  - A block copied to the heap (Block_copy, dispatch_async, handlers) retains the Objective-C
//    objects it captures and releases them when it is disposed; __block object variables are not
//    retained (both as Apple's blocks runtime does without ARC). libBlocksRuntime's own hooks do
//    nothing for objects, so _Block_object_assign/_Block_object_dispose are interposed here and
//    hand every other case to the library.
//  - Live objects are counted per class (exact class, not subclasses) with relaxed atomics, so the
//    counting orders nothing between threads.
#include "internal.h"

#pragma clang diagnostic ignored "-Wdeprecated-objc-isa-usage"  // the root class owns isa

#include <dlfcn.h>
#include <pthread.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

namespace mpsemu {
namespace {

// ---- per-class live counts: a fixed open-addressing table, lock-free, relaxed.
struct ClassSlot {
  std::atomic<void*> cls{nullptr};  // a Class
  std::atomic<long> live{0};
};
constexpr size_t kSlots = 1024;
ClassSlot g_slots[kSlots];

ClassSlot* slot_for(Class cls) {
  size_t h = ((uintptr_t)cls >> 4) * 0x9E3779B97F4A7C15ull >> 54;
  for (size_t i = 0; i < kSlots; ++i) {
    ClassSlot& s = g_slots[(h + i) % kSlots];
    void* k = s.cls.load(std::memory_order_relaxed);
    if (k == (void*)cls) return &s;
    if (k == nullptr) {
      void* expected = nullptr;
      if (s.cls.compare_exchange_strong(expected, (void*)cls, std::memory_order_relaxed) || expected == (void*)cls) return &s;
    }
  }
  fatal_violation("more than %zu emulated classes", kSlots);
}

// ---- the hidden object header, just before the object.
constexpr uint32_t kMagic = 0x6d70736f;  // "mpso"
constexpr long kDead = -(1L << 40);
struct alignas(16) Header {
  std::atomic<long> rc;
  ClassSlot* slot;
  void* state;
  uint32_t magic;
};
inline Header* header_of(id obj) {
  return reinterpret_cast<Header*>(obj) - 1;
}

// ---- per-thread autorelease stack and quarantine. Reached through a trivially destructible
// thread_local pointer and cleaned up by a pthread key destructor, which runs after every C++
// thread_local destructor of the thread: client code in those destructors (a stream pool handing
// its slot back, say) may still autorelease objects and run blocks. Used again after the cleanup,
// the state is made anew and cleaned up in the key destructor's next round.
struct ThreadObjects {
  std::vector<id> pending;   // autoreleased objects, oldest first
  std::vector<size_t> marks; // pool boundaries (index into pending)
  Header* quarantine[1024] = {nullptr};
  size_t next = 0;

  ~ThreadObjects() {
    for (Header*& h : quarantine) {
      free(h);
      h = nullptr;
    }
  }
  void drain_to(size_t mark) {
    while (pending.size() > mark) {
      id obj = pending.back();
      pending.pop_back();
      [obj release];
    }
  }
};
thread_local ThreadObjects* t_objects_ptr = nullptr;
pthread_key_t g_objects_key;

void destroy_thread_objects(void* p) {
  auto* t = static_cast<ThreadObjects*>(p);
  t->drain_to(0);  // may autorelease more (it loops until empty) or even recreate the state
  if (t_objects_ptr == t) t_objects_ptr = nullptr;
  delete t;
}

__attribute__((constructor)) void make_objects_key() {
  pthread_key_create(&g_objects_key, destroy_thread_objects);
}

ThreadObjects& thread_objects() {
  if (!t_objects_ptr) {
    t_objects_ptr = new ThreadObjects;
    pthread_setspecific(g_objects_key, t_objects_ptr);
  }
  return *t_objects_ptr;
}
#define t_objects thread_objects()

typedef void (*BlockAssignFn)(void*, const void*, int);
typedef void (*BlockDisposeFn)(const void*, int);
constexpr int kBlockFieldIsObject = 3;  // BLOCK_FIELD_IS_OBJECT with no other flag

IMP unimplemented(id self, SEL sel);

__attribute__((constructor)) void install_forwarder() {
  __objc_msg_forward2 = unimplemented;
}

void report_unimplemented(id self, SEL sel) {
  bool is_class = class_isMetaClass(*reinterpret_cast<Class*>(self));
  Class cls = is_class ? (Class)self : *reinterpret_cast<Class*>(self);
  fatal_violation("%c[%s %s] is not emulated (unrecognized selector; add it to checks/mps/emu/runtime)",
                  is_class ? '+' : '-', class_getName(cls), sel_getName(sel));
}

IMP unimplemented(id, SEL) {
  return (IMP)report_unimplemented;
}

}  // namespace

void* object_state(id obj) {
  return obj ? header_of(obj)->state : nullptr;
}

void set_object_state(id obj, void* state) {
  header_of(obj)->state = state;
}

AutoreleaseScope::AutoreleaseScope() : pool_([[NSAutoreleasePool alloc] init]) {}
AutoreleaseScope::~AutoreleaseScope() {
  [pool_ drain];
}

void run_block_in_pool(void (^block)(void)) {
  AutoreleaseScope pool;
  block();
}

}  // namespace mpsemu

using namespace mpsemu;

extern "C" {

// Interposed over libBlocksRuntime (see the file comment).
void _Block_object_assign(void* dest, const void* object, int flags) {
  static BlockAssignFn next = (BlockAssignFn)dlsym(RTLD_NEXT, "_Block_object_assign");
  if (flags == kBlockFieldIsObject) {
    if (object) [(id)object retain];
    *(const void**)dest = object;
    return;
  }
  next(dest, object, flags);
}

void _Block_object_dispose(const void* object, int flags) {
  static BlockDisposeFn next = (BlockDisposeFn)dlsym(RTLD_NEXT, "_Block_object_dispose");
  if (flags == kBlockFieldIsObject) {
    if (object) [(id)object release];
    return;
  }
  next(object, flags);
}

size_t mpsemu_live_objects(const char* class_name) {
  long total = 0;
  for (ClassSlot& s : g_slots) {
    Class cls = (Class)s.cls.load(std::memory_order_relaxed);
    if (!cls) continue;
    if (class_name && strcmp(class_getName(cls), class_name) != 0) continue;
    total += s.live.load(std::memory_order_relaxed);
  }
  total += (long)live_dispatch_objects(class_name);
  return total > 0 ? (size_t)total : 0;
}

// Clang lowers @autoreleasepool to these for the Apple and GNUstep runtimes (to NSAutoreleasePool
// messages for GCC's); both map to the same per-thread stack.
void* objc_autoreleasePoolPush(void) {
  t_objects.marks.push_back(t_objects.pending.size());
  return (void*)(uintptr_t)t_objects.marks.size();
}

void objc_autoreleasePoolPop(void* token) {
  size_t depth = (size_t)(uintptr_t)token;
  if (depth == 0 || depth > t_objects.marks.size()) {
    violation("autorelease pool popped out of order or twice");
    return;
  }
  size_t mark = t_objects.marks[depth - 1];
  t_objects.marks.resize(depth - 1);
  t_objects.drain_to(mark);
}

}  // extern "C"

@implementation NSObject

+ (instancetype)alloc {
  return [self allocWithZone:nullptr];
}

+ (instancetype)allocWithZone:(NSZone*)zone {
  (void)zone;
  size_t size = class_getInstanceSize(self);
  Header* h = static_cast<Header*>(calloc(1, sizeof(Header) + size));
  if (!h) fatal_violation("out of host memory allocating a %s", class_getName(self));
  new (&h->rc) std::atomic<long>(1);
  h->slot = slot_for(self);
  h->magic = kMagic;
  h->slot->live.fetch_add(1, std::memory_order_relaxed);
  NSObject* obj = reinterpret_cast<NSObject*>(h + 1);
  obj->isa = self;
  return obj;
}

+ (instancetype)new {
  return [[self alloc] init];
}

+ (Class)class {
  return self;
}

+ (Class)superclass {
  return class_getSuperclass(self);
}

+ (BOOL)instancesRespondToSelector:(SEL)aSelector {
  return class_respondsToSelector(self, aSelector);
}

// Class objects are not reference counted.
+ (id)retain {
  return self;
}
+ (oneway void)release {
}
+ (id)autorelease {
  return self;
}
+ (NSUInteger)retainCount {
  return NSUIntegerMax;
}

+ (NSString*)description {
  return [NSString stringWithUTF8String:class_getName(self)];
}

- (instancetype)init {
  return self;
}

- (instancetype)retain {
  Header* h = header_of(self);
  long old = h->rc.fetch_add(1, std::memory_order_relaxed);
  if (old <= 0) {
    h->rc.fetch_sub(1, std::memory_order_relaxed);
    violation("-retain of a deallocated %s %p", class_getName(isa), (void*)self);
  }
  return self;
}

- (oneway void)release {
  Header* h = header_of(self);
  long old = h->rc.fetch_sub(1, std::memory_order_acq_rel);
  if (old == 1) {
    [self dealloc];
  } else if (old <= 0) {
    h->rc.fetch_add(1, std::memory_order_relaxed);
    violation("over-release: -release of a %s %s %p", old == 0 ? "deallocating" : "deallocated",
              class_getName(isa), (void*)self);
  }
}

- (instancetype)autorelease {
  if (header_of(self)->rc.load(std::memory_order_relaxed) <= 0) {
    violation("-autorelease of a deallocated %s %p", class_getName(isa), (void*)self);
    return self;
  }
  t_objects.pending.push_back(self);
  return self;
}

- (NSUInteger)retainCount {
  long rc = header_of(self)->rc.load(std::memory_order_acquire);
  return rc > 0 ? (NSUInteger)rc : 0;
}

- (void)dealloc {
  Header* h = header_of(self);
  h->rc.store(kDead, std::memory_order_relaxed);
  h->slot->live.fetch_sub(1, std::memory_order_relaxed);
  ThreadObjects& t = t_objects;
  Header*& cell = t.quarantine[t.next];
  free(cell);
  cell = h;
  t.next = (t.next + 1) % (sizeof t.quarantine / sizeof t.quarantine[0]);
}

- (BOOL)isEqual:(id)object {
  return self == object;
}

- (NSUInteger)hash {
  return (NSUInteger)(uintptr_t)self;
}

- (Class)class {
  return isa;
}

- (instancetype)self {
  return self;
}

- (BOOL)isKindOfClass:(Class)aClass {
  for (Class c = isa; c; c = class_getSuperclass(c)) {
    if (c == aClass) return YES;
  }
  return NO;
}

- (BOOL)respondsToSelector:(SEL)aSelector {
  return class_respondsToSelector(isa, aSelector);
}

- (NSString*)description {
  return [NSString stringWithFormat:@"<%s: %p>", class_getName(isa), (void*)self];
}

- (id)copy {
  return [(id<NSCopying>)self copyWithZone:nullptr];
}

- (id)mutableCopy {
  return [(id<NSMutableCopying>)self mutableCopyWithZone:nullptr];
}

@end

@implementation NSAutoreleasePool

- (instancetype)init {
  set_object_state(self, objc_autoreleasePoolPush());
  return self;
}

- (void)drain {
  [self release];
}

- (instancetype)retain {
  violation("-retain of an NSAutoreleasePool");
  return self;
}

- (instancetype)autorelease {
  violation("-autorelease of an NSAutoreleasePool");
  return self;
}

- (void)dealloc {
  objc_autoreleasePoolPop(object_state(self));
  [super dealloc];
}

+ (void)addObject:(id)object {
  [object autorelease];
}

@end
