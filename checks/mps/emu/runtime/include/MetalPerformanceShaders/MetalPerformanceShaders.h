// mps-emu: Metal Performance Shaders. MPSCommandBuffer is emulated in full (src/mps.mm); MPSKernel
// is a stand-in that can be created and copied but encodes nothing.
#pragma once
#include <Metal/Metal.h>

typedef uint32_t MPSDataType;
enum : uint32_t {
  MPSDataTypeInvalid = 0,
  MPSDataTypeFloatBit = 0x10000000,
  MPSDataTypeFloat32 = MPSDataTypeFloatBit | 32,
  MPSDataTypeFloat16 = MPSDataTypeFloatBit | 16,
  MPSDataTypeSignedBit = 0x20000000,
  MPSDataTypeInt8 = MPSDataTypeSignedBit | 8,
  MPSDataTypeInt16 = MPSDataTypeSignedBit | 16,
  MPSDataTypeInt32 = MPSDataTypeSignedBit | 32,
  MPSDataTypeInt64 = MPSDataTypeSignedBit | 64,
  MPSDataTypeUInt8 = 8,
  MPSDataTypeUInt16 = 16,
  MPSDataTypeUInt32 = 32,
  MPSDataTypeUInt64 = 64,
  MPSDataTypeBool = 0x80000000 | 8,
};

// A command buffer that can commit the work encoded so far and go on encoding into a fresh
// underlying MTLCommandBuffer of the same queue (commitAndContinue). Every MTLCommandBuffer call
// goes to the current underlying buffer.
@interface MPSCommandBuffer : NSObject <MTLCommandBuffer>
+ (MPSCommandBuffer*)commandBufferFromCommandQueue:(id<MTLCommandQueue>)commandQueue;
+ (MPSCommandBuffer*)commandBufferWithCommandBuffer:(id<MTLCommandBuffer>)commandBuffer;
- (instancetype)initWithCommandBuffer:(id<MTLCommandBuffer>)commandBuffer;
- (void)commitAndContinue;
// The underlying buffer encoding goes to now.
@property(readonly) id<MTLCommandBuffer> commandBuffer;
// The underlying buffer this object was created with.
@property(readonly) id<MTLCommandBuffer> rootCommandBuffer;
@end

@interface MPSKernel : NSObject <NSCopying>
- (instancetype)initWithDevice:(id<MTLDevice>)device;
@property(readonly) id<MTLDevice> device;
@property(copy) NSString* label;
@end
