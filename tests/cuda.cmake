# GPU tests (cmake/cuda.cmake sets MH_CUDA_ENABLED): one gtest executable per
# tests/cuda/test_*.cpp, labelled gpu. Each skips with "no CUDA device: GPU test skipped" when
# the machine has no GPU, so they also pass (as skipped) on CPU-only machines.
if(NOT MH_CUDA_ENABLED)
  return()
endif()
file(GLOB MH_CUDA_TESTS CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/cuda/test_*.cpp)
foreach(src ${MH_CUDA_TESTS})
  get_filename_component(name ${src} NAME_WE)
  add_executable(${name} ${src})
  target_link_libraries(${name} PRIVATE libmultihead GTest::gtest GTest::gtest_main)
  target_compile_definitions(${name} PRIVATE MH_SOURCE_DIR="${CMAKE_SOURCE_DIR}"
                                             MH_BINARY_DIR="${CMAKE_BINARY_DIR}")
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60 PROPERTIES LABELS gpu)
endforeach()
# A tuning variant of a kernel (an environment switch, docs/gpu.md): `exe`'s tests matching
# `filter` again, as `prefix`.*, with `env` set.
function(mh_gpu_variant_tests exe prefix filter env)
  gtest_discover_tests(${exe} DISCOVERY_TIMEOUT 60 TEST_PREFIX "${prefix}." TEST_FILTER "${filter}"
                       PROPERTIES LABELS gpu ENVIRONMENT ${env})
endfunction()
set(MH_FLASH_DROPOUT_TEST "AttentionDropout.MatchesCpuF64WithTheSameSeed")
# The custom backward's other head_dim-64 tiling (128 keys per block): the launcher tests and the
# dropout test.
mh_gpu_variant_tests(test_attention bwd_keys128
                     "Attention/FlashLaunchers.*:${MH_FLASH_DROPOUT_TEST}" MH_FLASH_BWD_KEYS=128)
# The head_dim-64 backward in FlashAttention-2's layout: the launcher tests at head_dim 64 and the
# dropout test.
mh_gpu_variant_tests(test_attention bwd_tiles
                     "Attention/FlashLaunchers.*d64:${MH_FLASH_DROPOUT_TEST}" MH_FLASH_BWD=tiles)
# The head_dim-64 forward's other tilings: the launcher tests at head_dim 64 with each.
foreach(tile 64x128 128x64 128x128)
  mh_gpu_variant_tests(test_attention fwd_tile${tile} "Attention/FlashLaunchers.*d64"
                       MH_FLASH_FWD_TILE=${tile})
endforeach()
# The Hopper kernels' variants: their launcher tests (they skip off sm_90) with
#   MH_HOPPER_FWD_WG=1:        the forward with one consumer warpgroup (64-row blocks);
#   MH_HOPPER_FWD=overlap:     FlashAttention-3's intra-warpgroup overlap (128-key tiles);
#   MH_HOPPER_FWD_WG=3:        the overlapped form with three consumer warpgroups (head_dim 64);
#   MH_HOPPER_BWD_DQ=bulk:     the backward's dQ added up by bulk reductions, not atomics.
foreach(variant "hopper_wg1;MH_HOPPER_FWD_WG=1" "hopper_overlap;MH_HOPPER_FWD=overlap"
        "hopper_overlap3;MH_HOPPER_FWD_WG=3" "hopper_dqbulk;MH_HOPPER_BWD_DQ=bulk")
  list(GET variant 0 prefix)
  list(GET variant 1 env)
  mh_gpu_variant_tests(test_attention_sm90 ${prefix} "Attention/HopperLaunchers.*" ${env})
endforeach()
