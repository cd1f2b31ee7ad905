# MPI tests (label "mpi"): tests/mpi/test_communicator.cpp under mpirun -np 1/2/4 and without
# mpirun, and `multihead bench comm` under mpirun -np 2 checking #wrong is 0.
#   ctest --test-dir build -L mpi --output-on-failure
# mpirun runs as root only with --allow-run-as-root, and more ranks than cores (the 4-rank runs on
# a 2-core machine) only with --oversubscribe.
add_executable(test_communicator ${CMAKE_CURRENT_SOURCE_DIR}/mpi/test_communicator.cpp)
# Its own main(): World::init on every rank, gtest, World::finalize.
target_link_libraries(test_communicator PRIVATE libmultihead GTest::gtest)

set(MH_MPIRUN ${MPIEXEC_EXECUTABLE} ${MPIEXEC_PREFLAGS} --allow-run-as-root --oversubscribe)

# Sanitizer builds: Open MPI keeps memory until exit; suppress its leaks (and only its), see
# tests/lsan_openmpi.supp. Ranks started by a local mpirun inherit this environment.
set(MH_MPI_TEST_ENV "")
set(MH_MPI_TIMEOUT 120)
if(MULTIHEAD_SANITIZE)
  set(MH_MPI_TIMEOUT 300)  # np 4 on 2 cores: ~30 s under ASan with the slow unwinder
  set(MH_MPI_TEST_ENV
      "ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:fast_unwind_on_malloc=0"
      "LSAN_OPTIONS=suppressions=${CMAKE_CURRENT_SOURCE_DIR}/lsan_openmpi.supp")
endif()

foreach(np 1 2 4)
  add_test(NAME mpi.communicator.np${np}
           COMMAND ${MH_MPIRUN} ${MPIEXEC_NUMPROC_FLAG} ${np} $<TARGET_FILE:test_communicator>)
  set_tests_properties(mpi.communicator.np${np} PROPERTIES LABELS mpi TIMEOUT ${MH_MPI_TIMEOUT}
                       PROCESSORS ${np} ENVIRONMENT "${MH_MPI_TEST_ENV}")
endforeach()

# World of one process, no mpirun (Open MPI's singleton init).
add_test(NAME mpi.communicator.no_mpirun COMMAND $<TARGET_FILE:test_communicator>)
set_tests_properties(mpi.communicator.no_mpirun PROPERTIES LABELS mpi TIMEOUT ${MH_MPI_TIMEOUT}
                     ENVIRONMENT "${MH_MPI_TEST_ENV}")

# bench comm: the summary line "# all #wrong: N" (N summed over sizes and ranks) must say 0. With
# PASS_REGULAR_EXPRESSION ctest ignores the exit status: a crash fails by not printing the summary,
# an error by the FAIL pattern.
add_test(NAME mpi.bench_comm.np2
         COMMAND ${MH_MPIRUN} ${MPIEXEC_NUMPROC_FLAG} 2 $<TARGET_FILE:multihead> bench comm
                 --min 4K --max 1M --iters 3)
set_tests_properties(mpi.bench_comm.np2 PROPERTIES LABELS mpi TIMEOUT ${MH_MPI_TIMEOUT} PROCESSORS 2
                     ENVIRONMENT "${MH_MPI_TEST_ENV}"
                     PASS_REGULAR_EXPRESSION "# all #wrong: 0\n"
                     FAIL_REGULAR_EXPRESSION "error|ERROR|# all #wrong: [1-9]")

# The same with the count of timed collectives set by --seconds (a probe, agreed over ranks).
add_test(NAME mpi.bench_comm_seconds.np2
         COMMAND ${MH_MPIRUN} ${MPIEXEC_NUMPROC_FLAG} 2 $<TARGET_FILE:multihead> bench comm
                 --op all_gather --min 4K --max 256K --seconds 0.01)
set_tests_properties(mpi.bench_comm_seconds.np2 PROPERTIES LABELS mpi TIMEOUT ${MH_MPI_TIMEOUT}
                     PROCESSORS 2 ENVIRONMENT "${MH_MPI_TEST_ENV}"
                     PASS_REGULAR_EXPRESSION "# all #wrong: 0\n"
                     FAIL_REGULAR_EXPRESSION "error|ERROR|# all #wrong: [1-9]")

add_test(NAME mpi.bench_comm_help COMMAND $<TARGET_FILE:multihead> bench comm --help)
set_tests_properties(mpi.bench_comm_help PROPERTIES LABELS mpi TIMEOUT 30
                     ENVIRONMENT "${MH_MPI_TEST_ENV}"
                     PASS_REGULAR_EXPRESSION "busbw")
