#!/usr/bin/env bash
# The accelerator check: on whatever JAX's default backend is (GPU, TPU, or the CPU), run
#   1. mnist_cnn to its end, and the time to >= 99.0% test accuracy (each epoch's checkpoint tested);
#   2. `jaxcnn bench` in float32 and bfloat16;
#   3. mnist_cnn (1 epoch) with parallel=pmap and parallel=sharded over all devices;
#   4. a deterministic=true run, then `jaxcnn verify` of it twice;
# and print one JSON summary (also written to OUT/summary.json).
#
#   scripts/accelerator_check.sh [--quick] [--out DIR] [--data-dir DIR]
#
# --quick: everything tiny (synthetic 28x28 data, 2 epochs, a short benchmark), so it runs in a few
# minutes on a CPU; without it MNIST is read from --data-dir or $JAXCNN_DATA_DIR. Set PYTHON to the
# interpreter that has jaxcnn (default: python); the repository is put first on PYTHONPATH.
set -euo pipefail

QUICK=0
OUT=""
DATA_DIR="${JAXCNN_DATA_DIR:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --out) OUT="$2"; shift ;;
    --data-dir) DATA_DIR="$2"; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "accelerator_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

REPO="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python}"
OUT="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/jaxcnn-accelerator-check.XXXXXX")}"
mkdir -p "$OUT"
jaxcnn() { "$PYTHON" -m jaxcnn.cli "$@"; }
START=$(date +%s)

NUM_DEVICES=$("$PYTHON" -c "import jax; print(jax.device_count())")
BATCH=$((128 * NUM_DEVICES))  # 128 images per device: divisible by the device count
if [ "$QUICK" = 1 ]; then
  TRAIN=(--config mnist_cnn --config.dataset.name=synthetic --config.dataset.num_train=1024
         --config.dataset.num_test=256 --config.num_epochs=2 --config.log_every_steps=4)
  BENCH=(--model mlp --mode step --mode fused --min-time 0.05 --repeats 1 --num-test 256
         --fingerprint-steps 2 --steps-per-call 4)
  VERIFY=()
else
  if [ -z "$DATA_DIR" ]; then
    echo "accelerator_check.sh: MNIST needed: pass --data-dir DIR or set JAXCNN_DATA_DIR (or use --quick)" >&2
    exit 2
  fi
  TRAIN=(--config mnist_cnn --data-dir "$DATA_DIR")
  BENCH=(--model cnn)
  VERIFY=(--data-dir "$DATA_DIR")  # a run's config does not hold the data directory
fi

echo "[1/4] ${TRAIN[*]} -> $OUT/accuracy" >&2
jaxcnn train "${TRAIN[@]}" --workdir "$OUT/accuracy" --quiet --config.checkpoint.keep=1000 > "$OUT/accuracy.log" 2>&1

echo "[2/4] jaxcnn bench ${BENCH[*]} --dtype float32 --dtype bfloat16" >&2
jaxcnn bench "${BENCH[@]}" --dtype float32 --dtype bfloat16 --json "$OUT/bench.json" > "$OUT/bench.log" 2>&1

for parallel in pmap sharded; do
  echo "[3/4] parallel=$parallel over $NUM_DEVICES devices, batch $BATCH" >&2
  jaxcnn train "${TRAIN[@]}" --workdir "$OUT/$parallel" --quiet --config.parallel=$parallel \
    --config.batch_size=$BATCH --config.num_epochs=1 --config.schedule.warmup_epochs=0 > "$OUT/$parallel.log" 2>&1
done

echo "[4/4] deterministic=true, then jaxcnn verify twice" >&2
jaxcnn train "${TRAIN[@]}" --workdir "$OUT/deterministic" --quiet --config.deterministic=true \
  --config.num_epochs=1 --config.schedule.warmup_epochs=0 > "$OUT/deterministic.log" 2>&1
for i in 1 2; do
  status=0
  jaxcnn verify "$OUT/deterministic" ${VERIFY[@]+"${VERIFY[@]}"} > "$OUT/verify-$i.log" 2>&1 || status=$?
  echo "$status" > "$OUT/verify-$i.status"
done

"$PYTHON" - "$OUT" "$QUICK" "$START" "${DATA_DIR:-}" <<'EOF' | tee "$OUT/summary.json"
import datetime, json, pathlib, sys, time

import jax

from jaxcnn.commands.saved import evaluate_saved, load_saved_model
from jaxcnn.files.writers import read_jsonl

out, quick, start, data_dir = pathlib.Path(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4] or None


def summary(name):
    return json.loads((out / name / "summary.json").read_text())


def time_to_accuracy(workdir, target=0.99):
    """Each epoch's checkpoint tested in order; the first at >= target and its wall time."""
    epochs = [r for r in read_jsonl(workdir / "metrics.jsonl") if r["event"] == "epoch"]
    tested = []
    for record in epochs:
        accuracy = evaluate_saved(load_saved_model(workdir, str(record["step"])), "test", data_dir)["test_accuracy"]
        tested.append({"epoch": record["epoch"], "test_accuracy": accuracy, "wall_time_s": record["wall_time_s"]})
        if accuracy >= target:
            return {"target": target, "reached": True, **tested[-1], "per_epoch": tested}
    return {"target": target, "reached": False, "per_epoch": tested}


bench = json.loads((out / "bench.json").read_text())
device = jax.devices()[0]
result = {
    "date": datetime.date.today().isoformat(), "quick": quick,
    "device": {"platform": device.platform, "kind": device.device_kind, "count": jax.device_count()},
    "versions": bench["env"]["versions"],
    "mnist_cnn": {"test_accuracy": summary("accuracy")["test_accuracy"], "wall_time_s": summary("accuracy")["wall_time_s"],
                  "time_to_accuracy": time_to_accuracy(out / "accuracy")},
    "bench": [{k: row.get(k) for k in ("model", "mode", "dtype", "batch_size", "train_images_per_s",
                                       "eval_images_per_s", "compile_s", "fingerprint")} for row in bench["results"]],
    "parallel": {p: {k: summary(p)[k] for k in ("parallel", "num_devices", "test_accuracy", "train_images_per_s")}
                 for p in ("pmap", "sharded")},
    "verify": [{"status": int((out / f"verify-{i}.status").read_text()),
                "result": (out / f"verify-{i}.log").read_text().strip().splitlines()[-1]} for i in (1, 2)],
    "deterministic_certificate": {k: json.loads((out / "deterministic" / "certificate.json").read_text())[k]
                                  for k in ("deterministic", "deterministic_ops_flag", "xla_flags", "backend")},
    "out": str(out), "elapsed_s": round(time.time() - start, 1),
}
print(json.dumps(result, indent=2))
EOF
