// mps-emu: command queues, command buffers, encoders and the GPU timeline.
//
// The GPU timeline. Each command queue has one timeline thread that executes the queue's
// committed command buffers one after another in commit order (a buffer reserved with -enqueue
// keeps its place and waits there for its commit). Within a buffer it executes the encoded
// operations in encoding order: kernels (mpsemu_encode_kernel bodies), blits (fills and copies on
// the buffers' host memory), event signals and event waits. Before each operation, and before
// completing the buffer, it sleeps for a random delay (mpsemu_configure). A wait blocks the timeline
// until the event's signaledValue is >= the value (src/event.mm); a signal SETS signaledValue.
// Then the buffer is completed: the resources it referenced are released (Metal retains them until
// completion unless the buffer was made with unretained references), its status becomes
// Completed, -waitUntilCompleted returns, and its completed handlers go, in the order they were
// added, to the queue's completion thread, which runs them one at a time in commit order.
// Scheduled handlers run on the same thread when the timeline starts the buffer.
// Faithfulness: Metal runs the work of one queue in order only where hazard tracking or events say
// so; the emulator always serializes a queue (a stronger order) and never overlaps two buffers of
// one queue. Different queues run truly concurrently, on different threads.
//
// Happens-before (what ThreadSanitizer sees): commit -> everything the timeline does for that
// buffer; an operation -> every later operation on the same timeline; the buffer's last operation
// -> its completion (status read as Completed, -waitUntilCompleted returning, completed handlers);
// the timeline starting the buffer -> scheduled handlers and -waitUntilScheduled. Cross-queue order
// only through shared events (src/event.mm).
//
// Thread-unsafety, as on Apple: a command buffer and its encoders are not thread-safe. Their
// encoding state (operations, referenced resources, handler lists, the open encoder) is kept in
// plain unsynchronized fields, so two threads encoding into one buffer is a data race that TSan
// reports; independently, each call marks the buffer as in use by the calling thread (a relaxed
// atomic) and a second thread entering while the mark is held is a violation ("command buffer used
// by two threads at once"). The emulator also reports as violations what Metal's validation
// asserts on: encoding into an ended encoder or into a committed buffer, opening an encoder while
// another one of the buffer is open, committing twice, committing with an open encoder, adding a
// handler after commit (the handler still runs, once the buffer has completed), encoding an event
// signal or wait while an encoder is open, and an encoder released without -endEncoding.
#include "metal_internal.h"

#include <Block.h>
#include <deque>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <thread>
#include <unordered_set>

