#!/usr/bin/env bash
# Train the embedded model on a lent GPU machine in one call (see training/README.md).
# Usage (from the repo root, on the device): OUT=dir bash training/scripts/device_train.sh
# Env: PRESET (gpu), CLIP_S / VAE_S / UNET_S (wall-clock budgets per stage), VARIANTS ("g0:0 g05:0.05").
set -u
PRESET=${PRESET:-gpu}; CLIP_S=${CLIP_S:-110}; VAE_S=${VAE_S:-110}; UNET_S=${UNET_S:-240}
VARIANTS=${VARIANTS:-"g0:0 g05:0.05"}
W=${WORK:-/tmp/work}; mkdir -p "$W" "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
b() { python3 -m training.build --preset "$PRESET" --work "$W" "$@"; }
t0=$(date +%s)
b --stages data > "$W/log_data.txt" 2>&1; tail -3 "$W/log_data.txt"
b --stages clip --budget clip="$CLIP_S" > "$W/log_clip.txt" 2>&1 &
b --stages vae --budget vae="$VAE_S" > "$W/log_vae.txt" 2>&1 &
wait; grep -E "val|finished|Error" "$W"/log_clip.txt "$W"/log_vae.txt | tail -6
b --stages encode > "$W/log_encode.txt" 2>&1; tail -2 "$W/log_encode.txt"
for v in $VARIANTS; do
  b --stages unet --unet-name "unet_${v%%:*}" --grounding-weight "${v##*:}" --budget unet="$UNET_S" \
    > "$W/log_unet_${v%%:*}.txt" 2>&1 &
done
wait
for v in $VARIANTS; do tail -2 "$W/log_unet_${v%%:*}.txt"; done
echo "training took $(( $(date +%s) - t0 ))s"
python3 -m training.export "$W" /tmp/bundle && cp "$W"/log_*.txt /tmp/bundle/
tar -C /tmp -czf /tmp/bundle.tgz bundle && split -b 15M /tmp/bundle.tgz "$OUT/bundle.tgz.part-"
ls -la "$OUT"
