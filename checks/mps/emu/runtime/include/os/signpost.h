// mps-emu: os_signpost. Signposts are never enabled, so tracing code paths stay off.
#pragma once
#include <os/log.h>
#include <stdint.h>
typedef uint64_t os_signpost_id_t;
typedef uint8_t os_signpost_type_t;
#define OS_SIGNPOST_EVENT ((os_signpost_type_t)0x00)
#define OS_SIGNPOST_INTERVAL_BEGIN ((os_signpost_type_t)0x01)
#define OS_SIGNPOST_INTERVAL_END ((os_signpost_type_t)0x02)
#define OS_SIGNPOST_ID_NULL ((os_signpost_id_t)0)
#define OS_SIGNPOST_ID_INVALID ((os_signpost_id_t)~0)
#ifdef __cplusplus
extern "C" {
#endif
// A fresh id on every call (a process-wide counter, starting at 1).
os_signpost_id_t os_signpost_id_generate(os_log_t log);
// Always false.
bool os_signpost_enabled(os_log_t log);
#ifdef __cplusplus
}
#endif
