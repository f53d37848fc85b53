// Internal to the shim: the single path by which C++ failures become a TssStatus plus a
// thread-local message. Every exported function body runs inside tss::guarded().
#pragma once

#include "tss_shim.h"

#include <c10/core/Device.h>
#include <c10/core/Stream.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/util/Exception.h>

#include <exception>
#include <string>
#include <utility>

namespace tss {

// A failure the shim raises itself, with the status it maps to.
struct Failure {
  TssStatus status;
  std::string message;
};

void set_last_error(std::string message);

template <class Body>
int32_t guarded(Body&& body) noexcept {
  try {
    std::forward<Body>(body)();
    return TSS_OK;
  } catch (const Failure& f) {
    set_last_error(f.message);
    return f.status;
  } catch (const c10::Error& e) {
    set_last_error(e.what_without_backtrace());
    return TSS_ERR_TORCH;
  } catch (const std::exception& e) {
    set_last_error(e.what());
    return TSS_ERR_STD;
  } catch (...) {
    set_last_error("unknown C++ exception");
    return TSS_ERR_UNKNOWN;
  }
}

// The registered guard implementation for a device type, or a TSS_ERR_NO_BACKEND failure.
const c10::impl::DeviceGuardImplInterface& backend(int8_t device_type);

// Validates the index against the backend's device count and builds the c10::Device.
c10::Device checked_device(int8_t device_type, int8_t device_index);

inline c10::Stream unpack(TssStream s) {
  return c10::Stream::unpack3(s.id, static_cast<c10::DeviceIndex>(s.device_index),
                              static_cast<c10::DeviceType>(s.device_type));
}

inline TssStream pack(const c10::Stream& s) {
  auto d = s.pack3();
  TssStream out;
  out.id = d.stream_id;
  out.device_index = static_cast<int8_t>(d.device_index);
  out.device_type = static_cast<int8_t>(d.device_type);
  return out;
}

template <class T>
void require_out(T* p, const char* name) {
  if (p == nullptr) {
    throw Failure{TSS_ERR_INVALID_ARGUMENT, std::string("null out-pointer: ") + name};
  }
}

}  // namespace tss
