#!/usr/bin/env bash
# The GPU run, in at most 5 minutes on one GPU: the throughput benchmark's main sections, the
# scale-out sections (lane sizing by measurement, fits per minute on 10^5 targets, peak memory
# against batch size, the V = 10,000 fit against the 2-core CPU) and a short test subset. Writes
# benchmarks/results/throughput_gpu.json with the device's name.
#
#   bash benchmarks/gpu_check.sh           # from the repository root, on the GPU machine
#   bash benchmarks/gpu_check.sh --smoke   # tiny sizes on any machine (a CPU too), to a temp dir
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
if [[ "${1:-}" == "--smoke" ]]; then
    size=(--smoke)
    out="$(mktemp -d)/throughput_gpu.json"
else
    size=(--quick)
    out=benchmarks/results/throughput_gpu.json
fi
python=${PYTHON:-python}
device=$("$python" -c 'import jax; d = jax.devices()[0]; print(f"{d.platform}: {d.device_kind}")')
echo "gpu_check: $device -> $out" >&2
"$python" benchmarks/throughput.py "${size[@]}" --sections single,batch,ks \
    --device-label "$device" --out "$out"
# scaling.py knows only --smoke; its full sizes are the accelerator ones on a GPU.
scale=()
[[ "${size[0]}" == "--smoke" ]] && scale=(--smoke)
"$python" benchmarks/scaling.py "${scale[@]}" --sections lanes,fits_per_minute,large_vocab,memory \
    --into "$out"
"$python" -m pytest -q -n 0 -p no:cacheprovider \
    tests/test_model.py \
    tests/test_distributed.py::test_large_batches_stream_in_chunks_with_the_same_result \
    tests/test_fit.py::test_fit_batch_equals_individual_fits \
    tests/test_fit.py::test_fit_batch_runs_inside_jit_and_vmap_friendly_shapes \
    tests/test_fit.py::test_large_models_take_the_matrix_free_path_by_default
"$python" - "$out" "$device" $((SECONDS - start)) <<'PY'
import json, sys
from jaxfeat.experiments.store import atomic_write_json
path, device, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
data = json.loads(open(path).read())
data["gpu_check"] = {"device": device, "wall_s": seconds, "goal_wall_s": 300}
atomic_write_json(path, data)
s = data["scaling"]
print(f"gpu_check ({s['mode']} sizes): {device}, {seconds:.0f} s")
print(f"  fits per minute: {s['fits_per_minute']['fits_per_minute']:.0f} (goal 1e5 on H100/H200)")
print(f"  V = 10,000 speed-up over the 2-core CPU: {s['large_vocab']['speedup_over_cpu']}")
print(f"  best lanes: {s['lanes']['field']} = {s['lanes']['best']}")
PY
