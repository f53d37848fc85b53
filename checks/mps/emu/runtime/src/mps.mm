// mps-emu: Metal Performance Shaders and MPSGraph.
//
// MPSCommandBuffer is emulated: it wraps an MTLCommandBuffer of a queue and forwards every
// MTLCommandBuffer call to its current underlying buffer; -commitAndContinue commits the current
// one (with all its checks: open encoder, second commit) and continues with a fresh buffer from the
// same queue, so work encoded after it runs after the work before it. Handlers receive the
// underlying buffer. Like the underlying buffers, it is not thread-safe (the switch to the next
// buffer is an unsynchronized field write).
//
// Stand-ins: MPSKernel (created and copied, encodes nothing), MPSGraphTensor, MPSGraphTensorData,
// the graph descriptors (their properties are kept), and MPSGraph, which can be created but not
// run: encoding or running a graph is a violation that aborts ("not emulated").
#include "metal_internal.h"

#include <MetalPerformanceShadersGraph/MetalPerformanceShadersGraph.h>

using namespace mpsemu;

namespace {
struct MPSCBState {
  id<MTLCommandQueue> queue = nil;        // retained
  id<MTLCommandBuffer> root = nil;        // retained
  id<MTLCommandBuffer> current = nil;     // retained
};
inline id<MTLCommandBuffer> cur(id self) {
  return state_of<MPSCBState>(self)->current;
}
}  // namespace

@implementation MPSCommandBuffer

+ (MPSCommandBuffer*)commandBufferFromCommandQueue:(id<MTLCommandQueue>)commandQueue {
  return [[[self alloc] initWithCommandBuffer:[commandQueue commandBuffer]] autorelease];
}

+ (MPSCommandBuffer*)commandBufferWithCommandBuffer:(id<MTLCommandBuffer>)commandBuffer {
  return [[[self alloc] initWithCommandBuffer:commandBuffer] autorelease];
}

- (instancetype)initWithCommandBuffer:(id<MTLCommandBuffer>)commandBuffer {
  if (!commandBuffer) fatal_violation("MPSCommandBuffer made from a nil command buffer");
  auto* st = new MPSCBState;
  st->queue = [[commandBuffer commandQueue] retain];
  st->root = [commandBuffer retain];
  st->current = [commandBuffer retain];
  set_object_state(self, st);
  return self;
}

- (void)dealloc {
  MPSCBState* st = state_of<MPSCBState>(self);
  [st->current release];
  [st->root release];
  [st->queue release];
  delete st;
  [super dealloc];
}

- (void)commitAndContinue {
  MPSCBState* st = state_of<MPSCBState>(self);
  id<MTLCommandBuffer> old = st->current;
  [old commit];
  st->current = [[st->queue commandBuffer] retain];
  [old release];
}

- (id<MTLCommandBuffer>)commandBuffer {
  return cur(self);
}

- (id<MTLCommandBuffer>)rootCommandBuffer {
  return state_of<MPSCBState>(self)->root;
}

- (id<MTLDevice>)device { return [cur(self) device]; }
- (id<MTLCommandQueue>)commandQueue { return state_of<MPSCBState>(self)->queue; }
- (NSString*)label { return [cur(self) label]; }
- (void)setLabel:(NSString*)label { [cur(self) setLabel:label]; }
- (BOOL)retainedReferences { return [cur(self) retainedReferences]; }
- (MTLCommandBufferStatus)status { return [cur(self) status]; }
- (NSError*)error { return [cur(self) error]; }
- (double)kernelStartTime { return [cur(self) kernelStartTime]; }
- (double)kernelEndTime { return [cur(self) kernelEndTime]; }
- (double)GPUStartTime { return [cur(self) GPUStartTime]; }
- (double)GPUEndTime { return [cur(self) GPUEndTime]; }
- (void)enqueue { [cur(self) enqueue]; }
- (void)commit { [cur(self) commit]; }
- (void)waitUntilScheduled { [cur(self) waitUntilScheduled]; }
- (void)waitUntilCompleted { [cur(self) waitUntilCompleted]; }
- (void)addScheduledHandler:(MTLCommandBufferHandler)block { [cur(self) addScheduledHandler:block]; }
- (void)addCompletedHandler:(MTLCommandBufferHandler)block { [cur(self) addCompletedHandler:block]; }
- (void)encodeSignalEvent:(id<MTLEvent>)event value:(uint64_t)value { [cur(self) encodeSignalEvent:event value:value]; }
- (void)encodeWaitForEvent:(id<MTLEvent>)event value:(uint64_t)value { [cur(self) encodeWaitForEvent:event value:value]; }
- (id<MTLComputeCommandEncoder>)computeCommandEncoder { return [cur(self) computeCommandEncoder]; }
- (id<MTLComputeCommandEncoder>)computeCommandEncoderWithDispatchType:(MTLDispatchType)dispatchType {
  return [cur(self) computeCommandEncoderWithDispatchType:dispatchType];
}
- (id<MTLBlitCommandEncoder>)blitCommandEncoder { return [cur(self) blitCommandEncoder]; }
- (void)pushDebugGroup:(NSString*)string { [cur(self) pushDebugGroup:string]; }
- (void)popDebugGroup { [cur(self) popDebugGroup]; }

