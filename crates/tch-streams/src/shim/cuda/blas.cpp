// The cuBLAS workspaces libtorch caches per (handle, stream) pair, released per thread.
//
// libtorch allocates one workspace (32 MiB on Hopper) from the caching allocator for every
// (cuBLAS handle, stream) pair it meets and keeps it for the life of the process. Handles are
// reserved per thread and go back to a pool when the thread ends; pool streams are handed out
// round robin. So threads that come and go on pool streams (an engine's workers, restarted)
// meet new pairs and the cache grows towards handles x streams workspaces. Releasing the
// entries of a thread's own handle when the thread is done keeps it at what live threads use.
#include "tss_blas.h"
#include "../guarded.hpp"

#include <ATen/cuda/CUDAContextLight.h>
#include <c10/core/DeviceGuard.h>

#include <mutex>
#include <shared_mutex>
#include <vector>

namespace {

// Removes every entry whose handle is one of `mine`; the removed workspaces are freed after the
// cache's lock is released (freeing takes the allocator's own lock).
template <class Cache>
int64_t release_entries(Cache& cache, const void* mine_a, const void* mine_b) {
  std::vector<typename decltype(cache.map)::mapped_type> doomed;
  {
    std::unique_lock<std::shared_mutex> lock(cache.mutex);
    for (auto it = cache.map.begin(); it != cache.map.end();) {
      const void* handle = std::get<0>(it->first);
      if (handle == mine_a || handle == mine_b) {
        doomed.push_back(std::move(it->second));
        it = cache.map.erase(it);
      } else {
        ++it;
      }
    }
  }
  return static_cast<int64_t>(doomed.size());
}

}  // namespace

extern "C" {

int32_t tss_cuda_release_thread_blas_workspaces(int8_t device_index, int64_t* released) {
  return tss::guarded([&] {
    tss::require_out(released, "released");
    *released = 0;
    const auto device = tss::checked_device(static_cast<int8_t>(c10::DeviceType::CUDA), device_index);
    // Through c10's registered guard, so that nothing here calls the CUDA runtime itself.
    c10::DeviceGuard on_device(device);
    // The calling thread's reserved handles on this device (reserving one if it had none).
    const void* blas = at::cuda::getCurrentCUDABlasHandle();
    const void* lt = at::cuda::getCurrentCUDABlasLtHandle();
    *released = release_entries(at::cuda::cublas_handle_stream_to_workspace(), blas, lt) +
                release_entries(at::cuda::cublaslt_handle_stream_to_workspace(), blas, lt);
  });
}

}  // extern "C"