namespace mpsemu {
namespace {

std::atomic<long> g_live_command_buffers{0};
std::atomic<long> g_uncommitted{0};
std::atomic<int> g_queue_counter{0};

struct Op {
  enum Kind { Kernel, Fill, Copy, Signal, Wait, Dispatch } kind;
  dispatch_block_t body = nullptr;      // Kernel (copied)
  id<MTLBuffer> a = nil, b = nil;        // Fill: a; Copy: a -> b
  size_t off_a = 0, off_b = 0, length = 0;
  uint8_t byte = 0;
  MTLSharedEvent* event = nil;           // Signal/Wait (retained by the op)
  uint64_t value = 0;
};

struct Completion {
  MTLCommandBuffer* cb;                  // one reference, released after the handlers ran
  void* st;                              // its CBState (read before any ordering is established)
  std::vector<MTLCommandBufferHandler> handlers;
  bool completion;                       // false: scheduled handlers only
};

struct QueueCore {
  int index = 0;
  std::string label;
  // timeline (Quiet)
  std::mutex m;
  std::condition_variable cv;
  struct Entry {
    MTLCommandBuffer* cb;
    void* st;  // its CBState: the timeline must not read the object before acquiring the commit
    bool ready;
  };
  std::deque<Entry> fifo;
  bool closing = false;
  // completion thread (Quiet)
  std::mutex cm;
  std::condition_variable ccv;
  std::deque<Completion> done;
  bool timeline_gone = false;  // the timeline has exited: the completion thread ends once drained
};

}  // namespace

struct CBState {
  MTLCommandQueue* queue = nil;  // retained
  std::shared_ptr<QueueCore> core;
  BOOL retained_refs = YES;
  // Encoding state: not synchronized (Metal command buffers are not thread-safe).
  std::vector<Op> ops;
  std::vector<id> refs;  // resources retained until completion (one reference each)
  std::unordered_set<void*> ref_set;
  std::vector<MTLCommandBufferHandler> completed;
  std::vector<MTLCommandBufferHandler> scheduled;
  id open_encoder = nil;  // not retained (the encoder retains the buffer)
  bool commit_called = false;
  bool enqueued = false;
  NSString* label = nil;
  // Shared with the timeline and waiters.
  std::atomic<ThreadRec*> user{nullptr};
  std::atomic<NSUInteger> status{MTLCommandBufferStatusNotEnqueued};
  std::mutex m;  // Quiet: the flags below
  std::condition_variable cv;
  bool scheduled_flag = false, done_flag = false, handed_off = false;
  std::vector<MTLCommandBufferHandler> late;  // completed handlers added after commit
  bool warned_wait = false;
  double start_time = 0, end_time = 0;
  char commit_token = 0, schedule_token = 0, complete_token = 0, late_token = 0;
};

struct EncState {
  MTLCommandBuffer* cb = nil;  // retained
  CBState* cbs = nullptr;
  bool ended = false;
  bool compute = true;
  NSString* label = nil;
};

namespace {

thread_local unsigned t_guard_calls = 0;

// Marks a command buffer as in use by this thread for the duration of one call (see the file
// comment). Relaxed: the mark itself orders nothing.
struct UseGuard {
  CBState* st;
  bool owner = false;
  UseGuard(CBState* s, const char* what) : st(s) {
    ThreadRec* me = self_thread();
    ThreadRec* expected = nullptr;
    if (st->user.compare_exchange_strong(expected, me, std::memory_order_relaxed)) {
      owner = true;
    } else if (expected != me) {
      char other[sizeof expected->name];
      {
        Quiet quiet;
        memcpy(other, expected->name, sizeof other);
      }
      violation("command buffer used by two threads at once: %s on %s while %s is inside a call on the same buffer",
                what, me->name, other);
    }
    // Give a concurrent user a chance to run into the mark on a machine with few cores.
    if ((++t_guard_calls & 7) == 0) sched_yield();
  }
  ~UseGuard() {
    if (owner) st->user.store(nullptr, std::memory_order_relaxed);
  }
};

void push_completion(QueueCore* core, Completion c) {
  Quiet quiet;
  std::lock_guard<std::mutex> lock(core->cm);
  core->done.push_back(std::move(c));
  core->ccv.notify_one();
}

void execute(const Op& op, const char* who) {
  switch (op.kind) {
    case Op::Kernel:
      op.body();
      break;
    case Op::Fill: {
      uint8_t* p;
      if (buffer_range(op.a, op.off_a, op.length, &p)) memset(p, op.byte, op.length);
      break;
    }
    case Op::Copy: {
      uint8_t *src, *dst;
      if (buffer_range(op.a, op.off_a, op.length, &src) && buffer_range(op.b, op.off_b, op.length, &dst)) {
        memmove(dst, src, op.length);
      }
      break;
    }
    case Op::Signal:
      event_set_value(op.event, op.value);
      break;
    case Op::Wait:
      event_wait_value(op.event, op.value, who);
      break;
    case Op::Dispatch:
      break;
  }
}

void timeline_main(std::shared_ptr<QueueCore> core) {
  set_thread_role("gpu timeline %d", core->index);
  const char* who = self_thread()->name;
  Jitter jitter((uint64_t)core->index * 2 + 1);
  for (;;) {
    MTLCommandBuffer* cb;
    CBState* st;
    {
      Quiet quiet;
      std::unique_lock<std::mutex> lock(core->m);
      core->cv.wait(lock, [&] { return (!core->fifo.empty() && core->fifo.front().ready) || (core->closing && core->fifo.empty()); });
      if (core->fifo.empty()) break;
      cb = core->fifo.front().cb;
      st = static_cast<CBState*>(core->fifo.front().st);
      core->fifo.pop_front();
    }
    hb_acquire(&st->commit_token);
    st->start_time = (double)now_ns() * 1e-9;
    std::vector<MTLCommandBufferHandler> scheduled;
    scheduled.swap(st->scheduled);
    hb_release(&st->schedule_token);
    st->status.store(MTLCommandBufferStatusScheduled, std::memory_order_release);
    {
      Quiet quiet;
      std::lock_guard<std::mutex> lock(st->m);
      st->scheduled_flag = true;
      st->cv.notify_all();
    }
    if (!scheduled.empty()) push_completion(core.get(), Completion{[cb retain], st, std::move(scheduled), false});

    {
      AutoreleaseScope pool;  // what kernels autorelease is released when the buffer's work is done
      for (const Op& op : st->ops) {
        jitter.delay();
        execute(op, who);
      }
    }
    jitter.delay();
    st->end_time = (double)now_ns() * 1e-9;

    // Completion: drop what the buffer held for the GPU, then publish.
    std::vector<Op> ops;
    ops.swap(st->ops);
    std::vector<id> refs;
    refs.swap(st->refs);
    st->ref_set.clear();
    for (Op& op : ops) {
      if (op.body) Block_release(op.body);
      [op.event release];
    }
    for (id r : refs) [r release];
    std::vector<MTLCommandBufferHandler> handlers;
    handlers.swap(st->completed);
    hb_release(&st->complete_token);
    st->status.store(MTLCommandBufferStatusCompleted, std::memory_order_release);
    {
      Quiet quiet;
      std::lock_guard<std::mutex> lock(st->m);
      st->done_flag = true;
      st->handed_off = true;
      for (auto& h : st->late) handlers.push_back(h);
      st->late.clear();
      st->cv.notify_all();
    }
    // The timeline's reference (taken at commit) goes with the completion.
    push_completion(core.get(), Completion{cb, st, std::move(handlers), true});
  }
  Quiet quiet;
  std::lock_guard<std::mutex> lock(core->cm);
  core->timeline_gone = true;
  core->ccv.notify_all();
}

void completion_main(std::shared_ptr<QueueCore> core) {
  set_thread_role("completion %d", core->index);
  Jitter jitter((uint64_t)core->index * 2 + 2);
  for (;;) {
    Completion c;
    {
      Quiet quiet;
      std::unique_lock<std::mutex> lock(core->cm);
      core->ccv.wait(lock, [&] { return !core->done.empty() || core->timeline_gone; });
      if (core->done.empty()) break;
      c = std::move(core->done.front());
      core->done.pop_front();
    }
    CBState* st = static_cast<CBState*>(c.st);
    hb_acquire(c.completion ? &st->complete_token : &st->schedule_token);
    if (c.completion) hb_acquire(&st->late_token);
    if (c.completion) jitter.delay();
    MTLCommandBuffer* cb = c.cb;
    for (MTLCommandBufferHandler h : c.handlers) {
      run_block_in_pool(^{
        h(cb);
      });
      Block_release(h);
    }
    [cb release];
    if (c.completion) work_end();
  }
}

bool encoder_usable(EncState* e, const char* what) {
  if (e->ended) {
    violation("%s on an encoder after -endEncoding", what);
    return false;
  }
  NSUInteger s = e->cbs->status.load(std::memory_order_relaxed);
  if (s >= MTLCommandBufferStatusCommitted) {
    violation("%s into a command buffer that was already committed", what);
    return false;
  }
  return true;
}

void keep(CBState* st, id resource) {
  if (resource && st->retained_refs && st->ref_set.insert((void*)resource).second) st->refs.push_back([resource retain]);
}

}  // namespace
}  // namespace mpsemu

