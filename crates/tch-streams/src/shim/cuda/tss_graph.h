/*
 * tch-streams shim, `cuda-graphs` feature only: capture and replay of CUDA graphs on the calling
 * thread's current stream (at::cuda::CUDAGraph). Same conventions as tss_shim.h: a TssStatus
 * return, the message in tss_last_error(), no exception crosses the boundary.
 */
#ifndef TCH_STREAMS_GRAPH_H
#define TCH_STREAMS_GRAPH_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct TssGraph TssGraph;

int32_t tss_graph_new(TssGraph** out);
void tss_graph_free(TssGraph* graph);
/* Starts capturing the calling thread's current (non-default) stream, in thread-local capture
 * mode: other threads' CUDA work is unaffected while this one captures. */
int32_t tss_graph_capture_begin(TssGraph* graph);
/* As tss_graph_capture_begin, but into the memory pool (pool_hi, pool_lo) of a graph captured
 * earlier (tss_graph_pool), so that the two share memory; (0, 0) makes a new pool, as
 * tss_graph_capture_begin does. Graphs that share a pool must never run at the same time, and
 * each replay's outputs must be read (or copied) before another graph of the pool is replayed:
 * one graph's outputs may lie in another's scratch memory. */
int32_t tss_graph_capture_begin_in(TssGraph* graph, uint64_t pool_hi, uint64_t pool_lo);
int32_t tss_graph_capture_end(TssGraph* graph);
/* The memory pool the graph was captured into (after tss_graph_capture_begin*). */
int32_t tss_graph_pool(TssGraph* graph, uint64_t* pool_hi, uint64_t* pool_lo);
/* Launches the captured work on the calling thread's current stream. */
int32_t tss_graph_replay(TssGraph* graph);

#ifdef __cplusplus
}
#endif

#endif /* TCH_STREAMS_GRAPH_H */
