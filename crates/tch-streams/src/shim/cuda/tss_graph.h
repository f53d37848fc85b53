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
int32_t tss_graph_capture_end(TssGraph* graph);
/* Launches the captured work on the calling thread's current stream. */
int32_t tss_graph_replay(TssGraph* graph);

#ifdef __cplusplus
}
#endif

#endif /* TCH_STREAMS_GRAPH_H */
