// Owned c10::Event handles: record on a stream, make another stream wait, query, time.
#include "guarded.hpp"

#include <c10/core/Event.h>

struct TssEvent {
  c10::Event event;
};

namespace {
const TssEvent& checked(const TssEvent* e) {
  if (e == nullptr) throw tss::Failure{TSS_ERR_INVALID_ARGUMENT, "null event"};
  return *e;
}
}  // namespace

extern "C" {

int32_t tss_event_new(int8_t device_type, bool enable_timing, TssEvent** out) {
  return tss::guarded([&] {
    tss::require_out(out, "out");
    tss::backend(device_type);
    auto flag = enable_timing ? c10::EventFlag::BACKEND_DEFAULT : c10::EventFlag::PYTORCH_DEFAULT;
    *out = new TssEvent{c10::Event(static_cast<c10::DeviceType>(device_type), flag)};
  });
}

void tss_event_free(TssEvent* event) {
  // Destroying a recorded event returns it to the backend's pool; c10 does not throw here,
  // but nothing may escape, so swallow anything regardless.
  try {
    delete event;
  } catch (...) {
  }
}

int32_t tss_event_record(TssEvent* event, TssStream stream) {
  return tss::guarded([&] {
    if (event == nullptr) throw tss::Failure{TSS_ERR_INVALID_ARGUMENT, "null event"};
    event->event.record(tss::unpack(stream));
  });
}

int32_t tss_event_block(const TssEvent* event, TssStream stream) {
  return tss::guarded([&] { checked(event).event.block(tss::unpack(stream)); });
}

int32_t tss_event_query(const TssEvent* event, bool* ready) {
  return tss::guarded([&] {
    tss::require_out(ready, "ready");
    *ready = checked(event).event.query();
  });
}

int32_t tss_event_synchronize(const TssEvent* event) {
  return tss::guarded([&] { checked(event).event.synchronize(); });
}

int32_t tss_event_elapsed_ms(const TssEvent* start, const TssEvent* end, double* ms) {
  return tss::guarded([&] {
    tss::require_out(ms, "ms");
    *ms = checked(start).event.elapsedTime(checked(end).event);
  });
}

}  // extern "C"