using namespace mpsemu;

// ---------------------------------------------------------------------------------------------
@implementation MTLCommandQueue

- (instancetype)initWithDevice:(id<MTLDevice>)device {
  (void)device;
  auto core = std::make_shared<QueueCore>();
  core->index = g_queue_counter.fetch_add(1, std::memory_order_relaxed) + 1;
  set_object_state(self, new std::shared_ptr<QueueCore>(core));
  std::thread(timeline_main, core).detach();
  std::thread(completion_main, core).detach();
  return self;
}

- (void)dealloc {
  auto* holder = static_cast<std::shared_ptr<QueueCore>*>(object_state(self));
  {
    Quiet quiet;
    std::lock_guard<std::mutex> lock((*holder)->m);
    (*holder)->closing = true;
    (*holder)->cv.notify_all();
  }
  delete holder;
  [super dealloc];
}


- (id<MTLDevice>)device {
  return [MTLDevice sharedDevice];
}

- (NSString*)label {
  return [NSString stringWithUTF8String:(*static_cast<std::shared_ptr<QueueCore>*>(object_state(self)))->label.c_str()];
}

- (void)setLabel:(NSString*)label {
  (*static_cast<std::shared_ptr<QueueCore>*>(object_state(self)))->label = label ? [label UTF8String] : "";
}

