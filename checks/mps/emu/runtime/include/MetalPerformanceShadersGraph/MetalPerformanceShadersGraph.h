// mps-emu: MPSGraph stand-ins. The descriptors keep their properties; graphs can be created but
// not run: encoding or running one is a violation that aborts ("not emulated"). The stream layer
// under test never needs a graph's results.
#pragma once
#include <MetalPerformanceShaders/MetalPerformanceShaders.h>

typedef uint64_t MPSGraphOptimizationLevel;
enum : uint64_t {
  MPSGraphOptimizationLevel0 = 0,
  MPSGraphOptimizationLevel1 = 1,
};

@interface MPSGraphTensor : NSObject
@end

@interface MPSGraphTensorData : NSObject
@end

@interface MPSGraphCompilationDescriptor : NSObject <NSCopying>
@property MPSGraphOptimizationLevel optimizationLevel;
@end

// enableCommitAndContinue is private on Apple (sources declare it in a class extension); the
// emulator implements it.
@interface MPSGraphExecutionDescriptor : NSObject <NSCopying>
@property(readwrite, atomic) MPSGraphCompilationDescriptor* compilationDescriptor;
@property(readwrite, atomic) BOOL waitUntilCompleted;
@end

@interface MPSGraph : NSObject
+ (instancetype)new;
- (void)encodeToCommandBuffer:(MPSCommandBuffer*)commandBuffer
                        feeds:(NSDictionary*)feeds
             targetOperations:(NSArray*)targetOperations
            resultsDictionary:(NSDictionary*)resultsDictionary
          executionDescriptor:(MPSGraphExecutionDescriptor*)executionDescriptor;
- (NSDictionary*)runWithMTLCommandQueue:(id<MTLCommandQueue>)commandQueue
                                  feeds:(NSDictionary*)feeds
                          targetTensors:(NSArray*)targetTensors
                       targetOperations:(NSArray*)targetOperations;
@end
