// mps-emu targeted tests: one interleaving per bug of the review (H1, H2, H3, M1, M2, M4) and per
// earlier finding whose fix must stay (turn-2 findings 1 and 2 of issue #16), each forced with
// gates (kernels that hold a queue's GPU timeline until the test opens them) and threads parked
// inside a stream's serial queue. Each passes on code without the bug and fails, with a message
// that names it, on code with it (a value check, a hang caught by a deadline, an emulator
// violation, or a sanitizer report: the test name says which build must see it, see run.sh).
//
// Usage: targeted NAME    (h1 h2 h3 m1 m2 m3 m4 m5 event-two-waiters event-ids turn2-event-reuse
// turn2-leak-prev);
// one test per process, so that each starts from a fresh allocator, event pool and stream pool.
#include "harness.h"

#include <algorithm>
#include <cinttypes>
#include <cstring>
#include <map>

using namespace mpsemu_test;
using namespace std::chrono_literals;
using at::mps::MPSStream;
using at::mps::SyncType;

namespace {

const char* g_test = "?";

bool result(const char* detail) {
  const bool pass = failures() == 0 && mpsemu_violations() == 0;
  if (failures() == 0 && mpsemu_violations() != 0) {
    fail(g_test, "%" PRIu64 " emulator violations, last: %s", mpsemu_violations(), mpsemu_last_violation());
  }
  std::printf("RESULT %s %s %s\n", g_test, pass ? "pass" : "fail", detail);
  std::fflush(stdout);
  return pass;
}

// A host-side flag a kernel sets when it runs.
struct Flag {
  std::atomic<int> value{0};
};

void encodeSet(MPSStream* s, Flag* f, int v) {
  encodeKernel(s, {}, ^() {
    f->value.store(v);
  });
}

MPSStream* poolStream(int64_t id) {
  return at::mps::getStreamByID(id);
}

// The allocator tests (h2, h3, m1's second part, m4) drive upstream's MPSAllocator.mm; v2.13.0 runs
// with a stand-in allocator instead (no v2.13-window text), so they are built for v2.11.0 only.
#define MPSEMU_UPSTREAM_ALLOCATOR (MPSEMU_TORCH_MINOR < 13)

#if MPSEMU_UPSTREAM_ALLOCATOR
// Sets the MPS allocator's high watermark so that at most `headroom` bytes more than the device
// has allocated now may be allocated.
void limitAllocations(size_t headroom) {
  at::mps::IMPSAllocator* a = at::mps::getIMPSAllocator();
  const double max = static_cast<double>(a->getRecommendedMaxMemory());
  const double current = static_cast<double>(a->getDriverAllocatedMemory());
  a->setHighWatermarkRatio((current + static_cast<double>(headroom)) / max);
}

// No high watermark (ratio 0).
void unlimitAllocations() {
  at::mps::getIMPSAllocator()->setHighWatermarkRatio(0.0);
}
#endif

// ------------------------------------------------------------------------------------------------
// H1: an event recorded on a busy stream P1 and then on an idle stream P2. P2's signal (the newer
// value) lands first; when P1 finishes, its older signal SETS the event's value back. A query must
// then still say "complete", and waits and synchronize() must return.
int testH1() {
  MPSStream* p1 = poolStream(1);
  MPSStream* p2 = poolStream(2);
  MPSStream* p3 = poolStream(3);
  Gate busy;
  encodeGate(p1, &busy);
  p1->synchronize(SyncType::COMMIT);

  c10::Event ev(c10::DeviceType::MPS);
  ev.record(p1->unwrap()); // behind the gate
  ev.record(p2->unwrap()); // P2 is idle: lands at once, unless ordered behind P1's signal
  std::this_thread::sleep_for(300ms);
  busy.open();
  guard()->synchronizeStream(p1->unwrap());
  guard()->synchronizeStream(p2->unwrap());

  if (!ev.query()) {
    fail(g_test, "query() is false after both streams the event was recorded on have finished (the busy stream's "
                 "older signal moved the event's value back)");
  }
  Flag ran;
  const bool waited = finishesWithin(5000ms, [&] {
    ev.block(p3->unwrap());
    encodeSet(p3, &ran, 1);
    guard()->synchronizeStream(p3->unwrap());
  });
  if (!waited || ran.value.load() != 1) {
    fail(g_test, "a stream that waits on the event did not finish within 5 s (its GPU wait is for a value the "
                 "event no longer reaches)");
    result("hang=wait");
    endNow(1);
  }
  const bool synced = finishesWithin(5000ms, [&] { ev.synchronize(); });
  if (!synced) {
    fail(g_test, "synchronize() on the event did not return within 5 s");
    result("hang=synchronize");
    endNow(1);
  }
  return result("recorded-on=busy,idle") ? 0 : 1;
}

#if MPSEMU_UPSTREAM_ALLOCATOR
// ------------------------------------------------------------------------------------------------
// H2: emptyCache() walks the cached buffers; releasing a busy one hops onto its owner stream's
// queue with the allocator's lock dropped. Meanwhile another thread (on the owner stream, so the
// reuse rule allows it) takes the next cached buffer out of the list. The walk must not touch the
// node that was removed (AddressSanitizer: heap-use-after-free).
int testH2() {
  MPSStream* s = poolStream(1);
  at::mps::setCurrentMPSStream(s);
  at::mps::IMPSAllocator* alloc = at::mps::getIMPSAllocator();
  Gate busy, queueHeld;
  encodeGate(s, &busy);
  s->synchronize(SyncType::COMMIT);

  // two busy cached buffers of one heap, the smaller one first in the walk; a third keeps the heap
  c10::DataPtr keep = alloc->allocate(16 << 10);
  c10::DataPtr b1 = alloc->allocate(64 << 10);
  c10::DataPtr b2 = alloc->allocate(128 << 10);
  encodeKernel(s, {bufferOf(b1), bufferOf(b2)}, ^() {
  });
  s->synchronize(SyncType::COMMIT);
  b1.clear();
  b2.clear();

  // a thread parked inside the owner stream's queue
  std::thread holder([&] {
    at::mps::dispatch_sync_with_rethrow(s->queue(), ^() {
      queueHeld.wait();
    });
  });
  queueHeld.waitArrived();

  std::atomic<bool> emptied{false};
  std::thread walker([&] {
    alloc->emptyCache();
    emptied = true;
  });
  std::this_thread::sleep_for(500ms); // the walker is now waiting for the owner's queue, lock dropped

  c10::DataPtr taken;
  std::thread taker([&] {
    at::mps::setCurrentMPSStream(s);
    taken = alloc->allocate(128 << 10);
  });
  const bool tookInTime = finishesWithin(3000ms, [&] { taker.join(); });
  queueHeld.open();
  holder.join();
  if (!tookInTime) {
    // the walker kept the allocator's lock while it waited (no use-after-free possible); fine
    std::printf("h2: the second allocation waited for the walk (the allocator kept its lock)\n");
    if (!finishesWithin(10000ms, [&] { taker.join(); })) {
      fail(g_test, "the second allocation did not return within 10 s of the queue being released");
      busy.open();
      result("hang=allocate");
      endNow(1);
    }
  }
  if (!finishesWithin(10000ms, [&] { walker.join(); })) {
    fail(g_test, "emptyCache() did not return within 10 s of the queue being released");
    busy.open();
    result("hang=emptyCache");
    endNow(1);
  }
  busy.open();

  // the buffer the second thread got must work
  Flag okFlag;
  Flag* ok = &okFlag;
  id<MTLBuffer> t = bufferOf(taken);
  encodeKernel(s, {t}, ^() {
    auto* p = static_cast<uint32_t*>([t contents]);
    for (uint32_t k = 0; k < (128u << 10) / 4; ++k) p[k] = k ^ 0x5a5a5a5au;
    bool good = true;
    for (uint32_t k = 0; k < (128u << 10) / 4; ++k) good = good && p[k] == (k ^ 0x5a5a5a5au);
    ok->value = good ? 1 : 2;
  });
  guard()->synchronizeStream(s->unwrap());
  if (ok->value.load() != 1) {
    fail(g_test, "the buffer allocated during emptyCache() did not hold what a kernel wrote (flag %d)", ok->value.load());
  }
  taken.clear();
  keep.clear();
  guard()->synchronizeDevice(0);
  return result(emptied ? "empty-cache=returned" : "empty-cache=?") ? 0 : 1;
}

// ------------------------------------------------------------------------------------------------
// H3: inside a block of its own stream's queue, with the stream's compute encoder open (an op in
// the middle of encoding), a thread allocates under memory pressure; the allocator releases a busy
// cached buffer of that stream. The op's encoder must still be open afterwards: encoding into it
// again must work (the emulator reports encoding into an ended encoder).
int testH3() {
  MPSStream* s = poolStream(1);
  at::mps::setCurrentMPSStream(s);
  at::mps::IMPSAllocator* alloc = at::mps::getIMPSAllocator();
  Gate busy;
  encodeGate(s, &busy);
  s->synchronize(SyncType::COMMIT);

  c10::DataPtr keep = alloc->allocate(16 << 10); // keeps the heap of `cached` alive
  c10::DataPtr cached = alloc->allocate(16 << 10);
  encodeKernel(s, {bufferOf(cached)}, ^() {
  });
  s->synchronize(SyncType::COMMIT);
  cached.clear(); // cached, busy, owned by s

  limitAllocations(8 << 10); // the next 16 KiB allocation is over the limit
  Flag firstFlag, secondFlag;
  Flag* first = &firstFlag;
  Flag* second = &secondFlag;
  __block bool oom = false;
  __block std::string what;
  at::mps::dispatch_sync_with_rethrow(s->queue(), ^() {
    id<MTLComputeCommandEncoder> encoder = s->commandEncoder();
    mpsemu_encode_kernel(encoder, ^() {
      first->value = 1;
    });
    try {
      c10::DataPtr more = at::mps::getIMPSAllocator()->allocate(16 << 10);
    } catch (const c10::Error& e) {
      oom = true;
      what = e.what_without_backtrace();
    }
    const uint64_t before = mpsemu_violations();
    mpsemu_encode_kernel(encoder, ^() {
      second->value = 1;
    });
    if (mpsemu_violations() != before) {
      fail(g_test, "the allocator ended the compute encoder of the op that was encoding on this stream (%s)",
           mpsemu_last_violation());
    }
  });
  unlimitAllocations();
  busy.open();
  guard()->synchronizeStream(s->unwrap());
  if (first->value.load() != 1 || second->value.load() != 1) {
    fail(g_test, "kernels encoded around the allocation did not both run: first %d, second %d", first->value.load(),
         second->value.load());
  }
  std::printf("h3: the allocation over the limit %s\n", oom ? ("raised: " + what.substr(0, 120)).c_str() : "succeeded");
  keep.clear();
  guard()->synchronizeDevice(0);
  return result(oom ? "allocation=raised" : "allocation=succeeded") ? 0 : 1;
}

#endif // MPSEMU_UPSTREAM_ALLOCATOR

// Two threads meet inside blocks of their own streams' queues (two ops encoding at once).
struct Rendezvous {
  std::mutex m;
  std::condition_variable cv;
  int inside = 0;
  void arrive() {
    std::unique_lock<std::mutex> lock(m);
    ++inside;
    cv.notify_all();
    cv.wait(lock, [this] { return inside == 2; });
  }
};

// ------------------------------------------------------------------------------------------------
// M1: a thread inside a block of stream A's queue hops onto B's queue while another thread inside
// a block of B hops onto A: with both hops blocking that is a deadlock (the emulator reports the
// dispatch_sync cycle and aborts). (a) through the stream API: each op records an event on the
// other stream and commits it; (b, v2.11.0) through the allocator: each op allocates under memory
// pressure and the allocator releases a busy cached buffer owned by the other thread's stream.
// Both threads must return, and what they recorded must complete.
int testM1() {
  MPSStream* a = poolStream(1);
  MPSStream* b = poolStream(2);
  {
    Rendezvous both;
    Rendezvous* rv = &both;
    c10::Event onA(c10::DeviceType::MPS), onB(c10::DeviceType::MPS);
    Flag ranAFlag, ranBFlag;
    auto op = [rv](MPSStream* own, MPSStream* other, c10::Event* ev, Flag* ran) {
      at::mps::setCurrentMPSStream(own);
      at::mps::dispatch_sync_with_rethrow(own->queue(), ^() {
        rv->arrive();
        mpsemu_encode_kernel(own->commandEncoder(), ^() {
          ran->value = 1;
        });
        ev->record(other->unwrap());
        other->synchronize(SyncType::COMMIT);
      });
    };
    std::thread ta([&] { op(a, b, &onB, &ranAFlag); });
    std::thread tb([&] { op(b, a, &onA, &ranBFlag); });
    if (!finishesWithin(10000ms, [&] {
          ta.join();
          tb.join();
        })) {
      fail(g_test, "two ops, each recording an event on the other's stream from inside its own stream's block, did "
                   "not return within 10 s (a cross-stream hop cycle)");
      result("hang=record");
      endNow(1);
    }
    if (!finishesWithin(5000ms, [&] {
          onA.synchronize();
          onB.synchronize();
          guard()->synchronizeDevice(0);
        })) {
      fail(g_test, "the events recorded across the two streams did not complete within 5 s");
      result("hang=synchronize");
      endNow(1);
    }
    if (!onA.query() || !onB.query() || ranAFlag.value.load() != 1 || ranBFlag.value.load() != 1) {
      fail(g_test, "after synchronizing: events complete %d/%d, kernels ran %d/%d", onA.query(), onB.query(),
           ranAFlag.value.load(), ranBFlag.value.load());
    }
  }
#if MPSEMU_UPSTREAM_ALLOCATOR
  at::mps::IMPSAllocator* alloc = at::mps::getIMPSAllocator();
  Gate busyA, busyB;
  encodeGate(a, &busyA);
  encodeGate(b, &busyB);
  a->synchronize(SyncType::COMMIT);
  b->synchronize(SyncType::COMMIT);

  // cached busy buffers: 32 KiB owned by A, 16 KiB owned by B; thread A asks for 16 KiB (finds
  // B's), thread B for 32 KiB (finds A's)
  auto make = [&](MPSStream* s, size_t bytes, c10::DataPtr* keep) {
    at::mps::setCurrentMPSStream(s);
    *keep = alloc->allocate(16 << 10);
    c10::DataPtr d = alloc->allocate(bytes);
    encodeKernel(s, {bufferOf(d)}, ^() {
    });
    s->synchronize(SyncType::COMMIT);
  };
  c10::DataPtr keepA, keepB;
  std::thread([&] { make(a, 32 << 10, &keepA); }).join();
  std::thread([&] { make(b, 16 << 10, &keepB); }).join();

  limitAllocations(8 << 10);
  Rendezvous both;
  Rendezvous* rv = &both;
  std::atomic<int> returned{0};
  auto op = [&](MPSStream* s, size_t bytes) {
    at::mps::setCurrentMPSStream(s);
    at::mps::dispatch_sync_with_rethrow(s->queue(), ^() {
      rv->arrive(); // both threads inside their own stream's block
      try {
        c10::DataPtr d = at::mps::getIMPSAllocator()->allocate(bytes);
      } catch (const c10::Error&) {
        // over the limit: raising is fine, hanging is not
      }
    });
    returned++;
  };
  std::thread ta([&] { op(a, 16 << 10); });
  std::thread tb([&] { op(b, 32 << 10); });
  const bool done = finishesWithin(10000ms, [&] {
    ta.join();
    tb.join();
  });
  if (!done) {
    fail(g_test, "two threads allocating inside their own streams' blocks did not return within 10 s (%d returned): "
                 "a cross-stream hop cycle", returned.load());
    busyA.open();
    busyB.open();
    result("hang=allocate");
    endNow(1);
  }
  unlimitAllocations();
  busyA.open();
  busyB.open();
  keepA.clear();
  keepB.clear();
  guard()->synchronizeDevice(0);
  return result("parts=events,allocator") ? 0 : 1;
#else
  return result("parts=events") ? 0 : 1;
#endif
}

// ------------------------------------------------------------------------------------------------
// M2 (a): the event's listener is created on first use by whichever thread gets there: a record of
// a timing event (on its stream's queue) and a synchronize() on another thread, racing. (b): a
// timing event's completion listener belongs to the holder that recorded it; after the event goes
// back to the pool and to a new holder, a late listener of the earlier holder must not mark the new
// holder's recording complete: the new holder's synchronize() must wait for its own work.
// ThreadSanitizer sees the unsynchronized listener creation and the listener's writes racing
// reset(); (b) also checks the outcome.
int testM2() {
  MPSStream* p1 = poolStream(1);
  MPSStream* p2 = poolStream(2);
  {
    Gate busy;
    encodeGate(p1, &busy);
    p1->synchronize(SyncType::COMMIT);
    at::mps::MPSEventPtr ev = at::mps::getMPSEventPool()->acquireEvent(/*enable_timing*/ true, p1);
    at::mps::MPSEvent* e = ev.get();
    std::atomic<bool> waited{false};
    std::thread y([&] {
      // synchronizes as soon as the record below has made the event pending
      const auto until = Clock::now() + 5s;
      while (!waited && Clock::now() < until) {
        waited = e->synchronize();
        std::this_thread::yield();
      }
    });
    e->recordOn(p1, /*syncEvent*/ true);
    std::this_thread::sleep_for(100ms);
    busy.open();
    if (!finishesWithin(5000ms, [&] { y.join(); })) {
      fail(g_test, "synchronize() of a recorded timing event did not return within 5 s of its signal");
      result("hang=synchronize");
      endNow(1);
    }
    if (!waited) {
      fail(g_test, "synchronize() never saw the event pending (the record did not take effect)");
    }
  }
  guard()->synchronizeDevice(0);
  int early = 0;
  constexpr int kRounds = 20;
  for (int round = 0; round < kRounds && failures() == 0; ++round) {
    Gate busy1, busy2;
    encodeGate(p1, &busy1);
    {
      c10::Event first(c10::DeviceType::MPS, c10::EventFlag::BACKEND_DEFAULT); // timing: a listener per record
      first.record(p1->unwrap());
    } // back to the pool, its signal (and listener) pending
    busy1.open();
    guard()->synchronizeStream(p1->unwrap()); // settled: the pool may hand it out again

    Flag doneFlag;
    Flag* done = &doneFlag;
    encodeGate(p2, &busy2);
    encodeSet(p2, done, 1);
    c10::Event second(c10::DeviceType::MPS, c10::EventFlag::BACKEND_DEFAULT);
    second.record(p2->unwrap());
    if (finishesWithin(300ms, [&] { second.synchronize(); })) {
      ++early;
      fail(g_test, "round %d: synchronize() of a newly recorded event returned while its stream was still blocked "
                   "(the earlier holder's completion listener reached the new holder)", round);
    }
    busy2.open();
    if (!finishesWithin(5000ms, [&] { guard()->synchronizeStream(p2->unwrap()); })) {
      fail(g_test, "round %d: the stream did not finish within 5 s", round);
      result("hang=synchronizeStream");
      endNow(1);
    }
    if (done->value.load() != 1) {
      fail(g_test, "round %d: the work recorded ahead of the event did not run", round);
    }
  }
  guard()->synchronizeDevice(0);
  mpsemu_quiesce(10000);
  char detail[64];
  snprintf(detail, sizeof detail, "rounds=%d early=%d", kRounds, early);
  return result(detail) ? 0 : 1;
}

// ------------------------------------------------------------------------------------------------
// Two threads synchronize one pending event at once (c10 allows it: torch.mps.Event.synchronize()
// from two threads). Each call registers a listener that sets the event's one "completed" flag and
// wakes one waiter; each waiter clears the flag. Both must return.
int testEventTwoWaiters() {
  MPSStream* p1 = poolStream(1);
  for (int round = 0; round < 10; ++round) {
    Gate busy;
    encodeGate(p1, &busy);
    c10::Event ev(c10::DeviceType::MPS);
    ev.record(p1->unwrap());
    std::thread x([&] { ev.synchronize(); });
    std::thread y([&] { ev.synchronize(); });
    std::this_thread::sleep_for(50ms);
    busy.open();
    if (!finishesWithin(5000ms, [&] {
          x.join();
          y.join();
        })) {
      fail(g_test, "round %d: two threads synchronizing one event: not both returned within 5 s of its signal", round);
      result("hang=synchronize");
      endNow(1);
    }
  }
  return result("rounds=10") ? 0 : 1;
}

#if MPSEMU_UPSTREAM_ALLOCATOR
// ------------------------------------------------------------------------------------------------
// M4: memory is at the allocator's limit and the cached buffers of the requested size (17 of them,
// more than the reuse scan looks at) are busy on another stream, which finishes 100 ms later. An
// allocation on this stream must not fail with out-of-memory: that stream's work frees the memory.
int testM4() {
  MPSStream* other = poolStream(2);
  MPSStream* mine = poolStream(1);
  at::mps::IMPSAllocator* alloc = at::mps::getIMPSAllocator();
  Gate busy;
  encodeGate(other, &busy);
  other->synchronize(SyncType::COMMIT);
  std::thread([&] {
    at::mps::setCurrentMPSStream(other);
    std::vector<c10::DataPtr> held;
    std::vector<id<MTLBuffer>> bufs;
    for (int k = 0; k < 17; ++k) {
      held.push_back(alloc->allocate(64 << 10));
      bufs.push_back(bufferOf(held.back()));
    }
    encodeKernel(other, bufs, ^() {
    });
    other->synchronize(SyncType::COMMIT);
  }).join(); // all 17 freed: cached, busy on `other`

  limitAllocations(32 << 10);
  std::thread opener([&] {
    std::this_thread::sleep_for(100ms);
    busy.open();
  });
  at::mps::setCurrentMPSStream(mine);
  std::string error;
  c10::DataPtr got;
  try {
    got = alloc->allocate(64 << 10);
  } catch (const c10::Error& e) {
    error = e.what_without_backtrace();
  }
  opener.join();
  unlimitAllocations();
  if (!error.empty()) {
    fail(g_test, "out of memory while 17 cached buffers of the size were busy on another stream that was about to "
                 "finish: %s", error.substr(0, 200).c_str());
  }
  got.clear();
  guard()->synchronizeDevice(0);
  return result(error.empty() ? "allocation=succeeded" : "allocation=raised") ? 0 : 1;
}

// ------------------------------------------------------------------------------------------------
// M5: a buffer released while another stream still uses it leaves its space in the heap once that
// stream's work completes; the allocator must measure the heap's free space only then. Here one
// 8 MiB heap is filled with eight 1 MiB buffers; the last is used by a held-back kernel of another
// stream, freed, released (emptyCache) and the allocator asked to refresh (freeInactiveBuffers)
// while that kernel still holds it; then the kernel completes. A 1 MiB allocation then fits the
// space it left: no new heap may be made (a heap measured too early stays "full").
int testM5() {
  MPSStream* s = poolStream(1);
  MPSStream* other = poolStream(2);
  at::mps::setCurrentMPSStream(s);
  at::mps::IMPSAllocator* alloc = at::mps::getIMPSAllocator();
  std::vector<c10::DataPtr> fill;
  for (int k = 0; k < 8; ++k) {
    fill.push_back(alloc->allocate(1 << 20));
  }
  const size_t heaps = mpsemu_live_objects("MTLHeap");
  Gate busy;
  encodeGate(other, &busy);
  encodeKernel(other, {bufferOf(fill.back())}, ^() {
  });
  other->synchronize(SyncType::COMMIT);
  guard()->recordDataPtrOnStream(fill.back(), other->unwrap());
  fill.pop_back();
  alloc->emptyCache();          // released while the other stream's kernel holds it
  alloc->freeInactiveBuffers(); // a refresh while it is still held
  busy.open();
  guard()->synchronizeStream(other->unwrap());
  mpsemu_quiesce(10000);
  c10::DataPtr again = alloc->allocate(1 << 20);
  const size_t after = mpsemu_live_objects("MTLHeap");
  if (after != heaps) {
    fail(g_test, "a 1 MiB allocation that fits the space a released buffer left in its heap made %zu new heap(s) "
                 "(the heap's free space was measured while another stream still used the buffer)", after - heaps);
  }
  again.clear();
  fill.clear();
  guard()->synchronizeDevice(0);
  char detail[64];
  snprintf(detail, sizeof detail, "heaps-before=%zu heaps-after=%zu", heaps, after);
  return result(detail) ? 0 : 1;
}

// ------------------------------------------------------------------------------------------------
// Event ids: the event pool numbers each event it makes (the id c10 hands out as the event's
// handle). The allocator's per-buffer events (recordEvents, under the allocator's lock) and c10's
// events (under the pool's lock) are made by different threads at once; the numbering must not
// race (ThreadSanitizer), and the ids of live events must differ, also after the allocator's
// events went back to the pool and came out again as c10 events.
int testEventIds() {
  constexpr int kThreads = 8, kEach = 40;
  at::mps::IMPSAllocator* shared = at::mps::getIMPSAllocator(/*sharedAllocator*/ true);
  std::vector<std::vector<std::unique_ptr<c10::Event>>> events(kThreads);
  std::vector<std::vector<c10::DataPtr>> buffers(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      MPSStream* s = poolStream(1 + t);
      at::mps::setCurrentMPSStream(s);
      for (int k = 0; k < kEach; ++k) {
        if (t % 2 == 0) {
          events[t].push_back(std::make_unique<c10::Event>(c10::DeviceType::MPS));
          events[t].back()->record(s->unwrap());
        } else {
          buffers[t].push_back(shared->allocate(64));
          const void* ptr = buffers[t].back().get();
          at::mps::dispatch_sync_with_rethrow(s->queue(), ^() {
            shared->recordEvents({ptr});
          });
        }
      }
    });
  }
  for (auto& th : threads) {
    th.join();
  }
  guard()->synchronizeDevice(0);
  for (auto& b : buffers) {
    b.clear(); // their events go back to the pool, settled
  }
  MPSStream* s = poolStream(1);
  for (int k = 0; k < kThreads / 2 * kEach; ++k) {
    events[0].push_back(std::make_unique<c10::Event>(c10::DeviceType::MPS));
    events[0].back()->record(s->unwrap());
  }
  std::map<uintptr_t, int> seen;
  int live = 0;
  for (auto& list : events) {
    for (auto& e : list) {
      ++live;
      if (++seen[reinterpret_cast<uintptr_t>(e->eventId())] == 2) {
        fail(g_test, "two live c10 events share the MPS event id %zu", static_cast<size_t>(reinterpret_cast<uintptr_t>(e->eventId())));
      }
    }
  }
  guard()->synchronizeDevice(0);
  char detail[64];
  snprintf(detail, sizeof detail, "live-events=%d distinct-ids=%zu", live, seen.size());
  return result(detail) ? 0 : 1;
}
#endif // MPSEMU_UPSTREAM_ALLOCATOR

