// NcclCommunicator on a GPU (label gpu; skips without one). ctest runs it as one process, a world
// of size 1: with one GPU that is the only NCCL world there is (NCCL refuses two ranks of one
// communicator on one GPU; multi-rank training on one GPU goes over MPI, tests/ddp/
// gpu_equivalence.sh). The expected values are exact for any world size, so the same binary under
// `mpirun -np N` on a node with N GPUs checks real reductions.
//
// What a world of one still proves: every dtype and reduction reaches NCCL with the right types
// and counts and comes back bit-exact; reduce_scatter and all_gather move the right chunks, in
// place and not; a collective sees what the compute stream wrote before it was issued (the event
// ordering of the two streams); many collectives in flight complete in order, with their Work
// handles; bad arguments are refused with a message.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "backend/cuda/cuda_available.h"
#include "backend/cuda/cuda_backend.h"
#include "dist/mpi_communicator.h"
#include "dist/nccl/nccl_communicator.h"
#include "dist/world.h"

namespace mh {
namespace {

// One world, one backend, one NCCL communicator per process, torn down in reverse order before
// MPI_Finalize.
struct Fixture {
  World* world = nullptr;
  std::unique_ptr<CudaBackend> backend;
  std::unique_ptr<NcclCommunicator> nccl;
};
Fixture g;

class NcclEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    g.world = &World::init();
    if (cuda_device_count() == 0) return;
    const int dev = nccl_device_for_local_rank(g.world->local_rank());
    g.backend = std::make_unique<CudaBackend>(dev);
    auto* mpi = dynamic_cast<MpiCommunicator*>(&g.world->world_comm());
    ASSERT_NE(mpi, nullptr);
    g.nccl = std::make_unique<NcclCommunicator>(
        mpi->comm(), "nccl:test", dev, g.backend->compute_stream(), g.backend->comm_stream());
  }
  void TearDown() override {
    g.nccl.reset();
    g.backend.reset();
    World::finalize();
  }
};
[[maybe_unused]] ::testing::Environment* const g_env =
    ::testing::AddGlobalTestEnvironment(new NcclEnvironment);

#define MH_REQUIRE_NCCL()                                          \
  if (!g.nccl) GTEST_SKIP() << "no CUDA device: GPU test skipped"; \
  CudaBackend& be = *g.backend;                                    \
  NcclCommunicator& comm = *g.nccl;                                \
  (void)be;                                                        \
  (void)comm

// Rank r's element i: an integer in [-8, 8], so sums over up to 32 ranks are exact in every dtype
// (F16 and BF16 hold integers up to 2048 and 256 exactly), as are max and min.
double value(int rank, int64_t i, int salt) {
  return static_cast<double>((i * 7 + rank * 13 + salt * 5) % 17) - 8.0;
}
double reduced(int size, int64_t i, int salt, ReduceOp op) {
  double acc = value(0, i, salt);
  for (int r = 1; r < size; ++r) {
    const double v = value(r, i, salt);
    acc = op == ReduceOp::sum ? acc + v : op == ReduceOp::max ? std::max(acc, v) : std::min(acc, v);
  }
  return acc;
}

// A device tensor of `dtype` holding host values (F16/BF16 through an F32 staging copy and the
// backend's cast; the values are small integers, so exact).
Tensor upload(const std::vector<double>& v, DType dtype) {
  CudaBackend& be = *g.backend;
  const Shape shape{static_cast<int64_t>(v.size())};
  const DType host_dtype = dtype == DType::bf16 || dtype == DType::f16 ? DType::f32 : dtype;
  Tensor h = Tensor::empty(shape, host_dtype);
  for (size_t i = 0; i < v.size(); ++i) h.set_item(static_cast<int64_t>(i), v[i]);
  Tensor d = be.empty(shape, host_dtype);
  be.copy(h, d);
  if (host_dtype == dtype) return d;
  Tensor c = be.empty(shape, dtype);
  be.cast(d, c);
  return c;
}
std::vector<double> download(const Tensor& d) {
  CudaBackend& be = *g.backend;
  Tensor src = d;
  if (d.dtype() == DType::bf16 || d.dtype() == DType::f16) {
    src = be.empty(d.shape(), DType::f32);
    be.cast(d, src);
  }
  Tensor h = Tensor::empty(src.shape(), src.dtype());
  be.copy(src, h);  // synchronizes the compute stream
  std::vector<double> out(static_cast<size_t>(h.numel()));
  for (int64_t i = 0; i < h.numel(); ++i) out[static_cast<size_t>(i)] = h.item(i);
  return out;
}
// All bits set (NaN in the float types, -1 in I32), ordered on the compute stream.
void poison(Tensor& t) {
  ASSERT_EQ(cudaMemsetAsync(t.raw(), 0xFF, t.nbytes(), g.backend->compute_stream()), cudaSuccess);
}

