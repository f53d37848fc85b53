// Host tensors made for copies to a device: over memory their caller owns (no copy of the
// bytes; the caller's release function runs exactly once, when the tensor's storage goes, or at
// once if no tensor is made), and page-locked ones from the accelerator's host allocator.
#include "guarded.hpp"

#include <ATen/ATen.h>

#include <atomic>
#include <cstdint>
#include <memory>

extern "C" {

int32_t tss_host_tensor_over(void* data, const int64_t* sizes, size_t ndim, int8_t scalar_type, void* owner,
                             void (*release)(void*), void** out) {
  // Set by whichever runs first: the storage's deleter, or the failure path below.
  auto released = std::make_shared<std::atomic<bool>>(false);
  auto release_once = [released, owner, release]() {
    if (release != nullptr && !released->exchange(true)) release(owner);
  };
  int32_t status = tss::guarded([&] {
    tss::require_out(out, "out");
    *out = nullptr;
    if (release == nullptr) throw tss::Failure{TSS_ERR_INVALID_ARGUMENT, "no release function"};
    if (ndim > 0 && sizes == nullptr) throw tss::Failure{TSS_ERR_INVALID_ARGUMENT, "null sizes"};
    if (scalar_type < 0 || scalar_type >= static_cast<int8_t>(c10::ScalarType::NumOptions)) {
      throw tss::Failure{TSS_ERR_INVALID_ARGUMENT, "unknown scalar type " + std::to_string(scalar_type)};
    }
    auto type = static_cast<c10::ScalarType>(scalar_type);
    auto element = c10::elementSize(type);
    if (data == nullptr || reinterpret_cast<std::uintptr_t>(data) % element != 0) {
      throw tss::Failure{TSS_ERR_INVALID_ARGUMENT, "data is null or not aligned to its " + std::to_string(element) +
                                                       "-byte elements"};
    }
    auto options = at::TensorOptions().dtype(type).device(at::kCPU);
    auto tensor = at::from_blob(data, at::IntArrayRef(sizes, ndim), [release_once](void*) { release_once(); }, options);
    *out = new at::Tensor(std::move(tensor));
  });
  if (status != TSS_OK) release_once();
  return status;
}

int32_t tss_host_tensor_pinned(const int64_t* sizes, size_t ndim, int8_t scalar_type, void** out) {
  return tss::guarded([&] {
    tss::require_out(out, "out");
    *out = nullptr;
    if (ndim > 0 && sizes == nullptr) throw tss::Failure{TSS_ERR_INVALID_ARGUMENT, "null sizes"};
    if (scalar_type < 0 || scalar_type >= static_cast<int8_t>(c10::ScalarType::NumOptions)) {
      throw tss::Failure{TSS_ERR_INVALID_ARGUMENT, "unknown scalar type " + std::to_string(scalar_type)};
    }
    auto options = at::TensorOptions().dtype(static_cast<c10::ScalarType>(scalar_type)).device(at::kCPU).pinned_memory(true);
    *out = new at::Tensor(at::empty(at::IntArrayRef(sizes, ndim), options));
  });
}

}  // extern "C"
