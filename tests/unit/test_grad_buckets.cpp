// GradBuckets against a recording fake communicator: layout in reverse forward order, launches in
// index order during backward (overlap) or only in finish() (no overlap), and gradients summed.
#include <gtest/gtest.h>

#include <random>

#include "backend/cpu/cpu_backend.h"
#include "dist/grad_buckets.h"
#include "model/transformer.h"

using namespace mh;

namespace {

// Pretends to be `ranks` identical replicas: all_reduce(sum) multiplies by `ranks` at once.
class FakeComm : public Communicator {
 public:
  explicit FakeComm(int ranks) : ranks_(ranks) {}
  int rank() const override { return 0; }
  int size() const override { return ranks_; }
  std::string name() const override { return "fake"; }
  Work all_reduce(Tensor& buf, ReduceOp op) override {
    EXPECT_EQ(op, ReduceOp::sum);
    launches.push_back(buf.numel());
    launched_at_ready_count.push_back(ready_count);
    float* p = buf.data<float>();
    for (int64_t i = 0; i < buf.numel(); ++i) p[i] *= static_cast<float>(ranks_);
    return Work();
  }
  Work reduce_scatter(const Tensor&, Tensor&, ReduceOp) override { return Work(); }
  Work all_gather(const Tensor&, Tensor&) override { return Work(); }
  Work broadcast(Tensor&, int) override { return Work(); }
  Work barrier() override { return Work(); }

  std::vector<int64_t> launches;
  std::vector<int> launched_at_ready_count;
  int ready_count = 0;

 private:
  int ranks_;
};

ModelConfig tiny() {
  ModelConfig c;
  c.vocab_size = 13;
  c.d_model = 8;
  c.heads = 2;
  c.d_ff = 16;
  c.encoder_layers = 2;
  c.decoder_layers = 2;
  c.dropout = 0;
  c.max_len = 16;
  return c;
}

ModelInput input() {
  ModelInput in;
  in.src = Tensor::empty({2, 4}, DType::i32);
  in.tgt_in = Tensor::empty({2, 3}, DType::i32);
  for (int i = 0; i < 8; ++i) in.src.set_item(i, 4 + i % 9);
  for (int i = 0; i < 6; ++i) in.tgt_in.set_item(i, i == 0 || i == 3 ? 1 : 5 + i);
  in.src_len = {4, 2};
  in.tgt_len = {3, 2};
  return in;
}

// Gradients of one backward, with `buckets` listening (or not).
std::vector<std::vector<float>> run_backward(Transformer& model, CpuBackend& be,
                                             GradBuckets* buckets, FakeComm* comm) {
  Ctx ctx(be);
  model.zero_grad();
  if (buckets) {
    buckets->begin();
    ctx.on_grad_ready = [&](Param& p) {
      ++comm->ready_count;
      buckets->mark_ready(p);
    };
  }
  Tensor logits = model.forward(ctx, input());
  Tensor dlogits = Tensor::empty(logits.shape(), DType::f32);
  std::mt19937 rng(5);
  std::normal_distribution<float> n;
  for (int64_t i = 0; i < dlogits.numel(); ++i) dlogits.data<float>()[i] = n(rng);
  model.backward(ctx, dlogits);
  if (buckets) buckets->finish();
  std::vector<std::vector<float>> grads;
  model.for_each_param([&](Param& p) {
    grads.emplace_back(p.grad.data<float>(), p.grad.data<float>() + p.grad.numel());
  });
  return grads;
}

struct GradBucketsTest : ::testing::TestWithParam<bool> {};

TEST_P(GradBucketsTest, SumsEveryGradientOnceInOrder) {
  const bool overlap = GetParam();
  CpuBackend be;
  Transformer reference(be, tiny());
  reference.init(3);
  const auto expected = run_backward(reference, be, nullptr, nullptr);

  Transformer model(be, tiny());
  model.init(3);
  std::vector<Param*> params;
  model.for_each_param([&](Param& p) { params.push_back(&p); });
  FakeComm comm(2);
  GradBuckets buckets(be, params, comm, /*bucket_mb=*/0.002, overlap);  // ~500 floats a bucket
  ASSERT_GT(buckets.num_buckets(), 4);
  // Reverse forward order: the last layer's parameters first, the shared embedding last.
  EXPECT_EQ(buckets.bucket_params(0).front(), "decoder.layers.1.ffn_norm.bias");
  EXPECT_EQ(buckets.bucket_params(buckets.num_buckets() - 1).back(), "embed.weight");

  const auto got = run_backward(model, be, &buckets, &comm);
  ASSERT_EQ(static_cast<int>(comm.launches.size()), buckets.num_buckets());
  int64_t total = 0;
  for (int64_t n : comm.launches) total += n;
  EXPECT_EQ(total, model.num_params());
  const int params_total = static_cast<int>(params.size());
  if (overlap) {
    // The first bucket starts long before backward ends; the last only when everything is ready.
    EXPECT_LT(comm.launched_at_ready_count.front(), params_total / 2);
    EXPECT_EQ(comm.launched_at_ready_count.back(), params_total);
  } else {
    for (int at : comm.launched_at_ready_count) EXPECT_EQ(at, params_total);
  }
  ASSERT_EQ(got.size(), expected.size());
  for (size_t k = 0; k < got.size(); ++k)
    for (size_t i = 0; i < got[k].size(); ++i)
      ASSERT_FLOAT_EQ(got[k][i], 2 * expected[k][i]) << params[k]->name << "[" << i << "]";
}

INSTANTIATE_TEST_SUITE_P(Overlap, GradBucketsTest, ::testing::Values(true, false));

// flatten_grads keeps every gradient's values and shape, lays them out in the order given, and
// one fill of the buffer zeroes them all.
TEST(FlattenGrads, KeepsValuesInOrderAndZeroesInOneFill) {
  CpuBackend be;
  std::vector<Param> ps;
  ps.push_back(make_param(be, "a", {2, 3}, DType::f32));
  ps.push_back(make_param(be, "b", {5}, DType::f32));
  ps.push_back(make_param(be, "c", {1, 1, 4}, DType::f32));
  float v = 1;
  for (Param& p : ps)
    for (int64_t i = 0; i < p.grad.numel(); ++i) p.grad.data<float>()[i] = v++;
  Tensor flat = flatten_grads(be, {&ps[2], &ps[0], &ps[1]});
  ASSERT_EQ(flat.numel(), 15);
  EXPECT_EQ(ps[0].grad.shape(), (Shape{2, 3}));
  EXPECT_EQ(ps[2].grad.shape(), (Shape{1, 1, 4}));
  // c (values 12..15), then a (1..6), then b (7..11).
  const std::vector<float> want = {12, 13, 14, 15, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
  for (int64_t i = 0; i < 15; ++i) EXPECT_EQ(flat.data<float>()[i], want[i]) << i;
  EXPECT_EQ(ps[0].grad.data<float>(), flat.data<float>() + 4);
  be.zero(flat);
  for (Param& p : ps)
    for (int64_t i = 0; i < p.grad.numel(); ++i) ASSERT_EQ(p.grad.data<float>()[i], 0.f);
}

}  // namespace