// ------------------------------------------------------------------------------------------------
// M3: an acquire looks at no more than a few pooled events (the patch's bound is 8), oldest first,
// and moves the unsettled ones it passed to the back, so that a settled event behind them is
// reached by a later acquire. Without the fix every acquire scans the whole pool and unsettled
// events keep their place: the first acquire below would reach the settled event behind nine
// unsettled ones.
uintptr_t mpsEventId(const c10::Event& e) {
  return reinterpret_cast<uintptr_t>(e.eventId());
}

int testM3() {
  constexpr int kUnsettled = 9; // one more than the scan bound
  MPSStream* p1 = poolStream(1);
  MPSStream* p2 = poolStream(2);
  Gate busy;
  encodeGate(p1, &busy);
  p1->synchronize(SyncType::COMMIT);

  std::vector<uintptr_t> pending_ids;
  std::vector<std::unique_ptr<c10::Event>> pending;
  for (int k = 0; k < kUnsettled; ++k) {
    pending.push_back(std::make_unique<c10::Event>(c10::DeviceType::MPS));
    pending.back()->record(p1->unwrap()); // behind the gate: its signal stays pending
    pending_ids.push_back(mpsEventId(*pending.back()));
  }
  for (auto& e : pending) {
    e.reset(); // back to the pool, in order, unsettled
  }
  uintptr_t settled_id = 0;
  {
    c10::Event settled(c10::DeviceType::MPS);
    settled.record(p2->unwrap()); // P2 is idle
    settled.synchronize();
    settled_id = mpsEventId(settled);
  } // back to the pool behind the nine, settled
  const auto known = [&](uintptr_t id) {
    return id == settled_id || std::find(pending_ids.begin(), pending_ids.end(), id) != pending_ids.end();
  };

  c10::Event first(c10::DeviceType::MPS);
  first.record(p2->unwrap());
  const uintptr_t first_id = mpsEventId(first);
  if (known(first_id)) {
    fail(g_test, "the first acquire took pooled event %zu from behind %d unsettled ones (it scanned the whole pool)",
         static_cast<size_t>(first_id), kUnsettled);
  }
  c10::Event second(c10::DeviceType::MPS);
  second.record(p2->unwrap());
  const uintptr_t second_id = mpsEventId(second);
  if (second_id != settled_id) {
    fail(g_test, "the second acquire got event %zu, not the settled pooled event %zu (the unsettled events the first "
                 "acquire passed were not moved to the back)",
         static_cast<size_t>(second_id), static_cast<size_t>(settled_id));
  }
  busy.open();
  guard()->synchronizeStream(p1->unwrap());
  guard()->synchronizeStream(p2->unwrap());
  char detail[96];
  snprintf(detail, sizeof detail, "pooled=%d first-acquire=%s second-acquire=%s", kUnsettled + 1,
           known(first_id) ? "pooled" : "new", second_id == settled_id ? "settled" : "other");
  return result(detail) ? 0 : 1;
}

