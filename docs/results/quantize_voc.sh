#!/bin/bash
# Issue 14 measurement: a VOC-format semi-synthetic set (digits on photos, 500x375 JPEG + VOC xml),
# trained through the CLI; then export and validate (issue 16) on the same split.
#
# usage: docs/results/quantize_voc.sh WORK_DIR RUN_NAME [hwconv quantize options...]
#   e.g. quantize_voc.sh /tmp/qv default                  # every option at its default
#        quantize_voc.sh /tmp/qv seed1 --seed 1
#        quantize_voc.sh /tmp/qv converged --epochs 30    # a float network that has stopped improving
#   The set is written once into WORK_DIR/voc (runs sharing WORK_DIR share it: write it first,
#   then start runs side by side); each run goes to WORK_DIR/RUN_NAME.
#   PY: the python to run (default: this checkout's .venv); run it with PYTHONPATH pointing at a
#   clean copy of the commit being measured (git archive), so that uncommitted edits in the
#   checkout cannot change the figures half-way.
#
# The set: 3 classes (the digits zero, one, two), 1-3 digits per image, 0.3-0.5 of the side
# tall, 1600 training and 1000 validation images (1000, so that one network's AP50 moves by
# well under a point from sampling alone).
# OMP_NUM_THREADS=1: two runs side by side on a 2-core machine, one core each.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
set -e
PY=${PY:-$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin/python}
TRAIN=${TRAIN:-1600}
VAL=${VAL:-1000}
WORK=${1:?usage: quantize_voc.sh WORK_DIR RUN_NAME [quantize options]}
RUN=${2:?usage: quantize_voc.sh WORK_DIR RUN_NAME [quantize options]}
shift 2
HW="$PY -c 'import sys; from hwconv.cli import main; sys.exit(main())'"
mkdir -p "$WORK" && cd "$WORK"
$PY -c "import hwconv; print('hwconv from', hwconv.__file__)"
date -u +"start %FT%TZ"
[ -d voc ] || $PY -m hwconv.quant.data.voc_writer voc --train "$TRAIN" --val "$VAL" --size 500x375 \
    --classes 3 --objects 1,3 --scale 0.3,0.5
date -u +"data %FT%TZ"
[ "$RUN" = data ] && exit 0
/usr/bin/time -v bash -c "$HW quantize --data voc --data-root voc -o ${RUN@Q} ${*@Q}" > "$RUN.quantize.log" 2> "$RUN.quantize.time"
date -u +"quantize %FT%TZ"
bash -c "$HW export $RUN/qat/last.pt -o $RUN/export --verify 4" > "$RUN.export.log" 2>&1
date -u +"export %FT%TZ"
bash -c "$HW validate --backend golden --program $RUN/export/tiny_w4a8_16x16.hwc --data voc --data-root voc --json" \
    > "$RUN.validate.json"
date -u +"end %FT%TZ"
