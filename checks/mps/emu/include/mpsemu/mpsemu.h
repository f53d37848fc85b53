// mps-emu: controls and observations of the emulated Metal device, for tests only.
//
// The emulator (checks/mps/emu/runtime/) implements the Apple APIs that PyTorch's ATen/mps sources
// call (Foundation, Grand Central Dispatch, Metal, MetalPerformanceShaders) with the semantics those
// sources rely on, on Linux, so that the real patched .mm files can be compiled and run under the
// sanitizers. This header is the only non-Apple interface: what a test needs to encode "kernels",
// to perturb timing and to see misuse that real Metal would not report.
//
// Threads: every function here may be called from any thread.
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __OBJC__
@protocol MTLComputeCommandEncoder;
@protocol MTLBlitCommandEncoder;
// Records a kernel into the encoder's command buffer. `body` runs later on the GPU timeline thread
// of the command buffer's queue: after everything encoded before it on that queue (in commit order)
// and after every encodeWaitForEvent encoded before it is satisfied. It reads and writes buffer
// memory through -[MTLBuffer contents]. The block is copied; it must not call back into Metal.
void mpsemu_encode_kernel(id<MTLComputeCommandEncoder> encoder, void (^body)(void));
#endif

#ifdef __cplusplus
extern "C" {
#endif

// Random delays on the GPU timelines: before each timeline operation (kernel, blit, signal, wait
// check, completion) a delay drawn uniformly from [0, max_delay_us] with a PRNG seeded by `seed`.
// Defaults: seed from MPSEMU_SEED (else 1), max delay from MPSEMU_MAX_DELAY_US (else 50).
void mpsemu_configure(uint64_t seed, unsigned max_delay_us);

// Command buffers created and not yet deallocated (retain count reached zero).
size_t mpsemu_live_command_buffers(void);
// Of those, the ones never committed.
size_t mpsemu_uncommitted_command_buffers(void);
// Live instances of the named emulated class ("MTLCommandBuffer", "MTLBuffer", "MTLSharedEvent",
// "MTLHeap", ...), or of all emulated classes when `class_name` is NULL.
size_t mpsemu_live_objects(const char* class_name);

// Waits until every GPU timeline is idle and every completion handler and shared-event listener
// block that was due has returned. 0 when that happened, -1 after `timeout_ms`.
int mpsemu_quiesce(unsigned timeout_ms);

// Misuse the emulator detected (each is also printed to stderr as "mpsemu: VIOLATION: ..."):
// encoding into an ended encoder or a committed command buffer, two encoders open on one command
// buffer, committing twice, a command buffer used by two threads at once, dispatch_sync onto a queue
// the calling thread already holds (GCD deadlocks there), a dispatch_sync wait-for cycle between
// threads, an over-release. Counted since start.
uint64_t mpsemu_violations(void);
// The text of the most recent violation ("" when none). Valid until the next violation.
const char* mpsemu_last_violation(void);

// Additions (after the first version of this interface):

// Makes every violation abort (after printing it), not only the ones that would hang or crash on
// Apple. Also set by MPSEMU_ABORT_ON_VIOLATION=1 in the environment. 0 switches it off again.
void mpsemu_set_abort_on_violation(int on);

// The device's memory: recommendedMaxWorkingSetSize (0 keeps the current value; default 8 GiB, or
// MPSEMU_WORKING_SET_BYTES) and a hard limit on the bytes of live buffers and heaps beyond which
// buffer and heap creation returns nil (0 = no limit, the default, or MPSEMU_MEMORY_LIMIT_BYTES).
void mpsemu_set_memory_limits(uint64_t recommended_max_working_set_size, uint64_t max_total_allocation);

#ifdef __cplusplus
}
#endif
