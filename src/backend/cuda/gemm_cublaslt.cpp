// Row-major GEMMs through cuBLASLt (gemm_cublaslt.h).
//
// Mapping: row-major C [m, n] (row stride ldc) is column-major Cᵀ [n, m] with the same leading
// dimension, and Cᵀ = op(B)ᵀ op(A)ᵀ. So cuBLASLt's first operand is our B with our trans_b and
// its second is our A with our trans_a; its (m, n, k) is our (n, m, k). A row-major matrix
// stored [r, c] is column-major [c, r]: "rows" of a cuBLASLt layout are our columns.
// Epilogues: cuBLASLt's bias has one value per row of its D = per column of our C, and BGRADB
// reduces its B = our op(A) over k (gemm_cublaslt.h, GemmEpilogue).
#include "backend/cuda/gemm_cublaslt.h"

#include <bit>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels/kernels.h"

namespace mh::cuda {

namespace {
cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::f32:
      return CUDA_R_32F;
    case DType::bf16:
      return CUDA_R_16BF;
    case DType::f16:
      return CUDA_R_16F;
    default:
      MH_CHECK(false, "cuBLASLt gemm: unsupported dtype ", dtype_name(t));
  }
  return CUDA_R_32F;
}

// The largest power of two (≤ 256) dividing the address and, for batches, the batch stride.
int alignment(const void* p, int64_t batch, int64_t stride_elems, size_t elem) {
  uint64_t v = reinterpret_cast<uintptr_t>(p) | 256u;
  if (batch > 1) v |= static_cast<uint64_t>(stride_elems) * elem | 256u;
  return static_cast<int>(uint64_t(1) << std::countr_zero(v));
}

cublasLtEpilogue_t lt_epilogue(GemmEpilogue e) {
  switch (e) {
    case GemmEpilogue::bias:
      return CUBLASLT_EPILOGUE_BIAS;
    case GemmEpilogue::relu_bias:
      return CUBLASLT_EPILOGUE_RELU_BIAS;
    case GemmEpilogue::bgrad_a:
      return CUBLASLT_EPILOGUE_BGRADB;  // cuBLASLt's B is our A
    case GemmEpilogue::none:
      break;
  }
  return CUBLASLT_EPILOGUE_DEFAULT;
}
}  // namespace

const char* gemm_epilogue_name(GemmEpilogue e) {
  switch (e) {
    case GemmEpilogue::bias:
      return "bias";
    case GemmEpilogue::relu_bias:
      return "relu_bias";
    case GemmEpilogue::bgrad_a:
      return "bgrad";
    case GemmEpilogue::none:
      break;
  }
  return "none";
}