std::vector<double> rank_values(int rank, int64_t n, int salt) {
  std::vector<double> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = value(rank, i, salt);
  return v;
}

const DType kDtypes[] = {DType::f32, DType::bf16, DType::f16, DType::i32, DType::f64};

TEST(Nccl, WorldAndDevice) {
  MH_REQUIRE_NCCL();
  EXPECT_EQ(comm.size(), g.world->size());
  EXPECT_EQ(comm.rank(), g.world->rank());
  EXPECT_EQ(comm.device(), be.device_index());
  EXPECT_EQ(comm.comm_stream(), be.comm_stream());
  EXPECT_EQ(comm.name(), "nccl:test");
}

TEST(Nccl, AllReduceEveryDtypeAndOp) {
  MH_REQUIRE_NCCL();
  // Odd and above NCCL's chunk sizes (several MB of F64), and tiny.
  for (int64_t n : {int64_t{1}, int64_t{1000}, int64_t{1 << 20} + 3}) {
    for (DType t : kDtypes) {
      for (ReduceOp op : {ReduceOp::sum, ReduceOp::max, ReduceOp::min}) {
        const int salt = static_cast<int>(op) + 3 * static_cast<int>(t);
        Tensor buf = upload(rank_values(comm.rank(), n, salt), t);
        Work w = comm.all_reduce(buf, op);
        w.wait();
        EXPECT_TRUE(w.test());
        const std::vector<double> got = download(buf);
        int64_t wrong = 0, first = -1;
        for (int64_t i = 0; i < n; ++i)
          if (got[static_cast<size_t>(i)] != reduced(comm.size(), i, salt, op) && wrong++ == 0)
            first = i;
        EXPECT_EQ(wrong, 0) << dtype_name(t) << " op " << static_cast<int>(op) << " n " << n
                            << ": first wrong element " << first;
      }
    }
  }
}

TEST(Nccl, ReduceScatterAndAllGather) {
  MH_REQUIRE_NCCL();
  const int size = comm.size(), rank = comm.rank();
  const int64_t n = 4099;  // per rank
  for (DType t : kDtypes) {
    // reduce_scatter: out = this rank's chunk of the sum.
    Tensor in = upload(rank_values(rank, n * size, 1), t);
    Tensor out = be.empty({n}, t);
    poison(out);
    comm.reduce_scatter(in, out, ReduceOp::sum).wait();
    std::vector<double> got = download(out);
    int64_t wrong = 0;
    for (int64_t i = 0; i < n; ++i)
      wrong += got[static_cast<size_t>(i)] != reduced(size, rank * n + i, 1, ReduceOp::sum);
    EXPECT_EQ(wrong, 0) << "reduce_scatter " << dtype_name(t);

    // all_gather, out of place: out = every rank's in, in rank order.
    Tensor mine = upload(rank_values(rank, n, 2), t);
    Tensor all = be.empty({n * size}, t);
    poison(all);
    comm.all_gather(mine, all).wait();
    got = download(all);
    wrong = 0;
    for (int r = 0; r < size; ++r)
      for (int64_t i = 0; i < n; ++i)
        wrong += got[static_cast<size_t>(r * n + i)] != value(r, i, 2);
    EXPECT_EQ(wrong, 0) << "all_gather " << dtype_name(t);

    // all_gather in place: `in` is this rank's chunk of `out`; the other chunks start poisoned.
    Tensor all2 = be.empty({n * size}, t);
    poison(all2);
    Tensor own = all2.view({size, n}).rows(rank, rank + 1).view({n});
    be.copy(mine, own);
    comm.all_gather(own, all2).wait();
    got = download(all2);
    wrong = 0;
    for (int r = 0; r < size; ++r)
      for (int64_t i = 0; i < n; ++i)
        wrong += got[static_cast<size_t>(r * n + i)] != value(r, i, 2);
    EXPECT_EQ(wrong, 0) << "in-place all_gather " << dtype_name(t);
  }
}

TEST(Nccl, BroadcastAndBarrier) {
  MH_REQUIRE_NCCL();
  const int root = comm.size() - 1;
  Tensor buf = upload(rank_values(comm.rank(), 777, 4), DType::f32);
  comm.broadcast(buf, root).wait();
  const std::vector<double> got = download(buf);
  int64_t wrong = 0;
  for (int64_t i = 0; i < 777; ++i) wrong += got[static_cast<size_t>(i)] != value(root, i, 4);
  EXPECT_EQ(wrong, 0);
  Work b = comm.barrier();
  b.wait();
  EXPECT_TRUE(b.test());
}

