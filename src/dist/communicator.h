// Communicator: collectives over contiguous buffers, the one contract MPI (CPU buffers) and NCCL
// (device buffers) both implement, so data parallelism is written once above them.
//
// Every collective is asynchronous: it returns a Work handle at once and completes later (on the
// MPI communicator's progress thread, on the NCCL communication stream). Buffers must stay alive
// and untouched until the Work is complete. Collectives on one communicator complete in the order
// they were issued, and every rank must issue the same collectives in the same order.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/tensor.h"

namespace mh {

enum class ReduceOp { sum, max, min };

// A pending collective. wait() blocks until it is complete (and rethrows its failure); test()
// asks without blocking (true once complete, failed or not: only wait() reports the failure).
// A default-constructed Work is complete. Copies share the same collective.
class Work {
 public:
  struct State;  // dist/work_state.h, shared by the implementations
  Work() = default;
  explicit Work(std::shared_ptr<State> state) : state_(std::move(state)) {}
  void wait();
  bool test();
  // Seconds the collective itself took (from its start on the communication side to its end);
  // valid once complete.
  double seconds() const;

 private:
  std::shared_ptr<State> state_;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;  // e.g. "mpi:dp"

  // buf = op over ranks of buf (in place).
  virtual Work all_reduce(Tensor& buf, ReduceOp op) = 0;
  // out (numel n) = rank's n-element chunk of op over ranks of in (numel n · size).
  virtual Work reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) = 0;
  // out (numel n · size) = the in (numel n) of every rank, in rank order.
  virtual Work all_gather(const Tensor& in, Tensor& out) = 0;
  // buf = root's buf.
  virtual Work broadcast(Tensor& buf, int root) = 0;
  virtual Work barrier() = 0;

  // CPU seconds used so far by the communicator's own progress thread (0 if it has none). On a
  // CPU that thread shares the compute thread's core, so this is what overlap costs compute.
  virtual double progress_cpu_seconds() const { return 0.0; }
};

}  // namespace mh
