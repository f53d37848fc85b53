// mps-emu: the device, buffers, heaps, libraries and pipeline states.
//
// Semantics:
//  - One device (MTLCreateSystemDefaultDevice, MTLCopyAllDevices), unified memory, a name that says
//    it is emulated. recommendedMaxWorkingSetSize is 8 GiB unless MPSEMU_WORKING_SET_BYTES or
//    mpsemu_set_memory_limits says otherwise; maxBufferLength is half of it. An optional hard limit
//    (mpsemu_set_memory_limits; 0 = none, the default) makes buffer and heap creation fail (nil)
//    beyond it, as a full GPU would.
//  - Buffers are host memory (zero-filled), `contents` valid in every storage mode. A buffer keeps
//    its heap alive. currentAllocatedSize counts buffers made by the device (page-rounded) and
//    heaps (their size); buffers made from a heap count against the heap's usedSize instead.
//  - Heaps: no placement and no fragmentation; each buffer takes its length rounded up to its
//    alignment (heapBufferSizeAndAlignWithLength:options:) out of the heap's size, and gives it
//    back when it is deallocated. A buffer that does not fit returns nil. maxAvailableSizeWithAlignment
//    is the free size rounded down to the alignment.
//  - Purgeable state is recorded and reported back; contents are never discarded.
//  - Libraries compile nothing (see Metal.h); pipeline states report fixed limits.
#include "metal_internal.h"

#include <Block.h>
#include <stdlib.h>
#include <string.h>

namespace mpsemu {
namespace {

constexpr uint64_t kPage = 16384;

uint64_t env_bytes(const char* name, uint64_t fallback) {
  const char* s = getenv(name);
  return s && *s ? strtoull(s, nullptr, 0) : fallback;
}

std::atomic<uint64_t> g_working_set{env_bytes("MPSEMU_WORKING_SET_BYTES", 8ull << 30)};
std::atomic<uint64_t> g_hard_limit{env_bytes("MPSEMU_MEMORY_LIMIT_BYTES", 0)};
std::atomic<uint64_t> g_allocated{0};

uint64_t round_up(uint64_t n, uint64_t a) {
  return (n + a - 1) / a * a;
}

MTLSizeAndAlign size_and_align(NSUInteger length) {
  NSUInteger align = length >= kPage ? kPage : 256;
  MTLSizeAndAlign r = {(NSUInteger)round_up(length ? length : 1, align), align};
  return r;
}

// Charges `bytes` to the device; false (nothing charged) past the hard limit.
bool charge(uint64_t bytes) {
  uint64_t limit = g_hard_limit.load(std::memory_order_relaxed);
  uint64_t cur = g_allocated.load(std::memory_order_relaxed);
  for (;;) {
    if (limit && cur + bytes > limit) return false;
    if (g_allocated.compare_exchange_weak(cur, cur + bytes, std::memory_order_relaxed)) return true;
  }
}

void uncharge(uint64_t bytes) {
  g_allocated.fetch_sub(bytes, std::memory_order_relaxed);
}

struct BufferState {
  uint8_t* bytes = nullptr;
  NSUInteger length = 0;
  uint64_t charged = 0;
  MTLHeap* heap = nil;  // retained
  MTLResourceOptions options = 0;
  std::atomic<MTLPurgeableState> purgeable{MTLPurgeableStateNonVolatile};
  void (^deallocator)(void*, NSUInteger) = nullptr;
  NSString* label = nil;
};

struct HeapState {
  NSUInteger size = 0;
  std::atomic<uint64_t> used{0};
  MTLStorageMode storage = MTLStorageModeShared;
  MTLCPUCacheMode cache = MTLCPUCacheModeDefaultCache;
  MTLHazardTrackingMode hazard = MTLHazardTrackingModeDefault;
  MTLResourceOptions options = 0;
  MTLHeapType type = MTLHeapTypeAutomatic;
  std::atomic<MTLPurgeableState> purgeable{MTLPurgeableStateNonVolatile};
  NSString* label = nil;
};

struct HeapDescState {
  NSUInteger size = 0;
  MTLStorageMode storage = MTLStorageModeShared;
  MTLCPUCacheMode cache = MTLCPUCacheModeDefaultCache;
  MTLHazardTrackingMode hazard = MTLHazardTrackingModeDefault;
  MTLResourceOptions options = 0;
  MTLHeapType type = MTLHeapTypeAutomatic;
};

struct NamedState {
  NSString* name = nil;
};

MTLBuffer* make_buffer(NSUInteger length, MTLResourceOptions options, MTLHeap* heap, uint64_t charged) {
  uint8_t* bytes = static_cast<uint8_t*>(calloc(1, length ? length : 1));
  if (!bytes) return nil;
  MTLBuffer* b = [[MTLBuffer alloc] init];
  auto* st = new BufferState;
  st->bytes = bytes;
  st->length = length;
  st->charged = charged;
  st->heap = [heap retain];
  st->options = options;
  set_object_state(b, st);
  return b;
}

MTLPurgeableState swap_purgeable(std::atomic<MTLPurgeableState>& s, MTLPurgeableState next) {
  if (next == MTLPurgeableStateKeepCurrent) return s.load(std::memory_order_relaxed);
  return s.exchange(next, std::memory_order_relaxed);
}

}  // namespace

bool buffer_range(id<MTLBuffer> buffer, size_t offset, size_t length, uint8_t** bytes) {
  if (![(id)buffer isKindOfClass:[MTLBuffer class]]) return false;
  BufferState* st = state_of<BufferState>((id)buffer);
  if (offset + length > st->length) return false;
  *bytes = st->bytes + offset;
  return true;
}

}  // namespace mpsemu