// ------------------------------------------------------------------------------------------------
// Turn 2, finding 1: a pooled event whose last signal is still pending (its earlier holder
// recorded it on a busy stream) must not go to a new holder: the late signal would land after the
// new holder's own and move the value back.
int testTurn2EventReuse() {
  MPSStream* p1 = poolStream(1);
  MPSStream* p2 = poolStream(2);
  MPSStream* p3 = poolStream(3);
  Gate busy;
  encodeGate(p1, &busy);
  p1->synchronize(SyncType::COMMIT);
  {
    c10::Event first(c10::DeviceType::MPS);
    first.record(p1->unwrap());
  } // back to the pool with its signal pending
  Flag before;
  encodeSet(p2, &before, 1);
  c10::Event second(c10::DeviceType::MPS);
  second.record(p2->unwrap()); // P2 is idle
  const bool prompt = finishesWithin(3000ms, [&] { second.synchronize(); });
  if (!prompt) {
    fail(g_test, "an event recorded only on an idle stream did not complete within 3 s while an unrelated stream was "
                 "busy (it was handed out with an earlier holder's signal pending)");
  } else if (before.value.load() != 1) {
    fail(g_test, "synchronize() returned before the work recorded ahead of the event ran");
  }
  busy.open();
  guard()->synchronizeStream(p1->unwrap());
  guard()->synchronizeStream(p2->unwrap());
  if (!second.query()) {
    fail(g_test, "query() is false after the event's stream finished (a late signal of the earlier holder moved its "
                 "value back)");
  }
  Flag ran;
  if (!finishesWithin(5000ms, [&] {
        second.block(p3->unwrap());
        encodeSet(p3, &ran, 1);
        guard()->synchronizeStream(p3->unwrap());
      })) {
    fail(g_test, "a stream waiting on the event did not finish within 5 s");
    result("hang=wait");
    endNow(1);
  }
  return result("pending-holder=1") ? 0 : 1;
}

