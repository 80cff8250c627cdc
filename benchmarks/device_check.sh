#!/usr/bin/env bash
# Every GPU claim in one call (issue #15), from the repository root:
#
#   bash benchmarks/device_check.sh OUTDIR              # on one H100/H200, at most 540 s
#   REHEARSE=1 bash benchmarks/device_check.sh OUTDIR   # the same stages at toy size on a CPU
#
# Stages, each with its own time limit, none stopping the next: the environment (GPU, torch,
# CUDA, flash-attn), the offline model built from .device-bundle/, tests/test_gpu.py,
# benchmarks/throughput.py (base and large shapes, hybrid_dist and sentence-transformers), the
# in-process study with whatever time is left but ZS_RESERVE seconds, then the issue #20 language
# hold-out experiment (experiments/zeroshot.py: hybrid vs hybrid + retention trained on 6
# languages, seen/unseen cells) in the reserved time. OUTDIR receives two files: device-check.tar.gz
# (every log and result) and summary.md. Needs only torch, transformers, sentence-transformers,
# accelerate and pytest (no deepspeed, ray, faiss or datasets), no network, and the bundle that
# `python benchmarks/device_bundle.py` builds here (the rehearsal builds it when it is missing).
# Recipe: benchmarks/RESULTS.md, "The device check".
set -uo pipefail

OUTDIR=${1:?usage: [REHEARSE=1] bash benchmarks/device_check.sh OUTDIR}
REHEARSE=${REHEARSE:-0}
BUDGET=${BUDGET:-540}           # seconds for the whole script
STEPS=${STEPS:-200}             # training steps per study run (the reference setting)
BUNDLE=${BUNDLE:-.device-bundle}
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || PY=python
START=$(date +%s)
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/device-check.XXXXXX")
mkdir -p "$WORK/logs"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
       TOKENIZERS_PARALLELISM=false HYBRID_DIST_CACHE="$WORK/cache"

left() { echo $((BUDGET - ($(date +%s) - START))); }

# stage NAME SECONDS COMMAND...: run with a time limit, log to logs/NAME.log, record the outcome
stage() {
    local name=$1 limit=$2 t0 rc
    shift 2
    if [ "$limit" -le 5 ]; then
        printf '%s\tskipped\t0\tno time left\n' "$name" >>"$WORK/stages.tsv"
        echo "== $name: skipped (no time left)"
        return 0
    fi
    echo "== $name (limit ${limit}s, $(left)s left of ${BUDGET}s)"
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$WORK/logs/$name.log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - t0))" "$*" >>"$WORK/stages.tsv"
    echo "   exit $rc after $(($(date +%s) - t0))s"
    tail -n 5 "$WORK/logs/$name.log" | sed 's/^/   | /'
}

if [ "$REHEARSE" = 1 ]; then
    PYTEST_ARGS=(tests/test_gpu.py)
    THROUGHPUT_ARGS=(--preset cpu-toy --steps 1 --warmup 1)
    STUDY_ARGS=(--size cpu --arms zero-shot,xx-mono,hybrid --seeds 0 --no-sweep --steps 2
                'data.languages=[en,de]' data.split=hash data.heldout_fraction=0.1 model.max_length=32
                sampler.batch_size=8 eval.batch_size=128)
    ZS_ARGS=(--size cpu --seeds 0 --seen en,de 'data.languages=[en,de,es]' data.split=hash
             data.heldout_fraction=0.1 model.max_length=32 sampler.batch_size=8 train.max_steps=2 eval.batch_size=128)
    T_TESTS=120; T_THROUGHPUT=240  # limits, not targets: generous for a loaded CI machine
    ZS_RESERVE=${ZS_RESERVE:-150}
    if [ ! -f "$BUNDLE/model/bundle.json" ]; then
        stage bundle 300 "$PY" benchmarks/device_bundle.py --out "$BUNDLE"
    fi
else
    PYTEST_ARGS=(tests/test_gpu.py)
    THROUGHPUT_ARGS=(--preset gpu)
    STUDY_ARGS=(--arms all,recommended --seeds 0 1 2 --steps "$STEPS" eval.batch_size=256)
    ZS_ARGS=(--size gpu --seeds 0 1 2 eval.batch_size=256)
    T_TESTS=90; T_THROUGHPUT=170
    ZS_RESERVE=${ZS_RESERVE:-150}   # the hold-out experiment's share; more BUDGET gives the study more
fi

# 1. what this machine is
stage environment 30 "$PY" - <<'EOF'
import importlib.util, platform, subprocess
import torch, transformers
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| transformers", transformers.__version__)
for name in ("accelerate", "sentence_transformers", "flash_attn", "deepspeed", "ray", "faiss", "datasets"):
    spec = importlib.util.find_spec(name)
    version = None
    if spec is not None:
        try:
            version = __import__(name).__version__
        except Exception as e:  # noqa: BLE001
            version = f"import failed: {e}"
    print(f"{name}: {version or 'not installed'}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU: {torch.cuda.device_count()} x {p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}, "
          f"bf16 {torch.cuda.is_bf16_supported()}")
    print(subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout)
else:
    print("GPU: none (CPU only)")
EOF
cp "$WORK/logs/environment.log" "$WORK/environment.txt"

# 2. data and model from the bundle: nothing is downloaded
DATA="$WORK/data/xquad-r"
mkdir -p "$WORK/data"
stage model 120 bash -c "tar -xzf '$BUNDLE/xquad-r.tar.gz' -C '$WORK/data' && \
    '$PY' -m hybrid_dist.models.import_e5 --source '$BUNDLE/model'"
export HYBRID_DIST_XQUAD_R="$DATA"   # tests/ read the data from here

# 3. the GPU tests (they skip themselves without CUDA)
stage gpu-tests "$T_TESTS" "$PY" -m pytest -q -p no:cacheprovider -rs "${PYTEST_ARGS[@]}"

# 4. training throughput against sentence-transformers
stage throughput "$T_THROUGHPUT" "$PY" benchmarks/throughput.py "${THROUGHPUT_ARGS[@]}" --data "$DATA" \
    --out "$WORK/throughput.json"

# 5. the study, in one process, with the time that is left but the hold-out experiment's reserve
STUDY_BUDGET=$(($(left) - 40 - ZS_RESERVE))
stage study "$((STUDY_BUDGET + 20))" "$PY" -m experiments.run --in-process --out "$WORK/study" \
    --time-budget "$STUDY_BUDGET" "${STUDY_ARGS[@]}" "data.path=$DATA"

# 6. after the main arms: the language hold-out (issue #20), the zero-shot model then hybrid and
#    hybrid + retention seed by seed, with the time that is left (30 s kept for packing)
ZS_BUDGET=$(($(left) - 40))
stage zeroshot "$((ZS_BUDGET + 20))" "$PY" -m experiments.zeroshot --out "$WORK/zeroshot" \
    --time-budget "$ZS_BUDGET" "${ZS_ARGS[@]}" "data.path=$DATA"

# 7. pack: one tarball with everything, one summary
rm -rf "$WORK/cache" "$WORK/data"
"$PY" benchmarks/device_summary.py "$WORK" "$OUTDIR/summary.md" --budget "$BUDGET" --elapsed "$(($(date +%s) - START))"
tar -czf "$OUTDIR/device-check.tar.gz" -C "$WORK" .
rm -rf "$WORK"
echo "wrote $OUTDIR/device-check.tar.gz and $OUTDIR/summary.md in $(($(date +%s) - START))s"
cat "$OUTDIR/summary.md"