using namespace mpsemu;

extern "C" void mpsemu_set_memory_limits(uint64_t recommended_max_working_set_size, uint64_t max_total_allocation) {
  if (recommended_max_working_set_size) g_working_set.store(recommended_max_working_set_size, std::memory_order_relaxed);
  g_hard_limit.store(max_total_allocation, std::memory_order_relaxed);
}

@implementation MTLDevice

+ (MTLDevice*)sharedDevice {
  static std::atomic<void*> shared{nullptr};
  MTLDevice* d = (MTLDevice*)shared.load(std::memory_order_acquire);
  if (!d) {
    MTLDevice* fresh = [[MTLDevice alloc] init];
    void* expected = nullptr;
    if (shared.compare_exchange_strong(expected, fresh, std::memory_order_acq_rel)) {
      d = fresh;
    } else {
      [fresh release];
      d = (MTLDevice*)expected;
    }
  }
  return d;
}

- (NSString*)name {
  return @"Apple M2 (mps-emu)";
}

- (uint64_t)registryID {
  return 0x6d7073656d75ull;
}

- (BOOL)isLowPower {
  return NO;
}

- (BOOL)isHeadless {
  return NO;
}

- (BOOL)isRemovable {
  return NO;
}

- (BOOL)supportsFamily:(MTLGPUFamily)gpuFamily {
  return (gpuFamily >= MTLGPUFamilyApple1 && gpuFamily <= MTLGPUFamilyApple9) || gpuFamily == MTLGPUFamilyMac2 ||
         (gpuFamily >= MTLGPUFamilyCommon1 && gpuFamily <= MTLGPUFamilyCommon3) || gpuFamily == MTLGPUFamilyMetal3;
}

- (id<MTLCommandQueue>)newCommandQueue {
  return [[MTLCommandQueue alloc] initWithDevice:self];
}

- (id<MTLCommandQueue>)newCommandQueueWithMaxCommandBufferCount:(NSUInteger)maxCommandBufferCount {
  (void)maxCommandBufferCount;
  return [self newCommandQueue];
}

- (id<MTLSharedEvent>)newSharedEvent {
  return [[MTLSharedEvent alloc] initWithDevice:self];
}

- (id<MTLBuffer>)newBufferWithLength:(NSUInteger)length options:(MTLResourceOptions)options {
  uint64_t charged = round_up(length ? length : 1, kPage);
  if (length > [self maxBufferLength] || !charge(charged)) return nil;
  MTLBuffer* b = make_buffer(length, options, nil, charged);
  if (!b) uncharge(charged);
  return b;
}

