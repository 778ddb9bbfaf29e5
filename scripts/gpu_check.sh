#!/usr/bin/env bash
# Every CUDA benchmark of the training-speed and large-batch work in one unattended command, each part under its
# own time limit, for a GPU machine that may have no network. Results (JSON, markdown, logs) go to $OUT
# (default gpu_results/); copy the tables into docs/benchmarks.md afterwards.
#
#   bash scripts/gpu_check.sh                      # cudatests, bench, loss, gradcache: about 10 minutes on one H100/H200
#   PARTS="bench loss" bash scripts/gpu_check.sh   # some parts
#   SMOKE=1 bash scripts/gpu_check.sh              # tiny sizes on the CPU: checks the script itself
#
# Parts:
#   bench      scripts/bench.py: ViT-B/32 b512 and ViT-B/16 b256, bf16, eager and compiled, vs OpenCLIP
#   captions   scripts/bench.py: ViT-B/32 b512 with captions of 8-40 tokens (COCO-like lengths; trimmed padding)
#   loss       scripts/bench_loss.py: plain vs tiled vs OpenCLIP ClipLoss up to B = 1,048,576 (D = 512)
#   gradcache  scripts/bench_gradcache.py: ViT-B/32 plain b512 vs gradient caching at global batch 65,536
#   cudatests  the tests that skip without CUDA (copy-stream batches, metrics on the GPU); needs pytest there
#
# OpenCLIP is optional (without it bench.py compares against the plain step). With no network, carry its wheels
# in .whl/ (git-ignored: name it in the device tool's carry) (open_clip_torch, ftfy, wcwidth: `pip download --no-deps --only-binary=:all: --python-version 3.12
# --platform manylinux2014_x86_64 -d .whl open_clip_torch==3.3.0 ftfy wcwidth`); they are installed into
# /tmp/site first.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
PARTS=${PARTS:-"cudatests bench loss gradcache"}

if [ -n "${SMOKE:-}" ]; then  # the same commands at sizes a CPU runs in a minute
  DEV=cpu; SPECS=tiny; CAPTION_SPEC=tiny; BENCH_ARGS="--rounds 1 --steps 1 --split-steps 1 --variants plain,default"
  LOSS_ARGS="--dim 64 --batch-sizes 512,2048 --chunk-size 256 --max-memory-gb 1"
  GC_MODEL=""; GC_PRECISION=fp32; GC_PLAIN="--batch 32 --micro 0"; GC_BIG="--batch 128 --micro 32"; GC_CHUNK=64
else
  DEV=cuda; SPECS=b32,b16; CAPTION_SPEC=b32; BENCH_ARGS="--rounds 4 --steps 5 --variants plain,default"
  LOSS_ARGS="--dim 512 --batch-sizes 32768,65536,262144,1048576 --chunk-size 8192 --max-memory-gb 80"
  GC_MODEL="model.image_encoder=vit_b32 model.text_encoder=text_b model.image_size=224 model.context_length=77 model.embed_dim=512 model.tokenizer=byte"
  GC_PRECISION=bf16; GC_PLAIN="--batch 512 --micro 0"; GC_BIG="--batch 65536 --micro 512"; GC_CHUNK=4096
fi

status=0
part() {  # part NAME SECONDS COMMAND...: run with a time limit, keep its output, remember a failure
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.log"
  [ $rc -eq 0 ] || { echo "== $name failed (exit $rc)"; status=1; }
}

if [ "$DEV" = cuda ]; then nvidia-smi -L; fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
for p in $PARTS; do
  case $p in
    bench)
      # bench.py adds default+compile and OpenCLIP compiled on CUDA
      part bench 330 $PY -m scripts.bench --device $DEV --specs $SPECS $BENCH_ARGS \
        --json "$OUT/bench.json" --markdown "$OUT/bench.md" ;;
    captions)
      part captions 240 $PY -m scripts.bench --device $DEV --specs $CAPTION_SPEC $BENCH_ARGS --caption-lengths 8-40 \
        --json "$OUT/captions.json" --markdown "$OUT/captions.md" ;;
    loss)
      part loss 150 $PY -m scripts.bench_loss --device $DEV $LOSS_ARGS --output "$OUT/loss.md" ;;
    gradcache)
      part gradcache_plain 60 $PY -m scripts.bench_gradcache --device $DEV --precision $GC_PRECISION $GC_PLAIN \
        --steps 3 $GC_MODEL
      part gradcache_big 150 $PY -m scripts.bench_gradcache --device $DEV --precision $GC_PRECISION $GC_BIG \
        --steps 1 $GC_MODEL loss.chunk_size=$GC_CHUNK ;;
    cudatests)
      part cudatests 120 $PY -m pytest -q -rs tests/data/test_prefetch.py tests/test_metrics.py ;;
    *) echo "unknown part '$p' (bench, captions, loss, gradcache, cudatests)"; status=2 ;;
  esac
done
exit $status
