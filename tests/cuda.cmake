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
# The custom backward's other head_dim-64 tiling (128 keys per block, chosen by
# MH_FLASH_BWD_KEYS=128 for tuning runs): the launcher tests and the dropout test again with it.
gtest_discover_tests(test_attention DISCOVERY_TIMEOUT 60 TEST_PREFIX "bwd_keys128."
                     TEST_FILTER "Attention/FlashLaunchers.*:AttentionDropout.MatchesCpuF64WithTheSameSeed"
                     PROPERTIES LABELS gpu ENVIRONMENT MH_FLASH_BWD_KEYS=128)
# The head_dim-64 backward in FlashAttention-2's layout (MH_FLASH_BWD=tiles, for tuning runs): the
# launcher tests at head_dim 64 and the dropout test again with it.
gtest_discover_tests(test_attention DISCOVERY_TIMEOUT 60 TEST_PREFIX "bwd_tiles."
                     TEST_FILTER "Attention/FlashLaunchers.*d64:AttentionDropout.MatchesCpuF64WithTheSameSeed"
                     PROPERTIES LABELS gpu ENVIRONMENT MH_FLASH_BWD=tiles)
# The head_dim-64 forward's other tilings (MH_FLASH_FWD_TILE, for tuning runs): the launcher
# tests at head_dim 64 again with each.
foreach(tile 64x128 128x64 128x128)
  gtest_discover_tests(test_attention DISCOVERY_TIMEOUT 60 TEST_PREFIX "fwd_tile${tile}."
                       TEST_FILTER "Attention/FlashLaunchers.*d64"
                       PROPERTIES LABELS gpu ENVIRONMENT MH_FLASH_FWD_TILE=${tile})
endforeach()

# The Hopper forward with one consumer warpgroup per block (64 query rows, MH_HOPPER_FWD_WG=1, for
# tuning runs): its launcher tests again (they skip off sm_90).
gtest_discover_tests(test_attention_sm90 DISCOVERY_TIMEOUT 60 TEST_PREFIX "hopper_wg1."
                     TEST_FILTER "Attention/HopperLaunchers.*"
                     PROPERTIES LABELS gpu ENVIRONMENT MH_HOPPER_FWD_WG=1)
# The overlapped Hopper forward (MH_HOPPER_FWD=overlap: FlashAttention-3's intra-warpgroup
# overlap, 128-key tiles, setmaxnreg), for tuning runs: the launcher tests again.
gtest_discover_tests(test_attention_sm90 DISCOVERY_TIMEOUT 60 TEST_PREFIX "hopper_overlap."
                     TEST_FILTER "Attention/HopperLaunchers.*"
                     PROPERTIES LABELS gpu ENVIRONMENT MH_HOPPER_FWD=overlap)
# ... and with three consumer warpgroups (MH_HOPPER_FWD_WG=3 selects the overlapped form; 192-row
# blocks at head_dim 64, 128 keeps two).
gtest_discover_tests(test_attention_sm90 DISCOVERY_TIMEOUT 60 TEST_PREFIX "hopper_overlap3."
                     TEST_FILTER "Attention/HopperLaunchers.*"
                     PROPERTIES LABELS gpu ENVIRONMENT MH_HOPPER_FWD_WG=3)
# The Hopper backward with dQ added up by bulk reductions (MH_HOPPER_BWD_DQ=bulk: shared memory
# and one warp's cp.reduce.async.bulk instead of the consumers' atomics), for tuning runs.
gtest_discover_tests(test_attention_sm90 DISCOVERY_TIMEOUT 60 TEST_PREFIX "hopper_dqbulk."
                     TEST_FILTER "Attention/HopperLaunchers.*"
                     PROPERTIES LABELS gpu ENVIRONMENT MH_HOPPER_BWD_DQ=bulk)
