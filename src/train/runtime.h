// Where a run computes and how its replicas talk: the backend (cpu, or cuda on GPU
// local_rank % GPUs) and the data-parallel communicator (MPI on CPU; NCCL on GPUs; MPI staged
// through the host when ranks share a GPU, which NCCL refuses). Chosen once from train.device;
// the choice is described for the log, never made silently.
#pragma once

#include <memory>
#include <string>

#include "backend/backend.h"
#include "config/config.h"
#include "dist/world.h"

namespace mh {

struct Runtime {
  std::unique_ptr<Backend> backend;
  Communicator* dp = nullptr;                 // the data-parallel communicator for gradients
  Communicator* dp_host = nullptr;            // the same ranks over host memory (MPI)
  std::unique_ptr<Communicator> owned_dp;     // when it is not one of World's
  std::unique_ptr<Communicator> staged_base;  // host-staged: its inner communicator
  std::string description;                    // e.g. "cuda:0, dp over nccl"
};

// UserError when train.device asks for what this binary or machine does not have.
Runtime make_runtime(const Config& cfg, World& world);

}  // namespace mh
