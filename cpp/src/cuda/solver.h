// Typed thin wrappers over cuBLAS / cuSOLVER (float and double), so that the
// pipeline (pipeline.h) is written once for both working precisions.
#pragma once

#include <cublas_v2.h>
#include <cusolverDn.h>
#include <library_types.h>

#include "cuda/check.h"

namespace postsvd {
namespace cuda {

template <class T>
struct Blas;

template <>
struct Blas<float> {
  static constexpr cudaDataType_t kType = CUDA_R_32F;
  static cublasStatus_t gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                             const float* alpha, const float* a, int lda, const float* b, int ldb, const float* beta,
                             float* c, int ldc) {
    return cublasSgemm(h, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
  static cublasStatus_t geam(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                             const float* alpha, const float* a, int lda, const float* beta, const float* b, int ldb,
                             float* c, int ldc) {
    return cublasSgeam(h, ta, tb, m, n, alpha, a, lda, beta, b, ldb, c, ldc);
  }
  static cusolverStatus_t syevd_buffer(cusolverDnHandle_t h, int n, int* lwork) {
    return cusolverDnSsyevd_bufferSize(h, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, nullptr, n, nullptr, lwork);
  }
  static cusolverStatus_t syevd(cusolverDnHandle_t h, int n, float* a, int lda, float* w, float* work, int lwork, int* info) {
    return cusolverDnSsyevd(h, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, a, lda, w, work, lwork, info);
  }
  static cusolverStatus_t syevj_buffer(cusolverDnHandle_t h, int n, syevjInfo_t params, int* lwork) {
    return cusolverDnSsyevj_bufferSize(h, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, nullptr, n, nullptr, lwork,
                                        params);
  }
  static cusolverStatus_t syevj(cusolverDnHandle_t h, int n, float* a, int lda, float* w, float* work, int lwork, int* info,
                                syevjInfo_t params) {
    return cusolverDnSsyevj(h, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, a, lda, w, work, lwork, info, params);
  }
  static cusolverStatus_t gesvdj_buffer(cusolverDnHandle_t h, int m, int n, gesvdjInfo_t params, int* lwork) {
    return cusolverDnSgesvdj_bufferSize(h, CUSOLVER_EIG_MODE_VECTOR, 1, m, n, nullptr, m, nullptr, nullptr, m, nullptr, n,
                                        lwork, params);
  }
  static cusolverStatus_t gesvdj(cusolverDnHandle_t h, int m, int n, float* a, int lda, float* s, float* u, int ldu,
                                 float* v, int ldv, float* work, int lwork, int* info, gesvdjInfo_t params) {
    return cusolverDnSgesvdj(h, CUSOLVER_EIG_MODE_VECTOR, 1, m, n, a, lda, s, u, ldu, v, ldv, work, lwork, info, params);
  }
};

template <>
struct Blas<double> {
  static constexpr cudaDataType_t kType = CUDA_R_64F;
  static cublasStatus_t gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                             const double* alpha, const double* a, int lda, const double* b, int ldb,
                             const double* beta, double* c, int ldc) {
    return cublasDgemm(h, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
  static cublasStatus_t geam(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                             const double* alpha, const double* a, int lda, const double* beta, const double* b,
                             int ldb, double* c, int ldc) {
    return cublasDgeam(h, ta, tb, m, n, alpha, a, lda, beta, b, ldb, c, ldc);
  }
  static cusolverStatus_t syevd_buffer(cusolverDnHandle_t h, int n, int* lwork) {
    return cusolverDnDsyevd_bufferSize(h, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, nullptr, n, nullptr, lwork);
  }
  static cusolverStatus_t syevd(cusolverDnHandle_t h, int n, double* a, int lda, double* w, double* work, int lwork,
                                int* info) {
    return cusolverDnDsyevd(h, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, a, lda, w, work, lwork, info);
  }
  static cusolverStatus_t syevj_buffer(cusolverDnHandle_t h, int n, syevjInfo_t params, int* lwork) {
    return cusolverDnDsyevj_bufferSize(h, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, nullptr, n, nullptr, lwork,
                                        params);
  }
  static cusolverStatus_t syevj(cusolverDnHandle_t h, int n, double* a, int lda, double* w, double* work, int lwork, int* info,
                                syevjInfo_t params) {
    return cusolverDnDsyevj(h, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, a, lda, w, work, lwork, info, params);
  }
  static cusolverStatus_t gesvdj_buffer(cusolverDnHandle_t h, int m, int n, gesvdjInfo_t params, int* lwork) {
    return cusolverDnDgesvdj_bufferSize(h, CUSOLVER_EIG_MODE_VECTOR, 1, m, n, nullptr, m, nullptr, nullptr, m, nullptr, n,
                                        lwork, params);
  }
  static cusolverStatus_t gesvdj(cusolverDnHandle_t h, int m, int n, double* a, int lda, double* s, double* u, int ldu,
                                 double* v, int ldv, double* work, int lwork, int* info, gesvdjInfo_t params) {
    return cusolverDnDgesvdj(h, CUSOLVER_EIG_MODE_VECTOR, 1, m, n, a, lda, s, u, ldu, v, ldv, work, lwork, info, params);
  }
};

}  // namespace cuda
}  // namespace postsvd
