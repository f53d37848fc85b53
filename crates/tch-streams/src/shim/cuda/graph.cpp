// CUDA graph capture/replay for the engine's workers (`cuda-graphs` feature).
#include "tss_graph.h"
#include "../guarded.hpp"

#include <ATen/cuda/CUDAGraph.h>

struct TssGraph {
  at::cuda::CUDAGraph graph;
};

namespace {
TssGraph& checked(TssGraph* g) {
  if (g == nullptr) throw tss::Failure{TSS_ERR_INVALID_ARGUMENT, "null graph"};
  return *g;
}
}  // namespace

extern "C" {

int32_t tss_graph_new(TssGraph** out) {
  return tss::guarded([&] {
    tss::require_out(out, "out");
    *out = new TssGraph{};
  });
}

void tss_graph_free(TssGraph* graph) {
  try {
    delete graph;
  } catch (...) {
  }
}

int32_t tss_graph_capture_begin(TssGraph* graph) {
  return tss::guarded([&] { checked(graph).graph.capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal); });
}

int32_t tss_graph_capture_begin_in(TssGraph* graph, uint64_t pool_hi, uint64_t pool_lo) {
  return tss::guarded([&] {
    const at::cuda::MempoolId_t pool{static_cast<at::cuda::CaptureId_t>(pool_hi), static_cast<at::cuda::CaptureId_t>(pool_lo)};
    checked(graph).graph.capture_begin(pool, cudaStreamCaptureModeThreadLocal);
  });
}

int32_t tss_graph_pool(TssGraph* graph, uint64_t* pool_hi, uint64_t* pool_lo) {
  return tss::guarded([&] {
    tss::require_out(pool_hi, "pool_hi");
    tss::require_out(pool_lo, "pool_lo");
    const auto pool = checked(graph).graph.pool();
    *pool_hi = static_cast<uint64_t>(pool.first);
    *pool_lo = static_cast<uint64_t>(pool.second);
  });
}

int32_t tss_graph_capture_end(TssGraph* graph) {
  return tss::guarded([&] { checked(graph).graph.capture_end(); });
}

int32_t tss_graph_replay(TssGraph* graph) {
  return tss::guarded([&] { checked(graph).graph.replay(); });
}

}  // extern "C"
