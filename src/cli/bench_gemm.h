// `multihead bench gemm` (bench_gemm.cpp), dispatched by `multihead bench` (cmd_bench.cpp).
#pragma once

namespace mh::cli {

// argv[0] is "gemm"; returns the exit code (2 without a GPU or a CUDA build).
int bench_gemm(int argc, char** argv);

}  // namespace mh::cli