- (id<MTLBuffer>)newBufferWithBytes:(const void*)pointer length:(NSUInteger)length options:(MTLResourceOptions)options {
  id<MTLBuffer> b = [self newBufferWithLength:length options:options];
  if (b && pointer && length) memcpy([b contents], pointer, length);
  return b;
}

- (id<MTLBuffer>)newBufferWithBytesNoCopy:(void*)pointer
                                   length:(NSUInteger)length
                                  options:(MTLResourceOptions)options
                              deallocator:(void (^)(void* pointer, NSUInteger length))deallocator {
  MTLBuffer* b = [[MTLBuffer alloc] init];
  auto* st = new BufferState;
  st->bytes = static_cast<uint8_t*>(pointer);
  st->length = length;
  st->options = options;
  if (deallocator) st->deallocator = Block_copy(deallocator);
  st->charged = 0;
  set_object_state(b, st);
  // Apple requires page alignment for no-copy buffers.
  if ((uintptr_t)pointer % kPage || length % kPage) {
    violation("-newBufferWithBytesNoCopy: pointer %p or length %lu not page aligned", pointer, (unsigned long)length);
  }
  return b;
}

- (id<MTLHeap>)newHeapWithDescriptor:(MTLHeapDescriptor*)descriptor {
  HeapDescState* d = state_of<HeapDescState>(descriptor);
  if (!d || d->size == 0) return nil;
  NSUInteger size = (NSUInteger)round_up(d->size, kPage);
  if (!charge(size)) return nil;
  MTLHeap* h = [[MTLHeap alloc] init];
  auto* st = new HeapState;
  st->size = size;
  st->storage = d->storage;
  st->cache = d->cache;
  st->hazard = d->hazard;
  st->options = d->options;
  st->type = d->type;
  set_object_state(h, st);
  return h;
}

- (MTLSizeAndAlign)heapBufferSizeAndAlignWithLength:(NSUInteger)length options:(MTLResourceOptions)options {
  (void)options;
  return size_and_align(length);
}

- (id<MTLLibrary>)newLibraryWithSource:(NSString*)source options:(MTLCompileOptions*)options error:(NSError**)error {
  (void)source;
  (void)options;
  if (error) *error = nil;
  return [[MTLLibrary alloc] init];
}

- (id<MTLComputePipelineState>)newComputePipelineStateWithFunction:(id<MTLFunction>)computeFunction error:(NSError**)error {
  (void)computeFunction;
  if (error) *error = nil;
  return [[MTLComputePipelineState alloc] init];
}

- (NSUInteger)maxBufferLength {
  return (NSUInteger)(g_working_set.load(std::memory_order_relaxed) / 2);
}

- (NSUInteger)maxThreadgroupMemoryLength {
  return 32768;
}

- (MTLSize)maxThreadsPerThreadgroup {
  return MTLSizeMake(1024, 1024, 1024);
}

- (uint64_t)recommendedMaxWorkingSetSize {
  return g_working_set.load(std::memory_order_relaxed);
}

- (NSUInteger)currentAllocatedSize {
  return (NSUInteger)g_allocated.load(std::memory_order_relaxed);
}

- (BOOL)hasUnifiedMemory {
  return YES;
}

@end

@implementation MTLBuffer

- (void)dealloc {
  BufferState* st = state_of<BufferState>(self);
  if (st->deallocator) {
    st->deallocator(st->bytes, st->length);
    Block_release(st->deallocator);
  } else {
    free(st->bytes);
  }
  if (st->heap) {
    state_of<HeapState>(st->heap)->used.fetch_sub(st->charged, std::memory_order_relaxed);
    [st->heap release];
  } else {
    uncharge(st->charged);
  }
  [st->label release];
  delete st;
  [super dealloc];
}

- (id<MTLDevice>)device {
  return [MTLDevice sharedDevice];
}

- (NSString*)label {
  return state_of<BufferState>(self)->label;
}

- (void)setLabel:(NSString*)label {
  BufferState* st = state_of<BufferState>(self);
  NSString* old = st->label;
  st->label = [label copy];
  [old release];
}

- (void*)contents {
  return state_of<BufferState>(self)->bytes;
}

- (NSUInteger)length {
  return state_of<BufferState>(self)->length;
}

