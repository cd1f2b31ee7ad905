# The CUDA backend (src/backend/cuda/) and the NCCL communicator (src/dist/nccl/).
# MULTIHEAD_CUDA = AUTO (build them when nvcc, CUDAToolkit with cuBLASLt, cuDNN and NCCL are all
# found), ON (the same, but fail listing what is missing) or OFF (CPU only).
# Included from the top CMakeLists.txt after the dependencies; the target settings are deferred to
# the end of that file, once libmultihead exists. Sets MH_CUDA_ENABLED for tests/cuda.cmake.
set(MULTIHEAD_CUDA AUTO CACHE STRING "Build the CUDA backend: AUTO, ON or OFF")
set_property(CACHE MULTIHEAD_CUDA PROPERTY STRINGS AUTO ON OFF)
string(TOUPPER "${MULTIHEAD_CUDA}" MH_CUDA_MODE)
if(NOT MH_CUDA_MODE MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "MULTIHEAD_CUDA must be AUTO, ON or OFF (got '${MULTIHEAD_CUDA}')")
endif()

set(MH_CUDA_ENABLED OFF)
if(MH_CUDA_MODE STREQUAL "OFF")
  message(STATUS "multihead: CUDA backend OFF (MULTIHEAD_CUDA=OFF)")
  return()
endif()

set(MH_CUDA_MISSING "")
# nvcc: CMAKE_CUDA_COMPILER (cache or environment CUDACXX) or /usr/local/cuda/bin/nvcc.
if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND EXISTS /usr/local/cuda/bin/nvcc)
  set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc CACHE FILEPATH "CUDA compiler")
endif()
include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  list(APPEND MH_CUDA_MISSING "nvcc")
endif()

if(CMAKE_CUDA_COMPILER)
  get_filename_component(MH_NVCC_BIN "${CMAKE_CUDA_COMPILER}" DIRECTORY)
  get_filename_component(MH_CUDA_ROOT_HINT "${MH_NVCC_BIN}" DIRECTORY)
else()
  set(MH_CUDA_ROOT_HINT /usr/local/cuda)
endif()
find_package(CUDAToolkit QUIET)
if(NOT CUDAToolkit_FOUND)
  list(APPEND MH_CUDA_MISSING "CUDAToolkit")
elseif(NOT TARGET CUDA::cublasLt OR NOT TARGET CUDA::cublas)
  list(APPEND MH_CUDA_MISSING "cuBLAS/cuBLASLt")
endif()

find_path(CUDNN_INCLUDE_DIR NAMES cudnn.h
          HINTS ${MH_CUDA_ROOT_HINT}/include /usr/local/cuda/include ${CUDAToolkit_INCLUDE_DIRS})
find_library(CUDNN_LIB NAMES cudnn
             HINTS ${MH_CUDA_ROOT_HINT}/lib64 ${MH_CUDA_ROOT_HINT}/lib /usr/local/cuda/lib64
                   ${CUDAToolkit_LIBRARY_DIR})
if(NOT CUDNN_INCLUDE_DIR OR NOT CUDNN_LIB)
  list(APPEND MH_CUDA_MISSING "cuDNN (cudnn.h, libcudnn)")
endif()
find_path(NCCL_INCLUDE_DIR NAMES nccl.h
          HINTS ${MH_CUDA_ROOT_HINT}/include /usr/local/cuda/include ${CUDAToolkit_INCLUDE_DIRS})
find_library(NCCL_LIB NAMES nccl
             HINTS ${MH_CUDA_ROOT_HINT}/lib64 ${MH_CUDA_ROOT_HINT}/lib /usr/local/cuda/lib64
                   ${CUDAToolkit_LIBRARY_DIR})
if(NOT NCCL_INCLUDE_DIR OR NOT NCCL_LIB)
  list(APPEND MH_CUDA_MISSING "NCCL (nccl.h, libnccl)")
endif()

if(MH_CUDA_MISSING)
  string(REPLACE ";" ", " MH_CUDA_MISSING_STR "${MH_CUDA_MISSING}")
  if(MH_CUDA_MODE STREQUAL "ON")
    message(FATAL_ERROR "MULTIHEAD_CUDA=ON but not found: ${MH_CUDA_MISSING_STR}")
  endif()
  message(STATUS "multihead: CUDA backend OFF (AUTO; not found: ${MH_CUDA_MISSING_STR})")
  return()
endif()

# --- on ---------------------------------------------------------------------------------------
# Architectures are passed as explicit -gencode flags below (compute_90a for wgmma: the
# -arch=sm_90a shorthand also runs a plain sm_90 pass), so CMake adds none of its own.
set(CMAKE_CUDA_ARCHITECTURES OFF)
enable_language(CUDA)
# CMake 3.25 knows no C++20 flag for nvcc (CUDA20 came with 3.26): teach it the one nvcc takes.
if(NOT CMAKE_CUDA20_COMPILE_FEATURES)
  set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
  set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
  set(CMAKE_CUDA20_COMPILE_FEATURES cuda_std_20)
  list(APPEND CMAKE_CUDA_COMPILE_FEATURES cuda_std_20)
endif()
set(CMAKE_CUDA_STANDARD 20)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
set(MH_CUDA_ENABLED ON)
message(STATUS "multihead: CUDA backend ON: nvcc ${CMAKE_CUDA_COMPILER_VERSION} "
               "(${CMAKE_CUDA_COMPILER}), CUDA ${CUDAToolkit_VERSION}, cuBLASLt, "
               "cuDNN ${CUDNN_LIB}, NCCL ${NCCL_LIB}; sm_80 + sm_90a")

