// mps-emu internals: the emulator's classes behind the Metal protocols, and the calls between the
// runtime's source files. The classes carry the protocol names so that mpsemu_live_objects("MTLBuffer")
// and friends count them by the names tests know.
#pragma once
#include "internal.h"

#include <MetalPerformanceShaders/MetalPerformanceShaders.h>

@interface MTLDevice : NSObject <MTLDevice>
+ (MTLDevice*)sharedDevice;  // the one device (not retained for the caller)
@end

@interface MTLCommandQueue : NSObject <MTLCommandQueue>
- (instancetype)initWithDevice:(id<MTLDevice>)device;
@end

@interface MTLCommandBuffer : NSObject <MTLCommandBuffer>
- (instancetype)initWithQueue:(MTLCommandQueue*)queue retainedReferences:(BOOL)retained;
@end

@interface MTLComputeCommandEncoder : NSObject <MTLComputeCommandEncoder>
@end

@interface MTLBlitCommandEncoder : NSObject <MTLBlitCommandEncoder>
@end

@interface MTLSharedEvent : NSObject <MTLSharedEvent>
- (instancetype)initWithDevice:(id<MTLDevice>)device;
@end

@interface MTLBuffer : NSObject <MTLBuffer>
@end

@interface MTLHeap : NSObject <MTLHeap>
@end

@interface MTLLibrary : NSObject <MTLLibrary>
@end

@interface MTLFunction : NSObject <MTLFunction>
@end

@interface MTLComputePipelineState : NSObject <MTLComputePipelineState>
@end

namespace mpsemu {
// event.mm: what the GPU timeline does for encodeSignalEvent / encodeWaitForEvent.
void event_set_value(MTLSharedEvent* event, uint64_t value);
void event_wait_value(MTLSharedEvent* event, uint64_t value, const char* waiter);
// device.mm: buffer access for blits.
bool buffer_range(id<MTLBuffer> buffer, size_t offset, size_t length, uint8_t** bytes);
}  // namespace mpsemu
