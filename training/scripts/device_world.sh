#!/usr/bin/env bash
# Train world v2's model (models/tiny-world-sd) on a lent GPU machine in one call.
# Usage (repo root, on the device): OUT=dir bash training/scripts/device_world.sh
# Env: CLIP_S / VAE_S / UNET_S wall-clock budgets per stage (default 150 / 150 / 330 s: ~11 min with data and
# encoding, inside a 15-minute lease with its start-up). INIT_CLIP / INIT_VAE: warm starts (default: the committed
# world CLIP and the 8-channel world VAE, docs/model/vae_channels.json).
set -u
CLIP_S=${CLIP_S:-150}; VAE_S=${VAE_S:-150}; UNET_S=${UNET_S:-330}
INIT_CLIP=${INIT_CLIP:-models/candidates/world-clip/clip.safetensors}  # the best world CLIP so far (else models/tiny-shapes-sd)
INIT_VAE=${INIT_VAE:-models/candidates/world-vae8}  # 8 latent channels: +1.9 dB on sprites at equal steps
W=${WORK:-/tmp/work}; mkdir -p "$W" "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
b() { python3 -m training.build --preset world-gpu --work "$W" "$@"; }
t0=$(date +%s)
b --stages data > "$W/log_data.txt" 2>&1; tail -3 "$W/log_data.txt"
b --stages clip --init-clip "$INIT_CLIP" --budget clip="$CLIP_S" > "$W/log_clip.txt" 2>&1 &
b --stages vae --init-vae "$INIT_VAE" --budget vae="$VAE_S" > "$W/log_vae.txt" 2>&1 &
wait; grep -E "val|finished|Error" "$W"/log_clip.txt "$W"/log_vae.txt | tail -6
b --stages encode > "$W/log_encode.txt" 2>&1; tail -2 "$W/log_encode.txt"
b --stages unet --budget unet="$UNET_S" > "$W/log_unet.txt" 2>&1; tail -2 "$W/log_unet.txt"
b --stages package --out /tmp/bundle/tiny-world-sd > "$W/log_package.txt" 2>&1; tail -1 "$W/log_package.txt"
echo "training took $(( $(date +%s) - t0 ))s"
cp "$W"/log_*.txt "$W"/*_log.json /tmp/bundle/ 2>/dev/null
tar -C /tmp -czf /tmp/bundle.tgz bundle && split -b 15M /tmp/bundle.tgz "$OUT/bundle.tgz.part-"
ls -la "$OUT"
