// Stub of MPSGraph (declarations only), for the objc-syntax check.
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

@interface MPSGraphCompilationDescriptor : NSObject
@property MPSGraphOptimizationLevel optimizationLevel;
@end

@interface MPSGraphExecutionDescriptor : NSObject
@property(readwrite, atomic) MPSGraphCompilationDescriptor* compilationDescriptor;
@end

@interface MPSGraph : NSObject
- (void)encodeToCommandBuffer:(MPSCommandBuffer*)commandBuffer
                        feeds:(NSDictionary*)feeds
             targetOperations:(NSArray*)targetOperations
            resultsDictionary:(NSDictionary*)resultsDictionary
          executionDescriptor:(MPSGraphExecutionDescriptor*)executionDescriptor;
@end
