// mps-emu: forced include (-include) for sources compiled against the emulator: the Darwin libc
// extensions that the MPS headers use, implemented by libmpsemu.a.
#pragma once
#include <stdint.h>
#include <time.h>
#ifdef __cplusplus
extern "C" {
#endif
// Darwin: the given clock in nanoseconds (here: clock_gettime of the same Linux clock id).
uint64_t clock_gettime_nsec_np(clockid_t clock_id);
#ifdef __cplusplus
}
#endif
#ifdef __cplusplus
// libc++ on Darwin reaches <condition_variable> through the SDK headers that the MPS headers
// include; libstdc++ here does not, so it is included up front.
#include <condition_variable>
#endif