- (void)didModifyRange:(NSRange)range {
  (void)range;
}

- (MTLStorageMode)storageMode {
  return (state_of<BufferState>(self)->options >> 4) & 0xF;
}

- (MTLCPUCacheMode)cpuCacheMode {
  return state_of<BufferState>(self)->options & 0xF;
}

- (MTLHazardTrackingMode)hazardTrackingMode {
  return (state_of<BufferState>(self)->options >> 8) & 0x3;
}

- (MTLResourceOptions)resourceOptions {
  return state_of<BufferState>(self)->options;
}

- (id<MTLHeap>)heap {
  return state_of<BufferState>(self)->heap;
}

- (NSUInteger)allocatedSize {
  BufferState* st = state_of<BufferState>(self);
  return st->charged ? (NSUInteger)st->charged : st->length;
}

- (MTLPurgeableState)setPurgeableState:(MTLPurgeableState)state {
  return swap_purgeable(state_of<BufferState>(self)->purgeable, state);
}

@end

@implementation MTLHeap

- (void)dealloc {
  HeapState* st = state_of<HeapState>(self);
  uncharge(st->size);
  [st->label release];
  delete st;
  [super dealloc];
}

- (id<MTLDevice>)device {
  return [MTLDevice sharedDevice];
}

- (NSString*)label {
  return state_of<HeapState>(self)->label;
}

- (void)setLabel:(NSString*)label {
  HeapState* st = state_of<HeapState>(self);
  NSString* old = st->label;
  st->label = [label copy];
  [old release];
}

- (NSUInteger)size {
  return state_of<HeapState>(self)->size;
}

- (NSUInteger)usedSize {
  return (NSUInteger)state_of<HeapState>(self)->used.load(std::memory_order_relaxed);
}

- (NSUInteger)currentAllocatedSize {
  return state_of<HeapState>(self)->size;
}

- (MTLStorageMode)storageMode {
  return state_of<HeapState>(self)->storage;
}

- (MTLCPUCacheMode)cpuCacheMode {
  return state_of<HeapState>(self)->cache;
}

- (MTLHazardTrackingMode)hazardTrackingMode {
  return state_of<HeapState>(self)->hazard;
}

- (MTLResourceOptions)resourceOptions {
  return state_of<HeapState>(self)->options;
}

- (MTLHeapType)type {
  return state_of<HeapState>(self)->type;
}

- (NSUInteger)maxAvailableSizeWithAlignment:(NSUInteger)alignment {
  HeapState* st = state_of<HeapState>(self);
  uint64_t used = st->used.load(std::memory_order_relaxed);
  uint64_t free_bytes = used >= st->size ? 0 : st->size - used;
  if (alignment == 0) alignment = 1;
  return (NSUInteger)(free_bytes / alignment * alignment);
}

- (id<MTLBuffer>)newBufferWithLength:(NSUInteger)length options:(MTLResourceOptions)options {
  HeapState* st = state_of<HeapState>(self);
  uint64_t need = size_and_align(length).size;
  uint64_t cur = st->used.load(std::memory_order_relaxed);
  for (;;) {
    if (cur + need > st->size) return nil;
    if (st->used.compare_exchange_weak(cur, cur + need, std::memory_order_relaxed)) break;
  }
  MTLBuffer* b = make_buffer(length, options, self, need);
  if (!b) st->used.fetch_sub(need, std::memory_order_relaxed);
  return b;
}

- (MTLPurgeableState)setPurgeableState:(MTLPurgeableState)state {
  return swap_purgeable(state_of<HeapState>(self)->purgeable, state);
}

@end

@implementation MTLHeapDescriptor

- (instancetype)init {
  set_object_state(self, new HeapDescState);
  return self;
}

- (void)dealloc {
  delete state_of<HeapDescState>(self);
  [super dealloc];
}

- (id)copyWithZone:(NSZone*)zone {
  (void)zone;
  MTLHeapDescriptor* c = [[MTLHeapDescriptor alloc] init];
  *state_of<HeapDescState>(c) = *state_of<HeapDescState>(self);
  return c;
}

