#!/bin/bash
# Issue 14 measurement: a VOC-format semi-synthetic set (digits on photos, 500x375 JPEG), trained
# through the CLI with default options; then export and validate (issue 16) on the same split.
set -e
# usage: nice -n 10 docs/results/quantize_voc.sh [WORK_DIR]   (measured with PYTHONPATH set to a
# clean worktree of commit 0d7819a)
PY=${PY:-$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin/python}
mkdir -p "${1:-/tmp/qm}" && cd "${1:-/tmp/qm}"
date -u +"start %FT%TZ"
[ -d voc ] || $PY -m hwconv.quant.data.voc_writer voc --train 256 --val 100 --size 500x375
date -u +"data %FT%TZ"
/usr/bin/time -v $PY -c "import sys; from hwconv.cli import main; sys.exit(main())" quantize --data voc --data-root voc -o run > quantize.log 2> quantize.time
date -u +"quantize %FT%TZ"
$PY -c "import sys; from hwconv.cli import main; sys.exit(main())" export run/qat/last.pt -o export --verify 4 > export.log 2>&1
$PY -c "import sys; from hwconv.cli import main; sys.exit(main())" validate --backend golden --program export/tiny_w4a8_16x16.hwc --data voc --data-root voc --json > validate.json
date -u +"end %FT%TZ"
