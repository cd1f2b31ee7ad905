// World: MPI initialization, rank/size/local rank, and the dp × tp process groups.
#include "dist/world.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>  // setenv
#include <iostream>

#include "dist/mpi_communicator.h"

namespace mh {

namespace {

// The process's world: MPI is per process, so is this. Created by init(), destroyed by finalize();
// never by a static destructor (that would join progress threads and call MPI after main()).
World* g_world = nullptr;
bool g_we_initialized_mpi = false;

bool mpi_initialized() {
  int yes = 0;
  MPI_Initialized(&yes);
  return yes != 0;
}

bool mpi_finalized() {
  int yes = 0;
  MPI_Finalized(&yes);
  return yes != 0;
}

const char* thread_level_name(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE:
      return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED:
      return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED:
      return "MPI_THREAD_SERIALIZED";
    case MPI_THREAD_MULTIPLE:
      return "MPI_THREAD_MULTIPLE";
    default:
      return "an unknown thread level";
  }
}

// Thread level. After init every MPI call is made either by a communicator's progress thread or
// by the main thread while no Work is pending, and the progress threads of different
// communicators take mpi_call_mutex() around each call (dist/mpi_communicator.h): calls come from
// several threads but never overlap. That is MPI_THREAD_SERIALIZED; MPI_THREAD_MULTIPLE would
// make Open MPI lock around every call and request, for nothing.
void init_mpi() {
  if (mpi_finalized()) throw InternalError("World::init after MPI_Finalize (MPI cannot restart)");
  int provided = MPI_THREAD_SINGLE;
  if (!mpi_initialized()) {
    // Open MPI's nonblocking all-reduce (coll/libnbc) picks a binomial tree (reduce to rank 0, then
    // broadcast: the whole buffer crosses twice in sequence) for every in-place call and for any
    // call on fewer than 4 ranks, and so ran at ~45% of the blocking MPI_Allreduce's busbw from
    // 1 MB up (measured by `multihead bench comm`, 2 ranks). Rabenseifner's reduce-scatter +
    // all-gather (3; ring when count < ranks) matches the blocking call. Only a default: an
    // OMPI_MCA_ variable or mpirun --mca already set wins. Read by MPI_Init, so set it first.
    setenv("OMPI_MCA_coll_libnbc_iallreduce_algorithm", "3", /*overwrite=*/0);
    // Without mpirun this is Open MPI's singleton init: a world of one process.
    const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided);
    if (rc != MPI_SUCCESS) mpi_fail(rc, "MPI_Init_thread", __FILE__, __LINE__);
    g_we_initialized_mpi = true;
  } else {
    MH_MPI_CHECK(MPI_Query_thread(&provided));
  }
  MH_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  MH_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN));
  if (provided < MPI_THREAD_SERIALIZED)
    throw MpiError(
        str("MPI provides ", thread_level_name(provided),
            "; multihead's communication threads need MPI_THREAD_SERIALIZED (is this MPI "
            "built without thread support?)"));
}

// A communicator for `comm`'s ranks of equal `color`, ordered by rank; `comm` split, duplicated
// by MpiCommunicator, and the split freed.
std::unique_ptr<Communicator> split_comm(int color, int key, const std::string& name,
                                         const MpiPolling& polling) {
  MPI_Comm part = MPI_COMM_NULL;
  MH_MPI_CHECK(MPI_Comm_split(MPI_COMM_WORLD, color, key, &part));
  auto comm = std::make_unique<MpiCommunicator>(part, name, polling);
  MH_MPI_CHECK(MPI_Comm_free(&part));
  return comm;
}

}  // namespace

struct WorldBuilder {
  // Groups, with rank r of a world of size n = dp × tp:
  //   tp group of r: the tp consecutive ranks [r - r % tp, r - r % tp + tp), tp_rank = r % tp
  //   dp group of r: the ranks ≡ r (mod tp), dp_rank = r / tp
  // e.g. 8 ranks, tp = 2: tp {0,1} {2,3} {4,5} {6,7}; dp {0,2,4,6} {1,3,5,7}.
  static World* build(int tp) {
    auto w = std::unique_ptr<World>(new World());
    MH_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &w->rank_));
    MH_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &w->size_));
    if (w->size_ % tp != 0)
      user_error("tensor parallelism tp = ", tp, " does not divide the world size ", w->size_,
                 " (world = dp x tp)");
    w->tp_ = tp;

    MPI_Comm node = MPI_COMM_NULL;
    MH_MPI_CHECK(
        MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, w->rank_, MPI_INFO_NULL, &node));
    MH_MPI_CHECK(MPI_Comm_rank(node, &w->local_rank_));
    MH_MPI_CHECK(MPI_Comm_size(node, &w->local_size_));
    MH_MPI_CHECK(MPI_Comm_free(&node));

    char host[256] = {};
    if (gethostname(host, sizeof host - 1) != 0) std::snprintf(host, sizeof host, "unknown");
    w->hostname_ = host;

    // Whether waiters yield is a property of the node (all its ranks), not of a dp or tp group.
    MpiPolling polling;
    polling.waiter_yields = node_oversubscribed(w->local_size_) ? 1 : 0;
    w->world_comm_ = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, "mpi:world", polling);
    w->tp_comm_ = split_comm(w->rank_ / tp, w->rank_, "mpi:tp", polling);
    w->dp_comm_ = split_comm(w->rank_ % tp, w->rank_, "mpi:dp", polling);
    return w.release();
  }
};

World& World::init(int tp) {
  if (g_world) {
    MH_CHECK(g_world->tp_ == tp, "World::init(tp = ", tp, ") after World::init(tp = ", g_world->tp_,
             ")");
    return *g_world;
  }
  if (tp < 1) user_error("tensor parallelism tp must be >= 1, got ", tp);
  init_mpi();
  g_world = WorldBuilder::build(tp);
  return *g_world;
}

World& World::get() {
  MH_CHECK(g_world, "World::get() before World::init()");
  return *g_world;
}

void World::finalize() {
  if (g_world) {
    // Communicators first: their destructors drain their queues and join their threads.
    g_world->tp_comm_.reset();
    g_world->dp_comm_.reset();
    g_world->world_comm_.reset();
    delete g_world;
    g_world = nullptr;
  }
  if (g_we_initialized_mpi && !mpi_finalized()) MPI_Finalize();
}

void World::abort(int exit_code) {
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
  if (is_distributed()) MPI_Abort(MPI_COMM_WORLD, exit_code);
  finalize();  // one rank: no progress thread to hang on; a clean exit for the singleton
  std::exit(exit_code);
}

bool World::is_distributed() {
  return g_world != nullptr && g_world->size_ > 1 && !mpi_finalized();
}

}  // namespace mh
