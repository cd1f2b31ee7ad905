// CudaBackend's attention: the choice between the implementations (AttnImpl) and the naive
// one itself (cuBLASLt strided-batched GEMMs around the masked softmax of attention_naive.cu).
// The fused implementations take an AttnProblem (attention/attention_problem.h) in padded form.
#include <algorithm>
#include <cstdio>

#include "backend/cuda/attention/attention_problem.h"
#include "backend/cuda/attention/cudnn_sdpa.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels/kernels.h"

namespace mh {

namespace {

void check_attn(const AttnArgs& a, const Tensor& q, const Tensor& k, const Tensor& v) {
  const int64_t d = a.heads * a.head_dim;
  MH_CHECK(q.numel() == a.batch * a.len_q * d && k.numel() == a.batch * a.len_k * d &&
               v.numel() == k.numel(),
           "attention shapes: q ", shape_str(q.shape()), " k ", shape_str(k.shape()));
  MH_CHECK(q.dtype() == k.dtype() && k.dtype() == v.dtype(), "attention dtypes");
  MH_CHECK(a.dropout >= 0 && a.dropout < 1, "attention dropout ", a.dropout);
  for (const Tensor* t : {&q, &k, &v})
    MH_CHECK(t->device() == Device::cuda, "attention: tensor is not on the GPU");
  MH_CHECK(a.batch * a.len_q <= 0x7fffffff && a.batch * a.len_k <= 0x7fffffff,
           "attention: more than 2^31 rows");
}

const char* impl_name(AttnImpl i) {
  switch (i) {
    case AttnImpl::custom:
      return "custom";
    case AttnImpl::cudnn:
      return "cudnn";
    case AttnImpl::hopper:
      return "hopper";
    default:
      return "naive";
  }
}

}  // namespace

const int32_t* CudaBackend::device_key_len(const AttnArgs& a) {
  MH_CHECK(a.key_len, "attention needs key lengths");
  const auto n = static_cast<size_t>(a.batch);
  if (key_len_dev_.defined() && key_len_host_.size() == n &&
      std::equal(key_len_host_.begin(), key_len_host_.end(), a.key_len))
    return key_len_dev_.data<int32_t>();
  key_len_host_.assign(a.key_len, a.key_len + n);
  if (!key_len_dev_.defined() || key_len_dev_.numel() < static_cast<int64_t>(n))
    key_len_dev_ = empty({static_cast<int64_t>(std::max<size_t>(n, 1))}, DType::i32);
  // Pageable source: cudaMemcpyAsync stages it before returning, and the stream orders this
  // write after the kernels still reading the previous lengths.
  MH_CUDA_CHECK(cudaMemcpyAsync(key_len_dev_.raw(), key_len_host_.data(), n * sizeof(int32_t),
                                cudaMemcpyHostToDevice, compute_));
  return key_len_dev_.data<int32_t>();
}

cuda::CudnnSdpa& CudaBackend::cudnn_sdpa() {
  if (!cudnn_sdpa_) cudnn_sdpa_ = std::make_unique<cuda::CudnnSdpa>(device_, alloc_);
  return *cudnn_sdpa_;
}

AttnImpl CudaBackend::attention_impl(const AttnArgs& a, DType t) {
  if (a.impl == AttnImpl::naive) return AttnImpl::naive;
  std::string why;
  if (t != DType::bf16 && t != DType::f16) {
    why = std::string("computes in bf16/fp16, not ") + dtype_name(t);
  } else {
    const cuda::AttnProblem p = cuda::padded_attn_problem(a, t, nullptr);
    if (a.impl == AttnImpl::hopper) {
      if (cuda::flash_sm90_supports(p, &why)) return AttnImpl::hopper;
      // Said once per distinct reason: the run goes on with the sm_80 kernels.
      const std::string note = "attention: hopper " + why + "; using custom";
      if (attn_notes_.insert(note).second) std::fprintf(stderr, "multihead: %s\n", note.c_str());
      if (cuda::flash_supports(p, &why)) return AttnImpl::custom;
    }
    if (a.impl == AttnImpl::custom && cuda::flash_supports(p, &why)) return AttnImpl::custom;
    if (a.impl == AttnImpl::cudnn && cudnn_sdpa().supports(p, &why)) return AttnImpl::cudnn;
  }
  // Said once per distinct reason: the run goes on with the exact, unfused implementation.
  const std::string note = std::string("attention: ") + impl_name(a.impl) + " " + why +
                           "; using naive (GEMM + softmax + GEMM)";
  if (attn_notes_.insert(note).second) std::fprintf(stderr, "multihead: %s\n", note.c_str());
  return AttnImpl::naive;
}

void CudaBackend::attn_gemm(const AttnArgs& a, bool ta, bool tb, int64_t m, int64_t n, int64_t k,
                            AttnOperand x, AttnOperand y, void* c, int64_t ldc, int64_t c_stride_b,
                            int64_t c_stride_h, DType ab, DType ct) {
  // cuBLASLt has one batch stride: batch over the larger of (batch, heads), loop over the other.
  const bool batch_over_b = a.batch >= a.heads;
  const int64_t outer = batch_over_b ? a.heads : a.batch;
  cuda::GemmShape g;
  g.trans_a = ta;
  g.trans_b = tb;
  g.m = m;
  g.n = n;
  g.k = k;
  g.lda = x.ld;
  g.ldb = y.ld;
  g.ldc = ldc;
  g.batch = batch_over_b ? a.batch : a.heads;
  g.stride_a = batch_over_b ? x.stride_b : x.stride_h;
  g.stride_b = batch_over_b ? y.stride_b : y.stride_h;
  g.stride_c = batch_over_b ? c_stride_b : c_stride_h;
  g.ab = ab;
  g.c = ct;
  const size_t ea = dtype_size(ab), ec = dtype_size(ct);
  for (int64_t o = 0; o < outer; ++o) {
    const int64_t xo = batch_over_b ? x.stride_h : x.stride_b;
    const int64_t yo = batch_over_b ? y.stride_h : y.stride_b;
    const int64_t co = batch_over_b ? c_stride_h : c_stride_b;
    gemm_->run(g, 1.0, static_cast<const std::byte*>(x.ptr) + o * xo * ea,
               static_cast<const std::byte*>(y.ptr) + o * yo * ea, 0.0,
               static_cast<std::byte*>(c) + o * co * ec, compute_);
  }
}

void CudaBackend::attention_fwd(const AttnArgs& a, const Tensor& q, const Tensor& k,
                                const Tensor& v, Tensor& out, AttnSaved& saved) {
  check_attn(a, q, k, v);
  MH_CHECK(out.numel() == q.numel() && out.dtype() == q.dtype(), "attention out");
  saved = AttnSaved{};
  saved.out = out;
  const DType t = q.dtype();
  const int64_t d = a.heads * a.head_dim, lq = a.len_q, lk = a.len_k, dk = a.head_dim;
  if (a.batch == 0 || a.heads == 0 || lq == 0 || dk == 0) return;
  if (lk == 0) {
    cuda::fill_zero(out, compute_);
    saved.probs = zeros({a.batch, a.heads, lq, lk}, t);
    return;
  }
  const int32_t* key_len = device_key_len(a);
  saved.ran = attention_impl(a, t);
  if (saved.ran != AttnImpl::naive) {
    const cuda::AttnProblem p = cuda::padded_attn_problem(a, t, key_len);
    saved.lse = empty({a.heads, a.batch * lq}, DType::f32);
    const cuda::AttnFwdIO io{q.raw(), k.raw(), v.raw(), out.raw(), saved.lse.data<float>()};
    if (saved.ran == AttnImpl::custom)
      cuda::flash_attention_fwd(p, io, compute_);
    else if (saved.ran == AttnImpl::hopper)
      cuda::flash_attention_fwd_sm90(p, io, compute_);
    else
      cudnn_sdpa().fwd(p, io, compute_);
    return;
  }
  // S = Q Kᵀ per (b, h): [Lq, dk] · [Lk, dk]ᵀ into probs[b, h] (unscaled: the softmax scales).
  saved.probs = empty({a.batch, a.heads, lq, lk}, t);
  Tensor& probs = saved.probs;
  attn_gemm(a, false, true, lq, lk, dk, {q.raw(), d, lq * d, dk}, {k.raw(), d, lk * d, dk},
            probs.raw(), lk, a.heads * lq * lk, lq * lk, t, t);
  cuda::masked_softmax_fwd(probs, key_len, a.causal, a.scale, compute_);
  // O = dropout(P) V: [Lq, Lk] · [Lk, dk] into out's head column block. The dropped copy lives
  // only for this GEMM; backward redraws it.
  Tensor dropped;
  if (a.dropout > 0) {
    dropped = empty(probs.shape(), t);
    cuda::dropout_fwd(probs, a.dropout, a.seed, a.offset, dropped, compute_);
  }
  const Tensor& used = a.dropout > 0 ? dropped : probs;
  attn_gemm(a, false, false, lq, dk, lk, {used.raw(), lk, a.heads * lq * lk, lq * lk},
            {v.raw(), d, lk * d, dk}, out.raw(), d, lq * d, dk, t, t);
}

void CudaBackend::attention_bwd(const AttnArgs& a, const Tensor& dout, const Tensor& q,
                                const Tensor& k, const Tensor& v, const AttnSaved& saved,
                                Tensor& dq, Tensor& dk_out, Tensor& dv) {
  check_attn(a, q, k, v);
  MH_CHECK(dout.numel() == q.numel() && dq.numel() == q.numel() && dk_out.numel() == k.numel() &&
               dv.numel() == v.numel(),
           "attention_bwd shapes");
  const int64_t d = a.heads * a.head_dim, lq = a.len_q, lk = a.len_k, dk = a.head_dim;
  if (a.batch == 0 || a.heads == 0 || dk == 0) return;
  if (lq == 0 || lk == 0) {
    if (dq.numel()) cuda::fill_zero(dq, compute_);
    if (dk_out.numel()) cuda::fill_zero(dk_out, compute_);
    if (dv.numel()) cuda::fill_zero(dv, compute_);
    return;
  }
  const DType t = q.dtype();
  if (saved.ran != AttnImpl::naive) {
    MH_CHECK(saved.lse.defined() && saved.out.defined(), "attention_bwd: forward state missing");
    const cuda::AttnProblem p = cuda::padded_attn_problem(a, t, device_key_len(a));
    const cuda::AttnBwdIO io{q.raw(),         k.raw(),      v.raw(),
                             saved.out.raw(), dout.raw(),   saved.lse.data<float>(),
                             dq.raw(),        dk_out.raw(), dv.raw()};
    if (saved.ran == AttnImpl::custom || saved.ran == AttnImpl::hopper) {
      const size_t bytes = cuda::flash_attention_bwd_workspace(p);
      Tensor ws = empty({static_cast<int64_t>((bytes + 3) / 4)}, DType::f32);
      if (saved.ran == AttnImpl::hopper)
        cuda::flash_attention_bwd_sm90(p, io, ws.raw(), compute_);
      else
        cuda::flash_attention_bwd(p, io, ws.raw(), compute_);
    } else {
      cudnn_sdpa().bwd(p, io, compute_);
    }
    return;
  }
  const Tensor& probs = saved.probs;
  MH_CHECK(probs.numel() == a.batch * a.heads * lq * lk && probs.dtype() == t,
           "attention_bwd: saved probabilities missing or of the wrong shape");
  const int64_t p_b = a.heads * lq * lk, p_h = lq * lk;
  const Tensor p4 = probs.view({a.batch, a.heads, lq, lk});
  Tensor dropped;
  if (a.dropout > 0) {
    dropped = empty(p4.shape(), t);
    cuda::dropout_fwd(p4, a.dropout, a.seed, a.offset, dropped, compute_);
  }
  const Tensor& used = a.dropout > 0 ? dropped : p4;
  // dV = dropout(P)ᵀ dO: [Lk, Lq] · [Lq, dk]
  attn_gemm(a, true, false, lk, dk, lq, {used.raw(), lk, p_b, p_h}, {dout.raw(), d, lq * d, dk},
            dv.raw(), d, lk * d, dk, t, t);
  // G = dropout'(dO Vᵀ), then dS = P ∘ (G − rowsum(G ∘ P)) · scale in place.
  Tensor ds = empty(p4.shape(), t);
  attn_gemm(a, false, true, lq, lk, dk, {dout.raw(), d, lq * d, dk}, {v.raw(), d, lk * d, dk},
            ds.raw(), lk, p_b, p_h, t, t);
  if (a.dropout > 0) cuda::dropout_bwd(ds, a.dropout, a.seed, a.offset, ds, compute_);
  cuda::masked_softmax_bwd(p4, ds, a.scale, compute_);
  // dQ = dS K: [Lq, Lk] · [Lk, dk]
  attn_gemm(a, false, false, lq, dk, lk, {ds.raw(), lk, p_b, p_h}, {k.raw(), d, lk * d, dk},
            dq.raw(), d, lq * d, dk, t, t);
  // dK = dSᵀ Q: [Lk, Lq] · [Lq, dk]
  attn_gemm(a, true, false, lk, dk, lq, {ds.raw(), lk, p_b, p_h}, {q.raw(), d, lq * d, dk},
            dk_out.raw(), d, lk * d, dk, t, t);
  // `ds` returns to the allocator here; later work on this stream is ordered after its readers.
}

}  // namespace mh