// The collective must see what the compute stream was asked to do before it was issued: the
// source is written on the compute stream after a few large GEMMs (milliseconds of work), then
// copied by a reduce_scatter (a world of one: out = in). Without the event that orders the
// communication stream after the compute stream, NCCL would copy the poison still there.
TEST(Nccl, CollectiveWaitsForEarlierComputeWork) {
  MH_REQUIRE_NCCL();
  const int64_t n = 1 << 18;
  const int size = comm.size(), rank = comm.rank();
  Tensor src = upload(rank_values(rank, n * size, 5), DType::f32);
  Tensor in = be.empty({n * size}, DType::f32), out = be.empty({n}, DType::f32);
  const int64_t m = 2048;
  Tensor a = upload(std::vector<double>(static_cast<size_t>(m * m), 0.5), DType::f32);
  Tensor c = be.empty({m, m}, DType::f32);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  for (int rep = 0; rep < 3; ++rep) {
    poison(in);
    poison(out);
    ASSERT_EQ(cudaStreamSynchronize(be.compute_stream()), cudaSuccess);
    for (int i = 0; i < 8; ++i) be.gemm(a.view({m, m}), false, a.view({m, m}), false, c, 1.0, 0.0);
    be.copy(src, in);  // on the compute stream, behind the GEMMs
    Work w = comm.reduce_scatter(in, out, ReduceOp::sum);
    w.wait();
    // Read `out` from the host without ordering on the compute stream: wait() alone must do.
    std::vector<float> host(static_cast<size_t>(n));
    ASSERT_EQ(cudaMemcpy(host.data(), out.raw(), out.nbytes(), cudaMemcpyDeviceToHost),
              cudaSuccess);
    int64_t wrong = 0;
    for (int64_t i = 0; i < n; ++i)
      wrong += host[static_cast<size_t>(i)] != reduced(size, rank * n + i, 5, ReduceOp::sum);
    EXPECT_EQ(wrong, 0) << "round " << rep << ": the collective ran before the compute stream";
  }
}

// Many collectives in flight, waited for in reverse order: each completes with its own result,
// and its Work reports a finite, non-negative duration.
TEST(Nccl, ManyInFlight) {
  MH_REQUIRE_NCCL();
  constexpr int kOps = 24;
  const int64_t n = 50000;
  std::vector<Tensor> bufs;
  std::vector<Work> works;
  for (int k = 0; k < kOps; ++k) {
    bufs.push_back(upload(rank_values(comm.rank(), n, 10 + k), DType::f32));
    works.push_back(comm.all_reduce(bufs.back(), ReduceOp::sum));
  }
  for (int k = kOps - 1; k >= 0; --k) {
    works[static_cast<size_t>(k)].wait();
    const double s = works[static_cast<size_t>(k)].seconds();
    EXPECT_TRUE(std::isfinite(s) && s >= 0.0) << "op " << k << ": seconds() " << s;
  }
  for (int k = 0; k < kOps; ++k) {
    const std::vector<double> got = download(bufs[static_cast<size_t>(k)]);
    int64_t wrong = 0;
    for (int64_t i = 0; i < n; ++i)
      wrong += got[static_cast<size_t>(i)] != reduced(comm.size(), i, 10 + k, ReduceOp::sum);
    EXPECT_EQ(wrong, 0) << "op " << k;
  }
}

template <typename F>
void expect_error(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning \"" << needle << "\"";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Nccl, RefusesBadArguments) {
  MH_REQUIRE_NCCL();
  Tensor host = Tensor::empty({16}, DType::f32);
  expect_error([&] { comm.all_reduce(host, ReduceOp::sum); }, "device (CUDA) tensors only");
  Tensor d = be.empty({16}, DType::f32), bytes = be.empty({16}, DType::u8);
  expect_error([&] { comm.all_reduce(bytes, ReduceOp::sum); }, "U8");
  expect_error([&] { comm.broadcast(d, comm.size()); }, "outside");
  // reduce_scatter whose out is the first chunk of its own in.
  Tensor whole = be.empty({8 * comm.size()}, DType::f32);
  Tensor first = whole.view({comm.size(), 8}).rows(0, 1).view({8});
  expect_error([&] { comm.reduce_scatter(whole, first, ReduceOp::sum); }, "overlap");
  Tensor d3 = be.empty({3 * comm.size() + 1}, DType::f32), d1 = be.empty({3}, DType::f32);
  expect_error([&] { comm.reduce_scatter(d3, d1, ReduceOp::sum); }, "expected out's");
  expect_error([&] { comm.all_gather(d1, d3); }, "expected in's");
  Tensor h16 = be.empty({16}, DType::bf16);
  expect_error([&] { comm.all_gather(d, h16); }, "in is F32");
}

}  // namespace
}  // namespace mh