- (id<MTLCommandBuffer>)commandBuffer {
  return [[[MTLCommandBuffer alloc] initWithQueue:self retainedReferences:YES] autorelease];
}

- (id<MTLCommandBuffer>)commandBufferWithUnretainedReferences {
  return [[[MTLCommandBuffer alloc] initWithQueue:self retainedReferences:NO] autorelease];
}

@end

// ---------------------------------------------------------------------------------------------
@implementation MTLCommandBuffer

- (instancetype)initWithQueue:(MTLCommandQueue*)queue retainedReferences:(BOOL)retained {
  auto* st = new CBState;
  st->queue = [queue retain];
  st->core = *static_cast<std::shared_ptr<QueueCore>*>(object_state(queue));
  st->retained_refs = retained;
  set_object_state(self, st);
  g_live_command_buffers.fetch_add(1, std::memory_order_relaxed);
  g_uncommitted.fetch_add(1, std::memory_order_relaxed);
  return self;
}

- (void)dealloc {
  CBState* st = state_of<CBState>(self);
  if (!st->commit_called) g_uncommitted.fetch_sub(1, std::memory_order_relaxed);
  for (Op& op : st->ops) {
    if (op.body) Block_release(op.body);
    [op.event release];
  }
  for (id r : st->refs) [r release];
  for (auto h : st->completed) Block_release(h);
  for (auto h : st->scheduled) Block_release(h);
  [st->label release];
  [st->queue release];
  delete st;
  g_live_command_buffers.fetch_sub(1, std::memory_order_relaxed);
  [super dealloc];
}

- (id<MTLDevice>)device {
  return [MTLDevice sharedDevice];
}

- (id<MTLCommandQueue>)commandQueue {
  return state_of<CBState>(self)->queue;
}

- (NSString*)label {
  return state_of<CBState>(self)->label;
}

- (void)setLabel:(NSString*)label {
  CBState* st = state_of<CBState>(self);
  NSString* old = st->label;
  st->label = [label copy];
  [old release];
}

- (BOOL)retainedReferences {
  return state_of<CBState>(self)->retained_refs;
}

- (MTLCommandBufferStatus)status {
  return state_of<CBState>(self)->status.load(std::memory_order_acquire);
}

- (NSError*)error {
  return nil;
}

- (double)kernelStartTime {
  return [self GPUStartTime];
}

- (double)kernelEndTime {
  return [self GPUEndTime];
}

- (double)GPUStartTime {
  CBState* st = state_of<CBState>(self);
  return st->status.load(std::memory_order_acquire) >= MTLCommandBufferStatusCompleted ? st->start_time : 0.0;
}

