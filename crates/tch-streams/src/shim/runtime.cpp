// Facts about the libtorch this process loaded: version, build configuration, backends.
#include "guarded.hpp"

#include <ATen/Version.h>
#include <torch/headeronly/version.h>

#include <cstdlib>
#include <cstring>

extern "C" {

const char* tss_compiled_torch_version(void) { return TORCH_VERSION; }

const void* tss_libtorch_cpu_anchor(void) {
  // at::show_config is defined in libtorch_cpu; its address lies inside that mapping.
  return reinterpret_cast<const void*>(&at::show_config);
}

int32_t tss_build_config(char** out) {
  return tss::guarded([&] {
    tss::require_out(out, "out");
    std::string cfg = at::show_config();
    char* buf = static_cast<char*>(std::malloc(cfg.size() + 1));
    if (buf == nullptr) throw tss::Failure{TSS_ERR_STD, "out of host memory"};
    std::memcpy(buf, cfg.c_str(), cfg.size() + 1);
    *out = buf;
  });
}

void tss_string_free(char* s) { std::free(s); }

bool tss_has_backend(int8_t device_type) {
  return c10::impl::hasDeviceGuardImpl(static_cast<c10::DeviceType>(device_type));
}

int32_t tss_device_count(int8_t device_type, int32_t* out) {
  return tss::guarded([&] {
    tss::require_out(out, "out");
    auto type = static_cast<c10::DeviceType>(device_type);
    *out = c10::impl::hasDeviceGuardImpl(type) ? c10::impl::getDeviceGuardImpl(type)->deviceCount() : 0;
  });
}

}  // extern "C"
