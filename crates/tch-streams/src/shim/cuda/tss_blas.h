/*
 * tch-streams shim, CUDA only (compiled with the graph shim, when the CUDA headers are found):
 * what libtorch's cuBLAS layer keeps per thread. Same conventions as tss_shim.h.
 */
#ifndef TCH_STREAMS_BLAS_H
#define TCH_STREAMS_BLAS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Frees the cuBLAS (and cuBLASLt) workspaces libtorch cached for the calling thread's cuBLAS
 * handle on `device`, whatever stream they were made for; *released is how many. The caller must
 * have synchronised every stream it used them on. Safe against other threads: a handle is
 * reserved by one thread for that thread's life, so no other thread can be using these. */
int32_t tss_cuda_release_thread_blas_workspaces(int8_t device_index, int64_t* released);

#ifdef __cplusplus
}
#endif

#endif /* TCH_STREAMS_BLAS_H */
