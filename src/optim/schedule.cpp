#include "optim/schedule.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace mh {

double noam_lr(int64_t step, int64_t d_model, int64_t warmup, double lr_scale) {
  MH_CHECK(step >= 1 && warmup >= 1 && d_model >= 1, "noam_lr(", step, ", ", d_model, ", ", warmup,
           ")");
  const double s = static_cast<double>(step);
  return lr_scale / std::sqrt(static_cast<double>(d_model)) *
         std::min(1.0 / std::sqrt(s), s * std::pow(static_cast<double>(warmup), -1.5));
}

}  // namespace mh
