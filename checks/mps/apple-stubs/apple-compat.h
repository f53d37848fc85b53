// Forced include (-include) for the objc-syntax check: Darwin libc extensions the MPS headers use.
#pragma once
#include <stdint.h>
#include <time.h>
#ifdef __cplusplus
extern "C" {
#endif
// Darwin: nanoseconds of the given clock.
uint64_t clock_gettime_nsec_np(clockid_t clock_id);
#ifdef __cplusplus
}
#endif
#ifdef __cplusplus
// libc++ on Darwin reaches <condition_variable> through the SDK headers that the MPS headers
// include; libstdc++ here does not, so it is included up front.
#include <condition_variable>
#endif
