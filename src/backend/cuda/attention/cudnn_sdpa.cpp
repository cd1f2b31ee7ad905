// cuDNN's fused scaled-dot-product attention (flash) on an AttnProblem, through cudnn-frontend's
// graph API (graph.sdpa / graph.sdpa_backward), forward and backward. The only translation unit
// that includes the frontend's headers (cmake/cuda.cmake gives them to this file alone and defines
// MH_WITH_CUDNN_FRONTEND when tools/setup/install_deps.sh has fetched them); without them every
// problem is unsupported, with the reason.
//
//   fwd  O [total_q, H·d] T =;  lse = cuDNN's Stats (F32, H·total_q)          "="
//   bwd  dQ [total_q, H·d], dK, dV [total_k, H·d] T                          "="
//
// How the problem maps onto cuDNN (cudnn-frontend 1.32, cuDNN 9.x):
// - Layout. Every token-row tensor (Q, K, V, O, dO, dQ, dK, dV) is a [B, H, S, d] tensor with
//   strides [S·H·d, d, H·d, 1]: heads interleaved inside a row, exactly the projections' output,
//   so nothing is transposed. S is max_len_q (Q side) or max_len_k (K side).
// - Padded form: padding mask on, seq_len_q[b] = max_len_q (every query row is computed, as
//   CpuBackend does), seq_len_kv[b] = key_len[b] (clamped to [0, max_len_k]).
// - Packed form: the same tensors with ragged offsets (I64 [B + 1], in elements:
//   cu_seqlens · H · d), and seq_len_q/kv from cu_seqlens. cuDNN needs the padding mask with
//   ragged offsets. The sequence lengths and offsets are computed on the device from the
//   problem's device arrays (cudnn_sdpa_rows.cu), so nothing synchronizes with the host.
// - Causal: the diagonal band with right bound 0, TOP_LEFT alignment: query i sees keys j <= i,
//   positions counted from the start of its sequence on both sides, also when Lq != Lk. This is
//   multihead's mask (BOTTOM_RIGHT, the other alignment, would shift it by Lk − Lq).
// - A query row with no visible key (only when a sequence has no key: top-left causal always
//   shows key 0) must output 0 and get dQ = 0. cuDNN skips a sequence whose seq_len_q is 0, so
//   such a sequence gets seq_len_q = 0 and its rows of O / dQ are zeroed afterwards by
//   sdpa_zero_rows, as are dK / dV rows past the sequence's key count (keys past key_len get 0),
//   whatever cuDNN leaves there. The statistics of skipped rows are undefined; backward skips
//   them too.
// - Statistics (io.lse, H·total_q floats): cuDNN's Stats, the natural-log log-sum-exp of the
//   scaled scores per query row. Padded: [B, H, S_q], dense (the only unragged layout cuDNN's
//   backward reads before cuDNN 9.26). Packed: token-major [total_q, H] with ragged offsets
//   cu_seqlens_q · H. cuDNN's backward cannot read ragged statistics on sm_8x / sm_12x
//   (cudnn-frontend refuses them there), and the unragged layout would need B·H·max_len_q floats,
//   more than the H·total_q the interface gives: so the packed form is refused on those GPUs.
// - Dropout: cuDNN draws its own Philox stream (seed/offset), whose masks cannot equal
//   multihead's (core/philox.h; the GPU equivalence tests need the same mask), and a custom mask
//   would be a [B, H, Lq, Lk] tensor, the memory a fused kernel exists to avoid. supports() is
//   false for dropout > 0: the backend then runs the naive implementation.
// - Sizes cuDNN refuses (e.g. backward with S_q = S_kv = 1, head_dim not a multiple of 8, over
//   128 on sm_8x in backward) come back from the frontend's own checks as supports() = false.
//
// Graphs are built once per shape (dtype, B, H, d, max_len_q, max_len_k, packed, causal, scale),
// forward and backward together by the first supports() for that shape, and cached with the
// answer; at most kMaxBuiltShapes shapes keep their graphs (the least used lately go, rebuilt if
// they come back), answers are kept for good. The packed token totals are not part of the key:
// cuDNN then sizes the backward workspace for B · max_len rows (the documented default), so one
// graph serves every batch of the same B and max lengths. Workspace and the small per-call arrays
// come from the caching allocator and go back after the launches are enqueued (same-stream reuse,
// allocator.h). The cuDNN handle is bound to the caller's stream before each launch. The
// backward is cuDNN's default, non-deterministic one (set_deterministic_algorithm off).
// Cost: building a graph compiles its kernels (cuDNN's runtime-compiled engines, NVRTC), about
// 2 s per graph on a 2-core machine, so each new (B, max_len_q, max_len_k) pays a few seconds
// once; batches padded to their own longest sequence meet many shapes.
#include "backend/cuda/attention/cudnn_sdpa.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <list>
#include <map>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "backend/cuda/attention/cudnn_sdpa_rows.h"
#include "backend/cuda/cuda_check.h"
#include "core/error.h"