struct GemmLt::Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;  // cuBLASLt's A, B, C(=D)
  cublasLtMatmulAlgo_t algo{};
  bool ok = false;  // the heuristic returned an algorithm
  ~Plan() {
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

GemmLt::GemmLt(void* workspace, size_t workspace_bytes)
    : workspace_(workspace), workspace_bytes_(workspace_bytes) {
  MH_CUBLAS_CHECK(cublasLtCreate(&handle_));
}

GemmLt::~GemmLt() {
  plans_.clear();
  if (handle_) cublasLtDestroy(handle_);
}

GemmLt::Plan& GemmLt::plan(const GemmShape& g, GemmEpilogue epi, const void* a, const void* b,
                           const void* c, const void* vec) {
  const size_t ea = dtype_size(g.ab), ec = dtype_size(g.c);
  const int align_a = alignment(a, g.batch, g.stride_a, ea);
  const int align_b = alignment(b, g.batch, g.stride_b, ea);
  const int align_c = alignment(c, g.batch, g.stride_c, ec);
  const int align_vec = epi == GemmEpilogue::none ? 0 : alignment(vec, 1, 0, ec);
  const Key key{g.trans_a,
                g.trans_b,
                g.m,
                g.n,
                g.k,
                g.lda,
                g.ldb,
                g.ldc,
                g.batch,
                g.stride_a,
                g.stride_b,
                g.stride_c,
                static_cast<int>(g.ab),
                static_cast<int>(g.c),
                align_a,
                align_b,
                align_c,
                static_cast<int>(epi),
                align_vec};
  auto it = plans_.find(key);
  if (it != plans_.end()) return *it->second;

  auto p = std::make_unique<Plan>();
  const cublasComputeType_t compute =
      g.ab == DType::f32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  MH_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->op, compute, CUDA_R_32F));
  // cuBLASLt's A is our B, its B our A.
  const cublasOperation_t op_first = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_second = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  MH_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &op_first,
                                                 sizeof(op_first)));
  MH_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &op_second,
                                                 sizeof(op_second)));
  if (epi != GemmEpilogue::none) {
    // The vector's type is left at its default, D's type: what cuBLASLt asks for a bias (and a
    // bias gradient) with these compute types. Its pointer is set again before every call.
    const cublasLtEpilogue_t e = lt_epilogue(epi);
    MH_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &e, sizeof(e)));
    MH_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &vec,
                                                   sizeof(vec)));
  }
  // Stored shapes, column-major: our B is [k, n] row-major (or [n, k] if trans_b) = [n, k]
  // column-major (or [k, n]); our A is [m, k] (or [k, m]) = column-major [k, m] (or [m, k]).
  const uint64_t first_rows = g.trans_b ? g.k : g.n, first_cols = g.trans_b ? g.n : g.k;
  const uint64_t second_rows = g.trans_a ? g.m : g.k, second_cols = g.trans_a ? g.k : g.m;
  MH_CUBLAS_CHECK(
      cublasLtMatrixLayoutCreate(&p->la, cuda_type(g.ab), first_rows, first_cols, g.ldb));
  MH_CUBLAS_CHECK(
      cublasLtMatrixLayoutCreate(&p->lb, cuda_type(g.ab), second_rows, second_cols, g.lda));
  MH_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->lc, cuda_type(g.c), g.n, g.m, g.ldc));
  if (g.batch > 1) {
    const int32_t count = static_cast<int32_t>(g.batch);
    auto set_batch = [&](cublasLtMatrixLayout_t l, int64_t stride) {
      MH_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                                                       &count, sizeof(count)));
      MH_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(
          l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
    };
    set_batch(p->la, g.stride_b);
    set_batch(p->lb, g.stride_a);
    set_batch(p->lc, g.stride_c);
  }

  cublasLtMatmulPreference_t pref = nullptr;
  MH_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = workspace_bytes_;
  const uint32_t al_first = static_cast<uint32_t>(align_b),
                 al_second = static_cast<uint32_t>(align_a), al_c = static_cast<uint32_t>(align_c);
  cublasLtMatmulHeuristicResult_t result{};
  int returned = 0;
  cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                              &al_first, sizeof(al_first));
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                              &al_second, sizeof(al_second));
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                              &al_c, sizeof(al_c));
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                              &al_c, sizeof(al_c));
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulAlgoGetHeuristic(handle_, p->op, p->la, p->lb, p->lc, p->lc, pref, 1,
                                        &result, &returned);
  cublasLtMatmulPreferenceDestroy(pref);
  // An epilogue cuBLASLt cannot do for these types is "not supported" or no result: remembered
  // as a plan without an algorithm, so the caller falls back without asking again.
  if (epi != GemmEpilogue::none && st == CUBLAS_STATUS_NOT_SUPPORTED) st = CUBLAS_STATUS_SUCCESS;
  MH_CUBLAS_CHECK(st);
  p->ok = returned > 0;
  if (p->ok) p->algo = result.algo;
  return *plans_.emplace(key, std::move(p)).first->second;
}

bool GemmLt::launch(const GemmShape& g, GemmEpilogue epi, double alpha, const void* a,
                    const void* b, double beta, void* c, const void* vec, cudaStream_t s) {
  MH_CHECK(g.m > 0 && g.n > 0 && g.k > 0 && g.batch >= 1, "gemm sizes m=", g.m, " n=", g.n,
           " k=", g.k, " batch=", g.batch, ": expected all >= 1");
  MH_CHECK(g.c == g.ab || g.c == DType::f32, "gemm: C is ", dtype_name(g.c), ", A is ",
           dtype_name(g.ab), ": expected C of A's dtype or F32");
  MH_CHECK(epi == GemmEpilogue::none || (g.batch == 1 && vec), "gemm epilogue ",
           gemm_epilogue_name(epi), ": needs a vector and batch 1 (batch=", g.batch, ")");
  Plan& p = plan(g, epi, a, b, c, vec);
  if (!p.ok) return false;
  if (epi != GemmEpilogue::none)  // the plan may have been made for another vector
    MH_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &vec, sizeof(vec)));
  const float alpha_f = static_cast<float>(alpha), beta_f = static_cast<float>(beta);
  const cublasStatus_t st = cublasLtMatmul(handle_, p.op, &alpha_f, b, p.la, a, p.lb, &beta_f, c,
                                           p.lc, c, p.lc, &p.algo, workspace_, workspace_bytes_, s);
  // An epilogue the heuristic offered but the call refuses (checked before any launch): the
  // caller falls back, now and for this plan from now on.
  if (st == CUBLAS_STATUS_NOT_SUPPORTED && epi != GemmEpilogue::none) {
    p.ok = false;
    return false;
  }
  if (st != CUBLAS_STATUS_SUCCESS) fail_cublas(st, "cublasLtMatmul", __FILE__, __LINE__);
  return true;
}

