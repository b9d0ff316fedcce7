#!/bin/bash
# Issue 14 measurement: a VOC-format semi-synthetic set (digits on photos, 500x375 JPEG + VOC xml),
# trained through the CLI with default options; then export and validate (issue 16) on the same split.
#
# usage: nice -n 10 docs/results/quantize_voc.sh [WORK_DIR]
#   PY: the python to run (default: this checkout's .venv); run it with PYTHONPATH pointing at a
#   clean copy of the commit being measured (git archive), so that uncommitted edits in the
#   checkout cannot change the figures half-way.
#
# The set: 3 classes (the digits zero, one, two), 1-3 digits per image, 0.3-0.5 of the side
# tall, so that the default config (tiny, 10 float + 4 QAT epochs, batch 32) learns it on a 2-core
# CPU in about an hour; `quantize` itself runs with every option at its default.
# OMP_NUM_THREADS=1: on 2 cores shared with other jobs (load 9-12), torch's 2 OpenMP threads wait
# on each other: a batch-32 step took 9.4 s (float) and 22.8 s (QAT) with 2 threads, 2.5 s and
# 4.0 s with 1 thread (measured here, 13:08 UTC). On an idle machine leave it unset.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
set -e
PY=${PY:-$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin/python}
TRAIN=${TRAIN:-1600}
VAL=${VAL:-250}
HW="$PY -c 'import sys; from hwconv.cli import main; sys.exit(main())'"
mkdir -p "${1:-/tmp/qm}" && cd "${1:-/tmp/qm}"
$PY -c "import hwconv; print('hwconv from', hwconv.__file__)"
date -u +"start %FT%TZ"
[ -d voc ] || $PY -m hwconv.quant.data.voc_writer voc --train "$TRAIN" --val "$VAL" --size 500x375 \
    --classes 3 --objects 1,3 --scale 0.3,0.5
date -u +"data %FT%TZ"
/usr/bin/time -v bash -c "$HW quantize --data voc --data-root voc -o run" > quantize.log 2> quantize.time
date -u +"quantize %FT%TZ"
bash -c "$HW export run/qat/last.pt -o export --verify 4" > export.log 2>&1
date -u +"export %FT%TZ"
bash -c "$HW validate --backend golden --program export/tiny_w4a8_16x16.hwc --data voc --data-root voc --json" \
    > validate.json
date -u +"end %FT%TZ"
