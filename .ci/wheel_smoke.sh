#!/usr/bin/env bash
# The wheel as a user gets it: build it, install it (dependencies pinned to the declared floors, .ci/floors.txt) into a
# fresh virtual environment outside the checkout, and from a folder that is not the checkout run the console scripts:
# convert a tiny original-format checkpoint (and a classifier given inline JSON), train 2 steps on a tiny image folder,
# sample from both, compute a likelihood, and serve the web app. A packaging regression fails here, not at a user.
#
#   bash .ci/wheel_smoke.sh            # PYTHON=python3.11 to choose the interpreter; KEEP=1 keeps the work folder
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/guided-diffusers-wheel-smoke.XXXXXX")"
APP_PID=""
cleanup() {
    if [ -n "$APP_PID" ]; then kill "$APP_PID" 2>/dev/null || true; fi
    if [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; else echo "wheel smoke: kept $WORK"; fi
}
trap cleanup EXIT
start=$(date +%s)
step() { echo "wheel smoke [$(( $(date +%s) - start ))s]: $*"; }

step "building the wheel from a copy of the tree"
mkdir -p "$WORK/src" "$WORK/dist"
tar -C "$ROOT" --exclude=./.venv --exclude=./.git --exclude='*.egg-info' --exclude=./build --exclude=./demo_output -cf - . | tar -C "$WORK/src" -xf -
"$PYTHON" -m venv "$WORK/build-env"
"$WORK/build-env/bin/python" -m pip install --quiet "setuptools>=70.1" wheel
"$WORK/build-env/bin/python" -m pip wheel --quiet --no-deps --no-build-isolation -w "$WORK/dist" "$WORK/src"
WHEEL="$(ls "$WORK"/dist/guided_diffusers-*.whl)"
unzip -Z1 "$WHEEL" > "$WORK/wheel-files.txt"
for needed in guided_diffusers/model_cards/trained.md guided_diffusers/model_cards/guided_diffusion.md \
              guided_diffusers/model_cards/improved_diffusion.md guided_diffusers/model_cards/ddpm.md \
              guided_diffusers/model_cards/user_checkpoint.md guided_diffusers/model_cards/community.md \
              guided_diffusers/model_cards/consistency_models.md \
              guided_diffusers/data/imagenet_classes.json guided_diffusers/cli/sample.py; do
    grep -qx "$needed" "$WORK/wheel-files.txt" || { echo "wheel smoke: $needed is missing from $(basename "$WHEEL")" >&2; exit 1; }
done

step "installing $(basename "$WHEEL") into a fresh venv"
"$PYTHON" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
TORCH_CPU_WHEEL="$(ls /opt/wheels/torch-2.13.0+cpu-*.whl 2>/dev/null | head -n1 || true)"
if [ -n "$TORCH_CPU_WHEEL" ]; then "$VPY" -m pip install --quiet "$TORCH_CPU_WHEEL"; fi
"$VPY" -m pip install --quiet -c "$ROOT/.ci/floors.txt" "${WHEEL}[app]"

mkdir -p "$WORK/run"
cd "$WORK/run"
export PATH="$WORK/venv/bin:$PATH" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1 GRADIO_ANALYTICS_ENABLED=False
unset PYTHONPATH
"$VPY" - <<'EOF'
import pathlib, sys
import guided_diffusers
where = pathlib.Path(guided_diffusers.__file__).resolve()
assert "site-packages" in where.parts, f"guided_diffusers imported from {where}, not from the installed wheel"
print(f"wheel smoke: guided_diffusers {guided_diffusers.__version__} from {where.parent}")
EOF

step "making a tiny original checkpoint, classifier and image folder"
PYTHONPATH="$ROOT/tests" "$VPY" - <<'EOF'
import numpy as np, torch
from PIL import Image
from original_layout import adm_classifier_state_dict, adm_unet_state_dict
from guided_diffusers.conversion import classifier_kwargs_from_flags, unet_kwargs_from_flags

flags = "--image_size 8 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 --attention_resolutions 4 --class_cond True --learn_sigma True"
torch.save(adm_unet_state_dict(unet_kwargs_from_flags(flags, "guided-diffusion")), "tiny_unet.pt")
clf = classifier_kwargs_from_flags("--image_size 8 --classifier_width 32 --classifier_depth 1 --classifier_channel_mult 1,2 --classifier_attention_resolutions 4 --classifier_pool adaptive")
clf = {k: (list(v) if isinstance(v, tuple) else v) for k, v in clf.items()}
torch.save(adm_classifier_state_dict(clf), "tiny_classifier.pt")
import json; open("classifier_config.json", "w").write(json.dumps(clf))
rng = np.random.default_rng(0)
import os; os.makedirs("images", exist_ok=True)
for k in range(8):
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(f"images/{'cat' if k % 2 else 'dog'}_{k}.png")
EOF

step "guided-diffusers-convert-guided-diffusion"
guided-diffusers-convert-guided-diffusion --checkpoint tiny_unet.pt --output converted \
    --model_flags "--image_size 8 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 --attention_resolutions 4 --class_cond True --learn_sigma True" \
    --diffusion_flags "--diffusion_steps 100 --timestep_respacing 4"
guided-diffusers-convert-guided-diffusion --checkpoint tiny_classifier.pt --classifier_config "$(cat classifier_config.json)" --output converted-classifier
test -s converted/README.md && test -s converted-classifier/README.md

step "guided-diffusers-train-diffusion (2 steps)"
guided-diffusers-train-diffusion --train_data_dir images --output_dir trained --resolution 8 --max_train_steps 2 \
    --train_batch_size 2 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 --attention_resolutions 4 \
    --class_cond True --diffusion_steps 100 --report_to none --checkpointing_steps 1000 --license mit
test -s trained/README.md

step "checking the folders load and the cards validate"
"$VPY" - <<'EOF'
from diffusers import DiffusionPipeline
from huggingface_hub import ModelCard
import guided_diffusers
from guided_diffusers import ADMClassifier
# converted from user flags or a config: not a release, so its license is unknown (no --license given); trained: --license mit
for folder, license in (("converted", "unknown"), ("trained", "mit"), ("converted-classifier", "unknown")):
    card = ModelCard.load(f"{folder}/README.md")
    assert card.data.license == license and "```bibtex" in card.text, folder
assert isinstance(DiffusionPipeline.from_pretrained("converted"), guided_diffusers.ClassifierGuidedPipeline)
assert isinstance(DiffusionPipeline.from_pretrained("trained"), guided_diffusers.ClassifierGuidedPipeline)
assert ADMClassifier.from_pretrained("converted-classifier").config.num_classes == 1000
print("wheel smoke: converted and trained folders load; cards carry license and citation")
EOF

step "guided-diffusers-sample from both"
guided-diffusers-sample --pipeline converted --num_samples 2 --batch_size 2 --class_labels 1 --output_dir samples-converted
guided-diffusers-sample --pipeline trained --num_samples 2 --batch_size 2 --timestep_respacing 4 --class_labels cat --output_dir samples-trained
test -s samples-converted/samples_2x8x8x3.npz && test -s samples-trained/samples_2x8x8x3.npz

step "guided-diffusers-image-nll"
guided-diffusers-image-nll --pipeline trained --dataset images --num_samples 2 --batch_size 2 --output_dir nll
"$VPY" -c "import json, math; bpd = json.load(open('nll/bpd_summary.json'))['total_bpd']; assert math.isfinite(bpd) and bpd > 0, bpd"

step "guided-diffusers-app serves the trained pipeline"
PORT=$("$VPY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
guided-diffusers-app --pipeline trained --port "$PORT" > app.log 2>&1 &
APP_PID=$!
for _ in $(seq 1 120); do
    if "$VPY" -c "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:$PORT/', timeout=2).status == 200 else 1)" 2>/dev/null; then
        break
    fi
    kill -0 "$APP_PID" 2>/dev/null || { cat app.log >&2; echo "wheel smoke: the app exited" >&2; exit 1; }
    sleep 1
done
"$VPY" -c "import urllib.request; assert urllib.request.urlopen('http://127.0.0.1:$PORT/', timeout=5).status == 200"
kill "$APP_PID"; APP_PID=""

for command in guided-diffusers-evaluate guided-diffusers-quickstart guided-diffusers-train-classifier guided-diffusers-train-super-res guided-diffusers-convert-ddpm; do
    "$command" --help > /dev/null
done
step "passed"
