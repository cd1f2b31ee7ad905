# The custom attention kernels run on the CPU through a host emulation of their GPU primitives
# (tests/emu/flash_emu.h). Needs only the CUDA headers (cuda_bf16.h, cuda_fp16.h, cuda_runtime.h
# for the problem description), not a GPU and not the CUDA backend, so it also runs in the
# sanitizer build (CUDA off): AddressSanitizer then watches the kernels' indexing.
find_path(MH_CUDA_HOST_INCLUDE NAMES cuda_bf16.h cuda_runtime.h
          HINTS ${CUDAToolkit_INCLUDE_DIRS} /usr/local/cuda/include)
if(NOT MH_CUDA_HOST_INCLUDE)
  message(STATUS "multihead: test_flash_emu skipped (no CUDA headers: cuda_bf16.h)")
  return()
endif()
add_executable(test_flash_emu ${CMAKE_CURRENT_SOURCE_DIR}/emu/test_flash_emu.cpp)
target_compile_definitions(test_flash_emu PRIVATE MH_FLASH_EMU=1)
target_compile_options(test_flash_emu PRIVATE -Wno-unknown-pragmas)  # the kernels' #pragma unroll
target_include_directories(test_flash_emu PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/emu)
target_include_directories(test_flash_emu SYSTEM PRIVATE ${MH_CUDA_HOST_INCLUDE})
target_link_libraries(test_flash_emu PRIVATE libmultihead GTest::gtest GTest::gtest_main Threads::Threads)
# gtest_add_tests, not gtest_discover_tests: the latter flattens the list "unit;emu" into
# LABELS unit, emu TIMEOUT (losing the label emu and the timeout).
gtest_add_tests(TARGET test_flash_emu SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/emu/test_flash_emu.cpp
                TEST_LIST flash_tests)
set_tests_properties(${flash_tests} PROPERTIES LABELS "unit;emu" TIMEOUT 600)

# The Hopper forward (flash_fwd_sm90_kernel.cuh) the same way, with tests/emu/flash_sm90_emu.h's
# wgmma, mbarrier and TMA on top of flash_emu.h.
add_executable(test_flash_sm90_emu ${CMAKE_CURRENT_SOURCE_DIR}/emu/test_flash_sm90_emu.cpp)
target_compile_definitions(test_flash_sm90_emu PRIVATE MH_FLASH_EMU=1)
target_compile_options(test_flash_sm90_emu PRIVATE -Wno-unknown-pragmas)
target_include_directories(test_flash_sm90_emu PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/emu)
target_include_directories(test_flash_sm90_emu SYSTEM PRIVATE ${MH_CUDA_HOST_INCLUDE})
target_link_libraries(test_flash_sm90_emu PRIVATE libmultihead GTest::gtest GTest::gtest_main
                                                  Threads::Threads)
gtest_add_tests(TARGET test_flash_sm90_emu
                SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/emu/test_flash_sm90_emu.cpp
                TEST_LIST flash_sm90_tests)
set_tests_properties(${flash_sm90_tests} PROPERTIES LABELS "unit;emu" TIMEOUT 600)

# The SIMT kernels of the CUDA backend (src/backend/cuda/kernels/*_kernels.cuh) run the same way
# through tests/emu/simt_emu.h: one test executable per tests/emu/test_*_emu.cpp other than the
# flash ones, built with MH_SIMT_EMU.
file(GLOB MH_SIMT_EMU_TESTS CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/emu/test_*_emu.cpp)
list(FILTER MH_SIMT_EMU_TESTS EXCLUDE REGEX "test_flash(_sm90)?_emu\\.cpp$")
foreach(src ${MH_SIMT_EMU_TESTS})
  get_filename_component(name ${src} NAME_WE)
  add_executable(${name} ${src})
  target_compile_definitions(${name} PRIVATE MH_SIMT_EMU=1)
  # -Wno-attributes: the CUDA headers' __device__/__host__ attributes mean nothing to the host
  # compiler; -Wno-unknown-pragmas: the kernels' #pragma unroll.
  target_compile_options(${name} PRIVATE -Wno-attributes -Wno-unknown-pragmas)
  target_include_directories(${name} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/emu)
  target_include_directories(${name} SYSTEM PRIVATE ${MH_CUDA_HOST_INCLUDE})
  target_link_libraries(${name} PRIVATE libmultihead GTest::gtest GTest::gtest_main
                                        Threads::Threads)
  gtest_add_tests(TARGET ${name} SOURCES ${src} TEST_LIST tests)
  set_tests_properties(${tests} PROPERTIES LABELS "unit;emu" TIMEOUT 600)
endforeach()
