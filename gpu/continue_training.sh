#!/usr/bin/env bash
# Continue the committed training state on a GPU machine for TRAIN_S seconds, then bring the result back in small
# files (tools/gpu_transfer.py): the last checkpoint, resumable, and the mean of the newest AVERAGE epoch networks.
# Run from the repository root on a machine with a CUDA torch and the project's packages (or their wheels in .whl/):
#   OUT=/path/to/out TRAIN_S=380 N_TRAIN=10 AVERAGE=8 gpu/continue_training.sh
# Back here: python -m una_bundle.tools.gpu_transfer unpack OUT DEST (DEST/averaged.pt: the candidate weights;
# DEST/checkpoint_final.pt: pack it into training_state/ with tools/training_state.py). Also runs the GPU tests of the
# fluid-anomaly kernels and their benchmark alongside (OUT/gpu_checks.log). The shipped 0.4.0 weights came from this
# with TRAIN_S=380 N_TRAIN=10 AVERAGE=8 on one H200 (the model card).
set -uo pipefail
export PYTHONUNBUFFERED=1
TRAIN_S=${TRAIN_S:-380}; N_TRAIN=${N_TRAIN:-10}; AVERAGE=${AVERAGE:-8}; OUT=${OUT:?set OUT to the output folder}
DATA=${DATA:-/tmp/una_gpu_data}; RUN=${RUN:-/tmp/una_gpu_run}
mkdir -p "$OUT"
T0=$SECONDS
if [ -d .whl ]; then  # a machine without a package index: the wheels carried along
    python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --target /tmp/una_site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/una_site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
if [ "${REQUIRE_CUDA:-1}" = 1 ]; then  # REQUIRE_CUDA=0: a dry run on the CPU before spending GPU time
    python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name(0))" || exit 1
fi
if [ ! -f "$DATA/datalist.json" ]; then
    python3 -c "from una_bundle.scripts.data.demo_data import prepare_demo as p; p('$DATA', n_train=$N_TRAIN, n_val=2)" \
        >"$OUT/prepare.log" 2>&1 || { tail -30 "$OUT/prepare.log"; exit 1; }
    rm "$OUT/prepare.log"
fi
echo "data ready at $((SECONDS - T0)) s"
rm -rf "$RUN"
python3 -m una_bundle.tools.training_state unpack training_state/cpu_recipe.pt "$RUN" \
    --weights training_state/cpu_recipe_weights.pt || exit 1
(
    timeout 200 nice python3 -m pytest -q -p no:cacheprovider tests/test_advection_triton.py tests/test_advection.py \
        tests/test_fluid_anomaly.py tests/test_perlin.py tests/test_registration.py >"$OUT/gpu_checks.log" 2>&1
    echo "pytest exit $?" >>"$OUT/gpu_checks.log"
    timeout 90 nice python3 benchmarks/bench_fluid_anomaly.py --sizes 128 160 --samples 3 >>"$OUT/gpu_checks.log" 2>&1
) &
(
    cd una_bundle || exit 1
    # SIGINT at the time limit: the trainer saves checkpoint_final.pt and stops
    timeout -s INT "$TRAIN_S" python3 -m monai.bundle run training \
        --config_file "['configs/train.yaml','configs/train_cpu.yaml','configs/train_gpu.yaml']" \
        --logging_file configs/logging.conf --bundle_root . --dataset_dir "$DATA" --output_dir "$RUN" \
        --max_epochs 1000 >"$OUT/train.log" 2>&1
)
echo "training stopped at $((SECONDS - T0)) s"; grep -E "Epoch\[|Error" "$OUT/train.log" | tail -3
wait
python3 -m una_bundle.tools.gpu_transfer pack "$RUN" "$OUT" --average "$AVERAGE" || exit 1
tail -3 "$OUT/gpu_checks.log"; echo "total $((SECONDS - T0)) s"