- (double)GPUEndTime {
  CBState* st = state_of<CBState>(self);
  return st->status.load(std::memory_order_acquire) >= MTLCommandBufferStatusCompleted ? st->end_time : 0.0;
}

- (void)enqueue {
  CBState* st = state_of<CBState>(self);
  UseGuard guard(st, "-enqueue");
  if (st->enqueued || st->commit_called) return;
  st->enqueued = true;
  st->status.store(MTLCommandBufferStatusEnqueued, std::memory_order_relaxed);
  Quiet quiet;
  std::lock_guard<std::mutex> lock(st->core->m);
  st->core->fifo.push_back(QueueCore::Entry{self, st, false});
}

- (void)commit {
  CBState* st = state_of<CBState>(self);
  UseGuard guard(st, "-commit");
  if (st->commit_called) {
    violation("command buffer committed twice");
    return;
  }
  if (st->open_encoder) {
    violation("command buffer committed while an encoder is open (-endEncoding was not called)");
  }
  st->commit_called = true;
  g_uncommitted.fetch_sub(1, std::memory_order_relaxed);
  [self retain];  // the timeline's reference, released after the completed handlers ran
  work_begin();
  hb_release(&st->commit_token);
  st->status.store(MTLCommandBufferStatusCommitted, std::memory_order_relaxed);
  Quiet quiet;
  std::lock_guard<std::mutex> lock(st->core->m);
  bool found = false;
  for (auto& e : st->core->fifo) {
    if (e.cb == self) {
      e.ready = true;
      found = true;
    }
  }
  if (!found) st->core->fifo.push_back(QueueCore::Entry{self, st, true});
  st->core->cv.notify_all();
}

- (void)waitUntilScheduled {
  CBState* st = state_of<CBState>(self);
  {
    Quiet quiet;
    std::unique_lock<std::mutex> lock(st->m);
    st->cv.wait(lock, [&] { return st->scheduled_flag; });
  }
  hb_acquire(&st->schedule_token);
}

- (void)waitUntilCompleted {
  CBState* st = state_of<CBState>(self);
  {
    Quiet quiet;
    std::unique_lock<std::mutex> lock(st->m);
    while (!st->done_flag) {
      if (!st->cv.wait_for(lock, std::chrono::seconds(2), [&] { return st->done_flag; })) {
        if (!st->warned_wait) {
          st->warned_wait = true;
          fprintf(stderr, "mpsemu: warning: %s has waited 2 s in -waitUntilCompleted for a command buffer %s\n",
                  self_thread()->name,
                  st->status.load(std::memory_order_relaxed) < MTLCommandBufferStatusCommitted
                      ? "that was never committed (Apple waits forever)"
                      : "whose GPU work has not finished (an event wait that is never signaled?)");
        }
      }
    }
  }
  hb_acquire(&st->complete_token);
}

- (void)addScheduledHandler:(MTLCommandBufferHandler)block {
  CBState* st = state_of<CBState>(self);
  UseGuard guard(st, "-addScheduledHandler:");
  if (st->commit_called) {
    violation("-addScheduledHandler: after the command buffer was committed");
    return;
  }
  st->scheduled.push_back(Block_copy(block));
}

- (void)addCompletedHandler:(MTLCommandBufferHandler)block {
  CBState* st = state_of<CBState>(self);
  UseGuard guard(st, "-addCompletedHandler:");
  if (!st->commit_called) {
    st->completed.push_back(Block_copy(block));
    return;
  }
  violation("-addCompletedHandler: after the command buffer was committed (Metal asserts)");
  MTLCommandBufferHandler copy = Block_copy(block);
  hb_release(&st->late_token);
  bool now = false;
  {
    Quiet quiet;
    std::lock_guard<std::mutex> lock(st->m);
    if (st->handed_off) now = true;
    else st->late.push_back(copy);
  }
  if (now) {
    // Already complete: run it on the completion thread after what is queued there.
    work_begin();
    Completion c{[self retain], st, std::vector<MTLCommandBufferHandler>{copy}, true};
    hb_release(&st->complete_token);
    push_completion(st->core.get(), std::move(c));
  }
}

