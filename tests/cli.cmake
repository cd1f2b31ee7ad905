# CLI tests: run the multihead executable and check exit codes and the one-line error messages.
# Bad configs live in tests/data/configs/; every test runs in the source tree, so paths in the
# messages are the relative paths given on the command line.
set(MH_EXPECT_EXIT ${CMAKE_CURRENT_SOURCE_DIR}/cli/expect_exit.sh)
set(MH_BAD_CONFIGS tests/data/configs)

# mh_cli_test(NAME CODE PATTERN ARGS...): `multihead ARGS...` exits with CODE and prints PATTERN
# (a fixed string) on stderr.
function(mh_cli_test name code pattern)
  add_test(NAME cli.${name}
           COMMAND sh ${MH_EXPECT_EXIT} ${code} "${pattern}" $<TARGET_FILE:multihead> ${ARGN}
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(cli.${name} PROPERTIES LABELS cli)
endfunction()

# mh_cli_output_test(NAME REGEX ARGS...): `multihead ARGS...` prints output matching REGEX.
function(mh_cli_output_test name regex)
  add_test(NAME cli.${name} COMMAND $<TARGET_FILE:multihead> ${ARGN}
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(cli.${name} PROPERTIES LABELS cli PASS_REGULAR_EXPRESSION "${regex}")
endfunction()

# Success.
mh_cli_test(help 0 "" --help)
mh_cli_test(info_help 0 "" info --help)
mh_cli_test(eval_help 0 "" eval --help)
mh_cli_test(train_help 0 "" train --help)
mh_cli_test(bench_help 0 "" bench train --help)
mh_cli_test(bench_attention_help 0 "" bench attention --help)
mh_cli_test(info_paper_base 0 "" info --config configs/paper-base.yaml --set model.vocab_size=37000)
mh_cli_test(info_paper_big 0 "" info --config configs/paper-big.yaml)
mh_cli_test(info_embedded 0 "" info)
mh_cli_test(config_print 0 "" config --config configs/paper-base.yaml)
mh_cli_test(config_help_keys 0 "" config --help-keys)
mh_cli_output_test(info_json
  "^{\"config\": \"configs/paper-base.yaml\", \"params\": 63082496, .*\"backends\": \\[\"cpu\"(\\]|, \"cuda\"\\], \"cuda_devices\": [0-9]+)"
  info --config configs/paper-base.yaml)

# Bad input: exit 2, one line naming file, line, key and value.
mh_cli_test(unknown_key 2
  "multihead: error: ${MH_BAD_CONFIGS}/unknown_key.yaml:7: unknown key 'model.d_modle' (did you mean 'model.d_model'?)"
  info --config ${MH_BAD_CONFIGS}/unknown_key.yaml)
mh_cli_test(unknown_section 2
  "multihead: error: ${MH_BAD_CONFIGS}/unknown_section.yaml:4: unknown key 'optimizer'"
  info --config ${MH_BAD_CONFIGS}/unknown_section.yaml)
mh_cli_test(wrong_type 2
  "multihead: error: ${MH_BAD_CONFIGS}/wrong_type.yaml:3: model.d_model: expected an integer, got 'abc'"
  info --config ${MH_BAD_CONFIGS}/wrong_type.yaml)
mh_cli_test(indivisible 2
  "model.d_model (500) must be divisible by model.heads (8)"
  info --config ${MH_BAD_CONFIGS}/indivisible.yaml)
mh_cli_test(syntax_error 2
  "multihead: error: ${MH_BAD_CONFIGS}/syntax_error.yaml:"
  config --config ${MH_BAD_CONFIGS}/syntax_error.yaml)
mh_cli_test(missing_config 2
  "multihead: error: configs/nope.yaml: cannot read file (No such file or directory)"
  info --config configs/nope.yaml)
mh_cli_test(set_unknown_key 2
  "multihead: error: --set model.d_modle=256: unknown key 'model.d_modle' (did you mean 'model.d_model'?)"
  info --set model.d_modle=256)
mh_cli_test(set_no_value 2 "multihead: error: --set model.heads: expected key=value"
  info --set model.heads)
mh_cli_test(set_wrong_type 2 "multihead: error: --set model.heads=many: expected an integer, got 'many'"
  config --set model.heads=many)
mh_cli_test(bench_attention_bad_seq 2
  "multihead: error: bench attention: --seq 128,x: expected positive integers separated by commas"
  bench attention --seq 128,x)
mh_cli_test(set_indivisible 2
  "multihead: error: --set model.heads=3: model.d_model (64) must be divisible by model.heads (3)"
  info --set model.heads=3)
mh_cli_test(unknown_option 2 "multihead: error: unrecognised option '--bogus'" info --bogus)
mh_cli_test(missing_option_value 2 "multihead: error: the required argument for option '--config' is missing"
  info --config)
mh_cli_test(unknown_command 2 "multihead: error: unknown command 'infoo' (did you mean 'info'?)" infoo)
mh_cli_test(stray_argument 2 "multihead: error: unexpected argument 'extra'" info extra)

# bench gemm: its options are checked before it looks for a GPU; a CPU-only build says it needs
# the CUDA backend (with CUDA, the answer depends on the machine's GPU).
mh_cli_test(bench_gemm_help 0 "" bench gemm --help)
mh_cli_test(bench_gemm_bad_dtype 2
  "multihead: error: bench gemm: --dtype bf16,fp8: 'fp8' is not one of bf16, fp16, fp32"
  bench gemm --dtype bf16,fp8)
mh_cli_test(bench_gemm_bad_tokens 2
  "multihead: error: bench gemm: --tokens, --d-model, --d-ff and --vocab must be >= 1 (got 0, "
  bench gemm --tokens 0)
if(NOT MH_CUDA_ENABLED)
  mh_cli_test(bench_gemm_no_cuda 2
    "multihead: error: bench gemm: this multihead was built without the CUDA backend"
    bench gemm)
endif()

# bench train --profile: the per-op table after the timed steps (text and JSON); a negative count
# is refused.
mh_cli_output_test(bench_train_profile "per op over 1 profiled step.* all ops\n"
  bench train --batch 4 --steps 1 --warmup 0 --profile 1)
mh_cli_output_test(bench_train_profile_json
  "\"profile_steps\": 2, \"profile\": \\[{\"op\": \"[^\"]+\", \"calls\": [0-9.]+, \"ms\": [0-9.]+}"
  bench train --batch 4 --steps 1 --warmup 0 --profile 2 --json)
mh_cli_test(bench_train_bad_profile 2
  "multihead: error: bench train: --profile must be >= 0 (steps), not -1" bench train --profile -1)
# bench train --rounds: every round's tokens/s (text and JSON); 0 rounds are refused.
mh_cli_output_test(bench_train_rounds
  "tokens/s by round \\(the median above\\): [0-9]+ [0-9]+ [0-9]+\n"
  bench train --batch 4 --steps 1 --warmup 0 --rounds 3)
mh_cli_output_test(bench_train_rounds_json
  "\"rounds\": 2, \"rounds_tokens_per_s\": \\[[0-9.]+, [0-9.]+\\]"
  bench train --batch 4 --steps 1 --warmup 0 --rounds 2 --json)
mh_cli_test(bench_train_bad_rounds 2
  "multihead: error: bench train: --rounds must be >= 1, not 0" bench train --rounds 0)
mh_cli_test(bench_comm_bad_seconds 2
  "multihead: error: bench comm: --seconds 0: expected a time in (0, 3600]" bench comm --seconds 0)
