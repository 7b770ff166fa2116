#!/bin/bash
# The live benchmark's 8 streams (docs/models.md "On air"), shipped model, current code.
cd /tmp/live
OUT=${1:-/tmp/live/after}
U=$(ls /tmp/pingus-holdout/*.ogg | head -8); S=/var/cache/tunetrace-packages/fillets-ng-data-nl
L="/work/main/.venv/bin/python -m tunetrace.evaluation.live -c cfg.yaml --minutes 30 --unknown $U --shared-audio --show"
for seed in 3 4 5; do $L --seed $seed --json $OUT/clean$seed.json > $OUT/clean$seed.txt 2>&1; done
for seed in 2 4 5; do $L --seed $seed --snr-db 10 --json $OUT/noisy$seed.json > $OUT/noisy$seed.txt 2>&1; done
for seed in 3 5; do $L --seed $seed --speech $S --talk-over-db 0 --json $OUT/talk$seed.json > $OUT/talk$seed.txt 2>&1; done
echo done > $OUT/DONE
