// The paper's learning-rate schedule (Vaswani et al. 2017, eq. 3):
//   lr(step) = lr_scale · d_model^-0.5 · min(step^-0.5, step · warmup^-1.5),  step >= 1
// Linear warm-up for `warmup` steps, then decay with the inverse square root of the step.
#pragma once

#include <cstdint>

namespace mh {

double noam_lr(int64_t step, int64_t d_model, int64_t warmup, double lr_scale);

}  // namespace mh
