#!/usr/bin/env bash
# Second lent-GPU call: continue the chosen text-to-image U-Net and train the use-case U-Nets side by side.
# Needs .gpu/init.tgz (clip/, vae/, unet_<BASE>/ from the first run). Usage: OUT=dir bash training/scripts/device_finetune.sh
set -u
BASE=${BASE:-unet_g05}; S=${S:-150}; N=${N:-60000}
W=${WORK:-/tmp/work}; mkdir -p "$W" "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
tar -xzf .gpu/init.tgz -C "$W"
b() { python3 -m training.build --preset gpu --n-train "$N" --work "$W" "$@"; }
t0=$(date +%s)
b --stages data > "$W/log_data.txt" 2>&1 && b --stages encode > "$W/log_encode.txt" 2>&1; tail -2 "$W/log_encode.txt"
b --stages unet --unet-name "${BASE}c" --init-unet "$W/$BASE" --grounding-weight 0.05 --unet-lr 3e-4 --unet-warmup 100 \
  --budget unet="$S" > "$W/log_unet_${BASE}c.txt" 2>&1 &
b --stages inpaint --unet-name "$BASE" --unet-warmup 100 --budget unet="$S" > "$W/log_inpaint.txt" 2>&1 &
b --stages upscale --unet-name "$BASE" --unet-warmup 100 --budget unet="$S" > "$W/log_upscale.txt" 2>&1 &
wait
for f in "$W"/log_unet_*c.txt "$W"/log_inpaint.txt "$W"/log_upscale.txt; do grep -E "step|Error" "$f" | tail -2; done
echo "training took $(( $(date +%s) - t0 ))s"
rm -rf "$W/clip" "$W/vae" "$W/$BASE"
python3 -m training.export "$W" /tmp/bundle2 && cp "$W"/log_*.txt /tmp/bundle2/
tar -C /tmp -czf /tmp/bundle2.tgz bundle2 && split -b 15M /tmp/bundle2.tgz "$OUT/bundle2.tgz.part-"
ls -la "$OUT"
