# End-to-end tests: tests/e2e/<name>.sh runs the multihead executable through whole workflows
# (train -> files on disk -> eval) in a fresh temporary directory of its own, removed on exit
# (MH_E2E_KEEP=1 keeps it). Each script takes the executable and optionally a work directory:
#   bash tests/e2e/train_eval_roundtrip.sh build/multihead [WORKDIR]
# Labels: "e2e"; "slow" as well for tests taking more than ~20 s in a Release build (the
# sanitizer build runs `ctest -LE slow`).
find_program(MH_E2E_PYTHON NAMES python3)
if(NOT MH_E2E_PYTHON)
  set(MH_E2E_PYTHON python3)
endif()

# mh_e2e_test(NAME TIMEOUT_S [slow]): registers e2e.NAME running tests/e2e/NAME.sh.
function(mh_e2e_test name timeout)
  set(labels e2e ${ARGN})
  add_test(NAME e2e.${name}
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/e2e/${name}.sh $<TARGET_FILE:multihead>
           WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
  set_tests_properties(e2e.${name} PROPERTIES LABELS "${labels}" TIMEOUT ${timeout}
                       ENVIRONMENT "MH_PYTHON=${MH_E2E_PYTHON}")
endfunction()

# 60 toy steps + eval: ~8 s Release, ~37 s ASan+UBSan Debug (so not "slow").
mh_e2e_test(train_eval_roundtrip 900)
# eval on bad input; two 1-step trainings.
mh_e2e_test(bad_pairs 300)
# train failing on bad input / unwritable train.save.
mh_e2e_test(no_partial_output 300)
# 30 steps on a pairs file: ~1 s Release, ~8 s ASan+UBSan Debug.
mh_e2e_test(train_pairs 600)
