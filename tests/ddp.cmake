# Data-parallel tests: tests/ddp/<name>.sh runs multihead under mpirun (1 to 4 ranks, more ranks
# than cores allowed) in a fresh temporary directory of its own, like the end-to-end tests
# (tests/e2e/lib.sh; MH_E2E_KEEP=1 keeps it):
#   bash tests/ddp/equivalence.sh build/multihead [WORKDIR]
# Labels: "mpi" ("ctest -L mpi" runs them alone). mpirun is FindMPI's MPIEXEC_EXECUTABLE where
# the top-level CMakeLists ran find_package(MPI), else mpirun from PATH.
if(MPIEXEC_EXECUTABLE)
  set(MH_DDP_MPIRUN ${MPIEXEC_EXECUTABLE})
else()
  find_program(MH_DDP_MPIRUN NAMES mpirun mpiexec)
endif()
# The weight comparison needs NumPy: the system Python (Debian's python3-numpy, test.sh).
find_program(MH_DDP_PYTHON NAMES python3 PATHS /usr/bin NO_DEFAULT_PATH)
if(NOT MH_DDP_PYTHON)
  find_program(MH_DDP_PYTHON NAMES python3)
endif()

if(NOT MH_DDP_MPIRUN)
  message(STATUS "multihead: no mpirun found; the data-parallel tests (label mpi) are not registered")
else()
  # mh_ddp_test(NAME TIMEOUT_S [LABELS...]): registers ddp.NAME running tests/ddp/NAME.sh.
  function(mh_ddp_test name timeout)
    add_test(NAME ddp.${name}
             COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/ddp/${name}.sh $<TARGET_FILE:multihead>
             WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
    # PROCESSORS 2: each test runs 2-4 ranks; ctest -j then runs fewer of them side by side.
    # LSAN_OPTIONS: in the sanitizer build, Open MPI's allocations kept until exit are not
    # multihead's leaks (tests/lsan_openmpi.supp); ignored without sanitizers.
    set_tests_properties(ddp.${name} PROPERTIES LABELS "mpi;${ARGN}" TIMEOUT ${timeout}
                         PROCESSORS 2
                         ENVIRONMENT "MH_MPIRUN=${MH_DDP_MPIRUN};MH_PYTHON=${MH_DDP_PYTHON};LSAN_OPTIONS=suppressions=${CMAKE_CURRENT_SOURCE_DIR}/lsan_openmpi.supp:print_suppressions=0:fast_unwind_on_malloc=0")
  endfunction()

  # 6 short trainings (1, 2, 3, 4 ranks; overlap off; tiny buckets) and 6 weight comparisons.
  mh_ddp_test(equivalence 600)
  # A 2-rank job whose rank 1 is killed with SIGKILL: must end within 60 s.
  mh_ddp_test(kill_rank 300)
  # Errors on rank 1 only, rank 0 only, every rank, and rank 0 after training: each ends the
  # job within 60 s.
  mh_ddp_test(rank_error 400)
  # multihead train without mpirun (and with mpirun -np 1).
  mh_ddp_test(single_process_world 300)
  # launch/mpirun.sh: dry runs and one 2-rank training.
  mh_ddp_test(launcher 300)
  # 2 ranks sharing one GPU (gradients over MPI through host memory) against 1 process on it;
  # exits 77, skipped, without a GPU or without the CUDA backend.
  mh_ddp_test(gpu_equivalence 300 gpu)
  set_tests_properties(ddp.gpu_equivalence PROPERTIES SKIP_RETURN_CODE 77)
endif()
