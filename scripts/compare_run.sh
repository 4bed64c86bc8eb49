#!/usr/bin/env bash
# Run a comparison that outlives the machine: `trajgym compare` runs from a snapshot of HEAD
# (a git worktree, so editing this checkout cannot change the run halfway), and each time a
# cell lands its results folder is copied back here and committed. A session that ends mid-run
# loses at most the cell in progress; the next one, on any machine, runs this again and resumes
# from the committed folder (finished cells are skipped by identity).
#
#   bash scripts/compare_run.sh [CONFIG] [compare options...]
#   bash scripts/compare_run.sh configs/compare.yaml --set 'sources=[teacher,rationale]'
#
# Stop it with: kill $(cat .compare-run.pid)   (the cell in progress is lost, nothing else)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
config=${1:-configs/compare.yaml}
shift || true
python=.venv/bin/python
[ -x "$python" ] || { echo "compare_run: run scripts/setup.sh first" >&2; exit 2; }
[ -f "$config" ] || { echo "compare_run: no config file $config" >&2; exit 2; }
# The results folder as the run will see it: the config with the same --set / --smoke applied.
results=$("$python" - "$config" "$@" <<'EOF'
import sys

from trajgym.config import load_config
from trajgym.errors import TrajgymError
from trajgym.experiments.compare_config import CompareConfig

config, args = sys.argv[1], sys.argv[2:]
sets = [a.split("=", 1)[1] for a in args if a.startswith("--set=")]
sets += [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--set"]
try:
    cfg = load_config(CompareConfig, config, sets)
    if "--smoke" in args:
        cfg = load_config(CompareConfig, config, [*cfg.smoke, *sets])
except TrajgymError as e:
    sys.exit(f"compare_run: {e}")
print(cfg.results_root)
EOF
)
if [ -f .compare-run.pid ] && kill -0 "$(cat .compare-run.pid)" 2>/dev/null; then
    echo "compare_run: a run is going already (stop it with: kill \$(cat .compare-run.pid))" >&2
    exit 2
fi
snapshot=.compare-run
git worktree remove --force "$snapshot" 2>/dev/null || rm -rf "$snapshot"
git worktree prune
git worktree add --detach "$snapshot" HEAD >/dev/null
mkdir -p "$results"
# Results committed after HEAD (or not committed at all) travel with the snapshot.
mkdir -p "$snapshot/$results" && cp -a "$results/." "$snapshot/$results/"
# The snapshot's runs/ is this checkout's: work files (weights a later cell starts from, episode
# stores) outlive a restarted snapshot, and a white-box teacher made by the main job is found.
mkdir -p runs && ln -sfn "$PWD/runs" "$snapshot/runs"

commit_new_cells() {
    cp -a "$snapshot/$results/." "$results/"  # small; git sees what changed
    if [ -n "$(git status --porcelain -- "$results")" ]; then  # a failed commit is retried
        git add -- "$results"
        local cells
        cells=$(git diff --cached --name-only -- "$results/cells" | xargs -rn1 basename | tr '\n' ' ')
        git commit -q -m "compare run: ${cells:-report}($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))" -- "$results" || true
    fi
}

echo "compare_run: $config from $(git rev-parse --short HEAD), results committed to $results"
(cd "$snapshot" && PYTHONPATH="$PWD" exec "../$python" -m trajgym compare "$config" "$@") &
run=$!
echo $$ > .compare-run.pid
# Under set -e a failing kill or wait (the run is already gone, or was killed) would end the
# trap before it commits: the last cell, landed since the last check, would stay uncommitted.
trap 'kill $run 2>/dev/null || true; wait $run 2>/dev/null || true; commit_new_cells; exit 130' INT TERM
while kill -0 $run 2>/dev/null; do
    sleep 60 & wait $! || true  # a signal interrupts the wait at once (a bare sleep defers it)
    commit_new_cells
done
wait $run && status=0 || status=$?
commit_new_cells
exit $status