- (void)encodeSignalEvent:(id<MTLEvent>)event value:(uint64_t)value {
  CBState* st = state_of<CBState>(self);
  UseGuard guard(st, "-encodeSignalEvent:value:");
  if (st->commit_called) {
    violation("-encodeSignalEvent:value: into a command buffer that was already committed");
    return;
  }
  if (st->open_encoder) violation("-encodeSignalEvent:value: while an encoder is open");
  if (![(id)event isKindOfClass:[MTLSharedEvent class]]) fatal_violation("-encodeSignalEvent: with an event that is not an emulated MTLSharedEvent");
  Op op{Op::Signal};
  op.event = [(MTLSharedEvent*)event retain];
  op.value = value;
  st->ops.push_back(op);
}

- (void)encodeWaitForEvent:(id<MTLEvent>)event value:(uint64_t)value {
  CBState* st = state_of<CBState>(self);
  UseGuard guard(st, "-encodeWaitForEvent:value:");
  if (st->commit_called) {
    violation("-encodeWaitForEvent:value: into a command buffer that was already committed");
    return;
  }
  if (st->open_encoder) violation("-encodeWaitForEvent:value: while an encoder is open");
  if (![(id)event isKindOfClass:[MTLSharedEvent class]]) fatal_violation("-encodeWaitForEvent: with an event that is not an emulated MTLSharedEvent");
  Op op{Op::Wait};
  op.event = [(MTLSharedEvent*)event retain];
  op.value = value;
  st->ops.push_back(op);
}

- (id)openEncoderOfClass:(Class)cls named:(const char*)what {
  CBState* st = state_of<CBState>(self);
  UseGuard guard(st, what);
  if (st->commit_called) {
    violation("%s on a command buffer that was already committed", what);
    return nil;
  }
  if (st->open_encoder) violation("%s while another encoder of the command buffer is open (-endEncoding first)", what);
  id enc = [[cls alloc] init];
  auto* e = new EncState;
  e->cb = [self retain];
  e->cbs = st;
  e->compute = cls == [MTLComputeCommandEncoder class];
  set_object_state(enc, e);
  st->open_encoder = enc;
  return [enc autorelease];
}

- (id<MTLComputeCommandEncoder>)computeCommandEncoder {
  return [self openEncoderOfClass:[MTLComputeCommandEncoder class] named:"-computeCommandEncoder"];
}

- (id<MTLComputeCommandEncoder>)computeCommandEncoderWithDispatchType:(MTLDispatchType)dispatchType {
  (void)dispatchType;
  return [self openEncoderOfClass:[MTLComputeCommandEncoder class] named:"-computeCommandEncoderWithDispatchType:"];
}

- (id<MTLBlitCommandEncoder>)blitCommandEncoder {
  return [self openEncoderOfClass:[MTLBlitCommandEncoder class] named:"-blitCommandEncoder"];
}

- (void)pushDebugGroup:(NSString*)string {
  (void)string;
}

- (void)popDebugGroup {
}

@end

// ---------------------------------------------------------------------------------------------
// Shared by both encoder classes.
static void encoder_end(id self, EncState* e) {
  UseGuard guard(e->cbs, "-endEncoding");
  if (e->ended) {
    violation("-endEncoding called twice on one encoder");
    return;
  }
  e->ended = true;
  if (e->cbs->open_encoder == self) e->cbs->open_encoder = nil;
}

static void encoder_dealloc(id self, EncState* e) {
  if (!e->ended) {
    violation("command encoder released without -endEncoding (Metal asserts)");
    if (e->cbs->open_encoder == self) e->cbs->open_encoder = nil;
  }
  [e->label release];
  [e->cb release];
  delete e;
}

@implementation MTLComputeCommandEncoder

- (void)dealloc {
  encoder_dealloc(self, state_of<EncState>(self));
  [super dealloc];
}

