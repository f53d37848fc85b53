// Streams, guards, synchronisation and record-stream, all through the backend's guard interface.
#include "guarded.hpp"

#include <ATen/core/Tensor.h>

extern "C" {

int32_t tss_stream_from_pool(int8_t device_type, int8_t device_index, bool high_priority, TssStream* out) {
  return tss::guarded([&] {
    tss::require_out(out, "out");
    auto device = tss::checked_device(device_type, device_index);
    *out = tss::pack(tss::backend(device_type).getStreamFromGlobalPool(device, high_priority));
  });
}

int32_t tss_stream_default(int8_t device_type, int8_t device_index, TssStream* out) {
  return tss::guarded([&] {
    tss::require_out(out, "out");
    auto device = tss::checked_device(device_type, device_index);
    *out = tss::pack(tss::backend(device_type).getDefaultStream(device));
  });
}

int32_t tss_stream_current(int8_t device_type, int8_t device_index, TssStream* out) {
  return tss::guarded([&] {
    tss::require_out(out, "out");
    auto device = tss::checked_device(device_type, device_index);
    *out = tss::pack(tss::backend(device_type).getStream(device));
  });
}

int32_t tss_stream_exchange(TssStream stream, TssStream* previous) {
  return tss::guarded([&] {
    tss::require_out(previous, "previous");
    tss::checked_device(stream.device_type, stream.device_index);
    *previous = tss::pack(tss::backend(stream.device_type).exchangeStream(tss::unpack(stream)));
  });
}

int32_t tss_stream_query(TssStream stream, bool* ready) {
  return tss::guarded([&] {
    tss::require_out(ready, "ready");
    *ready = tss::backend(stream.device_type).queryStream(tss::unpack(stream));
  });
}

int32_t tss_stream_synchronize(TssStream stream) {
  return tss::guarded([&] { tss::backend(stream.device_type).synchronizeStream(tss::unpack(stream)); });
}

int32_t tss_device_synchronize(int8_t device_type, int8_t device_index) {
  return tss::guarded([&] {
    auto device = tss::checked_device(device_type, device_index);
    tss::backend(device_type).synchronizeDevice(device.index());
  });
}

int32_t tss_guard_enter(TssStream stream, int8_t* previous_device_index, TssStream* previous_stream) {
  return tss::guarded([&] {
    tss::require_out(previous_device_index, "previous_device_index");
    tss::require_out(previous_stream, "previous_stream");
    auto target = tss::unpack(stream);
    tss::checked_device(stream.device_type, stream.device_index);
    const auto& impl = tss::backend(stream.device_type);
    c10::Device prev_device = impl.exchangeDevice(target.device());
    try {
      *previous_stream = tss::pack(impl.exchangeStream(target));
    } catch (...) {
      impl.uncheckedSetDevice(prev_device);
      throw;
    }
    *previous_device_index = static_cast<int8_t>(prev_device.index());
  });
}

int32_t tss_guard_exit(TssStream previous_stream, int8_t previous_device_index) {
  return tss::guarded([&] {
    const auto& impl = tss::backend(previous_stream.device_type);
    impl.exchangeStream(tss::unpack(previous_stream));
    impl.uncheckedSetDevice(c10::Device(static_cast<c10::DeviceType>(previous_stream.device_type),
                                        static_cast<c10::DeviceIndex>(previous_device_index)));
  });
}

int32_t tss_record_stream(const void* tensor, TssStream stream) {
  return tss::guarded([&] {
    if (tensor == nullptr) throw tss::Failure{TSS_ERR_INVALID_ARGUMENT, "null tensor"};
    const auto& t = *static_cast<const at::Tensor*>(tensor);
    auto s = tss::unpack(stream);
    if (!t.defined()) throw tss::Failure{TSS_ERR_INVALID_ARGUMENT, "record_stream on an undefined tensor"};
    if (t.device() != s.device()) {
      throw tss::Failure{TSS_ERR_INVALID_ARGUMENT, "record_stream: tensor is on " + t.device().str() +
                                                       " but the stream is on " + s.device().str()};
    }
    tss::backend(stream.device_type).recordDataPtrOnStream(t.storage().data_ptr(), s);
  });
}

}  // extern "C"
