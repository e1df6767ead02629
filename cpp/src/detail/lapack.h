// extern "C" prototypes of the Fortran LAPACK / BLAS routines the CPU backend
// and the measures call (LP64: 32-bit integers, as Debian's OpenBLAS and the
// reference LAPACK export them). Character arguments carry the hidden Fortran
// string lengths (gfortran ABI) so that no callee reads a missing stack slot.
// Every symbol is named through POSTSVD_BLAS_NAME: scipy-openblas32 (the PyPI
// OpenBLAS the wheel bundles) exports them with a `scipy_` prefix
// (scipy_dgesdd_, scipy_openblas_set_num_threads), a system OpenBLAS without one.
// The prefix keeps our OpenBLAS apart from numpy's (scipy_..._64_ symbols).
#pragma once

#include <cstddef>
#include <limits>

namespace postsvd::detail {

using lapack_int = int;
using fortran_strlen = std::size_t;

}  // namespace postsvd::detail

// POSTSVD_BLAS_SYMBOL_PREFIX comes from CMake (cmake/dependencies.cmake): `scipy_` or empty.
#ifndef POSTSVD_BLAS_SYMBOL_PREFIX
#define POSTSVD_BLAS_SYMBOL_PREFIX
#endif
#define POSTSVD_BLAS_CONCAT_(prefix, name) prefix##name
#define POSTSVD_BLAS_CONCAT(prefix, name) POSTSVD_BLAS_CONCAT_(prefix, name)
/// The exported name of a BLAS / LAPACK / OpenBLAS symbol: POSTSVD_BLAS_NAME(dgesdd_).
#define POSTSVD_BLAS_NAME(name) POSTSVD_BLAS_CONCAT(POSTSVD_BLAS_SYMBOL_PREFIX, name)

