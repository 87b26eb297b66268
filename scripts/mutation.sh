#!/usr/bin/env bash
# Mutation testing with mutmut 3 (not part of the default test run: it is slow).
#
#   scripts/mutation.sh MODULE [TEST_PATH ...]
#   e.g. scripts/mutation.sh rrm_plugin/circuits tests/circuits      (a whole folder)
#        scripts/mutation.sh rrm_plugin/saes/hub.py tests/saes      (one file, to iterate faster)
#
# Works on a copy of the committed tree (git archive HEAD) in a temporary folder, so the
# checkout gets no `mutants/` folder. Mutates only MODULE (a folder, or a single .py file), runs
# only the given tests (default: the tests/ folder named like the module's folder), one child process at a time (MUTMUT_CHILDREN to change),
# and prints killed / survived / other counts and the survivors' names.
# MUTATION_SAMPLE=N runs a seeded uniform random sample of N of the generated mutants instead of
# all of them (MUTATION_SEED, default 0; the names go to sample.txt in the work folder): for
# modules whose thousands of mutants take longer than a machine has. `mutmut` must be installed
# in the environment (`pip install "mutmut>=3,<4"`). mutmut puts `mutants/` first on sys.path
# itself; do not set PYTHONPATH to the tree (the tests then import the unmutated code and mutmut
# finds no test for any mutant).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
module=${1:?usage: scripts/mutation.sh MODULE [TEST_PATH ...]}
module=${module%/}
shift
tests=("$@")
if [[ "$module" == *.py ]]; then
  pattern=$module                     # one file: mutmut's only_mutate glob is the file itself
  folder=$(dirname "$module")
else
  pattern="$module/*"
  folder=$module
fi
if [ ${#tests[@]} -eq 0 ]; then
  tests=("tests/$(basename "$folder")")
fi
python=${PYTHON:-$root/.venv/bin/python}
[ -x "$python" ] || python=$(command -v python3)
mutmut="$(dirname "$python")/mutmut"
[ -x "$mutmut" ] || { echo "mutmut not installed: $python -m pip install 'mutmut>=3,<4'" >&2; exit 2; }
work=${MUTATION_WORKDIR:-$(mktemp -d)}
git -C "$root" archive HEAD | tar -x -C "$work"
cd "$work"
{
  echo "[mutmut]"
  echo "source_paths=rrm_plugin"
  echo "only_mutate=$pattern"
  echo "pytest_add_cli_args="
  echo "    -p"
  echo "    no:cacheprovider"
  echo "pytest_add_cli_args_test_selection="
  for t in "${tests[@]}"; do echo "    $t"; done
} > setup.cfg
start=$(date +%s)
if [ -n "${MUTATION_SAMPLE:-}" ]; then
  # A name that matches nothing: mutmut generates the mutants and collects the test stats,
  # then stops; the sample is drawn from the generated names and run with the cached stats.
  "$mutmut" run --max-children "${MUTMUT_CHILDREN:-1}" "no-such-mutant-generate-only" \
    > generate.log 2>&1 || true
  "$python" "$root/scripts/mutation_sample.py" "$MUTATION_SAMPLE" "${MUTATION_SEED:-0}" \
    > sample.txt
  mapfile -t sample < sample.txt
  echo "sample: ${#sample[@]} mutants (seed ${MUTATION_SEED:-0}); names in $work/sample.txt"
  "$mutmut" run --max-children "${MUTMUT_CHILDREN:-1}" "${sample[@]}" || true
else
  "$mutmut" run --max-children "${MUTMUT_CHILDREN:-1}" || true
fi
end=$(date +%s)
"$mutmut" results --all true > results.txt 2>&1 || "$mutmut" results > results.txt 2>&1 || true
echo "module: $module; tests: ${tests[*]}; seconds: $((end - start)); workdir: $work"
for status in killed survived "no tests" timeout suspicious skipped "segfault" "not checked"; do
  printf '%-12s %s\n' "$status" "$(grep -c ": $status\$" results.txt || true)"
done
echo "survivors:"
grep ": survived$" results.txt || true
