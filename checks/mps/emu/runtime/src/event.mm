// mps-emu: MTLSharedEvent and MTLSharedEventListener.
//
// Semantics:
//  - signaledValue is a plain 64-bit value that every signal SETS: -encodeSignalEvent:value: when
//    the GPU timeline reaches it, and -setSignaledValue: from the CPU. It is not a maximum: if a
//    slower queue's signal of 3 lands after a faster queue's signal of 5, the value goes back to 3
//    (Apple documents no clamping, and code that assumes monotonic values is exactly the bug class
//    the emulator must expose).
//  - -encodeWaitForEvent:value: blocks its GPU timeline until signaledValue >= value (checked
//    whenever the value changes; a value that drops again after satisfying the wait does not undo
//    it).
//  - -notifyListener:atValue:block: runs the block once, on the listener's dispatch queue, when
//    signaledValue becomes >= value — immediately (asynchronously) if it already is. The block gets
//    the event and the value that satisfied it. Pending notifications die with the event.
//  - Happens-before: a signal happens before the waits, notifications and CPU reads of
//    signaledValue that observe the value it set (each signal has its own token; a reader acquires
//    the token of the signal whose value it read, not every earlier signal).
#include "metal_internal.h"

#include <Block.h>
#include <stdio.h>

namespace mpsemu {
namespace {

// One requested notification. Its address is also the happens-before token of the request: the
// notification block is ordered after -notifyListener:atValue:block: (and after the signal), but
// the thread that delivers it (a GPU timeline) is not ordered after the requesting thread.
struct Pending {
  uint64_t at;
  MTLSharedEventListener* listener;  // retained
  dispatch_queue_t queue;            // the listener's queue, read when the notification was requested
  MTLSharedEventNotificationBlock block;  // copied
};

struct EventState {
  std::mutex m;  // Quiet
  std::condition_variable cv;
  uint64_t value = 0;
  std::shared_ptr<char> token;  // the token of the signal that set `value`
  std::vector<Pending*> pending;
  NSString* label = nil;
};

struct ListenerState {
  dispatch_queue_t queue;  // retained
};

// Hands one notification to the listener's queue. The caller is ordered after the signal that
// satisfied it, and dispatch_async orders the block after the caller; the block acquires the
// request's token before touching what the requesting thread made. `queue` was read from the
// request in a Quiet scope.
void deliver(MTLSharedEvent* event, Pending* p, dispatch_queue_t queue, uint64_t value) {
  work_begin();
  dispatch_async(queue, ^{
    hb_acquire(p);
    p->block(event, value);
    Block_release(p->block);
    [p->listener release];
    {
      Quiet quiet;
      delete p;
    }
    work_end();
  });
}

}  // namespace

void event_set_value(MTLSharedEvent* event, uint64_t value) {
  EventState* st = state_of<EventState>(event);
  std::shared_ptr<char> token;
  {
    Quiet quiet;
    token = std::make_shared<char>(0);
  }
  hb_release(token.get());
  std::vector<std::pair<Pending*, dispatch_queue_t>> due;
  {
    Quiet quiet;
    std::lock_guard<std::mutex> lock(st->m);
    st->value = value;
    st->token = token;
    for (size_t i = 0; i < st->pending.size();) {
      if (st->pending[i]->at <= value) {
        due.emplace_back(st->pending[i], st->pending[i]->queue);
        st->pending.erase(st->pending.begin() + (long)i);
      } else {
        ++i;
      }
    }
    st->cv.notify_all();
  }
  for (auto& d : due) deliver(event, d.first, d.second, value);
  Quiet quiet;
  token.reset();
}

void event_wait_value(MTLSharedEvent* event, uint64_t value, const char* waiter) {
  EventState* st = state_of<EventState>(event);
  std::shared_ptr<char> token;
  {
    Quiet quiet;
    std::unique_lock<std::mutex> lock(st->m);
    bool warned = false;
    while (st->value < value) {
      if (!st->cv.wait_for(lock, std::chrono::seconds(5), [&] { return st->value >= value; }) && !warned) {
        warned = true;
        fprintf(stderr, "mpsemu: warning: %s has waited 5 s for a shared event to reach %llu (it is at %llu)\n", waiter,
                (unsigned long long)value, (unsigned long long)st->value);
      }
    }
    token = st->token;
  }
  if (token) hb_acquire(token.get());
  Quiet quiet;
  token.reset();
}

}  // namespace mpsemu

using namespace mpsemu;

@implementation MTLSharedEvent

- (instancetype)initWithDevice:(id<MTLDevice>)device {
  (void)device;
  Quiet quiet;
  set_object_state(self, new EventState);
  return self;
}

- (void)dealloc {
  EventState* st = state_of<EventState>(self);
  for (Pending* p : st->pending) {
    hb_acquire(p);
    Block_release(p->block);
    [p->listener release];
    delete p;
  }
  [st->label release];
  {
    Quiet quiet;
    delete st;
  }
  [super dealloc];
}

- (id<MTLDevice>)device {
  return [MTLDevice sharedDevice];
}

- (NSString*)label {
  return state_of<EventState>(self)->label;
}

- (void)setLabel:(NSString*)label {
  EventState* st = state_of<EventState>(self);
  NSString* old = st->label;
  st->label = [label copy];
  [old release];
}

- (uint64_t)signaledValue {
  EventState* st = state_of<EventState>(self);
  uint64_t value;
  std::shared_ptr<char> token;
  {
    Quiet quiet;
    std::lock_guard<std::mutex> lock(st->m);
    value = st->value;
    token = st->token;
  }
  if (token) hb_acquire(token.get());
  Quiet quiet;
  token.reset();
  return value;
}

- (void)setSignaledValue:(uint64_t)value {
  event_set_value(self, value);
}

- (void)notifyListener:(MTLSharedEventListener*)listener
               atValue:(uint64_t)value
                 block:(MTLSharedEventNotificationBlock)block {
  if (!listener || !block) fatal_violation("-notifyListener:atValue:block: with a nil listener or block");
  EventState* st = state_of<EventState>(self);
  Pending* p = new Pending{value, [listener retain], state_of<ListenerState>(listener)->queue, Block_copy(block)};
  hb_release(p);
  dispatch_queue_t queue;
  {
    Quiet quiet;
    queue = p->queue;
  }
  bool now = false;
  uint64_t current = 0;
  std::shared_ptr<char> token;
  {
    Quiet quiet;
    std::lock_guard<std::mutex> lock(st->m);
    if (st->value >= value) {
      now = true;
      current = st->value;
      token = st->token;
    } else {
      st->pending.push_back(p);
    }
  }
  if (now) {
    if (token) hb_acquire(token.get());
    deliver(self, p, queue, current);
  }
  Quiet quiet;
  token.reset();
}

@end

@implementation MTLSharedEventListener

- (instancetype)init {
  dispatch_queue_t q = dispatch_queue_create("mpsemu.shared-event-listener", nullptr);
  self = [self initWithDispatchQueue:q];
  dispatch_release(q);
  return self;
}

- (instancetype)initWithDispatchQueue:(dispatch_queue_t)dispatchQueue {
  dispatch_retain(dispatchQueue);
  set_object_state(self, new ListenerState{dispatchQueue});
  return self;
}

- (void)dealloc {
  ListenerState* st = state_of<ListenerState>(self);
  dispatch_release(st->queue);
  delete st;
  [super dealloc];
}

- (dispatch_queue_t)dispatchQueue {
  return state_of<ListenerState>(self)->queue;
}

@end
