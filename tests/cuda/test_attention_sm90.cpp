// The Hopper kernels (model.attention: hopper; flash_attention_fwd_sm90, flash_attention_bwd_sm90)
// on the GPU: the cases of test_attention.cpp through the launchers and through CudaBackend,
// against the CPU backend in F64 and against custom. On a GPU other than sm_90 these tests skip
// ("not an sm_90 GPU: Hopper test skipped"), except the one that checks that impl hopper then runs
// custom. Without a GPU every test skips with "no CUDA device: GPU test skipped".
#include <gtest/gtest.h>

#include <string>

#include "attention_test_util.h"

namespace mh {
namespace {

using namespace attention_test;

class HopperLaunchers : public ::testing::TestWithParam<TypeDim> {};

TEST_P(HopperLaunchers, EveryMaskAndLengthMatchesCpuF64AndCustom) {
  MH_REQUIRE_HOPPER();
  const auto [t, d] = GetParam();
  uint64_t seed = 1;
  for (const Geo& g : mask_geos()) {
    SCOPED_TRACE(label(g, t, d));
    const LauncherCase c = launcher_case(g, t, d, seed++);
    Outputs got, custom;
    run_flash(c.p, c.in, got, true);
    if (HasFatalFailure()) return;
    run_flash(c.p, c.in, custom);
    if (HasFatalFailure()) return;
    expect_close(got, c.ref, kTol, label(g, t, d) + " hopper vs cpu");
    EXPECT_LE(rel_err(got.lse, c.ref.lse), 1e-4) << "lse";
    expect_close(got, custom, 2 * kTol, label(g, t, d) + " hopper vs custom");
    EXPECT_LE(rel_err(got.lse, custom.lse), 1e-4) << "lse vs custom";
  }
}

INSTANTIATE_TEST_SUITE_P(Attention, HopperLaunchers, ::testing::ValuesIn(kAllTypeDims),
                         type_dim_name);

// impl hopper: the Hopper forward on sm_90, custom (with a note) on any other GPU.
TEST(AttentionBackend, HopperRunsOnSm90AndFallsBackToCustom) {
  MH_REQUIRE_GPU();
  std::string why;
  const bool sm90 = hopper_available(&why);
  for (const Geo& g : mask_geos())
    for (DType t : {BF16, F16})
      for (int d : {64, 128}) {
        AttnArgs a = args_of(g, d);
        a.impl = AttnImpl::hopper;
        EXPECT_EQ(gpu().attention_impl(a, t), sm90 ? AttnImpl::hopper : AttnImpl::custom)
            << label(g, t, d);
      }
  AttnArgs a = args_of(mask_geos()[0], 64);
  a.impl = AttnImpl::hopper;
  EXPECT_EQ(gpu().attention_impl(a, F32), AttnImpl::naive);
}

TEST(AttentionImpls, HopperAgreesWithCustomAndNaive) {
  MH_REQUIRE_HOPPER();
  compare_impls({AttnImpl::hopper, AttnImpl::custom, AttnImpl::naive});
}

}  // namespace
}  // namespace mh
