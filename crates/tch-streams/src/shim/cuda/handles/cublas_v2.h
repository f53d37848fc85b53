/* Stands in for the cuBLAS header when blas.cpp reads ATen/cuda/CUDAContextLight.h: that header
 * needs only the handle type from it, and the real one pulls in half-precision headers that need
 * CUDA's C++ library (nv/target), which a PyPI CUDA install may lack. Written by us from the
 * public cuBLAS documentation: an opaque handle is a pointer to an undefined context struct. */
#ifndef TSS_HANDLES_CUBLAS_V2_H
#define TSS_HANDLES_CUBLAS_V2_H
typedef struct cublasContext* cublasHandle_t;
#endif