- (id<MTLDevice>)device {
  return [MTLDevice sharedDevice];
}

- (NSString*)label {
  return state_of<EncState>(self)->label;
}

- (void)setLabel:(NSString*)label {
  EncState* e = state_of<EncState>(self);
  NSString* old = e->label;
  e->label = [label copy];
  [old release];
}

- (MTLDispatchType)dispatchType {
  return MTLDispatchTypeSerial;
}

- (void)endEncoding {
  encoder_end(self, state_of<EncState>(self));
}

- (void)pushDebugGroup:(NSString*)string {
  (void)string;
}

- (void)popDebugGroup {
}

- (void)insertDebugSignpost:(NSString*)string {
  (void)string;
}

- (void)setComputePipelineState:(id<MTLComputePipelineState>)state {
  EncState* e = state_of<EncState>(self);
  UseGuard guard(e->cbs, "-setComputePipelineState:");
  if (!encoder_usable(e, "-setComputePipelineState:")) return;
  keep(e->cbs, state);
}

- (void)setBuffer:(id<MTLBuffer>)buffer offset:(NSUInteger)offset atIndex:(NSUInteger)index {
  (void)offset;
  (void)index;
  EncState* e = state_of<EncState>(self);
  UseGuard guard(e->cbs, "-setBuffer:offset:atIndex:");
  if (!encoder_usable(e, "-setBuffer:offset:atIndex:")) return;
  keep(e->cbs, buffer);
}

- (void)setBufferOffset:(NSUInteger)offset atIndex:(NSUInteger)index {
  (void)offset;
  (void)index;
  EncState* e = state_of<EncState>(self);
  UseGuard guard(e->cbs, "-setBufferOffset:atIndex:");
  encoder_usable(e, "-setBufferOffset:atIndex:");
}

- (void)setBytes:(const void*)bytes length:(NSUInteger)length atIndex:(NSUInteger)index {
  (void)bytes;
  (void)length;
  (void)index;
  EncState* e = state_of<EncState>(self);
  UseGuard guard(e->cbs, "-setBytes:length:atIndex:");
  encoder_usable(e, "-setBytes:length:atIndex:");
}

- (void)setThreadgroupMemoryLength:(NSUInteger)length atIndex:(NSUInteger)index {
  (void)length;
  (void)index;
  EncState* e = state_of<EncState>(self);
  UseGuard guard(e->cbs, "-setThreadgroupMemoryLength:atIndex:");
  encoder_usable(e, "-setThreadgroupMemoryLength:atIndex:");
}

- (void)dispatchThreads:(MTLSize)threadsPerGrid threadsPerThreadgroup:(MTLSize)threadsPerThreadgroup {
  (void)threadsPerGrid;
  (void)threadsPerThreadgroup;
  EncState* e = state_of<EncState>(self);
  UseGuard guard(e->cbs, "-dispatchThreads:threadsPerThreadgroup:");
  if (!encoder_usable(e, "-dispatchThreads:threadsPerThreadgroup:")) return;
  e->cbs->ops.push_back(Op{Op::Dispatch});
}

- (void)dispatchThreadgroups:(MTLSize)threadgroupsPerGrid threadsPerThreadgroup:(MTLSize)threadsPerThreadgroup {
  (void)threadgroupsPerGrid;
  (void)threadsPerThreadgroup;
  EncState* e = state_of<EncState>(self);
  UseGuard guard(e->cbs, "-dispatchThreadgroups:threadsPerThreadgroup:");
  if (!encoder_usable(e, "-dispatchThreadgroups:threadsPerThreadgroup:")) return;
  e->cbs->ops.push_back(Op{Op::Dispatch});
}

@end

@implementation MTLBlitCommandEncoder

- (void)dealloc {
  encoder_dealloc(self, state_of<EncState>(self));
  [super dealloc];
}

- (id<MTLDevice>)device {
  return [MTLDevice sharedDevice];
}

