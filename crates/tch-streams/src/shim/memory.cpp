// The device caching allocator's statistics, through c10's device-generic DeviceAllocator.
#include "guarded.hpp"

#include <ATen/Context.h>
#include <c10/core/CachingDeviceAllocator.h>

namespace {
c10::DeviceAllocator& device_allocator(int8_t device_type) {
  tss::backend(device_type);  // a clear error if the backend is absent
  auto type = static_cast<c10::DeviceType>(device_type);
  if (type == c10::DeviceType::CPU) {
    throw tss::Failure{TSS_ERR_INVALID_ARGUMENT, "CPU has no caching device allocator"};
  }
  // The allocator sizes its per-device state when the backend first initialises: before any
  // tensor was made on the device, its statistics would be refused as for a device out of range.
  at::globalContext().lazyInitDevice(type);
  return *c10::getDeviceAllocator(type);
}
}  // namespace

extern "C" {

int32_t tss_memory_stats(int8_t device_type, int8_t device_index, int64_t* allocated, int64_t* reserved,
                         int64_t* peak_allocated, int64_t* peak_reserved) {
  return tss::guarded([&] {
    tss::require_out(allocated, "allocated");
    tss::require_out(reserved, "reserved");
    tss::require_out(peak_allocated, "peak_allocated");
    tss::require_out(peak_reserved, "peak_reserved");
    auto device = tss::checked_device(device_type, device_index);
    auto stats = device_allocator(device_type).getDeviceStats(device.index());
    constexpr auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    *allocated = stats.allocated_bytes[all].current;
    *reserved = stats.reserved_bytes[all].current;
    *peak_allocated = stats.allocated_bytes[all].peak;
    *peak_reserved = stats.reserved_bytes[all].peak;
  });
}

int32_t tss_memory_reset_peak(int8_t device_type, int8_t device_index) {
  return tss::guarded([&] {
    auto device = tss::checked_device(device_type, device_index);
    device_allocator(device_type).resetPeakStats(device.index());
  });
}

int32_t tss_memory_empty_cache(int8_t device_type) {
  return tss::guarded([&] { device_allocator(device_type).emptyCache(); });
}

int32_t tss_memory_info(int8_t device_type, int8_t device_index, int64_t* free_bytes, int64_t* total_bytes) {
  return tss::guarded([&] {
    tss::require_out(free_bytes, "free_bytes");
    tss::require_out(total_bytes, "total_bytes");
    auto device = tss::checked_device(device_type, device_index);
    auto [free, total] = device_allocator(device_type).getMemoryInfo(device.index());
    *free_bytes = static_cast<int64_t>(free);
    *total_bytes = static_cast<int64_t>(total);
  });
}

}  // extern "C"
