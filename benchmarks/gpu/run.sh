#!/usr/bin/env bash
# Everything genloom measures on a GPU, in one call: set up, run the gpu-marked tests, then the
# benchmarks, and write JSON results under $OUT (see benchmarks/gpu/README.md).
#
#   benchmarks/gpu/prepare.sh                       # here, with registry access: wheels -> benchmarks/gpu/wheels
#   OUT=/somewhere benchmarks/gpu/run.sh            # on the GPU machine (carry benchmarks/gpu/wheels)
#   GENLOOM_GPU_DRY_RUN=1 benchmarks/gpu/run.sh     # on a CPU: the same logic at tiny sizes, no installs
#
# Options:
#   --only STAGES    comma list of stages to run (default: setup,tests,decode,train,scan)
#   --skip STAGES    comma list of stages to leave out
#   --out DIR        results folder (default: $OUT, else .gpu-out in the repository)
#   --dry-run        same as GENLOOM_GPU_DRY_RUN=1
#   -h, --help       this text
#
# Stages and their time limits in seconds (GENLOOM_GPU_LIMIT_<STAGE> overrides one; the defaults
# add up to 480 s, the budget of one device call):
#   setup   45   install the carried wheels and genloom (pip install --no-deps --no-build-isolation -e .)
#   tests  120   pytest -m gpu over the files that hold gpu-marked tests          -> tests.json
#   decode 200   benchmarks/decode.py, a 1.1B random Llama in bf16, batch 1/8/32   -> decode.json
#   train   90   genloom train benchmarks/gpu/gpt124m.yaml, model FLOPs utilisation -> train.json
#   scan    25   benchmarks/scan.py, Triton selective scan vs the reference         -> scan.json
# Every stage runs even when an earlier one failed; each writes OUT/<stage>.log, and one line with
# its exit code and duration to OUT/stages.jsonl; OUT/summary.json gathers everything at the end.
# The exit code is 0 when every stage succeeded.
set -uo pipefail

usage() { sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
all_stages="setup tests decode train scan"
dry=${GENLOOM_GPU_DRY_RUN:-0}
out=${OUT:-}
only=""
skip=""
while [ $# -gt 0 ]; do
    case $1 in
        --only) only=${2:?--only needs a comma list of stages}; shift 2 ;;
        --skip) skip=${2:?--skip needs a comma list of stages}; shift 2 ;;
        --out) out=${2:?--out needs a folder}; shift 2 ;;
        --dry-run) dry=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "run.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
for name in ${only//,/ } ${skip//,/ }; do
    case " $all_stages " in
        *" $name "*) ;;
        *) echo "run.sh: unknown stage '$name' (stages: $all_stages)" >&2; exit 2 ;;
    esac
done
[ "$dry" = 0 ] || dry=1
out=${out:-$root/.gpu-out}
mkdir -p "$out"
out=$(cd "$out" && pwd)
: >"$out/stages.jsonl"
cd "$root" || exit 1

if [ -n "${PYTHON:-}" ]; then
    python=$PYTHON
elif [ "$dry" = 1 ] && [ -x "$root/.venv/bin/python" ]; then
    python=$root/.venv/bin/python
else
    python=$(command -v python || command -v python3)
fi
wheels=${GENLOOM_GPU_WHEELS:-$here/wheels}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# PIP_BREAK_SYSTEM_PACKAGES: a system Python marked externally managed (PEP 668) still takes the wheels
export GENLOOM_GPU_DRY_RUN=$dry PYTHONUNBUFFERED=1 WANDB_MODE=offline PIP_BREAK_SYSTEM_PACKAGES=1
echo "genloom GPU run: dry_run=$dry python=$python out=$out"

selected() {
    local name=$1
    if [ -n "$only" ] && [[ ",$only," != *",$name,"* ]]; then return 1; fi
    if [[ ",$skip," == *",$name,"* ]]; then return 1; fi
    return 0
}

limit() {  # limit STAGE DEFAULT: the stage's time limit (dry runs on a CPU get 10 minutes)
    local var
    var="GENLOOM_GPU_LIMIT_$(echo "$1" | tr '[:lower:]' '[:upper:]')"
    if [ -n "${!var:-}" ]; then echo "${!var}"; elif [ "$dry" = 1 ]; then echo 600; else echo "$2"; fi
}