# cuDNN's fused attention (attention/cudnn_sdpa.cpp) is built with NVIDIA's header-only
# cudnn-frontend, which tools/setup/install_deps.sh fetches (pinned) into .deps/. Without the
# headers the backend still builds, and CudnnSdpa::supports() says why it is unavailable.
set(MH_CUDNN_FRONTEND_INCLUDE "${CMAKE_SOURCE_DIR}/.deps/cudnn-frontend/include"
    CACHE PATH "cudnn-frontend headers (the folder holding cudnn_frontend.h)")
set(MH_CUDNN_FRONTEND_FOUND OFF)
if(EXISTS "${MH_CUDNN_FRONTEND_INCLUDE}/cudnn_frontend.h"
   AND EXISTS "${MH_CUDNN_FRONTEND_INCLUDE}/cudnn_frontend_version.h" AND TARGET CUDA::nvrtc)
  file(STRINGS "${MH_CUDNN_FRONTEND_INCLUDE}/cudnn_frontend_version.h" MH_CFE_VERSION_LINES
       REGEX "define CUDNN_FRONTEND_(MAJOR|MINOR|PATCH)_VERSION")
  string(REGEX REPLACE ".*MAJOR_VERSION ([0-9]+).*MINOR_VERSION ([0-9]+).*PATCH_VERSION ([0-9]+).*"
                       "\\1.\\2.\\3" MH_CUDNN_FRONTEND_VERSION "${MH_CFE_VERSION_LINES}")
  set(MH_CUDNN_FRONTEND_FOUND ON)
  message(STATUS "multihead: cuDNN SDPA ON: cudnn-frontend ${MH_CUDNN_FRONTEND_VERSION} "
                 "(${MH_CUDNN_FRONTEND_INCLUDE}), links NVRTC")
elseif(NOT TARGET CUDA::nvrtc)
  message(STATUS "multihead: cuDNN SDPA OFF: no NVRTC library (cudnn-frontend references it)")
else()
  message(STATUS "multihead: cuDNN SDPA OFF: no cudnn-frontend headers in "
                 "${MH_CUDNN_FRONTEND_INCLUDE} (tools/setup/install_deps.sh fetches them)")
endif()

# The directory-wide options above (-Wall -Wextra -O3 -march=native) are host-compiler flags:
# keep them as they are for C/C++ and hand them to the host compiler through nvcc for CUDA.
get_directory_property(MH_DIR_OPTS COMPILE_OPTIONS)
set(MH_NEW_DIR_OPTS "")
foreach(opt IN LISTS MH_DIR_OPTS)
  list(APPEND MH_NEW_DIR_OPTS "$<$<COMPILE_LANGUAGE:C,CXX>:${opt}>"
       "$<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=${opt}>")
endforeach()
set_directory_properties(PROPERTIES COMPILE_OPTIONS "${MH_NEW_DIR_OPTS}")

function(mh_cuda_configure_target)
  file(GLOB_RECURSE MH_CUDA_SOURCES CONFIGURE_DEPENDS
       ${CMAKE_SOURCE_DIR}/src/backend/cuda/*.cpp ${CMAKE_SOURCE_DIR}/src/backend/cuda/*.cu
       ${CMAKE_SOURCE_DIR}/src/dist/nccl/*.cpp)
  target_sources(libmultihead PRIVATE ${MH_CUDA_SOURCES})
  set_target_properties(libmultihead PROPERTIES CUDA_ARCHITECTURES OFF
                                                CUDA_SEPARABLE_COMPILATION OFF)
  target_compile_options(libmultihead PRIVATE
    "$<$<COMPILE_LANGUAGE:CUDA>:SHELL:-gencode=arch=compute_80,code=sm_80>"
    "$<$<COMPILE_LANGUAGE:CUDA>:SHELL:-gencode=arch=compute_90a,code=sm_90a>"
    "$<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr>"
    "$<$<COMPILE_LANGUAGE:CUDA>:-lineinfo>")
  target_include_directories(libmultihead SYSTEM PUBLIC ${CUDNN_INCLUDE_DIR} ${NCCL_INCLUDE_DIR})
  target_link_libraries(libmultihead PUBLIC CUDA::cudart CUDA::cublasLt CUDA::cublas
                                            ${CUDNN_LIB} ${NCCL_LIB})
  target_compile_definitions(libmultihead PUBLIC MH_WITH_CUDA=1)
  if(MH_CUDNN_FRONTEND_FOUND)
    # Only the one translation unit that uses them sees the headers (-isystem: their warnings
    # are not ours). The frontend's plan code references NVRTC (for an experimental RMSNorm
    # engine these graphs never use; cuDNN itself loads NVRTC at run time for its
    # runtime-compiled kernels), so NVRTC is linked. They are heavy: at -O3 this file took 90 s of CPU and 1.7 GB; it only builds
    # and launches graphs (host code off the hot path), so it compiles at -O1 (about 50 s),
    # without the frontend's JSON serialization, which nothing here uses.
    set_source_files_properties(${CMAKE_SOURCE_DIR}/src/backend/cuda/attention/cudnn_sdpa.cpp
      PROPERTIES COMPILE_OPTIONS "-isystem;${MH_CUDNN_FRONTEND_INCLUDE};-O1"
                 COMPILE_DEFINITIONS "MH_WITH_CUDNN_FRONTEND=1;CUDNN_FRONTEND_SKIP_JSON_LIB=1")
    target_link_libraries(libmultihead PUBLIC CUDA::nvrtc)
  endif()
endfunction()
cmake_language(DEFER DIRECTORY ${CMAKE_SOURCE_DIR} CALL mh_cuda_configure_target)