@end

namespace {
struct KernelState {
  id<MTLDevice> device = nil;
  NSString* label = nil;
};
}  // namespace

@implementation MPSKernel

- (instancetype)init {
  return [self initWithDevice:[MTLDevice sharedDevice]];
}

- (instancetype)initWithDevice:(id<MTLDevice>)device {
  set_object_state(self, new KernelState{device, nil});
  return self;
}

- (void)dealloc {
  KernelState* st = state_of<KernelState>(self);
  [st->label release];
  delete st;
  [super dealloc];
}

- (id<MTLDevice>)device {
  return state_of<KernelState>(self)->device;
}

- (NSString*)label {
  return state_of<KernelState>(self)->label;
}

- (void)setLabel:(NSString*)label {
  KernelState* st = state_of<KernelState>(self);
  NSString* old = st->label;
  st->label = [label copy];
  [old release];
}

- (id)copyWithZone:(NSZone*)zone {
  (void)zone;
  MPSKernel* k = [[[self class] alloc] initWithDevice:[self device]];
  [k setLabel:[self label]];
  return k;
}

@end

@implementation MPSGraphTensor
@end

@implementation MPSGraphTensorData
@end

namespace {
struct CompileDescState {
  MPSGraphOptimizationLevel level = MPSGraphOptimizationLevel1;
};
struct ExecDescState {
  MPSGraphCompilationDescriptor* compilation = nil;  // retained
  BOOL commit_and_continue = NO;
  BOOL wait = NO;
};
}  // namespace

@implementation MPSGraphCompilationDescriptor

- (instancetype)init {
  set_object_state(self, new CompileDescState);
  return self;
}

- (void)dealloc {
  delete state_of<CompileDescState>(self);
  [super dealloc];
}

- (MPSGraphOptimizationLevel)optimizationLevel {
  return state_of<CompileDescState>(self)->level;
}

- (void)setOptimizationLevel:(MPSGraphOptimizationLevel)level {
  state_of<CompileDescState>(self)->level = level;
}

- (id)copyWithZone:(NSZone*)zone {
  (void)zone;
  MPSGraphCompilationDescriptor* c = [[MPSGraphCompilationDescriptor alloc] init];
  [c setOptimizationLevel:[self optimizationLevel]];
  return c;
}

@end

@implementation MPSGraphExecutionDescriptor

- (instancetype)init {
  set_object_state(self, new ExecDescState);
  return self;
}

- (void)dealloc {
  ExecDescState* st = state_of<ExecDescState>(self);
  [st->compilation release];
  delete st;
  [super dealloc];
}

- (MPSGraphCompilationDescriptor*)compilationDescriptor {
  return state_of<ExecDescState>(self)->compilation;
}

- (void)setCompilationDescriptor:(MPSGraphCompilationDescriptor*)descriptor {
  ExecDescState* st = state_of<ExecDescState>(self);
  MPSGraphCompilationDescriptor* old = st->compilation;
  st->compilation = [descriptor retain];
  [old release];
}

// Private on Apple (declared by the sources in a class extension).
- (BOOL)enableCommitAndContinue {
  return state_of<ExecDescState>(self)->commit_and_continue;
}

- (void)setEnableCommitAndContinue:(BOOL)enable {
  state_of<ExecDescState>(self)->commit_and_continue = enable;
}

- (BOOL)waitUntilCompleted {
  return state_of<ExecDescState>(self)->wait;
}

- (void)setWaitUntilCompleted:(BOOL)wait {
  state_of<ExecDescState>(self)->wait = wait;
}

- (id)copyWithZone:(NSZone*)zone {
  (void)zone;
  MPSGraphExecutionDescriptor* c = [[MPSGraphExecutionDescriptor alloc] init];
  [c setCompilationDescriptor:[self compilationDescriptor]];
  [c setEnableCommitAndContinue:[self enableCommitAndContinue]];
  [c setWaitUntilCompleted:[self waitUntilCompleted]];
  return c;
}

@end

@implementation MPSGraph

+ (instancetype)new {
  return [[self alloc] init];
}

- (void)encodeToCommandBuffer:(MPSCommandBuffer*)commandBuffer
                        feeds:(NSDictionary*)feeds
             targetOperations:(NSArray*)targetOperations
            resultsDictionary:(NSDictionary*)resultsDictionary
          executionDescriptor:(MPSGraphExecutionDescriptor*)executionDescriptor {
  (void)commandBuffer;
  (void)feeds;
  (void)targetOperations;
  (void)resultsDictionary;
  (void)executionDescriptor;
  fatal_violation("-[MPSGraph encodeToCommandBuffer:...] is not emulated (mps-emu runs no graphs)");
}

- (NSDictionary*)runWithMTLCommandQueue:(id<MTLCommandQueue>)commandQueue
                                  feeds:(NSDictionary*)feeds
                          targetTensors:(NSArray*)targetTensors
                       targetOperations:(NSArray*)targetOperations {
  (void)commandQueue;
  (void)feeds;
  (void)targetTensors;
  (void)targetOperations;
  fatal_violation("-[MPSGraph runWithMTLCommandQueue:...] is not emulated (mps-emu runs no graphs)");
}

@end