run_stage() {  # run_stage NAME DEFAULT_LIMIT: run stage_NAME under its time limit, log it, record it
    local name=$1 seconds rc start
    selected "$name" || return 0
    seconds=$(limit "$name" "$2")
    start=$(date +%s)
    echo "== $name (limit ${seconds}s)"
    timeout --kill-after=15 "$seconds" bash -c "stage_$name" >"$out/$name.log" 2>&1
    rc=$?
    printf '{"stage": "%s", "rc": %d, "seconds": %d, "limit_s": %d, "timed_out": %s}\n' \
        "$name" "$rc" "$(($(date +%s) - start))" "$seconds" "$([ "$rc" = 124 ] || [ "$rc" = 137 ] && echo true || echo false)" >>"$out/stages.jsonl"
    tail -n 8 "$out/$name.log"
    echo "== $name: exit $rc after $(($(date +%s) - start))s"
}

stage_setup() {
    set -x
    "$python" benchmarks/gpu/report.py env "$out/env.json"
    local names=()
    mapfile -t names < <(sed 's/==.*//' "$wheels/requirements.txt" | grep -v '^setuptools$')
    if [ "$dry" = 1 ]; then
        # prove the carried wheels cover every name for this Python; install nothing
        "$python" -m pip install --dry-run --quiet --no-index --find-links "$wheels" --no-deps --ignore-installed --target "$work/check" "${names[@]}"
        "$python" -c "import genloom.core.plugins as p; print(len(p.get_registry().names('backbone')), 'backbones')"
        return
    fi
    if ! "$python" -c 'import setuptools, sys; sys.exit(tuple(map(int, setuptools.__version__.split(".")[:2])) < (70, 1))'; then
        "$python" -m pip install --quiet --no-index --find-links "$wheels" setuptools
    fi
    # with dependencies resolved against what is installed; if a dependency is missing, without
    "$python" -m pip install --quiet --no-index --find-links "$wheels" "${names[@]}" ||
        "$python" -m pip install --quiet --no-index --find-links "$wheels" --no-deps "${names[@]}"
    "$python" -m pip install --quiet --no-deps --no-build-isolation -e .
    "$python" -c "import genloom.core.plugins as p; print(len(p.get_registry().names('backbone')), 'backbones')"
    "$python" benchmarks/gpu/report.py env "$out/env.json"
}

stage_tests() {
    local files
    files=$(grep -rl --include='*.py' -e 'mark\.gpu' -e 'pytest\.mark\.gpu' tests | sort)
    echo "gpu-marked test files: $files"
    # on a CPU (the dry run) they all skip: that proves they skip cleanly
    # shellcheck disable=SC2086
    "$python" -m pytest -q -rA -p no:cacheprovider -m gpu --junitxml="$out/tests.xml" $files
    local rc=$?
    "$python" benchmarks/gpu/report.py junit "$out/tests.xml" "$out/tests.json"
    return $rc
}

stage_decode() {
    if [ "$dry" = 1 ]; then
        "$python" benchmarks/decode.py --preset tiny --device cpu --dtype float32 --batch 1 --new 8 --prompt 8 --repeats 2 --json "$out/decode.json"
    else
        "$python" benchmarks/decode.py --preset 1b --device cuda --dtype bfloat16 --batch 1 8 32 --new 128 --prompt 32 --repeats 2 --json "$out/decode.json"
    fi
}

stage_train() {
    local run_dir=$work/gpt124m
    local overrides=("run_dir=$run_dir")
    if [ "$dry" = 1 ]; then
        overrides+=(data.seq_len=64 data.batch_size=4 data.max_train_bytes=200000 backbone.d_model=32 backbone.n_layers=2
            backbone.n_heads=4 trainer.max_steps=20 trainer.precision=32 trainer.compile=false trainer.log_every_steps=1
            trainer.accelerator=cpu trainer.threads=1)
    fi
    "$python" -m genloom train benchmarks/gpu/gpt124m.yaml --no-sample "${overrides[@]}" || return
    cp "$(find "$run_dir/logs" -name metrics.csv | head -n 1)" "$out/train-metrics.csv"
    "$python" benchmarks/gpu/report.py mfu "$run_dir" "$out/train.json"
}

stage_scan() {
    if [ "$dry" = 1 ]; then
        "$python" benchmarks/scan.py --device cpu --shapes 1,64,16,4 --repeats 1 --json "$out/scan.json"
    else
        # Mamba-130M/-370M-like widths; the sequential reference only on the smaller shape
        "$python" benchmarks/scan.py --device cuda --dtype float32 --shapes 2,1024,1536,16 8,2048,2048,16 \
            --repeats 10 --skip-reference-above 4000000 --json "$out/scan.json"
    fi
}

export -f stage_setup stage_tests stage_decode stage_train stage_scan
export python out dry wheels work

run_stage setup 45
run_stage tests 120
run_stage decode 200
run_stage train 90
run_stage scan 25

"$python" benchmarks/gpu/report.py summary "$out"
ok=$("$python" -c 'import json, sys; print(int(json.load(open(sys.argv[1]))["ok"]))' "$out/summary.json")
[ "$ok" = 1 ]
