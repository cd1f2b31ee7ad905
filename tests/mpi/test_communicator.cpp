// MpiCommunicator and World under mpirun -np 1/2/4 (tests/mpi.cmake), and without mpirun.
//
// Every rank runs every test; expected values are computed locally for all ranks from the same
// seeds (rank r's data comes from seed r). Checks after collectives use EXPECT, never ASSERT, so
// that a failure on one rank does not skip collectives the others still issue. Only rank 0 prints
// gtest's report; other ranks print their failures, prefixed with their rank.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <random>
#include <thread>
#include <vector>

#include "dist/mpi_communicator.h"
#include "dist/world.h"

namespace mh {
namespace {

World* g_world = nullptr;
std::string g_bad_tp_error;  // what World::init(bad tp) threw, before the real init

// Rank r's n values of `dtype`, from seed r (+ salt): reals in [-1, 1) or integers in
// [-1000, 1000].
std::vector<double> rank_values(int rank, int64_t n, DType dtype, uint64_t salt = 0) {
  std::mt19937_64 rng(static_cast<uint64_t>(rank) * 1000003u + salt);
  std::uniform_real_distribution<double> real(-1.0, 1.0);
  std::uniform_int_distribution<int> integer(-1000, 1000);
  std::vector<double> v(static_cast<size_t>(n));
  for (double& x : v) {
    x = dtype == DType::i32 ? integer(rng) : real(rng);
    if (dtype == DType::f32) x = static_cast<float>(x);
  }
  return v;
}

Tensor make_tensor(const std::vector<double>& v, DType dtype) {
  Tensor t = Tensor::empty({static_cast<int64_t>(v.size())}, dtype);
  for (size_t i = 0; i < v.size(); ++i) t.set_item(static_cast<int64_t>(i), v[i]);
  return t;
}

// Unit roundoff of a dtype (0 for integers: exact).
double roundoff(DType dtype) {
  if (dtype == DType::f32) return std::numeric_limits<float>::epsilon() / 2;
  if (dtype == DType::f64) return std::numeric_limits<double>::epsilon() / 2;
  return 0.0;
}

struct Expected {
  std::vector<double> value;  // op over ranks, in double
  std::vector<double> bound;  // |error| allowed: a sum of n terms in the dtype, any order
};

Expected reduce_all_ranks(int nranks, int64_t n, DType dtype, ReduceOp op, uint64_t salt = 0) {
  Expected e{rank_values(0, n, dtype, salt), std::vector<double>(static_cast<size_t>(n), 0.0)};
  std::vector<double> abs_sum(e.value.size());
  for (size_t i = 0; i < e.value.size(); ++i) abs_sum[i] = std::fabs(e.value[i]);
  for (int r = 1; r < nranks; ++r) {
    const std::vector<double> v = rank_values(r, n, dtype, salt);
    for (size_t i = 0; i < v.size(); ++i) {
      if (op == ReduceOp::sum) e.value[i] += v[i];
      if (op == ReduceOp::max) e.value[i] = std::max(e.value[i], v[i]);
      if (op == ReduceOp::min) e.value[i] = std::min(e.value[i], v[i]);
      abs_sum[i] += std::fabs(v[i]);
    }
  }
  // Recursive summation of n terms in any order: |error| <= (n - 1) u sum|x_i| (+ the rounding
  // of the exact result to the dtype, u |sum|); max and min are exact.
  if (op == ReduceOp::sum)
    for (size_t i = 0; i < abs_sum.size(); ++i) e.bound[i] = nranks * roundoff(dtype) * abs_sum[i];
  return e;
}

int count_wrong(const Tensor& t, const Expected& e, int64_t offset = 0) {
  int wrong = 0;
  for (int64_t i = 0; i < t.numel(); ++i) {
    const size_t j = static_cast<size_t>(offset + i);
    if (std::fabs(t.item(i) - e.value[j]) > e.bound[j]) {
      if (wrong < 3)
        ADD_FAILURE() << "element " << i << ": got " << t.item(i) << ", expected " << e.value[j]
                      << " +- " << e.bound[j];
      ++wrong;
    }
  }
  return wrong;
}

const char* op_name(ReduceOp op) {
  return op == ReduceOp::sum ? "sum" : op == ReduceOp::max ? "max" : "min";
}

Communicator& world() {
  return g_world->world_comm();
}

TEST(World, RankSizeAndGroups) {
  const int n = g_world->size(), r = g_world->rank();
  EXPECT_EQ(world().size(), n);
  EXPECT_EQ(world().rank(), r);
  EXPECT_EQ(world().name(), "mpi:world");
  const char* env_size = std::getenv("OMPI_COMM_WORLD_SIZE");
  EXPECT_EQ(n, env_size ? std::atoi(env_size) : 1);
  EXPECT_GE(g_world->local_rank(), 0);
  EXPECT_LT(g_world->local_rank(), g_world->local_size());
  EXPECT_EQ(g_world->local_size(), n);  // one node here
  EXPECT_FALSE(g_world->hostname().empty());
  EXPECT_EQ(World::is_distributed(), n > 1);
  EXPECT_EQ(&World::get(), g_world);
  EXPECT_EQ(g_world->dp() * g_world->tp(), n);
  EXPECT_EQ(g_world->tp_comm().size(), g_world->tp());
  EXPECT_EQ(g_world->dp_comm().size(), g_world->dp());
  EXPECT_EQ(g_world->tp_comm().rank(), r % g_world->tp());
  EXPECT_EQ(g_world->dp_comm().rank(), r / g_world->tp());
}

TEST(World, BadTpIsUserError) {
  EXPECT_NE(g_bad_tp_error.find("does not divide the world size"), std::string::npos)
      << g_bad_tp_error;
}

// tp = 2 on 4 ranks (main() picks it): tp groups {0,1} {2,3}, dp groups {0,2} {1,3}.
TEST(World, GroupMembersTp2) {
  if (g_world->size() != 4) GTEST_SKIP() << "needs 4 ranks";
  const int r = g_world->rank();
  ASSERT_EQ(g_world->tp(), 2);  // the same on every rank: no collective skipped on one alone
  Tensor me = Tensor::empty({1}, DType::i32);
  me.set_item(0, r);
  Tensor tp_members = Tensor::empty({2}, DType::i32), dp_members = Tensor::empty({2}, DType::i32);
  g_world->tp_comm().all_gather(me, tp_members).wait();
  g_world->dp_comm().all_gather(me, dp_members).wait();
  EXPECT_EQ(tp_members.item(0), r / 2 * 2);
  EXPECT_EQ(tp_members.item(1), r / 2 * 2 + 1);
  EXPECT_EQ(dp_members.item(0), r % 2);
  EXPECT_EQ(dp_members.item(1), r % 2 + 2);
  EXPECT_EQ(g_world->tp_rank(), r % 2);
  EXPECT_EQ(g_world->dp_rank(), r / 2);
  // A sum over the dp group only.
  Tensor x = Tensor::empty({3}, DType::f64);
  for (int i = 0; i < 3; ++i) x.set_item(i, r * 10 + i);
  g_world->dp_comm().all_reduce(x, ReduceOp::sum).wait();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(x.item(i), (r % 2) * 10 + (r % 2 + 2) * 10 + 2 * i);
}

// Both paths: MPI_Iallreduce (small) and the ring (from 256 KiB; 131075 elements cut unevenly
// into 2 or 4 chunks).
TEST(Communicator, AllReduceOpsAndDtypes) {
  const int n = world().size(), r = world().rank();
  for (const int64_t count : {int64_t{1037}, int64_t{131075}})
    for (DType dtype : {DType::f32, DType::f64, DType::i32}) {
      for (ReduceOp op : {ReduceOp::sum, ReduceOp::max, ReduceOp::min}) {
        SCOPED_TRACE(str(count, " x ", dtype_name(dtype), " ", op_name(op)));
        Tensor t = make_tensor(rank_values(r, count, dtype), dtype);
        Work w = world().all_reduce(t, op);
        w.wait();
        EXPECT_TRUE(w.test());
        EXPECT_GE(w.seconds(), 0.0);
        EXPECT_EQ(count_wrong(t, reduce_all_ranks(n, count, dtype, op)), 0);
      }
    }
}

TEST(Communicator, ManyOutstandingCompleteInOrder) {
  const int n = world().size(), r = world().rank();
  constexpr int kOps = 64;
  std::vector<Tensor> bufs;
  std::vector<Work> works;
  for (int k = 0; k < kOps; ++k) {
    const int64_t count = 1 + (k * 7919) % 20000;  // mixed sizes, small and medium
    bufs.push_back(make_tensor(rank_values(r, count, DType::f32, k), DType::f32));
    works.push_back(world().all_reduce(bufs.back(), ReduceOp::sum));
  }
  // Wait for the last: every earlier one must be complete by then.
  works.back().wait();
  for (int k = 0; k < kOps; ++k) EXPECT_TRUE(works[k].test()) << "collective " << k;
  for (int k = 0; k < kOps; ++k) {
    works[k].wait();
    EXPECT_EQ(
        count_wrong(bufs[k], reduce_all_ranks(n, bufs[k].numel(), DType::f32, ReduceOp::sum, k)), 0)
        << "collective " << k;
  }
}

TEST(Communicator, ReduceScatter) {
  const int n = world().size(), r = world().rank();
  for (ReduceOp op : {ReduceOp::sum, ReduceOp::max}) {
    SCOPED_TRACE(op_name(op));
    const int64_t chunk = 513;
    Tensor in = make_tensor(rank_values(r, chunk * n, DType::f64), DType::f64);
    Tensor out = Tensor::zeros({chunk}, DType::f64);
    world().reduce_scatter(in, out, op).wait();
    EXPECT_EQ(count_wrong(out, reduce_all_ranks(n, chunk * n, DType::f64, op), chunk * r), 0);
  }
}

TEST(Communicator, AllGather) {
  const int n = world().size(), r = world().rank();
  const int64_t chunk = 777;
  Tensor in = make_tensor(rank_values(r, chunk, DType::i32), DType::i32);
  Tensor out = Tensor::zeros({n * chunk}, DType::i32);
  world().all_gather(in, out).wait();
  int wrong = 0;
  for (int k = 0; k < n; ++k) {
    const std::vector<double> v = rank_values(k, chunk, DType::i32);
    for (int64_t i = 0; i < chunk; ++i) wrong += out.item(k * chunk + i) != v[i];
  }
  EXPECT_EQ(wrong, 0);
}

TEST(Communicator, AllGatherInPlace) {
  const int n = world().size(), r = world().rank();
  const int64_t chunk = 100;
  Tensor out = Tensor::zeros({n, chunk}, DType::f32);
  Tensor mine = out.rows(r, r + 1);
  for (int64_t i = 0; i < chunk; ++i) mine.set_item(i, r * 1000 + i);
  world().all_gather(mine.view({chunk}), out).wait();
  int wrong = 0;
  for (int k = 0; k < n; ++k)
    for (int64_t i = 0; i < chunk; ++i) wrong += out.item(k * chunk + i) != k * 1000 + i;
  EXPECT_EQ(wrong, 0);
}

TEST(Communicator, BroadcastFromLastRank) {
  const int n = world().size(), r = world().rank();
  const int root = n - 1;  // non-zero whenever there is more than one rank
  Tensor t = make_tensor(rank_values(r, 4096, DType::f32), DType::f32);
  world().broadcast(t, root).wait();
  const std::vector<double> want = rank_values(root, 4096, DType::f32);
  int wrong = 0;
  for (int64_t i = 0; i < t.numel(); ++i) wrong += t.item(i) != want[static_cast<size_t>(i)];
  EXPECT_EQ(wrong, 0);
}

TEST(Communicator, BarrierWaitsForTheLastRank) {
  const int r = world().rank();
  if (r == 0) std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const auto t0 = std::chrono::steady_clock::now();
  world().barrier().wait();
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  // Every other rank entered ~300 ms before rank 0 did, and must have waited for it.
  if (r != 0) {
    EXPECT_GT(ms, 200.0);
  }
}

TEST(Communicator, ZeroElements) {
  const int n = world().size();
  Tensor empty = Tensor::empty({0}, DType::f32);
  Tensor empty_out = Tensor::empty({0}, DType::f32);
  Work a = world().all_reduce(empty, ReduceOp::sum);
  Work b = world().all_gather(empty, empty_out);
  Work c = world().reduce_scatter(empty, empty_out, ReduceOp::sum);
  Work d = world().broadcast(empty, n - 1);
  a.wait();
  b.wait();
  c.wait();
  d.wait();
  // And the communicator still works afterwards.
  Tensor one = Tensor::empty({1}, DType::i32);
  one.set_item(0, 1);
  world().all_reduce(one, ReduceOp::sum).wait();
  EXPECT_EQ(one.item(0), n);
}

TEST(Communicator, LargeBuffer) {
  const int n = world().size(), r = world().rank();
  const int64_t count = int64_t{16} << 20;  // 16M floats, 64 MiB
  Tensor t = Tensor::empty({count}, DType::f32);
  float* p = t.data<float>();
  for (int64_t i = 0; i < count; ++i) p[i] = static_cast<float>((i + r) % 1024);  // exact sums
  world().all_reduce(t, ReduceOp::sum).wait();
  int64_t wrong = 0;
  for (int64_t i = 0; i < count; ++i) {
    double want = 0;
    for (int k = 0; k < n; ++k) want += static_cast<double>((i + k) % 1024);
    wrong += p[i] != want;
  }
  EXPECT_EQ(wrong, 0);
}

TEST(Communicator, DefaultWorkIsComplete) {
  Work w;
  EXPECT_TRUE(w.test());
  w.wait();
  EXPECT_EQ(w.seconds(), 0.0);
}

TEST(Communicator, UnsupportedDtypeIsRejectedAtIssue) {
  Tensor t = Tensor::zeros({4}, DType::u8);
  EXPECT_THROW(world().all_reduce(t, ReduceOp::sum), InternalError);
  Tensor a = Tensor::zeros({3}, DType::f32), b = Tensor::zeros({3}, DType::f32);
  if (world().size() > 1) {
    EXPECT_THROW(world().all_gather(a, b), InternalError);  // b too small
  }
  EXPECT_THROW(world().broadcast(a, world().size()), InternalError);
}

TEST(Communicator, MpiErrorsReturnAndThrow) {
  // MPI_ERRORS_RETURN on MPI_COMM_WORLD (errors on an invalid communicator are raised there):
  // the call fails with a message instead of aborting the job.
  int rank = 0;
  try {
    MH_MPI_CHECK(MPI_Comm_rank(MPI_COMM_NULL, &rank));
    ADD_FAILURE() << "MPI_Comm_rank(MPI_COMM_NULL) did not fail";
  } catch (const MpiError& e) {
    EXPECT_NE(std::string(e.what()).find("MPI_Comm_rank(MPI_COMM_NULL, &rank) failed: "),
              std::string::npos)
        << e.what();
  }
}

TEST(Communicator, DestructorDrainsTheQueue) {
  const int n = world().size(), r = world().rank();
  std::vector<Tensor> bufs;
  std::vector<Work> works;
  {
    MpiCommunicator comm(MPI_COMM_WORLD, "mpi:scratch");
    EXPECT_EQ(comm.size(), n);
    for (int k = 0; k < 8; ++k) {
      bufs.push_back(make_tensor(rank_values(r, 50000, DType::f32, k), DType::f32));
      works.push_back(comm.all_reduce(bufs.back(), ReduceOp::sum));
    }
  }  // destroyed with collectives still queued
  for (int k = 0; k < 8; ++k) {
    EXPECT_TRUE(works[k].test());
    works[k].wait();
    EXPECT_EQ(count_wrong(bufs[k], reduce_all_ranks(n, 50000, DType::f32, ReduceOp::sum, k)), 0);
  }
}

// Nobody waits: the progress thread alone must complete a collective, in each way it can be
// asleep when the collective is issued: on a fresh communicator (submit() must wake it), right
// after waits that drove collectives on this thread (within the driver grace submit() skips the
// wake, and the thread must find it when its sleep times out), and with no grace (woken at once).
// One test() drives at most one step (it starts a queued collective, or tests the one in flight
// once), so a collective complete at the first test() after the pause was started and driven by
// the progress thread.
TEST(Communicator, ProgressWithoutWaiting) {
  const int n = world().size(), r = world().rank();
  for (const int grace_us : {1'000'000, 0}) {
    MpiPolling polling;
    polling.driver_grace_us = grace_us;
    polling.park_us = 20'000;
    MpiCommunicator comm(MPI_COMM_WORLD, "mpi:nowait", polling);
    const int64_t count = 100000;
    for (int k = 0; k < 3; ++k) {
      Tensor t = make_tensor(rank_values(r, count, DType::f32, 300 + k), DType::f32);
      // Two collectives waited for at once: at least the second is driven by this thread (its
      // submit() falls in the first one's grace), so a driver has just left.
      if (k > 0) comm.barrier().wait(), comm.barrier().wait();
      Work w = comm.all_reduce(t, ReduceOp::sum);
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      EXPECT_TRUE(w.test()) << "collective " << k << " (driver grace " << grace_us
                            << " us) not completed by the progress thread";
      w.wait();
      EXPECT_EQ(count_wrong(t, reduce_all_ranks(n, count, DType::f32, ReduceOp::sum, 300 + k)), 0);
    }
  }
}

// Several threads waiting at once on collectives of one communicator, each in its own order:
// each drives the queue in issue order until its own completes, one at a time.
TEST(Communicator, ConcurrentWaiters) {
  const int n = world().size(), r = world().rank();
  constexpr int kOps = 16, kThreads = 4;
  std::vector<Tensor> bufs;
  std::vector<Work> works;
  for (int k = 0; k < kOps; ++k) {
    const int64_t count = 1000 + 37000 * (k % 5);
    bufs.push_back(make_tensor(rank_values(r, count, DType::f32, 400 + k), DType::f32));
    works.push_back(world().all_reduce(bufs.back(), ReduceOp::sum));
  }
  std::vector<std::thread> threads;
  for (int j = 0; j < kThreads; ++j)
    threads.emplace_back([&, j] {
      for (int k = kOps - kThreads + j; k >= 0; k -= kThreads) works[k].wait();  // latest first
    });
  for (std::thread& t : threads) t.join();
  for (int k = 0; k < kOps; ++k)
    EXPECT_EQ(count_wrong(bufs[k],
                          reduce_all_ranks(n, bufs[k].numel(), DType::f32, ReduceOp::sum, 400 + k)),
              0)
        << "collective " << k;
}

// Two communicators with collectives in flight at once, waited for in opposite orders on
// alternate ranks: the progress threads must not deadlock or call MPI concurrently.
TEST(Communicator, TwoCommunicatorsInFlight) {
  const int n = world().size(), r = world().rank();
  MpiCommunicator other(MPI_COMM_WORLD, "mpi:other");
  const int64_t count = 1 << 20;
  for (int round = 0; round < 4; ++round) {
    Tensor a = make_tensor(rank_values(r, count, DType::f32, 100 + round), DType::f32);
    Tensor b = make_tensor(rank_values(r, count, DType::f32, 200 + round), DType::f32);
    Work wa = world().all_reduce(a, ReduceOp::sum);
    Work wb = other.all_reduce(b, ReduceOp::max);
    if (r % 2) {
      wb.wait();
      wa.wait();
    } else {
      wa.wait();
      wb.wait();
    }
    EXPECT_EQ(count_wrong(a, reduce_all_ranks(n, count, DType::f32, ReduceOp::sum, 100 + round)),
              0);
    EXPECT_EQ(count_wrong(b, reduce_all_ranks(n, count, DType::f32, ReduceOp::max, 200 + round)),
              0);
  }
}

// Non-zero ranks: gtest's report would be printed once per rank; print only failures, tagged.
// The test's name is kept from OnTestStart: UnitTest::current_test_info() from inside
// OnTestPartResult takes the mutex gtest holds while reporting, and hangs the rank.
class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestStart(const ::testing::TestInfo& info) override {
    test_ = info.test_suite_name();  // appended, not a + b + c: GCC 12's -Wrestrict misfires
    test_ += '.';
    test_ += info.name();
  }
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::cerr << "[rank " << rank_ << "] " << test_ << " failed at "
              << (result.file_name() ? result.file_name() : "?") << ":" << result.line_number()
              << "\n"
              << result.summary() << std::endl;
  }

 private:
  int rank_;
  std::string test_;
};

}  // namespace
}  // namespace mh

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const char* env_size = std::getenv("OMPI_COMM_WORLD_SIZE");
  const int size = env_size ? std::atoi(env_size) : 1;
  try {
    mh::World::init(size + 1);  // never divides size: must throw, and leave init possible
  } catch (const mh::UserError& e) {
    mh::g_bad_tp_error = e.what();
  }
  mh::World& world = mh::World::init(size == 4 ? 2 : 1);
  mh::g_world = &world;
  if (world.rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new mh::FailurePrinter(world.rank()));
  }
  int failed = RUN_ALL_TESTS();
  // Every rank exits with the same status: 1 if any rank failed.
  MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  mh::World::finalize();
  return failed;
}
