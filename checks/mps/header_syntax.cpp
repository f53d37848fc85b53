// Compiled by scripts/check-patch.sh (check `header-syntax`) with the patched headers first on the
// include path and the Linux torch's c10/ATen headers after them.
#include <ATen/mps/MPSAllocatorInterface.h>
#include <ATen/mps/MPSBufferStreamUse.h>
#include <ATen/mps/MPSEventCore.h>
#include <ATen/mps/MPSStreamPoolCore.h>
#include <ATen/native/mps/MetalShaderLibrary.h>

// IMPSAllocator gains a pure virtual that records a buffer's use by a stream: recordStream (const) in
// v2.11.0; from v2.13.0 on, where IMPSAllocator derives from c10::DeviceAllocator and upstream's
// MPSAllocator overrides DeviceAllocator::recordStream as a no-op, recordStreamUse (const).
struct RecordStreamProbe : at::mps::IMPSAllocator {
#ifdef TCH_STREAMS_DEVICE_ALLOCATOR
  // upstream's own (MPSAllocator overrides it as a no-op) and ours, named apart
  void recordStream(const c10::DataPtr&, c10::Stream) override {}
  void recordStreamUse(const c10::DataPtr&, c10::Stream) const override {}
#else
  void recordStream(const c10::DataPtr&, c10::Stream) const override {}
#endif
};
// MetalShaderLibrary's inline accessors lock the (protected) cacheMutex().
struct ShaderLibraryProbe : at::native::mps::MetalShaderLibrary {
  ShaderLibraryProbe() : MetalShaderLibrary("") {}
  std::recursive_mutex& lock() {
    return cacheMutex();
  }
};
int main() {
  at::mps::detail::EventSignals signals;
  return signals.completed(0) ? 1 : 0;
}