// ------------------------------------------------------------------------------------------------
// Turn 2, finding 2: with commitAndContinue off (the MPS profiler's signposts or a capture),
// flush() keeps the newest committed command buffer; each commit must release the one it kept
// before. After a final wait, no command buffer may be left alive.
int testTurn2LeakPrev() {
  const size_t baseline = mpsemu_live_command_buffers();
  MPSStream* s = poolStream(1);
  Flag last;
  for (int k = 0; k < 20; ++k) {
    encodeSet(s, &last, k + 1);
    s->synchronize(SyncType::COMMIT);
  }
  s->synchronize(SyncType::COMMIT_AND_WAIT);
  if (last.value.load() != 20) {
    fail(g_test, "the last kernel's value is %d, expected 20", last.value.load());
  }
  mpsemu_quiesce(10000);
  const long leaked = static_cast<long>(mpsemu_live_command_buffers()) - static_cast<long>(baseline);
  if (leaked != 0) {
    fail(g_test, "%ld command buffers alive after COMMIT_AND_WAIT with commitAndContinue off (20 commits)", leaked);
  }
  char detail[64];
  snprintf(detail, sizeof detail, "commits=20 leaked-command-buffers=%ld", leaked);
  return result(detail) ? 0 : 1;
}

} // namespace

int main(int argc, char** argv) {
  const std::map<std::string, int (*)()> tests = {
      {"h1", testH1},
#if MPSEMU_UPSTREAM_ALLOCATOR
      {"h2", testH2},
      {"h3", testH3},
      {"m4", testM4},
      {"m5", testM5},
      {"event-ids", testEventIds},
#endif
      {"m1", testM1},
      {"m2", testM2},
      {"m3", testM3},
      {"turn2-event-reuse", testTurn2EventReuse},
      {"turn2-leak-prev", testTurn2LeakPrev},
      {"event-two-waiters", testEventTwoWaiters},
  };
  if (argc != 2 || tests.count(argv[1]) == 0) {
    std::fprintf(stderr, "usage: %s NAME; names:", argv[0]);
    for (const auto& t : tests) std::fprintf(stderr, " %s", t.first.c_str());
    std::fprintf(stderr, "\n");
    return 2;
  }
  g_test = argv[1];
  if (std::strcmp(g_test, "turn2-leak-prev") == 0) {
    // before the first stream exists: streams then run with commitAndContinue off
    setenv("MPSEMU_PROFILER_CAPTURE", "1", 1);
  }
  Watchdog watchdog(g_test, 120);
  int status = 1;
  try {
    status = tests.at(g_test)();
  } catch (const std::exception& e) {
    fail(g_test, "exception: %s", e.what());
    result("exception=1");
    status = 1;
  }
  // No static destructors: a test that found a hang has threads stuck in the backend.
  endNow(status);
}