- (NSUInteger)size { return state_of<HeapDescState>(self)->size; }
- (void)setSize:(NSUInteger)size { state_of<HeapDescState>(self)->size = size; }
- (MTLStorageMode)storageMode { return state_of<HeapDescState>(self)->storage; }
- (void)setStorageMode:(MTLStorageMode)mode { state_of<HeapDescState>(self)->storage = mode; }
- (MTLCPUCacheMode)cpuCacheMode { return state_of<HeapDescState>(self)->cache; }
- (void)setCpuCacheMode:(MTLCPUCacheMode)mode { state_of<HeapDescState>(self)->cache = mode; }
- (MTLHazardTrackingMode)hazardTrackingMode { return state_of<HeapDescState>(self)->hazard; }
- (void)setHazardTrackingMode:(MTLHazardTrackingMode)mode { state_of<HeapDescState>(self)->hazard = mode; }
- (MTLResourceOptions)resourceOptions { return state_of<HeapDescState>(self)->options; }
- (void)setResourceOptions:(MTLResourceOptions)options { state_of<HeapDescState>(self)->options = options; }
- (MTLHeapType)type { return state_of<HeapDescState>(self)->type; }
- (void)setType:(MTLHeapType)type { state_of<HeapDescState>(self)->type = type; }

@end

@implementation MTLLibrary

- (id<MTLFunction>)newFunctionWithName:(NSString*)functionName {
  MTLFunction* f = [[MTLFunction alloc] init];
  set_object_state(f, new NamedState{[functionName copy]});
  return f;
}

- (NSArray<NSString*>*)functionNames {
  return [NSArray array];
}

- (id<MTLDevice>)device {
  return [MTLDevice sharedDevice];
}

@end

@implementation MTLFunction

- (void)dealloc {
  NamedState* st = state_of<NamedState>(self);
  [st->name release];
  delete st;
  [super dealloc];
}

- (NSString*)name {
  return state_of<NamedState>(self)->name;
}

- (id<MTLDevice>)device {
  return [MTLDevice sharedDevice];
}

@end

@implementation MTLComputePipelineState

- (NSUInteger)maxTotalThreadsPerThreadgroup {
  return 1024;
}

- (NSUInteger)threadExecutionWidth {
  return 32;
}

- (NSUInteger)staticThreadgroupMemoryLength {
  return 0;
}

- (id<MTLDevice>)device {
  return [MTLDevice sharedDevice];
}

@end

@implementation MTLCompileOptions

- (NSDictionary*)preprocessorMacros {
  return nil;
}
- (void)setPreprocessorMacros:(NSDictionary*)macros {
  (void)macros;
}
- (BOOL)fastMathEnabled {
  return NO;
}
- (void)setFastMathEnabled:(BOOL)enabled {
  (void)enabled;
}
- (MTLLanguageVersion)languageVersion {
  return MTLLanguageVersion3_1;
}
- (void)setLanguageVersion:(MTLLanguageVersion)version {
  (void)version;
}
- (id)copyWithZone:(NSZone*)zone {
  (void)zone;
  return [[MTLCompileOptions alloc] init];
}

@end

@implementation MTLCaptureManager

+ (MTLCaptureManager*)sharedCaptureManager {
  static std::atomic<void*> shared{nullptr};
  MTLCaptureManager* m = (MTLCaptureManager*)shared.load(std::memory_order_acquire);
  if (!m) {
    MTLCaptureManager* fresh = [[MTLCaptureManager alloc] init];
    void* expected = nullptr;
    if (shared.compare_exchange_strong(expected, fresh, std::memory_order_acq_rel)) {
      m = fresh;
    } else {
      [fresh release];
      m = (MTLCaptureManager*)expected;
    }
  }
  return m;
}

- (BOOL)isCapturing {
  return NO;
}

- (void)stopCapture {
}

@end

extern "C" {

id<MTLDevice> MTLCreateSystemDefaultDevice(void) {
  return [[MTLDevice sharedDevice] retain];
}

NSArray<id<MTLDevice>>* MTLCopyAllDevices(void) {
  id device = [MTLDevice sharedDevice];
  return [[NSArray alloc] initWithObjects:&device count:1];
}

}  // extern "C"
