// World: the processes of one job and how they are grouped.
//
// World size = dp × tp. Tensor-parallel groups are consecutive ranks (they share a node and its
// fast links); data-parallel groups stride across them:  tp_rank = rank % tp, dp_rank = rank / tp.
// Example, 8 ranks with tp = 2:  tp groups {0,1} {2,3} {4,5} {6,7};  dp groups {0,2,4,6} {1,3,5,7}.
// Without mpirun the world is one process (Open MPI's singleton MPI_Init; its communicators
// complete every collective at once, without a thread).
//
// Thread level: MPI_THREAD_SERIALIZED. After init, MPI is called by the communicators' progress
// threads (one call at a time, under mpi_call_mutex(), see dist/mpi_communicator.h) and by other
// code only while no Work is pending (or under mpi_call_mutex()).
//
// Lifetime: call init() once near the start of main (every rank), finalize() before returning
// normally. On a fatal error with other ranks possibly still inside collectives call abort()
// instead: finalize() drains pending collectives and would wait forever for the failed peers.
#pragma once

#include <memory>
#include <string>

#include "dist/communicator.h"

namespace mh {

class World {
 public:
  // Initializes MPI (MPI_Init_thread) once per process, and builds the groups. tp must divide the
  // world size (UserError otherwise).
  static World& init(int tp = 1);
  // Destroys the communicators (draining their queues, joining their threads), then calls
  // MPI_Finalize if init() called MPI_Init_thread. Idempotent; MPI cannot be initialized again.
  // Every rank must call it (it is collective).
  static void finalize();
  // Ends every rank of the job now (MPI_Abort), after this rank printed why; for fatal errors.
  // With one rank: finalize() and std::exit(exit_code).
  [[noreturn]] static void abort(int exit_code);
  // The world init() built (MH_CHECK that it ran), e.g. for an error handler; init() again with
  // another tp is a bug, so code that only wants the world asks here.
  static World& get();
  // True once init() ran and the world has more than one rank (false again after finalize()).
  static bool is_distributed();

  int rank() const { return rank_; }
  int size() const { return size_; }
  int local_rank() const { return local_rank_; }  // rank among the processes on this node
  int local_size() const { return local_size_; }
  int tp() const { return tp_; }
  int dp() const { return size_ / tp_; }
  int tp_rank() const { return rank_ % tp_; }
  int dp_rank() const { return rank_ / tp_; }
  std::string hostname() const { return hostname_; }

  Communicator& world_comm() { return *world_comm_; }
  Communicator& dp_comm() { return *dp_comm_; }
  Communicator& tp_comm() { return *tp_comm_; }

 private:
  World() = default;
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1, tp_ = 1;
  std::string hostname_;
  std::unique_ptr<Communicator> world_comm_, dp_comm_, tp_comm_;
  friend struct WorldBuilder;
};

}  // namespace mh
