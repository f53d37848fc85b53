// mps-emu stand-in for upstream's MPSAllocator.mm of v2.13.0, whose text we do not have (the
// v2.11-window file does not compile against v2.13.0's headers). Used for v2.13.0 only, and
// deliberately simple: one MTLBuffer per allocation, released when freed, no cache, no heaps, no
// watermarks. Releasing is safe while a command buffer still uses the buffer (the command buffer
// holds its own reference until it completes), so nothing here waits or reuses: the stress test
// then checks the stream and event layer with an allocator that cannot hand out a busy buffer.
// It does not test the patch's allocator changes (their v2.13.0 hunks have no text to apply to).
#include <ATen/mps/MPSAllocatorInterface.h>
#include <ATen/mps/MPSDevice.h>
#include <ATen/mps/MPSStream.h>

#include <atomic>
#include <limits>
#include <mutex>
#include <unordered_map>

namespace at::mps {

C10_DEFINE_REGISTRY(MPSAllocatorCallbacksRegistry, IMpsAllocatorCallback)

namespace {

class StandinAllocator final : public IMPSAllocator {
 public:
  c10::DataPtr allocate(size_t nbytes) override {
    if (nbytes == 0) {
      return {nullptr, nullptr, &release, c10::Device(c10::DeviceType::MPS, 0)};
    }
    id<MTLBuffer> buffer = [MPSDevice::getInstance()->device() newBufferWithLength:nbytes
                                                                          options:MTLResourceStorageModeShared];
    TORCH_CHECK(buffer != nil, "mps-emu stand-in allocator: out of memory allocating ", nbytes, " bytes");
    {
      std::lock_guard<std::mutex> lock(sizes_mutex());
      sizes()[(__bridge void*)buffer] = nbytes;
    }
    return {(__bridge void*)buffer, (__bridge void*)buffer, &release, c10::Device(c10::DeviceType::MPS, 0)};
  }
  c10::DeleterFnPtr raw_deleter() const override {
    return &release;
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  // c10::DeviceAllocator
  bool initialized() override {
    return true;
  }
  void emptyCache(c10::MempoolId_t) override {}
  void recordStream(const c10::DataPtr&, c10::Stream) override {}
  c10::CachingDeviceAllocator::DeviceStats getDeviceStats(c10::DeviceIndex) override {
    return {};
  }
  void resetAccumulatedStats(c10::DeviceIndex) override {}
  void resetPeakStats(c10::DeviceIndex) override {}

  // IMPSAllocator
  void freeInactiveBuffers() const override {}
  ssize_t getUnalignedBufferSize(const void* ptr) const override {
    std::lock_guard<std::mutex> lock(sizes_mutex());
    auto it = sizes().find(ptr);
    return it == sizes().end() ? -1 : static_cast<ssize_t>(it->second);
  }
  IntArrayRef getBufferShape(const void*) const override {
    return {};
  }
  id_t getBufferId(const void*) const override {
    return 0;
  }
  void setBufferShape(const void*, const IntArrayRef&) const override {}
  bool isSharedBuffer(const void* ptr) const override {
    return getUnalignedBufferSize(ptr) >= 0;
  }
  c10::DataPtr allocScalarBufferWithValue(void* value, size_t size) const override {
    c10::DataPtr p = const_cast<StandinAllocator*>(this)->allocate(size);
    std::memcpy([(__bridge id<MTLBuffer>)p.get() contents], value, size);
    return p;
  }
  std::string formatSize(size_t size) const override {
    return c10::CachingAllocator::format_size(size);
  }
  void setLowWatermarkRatio(double) const override {}
  void setHighWatermarkRatio(double) const override {}
  // never under memory pressure: COMMIT_ADAPTIVE does not commit
  ssize_t getLowWatermarkValue() const override {
    return std::numeric_limits<ssize_t>::max();
  }
  size_t getLowWatermarkLimit() const override {
    return std::numeric_limits<size_t>::max();
  }
  size_t getHighWatermarkLimit() const override {
    return std::numeric_limits<size_t>::max();
  }
  size_t getTotalAllocatedMemory() const override {
    return getCurrentAllocatedMemory();
  }
  size_t getCurrentAllocatedMemory() const override {
    std::lock_guard<std::mutex> lock(sizes_mutex());
    size_t total = 0;
    for (const auto& entry : sizes()) {
      total += entry.second;
    }
    return total;
  }
  size_t getDriverAllocatedMemory() const override {
    return [MPSDevice::getInstance()->device() currentAllocatedSize];
  }
  size_t getRecommendedMaxMemory() const override {
    return [MPSDevice::getInstance()->device() recommendedMaxWorkingSetSize];
  }
  std::pair<const void*, uint32_t> getSharedBufferPtr(const void* ptr) const override {
    if (getUnalignedBufferSize(ptr) < 0) {
      return {nullptr, 0};
    }
    id<MTLBuffer> buffer = (__bridge id<MTLBuffer>)ptr;
    return {[buffer contents], static_cast<uint32_t>([buffer retainCount])};
  }
  c10::Storage getHostAliasStorage(const c10::Storage&) const override {
    TORCH_CHECK(false, "mps-emu stand-in allocator: getHostAliasStorage is not emulated");
  }
  bool recordEvents(c10::ArrayRef<const void*>) const override {
    return false;
  }
  bool waitForEvents(c10::ArrayRef<const void*>) const override {
    return false;
  }
  // Nothing to record: a freed buffer is never handed out again.
  void recordStreamUse(const c10::DataPtr&, c10::Stream stream) const override {
    TORCH_CHECK(stream.device_type() == c10::DeviceType::MPS, "recordStreamUse: expected an MPS stream, got ", stream);
    stream_uses_.fetch_add(1, std::memory_order_relaxed);
  }

 private:
  static std::mutex& sizes_mutex() {
    static std::mutex m;
    return m;
  }
  static std::unordered_map<const void*, size_t>& sizes() {
    static auto* m = new std::unordered_map<const void*, size_t>();
    return *m;
  }
  static void release(void* ptr) {
    if (ptr == nullptr) {
      return;
    }
    {
      std::lock_guard<std::mutex> lock(sizes_mutex());
      sizes().erase(ptr);
    }
    [(__bridge id<MTLBuffer>)ptr release];
  }
  mutable std::atomic<uint64_t> stream_uses_{0};
};

} // namespace

IMPSAllocator* getIMPSAllocator() {
  static StandinAllocator* allocator = new StandinAllocator();
  return allocator;
}

bool isMPSPinnedPtr(const void* data) {
  return getIMPSAllocator()->isSharedBuffer(data);
}

} // namespace at::mps