extern "C" {

using postsvd_lapack_int = postsvd::detail::lapack_int;
using postsvd_fortran_strlen = postsvd::detail::fortran_strlen;

// Reduced / full SVD, divide and conquer.
void POSTSVD_BLAS_NAME(sgesdd_)(const char* jobz, const postsvd_lapack_int* m, const postsvd_lapack_int* n, float* a,
             const postsvd_lapack_int* lda, float* s, float* u, const postsvd_lapack_int* ldu, float* vt,
             const postsvd_lapack_int* ldvt, float* work, const postsvd_lapack_int* lwork, postsvd_lapack_int* iwork,
             postsvd_lapack_int* info, postsvd_fortran_strlen jobz_len);
void POSTSVD_BLAS_NAME(dgesdd_)(const char* jobz, const postsvd_lapack_int* m, const postsvd_lapack_int* n, double* a,
             const postsvd_lapack_int* lda, double* s, double* u, const postsvd_lapack_int* ldu, double* vt,
             const postsvd_lapack_int* ldvt, double* work, const postsvd_lapack_int* lwork, postsvd_lapack_int* iwork,
             postsvd_lapack_int* info, postsvd_fortran_strlen jobz_len);

// SVD by QR iteration: the fallback when ?gesdd does not converge.
void POSTSVD_BLAS_NAME(sgesvd_)(const char* jobu, const char* jobvt, const postsvd_lapack_int* m, const postsvd_lapack_int* n, float* a,
             const postsvd_lapack_int* lda, float* s, float* u, const postsvd_lapack_int* ldu, float* vt,
             const postsvd_lapack_int* ldvt, float* work, const postsvd_lapack_int* lwork, postsvd_lapack_int* info,
             postsvd_fortran_strlen jobu_len, postsvd_fortran_strlen jobvt_len);
void POSTSVD_BLAS_NAME(dgesvd_)(const char* jobu, const char* jobvt, const postsvd_lapack_int* m, const postsvd_lapack_int* n, double* a,
             const postsvd_lapack_int* lda, double* s, double* u, const postsvd_lapack_int* ldu, double* vt,
             const postsvd_lapack_int* ldvt, double* work, const postsvd_lapack_int* lwork, postsvd_lapack_int* info,
             postsvd_fortran_strlen jobu_len, postsvd_fortran_strlen jobvt_len);

// Symmetric eigendecomposition, divide and conquer (constructions: values only; the
// warm-started SVD: the block rotations of its Jacobi).
void POSTSVD_BLAS_NAME(dsyevd_)(const char* jobz, const char* uplo, const postsvd_lapack_int* n, double* a,
                                const postsvd_lapack_int* lda, double* w, double* work, const postsvd_lapack_int* lwork,
                                postsvd_lapack_int* iwork, const postsvd_lapack_int* liwork, postsvd_lapack_int* info,
                                postsvd_fortran_strlen jobz_len, postsvd_fortran_strlen uplo_len);

// One-sided Jacobi SVD; JOBV = 'A' applies its rotations to a given V (a warm start).
void POSTSVD_BLAS_NAME(dgesvj_)(const char* joba, const char* jobu, const char* jobv, const postsvd_lapack_int* m,
                                const postsvd_lapack_int* n, double* a, const postsvd_lapack_int* lda, double* sva,
                                const postsvd_lapack_int* mv, double* v, const postsvd_lapack_int* ldv, double* work,
                                const postsvd_lapack_int* lwork, postsvd_lapack_int* info,
                                postsvd_fortran_strlen joba_len, postsvd_fortran_strlen jobu_len,
                                postsvd_fortran_strlen jobv_len);

// C = alpha A^T A + beta C (trans = 'T'), one triangle of C.
void POSTSVD_BLAS_NAME(dsyrk_)(const char* uplo, const char* trans, const postsvd_lapack_int* n,
                               const postsvd_lapack_int* k, const double* alpha, const double* a,
                               const postsvd_lapack_int* lda, const double* beta, double* c,
                               const postsvd_lapack_int* ldc, postsvd_fortran_strlen uplo_len,
                               postsvd_fortran_strlen trans_len);

// C = alpha op(A) op(B) + beta C.
void POSTSVD_BLAS_NAME(sgemm_)(const char* transa, const char* transb, const postsvd_lapack_int* m, const postsvd_lapack_int* n,
            const postsvd_lapack_int* k, const float* alpha, const float* a, const postsvd_lapack_int* lda,
            const float* b, const postsvd_lapack_int* ldb, const float* beta, float* c,
            const postsvd_lapack_int* ldc, postsvd_fortran_strlen transa_len, postsvd_fortran_strlen transb_len);
void POSTSVD_BLAS_NAME(dgemm_)(const char* transa, const char* transb, const postsvd_lapack_int* m, const postsvd_lapack_int* n,
            const postsvd_lapack_int* k, const double* alpha, const double* a, const postsvd_lapack_int* lda,
            const double* b, const postsvd_lapack_int* ldb, const double* beta, double* c,
            const postsvd_lapack_int* ldc, postsvd_fortran_strlen transa_len, postsvd_fortran_strlen transb_len);

// OpenBLAS extensions. Weak: with the reference BLAS/LAPACK they resolve to
// nullptr, and callers must test the pointer before calling.
void POSTSVD_BLAS_NAME(openblas_set_num_threads)(int num_threads) __attribute__((weak));
int POSTSVD_BLAS_NAME(openblas_get_num_threads)(void) __attribute__((weak));
char* POSTSVD_BLAS_NAME(openblas_get_config)(void) __attribute__((weak));

}  // extern "C"