#ifdef MH_WITH_CUDNN_FRONTEND
#include <cudnn_frontend.h>
#endif

namespace mh::cuda {

#ifndef MH_WITH_CUDNN_FRONTEND

// --- built without cudnn-frontend: nothing is supported ------------------------------------------

namespace {
constexpr const char* kNoFrontend =
    "built without the cudnn-frontend headers (tools/setup/install_deps.sh fetches them)";
}

struct CudnnSdpa::Impl {};

CudnnSdpa::CudnnSdpa(int, std::shared_ptr<CachingAllocator>) {}
CudnnSdpa::~CudnnSdpa() = default;

bool CudnnSdpa::supports(const AttnProblem&, std::string* why) {
  if (why) *why = kNoFrontend;
  return false;
}

bool CudnnSdpa::validate_graphs(const AttnProblem&, int, std::string* why) {
  if (why) *why = kNoFrontend;
  return false;
}

void CudnnSdpa::fwd(const AttnProblem&, const AttnFwdIO&, cudaStream_t) {
  MH_CHECK(false, "CudnnSdpa::fwd: ", kNoFrontend);
}

void CudnnSdpa::bwd(const AttnProblem&, const AttnBwdIO&, cudaStream_t) {
  MH_CHECK(false, "CudnnSdpa::bwd: ", kNoFrontend);
}

#else

// --- with cudnn-frontend -------------------------------------------------------------------------

namespace fe = cudnn_frontend;
using TensorPtr = std::shared_ptr<fe::graph::Tensor_attributes>;
using GraphPtr = std::shared_ptr<fe::graph::Graph>;

// A frontend call that returns error_t, in fwd/bwd: an InternalError naming the call.
#define MH_CUDNN_FE_CHECK(call)                                 \
  do {                                                          \
    const std::string mh_e_ = fe_error((call), #call);          \
    MH_CHECK(mh_e_.empty(), "cudnn-frontend error in ", mh_e_); \
  } while (0)

namespace {

// Why a problem cannot run whatever the GPU ("" when it can): needs neither the GPU nor the
// problem's device arrays (supports() is asked with key_len unset).
std::string problem_error(const AttnProblem& p) {
  if (p.dtype != DType::bf16 && p.dtype != DType::f16)
    return str("computes in BF16/F16, not ", dtype_name(p.dtype));
  if (p.batch <= 0 || p.heads <= 0 || p.head_dim <= 0 || p.max_len_q <= 0 || p.max_len_k <= 0)
    return str("needs a non-empty problem (batch ", p.batch, ", heads ", p.heads, ", head_dim ",
               p.head_dim, ", lengths ", p.max_len_q, " x ", p.max_len_k, ")");
  if (p.head_dim % 8 != 0)
    return str("needs head_dim a multiple of 8 (cuDNN's 16-byte rows), not ", p.head_dim);
  if (p.dropout > 0) return "cuDNN's dropout mask differs from multihead's Philox mask";
  if (!(p.scale > 0) || !std::isfinite(p.scale))
    return str("needs a positive finite softmax scale, not ", p.scale);
  if (p.packed() != (p.cu_seqlens_k != nullptr))
    return "packed form needs both cu_seqlens_q and cu_seqlens_k";
  if (!p.packed() &&
      (p.total_q != int64_t{p.batch} * p.max_len_q || p.total_k != int64_t{p.batch} * p.max_len_k))
    return str("padded form needs total_q = batch · max_len_q and total_k = batch · max_len_k (",
               p.total_q, ", ", p.total_k, ")");
  if (p.packed() && (p.total_q <= 0 || p.total_k <= 0))
    return str("packed form needs positive totals (", p.total_q, ", ", p.total_k, ")");
  return "";
}

// The arguments fwd/bwd need besides those supports() sees.
void check_launch(const AttnProblem& p, const char* who, std::initializer_list<const void*> ptrs) {
  MH_CHECK(p.packed() || p.key_len, who, ": padded form without key_len");
  for (const void* ptr : ptrs) {
    MH_CHECK(ptr, who, ": null tensor pointer");
    MH_CHECK(reinterpret_cast<uintptr_t>(ptr) % 16 == 0, who,
             ": tensors must be 16-byte aligned (cuDNN's vector loads)");
  }
}

// The oldest runtime cuDNN this is written for (int64 ragged offsets; cudnn-frontend checks the
// rest against the version it finds).
constexpr int kMinCudnnVersion = 90600;
// Shapes whose graphs stay built (each holds compiled execution plans).
constexpr size_t kMaxBuiltShapes = 64;

// Tensor UIDs of the graphs' variant packs.
enum Uid : int64_t {
  kQ = 1,
  kK,
  kV,
  kO,
  kStats,
  kDO,
  kDQ,
  kDK,
  kDV,
  kSeqQ,
  kSeqKv,
  // ragged offsets: one tensor per use (the same device array backs the Q-side ones, and the
  // K-side ones)
  kOffQ,
  kOffK,
  kOffV,
  kOffO,
  kOffStats,
  kOffDO,
  kOffDQ,
  kOffDK,
  kOffDV,
};

// Everything that changes a graph. `scale` by its bits: it is baked into the graph.
struct ShapeKey {
  DType dtype;
  int batch, heads, head_dim, len_q, len_k;
  bool packed, causal;
  uint32_t scale_bits;

  auto tie() const {
    return std::tie(dtype, batch, heads, head_dim, len_q, len_k, packed, causal, scale_bits);
  }
  bool operator<(const ShapeKey& o) const { return tie() < o.tie(); }
};

ShapeKey key_of(const AttnProblem& p) {
  ShapeKey k{p.dtype,     p.batch,    p.heads,  p.head_dim, p.max_len_q,
             p.max_len_k, p.packed(), p.causal, 0};
  std::memcpy(&k.scale_bits, &p.scale, sizeof(float));
  return k;
}

// A frontend call that returns error_t: "" or what failed.
std::string fe_error(fe::error_t e, const char* call) {
  if (e.is_good()) return "";
  return str(call, ": ", e.get_message());
}

// [B, H, S, d] over token rows [B·S or total, H·d] (see the file comment).
TensorPtr rows_tensor(fe::graph::Graph& g, const char* name, int64_t uid, const ShapeKey& k,
                      int len, const TensorPtr& ragged) {
  const int64_t h = k.heads, d = k.head_dim, s = len;
  auto t = g.tensor(fe::graph::Tensor_attributes()
                        .set_name(name)
                        .set_uid(uid)
                        .set_dim({k.batch, h, s, d})
                        .set_stride({s * h * d, d, h * d, 1}));
  if (ragged) t->set_ragged_offset(ragged);
  return t;
}

// The same layout on a graph output (its dims and strides are ours, not inferred).
void set_rows_output(const TensorPtr& t, int64_t uid, const ShapeKey& k, int len,
                     const TensorPtr& ragged) {
  const int64_t h = k.heads, d = k.head_dim, s = len;
  t->set_output(true).set_uid(uid).set_dim({k.batch, h, s, d}).set_stride({s * h * d, d, h * d, 1});
  if (ragged) t->set_ragged_offset(ragged);
}

// An index array [n, 1, 1, 1].
TensorPtr index_tensor(fe::graph::Graph& g, const char* name, int64_t uid, int64_t n,
                       fe::DataType_t type) {
  return g.tensor(fe::graph::Tensor_attributes()
                      .set_name(name)
                      .set_uid(uid)
                      .set_dim({n, 1, 1, 1})
                      .set_stride({1, 1, 1, 1})
                      .set_data_type(type));
}

// Stats [B, H, S_q, 1]: the padded form dense [B, H, S_q]; the packed form token-major
// [total_q, H] with ragged offsets.
void set_stats_layout(const TensorPtr& t, int64_t uid, const ShapeKey& k, const TensorPtr& ragged) {
  const int64_t h = k.heads, s = k.len_q;
  t->set_uid(uid).set_data_type(fe::DataType_t::FLOAT).set_dim({k.batch, h, s, 1});
  if (ragged)
    t->set_stride({s * h, 1, h, 1}).set_ragged_offset(ragged);
  else
    t->set_stride({h * s, s, 1, 1});
}

// `sm` > 0 names the target GPU (10 · major + minor) instead of asking the current device.
GraphPtr new_graph(const ShapeKey& k, int sm) {
  auto g = std::make_shared<fe::graph::Graph>();
  if (sm > 0) g->set_sm_version(sm);  // before the nodes are added: they copy the context
  g->set_io_data_type(k.dtype == DType::bf16 ? fe::DataType_t::BFLOAT16 : fe::DataType_t::HALF)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  return g;
}

float scale_of(const ShapeKey& k) {
  float s;
  std::memcpy(&s, &k.scale_bits, sizeof(float));
  return s;
}

// O, Stats = sdpa(Q, K, V) with the padding mask (and causal band) of the file comment.
GraphPtr make_fwd_graph(const ShapeKey& k, int sm = 0) {
  GraphPtr g = new_graph(k, sm);
  const auto i32 = fe::DataType_t::INT32, i64 = fe::DataType_t::INT64;
  TensorPtr off_q, off_k, off_v, off_o, off_stats;
  if (k.packed) {
    off_q = index_tensor(*g, "off_q", kOffQ, k.batch + 1, i64);
    off_k = index_tensor(*g, "off_k", kOffK, k.batch + 1, i64);
    off_v = index_tensor(*g, "off_v", kOffV, k.batch + 1, i64);
    off_o = index_tensor(*g, "off_o", kOffO, k.batch + 1, i64);
    off_stats = index_tensor(*g, "off_stats", kOffStats, k.batch + 1, i64);
  }
  auto q = rows_tensor(*g, "Q", kQ, k, k.len_q, off_q);
  auto kk = rows_tensor(*g, "K", kK, k, k.len_k, off_k);
  auto v = rows_tensor(*g, "V", kV, k, k.len_k, off_v);
  auto opts = fe::graph::SDPA_attributes()
                  .set_name("mh_sdpa_fwd")
                  .set_generate_stats(true)
                  .set_attn_scale(scale_of(k))
                  .set_padding_mask(true)
                  .set_seq_len_q(index_tensor(*g, "seq_q", kSeqQ, k.batch, i32))
                  .set_seq_len_kv(index_tensor(*g, "seq_kv", kSeqKv, k.batch, i32));
  if (k.causal)
    opts.set_diagonal_alignment(fe::DiagonalAlignment_t::TOP_LEFT).set_diagonal_band_right_bound(0);
  auto [o, stats] = g->sdpa(q, kk, v, opts);
  set_rows_output(o, kO, k, k.len_q, off_o);
  stats->set_output(true);
  set_stats_layout(stats, kStats, k, off_stats);
  return g;
}

// dQ, dK, dV = sdpa_backward(Q, K, V, O, dO, Stats), the same masks.
GraphPtr make_bwd_graph(const ShapeKey& k, int sm = 0) {
  GraphPtr g = new_graph(k, sm);
  const auto i32 = fe::DataType_t::INT32, i64 = fe::DataType_t::INT64;
  std::unordered_map<int64_t, TensorPtr> off;
  if (k.packed)
    for (const auto& [uid, name] :
         std::vector<std::pair<Uid, const char*> >{{kOffQ, "off_q"},
                                                   {kOffK, "off_k"},
                                                   {kOffV, "off_v"},
                                                   {kOffO, "off_o"},
                                                   {kOffStats, "off_stats"},
                                                   {kOffDO, "off_do"},
                                                   {kOffDQ, "off_dq"},
                                                   {kOffDK, "off_dk"},
                                                   {kOffDV, "off_dv"}})
      off[uid] = index_tensor(*g, name, uid, k.batch + 1, i64);
  auto ragged = [&](Uid uid) { return k.packed ? off.at(uid) : TensorPtr(); };
  auto q = rows_tensor(*g, "Q", kQ, k, k.len_q, ragged(kOffQ));
  auto kk = rows_tensor(*g, "K", kK, k, k.len_k, ragged(kOffK));
  auto v = rows_tensor(*g, "V", kV, k, k.len_k, ragged(kOffV));
  auto o = rows_tensor(*g, "O", kO, k, k.len_q, ragged(kOffO));
  auto d_o = rows_tensor(*g, "dO", kDO, k, k.len_q, ragged(kOffDO));
  auto stats = g->tensor(fe::graph::Tensor_attributes().set_name("Stats"));
  set_stats_layout(stats, kStats, k, ragged(kOffStats));
  auto opts = fe::graph::SDPA_backward_attributes()
                  .set_name("mh_sdpa_bwd")
                  .set_attn_scale(scale_of(k))
                  .set_padding_mask(true)
                  .set_seq_len_q(index_tensor(*g, "seq_q", kSeqQ, k.batch, i32))
                  .set_seq_len_kv(index_tensor(*g, "seq_kv", kSeqKv, k.batch, i32));
  if (k.causal)
    opts.set_diagonal_alignment(fe::DiagonalAlignment_t::TOP_LEFT).set_diagonal_band_right_bound(0);
  auto [dq, dk, dv] = g->sdpa_backward(q, kk, v, o, d_o, stats, opts);
  set_rows_output(dq, kDQ, k, k.len_q, ragged(kOffDQ));
  set_rows_output(dk, kDK, k, k.len_k, ragged(kOffDK));
  set_rows_output(dv, kDV, k, k.len_k, ragged(kOffDV));
  return g;
}

// Validates, lowers and plans a graph on `handle`'s GPU: "" or the first step that failed.
std::string build_graph(fe::graph::Graph& g, cudnnHandle_t handle, int64_t* workspace) {
  std::string e = fe_error(g.validate(), "validate");
  if (e.empty()) e = fe_error(g.build_operation_graph(handle), "build_operation_graph");
  if (e.empty())
    e = fe_error(g.create_execution_plans({fe::HeurMode_t::A}), "create_execution_plans");
  if (e.empty()) e = fe_error(g.check_support(), "check_support");
  if (e.empty()) e = fe_error(g.build_plans(), "build_plans");
  if (e.empty()) e = fe_error(g.get_workspace_size(*workspace), "get_workspace_size");
  return e;
}

// Sets the device for the scope and restores the previous one.
struct DeviceGuard {
  int prev = -1;
  explicit DeviceGuard(int device) {
    MH_CUDA_CHECK(cudaGetDevice(&prev));
    if (prev != device) MH_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() {
    if (prev >= 0) cudaSetDevice(prev);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
};

size_t align_up(size_t n, size_t a) {
  return (n + a - 1) / a * a;
}

}  // namespace

struct CudnnSdpa::Impl {
  struct Shape {
    bool ok = false;
    std::string why;    // when !ok
    GraphPtr fwd, bwd;  // null once dropped (rebuilt on use)
    int64_t fwd_workspace = 0, bwd_workspace = 0;
  };

  int device;
  std::shared_ptr<CachingAllocator> alloc;
  bool probed = false;
  std::string device_why;  // why nothing runs on this device ("" when something can)
  int sm = 0;              // compute capability, 10 · major + minor
  cudnnHandle_t handle = nullptr;
  std::map<ShapeKey, Shape> shapes;
  std::list<ShapeKey> built;  // shapes holding graphs, oldest first

  Impl(int dev, std::shared_ptr<CachingAllocator> a) : device(dev), alloc(std::move(a)) {}
  ~Impl() {
    shapes.clear();  // the plans before the handle they were built on
    if (handle) cudnnDestroy(handle);
  }

  // Once: the GPU's compute capability, the runtime cuDNN and a handle. Never throws.
  const std::string& probe() {
    if (probed) return device_why;
    probed = true;
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || device < 0 || device >= count) {
      cudaGetLastError();
      device_why = str("no CUDA device ", device, " (", count, " visible)");
      return device_why;
    }
    int major = 0, minor = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    sm = 10 * major + minor;
    const auto version = static_cast<int64_t>(cudnnGetVersion());
    if (sm < 80) {
      device_why = str("needs an sm_80+ GPU, this one is sm_", sm);
    } else if (version < kMinCudnnVersion) {
      device_why = str("needs cuDNN >= ", kMinCudnnVersion, " at run time, found ", version);
    } else {
      int prev = -1;
      cudaGetDevice(&prev);
      cudaSetDevice(device);
      const cudnnStatus_t st = cudnnCreate(&handle);
      if (prev >= 0) cudaSetDevice(prev);
      if (st != CUDNN_STATUS_SUCCESS) {
        handle = nullptr;
        device_why = str("cudnnCreate failed: ", cudnnGetErrorString(st));
      }
    }
    return device_why;
  }

  // The answer for a shape, building both graphs the first time. Never throws.
  const Shape& answer(const ShapeKey& k) {
    auto it = shapes.find(k);
    if (it != shapes.end()) return it->second;
    Shape& s = shapes[k];
    const std::string e = build(k, s);
    s.ok = e.empty();
    s.why = s.ok ? "" : "cuDNN refuses it: " + e;
    return s;
  }

  // A supported shape's graphs, rebuilt if they were dropped; the shape becomes the most
  // recently used one (the last to be dropped).
  const Shape& graphs(const ShapeKey& k) {
    Shape& s = shapes.at(k);
    MH_CHECK(s.ok, "cuDNN SDPA: unsupported shape: ", s.why);
    if (!s.fwd) {
      const std::string e = build(k, s);
      MH_CHECK(e.empty(), "cuDNN SDPA: rebuilding graphs that built before failed: ", e);
    } else {
      for (auto it = built.begin(); it != built.end(); ++it)
        if (!(*it < k) && !(k < *it)) {
          built.splice(built.end(), built, it);
          break;
        }
    }
    return s;
  }

  // Builds both graphs into `s`: "" or what failed. The kMaxBuiltShapes most recently used keep
  // theirs. A dropped graph's last launch may still be running on the handle's stream: that stream
  // is drained first (destroying an execution plan frees its compiled kernels; a build costs
  // seconds, the drain nothing in comparison). When it cannot be drained, nothing is dropped.
  std::string build(const ShapeKey& k, Shape& s) {
    std::string e;
    try {
      DeviceGuard guard(device);
      GraphPtr fwd = make_fwd_graph(k);
      e = build_graph(*fwd, handle, &s.fwd_workspace);
      if (!e.empty()) return "forward graph: " + e;
      GraphPtr bwd = make_bwd_graph(k);
      e = build_graph(*bwd, handle, &s.bwd_workspace);
      if (!e.empty()) return "backward graph: " + e;
      s.fwd = std::move(fwd);
      s.bwd = std::move(bwd);
    } catch (const std::exception& x) {
      return str("building the graphs threw: ", x.what());
    }
    built.push_back(k);
    cudaStream_t last = nullptr;
    if (built.size() > kMaxBuiltShapes && cudnnGetStream(handle, &last) == CUDNN_STATUS_SUCCESS &&
        cudaStreamSynchronize(last) == cudaSuccess) {
      Shape& old = shapes.at(built.front());
      old.fwd.reset();
      old.bwd.reset();
      built.pop_front();
    }
    return "";
  }

  // Per call: seq_q, seq_kv [B] I32 and, packed, off_q, off_k, off_lse [B + 1] I64, then the
  // workspace, in one block from the caching allocator.
  struct Scratch {
    std::shared_ptr<void> block;
    int32_t *seq_q = nullptr, *seq_kv = nullptr;
    int64_t *off_q = nullptr, *off_k = nullptr, *off_lse = nullptr;
    void* workspace = nullptr;
  };
  Scratch scratch(const AttnProblem& p, int64_t workspace_bytes, cudaStream_t s) {
    const size_t b = static_cast<size_t>(p.batch);
    const size_t seq_bytes = align_up(2 * b * sizeof(int32_t), 256);
    const size_t off_bytes = p.packed() ? align_up(3 * (b + 1) * sizeof(int64_t), 256) : 0;
    Scratch sc;
    sc.block = alloc->allocate(seq_bytes + off_bytes + static_cast<size_t>(workspace_bytes));
    auto* base = static_cast<std::byte*>(sc.block.get());
    sc.seq_q = reinterpret_cast<int32_t*>(base);
    sc.seq_kv = sc.seq_q + b;
    if (p.packed()) {
      sc.off_q = reinterpret_cast<int64_t*>(base + seq_bytes);
      sc.off_k = sc.off_q + (b + 1);
      sc.off_lse = sc.off_k + (b + 1);
    }
    sc.workspace = workspace_bytes > 0 ? base + seq_bytes + off_bytes : nullptr;
    sdpa_seq_info(p, sc.seq_q, sc.seq_kv, sc.off_q, sc.off_k, sc.off_lse, s);
    return sc;
  }

  void execute(const fe::graph::Graph& g, std::unordered_map<int64_t, void*>& pack,
               const Scratch& sc, const AttnProblem& p, cudaStream_t s) {
    pack[kSeqQ] = sc.seq_q;
    pack[kSeqKv] = sc.seq_kv;
    if (p.packed()) {
      for (Uid u : {kOffQ, kOffO, kOffDO, kOffDQ}) pack[u] = sc.off_q;
      for (Uid u : {kOffK, kOffV, kOffDK, kOffDV}) pack[u] = sc.off_k;
      pack[kOffStats] = sc.off_lse;
    }
    MH_CUDNN_CHECK(cudnnSetStream(handle, s));
    // A graph ignores the variant-pack entries it does not name, so the backward-only offsets
    // ride along in forward.
    MH_CUDNN_FE_CHECK(g.execute(handle, pack, sc.workspace));
  }
};

CudnnSdpa::CudnnSdpa(int device, std::shared_ptr<CachingAllocator> alloc)
    : impl_(std::make_unique<Impl>(device, std::move(alloc))) {}

CudnnSdpa::~CudnnSdpa() = default;

bool CudnnSdpa::supports(const AttnProblem& p, std::string* why) {
  std::string e = problem_error(p);
  if (e.empty()) e = impl_->probe();
  const int major = impl_->sm / 10;
  if (e.empty() && p.packed() && (major == 8 || major == 12))
    e =
        str("packed form: cuDNN's backward does not read packed statistics on sm_8x/sm_12x, "
            "this GPU is sm_",
            impl_->sm);
  if (e.empty()) e = impl_->answer(key_of(p)).why;
  if (why) *why = e;
  return e.empty();
}

bool CudnnSdpa::validate_graphs(const AttnProblem& p, int sm_version, std::string* why) {
  std::string e = problem_error(p);
  try {
    const ShapeKey k = key_of(p);
    if (e.empty()) e = fe_error(make_fwd_graph(k, sm_version)->validate(), "forward validate");
    if (e.empty()) e = fe_error(make_bwd_graph(k, sm_version)->validate(), "backward validate");
  } catch (const std::exception& x) {
    e = str("building the graphs threw: ", x.what());
  }
  if (why) *why = e;
  return e.empty();
}

void CudnnSdpa::fwd(const AttnProblem& p, const AttnFwdIO& io, cudaStream_t s) {
  std::string why;
  MH_CHECK(supports(p, &why), "CudnnSdpa::fwd: ", why);
  check_launch(p, "CudnnSdpa::fwd", {io.q, io.k, io.v, io.o, io.lse});
  const Impl::Shape& shape = impl_->graphs(key_of(p));
  DeviceGuard guard(impl_->device);
  const Impl::Scratch sc = impl_->scratch(p, shape.fwd_workspace, s);
  std::unordered_map<int64_t, void*> pack{{kQ, const_cast<void*>(io.q)},
                                          {kK, const_cast<void*>(io.k)},
                                          {kV, const_cast<void*>(io.v)},
                                          {kO, io.o},
                                          {kStats, io.lse}};
  impl_->execute(*shape.fwd, pack, sc, p, s);
  // Sequences without keys were skipped: their output rows are 0.
  const int64_t row_bytes = p.row_elems() * static_cast<int64_t>(dtype_size(p.dtype));
  sdpa_zero_rows(io.o, row_bytes, p.batch, p.max_len_q, p.cu_seqlens_q, sc.seq_q, s);
}

void CudnnSdpa::bwd(const AttnProblem& p, const AttnBwdIO& io, cudaStream_t s) {
  std::string why;
  MH_CHECK(supports(p, &why), "CudnnSdpa::bwd: ", why);
  check_launch(p, "CudnnSdpa::bwd", {io.q, io.k, io.v, io.o, io.dout, io.lse, io.dq, io.dk, io.dv});
  const Impl::Shape& shape = impl_->graphs(key_of(p));
  DeviceGuard guard(impl_->device);
  const Impl::Scratch sc = impl_->scratch(p, shape.bwd_workspace, s);
  std::unordered_map<int64_t, void*> pack{{kQ, const_cast<void*>(io.q)},
                                          {kK, const_cast<void*>(io.k)},
                                          {kV, const_cast<void*>(io.v)},
                                          {kO, const_cast<void*>(io.o)},
                                          {kDO, const_cast<void*>(io.dout)},
                                          {kStats, const_cast<float*>(io.lse)},
                                          {kDQ, io.dq},
                                          {kDK, io.dk},
                                          {kDV, io.dv}};
  impl_->execute(*shape.bwd, pack, sc, p, s);
  // Skipped sequences get dQ = 0; keys past each sequence's key count get dK = dV = 0.
  const int64_t row_bytes = p.row_elems() * static_cast<int64_t>(dtype_size(p.dtype));
  sdpa_zero_rows(io.dq, row_bytes, p.batch, p.max_len_q, p.cu_seqlens_q, sc.seq_q, s);
  sdpa_zero_rows(io.dk, row_bytes, p.batch, p.max_len_k, p.cu_seqlens_k, sc.seq_kv, s);
  sdpa_zero_rows(io.dv, row_bytes, p.batch, p.max_len_k, p.cu_seqlens_k, sc.seq_kv, s);
}

#endif  // MH_WITH_CUDNN_FRONTEND

}  // namespace mh::cuda
