// `multihead train`: the whole job on this process. Builds the data, the model and the trainer,
// runs the steps with a progress line and a metrics file, evaluates, decodes held-out examples
// for synthetic tasks, and saves the weights.
#pragma once

#include "config/config.h"

namespace mh {

struct TrainSummary {
  double final_loss = 0;
  double valid_nll = 0;
  double exact_match = -1;  // held-out exact-match accuracy (synthetic tasks), -1 if not measured
};

TrainSummary run_training(const Config& cfg);

}  // namespace mh
