// Stub of Metal Performance Shaders (declarations only), for the objc-syntax check.
#pragma once
#include <Metal/Metal.h>

typedef uint32_t MPSDataType;

// A command buffer wrapper that can commit its work and continue encoding into a new one.
@interface MPSCommandBuffer : NSObject <MTLCommandBuffer>
+ (MPSCommandBuffer*)commandBufferFromCommandQueue:(id<MTLCommandQueue>)commandQueue;
- (void)commitAndContinue;
@end

@interface MPSKernel : NSObject <NSCopying>
@end