namespace postsvd::detail {

/// Typed front doors so templates can call one name for float and double.
inline void gesdd(char jobz, lapack_int m, lapack_int n, float* a, lapack_int lda, float* s, float* u, lapack_int ldu,
                  float* vt, lapack_int ldvt, float* work, lapack_int lwork, lapack_int* iwork, lapack_int* info) {
  POSTSVD_BLAS_NAME(sgesdd_)(&jobz, &m, &n, a, &lda, s, u, &ldu, vt, &ldvt, work, &lwork, iwork, info, 1);
}
inline void gesdd(char jobz, lapack_int m, lapack_int n, double* a, lapack_int lda, double* s, double* u,
                  lapack_int ldu, double* vt, lapack_int ldvt, double* work, lapack_int lwork, lapack_int* iwork,
                  lapack_int* info) {
  POSTSVD_BLAS_NAME(dgesdd_)(&jobz, &m, &n, a, &lda, s, u, &ldu, vt, &ldvt, work, &lwork, iwork, info, 1);
}
inline void gesvd(char jobu, char jobvt, lapack_int m, lapack_int n, float* a, lapack_int lda, float* s, float* u,
                  lapack_int ldu, float* vt, lapack_int ldvt, float* work, lapack_int lwork, lapack_int* info) {
  POSTSVD_BLAS_NAME(sgesvd_)(&jobu, &jobvt, &m, &n, a, &lda, s, u, &ldu, vt, &ldvt, work, &lwork, info, 1, 1);
}
inline void gesvd(char jobu, char jobvt, lapack_int m, lapack_int n, double* a, lapack_int lda, double* s, double* u,
                  lapack_int ldu, double* vt, lapack_int ldvt, double* work, lapack_int lwork, lapack_int* info) {
  POSTSVD_BLAS_NAME(dgesvd_)(&jobu, &jobvt, &m, &n, a, &lda, s, u, &ldu, vt, &ldvt, work, &lwork, info, 1, 1);
}
inline void gemm(char transa, char transb, lapack_int m, lapack_int n, lapack_int k, float alpha, const float* a,
                 lapack_int lda, const float* b, lapack_int ldb, float beta, float* c, lapack_int ldc) {
  POSTSVD_BLAS_NAME(sgemm_)(&transa, &transb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc, 1, 1);
}
inline void gemm(char transa, char transb, lapack_int m, lapack_int n, lapack_int k, double alpha, const double* a,
                 lapack_int lda, const double* b, lapack_int ldb, double beta, double* c, lapack_int ldc) {
  POSTSVD_BLAS_NAME(dgemm_)(&transa, &transb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc, 1, 1);
}

inline void syevd(char jobz, char uplo, lapack_int n, double* a, lapack_int lda, double* w, double* work,
                  lapack_int lwork, lapack_int* iwork, lapack_int liwork, lapack_int* info) {
  POSTSVD_BLAS_NAME(dsyevd_)(&jobz, &uplo, &n, a, &lda, w, work, &lwork, iwork, &liwork, info, 1, 1);
}
inline void gesvj(char joba, char jobu, char jobv, lapack_int m, lapack_int n, double* a, lapack_int lda, double* sva,
                  lapack_int mv, double* v, lapack_int ldv, double* work, lapack_int lwork, lapack_int* info) {
  POSTSVD_BLAS_NAME(dgesvj_)(&joba, &jobu, &jobv, &m, &n, a, &lda, sva, &mv, v, &ldv, work, &lwork, info, 1, 1, 1);
}
inline void syrk(char uplo, char trans, lapack_int n, lapack_int k, double alpha, const double* a, lapack_int lda,
                 double beta, double* c, lapack_int ldc) {
  POSTSVD_BLAS_NAME(dsyrk_)(&uplo, &trans, &n, &k, &alpha, a, &lda, &beta, c, &ldc, 1, 1);
}

/// Converts a LAPACK workspace-size answer (returned in a float or double) to
/// an integer, rounded up: a float query can round the true size down.
template <class T>
lapack_int workspace_size(T query) {
  const double padded = static_cast<double>(query) * (1.0 + 4.0 * std::numeric_limits<T>::epsilon()) + 1.0;
  return static_cast<lapack_int>(padded);
}

}  // namespace postsvd::detail
