/* Stands in for the cuSOLVER header when blas.cpp reads ATen/cuda/CUDAContextLight.h: that header
 * needs only the handle type from it, and the real one pulls in half-precision headers that need
 * CUDA's C++ library (nv/target), which a PyPI CUDA install may lack. Written by us from the
 * public cuSOLVER documentation: an opaque handle is a pointer to an undefined context struct. */
#ifndef TSS_HANDLES_CUSOLVERDN_H
#define TSS_HANDLES_CUSOLVERDN_H
typedef struct cusolverDnContext* cusolverDnHandle_t;
#endif
