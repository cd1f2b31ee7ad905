// `multihead info`: what a config describes, as one JSON line: parameter count, FLOPs per token,
// the backends this binary has and the compute dtype. Builds no model.
#include <cstdio>
#include <iostream>
#include <string>

#include "backend/cpu/blas_kernels.h"
#include "cli/common_options.h"
#include "core/json.h"
#include "model/model_stats.h"
#ifdef MH_WITH_CUDA
#include "backend/cuda/cuda_available.h"
#endif

namespace mh::cli {
namespace {

int run_info(int argc, char** argv) {
  ConfigOptions config_opts;
  double src_len = 0, tgt_len = 0;
  po::options_description desc;
  add_config_options(desc, &config_opts);
  desc.add_options()  //
      ("src-len", po::value<double>(&src_len)->value_name("N"),
       "source tokens per sentence for the FLOPs (default: the config's typical length)")  //
      ("tgt-len", po::value<double>(&tgt_len)->value_name("N"),
       "target tokens per sentence for the FLOPs (default: as --src-len)");
  if (!parse_command_line(cmd_info, argc, argv, desc)) return 0;
  const Config cfg = resolve_config(config_opts);

  if (src_len <= 0) src_len = typical_seq_len(cfg);
  if (tgt_len <= 0) tgt_len = src_len;
  const int64_t params = count_params(cfg.model);
  const TokenFlops flops = flops_per_token(cfg.model, src_len, tgt_len);
#ifdef MH_WITH_CUDA
  // Compiled-in backends, and how many GPUs this machine shows (0 without a driver or GPU).
  const std::string backends =
      "[\"cpu\", \"cuda\"], \"cuda_devices\": " + std::to_string(cuda_device_count());
#else
  const std::string backends = "[\"cpu\"]";
#endif
  std::cout << "{\"config\": " << json_string(cfg.source) << ", \"params\": " << params
            << ", \"params_millions\": " << json_number(static_cast<double>(params) / 1e6, "%.2f")
            << ", \"flops_per_token_train\": " << json_number(flops.train, "%.0f")
            << ", \"flops_per_token_fwd\": " << json_number(flops.forward, "%.0f")
            << ", \"src_len\": " << json_number(src_len, "%.6g")
            << ", \"tgt_len\": " << json_number(tgt_len, "%.6g") << ", \"backends\": " << backends
            << ", \"blas\": " << json_string(blas_description())
            << ", \"dtype\": " << json_string(name_of(cfg.train.precision)) << "}\n";
  return 0;
}

}  // namespace

const Command cmd_info = {
    "info", "Parameter count, FLOPs per token, backends and dtype of a config, as one JSON line.",
    run_info, "multihead info --config configs/paper-base.yaml"};

}  // namespace mh::cli
