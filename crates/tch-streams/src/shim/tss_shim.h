/*
 * tch-streams shim: a C interface over libtorch's device-generic c10 guard interface
 * (c10::impl::DeviceGuardImplInterface, c10::Stream, c10::Event).
 *
 * Conventions, shared by every function here:
 *  - The return value is a TssStatus. TSS_OK means success and the out-parameters are written;
 *    any other value means failure, nothing was written, and tss_last_error() holds libtorch's
 *    (or the shim's) message for the calling thread until that thread's next failing call.
 *  - No C++ exception ever crosses this boundary.
 *  - Device types are c10::DeviceType values (CPU = 0, CUDA = 1, MPS = 13); device indices are
 *    c10::DeviceIndex values. A TssStream is c10::Stream in its packed form.
 *  - Thread rules are libtorch's: the "current" stream and device are per thread; every other
 *    function may be called from any thread.
 * This header is read by bindgen; keep it plain C.
 */
#ifndef TCH_STREAMS_SHIM_H
#define TCH_STREAMS_SHIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum TssStatus {
  TSS_OK = 0,
  /* libtorch has no guard implementation registered for the device type. */
  TSS_ERR_NO_BACKEND = 1,
  /* The device index is outside 0..device_count. */
  TSS_ERR_DEVICE_INDEX = 2,
  /* libtorch raised c10::Error (its message is in tss_last_error). */
  TSS_ERR_TORCH = 3,
  /* A std::exception other than c10::Error. */
  TSS_ERR_STD = 4,
  /* Anything else that was thrown. */
  TSS_ERR_UNKNOWN = 5,
  /* An argument the shim itself rejected (null pointer, device mismatch). */
  TSS_ERR_INVALID_ARGUMENT = 6
} TssStatus;

/* c10::Stream, packed: (stream id, device index, device type). */
typedef struct TssStream {
  int64_t id;
  int8_t device_index;
  int8_t device_type;
} TssStream;

/* An owned c10::Event; free with tss_event_free. */
typedef struct TssEvent TssEvent;

/* The calling thread's last error message ("" if none). Valid until its next failing call. */
const char* tss_last_error(void);

/* ---- runtime facts ---- */

/* The libtorch version the shim was compiled against (a static string, never freed). */
const char* tss_compiled_torch_version(void);
/* An address inside libtorch_cpu, for dladdr() to name the file the process really mapped. */
const void* tss_libtorch_cpu_anchor(void);
/* libtorch's build configuration (at::show_config()); free *out with tss_string_free. */
int32_t tss_build_config(char** out);
void tss_string_free(char* s);
/* Whether a guard implementation is registered for the device type (never fails). */
bool tss_has_backend(int8_t device_type);
/* Number of devices of that type (0 when no backend). */
int32_t tss_device_count(int8_t device_type, int32_t* out);

/* ---- streams ---- */

int32_t tss_stream_from_pool(int8_t device_type, int8_t device_index, bool high_priority, TssStream* out);
int32_t tss_stream_default(int8_t device_type, int8_t device_index, TssStream* out);
/* The calling thread's current stream on that device. */
int32_t tss_stream_current(int8_t device_type, int8_t device_index, TssStream* out);
/* Makes `stream` current for the calling thread on its device; returns the one it replaced. */
int32_t tss_stream_exchange(TssStream stream, TssStream* previous);
/* Non-blocking: whether all work queued on the stream has finished. */
int32_t tss_stream_query(TssStream stream, bool* ready);
/* Blocks the calling thread until all work queued on the stream has finished. */
int32_t tss_stream_synchronize(TssStream stream);
/* Blocks the calling thread until all work on every stream of the device has finished. */
int32_t tss_device_synchronize(int8_t device_type, int8_t device_index);

/* Guard entry: makes the stream's device current and the stream current on it, for the calling
 * thread; writes what must be restored. */
int32_t tss_guard_enter(TssStream stream, int8_t* previous_device_index, TssStream* previous_stream);
/* Guard exit: restores what tss_guard_enter wrote (stream first, then device). */
int32_t tss_guard_exit(TssStream previous_stream, int8_t previous_device_index);

/* Tells the device's caching allocator that `tensor` (an at::Tensor*, e.g. tch's Tensor::as_ptr)
 * is in use on `stream`, so its memory is not reused before that stream's queued work is done. */
int32_t tss_record_stream(const void* tensor, TssStream stream);

/* ---- device memory (the backend's caching allocator) ---- */

/* Bytes currently handed out to tensors, and reserved from the driver, on that device; and the
 * highest value of each since the process started or tss_memory_reset_peak. */
int32_t tss_memory_stats(int8_t device_type, int8_t device_index, int64_t* allocated, int64_t* reserved,
                         int64_t* peak_allocated, int64_t* peak_reserved);
/* Starts the device's peak figures again from the current ones. */
int32_t tss_memory_reset_peak(int8_t device_type, int8_t device_index);
/* Returns the allocator's cached, unused blocks to the driver. */
int32_t tss_memory_empty_cache(int8_t device_type);
/* The driver's free and total bytes on that device (free memory counts what every process holds). */
int32_t tss_memory_info(int8_t device_type, int8_t device_index, int64_t* free_bytes, int64_t* total_bytes);

/* ---- host tensors over caller-owned memory ---- */

/* A CPU tensor (an at::Tensor*, for tch's Tensor::from_ptr) of `sizes` and `scalar_type` (c10's
 * ScalarType numbering) over `data`, which must be aligned to the element size. No byte is
 * copied. `release(owner)` runs exactly once: when the tensor's storage is freed, or before this
 * returns when it fails. */
int32_t tss_host_tensor_over(void* data, const int64_t* sizes, size_t ndim, int8_t scalar_type, void* owner,
                             void (*release)(void*), void** out);
/* An uninitialised page-locked CPU tensor from the accelerator's host allocator (no pageable
 * tensor made and copied first); fails where the loaded libtorch has no such allocator. */
int32_t tss_host_tensor_pinned(const int64_t* sizes, size_t ndim, int8_t scalar_type, void** out);

/* ---- events ---- */

int32_t tss_event_new(int8_t device_type, bool enable_timing, TssEvent** out);
void tss_event_free(TssEvent* event);
int32_t tss_event_record(TssEvent* event, TssStream stream);
/* Makes `stream` wait (on the device, not the CPU) until the event's recorded work is done. */
int32_t tss_event_block(const TssEvent* event, TssStream stream);
int32_t tss_event_query(const TssEvent* event, bool* ready);
/* Blocks the calling thread until the event's recorded work is done. */
int32_t tss_event_synchronize(const TssEvent* event);
/* Milliseconds between `start` and `end`; both must be recorded with timing enabled. */
int32_t tss_event_elapsed_ms(const TssEvent* start, const TssEvent* end, double* ms);

#ifdef __cplusplus
}
#endif

#endif /* TCH_STREAMS_SHIM_H */