- (NSString*)label {
  return state_of<EncState>(self)->label;
}

- (void)setLabel:(NSString*)label {
  EncState* e = state_of<EncState>(self);
  NSString* old = e->label;
  e->label = [label copy];
  [old release];
}

- (void)endEncoding {
  encoder_end(self, state_of<EncState>(self));
}

- (void)pushDebugGroup:(NSString*)string {
  (void)string;
}

- (void)popDebugGroup {
}

- (void)insertDebugSignpost:(NSString*)string {
  (void)string;
}

- (void)fillBuffer:(id<MTLBuffer>)buffer range:(NSRange)range value:(uint8_t)value {
  EncState* e = state_of<EncState>(self);
  UseGuard guard(e->cbs, "-fillBuffer:range:value:");
  if (!encoder_usable(e, "-fillBuffer:range:value:")) return;
  if (!buffer || range.location + range.length > [buffer length]) {
    violation("-fillBuffer:range:value: range [%lu, +%lu) outside a buffer of %lu bytes", (unsigned long)range.location,
              (unsigned long)range.length, (unsigned long)(buffer ? [buffer length] : 0));
    return;
  }
  keep(e->cbs, buffer);
  Op op{Op::Fill};
  op.a = buffer;
  op.off_a = range.location;
  op.length = range.length;
  op.byte = value;
  e->cbs->ops.push_back(op);
}

- (void)copyFromBuffer:(id<MTLBuffer>)sourceBuffer
          sourceOffset:(NSUInteger)sourceOffset
              toBuffer:(id<MTLBuffer>)destinationBuffer
     destinationOffset:(NSUInteger)destinationOffset
                  size:(NSUInteger)size {
  EncState* e = state_of<EncState>(self);
  UseGuard guard(e->cbs, "-copyFromBuffer:...");
  if (!encoder_usable(e, "-copyFromBuffer:sourceOffset:toBuffer:destinationOffset:size:")) return;
  if (!sourceBuffer || !destinationBuffer || sourceOffset + size > [sourceBuffer length] ||
      destinationOffset + size > [destinationBuffer length]) {
    violation("-copyFromBuffer:... of %lu bytes outside its buffers", (unsigned long)size);
    return;
  }
  keep(e->cbs, sourceBuffer);
  keep(e->cbs, destinationBuffer);
  Op op{Op::Copy};
  op.a = sourceBuffer;
  op.b = destinationBuffer;
  op.off_a = sourceOffset;
  op.off_b = destinationOffset;
  op.length = size;
  e->cbs->ops.push_back(op);
}

- (void)synchronizeResource:(id<MTLResource>)resource {
  EncState* e = state_of<EncState>(self);
  UseGuard guard(e->cbs, "-synchronizeResource:");
  if (!encoder_usable(e, "-synchronizeResource:")) return;
  keep(e->cbs, resource);
}

@end

// ---------------------------------------------------------------------------------------------
void mpsemu_encode_kernel(id<MTLComputeCommandEncoder> encoder, void (^body)(void)) {
  if (![(id)encoder isKindOfClass:[MTLComputeCommandEncoder class]]) {
    fatal_violation("mpsemu_encode_kernel: %p is not an emulated compute command encoder", (void*)encoder);
  }
  EncState* e = state_of<EncState>((id)encoder);
  UseGuard guard(e->cbs, "mpsemu_encode_kernel");
  if (!encoder_usable(e, "mpsemu_encode_kernel")) return;
  Op op{Op::Kernel};
  op.body = Block_copy(body);
  e->cbs->ops.push_back(op);
}

extern "C" {

size_t mpsemu_live_command_buffers(void) {
  long n = g_live_command_buffers.load(std::memory_order_relaxed);
  return n > 0 ? (size_t)n : 0;
}

size_t mpsemu_uncommitted_command_buffers(void) {
  long n = g_uncommitted.load(std::memory_order_relaxed);
  return n > 0 ? (size_t)n : 0;
}

}  // extern "C"
