// mps-emu: os_log. Logging handles exist so that callers can keep them; nothing is logged.
#pragma once
#include <stdint.h>
typedef struct os_log_s* os_log_t;
#ifdef __cplusplus
extern "C" {
#endif
// Returns a process-lifetime handle (never NULL); subsystem and category are ignored.
os_log_t os_log_create(const char* subsystem, const char* category);
#ifdef __cplusplus
}
#endif