void GemmLt::run(const GemmShape& g, double alpha, const void* a, const void* b, double beta,
                 void* c, cudaStream_t s) {
  MH_CHECK(launch(g, GemmEpilogue::none, alpha, a, b, beta, c, nullptr, s),
           "cuBLASLt has no algorithm for gemm m=", g.m, " n=", g.n, " k=", g.k, " lda=", g.lda,
           " ldb=", g.ldb, " ldc=", g.ldc, " batch=", g.batch, " ", dtype_name(g.ab), "->",
           dtype_name(g.c));
}

GemmShape GemmLt::shape_of(const Tensor& a, bool ta, const Tensor& b, bool tb, const Tensor& c) {
  const int64_t m = ta ? a.cols2d() : a.rows2d(), k = ta ? a.rows2d() : a.cols2d();
  const int64_t kb = tb ? b.cols2d() : b.rows2d(), n = tb ? b.rows2d() : b.cols2d();
  MH_CHECK(k == kb && c.rows2d() == m && c.cols2d() == n, "gemm ", shape_str(a.shape()),
           ta ? "ᵀ" : "", " @ ", shape_str(b.shape()), tb ? "ᵀ" : "", " -> ", shape_str(c.shape()));
  MH_CHECK(a.dtype() == b.dtype(), "gemm: A is ", dtype_name(a.dtype()), ", B is ",
           dtype_name(b.dtype()), ": expected the same dtype");
  MH_CHECK(a.device() == Device::cuda && b.device() == Device::cuda && c.device() == Device::cuda,
           "gemm: tensors must be on the GPU");
  GemmShape g;
  g.trans_a = ta;
  g.trans_b = tb;
  g.m = m;
  g.n = n;
  g.k = k;
  g.lda = a.cols2d();
  g.ldb = b.cols2d();
  g.ldc = n;
  g.ab = a.dtype();
  g.c = c.dtype();
  return g;
}

void GemmLt::gemm(const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c, double alpha,
                  double beta, cudaStream_t s) {
  const GemmShape g = shape_of(a, ta, b, tb, c);
  if (g.m == 0 || g.n == 0) return;
  if (g.k == 0) {  // C = beta · C
    if (beta == 0)
      fill_zero(c, s);
    else if (beta != 1)
      scale(c, beta, s);
    return;
  }
  run(g, alpha, a.raw(), b.raw(), beta, c.raw(), s);
}

bool GemmLt::gemm_epilogue(const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c,
                           double alpha, double beta, GemmEpilogue epi, const Tensor& vec,
                           cudaStream_t s) {
  const GemmShape g = shape_of(a, ta, b, tb, c);
  const int64_t want = epi == GemmEpilogue::bgrad_a ? g.m : g.n;
  MH_CHECK(vec.numel() == want && vec.dtype() == g.c && vec.device() == Device::cuda,
           "gemm epilogue ", gemm_epilogue_name(epi), ": vector ", shape_str(vec.shape()), " ",
           dtype_name(vec.dtype()), ", expected [", want, "] ", dtype_name(g.c),
           " on the GPU (C's dtype, one per ", epi == GemmEpilogue::bgrad_a ? "row" : "column",
           " of C)");
  if (g.m == 0 || g.n == 0 || g.k == 0) return false;
  return launch(g, epi, alpha, a.raw(), b.raw(), beta, c.raw(), vec.raw(), s);
}

}  // namespace mh::cuda
