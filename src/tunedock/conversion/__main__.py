"""Child process of ``prepare_weights``: convert one model directory with CTranslate2's converter.

Usage: ``python -m tunedock.conversion --model-path DIR --format causal-lm --quantization int8
--files-hash sha256:... --output NEW_DIR``. On failure the last line of stderr gives the reason.
"""

from tunedock.conversion.converter import main

raise SystemExit(main())
