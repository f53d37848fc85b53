// The thread-local error slot and the backend lookups shared by every shim entry point.
#include "guarded.hpp"

namespace {
thread_local std::string last_error;
}

namespace tss {

void set_last_error(std::string message) { last_error = std::move(message); }

const c10::impl::DeviceGuardImplInterface& backend(int8_t device_type) {
  auto type = static_cast<c10::DeviceType>(device_type);
  if (!c10::impl::hasDeviceGuardImpl(type)) {
    throw Failure{TSS_ERR_NO_BACKEND,
                  "this libtorch has no " + c10::DeviceTypeName(type, /*lower_case=*/true) +
                      " backend registered (built without it, or its library is not loaded)"};
  }
  return *c10::impl::getDeviceGuardImpl(type);
}

c10::Device checked_device(int8_t device_type, int8_t device_index) {
  const auto& impl = backend(device_type);
  auto type = static_cast<c10::DeviceType>(device_type);
  int count = impl.deviceCount();
  if (device_index < 0 || device_index >= count) {
    throw Failure{TSS_ERR_DEVICE_INDEX,
                  c10::DeviceTypeName(type, true) + " device index " + std::to_string(device_index) +
                      " is out of range: this process sees " + std::to_string(count) + " " +
                      c10::DeviceTypeName(type, true) + " device(s)"};
  }
  return c10::Device(type, static_cast<c10::DeviceIndex>(device_index));
}

}  // namespace tss

extern "C" const char* tss_last_error(void) { return last_error.c_str(); }
