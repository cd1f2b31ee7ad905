// A Communicator over device tensors made from one over host tensors: each collective copies
// to the host, runs there (e.g. over MPI), and copies back, synchronously. It is the fallback
// when NCCL cannot be used (several ranks sharing one GPU, which NCCL refuses), and it gives up
// overlap: every Work it returns is already complete.
#pragma once

#include "backend/backend.h"
#include "dist/communicator.h"

namespace mh {

class HostStagedCommunicator : public Communicator {
 public:
  HostStagedCommunicator(Communicator& host_comm, Backend& device_backend)
      : inner_(host_comm), be_(device_backend) {}
  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  std::string name() const override { return inner_.name() + "+host-staged"; }

  Work all_reduce(Tensor& buf, ReduceOp op) override;
  Work reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) override;
  Work all_gather(const Tensor& in, Tensor& out) override;
  Work broadcast(Tensor& buf, int root) override;
  Work barrier() override { return inner_.barrier(); }

 private:
  Tensor to_host(const Tensor& t);
  void back(const Tensor& host, Tensor& device);

  Communicator& inner_;
  Backend& be_;
};

}  // namespace mh
